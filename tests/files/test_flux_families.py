"""Flux LoRAs of every trainer family map to the block the web UI extension gives them, on the hosts that load them.

The oracle below restates the hosts' own code in its enumerating form (independent of lbw's prefix parsing):
Forge builds its key map from the model's parameter names (``model_lora_keys_unet``/``_clip``, with
``flux_to_diffusers`` for the diffusers names), loads a module when its name is in that map, and the LBW
extension gives the patched parameter a block with ``get_flux_blocks`` (vae, t5xxl, clip_, double_blocks +
first number, single_blocks, _in, final_layer). ComfyUI does the same with its own map; Inspire buckets on the
parameter name. lbw must agree module by module, for every family's fixture (real names and shapes).
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from lbw.domain.hosts import FORGE_UNMATCHED_LIMIT
from lbw.domain.weights import parse_weights
from lbw.files.families import describe, normalise
from lbw.files.fixtures import fixture_kind, fixture_targets, write_fixture
from lbw.files.host_report import host_loading, loaded_nowhere
from lbw.files.lora_file import LoraFile

FLUX_KINDS = ("flux_te", "flux_onetrainer", "flux_simpletuner_lycoris", "flux_aitoolkit", "flux_diffusers",
              "flux_peft", "flux_peft_base", "flux_comfyui")
DOUBLE, SINGLE, HIDDEN_LAYERS_T5, CLIP_LAYERS = 19, 38, 24, 12
LORA_CLIP_MAP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
                 "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
                 "self_attn.out_proj": "self_attn_out_proj"}


# --- the oracle: the hosts' key maps built from parameter names ------------------------------------------------

def _bfl_parameters() -> list[str]:
    """FLUX.1-dev's parameter names (BFL layout) that end in .weight or .scale."""
    names = ["img_in.weight", "txt_in.weight", "final_layer.linear.weight", "final_layer.adaLN_modulation.1.weight"]
    for embedder in ("time_in", "vector_in", "guidance_in"):
        names += [f"{embedder}.in_layer.weight", f"{embedder}.out_layer.weight"]
    for i in range(DOUBLE):
        for stream in ("img", "txt"):
            names += [f"double_blocks.{i}.{stream}_{layer}" for layer in (
                "mod.lin.weight", "attn.qkv.weight", "attn.proj.weight", "mlp.0.weight", "mlp.2.weight",
                "attn.norm.query_norm.scale", "attn.norm.key_norm.scale")]
    for i in range(SINGLE):
        names += [f"single_blocks.{i}.{layer}" for layer in (
            "linear1.weight", "linear2.weight", "modulation.lin.weight", "norm.query_norm.scale",
            "norm.key_norm.scale")]
    return ["diffusion_model." + name for name in names]


def _flux_to_diffusers() -> dict[str, str]:
    """diffusers weight name -> BFL parameter (ComfyUI/Forge ``flux_to_diffusers``, offsets dropped)."""
    table = {}
    for i in range(DOUBLE):
        d, b = f"transformer_blocks.{i}", f"diffusion_model.double_blocks.{i}"
        for q in ("to_q", "to_k", "to_v"):
            table[f"{d}.attn.{q}.weight"] = f"{b}.img_attn.qkv.weight"
        for q in ("add_q_proj", "add_k_proj", "add_v_proj"):
            table[f"{d}.attn.{q}.weight"] = f"{b}.txt_attn.qkv.weight"
        for source, target in (("attn.to_out.0", "img_attn.proj"), ("norm1.linear", "img_mod.lin"),
                               ("norm1_context.linear", "txt_mod.lin"), ("attn.to_add_out", "txt_attn.proj"),
                               ("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"),
                               ("ff_context.net.0.proj", "txt_mlp.0"), ("ff_context.net.2", "txt_mlp.2")):
            table[f"{d}.{source}.weight"] = f"{b}.{target}.weight"
    for i in range(SINGLE):
        d, b = f"single_transformer_blocks.{i}", f"diffusion_model.single_blocks.{i}"
        for q in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"):
            table[f"{d}.{q}.weight"] = f"{b}.linear1.weight"
        table[f"{d}.norm.linear.weight"] = f"{b}.modulation.lin.weight"
        table[f"{d}.proj_out.weight"] = f"{b}.linear2.weight"
    for source, target in (("proj_out", "final_layer.linear"), ("x_embedder", "img_in"),
                           ("context_embedder", "txt_in"), ("norm_out.linear", "final_layer.adaLN_modulation.1")):
        table[f"{source}.weight"] = f"diffusion_model.{target}.weight"
    for embedder, target in (("timestep_embedder", "time_in"), ("guidance_embedder", "guidance_in"),
                             ("text_embedder", "vector_in")):
        table[f"time_text_embed.{embedder}.linear_1.weight"] = f"diffusion_model.{target}.in_layer.weight"
        table[f"time_text_embed.{embedder}.linear_2.weight"] = f"diffusion_model.{target}.out_layer.weight"
    return table


def _clip_parameters() -> list[str]:
    layers = [*LORA_CLIP_MAP, "layer_norm1", "layer_norm2"]
    return [f"clip_l.transformer.text_model.encoder.layers.{b}.{layer}.weight"
            for b in range(CLIP_LAYERS) for layer in layers]


def _t5_parameters() -> list[str]:
    names = []
    for b in range(HIDDEN_LAYERS_T5):
        block = f"t5xxl.transformer.encoder.block.{b}"
        names += [f"{block}.layer.0.SelfAttention.{p}.weight" for p in "qkvo"]
        names += [f"{block}.layer.1.DenseReluDense.{p}.weight" for p in ("wi_0", "wi_1", "wo")]
        names += [f"{block}.layer.0.layer_norm.weight", f"{block}.layer.1.layer_norm.weight"]
    return names


def _oracle(host: str) -> dict[str, str]:
    """Module name -> model parameter, as ``host``'s loader builds it for FLUX.1 (clip_l + t5xxl present)."""
    key_map: dict[str, str] = {}
    for k in _bfl_parameters():
        body = k[len("diffusion_model."):]
        if k.endswith(".weight"):
            key_map["lora_unet_" + body[:-len(".weight")].replace(".", "_")] = k
            key_map[k[:-len(".weight")]] = k
        else:
            key_map[k] = k
    for diffusers, target in _flux_to_diffusers().items():
        stem = diffusers[:-len(".weight")]
        key_map["transformer." + stem] = target
        key_map["lycoris_" + stem.replace(".", "_")] = target
        key_map["lora_transformer_" + stem.replace(".", "_")] = target
    for b in range(32):
        for c, flat in LORA_CLIP_MAP.items():
            k = f"clip_l.transformer.text_model.encoder.layers.{b}.{c}.weight"
            if k in _clip_parameters():
                key_map[f"lora_te_text_model_encoder_layers_{b}_{flat}"] = k
                key_map[f"lora_te1_text_model_encoder_layers_{b}_{flat}"] = k
                key_map[f"text_encoder.text_model.encoder.layers.{b}.{c}"] = k
    t5_prefixes = ("lora_te1_", "lora_te2_", "lora_te3_") if host == "forge" else ("lora_te2_", "lora_te3_")
    for k in _t5_parameters():
        inner = k[len("t5xxl.transformer."):-len(".weight")].replace(".", "_")
        for prefix in t5_prefixes:
            key_map[prefix + inner] = k
    if host == "comfyui":
        for k in [*_clip_parameters(), *_t5_parameters()]:
            key_map["text_encoders." + k[:-len(".weight")]] = k
    return key_map


def _lbw_flux_block(parameter: str) -> str:
    """The LBW extension's ``get_flux_blocks`` on a Forge parameter name (. read as _)."""
    key = parameter.replace(".", "_")
    if "vae" in key:
        return "VAE"
    if "t5xxl" in key:
        return "T5"
    if "clip_" in key:
        return "CLIP"
    number = re.search(r"_(\d+)_", key)
    if "double_blocks" in key:
        return f"D{number[1].zfill(2)}"
    if "single_blocks" in key:
        return f"S{number[1].zfill(2)}"
    if "_in" in key:
        return "IN"
    if "final_layer" in key:
        return "OUT"
    return "Not Merge"


def _inspire(parameter: str) -> tuple[str, int] | None:
    match = re.match(r"diffusion_model\.(double_blocks|single_blocks)\.(\d+)\.", parameter)
    return None if match is None else (match[1].split("_")[0], int(match[2]))


FORGE, COMFYUI = _oracle("forge"), _oracle("comfyui")


# --- tests ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", FLUX_KINDS)
def test_every_module_loads_and_maps_as_the_hosts_do(kind: str) -> None:
    algo = "lokr" if fixture_kind(kind).algo == "lokr" else "lora"
    wrong = []
    for target in fixture_targets(kind):
        naming = describe(target.name, "flux", algo)
        for host, oracle in (("forge", FORGE), ("comfyui", COMFYUI)):
            loaded = target.name in oracle
            if loaded != (host in naming.loaded_by):
                wrong.append((host, target.name, "loaded" if loaded else "not loaded"))
            elif loaded and host == "forge" and naming.block != _lbw_flux_block(oracle[target.name]):
                wrong.append((host, target.name, naming.block, _lbw_flux_block(oracle[target.name])))
            elif loaded and host == "comfyui" and naming.inspire != _inspire(oracle[target.name]):
                wrong.append((host, target.name, naming.inspire, _inspire(oracle[target.name])))
    assert wrong == []


def _structural_block(component: str, path: str) -> str:
    """The block of a layer, read from its model path (independent of any name)."""
    if component == "t5":
        return "T5"
    if component == "te1":
        return "CLIP"
    if match := re.match(r"(single_transformer_blocks|transformer_blocks|single_blocks|double_blocks)\.(\d+)\.", path):
        return ("S" if match[1].startswith("single") else "D") + f"{int(match[2]):02d}"
    return "OUT" if path.startswith(("norm_out", "proj_out", "final_layer")) else "IN"


@pytest.mark.parametrize("kind", FLUX_KINDS)
def test_every_family_gets_the_block_of_its_layer(kind: str) -> None:
    # Also for names no host loads (bare PEFT, text_encoder_2.): the block of the layer, flagged not loaded.
    targets = fixture_targets(kind)
    blocks = {t.name: describe(t.name, "flux").block for t in targets}
    assert blocks == {t.name: _structural_block(t.component, t.path) for t in targets}


# Modules per family and how many each host loads: (modules, forge, comfyui, family counts).
EXPECTED = {
    "flux_te": (468, 468, 468, {"kohya": 468}),
    "flux_onetrainer": (744, 744, 744, {"onetrainer": 672, "kohya": 72}),
    "flux_simpletuner_lycoris": (504, 504, 504, {"lycoris": 504}),
    "flux_aitoolkit": (504, 504, 504, {"diffusers": 504}),
    "flux_diffusers": (744, 576, 576, {"diffusers": 744}),
    "flux_peft": (504, 0, 0, {"peft": 504}),
    "flux_peft_base": (504, 0, 0, {"peft": 504}),
    "flux_comfyui": (304, 304, 304, {"comfyui": 304}),
}


@pytest.mark.parametrize("kind", FLUX_KINDS)
def test_modules_each_host_loads_per_family(kind: str) -> None:
    algo = "lokr" if fixture_kind(kind).algo == "lokr" else "lora"
    targets = fixture_targets(kind)
    namings = [describe(t.name, "flux", algo) for t in targets]
    families: dict[str, int] = {}
    for naming in namings:
        families[naming.family] = families.get(naming.family, 0) + 1
    forge = sum("forge" in n.loaded_by for n in namings)
    comfy = sum("comfyui" in n.loaded_by for n in namings)
    assert (len(targets), forge, comfy, families) == EXPECTED[kind]


def test_t5_names_per_host() -> None:
    # sd-scripts writes T5 as lora_te3_, OneTrainer as lora_te2_; Forge also maps lora_te1_, ComfyUI does not.
    t5 = "encoder_block_3_layer_1_DenseReluDense_wi_0"
    loaded = {prefix: describe(prefix + t5, "flux").loaded_by for prefix in ("lora_te1_", "lora_te2_", "lora_te3_")}
    assert loaded == {"lora_te1_": ("forge",), "lora_te2_": ("forge", "comfyui"), "lora_te3_": ("forge", "comfyui")}
    assert {describe(p + t5, "flux").block for p in loaded} == {"T5"}
    assert describe("text_encoder_2.encoder.block.3.layer.1.DenseReluDense.wi_0", "flux").loaded_by == ()
    assert normalise("lora_te2_" + t5).family == "onetrainer"


def test_ia3_and_peft_default_adapter_keys_are_not_loaded_by_forge() -> None:
    name = "transformer.transformer_blocks.0.attn.to_q"
    assert describe(name, "flux", "ia3").loaded_by == ()
    assert describe(name, "flux", "lora", [".lora_A.default.weight", ".lora_B.default.weight"]).loaded_by == (
        "comfyui",)


def _write(kind: str, folder, **options):
    return write_fixture(kind, folder / f"{kind}.safetensors", rank=1, dtype="fp32", **options)


def test_files_of_each_family_open_as_flux_with_their_family(tmp_path) -> None:
    subset = r"(transformer_blocks|double_blocks)[._]0[._]|(single_transformer_blocks|single_blocks)[._]1[._]" \
             r"|x_embedder|img_in|layers[._]0[._]|block[._]0[._]"
    for kind in FLUX_KINDS:
        lora = LoraFile.open(_write(kind, tmp_path, select=subset))
        assert lora.architecture == "flux", (kind, lora.architecture_report)
        assert not [w for w in lora.warnings if "architecture" in w], kind
        assert not lora.unrecognized_keys and not lora.unsupported, kind
        families = {m.naming.family for m in lora.modules}
        assert families == set(EXPECTED[kind][3]), kind
        assert lora.layout.name == "FLUX61"


def test_host_report_of_a_diffusers_file_with_t5(tmp_path) -> None:
    # text_encoder_2.* (T5) names load nowhere; their 2 keys per module push Forge past 12 unmatched keys, and
    # Forge then skips the whole file (the transformer modules too). ComfyUI loads the rest.
    lora = LoraFile.open(_write("flux_diffusers", tmp_path, select=r"transformer_blocks\.0\.|block\.[0-2]\."))
    t5 = [m for m in lora.modules if m.name.startswith("text_encoder_2.")]
    assert len(t5) == 21 and all(m.block == "T5" for m in t5)
    forge, comfy = host_loading(lora.modules, lora.architecture, lora.unrecognized_keys)
    assert (forge.host, comfy.host) == ("forge", "comfyui")
    assert set(forge.not_loaded) == set(comfy.not_loaded) == {m.name for m in t5}
    assert forge.unmatched_keys == 42 > FORGE_UNMATCHED_LIMIT and forge.refuses_file and forge.loaded == 0
    assert not comfy.refuses_file and comfy.loaded == len(lora.modules) - 21
    assert {m.name for m in loaded_nowhere(lora.modules)} == {m.name for m in t5}
    assert "skips the whole file" in forge.summary()


def test_bake_keeps_modules_no_host_loads_untouched(tmp_path) -> None:
    from lbw.services.bake import bake

    source = _write("flux_diffusers", tmp_path, select=r"transformer_blocks\.[01]\.attn\.to_q|block\.0\.layer\.0")
    weights = parse_weights(",".join(["0.5"] * 61))
    report = bake(source, tmp_path / "out.safetensors", weights)
    before, after = load_file(source), load_file(tmp_path / "out.safetensors")
    assert before.keys() == after.keys()
    for key, value in before.items():
        if key.startswith("text_encoder_2."):
            assert torch.equal(after[key], value), key  # T5 names no host loads: untouched
        elif key.endswith("lora_B.weight"):
            assert torch.allclose(after[key], 0.5 * value), key
    assert any("loaded by no host" in note and "text_encoder_2.encoder.block.0" in note for note in report.plan.notes)
    assert [row.modules for row in report.plan.rows if row.block == "loaded by no host"] == [4]


def test_merge_keeps_modules_no_host_loads_untouched(tmp_path) -> None:
    from lbw.services.merge import MergeOptions, merge
    from lbw.services.sources import Defaults, open_source, split_specs

    a = write_fixture("flux_diffusers", tmp_path / "a.safetensors", rank=4, dtype="fp32",
                      select=r"\.transformer_blocks\.0\.attn\.to_q|block\.0\.layer\.0\.SelfAttention\.q")
    b = write_fixture("flux_aitoolkit", tmp_path / "b.safetensors", rank=4, dtype="fp32", seed=1,
                      select=r"\.transformer_blocks\.0\.attn\.to_q")
    sources = [open_source(spec, Defaults()) for spec in split_specs([f"{a}:0.5", f"{b}:0.8"])]
    merge(sources, tmp_path / "ab.safetensors", options=MergeOptions(rank=2))
    merged, first = load_file(tmp_path / "ab.safetensors"), load_file(a)
    t5 = "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q"
    for role in ("lora_A.weight", "lora_B.weight"):  # neither strength 0.5 nor the rank limit 2 reached it
        assert torch.equal(merged[f"{t5}.{role}"], first[f"{t5}.{role}"])
    joined = "transformer.transformer_blocks.0.attn.to_q"
    assert merged[f"{joined}.lora_A.weight"].shape[0] == 2  # loaded by Forge and ComfyUI: merged and compressed
