"""The diffusers backend on a tiny SD1.5-layout model: weight patching exactness, caching, equivalence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lbw.domain.layouts import SD26
from lbw.errors import RenderError
from lbw.files.lora_file import LoraFile
from lbw.render.backends.diffusers_backend import DiffusersBackend
from lbw.render.backends.lora_patch import WeightPatcher
from lbw.render.plan import Cell, LoraSpec, Plan
from lbw.render.runner import run_plan
from lbw.render.weighting import LoraState
from lbw.services.demo_render import demo_settings

ONES = {block: 1.0 for block in SD26.ids}


def _state(unet=1.0, text=1.0, **ratios) -> LoraState:
    return LoraState(unet, text, {**ONES, **ratios})


def _dense(tensors: dict, module: str, shape) -> torch.Tensor:
    """Independent oracle: (alpha/rank) * up @ down from the raw file tensors."""
    up = tensors[f"{module}.lora_up.weight"].float()
    down = tensors[f"{module}.lora_down.weight"].float()
    rank = down.shape[0]
    alpha = float(tensors[f"{module}.alpha"])
    return (alpha / rank * (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1))).reshape(shape)


def test_patch_matches_dense_oracle(tiny_pipe, tiny_assets):
    _, lora_path = tiny_assets
    lora_file = LoraFile.open(lora_path)
    patcher = WeightPatcher(tiny_pipe, [lora_file])
    assert patcher.layer_count == len(lora_file.modules)
    tensors = load_file(str(lora_path))
    resnet = tiny_pipe.unet.down_blocks[0].resnets[1].conv1  # IN02, 3x3 conv
    attention = tiny_pipe.unet.up_blocks[3].attentions[2].transformer_blocks[0].attn2.to_k  # OUT11
    text = tiny_pipe.text_encoder.encoder.layers[1].mlp.fc1  # BASE
    originals = [layer.weight.detach().clone() for layer in (resnet, attention, text)]
    patcher.apply([_state(unet=0.8, text=0.6, IN02=0.5, OUT11=-0.25, BASE=0.5)])
    cases = [
        (resnet, "lora_unet_down_blocks_0_resnets_1_conv1", 0.8 * 0.5),
        (attention, "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k", 0.8 * -0.25),
        (text, next(k[:-6] for k in tensors if "layers_1_mlp_fc1" in k and k.endswith(".alpha")), 0.6 * 0.5),
    ]
    for (layer, module, coefficient), w0 in zip(cases, originals, strict=True):
        expected = w0 + coefficient * _dense(tensors, module, w0.shape)
        assert torch.allclose(layer.weight, expected, rtol=0, atol=1e-5), module
    patcher.restore()
    for (layer, _, _), w0 in zip(cases, originals, strict=True):
        assert torch.equal(layer.weight, w0)


def test_only_changed_blocks_are_rewritten(tiny_pipe, tiny_assets):
    lora_file = LoraFile.open(tiny_assets[1])
    patcher = WeightPatcher(tiny_pipe, [lora_file])
    in01 = sum(1 for m in lora_file.modules if m.block == "IN01")
    assert patcher.apply([_state()]) == len(lora_file.modules)
    assert patcher.apply([_state(IN01=0.5)]) == in01
    assert patcher.apply([_state(IN01=0.5)]) == 0
    patcher.restore()


@pytest.mark.parametrize("algo", ["loha", "lokr", "full", "ia3"])
def test_other_adapters_are_linear_in_the_ratio(tiny_pipe, tmp_path, algo):
    from lbw.files.fixtures import lora_tensors_for_models

    path = tmp_path / f"{algo}.safetensors"
    tensors = lora_tensors_for_models(tiny_pipe.unet, [tiny_pipe.text_encoder], rank=2, algo=algo,
                                      preset="lycoris_full" if algo != "ia3" else "attention", seed=3)
    save_file(tensors, str(path))
    lora_file = LoraFile.open(path)
    patcher = WeightPatcher(tiny_pipe, [lora_file])
    unet = tiny_pipe.unet
    layers = [m for m in unet.modules() if isinstance(getattr(m, "weight", None), torch.nn.Parameter)]
    no_block = {id(unet.conv_out), id(unet.time_embedding.linear_1), id(unet.time_embedding.linear_2)}
    before = {id(m): m.weight.detach().clone() for m in layers}
    patcher.apply([_state()])
    full = {id(m): m.weight.detach().clone() - before[id(m)] for m in layers}
    patcher.apply([_state(**{b: 0.5 for b in SD26.ids})])
    touched = 0
    for m in layers:
        delta = m.weight.detach() - before[id(m)]
        if full[id(m)].abs().max() > 0:
            touched += 1
            ratio = 1.0 if id(m) in no_block else 0.5  # modules in no block keep strength 1 (LBW)
            assert torch.allclose(delta, ratio * full[id(m)], atol=1e-5)
    patcher.restore()
    assert touched > 0


def test_lora_for_another_model_is_refused(tiny_pipe, tmp_path):
    from lbw.files.fixtures import write_fixture

    path = write_fixture("sd15", tmp_path / "real.safetensors", rank=1, dtype="fp16")
    expected = r"real\.safetensors: module lora_te_text_model_encoder_layers_0_mlp_fc1: .*another model"
    with pytest.raises(RenderError, match=expected):
        WeightPatcher(tiny_pipe, [LoraFile.open(path)])


def _plan(model, lora, cells, seeds=(1,), **lora_options) -> Plan:
    return Plan(kind="custom", layout="SD26", cells=tuple(cells), settings=demo_settings(seeds),
                loras=(LoraSpec(path=str(lora), name="tiny", **lora_options),), model=str(model))


def test_zero_weights_render_the_plain_model(tiny_assets, tmp_path):
    from lbw.render.backends.diffusers_backend import load_pipeline

    model, lora = tiny_assets
    plan = _plan(model, lora, [Cell("zero", (0.0,) * 26)], seeds=(7,))
    result = run_plan(plan, DiffusersBackend(device="cpu"), tmp_path / "out")
    rendered = np.asarray(result.image(plan.jobs()[0]))
    pipe = load_pipeline(model, device="cpu", dtype=torch.float32)
    settings = plan.settings
    plain = pipe(settings.prompt, negative_prompt=settings.negative_prompt, num_inference_steps=settings.steps,
                 guidance_scale=settings.cfg, width=64, height=64,
                 generator=[torch.Generator("cpu").manual_seed(7)]).images[0]
    assert np.array_equal(rendered, np.asarray(plain.convert("RGB")))


def test_block_weights_equal_a_lora_scaled_per_block(tiny_assets, tmp_path):
    """Rendering with weights W equals rendering, at weight 1, a LoRA whose up factors were scaled by W."""
    model, lora = tiny_assets
    weights = dict(ONES, BASE=0.5, IN01=0.0, IN03=0.5, OUT05=0.25, OUT11=0.0, M00=-0.5)
    tensors = load_file(str(lora))
    lora_file = LoraFile.open(lora)
    scaled = dict(tensors)
    for module in lora_file.modules:
        key = module.keys["lora_up"]
        scaled[key] = tensors[key] * (weights[module.block] if module.block else 1.0)
    baked = tmp_path / "scaled.safetensors"
    save_file(scaled, str(baked))
    vector = tuple(weights[b] for b in SD26.ids)
    first = run_plan(_plan(model, lora, [Cell("W", vector)], seeds=(1, 2)), DiffusersBackend(device="cpu"),
                     tmp_path / "w")
    second = run_plan(_plan(model, baked, [Cell("ones", (1.0,) * 26)], seeds=(1, 2)),
                      DiffusersBackend(device="cpu"), tmp_path / "baked")
    for a, b in zip(first.cell_paths, second.cell_paths, strict=True):
        diff = np.abs(np.asarray(first.image(a), int) - np.asarray(second.image(b), int))
        assert diff.max() <= 2, diff.max()  # float32 rounding of W0 + r*dW vs W0 + (r*dW)


def test_cache_resume_and_batching(tiny_assets, tmp_path):
    model, lora = tiny_assets
    cells = [Cell(f"IN0{i}", tuple(0.0 if b == f"IN0{i}" else 1.0 for b in SD26.ids), f"IN0{i}") for i in (1, 2, 4)]
    plan = _plan(model, lora, cells, seeds=(1, 2))
    calls = []

    def stop_after_three(done, total, label, cached):
        if not label:  # the runner's first call: the total, before anything is drawn
            assert (done, total) == (0, 6)
            return
        calls.append(label)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, DiffusersBackend(device="cpu", batch_size=2), tmp_path / "out", on_cell=stop_after_three)
    resumed = run_plan(plan, DiffusersBackend(device="cpu", batch_size=1), tmp_path / "out")
    assert (resumed.rendered, resumed.reused) == (3, 3)
    again = run_plan(plan, DiffusersBackend(device="cpu"), tmp_path / "out")
    assert (again.rendered, again.reused) == (0, 6)
    fresh = run_plan(plan, DiffusersBackend(device="cpu", batch_size=1), tmp_path / "fresh")
    for job in plan.jobs():  # a seed looks the same whether it was rendered in a batch of 2 or alone
        diff = np.abs(np.asarray(resumed.image(job), int) - np.asarray(fresh.image(job), int))
        assert diff.max() <= 2
    changed = plan.with_settings(steps=3)
    assert run_plan(changed, DiffusersBackend(device="cpu"), tmp_path / "out").rendered == 6


def test_missing_model_and_pickles(tiny_assets, tmp_path):
    _, lora = tiny_assets
    plan = _plan(tmp_path / "nope", lora, [Cell("a", (1.0,) * 26)])
    with pytest.raises(RenderError, match="model not found"):
        run_plan(plan, DiffusersBackend(device="cpu"), tmp_path / "out")
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    with pytest.raises(RenderError, match="needs --model-config"):
        run_plan(_plan(ckpt, lora, [Cell("a", (1.0,) * 26)]), DiffusersBackend(device="cpu"), tmp_path / "o2")


def test_sd2_layout_with_linear_projections(tmp_path):
    from lbw.files.fixtures import lora_tensors_for_models
    from lbw.render.tiny import build_tiny_sd15, build_tiny_sd15_pipeline

    model = build_tiny_sd15(tmp_path / "sd2", variant="sd2")
    pipe = build_tiny_sd15_pipeline(0, variant="sd2")
    assert isinstance(pipe.unet.down_blocks[0].attentions[0].proj_in, torch.nn.Linear)
    lora = tmp_path / "sd2.safetensors"
    save_file(lora_tensors_for_models(pipe.unet, [pipe.text_encoder], rank=4, alpha=256, seed=2), str(lora))
    plan = _plan(model, lora, [Cell("zero", (0.0,) * 26), Cell("one", (1.0,) * 26)])
    result = run_plan(plan, DiffusersBackend(device="cpu"), tmp_path / "out")
    zero, one = (np.asarray(result.image(job), int) for job in plan.jobs())
    assert np.abs(zero - one).max() > 20


class _SmallMemory(DiffusersBackend):
    """Fault injection: more than ``fits`` images in one batch runs out of memory (as CUDA would)."""

    def __init__(self, fits: int, **options) -> None:
        super().__init__(**options)
        self.fits = fits
        self.batches: list[int] = []

    def _generate(self, plan, states, seeds, label, on_step):
        if len(seeds) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(len(seeds))
        return super()._generate(plan, states, seeds, label, on_step)


def test_batches_shrink_when_memory_runs_out(tiny_assets, tmp_path):
    model, lora = tiny_assets
    plan = _plan(model, lora, [Cell("ones", (1.0,) * 26)], seeds=(1, 2, 3, 4, 5))
    backend = _SmallMemory(2, device="cpu", batch_size=8)
    result = run_plan(plan, backend, tmp_path / "small")
    assert backend.batches == [2, 2, 1] and backend.batch_size == 2  # 8 -> 4 -> 2, then kept
    alone = run_plan(plan, DiffusersBackend(device="cpu", batch_size=1), tmp_path / "alone")
    for job in plan.jobs():
        diff = np.abs(np.asarray(result.image(job), int) - np.asarray(alone.image(job), int))
        assert diff.max() <= 2
    with pytest.raises(RenderError, match=r"out of CPU memory rendering one 64x64 image \(try --dtype fp16"):
        run_plan(plan, _SmallMemory(0, device="cpu"), tmp_path / "none")


def test_cache_keys_cover_everything_that_changes_the_image(tiny_assets, tmp_path):
    import shutil
    from dataclasses import replace

    from lbw.render.cache import CellCache
    from lbw.render.runner import job_keys

    model, lora = tiny_assets
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    lora_copy = tmp_path / "lora.safetensors"
    shutil.copy(lora, lora_copy)
    present = {m.block for m in LoraFile.open(lora).modules}
    absent = next(b for b in SD26.ids if b not in present)
    plan = _plan(copy, lora_copy, [Cell("a", (1.0,) * 26)])
    cache = CellCache(tmp_path / "cache")

    def key(plan: Plan, **options) -> str:
        backend = DiffusersBackend(device="cpu", **options)
        backend.prepare(plan)
        return job_keys(plan, backend, cache)[plan.jobs()[0]]

    base = key(plan)
    assert key(plan) == base  # stable
    lowered = tuple(0.5 if b == "IN01" else 1.0 for b in SD26.ids)
    variants = {
        "a present block's weight": key(replace(plan, cells=(Cell("a", lowered),))),
        "seed": key(plan.with_settings(seeds=(2,))),
        "steps": key(plan.with_settings(steps=3)),
        "cfg": key(plan.with_settings(cfg=5.0)),
        "sampler": key(plan.with_settings(sampler="Euler a")),
        "size": key(plan.with_settings(width=72)),
        "clip skip": key(plan.with_settings(clip_skip=2)),
        "prompt": key(plan.with_settings(prompt="other")),
        "strength": key(replace(plan, loras=(replace(plan.loras[0], strength=0.5),))),
        "precision": key(plan, dtype="bf16"),
    }
    assert len(set(variants.values()) | {base}) == len(variants) + 1, variants
    other = tuple(0.0 if b == absent else 1.0 for b in SD26.ids)
    assert key(replace(plan, cells=(Cell("a", other),))) == base  # a block the LoRA has no module in
    scheduler = copy / "scheduler" / "scheduler_config.json"
    scheduler.write_text(scheduler.read_text().replace("}", ', "x": 1}', 1))
    changed = key(plan)
    assert changed != base  # the model folder's contents are hashed
    data = bytearray(lora_copy.read_bytes())
    data[-1] ^= 1
    lora_copy.write_bytes(bytes(data))
    assert key(plan) not in (base, changed)  # the LoRA file's contents are hashed


def test_every_cell_renders_as_it_would_alone(tiny_assets, tmp_path):
    """Issue #14: whatever cell came before (weights swapped in place, prompt embeddings cached per text-encoder
    state), each cell is pixel for pixel the image it gives when it is the only cell rendered."""
    model, lora = tiny_assets
    half = tuple(0.5 if i % 2 else 1.0 for i in range(26))
    cells = [Cell("ALL", (1.0,) * 26), Cell("NONE", (0.0,) * 26), Cell("BASE0", (0.0,) + (1.0,) * 25, "BASE"),
             Cell("HALF", half), Cell("ALL2", (1.0,) * 25 + (0.99,))]
    plan = _plan(model, lora, cells)
    grid = run_plan(plan, DiffusersBackend(device="cpu", batch_size=1), tmp_path / "grid")
    images = [np.asarray(grid.image(job)) for job in plan.jobs()]
    assert len({image.tobytes() for image in images}) == len(cells)
    for job, image in zip(plan.jobs(), images, strict=True):
        single = _plan(model, lora, [job.cell])
        alone = run_plan(single, DiffusersBackend(device="cpu", batch_size=1), tmp_path / job.cell.label)
        assert np.array_equal(image, np.asarray(alone.image(single.jobs()[0]))), job.cell.label
