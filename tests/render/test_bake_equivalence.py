"""Rendering a LoRA with block weights W equals rendering the LoRA ``lbw bake`` wrote with W, at weight 1.

Tiny SD1.5-layout model and its kohya LoCon (attention + resnets + samplers + text encoder), a mixed 26-value
vector with 0, 0.5, -0.5 and 1.5. Tolerances, stated once:
- patched weights: for every layer, max |W_weights − W_baked| ≤ 1e-6 · max |W_weights| (float32 rounding of
  W0 + ρ·ΔW against W0 + ΔW(ρ·up)); layers of blocks at 0 stay exactly W0 on both sides;
- images (same seeds): at most 2 levels of 255 apart on any RGB sample.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lbw.domain.layouts import SD26
from lbw.domain.weights import weights_from_numbers
from lbw.files.lora_file import LoraFile
from lbw.render.backends.diffusers_backend import DiffusersBackend
from lbw.render.backends.lora_patch import WeightPatcher
from lbw.render.plan import Cell, LoraSpec, Plan
from lbw.render.runner import run_plan
from lbw.render.weighting import LoraState, ratios_of
from lbw.services.demo_render import demo_settings

W = (1, 0, 0.5, -0.5, 1.5, 1, 0, 0.5, 1, -0.5, 1.5, 0, 1, 0.5, 1, 1.5, -0.5, 0, 1, 0.5, 1, 1, -0.5, 1.5, 0, 1)
RATIOS = ratios_of("SD26", tuple(map(float, W)))
ONES = {block: 1.0 for block in SD26.ids}
RELATIVE = 1e-6
LEVELS = 2


@pytest.fixture(scope="module")
def baked(tiny_assets, tmp_path_factory):
    from lbw.services.bake import bake

    _, lora = tiny_assets
    dest = tmp_path_factory.mktemp("baked") / "gobuhime-tiny-W.safetensors"
    report = bake(lora, dest, weights_from_numbers(SD26, tuple(map(float, W))))
    return report, dest


def test_bake_drops_exactly_the_modules_of_zero_blocks(tiny_assets, baked):
    report, dest = baked
    source = LoraFile.open(tiny_assets[1])
    zero = {m.name for m in source.modules if m.block is not None and RATIOS[m.block] == 0}
    assert zero and set(report.removed) == zero
    assert {m.name for m in LoraFile.open(dest).modules} == {m.name for m in source.modules} - zero


def _patched(pipe, lora_path, ratios) -> dict[str, torch.Tensor]:
    patcher = WeightPatcher(pipe, [LoraFile.open(lora_path)])
    patcher.apply([LoraState(1.0, 1.0, ratios)])
    weights = {name: layer.weight.detach().clone() for name, layer in _layers(pipe)}
    patcher.restore()
    return weights


def _layers(pipe):
    for prefix, model in (("unet", pipe.unet), ("te", pipe.text_encoder)):
        for name, layer in model.named_modules():
            if isinstance(getattr(layer, "weight", None), torch.nn.Parameter):
                yield f"{prefix}.{name}", layer


def test_patched_weights_equal_the_baked_lora_at_weight_1(tiny_pipe, tiny_assets, baked):
    _, dest = baked
    original = {name: layer.weight.detach().clone() for name, layer in _layers(tiny_pipe)}
    with_weights = _patched(tiny_pipe, tiny_assets[1], RATIOS)
    from_baked = _patched(tiny_pipe, dest, ONES)
    changed = unchanged = 0
    for name, w0 in original.items():
        a, b = with_weights[name], from_baked[name]
        if torch.equal(a, w0):
            assert torch.equal(b, w0), name  # blocks at 0 (and layers the LoRA does not touch)
            unchanged += 1
            continue
        changed += 1
        assert (a - b).abs().max() <= RELATIVE * a.abs().max(), name
    assert changed > 100 and unchanged > 0
    assert all(torch.equal(layer.weight, original[name]) for name, layer in _layers(tiny_pipe))


def _plan(model, lora, values) -> Plan:
    return Plan(kind="custom", layout="SD26", cells=(Cell("W", tuple(map(float, values))),),
                settings=demo_settings((1, 2)), loras=(LoraSpec(path=str(lora), name="tiny"),), model=str(model))


def test_rendering_w_equals_rendering_the_baked_lora(tiny_assets, baked, tmp_path):
    model, lora = tiny_assets
    _, dest = baked
    with_weights = run_plan(_plan(model, lora, W), DiffusersBackend(device="cpu"), tmp_path / "w")
    from_baked = run_plan(_plan(model, dest, (1,) * 26), DiffusersBackend(device="cpu"), tmp_path / "baked")
    at_ones = run_plan(_plan(model, lora, (1,) * 26), DiffusersBackend(device="cpu"), tmp_path / "ones")
    for a, b, c in zip(with_weights.cell_paths, from_baked.cell_paths, at_ones.cell_paths, strict=True):
        image_w, image_baked = (np.asarray(r.image(p), int) for r, p in ((with_weights, a), (from_baked, b)))
        assert np.abs(image_w - image_baked).max() <= LEVELS
        assert np.abs(image_w - np.asarray(at_ones.image(c), int)).max() > 20  # W really matters here
