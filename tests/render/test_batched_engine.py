"""The batched LoRA engine (``lora_layers.BatchedLoras``): cells as batch elements, weights never written.

Oracle: the merged weights of ``WeightPatcher`` (W0 + m·ρ·ΔW from ``lbw.adapters``, DoRA recomputed per ratio),
one cell at a time. Tolerances, measured on the tiny SD1.5 model (see docs/render.md "The batched engine"):
- UNet noise prediction per batch element: relative L2 error ≤ 1e-4 (measured ≤ 4.4e-5, LoRA kinds at a
  strength that changes the prediction by 2 % to 344 %);
- text-encoder hidden states: relative L2 error ≤ 1e-5;
- images: at most 2 levels of 255 apart.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lbw.domain.layouts import SD26
from lbw.errors import RenderError
from lbw.files.fixtures import collect_targets, lora_tensors_for_models
from lbw.files.fixtures.factors import module_tensors
from lbw.files.lora_file import LoraFile
from lbw.render.backends.diffusers_backend import DiffusersBackend, batch_split, free_memory, load_pipeline
from lbw.render.backends.lora_forms import layer_op
from lbw.render.backends.lora_layers import BatchedLoras
from lbw.render.backends.lora_patch import WeightPatcher
from lbw.render.plan import Cell, LoraSpec, Plan
from lbw.render.runner import run_plan
from lbw.render.weighting import LoraState
from lbw.services.analyze import eba_plan
from lbw.services.demo_render import demo_settings

ONES = {block: 1.0 for block in SD26.ids}
KINDS = ("lora", "locon_tucker", "dora", "dora_input", "loha", "loha_tucker", "lokr", "lokr_full", "lokr_tucker",
         "ia3", "full", "norm")
# Three cells: different strengths, ratios 0, 0.5, -0.5 and 1 on several blocks, BASE varied.
STATES = (
    LoraState(0.8, 0.6, {**ONES, "IN01": 0.0, "OUT11": 0.5, "M00": 1.5}),
    LoraState(1.0, 1.0, ONES),
    LoraState(1.2, 0.5, {**ONES, "IN02": -0.5, "M00": 0.0, "BASE": 0.25, "OUT03": 0.5}),
)
UNET_RELATIVE = 1e-4
TEXT_RELATIVE = 1e-5


def _lora(pipe, tmp_path, kind: str) -> LoraFile:
    """A LoRA of ``kind`` for the tiny pipeline: every LyCORIS target (IA3: attention); large alpha/rank."""
    unet, encoder = pipe.unet, pipe.text_encoder
    if kind == "norm":  # LyCORIS train_norm: LoCon plus w_norm/b_norm on the GroupNorm/LayerNorm layers
        generator = torch.Generator().manual_seed(3)
        tensors = {f"{target.name}.{suffix}": value.contiguous()
                   for target in collect_targets(unet, [encoder], preset="lycoris_full", norms=True)
                   for suffix, value in module_tensors(target, "lora", 2, 64.0, generator).items()}
    else:
        algo = "dora" if kind == "dora_input" else kind
        tensors = lora_tensors_for_models(unet, [encoder], rank=2, alpha=64.0, algo=algo,
                                          preset="attention" if algo == "ia3" else "lycoris_full", seed=3)
    if kind == "dora_input":  # A1111's convention: one magnitude per input column, [1, in(, 1, 1)]
        generator = torch.Generator().manual_seed(4)
        for key in [k for k in tensors if k.endswith(".dora_scale")]:
            down = tensors[key.replace("dora_scale", "lora_down.weight")]
            tensors[key] = 0.5 + torch.rand(1, down.shape[1], *([1, 1] if down.dim() == 4 else []),
                                            generator=generator)
    path = tmp_path / f"{kind}.safetensors"
    save_file(tensors, str(path))
    return LoraFile.open(path)


def _relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Relative L2 error of each batch element."""
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def _weights(pipe) -> dict[str, bytes]:
    return {f"{name}.{key}": hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for name in ("unet", "text_encoder", "vae") for key, value in getattr(pipe, name).state_dict().items()}


@pytest.mark.parametrize("kind", KINDS)
def test_each_cell_of_a_batch_equals_its_merged_weights(tiny_pipe, tmp_path, kind):
    """Three cells in one UNet batch (and in a CFG-shaped batch of six) each equal the UNet with that cell's
    weights merged; the LoRA changes the prediction far more than the error."""
    lora_file = _lora(tiny_pipe, tmp_path, kind)
    unet = tiny_pipe.unet
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 8, 8, generator=generator)
    embeds = torch.randn(3, 77, unet.config.cross_attention_dim, generator=generator)
    t = torch.tensor(500)
    before = _weights(tiny_pipe)
    patcher = WeightPatcher(tiny_pipe, [lora_file])
    with torch.inference_mode():
        plain = unet(latents, t, encoder_hidden_states=embeds).sample
        merged = []
        for index, state in enumerate(STATES):
            patcher.apply([state])
            merged.append(unet(latents[index:index + 1], t, encoder_hidden_states=embeds[index:index + 1]).sample)
        patcher.restore()
        merged = torch.cat(merged)
        engine = BatchedLoras(tiny_pipe, [lora_file])
        engine.set_states([[state] for state in STATES])
        with engine.attached():
            batched = unet(latents, t, encoder_hidden_states=embeds).sample
            doubled = unet(torch.cat([latents, latents]), t, encoder_hidden_states=torch.cat([embeds, embeds])).sample
    assert _relative(batched, merged).max() <= UNET_RELATIVE
    for half in (doubled[:3], doubled[3:]):  # the unconditional and conditional halves of CFG
        assert _relative(half, merged).max() <= UNET_RELATIVE
    assert _relative(merged, plain).min() > 0.01  # the LoRA matters in every cell
    assert _weights(tiny_pipe) == before  # bytes of every weight unchanged
    assert all("forward" not in module.__dict__ for module in unet.modules())  # wrappers removed


@pytest.mark.parametrize("kind", ["lora", "dora", "loha", "lokr"])
def test_text_encoder_states_equal_merged_weights(tiny_pipe, tmp_path, kind):
    lora_file = _lora(tiny_pipe, tmp_path, kind)
    encoder = tiny_pipe.text_encoder
    ids = tiny_pipe.tokenizer(["1girl, long hair"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    patcher = WeightPatcher(tiny_pipe, [lora_file])
    engine = BatchedLoras(tiny_pipe, [lora_file])
    with torch.inference_mode():
        plain = encoder(ids)[0]
        merged = []
        for state in STATES:
            patcher.apply([state])
            merged.append(encoder(ids)[0])
        patcher.restore()
        with engine.attached():  # as the backend does: several text states encoded in one attachment
            for state, expected in zip(STATES * 2, merged * 2, strict=True):
                engine.set_text_states([state])
                assert _relative(encoder(ids)[0], expected).max() <= TEXT_RELATIVE
                assert _relative(expected, plain).min() > 0.01


def test_engine_holds_only_the_factors(tiny_pipe, tiny_assets):
    """A LoCon's factors, no dense ΔW, no copy of W0: the bytes held equal the file's tensors (float32)."""
    lora_file = LoraFile.open(tiny_assets[1])
    engine = BatchedLoras(tiny_pipe, [lora_file])
    stored = sum(tensor.numel() * 4 for module in lora_file.modules
                 for role, tensor in lora_file.module_tensors(module).items() if role != "alpha")
    assert engine.layer_count == len(lora_file.modules)
    assert engine.factor_bytes() == stored
    dense = sum(layer.weight.numel() * 4 for _, layer, _ in _matched(tiny_pipe, lora_file))
    assert engine.factor_bytes() < dense / 4


def _matched(pipe, lora_file):
    from lbw.render.backends.lora_patch import matched_layers
    from lbw.render.backends.module_index import pipeline_module_index

    return list(matched_layers(pipeline_module_index(pipe), lora_file))


def _plan(model, lora, cells, seeds=(1,)) -> Plan:
    return Plan(kind="custom", layout="SD26", cells=tuple(cells), settings=demo_settings(seeds),
                loras=(LoraSpec(path=str(lora), name="tiny"),), model=str(model))


def test_a_cell_renders_the_same_alone_or_with_26_others(tiny_assets, tmp_path):
    """The analyzer's 27 cells in one batch: each equals the cell rendered alone (batch of 1) and the cell
    rendered with merged weights (2 levels); the model's weights are untouched after the run."""
    model, lora = tiny_assets
    plan = eba_plan(LoraSpec(path=str(lora), name="tiny"), model=str(model), settings=demo_settings((1,)))
    together = DiffusersBackend(device="cpu", batch_size=27)
    result = run_plan(plan, together, tmp_path / "together", grid=False)
    assert together.batch_size == 27
    fresh = load_pipeline(model, device="cpu", dtype=torch.float32)
    assert _weights(together._pipe) == _weights(fresh)
    merged = run_plan(plan, DiffusersBackend(device="cpu", lora_mode="merge"), tmp_path / "merged", grid=False)
    jobs = plan.jobs()
    worst_merged = 0
    for job in jobs:
        image = np.asarray(result.image(job), int)
        worst_merged = max(worst_merged, int(np.abs(image - np.asarray(merged.image(job), int)).max()))
    assert worst_merged <= 2
    for job in (jobs[0], jobs[5], jobs[-1]):  # the source, a lowered block, the last cell
        single = _plan(model, lora, [job.cell])
        alone = run_plan(single, DiffusersBackend(device="cpu", batch_size=1), tmp_path / f"alone{job.cell_index}",
                         grid=False)
        diff = np.abs(np.asarray(result.image(job), int) - np.asarray(alone.image(single.jobs()[0]), int))
        assert diff.max() <= 2, (job.cell.label, diff.max())


def test_merge_mode_keeps_its_own_cache_cells(tiny_assets, tmp_path):
    from lbw.render.cache import CellCache
    from lbw.render.runner import job_keys

    model, lora = tiny_assets
    plan = _plan(model, lora, [Cell("a", (1.0,) * 26)])
    cache = CellCache(tmp_path / "cache")
    keys = []
    for options in ({}, {"lora_mode": "batched", "batch_size": 3}, {"lora_mode": "merge"}):
        backend = DiffusersBackend(device="cpu", **options)
        backend.prepare(plan)
        keys.append(job_keys(plan, backend, cache)[plan.jobs()[0]])
    assert keys[0] == keys[1] != keys[2]
    with pytest.raises(RenderError, match="unknown LoRA mode 'fast'; expected batched or merge"):
        DiffusersBackend(device="cpu", lora_mode="fast")


def test_batch_sizes_and_free_memory():
    assert [batch_split(54, 16), batch_split(54, 27), batch_split(5, 8), batch_split(7, 1)] == [14, 27, 5, 1]
    assert batch_split(3, 0) == 1
    free = free_memory(torch.device("cpu"))
    assert free is None or free > 0


def test_unsupported_layers_are_refused():
    assert [layer_op(torch.nn.Linear(2, 2)), layer_op(torch.nn.Conv2d(2, 2, 3)), layer_op(torch.nn.GroupNorm(1, 2)),
            layer_op(torch.nn.LayerNorm(2)), layer_op(torch.nn.Embedding(3, 2))] == [
        "linear", "conv", "group_norm", "layer_norm", "embedding"]
    with pytest.raises(RenderError, match=r"ConvTranspose2d layer.*--lora-mode merge"):
        layer_op(torch.nn.ConvTranspose2d(2, 2, 3))
