"""Scores of a rendered cell for ``lbw tune``: effect kept inside the keep region, side effect left outside it.

Why here: this is image maths on rendered cells (numpy and scikit-image), beside the analyzer's Diff %
(``lbw.render.analysis``), whose region parser (``Box.parse``) it shares; it knows no project, store or strategy.
The rule that compares scores is pure (``lbw.domain.tune_rule``); ``lbw.services.tune`` orchestrates renders.

For RGB images a, b and a set of pixels M (the keep region K, or everything outside it, ~K), with scikit-image's
CIEDE2000 colour difference on CIELAB (``skimage.color.rgb2lab``, D65/2°, then ``deltaE_ciede2000``) and its SSIM
map (``skimage.metrics.structural_similarity`` with ``gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255, channel_axis=2, full=True``, averaged over the three channels)::

    d(a, b; M) = mean_{p in M} ΔE00(a, b)_p / 100  +  (1 - mean_{p in M} SSIM(a, b)_p) / 2

    effect kept      = clip(1 - d(C, ALL; K) / d(OFF, ALL; K), 0, 1)    (1 when d(OFF, ALL; K) <= EPS)
    side effect left = d(C, OFF; ~K) / d(ALL, OFF; ~K)                  (0 when d(ALL, OFF; ~K) <= EPS)

with C the candidate, ALL the full LoRA and OFF the LoRA off, all of the same prompt and seed. The side effect is
not clipped: above 1 the candidate changes the outside more than the full LoRA does. Both terms of d are about
0..1 (ΔE00 of 100 is black against white; 1 - SSIM reaches 2 only for inverted structure), weighted equally.

Other scorers plug in through ``lbw.render.scorers`` (entry point group ``lbw.scorers``); a ``DistanceScorer``
subclass only supplies ``distance(a, b, mask)`` and gets the formulas above.

Example:
    >>> keep = keep_mask("0.25,0.25,0.75,0.75", 64, 64)
    >>> scorer = LabSsimScorer()
    >>> scorer.score(full, full, off, keep)         # the full LoRA itself
    Score(effect=1.0, side=1.0)
"""

from __future__ import annotations

import abc
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lbw.domain.tune_rule import Score
from lbw.errors import RenderError
from lbw.render.analysis import Box, as_rgb_array

EPS = 1e-9
SSIM_SIGMA = 1.5
# The Gaussian SSIM window of sigma 1.5 is 11 pixels wide (scikit-image truncates at 3.5 sigma).
MIN_SIDE = 11


@runtime_checkable
class Scorer(Protocol):
    """What ``lbw tune`` calls: ``score(candidate, full, off, keep)`` with 8-bit RGB arrays (H, W, 3) of the same
    prompt and seed and a boolean (H, W) mask of the keep region; returns a ``Score`` (or a pair effect, side)."""

    def score(self, candidate: np.ndarray, full: np.ndarray, off: np.ndarray, keep: np.ndarray) -> Any: ...


class DistanceScorer(abc.ABC):
    """A scorer from a distance: subclasses define ``distance(a, b, mask)`` (>= 0, 0 for equal images); effect kept
    and side effect left follow the module's formulas."""

    name = "distance"

    @abc.abstractmethod
    def distance(self, a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
        """The distance of ``a`` and ``b`` over the pixels where ``mask`` is True."""

    def score(self, candidate: np.ndarray, full: np.ndarray, off: np.ndarray, keep: np.ndarray) -> Score:
        """Effect kept inside ``keep`` and side effect left outside it."""
        candidate, full, off = (as_rgb_array(x) for x in (candidate, full, off))
        keep = _mask(keep, candidate.shape[:2])
        if full.shape != candidate.shape or off.shape != candidate.shape:
            raise RenderError(f"images differ in size: candidate {candidate.shape[:2]}, full {full.shape[:2]}, "
                              f"off {off.shape[:2]}")
        outside = ~keep
        lora_inside = self.distance(off, full, keep)
        effect = 1.0 if lora_inside <= EPS else 1.0 - self.distance(candidate, full, keep) / lora_inside
        lora_outside = self.distance(full, off, outside)
        side = 0.0 if lora_outside <= EPS else self.distance(candidate, off, outside) / lora_outside
        return Score(float(np.clip(effect, 0.0, 1.0)), max(0.0, float(side)))


class LabSsimScorer(DistanceScorer):
    """The built-in scorer ``lab-ssim``: mean CIEDE2000 / 100 plus (1 - mean SSIM) / 2 over the pixels."""

    name = "lab-ssim"

    def __init__(self) -> None:
        self._lab: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def distance(self, a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
        """``d(a, b; mask)`` of the module docstring (0 for an empty mask)."""
        from skimage.color import deltaE_ciede2000
        from skimage.metrics import structural_similarity

        a, b = as_rgb_array(a), as_rgb_array(b)
        mask = _mask(mask, a.shape[:2])
        if a.shape != b.shape:
            raise RenderError(f"images differ in size: {a.shape[:2]} vs {b.shape[:2]}")
        if min(a.shape[:2]) < MIN_SIDE:
            raise RenderError(f"images of {a.shape[1]}x{a.shape[0]} are too small to score; SSIM needs at least "
                              f"{MIN_SIDE} pixels per side")
        if not mask.any():
            return 0.0
        if np.array_equal(a, b):
            return 0.0
        delta_e = deltaE_ciede2000(self._lab_of(a), self._lab_of(b), channel_axis=-1)
        _, ssim_map = structural_similarity(a, b, data_range=255, channel_axis=2, gaussian_weights=True,
                                            sigma=SSIM_SIGMA, use_sample_covariance=False, full=True)
        ssim = ssim_map.mean(axis=2)
        value = float(delta_e[mask].mean()) / 100.0 + (1.0 - float(ssim[mask].mean())) / 2.0
        return max(0.0, value)

    def _lab_of(self, image: np.ndarray) -> np.ndarray:
        """CIELAB of ``image``, memoised for the last few arrays (references are compared again and again)."""
        from skimage.color import rgb2lab

        key = id(image)
        found = self._lab.get(key)
        if found is not None and found[0] is image:
            return found[1]
        lab = rgb2lab(image)
        if len(self._lab) >= 8:
            self._lab.pop(next(iter(self._lab)))
        self._lab[key] = (image, lab)
        return lab


def keep_mask(region: str, width: int, height: int) -> np.ndarray:
    """The boolean (height, width) mask of a keep box ``x0,y0,x1,y1`` (pixels, or fractions when every value is
    <= 1; parsed as the analyzer's ``--roi``). Refused when it is empty or covers the whole image (then nothing is
    left outside to measure side effects on).

    Example:
        >>> int(keep_mask("0.25,0,0.75,0.5", 8, 8).sum())
        16
    """
    try:
        box = Box.parse(region, width, height)
    except RenderError as error:
        raise RenderError(error.message.replace("region", "keep box", 1)) from None
    if (box.left, box.top, box.right, box.bottom) == (0, 0, width, height):
        raise RenderError(f"keep box {region!r} covers the whole {width}x{height} image: nothing is left outside it "
                          "to measure side effects on")
    mask = np.zeros((height, width), dtype=bool)
    mask[box.top:box.bottom, box.left:box.right] = True
    return mask


def as_score(value: Any, where: str) -> Score:
    """A scorer's answer as a ``Score``: a ``Score``, an object with ``effect`` and ``side``, or a pair; both
    finite, effect kept in 0..1, side effect >= 0 (RenderError naming ``where`` otherwise)."""
    if hasattr(value, "effect") and hasattr(value, "side"):
        effect, side = value.effect, value.side
    elif isinstance(value, tuple | list) and len(value) == 2:
        effect, side = value
    else:
        raise RenderError(f"{where}: expected a score (effect kept, side effect left), got {type(value).__name__}")
    try:
        effect, side = float(effect), float(side)
    except (TypeError, ValueError):
        raise RenderError(f"{where}: effect kept and side effect left must be numbers") from None
    if not (np.isfinite(effect) and np.isfinite(side)) or not 0.0 <= effect <= 1.0 or side < 0.0:
        raise RenderError(f"{where}: expected effect kept in 0..1 and side effect >= 0, got {effect!r}, {side!r}")
    return Score(effect, side)


def _mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != tuple(shape):
        raise RenderError(f"the keep mask must be a boolean array of shape {tuple(shape)}, got {mask.dtype} "
                          f"{mask.shape}")
    return mask
