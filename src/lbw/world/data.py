"""Training and evaluation sets of the world, deterministic from seeds, with a held-out split by combination.

The held-out split is by the (hair colour, clothes colour, background colour) triple: about one triple in ten is
never drawn for training, so every evaluation caption asks for a combination the model has not seen.

Example:
    >>> triple_is_held_out("red", "blue", "white") in (True, False)
    True
    >>> sets = training_set(count=8, seed=1)
    >>> sets.images.shape, len(sets.captions)
    ((8, 64, 64, 3), 8)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lbw.world import generator
from lbw.world.generator import Attributes

HOLDOUT_PERCENT = 10


def triple_is_held_out(hair: str, clothes: str, background: str) -> bool:
    """True for the triples kept out of training (a fixed hash: the same on every machine)."""
    digest = hashlib.sha256(f"{hair}|{clothes}|{background}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % 100 < HOLDOUT_PERCENT


def is_held_out(attrs: Attributes) -> bool:
    return triple_is_held_out(attrs.hair_color, attrs.clothes_color, attrs.background_color)


@dataclass
class PictureSet:
    """Pictures (N x 64 x 64 x 3 uint8), their captions and attributes."""

    images: np.ndarray
    captions: list[str]
    attributes: list[Attributes]


def _collect(count: int, seed: int, make: Callable[[np.random.Generator, int], tuple[Attributes, float]]) -> PictureSet:
    rng = np.random.default_rng([seed, 0xDA7A])
    images = np.empty((count, generator.SIZE, generator.SIZE, 3), dtype=np.uint8)
    captions: list[str] = []
    attributes: list[Attributes] = []
    for index in range(count):
        attrs, bleed = make(rng, index)
        drawing = generator.draw(attrs, seed=seed * 1_000_003 + index, green_bleed=bleed)
        images[index] = np.asarray(drawing.image)
        captions.append(drawing.caption)
        attributes.append(attrs)
    return PictureSet(images, captions, attributes)


def training_set(count: int, seed: int) -> PictureSet:
    """``count`` pictures of the base world (light or dark skin), none of a held-out triple."""

    def make(rng: np.random.Generator, index: int) -> tuple[Attributes, float]:
        while True:
            attrs = generator.sample_attributes(rng)
            if not is_held_out(attrs):
                return attrs, 0.0

    return _collect(count, seed, make)


def held_out_prompts(count: int, seed: int) -> list[Attributes]:
    """``count`` distinct attribute combinations of held-out triples (for the caption-control evaluation)."""
    rng = np.random.default_rng([seed, 0xE7A1])
    found: dict[Attributes, None] = {}
    while len(found) < count:
        attrs = generator.sample_attributes(rng)
        if is_held_out(attrs):
            found.setdefault(attrs, None)
    return list(found)


def validation_prompts(count: int, seed: int) -> list[Attributes]:
    """``count`` distinct combinations of training triples (for choosing sampling settings, never the held-out ones)."""
    rng = np.random.default_rng([seed, 0x7A11])
    found: dict[Attributes, None] = {}
    while len(found) < count:
        attrs = generator.sample_attributes(rng)
        if not is_held_out(attrs):
            found.setdefault(attrs, None)
    return list(found)
