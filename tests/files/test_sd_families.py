"""SD1.5/SDXL LoRAs of every trainer family: which host loads which module, and the same block for the same layer.

Oracles restated from the hosts' code in enumerating form, over the real models (meta device):
- ComfyUI / Forge: ``model_lora_keys_unet`` (``lora_unet_`` + SGM name and ``diffusion_model.`` + SGM name for
  every parameter; ``lora_unet_``/``lycoris_`` + diffusers name, and the diffusers name with attention
  projections in processor form, bare or under ``unet.``, for every ``unet_to_diffusers`` entry) and
  ``model_lora_keys_clip`` (LORA_CLIP_MAP layers as ``lora_te_``/``lora_te1_``/``text_encoder.`` for CLIP-L,
  ``lora_te2_``/``text_encoder_2.`` for SDXL's CLIP-G; ComfyUI also ``text_encoders.`` + any parameter);
- A1111: the module name before the first ``.``, converted by ``convert_diffusers_name_to_compvis``, must be a
  module of the model (CompVis names), with A1111's fallbacks (``_q_proj`` -> MultiheadAttention,
  ``lora_unet`` -> ``diffusion_model``, ``lora_te1_text_model`` -> ``0_transformer_text_model``).
"""

from __future__ import annotations

import functools
import re

import pytest

from lbw.domain.keymap import block_of
from lbw.files.families import describe, normalise
from lbw.files.fixtures import fixture_kind, fixture_targets, sgm_path, write_fixture
from lbw.files.fixtures.architectures import build_models
from lbw.files.host_report import host_loading
from lbw.files.lora_file import LoraFile

LORA_CLIP_MAP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
                 "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
                 "self_attn.out_proj": "self_attn_out_proj"}
KINDS = ("sd15", "sd15_locon", "sd15_loha", "sd15_peft", "sd15_peft_bare", "sd15_processor", "sdxl", "sdxl_locon",
         "sdxl_onetrainer", "sdxl_simpletuner_lycoris", "sdxl_peft")
ARCH = {"sd15": "sd1", "sdxl": "sdxl"}


@functools.lru_cache(maxsize=2)
def _unet_layers(architecture: str) -> tuple[tuple[str, str], ...]:
    """(diffusers weight path without .weight, SGM module path) for every UNet parameter weight."""
    unet, _ = build_models(architecture)
    layers = int(unet.config.layers_per_block)
    attention = {i for i, block in enumerate(unet.up_blocks) if getattr(block, "attentions", None)}
    pairs = []
    for name, _ in unet.named_parameters():
        if name.endswith(".weight"):
            path = name[:-len(".weight")]
            pairs.append((path, sgm_path(path, layers, attention)))
    return tuple(pairs)


@functools.lru_cache(maxsize=4)
def _comfy_keymap(architecture: str, host: str) -> frozenset[str]:
    keys = set()
    for diffusers, sgm in _unet_layers(architecture):
        keys |= {"lora_unet_" + sgm.replace(".", "_"), "diffusion_model." + sgm,
                 "lora_unet_" + diffusers.replace(".", "_"), "lycoris_" + diffusers.replace(".", "_")}
        processor = diffusers.replace(".to_", ".processor.to_")
        processor = processor[:-2] if processor.endswith(".to_out.0") else processor
        keys |= {processor, "unet." + processor}
    _, encoders = build_models(architecture)
    encoder_names = ("clip_l", "clip_g") if architecture == "sdxl" else ("clip_l",)
    for index, (encoder, label) in enumerate(zip(encoders, encoder_names, strict=True)):
        params = [name if name.startswith("text_model.") else "text_model." + name
                  for name, _ in encoder.named_parameters()]
        for b in range(32):
            for c, flat in LORA_CLIP_MAP.items():
                if f"text_model.encoder.layers.{b}.{c}.weight" not in params:
                    continue
                if index == 0:
                    keys |= {f"lora_te_text_model_encoder_layers_{b}_{flat}",
                             f"lora_te1_text_model_encoder_layers_{b}_{flat}",
                             f"text_encoder.text_model.encoder.layers.{b}.{c}"}
                else:
                    keys |= {f"lora_te2_text_model_encoder_layers_{b}_{flat}",
                             f"text_encoder_2.text_model.encoder.layers.{b}.{c}"}
        if host == "comfyui":
            keys |= {f"text_encoders.{label}.transformer.{p[:-len('.weight')]}" for p in params
                     if p.endswith(".weight")}
    return frozenset(keys)


@functools.lru_cache(maxsize=2)
def _a1111_modules(architecture: str) -> frozenset[str]:
    """The network layer names A1111 gives the model's modules (CompVis names, . read as _)."""
    unet, encoders = build_models(architecture)
    layers = int(unet.config.layers_per_block)
    attention = {i for i, block in enumerate(unet.up_blocks) if getattr(block, "attentions", None)}
    names = {"diffusion_model_" + sgm_path(path, layers, attention).replace(".", "_")
             for path, module in unet.named_modules() if path and _has_weight(module)}
    first = "0_transformer_" if architecture == "sdxl" else "transformer_"
    for path, module in encoders[0].named_modules():
        if not _has_weight(module):
            continue
        full = path if path.startswith("text_model") else "text_model." + path
        names.add(first + full.replace(".", "_"))
    if architecture == "sdxl":  # open_clip ViT-bigG: resblocks with MultiheadAttention attn and mlp c_fc/c_proj
        for b in range(32):
            names |= {f"1_model_transformer_resblocks_{b}_{p}" for p in ("attn", "attn_out_proj", "mlp_c_fc",
                                                                           "mlp_c_proj", "ln_1", "ln_2")}
    return frozenset(names)


def _has_weight(module) -> bool:
    return any(name == "weight" for name, _ in module.named_parameters(recurse=False))


def _a1111_convert(key: str) -> str:
    """A1111's ``convert_diffusers_name_to_compvis`` (SD1/SDXL)."""
    resnet = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
              "conv_shortcut": "skip_connection"}
    if m := re.match(r"lora_unet_conv_in(.*)", key):
        return f"diffusion_model_input_blocks_0_0{m[1]}"
    if m := re.match(r"lora_unet_conv_out(.*)", key):
        return f"diffusion_model_out_2{m[1]}"
    if m := re.match(r"lora_unet_time_embedding_linear_(\d+)(.*)", key):
        return f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"
    if m := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        suffix = resnet.get(m[4], m[4]) if m[2] == "resnets" else m[4]
        slot = 1 if m[2] == "attentions" else 0
        return f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_{slot}_{suffix}"
    if m := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key):
        suffix = resnet.get(m[3], m[3]) if m[1] == "resnets" else m[3]
        return f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_{suffix}"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        suffix = resnet.get(m[4], m[4]) if m[2] == "resnets" else m[4]
        return f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{suffix}"
    if m := re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", key):
        return f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", key):
        return f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv"
    if m := re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key):
        return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    if m := re.match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", key):
        layer = m[2].replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj").replace("self_attn", "attn")
        return f"1_model_transformer_resblocks_{m[1]}_{layer}"
    return key


def _a1111_loads(name: str, architecture: str) -> bool:
    modules = _a1111_modules(architecture)
    key = _a1111_convert(name.partition(".")[0])
    if key in modules:
        return True
    if (m := re.match(r"(.*)_([qkv]_proj)$", key)) and m[1] in modules:
        return True
    if "lora_unet" in name:
        return name.partition(".")[0].replace("lora_unet", "diffusion_model") in modules
    if "lora_te1_text_model" in name:
        base = name.partition(".")[0]
        return any(base.replace("lora_te1_text_model", head) in modules
                   for head in ("0_transformer_text_model", "transformer_text_model"))
    return False


def _oracle_loads(host: str, name: str, architecture: str) -> bool:
    if host == "a1111":
        return _a1111_loads(name, architecture)
    return name in _comfy_keymap(architecture, host)


@pytest.mark.parametrize("kind", KINDS)
def test_every_module_loads_as_the_hosts_do(kind: str) -> None:
    info = fixture_kind(kind)
    architecture = ARCH[info.architecture]
    algo = "lokr" if info.algo.startswith("lokr") else "loha" if info.algo.startswith("loha") else "lora"
    wrong = []
    for target in fixture_targets(kind):
        naming = describe(target.name, architecture, algo)
        for host in ("a1111", "forge", "comfyui"):
            expected = _oracle_loads(host, target.name, info.architecture)
            if expected != (host in naming.loaded_by):
                wrong.append((host, target.name, expected))
    assert wrong == []


# (modules, a1111, forge, comfyui) loaded per kind; lbw's diffusers backend loads them all.
EXPECTED = {
    "sd15": (264, 264, 264, 264),
    "sd15_locon": (350, 350, 350, 350),
    "sd15_loha": (354, 354, 354, 354),
    "sd15_peft": (176, 0, 48, 48),           # the UNet's to_q/k/v/out.0 load nowhere: only the text encoder
    "sd15_peft_bare": (128, 0, 0, 0),
    "sd15_processor": (128, 0, 128, 128),    # old attention-processor names load in Forge and ComfyUI
    "sdxl": (986, 986, 986, 986),
    "sdxl_locon": (1052, 1052, 1052, 1052),
    "sdxl_onetrainer": (986, 986, 986, 986),
    "sdxl_simpletuner_lycoris": (722, 0, 722, 722),
    "sdxl_peft": (736, 0, 176, 176),
}


@pytest.mark.parametrize("kind", KINDS)
def test_modules_each_host_loads_per_family(kind: str) -> None:
    info = fixture_kind(kind)
    architecture = ARCH[info.architecture]
    algo = "lokr" if info.algo.startswith("lokr") else "loha" if info.algo.startswith("loha") else "lora"
    namings = [describe(t.name, architecture, algo) for t in fixture_targets(kind)]
    counts = tuple(sum(host in n.loaded_by for n in namings) for host in ("a1111", "forge", "comfyui"))
    assert (len(namings), *counts) == EXPECTED[kind]
    assert all("diffusers" in n.loaded_by for n in namings)


def _kohya_name(target, architecture: str) -> str:
    """The sd-scripts name of the same layer (diffusers paths; kohya's SDXL SGM names map the same)."""
    prefixes = {"unet": "lora_unet_", "te1": "lora_te1_", "te2": "lora_te2_", "lora_te": "lora_te_",
                "lora_te1": "lora_te1_", "lora_te2": "lora_te2_", "text_encoder": "lora_te1_",
                "text_encoder_2": "lora_te2_"}
    return prefixes[target.component] + target.path.replace(".", "_")


@pytest.mark.parametrize("kind", ["sd15_peft", "sd15_peft_bare", "sd15_processor", "sdxl_onetrainer",
                                  "sdxl_simpletuner_lycoris", "sdxl_peft"])
def test_every_family_gets_the_block_of_its_layer(kind: str) -> None:
    info = fixture_kind(kind)
    architecture = ARCH[info.architecture]
    for target in fixture_targets(kind):
        expected = block_of(_kohya_name(target, architecture), architecture)
        assert expected is not None
        assert describe(target.name, architecture).block == expected, target.name


def test_the_same_layer_in_every_family() -> None:
    layer = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    names = {"kohya": "lora_unet_" + layer.replace(".", "_"), "lycoris": "lycoris_" + layer.replace(".", "_"),
             "diffusers": "unet." + layer, "peft": layer, "peft_base": "base_model.model." + layer,
             "processor": "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q",
             "sgm": "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
             "comfyui": "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q"}
    described = {family: describe(name, "sdxl") for family, name in names.items()}
    assert {d.block for d in described.values()} == {"IN04"}
    assert {family: d.loaded_by for family, d in described.items()} == {
        "kohya": ("a1111", "forge", "comfyui", "diffusers"), "lycoris": ("forge", "comfyui", "diffusers"),
        "diffusers": ("diffusers",), "peft": ("diffusers",), "peft_base": ("diffusers",),
        "processor": ("forge", "comfyui", "diffusers"), "sgm": ("a1111", "forge", "comfyui", "diffusers"),
        "comfyui": ("forge", "comfyui", "diffusers")}
    assert normalise(names["processor"]).canonical == names["kohya"]


def test_ia3_loads_in_a1111_and_lbw_only() -> None:
    assert describe("lora_unet_down_blocks_0_attentions_0_proj_in", "sd1", "ia3").loaded_by == ("a1111", "diffusers")


def test_peft_sd_file_host_report(tmp_path) -> None:
    # A diffusers-training-script SD1.5 LoRA: the UNet's attention projections are in no web UI or ComfyUI key
    # map (ComfyUI and Forge know them only in the old processor form), A1111 reads no dotted names; Forge then
    # also refuses the file (more than 12 unmatched keys). lbw's diffusers backend loads it all.
    path = write_fixture("sd15_peft", tmp_path / "peft.safetensors", rank=1, dtype="fp32",
                         select=r"down_blocks\.0\.attentions\.0\.|layers\.0\.self_attn")
    lora = LoraFile.open(path)
    assert lora.architecture == "sd1"
    reports = {h.host: h for h in host_loading(lora.modules, lora.architecture, lora.unrecognized_keys)}
    unet = {m.name for m in lora.modules if m.name.startswith("unet.")}
    assert len(unet) == 8 and len(lora.modules) == 12
    assert set(reports["a1111"].not_loaded) == {m.name for m in lora.modules}
    assert set(reports["comfyui"].not_loaded) == unet and not reports["comfyui"].refuses_file
    assert set(reports["forge"].not_loaded) == unet and reports["forge"].refuses_file
    assert reports["forge"].unmatched_keys == 16
    assert reports["diffusers"].not_loaded == ()


def test_sdxl_family_files_open_as_sdxl(tmp_path) -> None:
    for kind in ("sdxl_onetrainer", "sdxl_simpletuner_lycoris", "sdxl_peft"):
        path = write_fixture(kind, tmp_path / f"{kind}.safetensors", rank=2, dtype="fp32",
                             select=r"down_blocks[._]1[._]attentions[._]0[._]|layers[._]0[._]")
        lora = LoraFile.open(path)
        assert lora.architecture == "sdxl", (kind, lora.architecture_report)
        assert not lora.unrecognized_keys and not lora.unsupported
        assert {m.block for m in lora.modules} <= {"IN04", "BASE"}
