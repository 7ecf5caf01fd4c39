"""split_key and file_family: kohya, LyCORIS, PEFT and diffusers names, normalised roles."""

from __future__ import annotations

import pytest

from lbw.files.naming import KeyParts, file_family, split_key

CASES = [
    ("lora_unet_mid_block_attentions_0_proj_in.lora_down.weight",
     KeyParts("lora_unet_mid_block_attentions_0_proj_in", "lora_down", "kohya")),
    ("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
     KeyParts("lora_te1_text_model_encoder_layers_0_mlp_fc1", "lora_up", "kohya")),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha",
     KeyParts("lora_te_text_model_encoder_layers_0_mlp_fc1", "alpha", "kohya")),
    ("lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight",
     KeyParts("lora_unet_down_blocks_0_resnets_0_conv1", "lora_mid", "lycoris")),
    ("lora_unet_input_blocks_4_1_proj_in.hada_w1_a",
     KeyParts("lora_unet_input_blocks_4_1_proj_in", "hada_w1_a", "lycoris")),
    ("lora_unet_input_blocks_4_1_proj_in.hada_t2",
     KeyParts("lora_unet_input_blocks_4_1_proj_in", "hada_t2", "lycoris")),
    ("lora_unet_conv_in.lokr_w1_b", KeyParts("lora_unet_conv_in", "lokr_w1_b", "lycoris")),
    ("lora_unet_conv_in.lokr_t2", KeyParts("lora_unet_conv_in", "lokr_t2", "lycoris")),
    ("lora_unet_x_to_q.weight", KeyParts("lora_unet_x_to_q", "weight", "lycoris")),
    ("lora_unet_x_to_q.on_input", KeyParts("lora_unet_x_to_q", "on_input", "lycoris")),
    ("lora_unet_x_to_q.dora_scale", KeyParts("lora_unet_x_to_q", "dora_scale", "lycoris")),
    ("lora_unet_x_to_q.diff_b", KeyParts("lora_unet_x_to_q", "diff_b", "lycoris")),
    ("lora_unet_x_norm1.w_norm", KeyParts("lora_unet_x_norm1", "w_norm", "lycoris")),
    ("lora_unet_x_to_q.oft_blocks", KeyParts("lora_unet_x_to_q", "oft_blocks", "lycoris")),
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
     KeyParts("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "lora_down", "peft")),
    ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight",
     KeyParts("text_encoder.text_model.encoder.layers.0.self_attn.q_proj", "lora_up", "peft")),
    ("unet.mid_block.attentions.0.proj_in.lora_B.default.weight",
     KeyParts("unet.mid_block.attentions.0.proj_in", "lora_up", "peft")),
    ("unet.mid_block.attentions.0.proj_in.lora_magnitude_vector",
     KeyParts("unet.mid_block.attentions.0.proj_in", "dora_scale", "peft")),
    ("lora_unet_x_to_q.lora_A.weight", KeyParts("lora_unet_x_to_q", "lora_down", "peft")),
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight",
     KeyParts("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q", "lora_up", "diffusers")),
    ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight",
     KeyParts("text_encoder.text_model.encoder.layers.0.self_attn.q_proj", "lora_down", "diffusers")),
    ("unet.mid_block.attentions.0.proj_in.lora.up.weight",
     KeyParts("unet.mid_block.attentions.0.proj_in", "lora_up", "diffusers")),
    ("unet.mid_block.attentions.0.proj_in.alpha",
     KeyParts("unet.mid_block.attentions.0.proj_in", "alpha", "diffusers")),
    # Other trainers' kohya-style names: OneTrainer's Flux transformer, SimpleTuner's LyCORIS.
    ("lora_transformer_transformer_blocks_0_attn_to_q.lora_up.weight",
     KeyParts("lora_transformer_transformer_blocks_0_attn_to_q", "lora_up", "kohya")),
    ("lycoris_transformer_blocks_0_attn_add_q_proj.lokr_w1",
     KeyParts("lycoris_transformer_blocks_0_attn_add_q_proj", "lokr_w1", "lycoris")),
    ("lycoris_down_blocks_1_attentions_0_proj_in.alpha",
     KeyParts("lycoris_down_blocks_1_attentions_0_proj_in", "alpha", "kohya")),
    # ai-toolkit's LoKr under dotted diffusers names.
    ("transformer.single_transformer_blocks.0.proj_mlp.lokr_w2_a",
     KeyParts("transformer.single_transformer_blocks.0.proj_mlp", "lokr_w2_a", "lycoris")),
    ("transformer.transformer_blocks.0.attn.to_q.hada_w1_a",
     KeyParts("transformer.transformer_blocks.0.attn.to_q", "hada_w1_a", "lycoris")),
]


@pytest.mark.parametrize(("key", "parts"), CASES)
def test_split_key(key: str, parts: KeyParts) -> None:
    assert split_key(key) == parts


@pytest.mark.parametrize("key", [
    "unet.conv_in.weight",                      # a full model weight, not an adapter tensor
    "transformer.proj_out.on_input",            # IA3 roles are read under kohya-style names only
    "lora_unet_x.something.weight",             # kohya module names never contain a dot
    "lora_unet_x",                              # no role
    ".lora_up.weight",                          # no module
    "model.diffusion_model.input_blocks.0.0.bias",
])
def test_unrecognised_keys(key: str) -> None:
    assert split_key(key) is None


def test_file_family() -> None:
    assert file_family(["kohya"]) == "kohya"
    assert file_family(["kohya", "lycoris"]) == "lycoris"
    assert file_family(["kohya"], "lycoris.kohya") == "lycoris"
    assert file_family(["kohya"], "networks.lora") == "kohya"
    assert file_family(["peft"]) == "peft"
    assert file_family(["diffusers"]) == "diffusers"
    assert file_family(["kohya", "peft"]) == "mixed"
    assert file_family([]) == "unknown"
