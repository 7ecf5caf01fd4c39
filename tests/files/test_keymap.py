"""Module name -> LBW block and Inspire bucket (lbw-semantics §2.1-2.4, lora-files §6).

Names of every family go through ``lbw.files.families`` (the one normaliser) to the canonical name keymap reads;
canonical (kohya) names also go to keymap directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lbw.domain.keymap import block_of, inspire_bucket, module_path
from lbw.files.families import describe

SD1 = [
    # kohya SD1/SD2 (diffusers-style paths)
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "BASE"),
    ("lora_te_text_model_encoder_layers_11_mlp_fc2", "BASE"),
    ("lora_unet_conv_in", "IN00"),
    ("lora_unet_down_blocks_0_attentions_0_proj_in", "IN01"),
    ("lora_unet_down_blocks_0_resnets_1_conv2", "IN02"),
    ("lora_unet_down_blocks_0_downsamplers_0_conv", "IN03"),
    ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", "IN04"),
    ("lora_unet_down_blocks_1_attentions_1_proj_out", "IN05"),
    ("lora_unet_down_blocks_1_downsamplers_0_conv", "IN06"),
    ("lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_ff_net_0_proj", "IN07"),
    ("lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_ff_net_2", "IN08"),
    ("lora_unet_down_blocks_2_downsamplers_0_conv", "IN09"),
    ("lora_unet_down_blocks_3_resnets_0_conv1", "IN10"),
    ("lora_unet_down_blocks_3_resnets_1_time_emb_proj", "IN11"),
    ("lora_unet_mid_block_attentions_0_proj_in", "M00"),
    ("lora_unet_mid_block_resnets_0_conv1", "M00"),
    ("lora_unet_mid_block_resnets_1_conv2", "M00"),
    ("lora_unet_up_blocks_0_resnets_0_conv1", "OUT00"),
    ("lora_unet_up_blocks_0_resnets_2_conv_shortcut", "OUT02"),
    ("lora_unet_up_blocks_0_upsamplers_0_conv", "OUT02"),
    ("lora_unet_up_blocks_1_attentions_0_proj_in", "OUT03"),
    ("lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn1_to_out_0", "OUT05"),
    ("lora_unet_up_blocks_1_upsamplers_0_conv", "OUT05"),
    ("lora_unet_up_blocks_2_attentions_1_proj_out", "OUT07"),
    ("lora_unet_up_blocks_2_upsamplers_0_conv", "OUT08"),
    ("lora_unet_up_blocks_3_attentions_0_proj_in", "OUT09"),
    ("lora_unet_up_blocks_3_resnets_2_conv2", "OUT11"),
    ("lora_unet_conv_out", None),
    ("lora_unet_time_embedding_linear_1", None),
    ("lora_unet_time_embedding_linear_2", None),
]

SDXL = [
    ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "BASE"),
    ("lora_te2_text_model_encoder_layers_31_mlp_fc2", "BASE"),
    ("lora_unet_input_blocks_1_0_in_layers_2", "IN01"),
    ("lora_unet_input_blocks_3_0_op", "IN03"),
    ("lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_k", "IN04"),
    ("lora_unet_input_blocks_8_1_proj_out", "IN08"),
    ("lora_unet_middle_block_0_emb_layers_1", "M00"),
    ("lora_unet_middle_block_1_transformer_blocks_9_ff_net_2", "M00"),
    ("lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_v", "OUT00"),
    ("lora_unet_output_blocks_2_2_conv", "OUT02"),
    ("lora_unet_output_blocks_5_1_proj_in", "OUT05"),
    ("lora_unet_output_blocks_8_0_skip_connection", "OUT08"),
    ("lora_unet_time_embed_0", None),
    ("lora_unet_label_emb_0_0", None),
    ("lora_unet_out_2", None),
]

PEFT = [
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "IN01"),
    ("unet.mid_block.attentions.0.proj_in", "M00"),
    ("unet.up_blocks.3.attentions.2.proj_out", "OUT11"),
    ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj", "BASE"),
    ("text_encoder_2.text_model.encoder.layers.5.mlp.fc1", "BASE"),
    ("base_model.model.down_blocks.1.attentions.1.proj_in", "IN05"),  # PEFT straight from the UNet
    ("base_model.model.text_model.encoder.layers.0.mlp.fc1", "BASE"),
    ("vae.decoder.conv_in", None),
    ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q", "IN04"),
    ("unet.conv_out", None),
    ("diffusion_model.output_blocks.3.1.proj_in", "OUT03"),
]

FLUX = [
    ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "CLIP"),
    ("lora_te3_encoder_block_0_layer_0_SelfAttention_q", "T5"),
    ("lora_te2_text_model_encoder_layers_0_mlp_fc1", None),
    ("lora_unet_double_blocks_0_img_attn_qkv", "D00"),
    ("lora_unet_double_blocks_18_txt_mlp_2", "D18"),
    ("lora_unet_single_blocks_0_linear1", "S00"),
    ("lora_unet_single_blocks_37_modulation_lin", "S37"),
    ("lora_unet_img_in", "IN"),
    ("lora_unet_txt_in", "IN"),
    ("lora_unet_time_in_in_layer", "IN"),
    ("lora_unet_final_layer_linear", "OUT"),
    ("lora_unet_double_blocks_19_img_attn_qkv", None),  # FLUX.1 has 19 double blocks
    ("transformer.transformer_blocks.3.attn.to_q", "D03"),
    ("transformer.single_transformer_blocks.12.proj_out", "S12"),
    ("transformer.x_embedder", "IN"),
    ("transformer.context_embedder", "IN"),
    ("transformer.proj_out", "OUT"),
    ("transformer.norm_out.linear", "OUT"),
    ("text_encoder.text_model.encoder.layers.0.mlp.fc1", "CLIP"),
    ("text_encoder_2.encoder.block.0.layer.1.DenseReluDense.wi_0", "T5"),
]


def _block(name: str, architecture: str | None = None) -> str | None:
    return describe(name, architecture).block


@pytest.mark.parametrize(("name", "block"), SD1)
def test_sd1_kohya_names(name: str, block: str | None) -> None:
    assert block_of(name, "sd1") == _block(name, "sd1") == block
    assert block_of(name, "sd2") == _block(name, "sd2") == block


@pytest.mark.parametrize(("name", "block"), SDXL)
def test_sdxl_sgm_names(name: str, block: str | None) -> None:
    assert block_of(name, "sdxl") == _block(name, "sdxl") == block


@pytest.mark.parametrize(("name", "block"), PEFT)
def test_diffusers_and_peft_names(name: str, block: str | None) -> None:
    assert _block(name) == block


@pytest.mark.parametrize(("name", "block"), FLUX)
def test_flux_names(name: str, block: str | None) -> None:
    assert _block(name, "flux") == block


def test_diffusers_formula_for_every_down_and_up_block() -> None:
    for i in range(4):
        for j in range(2):
            assert block_of(f"lora_unet_down_blocks_{i}_resnets_{j}_conv1") == f"IN{1 + 3 * i + j:02d}"
        for j in range(3):
            assert block_of(f"lora_unet_up_blocks_{i}_resnets_{j}_conv1") == f"OUT{3 * i + j:02d}"


def test_sd1_17_block_table_of_lbw_version_1() -> None:
    # The diffusers <-> 17-block table of LBW's first version (lbw-semantics §2.2).
    table = {"IN01": "down_blocks_0_attentions_0", "IN02": "down_blocks_0_attentions_1",
             "IN04": "down_blocks_1_attentions_0", "IN05": "down_blocks_1_attentions_1",
             "IN07": "down_blocks_2_attentions_0", "IN08": "down_blocks_2_attentions_1",
             "M00": "mid_block_attentions_0",
             **{f"OUT{3 + k:02d}": f"up_blocks_1_attentions_{k}" for k in range(3)},
             **{f"OUT{6 + k:02d}": f"up_blocks_2_attentions_{k}" for k in range(3)},
             **{f"OUT{9 + k:02d}": f"up_blocks_3_attentions_{k}" for k in range(3)}}
    for block, path in table.items():
        assert block_of(f"lora_unet_{path}_transformer_blocks_0_attn1_to_q") == block


def test_lbw_sees_compvis_names() -> None:
    assert module_path("lora_unet_down_blocks_0_attentions_0_proj_in").lbw_name == (
        "diffusion_model_input_blocks_1_1_proj_in")
    assert module_path("lora_unet_up_blocks_0_upsamplers_0_conv").lbw_name == "diffusion_model_output_blocks_2_1_conv"
    assert module_path("lora_unet_up_blocks_1_upsamplers_0_conv").lbw_name == "diffusion_model_output_blocks_5_2_conv"
    assert module_path("lora_unet_time_embedding_linear_2").lbw_name == "diffusion_model_time_embed_2"
    assert module_path("lora_unet_mid_block_resnets_1_conv1").lbw_name == "diffusion_model_middle_block_2_conv1"
    assert module_path("vae.encoder.conv_in") is None


def test_text_encoder_module_outside_the_encoder_is_unmapped_like_lbw() -> None:
    # LBW matches "encoder" on the layer name; a TE module outside the encoder layers keeps strength 1.
    assert block_of("lora_te_text_model_final_layer_norm") is None


INSPIRE = [
    ("lora_unet_down_blocks_0_attentions_1_proj_in", "sd1", ("input", 2)),
    ("lora_unet_down_blocks_0_resnets_1_conv1", "sd1", ("input", 2)),
    ("lora_unet_down_blocks_2_downsamplers_0_conv", "sd1", ("input", 9)),
    ("lora_unet_conv_in", "sd1", ("input", 0)),
    ("lora_unet_mid_block_resnets_0_conv1", "sd1", ("middle", 0)),
    ("lora_unet_mid_block_attentions_0_proj_in", "sd1", ("middle", 1)),
    ("lora_unet_mid_block_resnets_1_conv1", "sd1", ("middle", 2)),
    ("lora_unet_up_blocks_3_attentions_2_proj_out", "sd1", ("output", 11)),
    ("lora_unet_input_blocks_7_1_proj_in", "sdxl", ("input", 7)),
    ("lora_unet_middle_block_2_out_layers_3", "sdxl", ("middle", 2)),
    ("lora_unet_double_blocks_4_img_mlp_0", "flux", ("double", 4)),
    ("lora_unet_single_blocks_30_linear2", "flux", ("single", 30)),
    ("transformer.single_transformer_blocks.2.proj_mlp", "flux", ("single", 2)),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1", "sd1", None),
    ("lora_unet_time_embedding_linear_1", "sd1", None),
    ("lora_unet_conv_out", "sd1", None),
    ("lora_unet_img_in", "flux", None),
    ("lora_unet_final_layer_linear", "flux", None),
]


@pytest.mark.parametrize(("name", "architecture", "bucket"), INSPIRE)
def test_inspire_buckets(name: str, architecture: str, bucket: tuple[str, int] | None) -> None:
    assert describe(name, architecture).inspire == bucket
    if "." not in name:
        assert inspire_bucket(name, architecture) == bucket


def test_keymap_is_standard_library_only() -> None:
    import lbw.domain.keymap as keymap

    assert "torch" not in keymap.__dict__
    source = Path(keymap.__file__).read_text(encoding="utf-8")
    assert "import torch" not in source and "safetensors" not in source
    assert sys.modules["lbw.domain.keymap"] is keymap
