"""The diffusers backend on a tiny SDXL-layout pipeline with an SGM-named kohya LoRA (both text encoders).

Oracles are independent of lbw's key map: the layer a LoRA module adapts comes from the fixture generator's
diffusers path, its block from the SDXL block rule written out below, and ΔW from the raw file tensors.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lbw.domain.layouts import XL20
from lbw.domain.weights import weights_from_numbers
from lbw.files.fixtures import collect_targets, lora_tensors_for_models
from lbw.files.lora_file import LoraFile
from lbw.render.backends.diffusers_backend import DiffusersBackend, load_pipeline
from lbw.render.backends.lora_patch import WeightPatcher
from lbw.render.backends.module_index import lookup, pipeline_module_index
from lbw.render.plan import Cell, LoraSpec, Plan
from lbw.render.runner import run_plan
from lbw.render.weighting import LoraState, ratios_of
from lbw.services.demo_render import demo_settings

# A mixed XL20 vector: BASE, IN00..IN08, M00, OUT00..OUT08.
W_XL = (0.5, 1, 0, -0.5, 1.5, 0.5, 1, 0, 1.5, -0.5, 0.5, 1, 0, 1.5, 0.5, -0.5, 1, 0.5, 0, 1)
UNET_STRENGTH, TEXT_STRENGTH = 0.8, 0.6
# SGM layers of a kohya file that have a pipeline layer but no LBW block (LBW keeps them at strength 1).
NO_BLOCK = {"lora_unet_time_embed_0", "lora_unet_time_embed_2", "lora_unet_out_2",
            "lora_unet_label_emb_0_0", "lora_unet_label_emb_0_2"}


def _expected_block(component: str, path: str) -> str | None:
    """SDXL blocks from the diffusers path (layers_per_block 2): IN = 1 + 3i + j, OUT = 3i + j, ..."""
    if component != "unet":
        return "BASE"
    if m := re.match(r"down_blocks\.(\d)\.(resnets|attentions)\.(\d)\.", path):
        return f"IN{1 + 3 * int(m[1]) + int(m[3]):02d}"
    if m := re.match(r"down_blocks\.(\d)\.downsamplers\.", path):
        return f"IN{3 * int(m[1]) + 3:02d}"
    if m := re.match(r"up_blocks\.(\d)\.(resnets|attentions)\.(\d)\.", path):
        return f"OUT{3 * int(m[1]) + int(m[3]):02d}"
    if m := re.match(r"up_blocks\.(\d)\.upsamplers\.", path):
        return f"OUT{3 * int(m[1]) + 2:02d}"
    if path.startswith("mid_block."):
        return "M00"
    return "IN00" if path.startswith("conv_in") else None


def _layer(pipe, component: str, path: str) -> torch.nn.Module:
    model = {"unet": pipe.unet, "lora_te1": pipe.text_encoder, "lora_te2": pipe.text_encoder_2}[component]
    modules = dict(model.named_modules())
    return modules[path] if path in modules else modules[path.removeprefix("text_model.")]


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """(pipeline, model folder, LoRA path, {module name: (layer, expected block)})."""
    from lbw.render.tiny import build_tiny_sdxl

    torch.set_num_threads(1)
    folder = build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")
    pipe = load_pipeline(folder, device="cpu", dtype=torch.float32)
    encoders = [pipe.text_encoder, pipe.text_encoder_2]
    tensors = lora_tensors_for_models(pipe.unet, encoders, rank=2, alpha=64.0, preset="lycoris_full",
                                      conv_rank=2, conv_alpha=64.0, seed=5)
    expected = {}
    for target in collect_targets(pipe.unet, encoders, preset="lycoris_full"):
        expected[target.name] = (_layer(pipe, target.component, target.path), _expected_block(target.component,
                                                                                           target.path))
    generator = torch.Generator().manual_seed(9)
    for number, layer in ((0, pipe.unet.add_embedding.linear_1), (2, pipe.unet.add_embedding.linear_2)):
        name = f"lora_unet_label_emb_0_{number}"  # SGM name of the text_time embedding (not a fixture target)
        tensors[f"{name}.lora_up.weight"] = torch.randn(layer.out_features, 2, generator=generator) * 0.05
        tensors[f"{name}.lora_down.weight"] = torch.randn(2, layer.in_features, generator=generator)
        tensors[f"{name}.alpha"] = torch.tensor(64.0)
        expected[name] = (layer, None)
    lora = folder.parent / "sdxl-locon.safetensors"
    save_file(tensors, str(lora))
    return pipe, folder, lora, expected


def test_tiny_sdxl_has_the_sdxl_structure(sdxl):
    pipe, folder, _, _ = sdxl
    unet = pipe.unet
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    assert [type(b).__name__ for b in unet.down_blocks] == ["DownBlock2D", "CrossAttnDownBlock2D",
                                                            "CrossAttnDownBlock2D"]
    assert [type(b).__name__ for b in unet.up_blocks] == ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    assert type(unet.mid_block).__name__ == "UNetMidBlock2DCrossAttn"
    assert [len(a.transformer_blocks) for a in unet.down_blocks[2].attentions] == [2, 2]
    assert unet.config.addition_embed_type == "text_time"
    te1, te2 = pipe.text_encoder.config, pipe.text_encoder_2.config
    assert unet.config.cross_attention_dim == te1.hidden_size + te2.hidden_size
    assert unet.add_embedding.linear_1.in_features == 6 * unet.config.addition_time_embed_dim + te2.projection_dim
    assert (type(pipe.text_encoder).__name__, type(pipe.text_encoder_2).__name__) == (
        "CLIPTextModel", "CLIPTextModelWithProjection")
    assert isinstance(unet.down_blocks[1].attentions[0].proj_in, torch.nn.Linear)


def test_sgm_lora_maps_every_module_to_its_layer_and_block(sdxl):
    pipe, _, lora, expected = sdxl
    lora_file = LoraFile.open(lora)
    assert (lora_file.architecture, lora_file.naming) == ("sdxl", "kohya")
    names = {module.name for module in lora_file.modules}
    assert names == set(expected)
    assert any(name.startswith("lora_unet_output_blocks_2_2_conv") for name in names)  # SDXL's first upsampler
    index = pipeline_module_index(pipe)
    wrong = [m.name for m in lora_file.modules if lookup(index, m.name, "sdxl") is not expected[m.name][0]]
    assert wrong == []
    blocks = {m.name: m.block for m in lora_file.modules}
    assert blocks == {name: block for name, (_, block) in expected.items()}
    assert {name for name, block in blocks.items() if block is None} == NO_BLOCK
    assert set(blocks.values()) - {None} == set(XL20.ids)


@pytest.mark.parametrize(("family", "preset", "sgm"), [("kohya", "lycoris_full", False),
                                                     ("peft", "peft_attention", None)])
def test_diffusers_named_sdxl_loras_map_too(sdxl, family, preset, sgm):
    """kohya files with diffusers paths (lora_unet_down_blocks_…) and PEFT files (unet.…, text_encoder_2.…)."""
    from lbw.files.families import describe

    pipe = sdxl[0]
    index = pipeline_module_index(pipe)
    targets = collect_targets(pipe.unet, [pipe.text_encoder, pipe.text_encoder_2], preset=preset, family=family,
                              sgm=sgm)
    components = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
    assert len(targets) > 100
    for target in targets:
        component = components.get(target.component, target.component)
        assert lookup(index, target.name, "sdxl") is _layer(pipe, component, target.path), target.name
        assert describe(target.name, "sdxl").block == _expected_block(component, target.path), target.name


@pytest.mark.parametrize("names", ["onetrainer", "lycoris", "diffusers", "peft", "peft_base", "processor"])
def test_every_trainer_family_finds_its_layer(sdxl, names):
    """lbw's diffusers backend finds the layer of every family's name (OneTrainer, SimpleTuner LyCORIS, diffusers,
    bare and base_model.model. PEFT, old attention processors), with the block of that layer."""
    from lbw.files.families import describe
    from lbw.files.fixtures.trainers import _name

    pipe = sdxl[0]
    index = pipeline_module_index(pipe)
    targets = collect_targets(pipe.unet, [pipe.text_encoder, pipe.text_encoder_2], preset="peft_attention",
                              family="kohya", sgm=False)
    te_only = names in ("onetrainer", "diffusers")
    components = {"lora_te1": "te1", "lora_te2": "te2", "unet": "unet"}
    checked = 0
    for target in targets:
        if target.component != "unet" and not te_only:
            continue
        name = _name(names, components[target.component], target.path, "sdxl")
        assert lookup(index, name, "sdxl") is _layer(pipe, target.component, target.path), name
        assert describe(name, "sdxl").block == _expected_block(target.component, target.path), name
        assert "diffusers" in describe(name, "sdxl", "lora").loaded_by
        checked += 1
    assert checked > 50


def _dense(tensors, name, shape) -> torch.Tensor:
    up, down = tensors[f"{name}.lora_up.weight"].float(), tensors[f"{name}.lora_down.weight"].float()
    rank = down.shape[0]
    alpha = float(tensors[f"{name}.alpha"])
    return (alpha / rank * (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1))).reshape(shape)


def _layers(pipe) -> list[torch.nn.Module]:
    return [m for model in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2) for m in model.modules()
            if isinstance(getattr(m, "weight", None), torch.nn.Parameter)]


def test_xl20_vector_patches_w0_plus_rho_delta(sdxl):
    """Every weight of the UNet and both text encoders equals W0 + m·ρ_block·ΔW (BASE on both encoders)."""
    pipe, _, lora, expected = sdxl
    tensors = load_file(str(lora))
    ratios = ratios_of("XL20", W_XL)
    layers = _layers(pipe)
    before = {id(m): m.weight.detach().clone() for m in layers}
    patcher = WeightPatcher(pipe, [LoraFile.open(lora)])
    assert patcher.layer_count == len(expected)
    patcher.apply([LoraState(UNET_STRENGTH, TEXT_STRENGTH, ratios)])
    oracle = {id(m): before[id(m)].clone() for m in layers}
    for name, (layer, block) in expected.items():
        strength = TEXT_STRENGTH if block == "BASE" else UNET_STRENGTH
        rho = 1.0 if block is None else ratios[block]
        oracle[id(layer)] += strength * rho * _dense(tensors, name, layer.weight.shape)
    touched = {id(layer) for layer, _ in expected.values()}
    for m in layers:
        if id(m) in touched:
            torch.testing.assert_close(m.weight.detach(), oracle[id(m)], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(m.weight, before[id(m)])
    fc1 = (pipe.text_encoder.encoder.layers[0].mlp.fc1, pipe.text_encoder_2.text_model.encoder.layers[0].mlp.fc1)
    assert all(not torch.equal(layer.weight, before[id(layer)]) for layer in fc1)  # both encoders, at BASE
    patcher.restore()
    assert all(torch.equal(m.weight, before[id(m)]) for m in layers)


def _plan(folder, lora, cells, seeds=(1,)) -> Plan:
    settings = replace(demo_settings(seeds), steps=2)
    return Plan(kind="custom", layout="XL20", cells=tuple(cells), settings=settings,
                loras=(LoraSpec(path=str(lora), name="sdxl-locon"),), model=str(folder))


def test_sdxl_render_end_to_end(sdxl, tmp_path):
    """64x64, 2 steps. All-zero weights give the plain SDXL pipeline with only the layers in no block
    (time embedding, label_emb, conv_out) at W0 + ΔW, LBW's rule: exactly with merged weights, within 2 levels
    with the batched engine (W0·x + ΔW·x rounds differently from (W0 + ΔW)·x); the mixed vector changes the image."""
    pipe, folder, lora, expected = sdxl
    plan = _plan(folder, lora, [Cell("zero", (0.0,) * 20), Cell("W", W_XL)], seeds=(3,))
    result = run_plan(plan, DiffusersBackend(device="cpu", lora_mode="merge"), tmp_path / "out")
    zero, mixed = (np.asarray(result.image(job)) for job in plan.jobs())
    batched = run_plan(plan, DiffusersBackend(device="cpu"), tmp_path / "batched")
    zero_batched, mixed_batched = (np.asarray(batched.image(job), int) for job in plan.jobs())
    assert zero.shape == (64, 64, 3)
    tensors = load_file(str(lora))
    no_block = [(name, layer) for name, (layer, block) in expected.items() if block is None]
    originals = [layer.weight.detach().clone() for _, layer in no_block]
    settings = plan.settings
    try:
        with torch.no_grad():
            for name, layer in no_block:
                layer.weight += _dense(tensors, name, layer.weight.shape)
        with torch.inference_mode():
            plain = pipe(settings.prompt, negative_prompt=settings.negative_prompt, num_inference_steps=2,
                         guidance_scale=settings.cfg, width=64, height=64,
                         generator=[torch.Generator("cpu").manual_seed(3)]).images[0]
    finally:
        with torch.no_grad():
            for (_, layer), weight in zip(no_block, originals, strict=True):
                layer.weight.copy_(weight)
    assert np.array_equal(zero, np.asarray(plain.convert("RGB")))
    assert np.abs(zero.astype(int) - mixed.astype(int)).max() > 20
    assert np.abs(zero_batched - zero).max() <= 2 and np.abs(mixed_batched - mixed).max() <= 2


def test_sdxl_rendering_w_equals_the_lora_baked_with_w(sdxl, tmp_path):
    """Same seeds: the LoRA at XL20 weights W renders like the file ``lbw bake`` wrote with W, at weight 1.

    Tolerance: 2 levels of 255 (float32 rounding of W0 + ρ·ΔW against W0 + ΔW(ρ·up)).
    """
    from lbw.services.bake import bake

    _, folder, lora, _ = sdxl
    baked = tmp_path / "baked.safetensors"
    bake(lora, baked, weights_from_numbers(XL20, W_XL))
    first = run_plan(_plan(folder, lora, [Cell("W", W_XL)], seeds=(1, 2)), DiffusersBackend(device="cpu"),
                     tmp_path / "w")
    second = run_plan(_plan(folder, baked, [Cell("ones", (1.0,) * 20)], seeds=(1, 2)),
                      DiffusersBackend(device="cpu"), tmp_path / "baked")
    for a, b in zip(first.cell_paths, second.cell_paths, strict=True):
        diff = np.abs(np.asarray(first.image(a), int) - np.asarray(second.image(b), int))
        assert diff.max() <= 2, diff.max()


def test_sdxl_single_file_checkpoint_loads_and_renders_offline(sdxl, tmp_path):
    """An SGM-layout .safetensors (conditioner.embedders.0/1, OpenCLIP second encoder) with the tiny folder as
    config: every parameter comes from the file; renders like the same weights saved as a diffusers folder."""
    import copy

    from lbw.render.backends.single_file import missing_weights
    from lbw.render.ldm_checkpoint import save_ldm_checkpoint
    from lbw.render.tiny import quiet_logs

    pipe, folder, lora, _ = sdxl
    source = copy.deepcopy(pipe)
    names = ("unet", "vae", "text_encoder", "text_encoder_2")
    with torch.no_grad():
        for name in names:
            for parameter in getattr(source, name).parameters():
                parameter.add_(0.01)  # differ from the config folder's weights
    checkpoint = save_ldm_checkpoint(source, tmp_path / "tiny-sdxl.safetensors")
    keys = load_file(str(checkpoint))
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    loaded = load_pipeline(checkpoint, device="cpu", dtype=torch.float32, model_config=folder)
    for name in names:
        got, want = dict(getattr(loaded, name).named_parameters()), dict(getattr(source, name).named_parameters())
        assert set(got) == set(want), name
        assert [key for key in want if not torch.equal(got[key], want[key])] == [], name
    assert missing_weights(checkpoint, loaded) == {}
    quiet_logs()
    source.save_pretrained(str(tmp_path / "as-folder"), safe_serialization=True)
    images = []
    for model, config in ((checkpoint, folder), (tmp_path / "as-folder", None)):
        plan = _plan(model, lora, [Cell("W", W_XL)])
        result = run_plan(plan, DiffusersBackend(device="cpu", model_config=config), tmp_path / model.stem)
        images.append(np.asarray(result.image(plan.jobs()[0]), int))
    assert np.abs(images[0] - images[1]).max() <= 2  # same weights; memory alignment changes float rounding


def test_sdxl_single_file_missing_a_second_encoder_tensor_is_refused(sdxl, tmp_path):
    from lbw.errors import RenderError
    from lbw.render.ldm_checkpoint import ldm_state_dict

    pipe, folder, _, _ = sdxl
    tensors = ldm_state_dict(pipe)
    del tensors["conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"]
    partial = tmp_path / "partial.safetensors"
    save_file(tensors, str(partial))
    expected = r"text_encoder_2: 3 \(text_model\.encoder\.layers\.1\.self_attn\.[qkv]_proj\.weight, "
    with pytest.raises(RenderError, match=expected):
        load_pipeline(partial, device="cpu", dtype=torch.float32, model_config=folder)
