"""lbw.files.families: one normaliser for every naming family (prefix, layer namespace, canonical name)."""

from __future__ import annotations

import pytest

from lbw.domain.hosts import NameForm, hosts_for, loads
from lbw.files.families import describe, normalise

CANONICAL = [
    # (name as written, family, component, namespace, canonical sd-scripts name)
    ("lora_unet_double_blocks_3_img_attn_qkv", "kohya", "unet", "bfl", "lora_unet_double_blocks_3_img_attn_qkv"),
    ("lora_transformer_single_transformer_blocks_5_proj_out", "onetrainer", "unet", "flux_diffusers",
     "lora_unet_single_blocks_5_linear2"),
    ("lycoris_time_text_embed_guidance_embedder_linear_2", "lycoris", "unet", "flux_diffusers",
     "lora_unet_guidance_in_out_layer"),
    ("transformer.norm_out.linear", "diffusers", "unet", "flux_diffusers", "lora_unet_final_layer_adaLN_modulation_1"),
    ("transformer.transformer_blocks.18.ff_context.net.2", "diffusers", "unet", "flux_diffusers",
     "lora_unet_double_blocks_18_txt_mlp_2"),
    ("single_transformer_blocks.0.norm.linear", "peft", "unet", "flux_diffusers",
     "lora_unet_single_blocks_0_modulation_lin"),
    ("diffusion_model.single_blocks.1.linear1", "comfyui", "unet", "bfl", "lora_unet_single_blocks_1_linear1"),
    ("text_encoders.t5xxl.transformer.encoder.block.2.layer.1.DenseReluDense.wo", "comfyui", "t5", "t5",
     "lora_te3_encoder_block_2_layer_1_DenseReluDense_wo"),
    ("text_encoders.clip_g.transformer.text_model.encoder.layers.3.mlp.fc1", "comfyui", "te2", "clip",
     "lora_te2_text_model_encoder_layers_3_mlp_fc1"),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1", "kohya", "te1", "clip",
     "lora_te_text_model_encoder_layers_0_mlp_fc1"),
    ("text_model.encoder.layers.0.mlp.fc1", "peft", "te1", "clip", "lora_te1_text_model_encoder_layers_0_mlp_fc1"),
    ("text_encoder.encoder.layers.1.mlp.fc2", "diffusers", "te1", "clip",  # transformers 5 drops text_model
     "lora_te1_text_model_encoder_layers_1_mlp_fc2"),
    ("unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_out", "diffusers", "unet",
     "sd_diffusers", "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0"),
    ("base_model.model.mid_block.resnets.1.conv2", "peft", "unet", "sd_diffusers",
     "lora_unet_mid_block_resnets_1_conv2"),
    ("lora_unet_output_blocks_5_2_conv", "kohya", "unet", "sgm", "lora_unet_output_blocks_5_2_conv"),
]


@pytest.mark.parametrize(("name", "family", "component", "namespace", "canonical"), CANONICAL)
def test_normalise(name: str, family: str, component: str, namespace: str, canonical: str) -> None:
    normal = normalise(name)
    assert (normal.family, normal.component, normal.form.namespace, normal.canonical) == (
        family, component, namespace, canonical)


@pytest.mark.parametrize("name", [
    "vae.decoder.conv_in",                       # not a LoRA layer lbw knows
    "lora_unet_text_model_encoder_layers_0_mlp_fc1",  # a text path under the UNet prefix
    "lora_te1_double_blocks_0_img_attn_qkv",     # a transformer path under a text-encoder prefix
    "transformer.transformer_blocks.0.attn.bogus",  # not a Flux layer
    "text_encoders.clip_l.transformer.encoder.block.0.layer.0.SelfAttention.q",  # T5 path under CLIP-L
])
def test_unknown_layers_have_no_canonical_name_and_load_nowhere(name: str) -> None:
    normal = normalise(name)
    assert normal.canonical is None and normal.form.namespace == "" and normal.component == ""
    for architecture in ("sd1", "sdxl", "flux"):
        described = describe(name, architecture)
        assert described.block is None and described.loaded_by == ()


def test_unknown_architecture_cannot_tell_hosts() -> None:
    described = describe("lora_unet_down_blocks_0_attentions_0_proj_in", "unknown")
    assert described.hosts == () and described.loaded_by is None and not described.loaded_nowhere
    assert hosts_for(None) == ()


def test_hosts_that_do_not_run_an_architecture_load_nothing() -> None:
    form = normalise("lora_unet_double_blocks_0_img_attn_qkv").form
    assert loads("forge", "flux", form) and not loads("a1111", "flux", form) and not loads("diffusers", "flux", form)
    assert not loads("forge", "flux", NameForm("lora_unet_", "unet", "", "x"))
    assert not loads("comfyui", "sd1", normalise("lora_te2_text_model_encoder_layers_0_mlp_fc1").form)


def test_host_rules_are_standard_library_only() -> None:
    from pathlib import Path

    import lbw.domain.hosts as hosts

    source = Path(hosts.__file__).read_text(encoding="utf-8")
    assert "import torch" not in source and "from lbw.files" not in source and "from lbw.adapters" not in source
