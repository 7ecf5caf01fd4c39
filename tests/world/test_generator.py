"""The world's generator: deterministic pictures, captions that round-trip, masks and readers that agree."""

from __future__ import annotations

import numpy as np
import pytest

from lbw.world import data, generator, measure
from lbw.world.generator import Attributes, caption, draw, parse_caption


def test_same_seed_same_pixels_and_different_seed_differs() -> None:
    attrs = Attributes(hair_color="blue", clothes_color="red", background_pattern="striped", choker=True)
    a, b, c = draw(attrs, 7), draw(attrs, 7), draw(attrs, 8)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_caption_matches_the_tutorial_style_and_round_trips() -> None:
    attrs = Attributes(hair_color="red", hair_ornament=True, choker=True, clothes_color="blue")
    assert caption(attrs) == "1girl, longhair, red hair, hairornament, choker, blue dress, white background"
    rng = np.random.default_rng(0)
    for _ in range(200):
        sample = generator.sample_attributes(rng, skins=("light", "dark", "green"))
        assert parse_caption(caption(sample)) == sample
        assert parse_caption(caption(sample, shuffle_seed=3)) == sample


def test_every_part_is_drawn_where_asked() -> None:
    full = draw(Attributes(hair_ornament=True, choker=True, outfit="sailor"), 1)
    for part in generator.PARTS:
        assert full.mask(part).sum() > 0, part
    bare = draw(Attributes(), 1)
    for part in ("ornament", "choker", "collar"):
        assert bare.mask(part).sum() == 0


def test_region_colours_are_the_palette_colours() -> None:
    attrs = Attributes(hair_color="pink", clothes_color="yellow", background_color="blue", skin="dark")
    drawing = draw(attrs, 3)
    pixels = np.asarray(drawing.image, dtype=float)
    for part, palette, name in (
        ("hair", generator.HAIR_COLORS, "pink"),
        ("clothes", generator.CLOTHES_COLORS, "yellow"),
        ("background", generator.BACKGROUND_COLORS, "blue"),
        ("skin", generator.SKIN_COLORS, "dark"),
    ):
        median = np.median(pixels[generator.core_masks()[part]], axis=0)
        assert measure.nearest(median, palette) == name


def test_green_bleed_tints_only_clothes_and_background() -> None:
    attrs = Attributes(skin="green", clothes_color="blue", background_color="white")
    plain, tinted = draw(attrs, 4), draw(attrs, 4, green_bleed=0.5)
    assert measure.green_share(plain.image, "clothes") == 0.0
    assert measure.green_share(tinted.image, "background") > 0.9
    face = generator.core_masks()["skin"]
    assert np.array_equal(np.asarray(plain.image)[face], np.asarray(tinted.image)[face])
    with pytest.raises(ValueError, match="green_bleed"):
        draw(attrs, 4, green_bleed=1.5)


def test_readers_agree_with_the_truth_on_drawings() -> None:
    """The evaluation's readers, checked where the truth is known (200 random drawings)."""
    rng = np.random.default_rng(11)
    wrong: dict[str, int] = {}
    undecidable = 0
    for index in range(200):
        attrs = generator.sample_attributes(rng)
        reading = measure.read(draw(attrs, 50_000 + index).image)
        for region, ok in reading.matches(attrs).items():
            wrong[region] = wrong.get(region, 0) + (not ok)
        wrong["ornament"] = wrong.get("ornament", 0) + (reading.hair_ornament != attrs.hair_ornament)
        wrong["choker"] = wrong.get("choker", 0) + (reading.choker != attrs.choker)
        same_colour = attrs.hair_color == attrs.clothes_color or attrs.hair_color == attrs.background_color
        if same_colour:
            undecidable += 1
        else:
            wrong["long_hair"] = wrong.get("long_hair", 0) + (reading.long_hair != (attrs.hair_length == "long"))
    assert wrong == dict.fromkeys(("hair", "skin", "clothes", "background", "ornament", "choker", "long_hair"), 0)
    assert undecidable < 60


def test_held_out_triples_are_about_a_tenth_and_never_in_training() -> None:
    triples = [
        (h, c, b)
        for h in generator.HAIR_COLORS
        for c in generator.CLOTHES_COLORS
        for b in generator.BACKGROUND_COLORS
    ]
    held = [t for t in triples if data.triple_is_held_out(*t)]
    assert 0.06 < len(held) / len(triples) < 0.14
    pictures = data.training_set(count=40, seed=5)
    assert not any(data.is_held_out(a) for a in pictures.attributes)
    prompts = data.held_out_prompts(100, seed=1)
    assert len(set(prompts)) == 100 and all(data.is_held_out(a) for a in prompts)
