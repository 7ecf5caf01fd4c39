"""Does the world model really draw? Held-out measurements, fixed seeds, numbers with their counts.

- ``caption_control``: for attribute combinations whose (hair, clothes, background) colour triple never occurred
  in training (``lbw.world.data.held_out_prompts``), render each caption at fixed seeds and read every region's
  colour with ``lbw.world.measure``; report the share of regions that match the caption, per region and overall,
  and how often asked-for identity parts (ornament, choker, long hair) are found.
- ``lora_effect`` (with a LoRA): the same captions with the LoRA's trigger, with and without the LoRA at a given
  strength; skin green share, identity parts, and the side effect: the green share on clothes and background
  against the base model at the same seeds.

Sampling settings are those of ``WORLD_SETTINGS`` (chosen on training-distribution captions, never on these).

Example:
    >>> report = caption_control(pipeline, combinations=100, seeds=(0, 1))
    >>> report["overall"] >= 0.9
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lbw.world import data, measure
from lbw.world.generator import Attributes, caption


@dataclass(frozen=True)
class SamplingSettings:
    steps: int = 8
    cfg: float = 5.0
    sampler: str = "DPM++ 2M"
    size: int = 64
    negative_prompt: str = ""


WORLD_SETTINGS = SamplingSettings()
EVALUATION_SEED = 20261207


def render_captions(
    pipeline: Any,
    captions: Sequence[str],
    seeds: Sequence[int],
    settings: SamplingSettings = WORLD_SETTINGS,
    *,
    batch: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> list[Image.Image]:
    """Render each (caption, seed) pair, captions outer; each image has its own seeded CPU generator."""
    import torch

    jobs = [(text, seed) for text in captions for seed in seeds]
    images: list[Image.Image] = []
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        generators = [torch.Generator().manual_seed(seed) for _, seed in chunk]
        with torch.no_grad():
            out = pipeline(
                prompt=[text for text, _ in chunk],
                negative_prompt=[settings.negative_prompt] * len(chunk),
                num_inference_steps=settings.steps,
                guidance_scale=settings.cfg,
                height=settings.size,
                width=settings.size,
                generator=generators,
            )
        images.extend(out.images)
        if progress:
            progress(len(images), len(jobs))
    return images


def caption_control(
    pipeline: Any,
    *,
    combinations: int = 100,
    seeds: Sequence[int] = (0, 1),
    settings: SamplingSettings = WORLD_SETTINGS,
    progress: Callable[[int, int], None] | None = None,
    validation: bool = False,
) -> dict[str, Any]:
    """Region colour agreement with held-out captions (see the module docstring).

    ``validation`` asks for training combinations instead (new seeds): what sampling settings are chosen on, so
    the held-out figures are never tuned on.
    """
    if validation:
        prompts = data.validation_prompts(combinations, EVALUATION_SEED + 7)
    else:
        prompts = data.held_out_prompts(combinations, EVALUATION_SEED)
    images = render_captions(pipeline, [caption(a) for a in prompts], seeds, settings, progress=progress)
    regions = ("hair", "skin", "clothes", "background")
    hits = dict.fromkeys(regions, 0)
    parts = {"hair_ornament": [0, 0], "choker": [0, 0], "long_hair": [0, 0], "short_hair": [0, 0]}
    failures: list[dict[str, Any]] = []
    for index, image in enumerate(images):
        attrs = prompts[index // len(seeds)]
        reading = measure.read(image)
        for region, ok in reading.matches(attrs).items():
            hits[region] += ok
            if not ok:
                failures.append({"caption": caption(attrs), "seed": seeds[index % len(seeds)], "region": region,
                                 "asked": _asked(attrs, region), "read": _read(reading, region)})
        _count(parts, "hair_ornament", attrs.hair_ornament, reading.hair_ornament)
        _count(parts, "choker", attrs.choker, reading.choker)
        _count(parts, "long_hair", attrs.hair_length == "long", reading.long_hair)
        _count(parts, "short_hair", attrs.hair_length == "short", not reading.long_hair)
    total = len(images)
    return {
        "combinations": combinations,
        "seeds": list(seeds),
        "images": total,
        "per_region": {region: hits[region] / total for region in regions},
        "overall": sum(hits.values()) / (total * len(regions)),
        "identity_found_when_asked": {k: (v[0] / v[1] if v[1] else None) for k, v in parts.items()},
        "failures": failures[:40],
        "settings": vars(settings),
        "prompts": "validation (training combinations)" if validation else "held-out combinations",
    }


def _count(table: dict[str, list[int]], key: str, asked: bool, found: bool) -> None:
    if asked:
        table[key][1] += 1
        table[key][0] += found


def _asked(attrs: Attributes, region: str) -> str:
    return {"hair": attrs.hair_color, "skin": attrs.skin, "clothes": attrs.clothes_color,
            "background": attrs.background_color}[region]


def _read(reading: measure.Reading, region: str) -> str:
    return {"hair": reading.hair_color, "skin": reading.skin, "clothes": reading.clothes_color,
            "background": reading.background_color}[region]


def summarise_lora(
    base_images: Sequence[Image.Image], lora_images: Sequence[Image.Image], prompts: Sequence[Attributes], seeds: int
) -> dict[str, Any]:
    """Skin, identity and side-effect numbers of LoRA renders against base renders of the same captions/seeds."""
    readings = [measure.read(image) for image in lora_images]
    green_skin = float(np.mean([r.skin == "green" for r in readings]))
    identity = {
        "long_hair": float(np.mean([r.long_hair for r in readings])),
        "hair_ornament": float(np.mean([r.hair_ornament for r in readings])),
        "choker": float(np.mean([r.choker for r in readings])),
    }
    side: dict[str, dict[str, float]] = {}
    shift: dict[str, float] = {}
    for part in ("clothes", "background"):
        with_lora = [measure.green_share(image, part) for image in lora_images]
        without = [measure.green_share(image, part) for image in base_images]
        side[part] = {"with_lora": float(np.mean(with_lora)), "base": float(np.mean(without))}
        shift[part] = float(np.mean([measure.colour_shift(a, b, part) for a, b in zip(lora_images, base_images,
                                                                                      strict=True)]))
    kept = [
        measure.read(image).matches(prompts[i // seeds])
        for i, image in enumerate(lora_images)
    ]
    return {
        "images": len(lora_images),
        "green_skin": green_skin,
        "identity_present": identity,
        "green_share": side,
        "colour_shift": shift,
        "caption_colours_kept": {
            region: float(np.mean([k[region] for k in kept])) for region in ("hair", "clothes", "background")
        },
    }


def lora_effect(
    pipeline: Any,
    lora_path: str,
    *,
    trigger: str = "gobuhime",
    strength: float = 1.0,
    combinations: int = 50,
    seeds: Sequence[int] = (0, 1),
    ratios: dict[str, float] | None = None,
    settings: SamplingSettings = WORLD_SETTINGS,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The LoRA's effect and side effect on held-out captions (trigger added), against the base model.

    ``ratios`` are LBW block ratios (absent blocks 0, as LBW fills); None applies the LoRA at full strength.
    The LoRA is applied the way lbw's diffusers backend applies it (``WeightPatcher``), so what is measured here
    is what a plot shows.
    """
    from lbw.files.lora_file import LoraFile
    from lbw.render.backends.lora_patch import WeightPatcher
    from lbw.render.weighting import LoraState, _AllOnes

    prompts = data.held_out_prompts(combinations, EVALUATION_SEED + 1)
    texts = [_with_trigger(caption(a), trigger) for a in prompts]
    base_images = render_captions(pipeline, texts, seeds, settings, progress=progress)
    patcher = WeightPatcher(pipeline, [LoraFile.open(lora_path)])
    try:
        state = LoraState(strength, strength, _AllOnes() if ratios is None else ratios)
        patcher.apply([state])
        lora_images = render_captions(pipeline, texts, seeds, settings, progress=progress)
    finally:
        patcher.restore()
    report = summarise_lora(base_images, lora_images, prompts, len(seeds))
    report.update({"lora": lora_path, "strength": strength, "trigger": trigger, "seeds": list(seeds)})
    return report


def _with_trigger(text: str, trigger: str) -> str:
    head, _, rest = text.partition(", ")
    return f"{head}, {trigger}, {rest}" if trigger else text


def side_effect_numbers(images: Sequence[Image.Image]) -> dict[str, float]:
    """For renders with (or without) gobuhime: share of pictures with green skin, and the green share on clothes
    and background (the side effect), each averaged over the pictures.

    Example:
        >>> side_effect_numbers([image])["background_green"]
        0.0
    """
    readings = [measure.read(image) for image in images]
    return {
        "skin_green": float(np.mean([r.skin == "green" for r in readings])),
        "clothes_green": float(np.mean([measure.green_share(image, "clothes") for image in images])),
        "background_green": float(np.mean([measure.green_share(image, "background") for image in images])),
        "ornament": float(np.mean([r.hair_ornament for r in readings])),
        "choker": float(np.mean([r.choker for r in readings])),
    }
