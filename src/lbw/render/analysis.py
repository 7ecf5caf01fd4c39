"""Effective Block Analyzer metrics: Diff %, diff images, heatmaps, region-of-interest share, classification.

Diff % is LBW's: the share of RGB channel samples whose absolute difference from the source exceeds the
threshold (strict ``>``, default 20), in percent, over H x W x 3 samples.

Example:
    >>> import numpy as np
    >>> source = np.zeros((2, 2, 3), np.uint8); probe = source.copy(); probe[0, 0] = (21, 20, 0)
    >>> diff_percent(probe, source)   # one sample of 12 exceeds 20
    8.333333333333334
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lbw.errors import RenderError

DEFAULT_THRESHOLD = 20
IMPORTANT = "important"
UNNEEDED = "unneeded"
UNCLEAR = "unclear"


@dataclass(frozen=True)
class Box:
    """A region of interest in pixels: left, top, right, bottom (right/bottom exclusive)."""

    left: int
    top: int
    right: int
    bottom: int

    @classmethod
    def parse(cls, text: str, width: int, height: int) -> Box:
        """Read ``x0,y0,x1,y1`` in pixels, or in fractions of the image when every value is <= 1.

        Example: ``Box.parse("0.25,0,0.75,0.5", 512, 512)`` -> Box(128, 0, 384, 256).
        """
        try:
            numbers = [float(part) for part in text.split(",")]
        except ValueError:
            raise RenderError(f"region {text!r}: expected four numbers x0,y0,x1,y1") from None
        if len(numbers) != 4:
            raise RenderError(f"region {text!r}: expected four numbers x0,y0,x1,y1, found {len(numbers)}")
        if not all(math.isfinite(n) for n in numbers):
            raise RenderError(f"region {text!r}: expected four finite numbers x0,y0,x1,y1")
        if all(0 <= n <= 1 for n in numbers):
            numbers = [numbers[0] * width, numbers[1] * height, numbers[2] * width, numbers[3] * height]
        left, top, right, bottom = (round(n) for n in numbers)
        box = cls(max(0, left), max(0, top), min(width, right), min(height, bottom))
        if box.right <= box.left or box.bottom <= box.top:
            raise RenderError(f"region {text!r} is empty inside a {width}x{height} image")
        return box

    def as_text(self) -> str:
        """``x0,y0,x1,y1`` in pixels."""
        return f"{self.left},{self.top},{self.right},{self.bottom}"


@dataclass(frozen=True)
class BlockChange:
    """The analyzer's numbers for one block: Diff %, and inside/share of the region of interest if given."""

    block: str
    diff_percent: float
    roi_diff_percent: float | None = None
    roi_share_percent: float | None = None

    @property
    def score(self) -> float:
        """What the classification uses: the region's Diff % when a region is given, else the Diff %."""
        return self.diff_percent if self.roi_diff_percent is None else self.roi_diff_percent


@dataclass(frozen=True)
class Thresholds:
    """Classification rule: score >= important -> important; score < unneeded -> unneeded; else unclear."""

    important: float = 5.0
    unneeded: float = 1.0

    def __post_init__(self) -> None:
        if self.unneeded > self.important:
            raise RenderError(
                f"the unneeded threshold ({self.unneeded}) must not exceed "
                f"the important one ({self.important})"
            )

    def classify(self, score: float) -> str:
        """``important``, ``unneeded`` or ``unclear`` for a Diff % score."""
        if score >= self.important:
            return IMPORTANT
        if score < self.unneeded:
            return UNNEEDED
        return UNCLEAR

    def describe(self) -> str:
        """The rule in words, shown under the ranked table."""
        return (
            f"important: Diff % >= {self.important:g}; unneeded: Diff % < {self.unneeded:g}; "
            f"unclear: in between"
        )


def as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An 8-bit RGB array (H, W, 3) from a PIL image or an array."""
    array = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise RenderError(f"expected an 8-bit RGB image, got dtype {array.dtype} shape {array.shape}")
    return array


def changed_samples(probe: np.ndarray, source: np.ndarray, threshold: int = DEFAULT_THRESHOLD) -> np.ndarray:
    """Boolean (H, W, 3): channel samples with ``|probe - source| > threshold``."""
    probe, source = as_rgb_array(probe), as_rgb_array(source)
    if probe.shape != source.shape:
        raise RenderError(f"image sizes differ: {probe.shape[:2]} vs source {source.shape[:2]}")
    return np.abs(probe.astype(np.int16) - source.astype(np.int16)) > threshold


def diff_percent(probe: np.ndarray, source: np.ndarray, threshold: int = DEFAULT_THRESHOLD) -> float:
    """LBW's Diff %: 100 x changed channel samples / (H x W x 3)."""
    changed = changed_samples(probe, source, threshold)
    return 100.0 * int(changed.sum()) / changed.size


def block_change(
    block: str,
    probe: np.ndarray,
    source: np.ndarray,
    threshold: int = DEFAULT_THRESHOLD,
    roi: Box | None = None,
) -> BlockChange:
    """Diff % of one block, plus the region's own Diff % and its share of all changed samples."""
    changed = changed_samples(probe, source, threshold)
    total = int(changed.sum())
    percent = 100.0 * total / changed.size
    if roi is None:
        return BlockChange(block, percent)
    inside = changed[roi.top : roi.bottom, roi.left : roi.right]
    inside_count = int(inside.sum())
    share = 100.0 * inside_count / total if total else 0.0
    return BlockChange(block, percent, 100.0 * inside_count / inside.size, share)


def diff_image(probe: np.ndarray, source: np.ndarray, color: str = "black") -> Image.Image:
    """LBW's diff image: the raw absolute difference per channel; ``white`` inverts it."""
    if color not in ("black", "white"):
        raise RenderError(f"diff colour must be black or white, got {color!r}")
    probe, source = as_rgb_array(probe), as_rgb_array(source)
    diff = np.abs(probe.astype(np.int16) - source.astype(np.int16)).astype(np.uint8)
    return Image.fromarray(255 - diff if color == "white" else diff, "RGB")


def heatmap_overlay(
    probe: np.ndarray,
    source: np.ndarray,
    *,
    alpha: float = 0.6,
    full_scale: float = 96.0,
    roi: Box | None = None,
) -> Image.Image:
    """The source under a heatmap of the per-pixel change (mean |diff| over RGB; ``full_scale`` = hottest).

    The scale is fixed, not normalised per image, so heatmaps of different blocks compare directly and a
    block that changes nothing stays clear. A region of interest is outlined in white.
    """
    probe, source = as_rgb_array(probe), as_rgb_array(source)
    magnitude = np.abs(probe.astype(np.float32) - source.astype(np.float32)).mean(axis=2)
    level = np.clip(magnitude / full_scale, 0.0, 1.0)
    heat = _heat_colors(level)
    weight = (alpha * np.clip(level * 4.0, 0.0, 1.0))[..., None]
    blended = source.astype(np.float32) * (1.0 - weight) + heat * weight
    image = Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB")
    if roi is not None:
        from PIL import ImageDraw

        ImageDraw.Draw(image).rectangle(
            (roi.left, roi.top, roi.right - 1, roi.bottom - 1), outline=(255, 255, 255)
        )
    return image


def _heat_colors(level: np.ndarray) -> np.ndarray:
    """Black-body ramp: 0 -> dark red, 0.5 -> orange, 1 -> yellow-white (float RGB 0..255)."""
    red = np.clip(0.5 + 1.5 * level, 0.0, 1.0)
    green = np.clip(2.0 * level - 0.4, 0.0, 1.0)
    blue = np.clip(3.0 * level - 2.2, 0.0, 1.0)
    return np.stack([red, green, blue], axis=-1) * 255.0


def rank(changes: Sequence[BlockChange]) -> list[BlockChange]:
    """Blocks ordered by score, largest change first (ties keep block order)."""
    return sorted(changes, key=lambda change: -change.score)


def classify(changes: Sequence[BlockChange], thresholds: Thresholds) -> dict[str, str]:
    """Block ID -> ``important``/``unneeded``/``unclear``."""
    return {change.block: thresholds.classify(change.score) for change in changes}
