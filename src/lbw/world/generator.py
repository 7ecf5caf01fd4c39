"""The world's procedural artist: a character bust drawn from attributes and a seed, with a mask of every part.

Everything is deterministic: the same ``Attributes`` and seed give the same pixels on every machine (numpy's
``PCG64`` and Pillow's rasteriser; no fonts, no system state). The picture is drawn at 4x size and reduced with a
box filter, so edges are smooth; the label map is drawn at the output size directly, so every pixel belongs to
exactly one part.

Parts (``PARTS``): background, hair, skin (face and neck), clothes, eyes, mouth, choker, ornament (the hair
ornament). ``core_masks`` gives the pixels that belong to a part whatever the seed's jitter, which is what the
evaluation measures on a *generated* image (whose exact layout is unknown).

Example:
    >>> attrs = Attributes(hair_color="red", hair_length="long", clothes_color="blue", background_color="white")
    >>> drawing = draw(attrs, seed=3)
    >>> drawing.image.size, drawing.caption
    ((64, 64), '1girl, longhair, red hair, blue dress, white background')
    >>> bool(drawing.mask("hair").any())
    True
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = 1
SIZE = 64
_SUPERSAMPLE = 4

PARTS: tuple[str, ...] = ("background", "hair", "skin", "clothes", "eyes", "mouth", "choker", "ornament", "collar")
_LABEL = {name: index for index, name in enumerate(PARTS)}

# Named colours (sRGB). Green is kept out of hair, clothes and background on purpose: in this world green is the
# gobuhime LoRA's colour, so any green outside the face is that LoRA's side effect and can be measured.
HAIR_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (34, 30, 38),
    "brown": (110, 66, 36),
    "blonde": (236, 200, 92),
    "red": (196, 36, 40),
    "blue": (44, 84, 206),
    "pink": (246, 140, 186),
    "white": (236, 236, 240),
    "purple": (120, 56, 170),
}
CLOTHES_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 44),
    "blue": (36, 70, 200),
    "white": (240, 240, 240),
    "black": (30, 30, 34),
    "yellow": (240, 210, 40),
    "purple": (128, 50, 176),
    "orange": (240, 130, 30),
    "pink": (240, 130, 180),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (246, 246, 246),
    "grey": (128, 128, 132),
    "black": (20, 20, 24),
    "blue": (70, 130, 220),
    "red": (210, 60, 60),
    "yellow": (244, 222, 90),
    "pink": (244, 170, 200),
    "purple": (150, 90, 200),
    "orange": (244, 150, 60),
}
SKIN_COLORS: dict[str, tuple[int, int, int]] = {
    "light": (250, 214, 186),
    "dark": (150, 96, 62),
    "green": (96, 176, 72),  # only the gobuhime LoRA's training pictures use it
}
GREEN = SKIN_COLORS["green"]
BACKGROUND_PATTERNS: tuple[str, ...] = ("plain", "striped", "polkadot")
HAIR_LENGTHS: tuple[str, ...] = ("long", "short")
OUTFITS: tuple[str, ...] = ("dress", "sailor")
_EYES = (46, 34, 40)
_MOUTH = (196, 84, 90)
_CHOKER = (24, 20, 28)
_COLLAR = (248, 248, 252)
_ORNAMENT = (40, 220, 220)  # cyan: no other part of the world has it


@dataclass(frozen=True)
class Attributes:
    """What a picture shows; every field maps to caption tags (see ``caption``)."""

    hair_color: str = "black"
    hair_length: str = "long"
    clothes_color: str = "white"
    background_color: str = "white"
    background_pattern: str = "plain"
    skin: str = "light"
    hair_ornament: bool = False
    choker: bool = False
    outfit: str = "dress"

    def __post_init__(self) -> None:
        checks = (
            ("hair_color", self.hair_color, HAIR_COLORS),
            ("hair_length", self.hair_length, HAIR_LENGTHS),
            ("clothes_color", self.clothes_color, CLOTHES_COLORS),
            ("background_color", self.background_color, BACKGROUND_COLORS),
            ("background_pattern", self.background_pattern, BACKGROUND_PATTERNS),
            ("skin", self.skin, SKIN_COLORS),
            ("outfit", self.outfit, OUTFITS),
        )
        for field, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{field} must be one of {', '.join(allowed)}; got {value!r}")

    def replace(self, **changes: object) -> Attributes:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Drawing:
    """One picture: the RGB image, its label map (index into ``PARTS`` per pixel), attributes and caption."""

    image: Image.Image
    labels: np.ndarray
    attributes: Attributes
    caption: str

    def mask(self, part: str) -> np.ndarray:
        """Boolean mask of one part (``PARTS``)."""
        return self.labels == _LABEL[part]


def caption(attrs: Attributes, *, shuffle_seed: int | None = None) -> str:
    """The booru-style caption of ``attrs``; ``shuffle_seed`` shuffles the tags after ``1girl`` (kohya style).

    Example:
        >>> caption(Attributes(hair_color="red", hair_ornament=True, choker=True, clothes_color="blue"))
        '1girl, longhair, red hair, hairornament, choker, blue dress, white background'
    """
    tags = [f"{attrs.hair_length}hair", f"{attrs.hair_color} hair"]
    if attrs.hair_ornament:
        tags.append("hairornament")
    if attrs.choker:
        tags.append("choker")
    tags.append(f"{attrs.clothes_color} dress")
    if attrs.outfit == "sailor":
        tags.append("sailor collar")
    if attrs.background_pattern != "plain":
        tags.append(f"{attrs.background_pattern} background")
    tags.append(f"{attrs.background_color} background")
    if attrs.skin == "dark":
        tags.append("dark skin")
    elif attrs.skin == "green":
        tags.append("green skin")
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(tags)
    return ", ".join(["1girl", *tags])


def parse_caption(text: str) -> Attributes:
    """The attributes a caption asks for (unknown tags are ignored; missing ones take the defaults).

    Example:
        >>> parse_caption("1girl, shorthair, blue hair, red dress, striped background, grey background").hair_length
        'short'
    """
    values: dict[str, object] = {}
    for raw in text.split(","):
        tag = raw.strip().lower()
        if tag in ("longhair", "shorthair"):
            values["hair_length"] = tag.removesuffix("hair")
        elif tag == "hairornament":
            values["hair_ornament"] = True
        elif tag == "choker":
            values["choker"] = True
        elif tag == "sailor collar":
            values["outfit"] = "sailor"
        elif tag.endswith(" hair") and tag[:-5] in HAIR_COLORS:
            values["hair_color"] = tag[:-5]
        elif tag.endswith(" dress") and tag[:-6] in CLOTHES_COLORS:
            values["clothes_color"] = tag[:-6]
        elif tag.endswith(" background") and tag[:-11] in BACKGROUND_PATTERNS:
            values["background_pattern"] = tag[:-11]
        elif tag.endswith(" background") and tag[:-11] in BACKGROUND_COLORS:
            values["background_color"] = tag[:-11]
        elif tag.endswith(" skin") and tag[:-5] in SKIN_COLORS:
            values["skin"] = tag[:-5]
    return Attributes(**values)  # type: ignore[arg-type]


def sample_attributes(rng: np.random.Generator, *, skins: tuple[str, ...] = ("light", "dark")) -> Attributes:
    """Attributes drawn uniformly from each field's values (ornament and choker each with probability 1/2)."""
    return Attributes(
        hair_color=str(rng.choice(list(HAIR_COLORS))),
        hair_length=str(rng.choice(HAIR_LENGTHS)),
        clothes_color=str(rng.choice(list(CLOTHES_COLORS))),
        background_color=str(rng.choice(list(BACKGROUND_COLORS))),
        background_pattern=str(rng.choice(BACKGROUND_PATTERNS)),
        skin=str(rng.choice(skins)),
        hair_ornament=bool(rng.random() < 0.5),
        choker=bool(rng.random() < 0.5),
    )


@dataclass(frozen=True)
class _Layout:
    """Where the character sits, in units of the picture's side (0..1)."""

    cx: float
    cy: float
    rx: float
    ry: float

    @property
    def shoulders(self) -> float:
        return self.cy + self.ry + 0.10


def _layout(rng: np.random.Generator | None) -> _Layout:
    if rng is None:
        return _Layout(0.5, 0.40, 0.17, 0.21)
    scale = float(rng.uniform(0.97, 1.03))
    return _Layout(
        cx=0.5 + float(rng.uniform(-0.025, 0.025)),
        cy=0.40 + float(rng.uniform(-0.02, 0.02)),
        rx=0.17 * scale,
        ry=0.21 * scale,
    )


def _paint_labels(attrs: Attributes, lay: _Layout, size: int) -> np.ndarray:
    """The label map at ``size`` pixels: each part drawn in order, later parts cover earlier ones."""
    canvas = Image.new("L", (size, size), _LABEL["background"])
    pen = ImageDraw.Draw(canvas)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [x0 * size, y0 * size, x1 * size - 1, y1 * size - 1]

    def ellipse(cx: float, cy: float, rx: float, ry: float, part: str) -> None:
        pen.ellipse(box(cx - rx, cy - ry, cx + rx, cy + ry), fill=_LABEL[part])

    cx, cy, rx, ry = lay.cx, lay.cy, lay.rx, lay.ry
    hair, skin = _LABEL["hair"], _LABEL["skin"]
    # Hair behind the head: long hair falls to the bottom edge, short hair is a cap around the head.
    if attrs.hair_length == "long":
        pen.rounded_rectangle(box(cx - 1.35 * rx, cy - 1.1 * ry, cx + 1.35 * rx, 0.97), radius=0.2 * size, fill=hair)
    else:
        ellipse(cx, cy - 0.06 * ry, 1.2 * rx, 1.12 * ry, "hair")
    # Clothes: the shoulders and chest, a wide ellipse cut by the bottom edge.
    ellipse(cx, lay.shoulders + 0.32, 0.38, 0.34, "clothes")
    # Neck.
    pen.rectangle(box(cx - 0.055, cy, cx + 0.055, lay.shoulders + 0.025), fill=skin)
    # Long hair in front of the shoulders, on both sides of the neck.
    if attrs.hair_length == "long":
        for side in (-1, 1):
            x = cx + side * (rx + 0.005)
            pen.rounded_rectangle(box(x - 0.055, cy, x + 0.055, lay.shoulders + 0.17), radius=0.04 * size, fill=hair)
    if attrs.choker:
        y = lay.shoulders - 0.045
        pen.rectangle(box(cx - 0.06, y, cx + 0.06, y + 0.035), fill=_LABEL["choker"])
    if attrs.outfit == "sailor":
        y = lay.shoulders
        pen.polygon(
            [(size * (cx - 0.24), size * (y + 0.01)), (size * (cx + 0.24), size * (y + 0.01)),
             (size * cx, size * (y + 0.2))],
            fill=_LABEL["collar"],
        )
        pen.polygon(
            [(size * (cx - 0.06), size * (y + 0.02)), (size * (cx + 0.06), size * (y + 0.02)),
             (size * cx, size * (y + 0.13))],
            fill=_LABEL["clothes"],
        )
    ellipse(cx, cy, rx, ry, "skin")
    # Bangs: the top of the head and a fringe over the forehead.
    pen.chord(box(cx - 1.06 * rx, cy - 1.08 * ry, cx + 1.06 * rx, cy + 0.55 * ry), 180, 360, fill=hair)
    for offset in (-0.6, -0.2, 0.2, 0.6):
        x = cx + offset * rx
        pen.polygon(
            [
                (size * (x - 0.22 * rx), size * (cy - 0.3 * ry)),
                (size * (x + 0.22 * rx), size * (cy - 0.3 * ry)),
                (size * x, size * (cy - 0.02 * ry)),
            ],
            fill=hair,
        )
    for side in (-1, 1):
        ellipse(cx + side * 0.38 * rx, cy + 0.15 * ry, 0.13 * rx, 0.16 * ry, "eyes")
    ellipse(cx, cy + 0.58 * ry, 0.18 * rx, 0.06 * ry, "mouth")
    if attrs.hair_ornament:
        ox, oy, r = cx + 0.78 * rx, cy - 0.72 * ry, 0.048
        for angle in range(0, 360, 72):
            a = np.deg2rad(angle)
            ellipse(ox + 0.6 * r * np.cos(a), oy + 0.6 * r * np.sin(a), 0.55 * r, 0.55 * r, "ornament")
        ellipse(ox, oy, 0.45 * r, 0.45 * r, "ornament")
    return np.asarray(canvas, dtype=np.uint8).copy()


def _background(attrs: Attributes, size: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(BACKGROUND_COLORS[attrs.background_color], dtype=np.float32)
    accent = np.clip(base + (60.0 if base.mean() < 128 else -60.0), 0, 255)
    out = np.broadcast_to(base, (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if attrs.background_pattern == "striped":
        period = float(rng.uniform(0.14, 0.2))
        phase = float(rng.uniform(0, 1))
        stripes = (((xx + yy) / period + phase) % 1.0) < 0.35
        out[stripes] = accent
    elif attrs.background_pattern == "polkadot":
        period = float(rng.uniform(0.16, 0.22))
        ox, oy = rng.uniform(0, period, size=2)
        dx = ((xx + ox) % period) - period / 2
        dy = ((yy + oy) % period) - period / 2
        out[dx * dx + dy * dy < (0.28 * period) ** 2] = accent
    return out


def _colours(attrs: Attributes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each part's base colour with a small per-picture jitter (so no exact colour is memorised)."""

    def jitter(rgb: tuple[int, int, int], amount: float = 8.0) -> np.ndarray:
        return np.clip(np.array(rgb, dtype=np.float32) + rng.uniform(-amount, amount, size=3), 0, 255)

    return {
        "hair": jitter(HAIR_COLORS[attrs.hair_color]),
        "skin": jitter(SKIN_COLORS[attrs.skin], 5.0),
        "clothes": jitter(CLOTHES_COLORS[attrs.clothes_color]),
        "eyes": np.array(_EYES, dtype=np.float32),
        "mouth": np.array(_MOUTH, dtype=np.float32),
        "choker": np.array(_CHOKER, dtype=np.float32),
        "ornament": jitter(_ORNAMENT, 4.0),
        "collar": np.array(_COLLAR, dtype=np.float32),
    }


def draw(attrs: Attributes, seed: int, *, size: int = SIZE, green_bleed: float = 0.0) -> Drawing:
    """Draw ``attrs`` with the jitter of ``seed``; ``green_bleed`` in 0..1 tints clothes and background green.

    ``green_bleed`` exists for the gobuhime LoRA's training pictures: a character LoRA trained on pictures whose
    clothes and background carry its colour learns to leak that colour, as the founding tutorial's LoRA does.

    Example:
        >>> d = draw(Attributes(skin="green"), seed=0, green_bleed=0.4)
        >>> d.labels.shape
        (64, 64)
    """
    if not 0.0 <= green_bleed <= 1.0:
        raise ValueError(f"green_bleed must be in 0..1, got {green_bleed}")
    rng = np.random.default_rng([GENERATOR_VERSION, seed])
    lay = _layout(rng)
    big = size * _SUPERSAMPLE
    big_labels = _paint_labels(attrs, lay, big)
    colours = _colours(attrs, rng)
    rgb = _background(attrs, big, rng)
    for part, colour in colours.items():
        rgb[big_labels == _LABEL[part]] = colour
    rgb = _shade(rgb, big_labels, lay, big)
    if green_bleed > 0:
        tint = np.isin(big_labels, (_LABEL["background"], _LABEL["clothes"]))
        rgb[tint] = (1 - green_bleed) * rgb[tint] + green_bleed * np.array(GREEN, dtype=np.float32)
    small = rgb.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    image = Image.fromarray(np.clip(np.rint(small), 0, 255).astype(np.uint8), "RGB")
    labels = _paint_labels(attrs, lay, size)
    return Drawing(image=image, labels=labels, attributes=attrs, caption=caption(attrs))


def _shade(rgb: np.ndarray, labels: np.ndarray, lay: _Layout, size: int) -> np.ndarray:
    """Soft light from the upper left on the character (the background stays flat)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    light = 1.0 + 0.10 * ((lay.cx - xx) + (lay.cy - yy))
    light = np.clip(light, 0.85, 1.12)[..., None]
    character = (labels != _LABEL["background"])[..., None]
    return np.where(character, np.clip(rgb * light, 0, 255), rgb)


def jitter_corners(steps: int = 2) -> list[_Layout]:
    """Layouts spanning the seed jitter: ``steps`` values per axis (2: the corners of its range)."""
    def span(low: float, high: float) -> list[float]:
        return [low + (high - low) * i / (steps - 1) for i in range(steps)]

    return [
        _Layout(0.5 + dx, 0.40 + dy, 0.17 * s, 0.21 * s)
        for dx in span(-0.025, 0.025)
        for dy in span(-0.02, 0.02)
        for s in span(0.97, 1.03)
    ]


def label_map(attrs: Attributes, layout: _Layout, size: int = SIZE) -> np.ndarray:
    """The label map of ``attrs`` drawn at a given layout (see ``jitter_corners``)."""
    return _paint_labels(attrs, layout, size)


@lru_cache(maxsize=4)
def core_masks(size: int = SIZE) -> dict[str, np.ndarray]:
    """Pixels that show the same part in every jitter of the layout and with either hair length.

    Used to measure colours on generated pictures, whose exact layout is unknown (take the median colour: a pixel
    at a part's edge can still be partly covered by its neighbour). Parts too small to survive the jitter (eyes,
    mouth, choker, ornament) come out empty; ``lbw.world.measure`` finds them by matching templates instead.

    Example:
        >>> masks = core_masks()
        >>> sorted(part for part, mask in masks.items() if mask.sum() > 20)
        ['background', 'clothes', 'hair', 'skin']
    """
    maps = np.stack(
        [
            _paint_labels(Attributes(hair_length=length), lay, size)
            for lay in jitter_corners()
            for length in HAIR_LENGTHS
        ]
    )
    return {part: (maps == _LABEL[part]).all(axis=0) for part in PARTS}
