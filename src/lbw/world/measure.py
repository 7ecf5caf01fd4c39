"""Measure what a picture of the world shows: the colour of each region and the identity parts.

Colours are read in the regions every layout shares (``generator.core_masks``), as the median colour, and named
by the nearest palette colour in CIELAB with the CIEDE2000 difference (scikit-image). The identity parts are
read in the zones where they can appear: the hair ornament by its cyan, the choker by dark pixels on the neck,
long hair by the hair colour below the chin. ``detector_accuracy`` checks the readers on drawings whose truth is
known; the tests pin it.

Example:
    >>> from lbw.world.generator import Attributes, draw
    >>> reading = read(draw(Attributes(hair_color="red", clothes_color="blue"), seed=1).image)
    >>> reading.hair_color, reading.clothes_color, reading.background_color
    ('red', 'blue', 'white')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from lbw.world import generator
from lbw.world.generator import Attributes


def _lab(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(np.asarray(rgb, dtype=np.float64).reshape(-1, 1, 3) / 255.0).reshape(-1, 3)


def colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIEDE2000 difference between sRGB colours (arrays of shape (..., 3), 0..255)."""
    from skimage.color import deltaE_ciede2000

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    shape = np.broadcast_shapes(a.shape, b.shape)[:-1]
    la = _lab(np.broadcast_to(a, (*shape, 3)))
    lb = _lab(np.broadcast_to(b, (*shape, 3)))
    return deltaE_ciede2000(la, lb).reshape(shape)


def nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    """The palette name nearest to ``rgb`` (CIEDE2000)."""
    names = list(palette)
    distances = colour_distance(np.asarray(rgb)[None, :], np.array([palette[n] for n in names], dtype=np.float64))
    return names[int(np.argmin(distances))]


@dataclass(frozen=True)
class Reading:
    """What ``read`` saw in one picture (colour names, identity parts and the raw region colours)."""

    hair_color: str
    clothes_color: str
    background_color: str
    skin: str
    long_hair: bool
    hair_ornament: bool
    choker: bool
    colours: dict[str, tuple[float, float, float]]

    def matches(self, attrs: Attributes) -> dict[str, bool]:
        """Per region, whether the reading agrees with what ``attrs`` asked for."""
        return {
            "hair": self.hair_color == attrs.hair_color,
            "skin": self.skin == attrs.skin,
            "clothes": self.clothes_color == attrs.clothes_color,
            "background": self.background_color == attrs.background_color,
        }


@dataclass(frozen=True)
class _Template:
    """Where the identity parts are for one layout of the jitter grid."""

    ornament: np.ndarray
    choker: np.ndarray
    long_hair: np.ndarray
    hair_top: np.ndarray


@lru_cache(maxsize=2)
def templates(size: int = generator.SIZE) -> tuple[_Template, ...]:
    """One template per layout of a 5x5x5 grid over the seed jitter."""
    label = {name: i for i, name in enumerate(generator.PARTS)}
    full = Attributes(hair_ornament=True, choker=True)
    columns = (np.arange(size) + 0.5)[None, :] / size
    out = []
    for lay in generator.jitter_corners(5):
        long_map = generator.label_map(full, lay, size)
        short_map = generator.label_map(full.replace(hair_length="short"), lay, size)
        out.append(
            _Template(
                ornament=long_map == label["ornament"],
                choker=(long_map == label["choker"]) & (np.abs(columns - lay.cx) < 0.035),
                long_hair=(long_map == label["hair"]) & (short_map != label["hair"]),
                hair_top=(short_map == label["hair"]) & (long_map == label["hair"]),
            )
        )
    return tuple(out)


def _best(pixels: np.ndarray, masks: list[np.ndarray], score: Callable[[np.ndarray], float]) -> float:
    return max(score(pixels[mask]) for mask in masks)


def read(image: Image.Image | np.ndarray) -> Reading:
    """Read the region colours and identity parts of a 64x64 picture of the world."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    if pixels.shape[:2] != (generator.SIZE, generator.SIZE):
        pixels = np.asarray(Image.fromarray(pixels.astype(np.uint8)).resize((generator.SIZE,) * 2), dtype=np.float64)
    masks = generator.core_masks()
    colours = {part: np.median(pixels[masks[part]], axis=0) for part in ("hair", "skin", "clothes", "background")}
    cyan = colour_distance(pixels, np.array(generator._ORNAMENT, dtype=np.float64)) < 15
    luminance = pixels @ np.array([0.299, 0.587, 0.114])
    dark = luminance < 0.55 * float(colours["skin"] @ np.array([0.299, 0.587, 0.114]))
    to_hair = colour_distance(pixels, colours["hair"])
    to_rest = np.minimum(colour_distance(pixels, colours["clothes"]), colour_distance(pixels, colours["background"]))
    hair_like = to_hair < to_rest
    grid = templates()
    ornament = max(float(cyan[t.ornament].mean()) for t in grid) >= 0.5
    choker = max(float(dark[t.choker].mean()) for t in grid) >= 0.5
    # Long hair: below the chin, beside the neck, the colour is the hair's (else clothes or background).
    long_hair = max(float(hair_like[t.long_hair].mean()) for t in grid) >= 0.7
    return Reading(
        hair_color=nearest(colours["hair"], generator.HAIR_COLORS),
        clothes_color=nearest(colours["clothes"], generator.CLOTHES_COLORS),
        background_color=nearest(colours["background"], generator.BACKGROUND_COLORS),
        skin=nearest(colours["skin"], generator.SKIN_COLORS),
        long_hair=long_hair,
        hair_ornament=ornament,
        choker=choker,
        colours={part: (float(c[0]), float(c[1]), float(c[2])) for part, c in colours.items()},
    )


def colour_shift(image: Image.Image | np.ndarray, reference: Image.Image | np.ndarray, part: str) -> float:
    """Mean CIEDE2000 difference between two pictures of the same caption and seed over a region's core pixels:
    how far a LoRA moved that region's colour (a tint counts, even when every pixel keeps its palette name).

    Example:
        >>> colour_shift(picture, picture, "background")
        0.0
    """
    mask = generator.core_masks()[part]
    a, b = (np.asarray(p.convert("RGB") if isinstance(p, Image.Image) else p, dtype=np.float64)[mask]
            for p in (image, reference))
    return float(colour_distance(a, b).mean())


def green_share(image: Image.Image | np.ndarray, part: str) -> float:
    """Fraction of a region's core pixels whose colour is nearer the LoRA's green than the region's own palette.

    The gobuhime LoRA's side effect is green leaking onto clothes and background; this is the measure of it.
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    mask = generator.core_masks()[part]
    region = pixels[mask]
    to_green = colour_distance(region, np.array(generator.GREEN, dtype=np.float64))
    palette = {"clothes": generator.CLOTHES_COLORS, "background": generator.BACKGROUND_COLORS}[part]
    own = [colour_distance(region, np.array(c, dtype=np.float64)) for c in palette.values()]
    to_own = np.min(np.stack(own), axis=0)
    return float((to_green < to_own).mean())
