"""Fixture generator: totals pinned from the real architectures, names, shapes, variants, determinism."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lbw.errors import LbwError
from lbw.files.fixtures import (
    FIXTURE_KINDS,
    factorization,
    fixture_metadata,
    fixture_targets,
    fixture_tensors,
    lora_tensors_for_models,
    sgm_path,
    write_fixture,
)
from lbw.files.hashes import addnet_hash


def modules_of(tensors: dict[str, torch.Tensor]) -> set[str]:
    return {key.split(".", 1)[0] for key in tensors}


def params(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors.values())


def test_sd15_rank8_totals_are_pinned() -> None:
    tensors = fixture_tensors("sd15", rank=8, alpha=4)
    assert len(tensors) == 792
    assert params(tensors) == 4_718_856
    modules = modules_of(tensors)
    assert len(modules) == 264
    assert sum(m.startswith("lora_unet_") for m in modules) == 192
    assert sum(m.startswith("lora_te_") for m in modules) == 72


def test_sdxl_rank8_totals_are_pinned() -> None:
    tensors = fixture_tensors("sdxl", rank=8, alpha=4)
    assert len(tensors) == 2958
    assert params(tensors) == 28_505_050
    modules = modules_of(tensors)
    assert sum(m.startswith("lora_unet_") for m in modules) == 722
    assert sum(m.startswith("lora_te1_") for m in modules) == 72
    assert sum(m.startswith("lora_te2_") for m in modules) == 192


def test_locon_module_counts_are_pinned() -> None:
    sd15 = [t for t in fixture_targets("sd15_locon") if t.component == "unet"]
    sdxl = [t for t in fixture_targets("sdxl_locon") if t.component == "unet"]
    assert (len(sd15), len(sdxl)) == (278, 788)


def test_sd15_shapes_follow_the_architecture() -> None:
    t = fixture_tensors("sd15", rank=8, dtype="fp32")
    assert t["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (8, 320, 1, 1)
    assert t["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"].shape == (320, 8, 1, 1)
    assert t["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"].shape == (
        8,
        768,
    )
    assert t[
        "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_0_proj.lora_up.weight"
    ].shape == (10240, 8)
    assert t["lora_te_text_model_encoder_layers_11_mlp_fc2.lora_down.weight"].shape == (8, 3072)
    assert t["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"].shape == ()


def test_sd2_uses_linear_projections_and_the_1024_wide_text_encoder() -> None:
    t = fixture_tensors("sd2", rank=4, dtype="fp32")
    assert t["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (4, 320)
    assert t[
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    ].shape == (4, 1024)
    layers = {m.split("_layers_")[1].split("_")[0] for m in modules_of(t) if m.startswith("lora_te_")}
    assert layers == {str(i) for i in range(23)}
    assert t["lora_te_text_model_encoder_layers_22_mlp_fc1.lora_up.weight"].shape == (4096, 4)


def test_sdxl_uses_sgm_names_and_shapes() -> None:
    select = r"input_blocks_4_1_transformer_blocks_1_attn1_to_k|middle_block_1_transformer_blocks_9_attn2|layers_31"
    t = fixture_tensors("sdxl", rank=8, dtype="fp32", select=select)
    key = "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_k.lora_down.weight"
    assert t[key].shape == (8, 640)
    assert t["lora_unet_middle_block_1_transformer_blocks_9_attn2_to_k.lora_down.weight"].shape == (8, 2048)
    assert t["lora_te2_text_model_encoder_layers_31_mlp_fc1.lora_up.weight"].shape == (5120, 8)
    names = [target.name for target in fixture_targets("sdxl")]
    assert not any("down_blocks" in n or "text_projection" in n for n in names)
    blocks = {n.split("_1_transformer")[0] for n in names if "_transformer_blocks_" in n}
    assert blocks == {
        "lora_unet_input_blocks_4",
        "lora_unet_input_blocks_5",
        "lora_unet_input_blocks_7",
        "lora_unet_input_blocks_8",
        "lora_unet_middle_block",
        *(f"lora_unet_output_blocks_{i}" for i in range(6)),
    }


def test_locon_resnet_input_channels_match_the_reference() -> None:
    sd15 = {t.name: t for t in fixture_targets("sd15_locon")}
    ins = [sd15[f"lora_unet_up_blocks_{i}_resnets_{j}_conv1"].in_dim for i in range(4) for j in range(3)]
    assert ins == [2560, 2560, 2560, 2560, 2560, 1920, 1920, 1280, 960, 960, 640, 640]
    assert sd15["lora_unet_down_blocks_1_resnets_0_conv_shortcut"].kernel == (1, 1)
    assert sd15["lora_unet_up_blocks_0_upsamplers_0_conv"].kernel == (3, 3)
    shortcuts = [n for n in sd15 if n.endswith("conv_shortcut")]
    assert len(shortcuts) == 14
    xl = {t.name: t for t in fixture_targets("sdxl_locon")}
    ins = [xl[f"lora_unet_output_blocks_{i}_0_in_layers_2"].in_dim for i in range(9)]
    assert ins == [2560, 2560, 1920, 1920, 1280, 960, 960, 640, 640]
    extra = {
        "lora_unet_input_blocks_3_0_op",
        "lora_unet_input_blocks_6_0_op",
        "lora_unet_output_blocks_2_2_conv",
        "lora_unet_output_blocks_5_2_conv",
    }
    assert extra <= set(xl)
    skips = sorted(n for n in xl if n.endswith("skip_connection"))
    assert len(skips) == 11 and "lora_unet_input_blocks_4_0_skip_connection" in skips


def test_sgm_rule_examples() -> None:
    assert sgm_path("down_blocks.2.resnets.1.conv1", 2, {0, 1}) == "input_blocks.8.0.in_layers.2"
    assert sgm_path("down_blocks.0.downsamplers.0.conv", 2, {0, 1}) == "input_blocks.3.0.op"
    assert sgm_path("mid_block.resnets.1.time_emb_proj", 2, {0, 1}) == "middle_block.2.emb_layers.1"
    assert sgm_path("mid_block.attentions.0.proj_out", 2, {0, 1}) == "middle_block.1.proj_out"
    assert sgm_path("up_blocks.1.upsamplers.0.conv", 2, {0, 1}) == "output_blocks.5.2.conv"
    assert sgm_path("up_blocks.0.upsamplers.0.conv", 2, {1, 2, 3}) == "output_blocks.2.1.conv"
    assert sgm_path("up_blocks.2.resnets.0.conv_shortcut", 2, {0, 1}) == "output_blocks.6.0.skip_connection"
    assert sgm_path("time_embedding.linear_2", 2, set()) == "time_embed.2"


def test_flux_table_matches_the_diffusers_transformer() -> None:
    from lbw.files.fixtures.architectures import build_flux_transformer
    from lbw.files.fixtures.flux import flux_targets

    model = build_flux_transformer()
    assert (len(model.transformer_blocks), len(model.single_transformer_blocks)) == (19, 38)
    double, single = model.transformer_blocks[0], model.single_transformer_blocks[0]

    def shape(*layers):
        return (sum(layer.out_features for layer in layers), layers[0].in_features)

    a = double.attn
    expected = {
        "img_attn_qkv": shape(a.to_q, a.to_k, a.to_v),
        "img_attn_proj": shape(a.to_out[0]),
        "img_mlp_0": shape(double.ff.net[0].proj),
        "img_mlp_2": shape(double.ff.net[2]),
        "img_mod_lin": shape(double.norm1.linear),
        "txt_attn_qkv": shape(a.add_q_proj, a.add_k_proj, a.add_v_proj),
        "txt_attn_proj": shape(a.to_add_out),
        "txt_mlp_0": shape(double.ff_context.net[0].proj),
        "txt_mlp_2": shape(double.ff_context.net[2]),
        "txt_mod_lin": shape(double.norm1_context.linear),
        "linear1": shape(single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp),
        "linear2": shape(single.proj_out),
        "modulation_lin": shape(single.norm.linear),
    }
    table = {
        t.name.split("_blocks_0_")[1]: (t.out_dim, t.in_dim)
        for t in flux_targets(modulation=True)
        if "_blocks_0_" in t.name
    }
    assert table == expected
    tensors = fixture_tensors("flux", rank=4, dtype="fp32")
    assert len(modules_of(tensors)) == 19 * 8 + 38 * 2
    assert tensors["lora_unet_single_blocks_37_linear1.lora_up.weight"].shape == (21504, 4)
    assert tensors["lora_unet_double_blocks_18_txt_mlp_2.lora_down.weight"].shape == (4, 12288)


def test_flux_with_text_encoder_uses_lora_te1() -> None:
    tensors = fixture_tensors("flux", rank=2, text_encoder=True, dtype="fp32")
    assert sum(m.startswith("lora_te1_text_model_encoder_layers_") for m in modules_of(tensors)) == 72


def test_loha_shapes_with_and_without_tucker() -> None:
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    linear = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    plain = fixture_tensors("sd15_loha", rank=4, dtype="fp32", select=conv + "|" + linear)
    assert plain[f"{conv}.hada_w1_a"].shape == (320, 4)
    assert plain[f"{conv}.hada_w1_b"].shape == (4, 320 * 9)
    assert plain[f"{linear}.hada_w2_b"].shape == (4, 320)
    tucker = fixture_tensors("sd15_loha_tucker", rank=4, dtype="fp32", select=conv + "|" + linear)
    assert {k.split(".", 1)[1]: tuple(v.shape) for k, v in tucker.items() if k.startswith(conv)} == {
        "hada_t1": (4, 4, 3, 3),
        "hada_t2": (4, 4, 3, 3),
        "hada_w1_a": (4, 320),
        "hada_w1_b": (4, 320),
        "hada_w2_a": (4, 320),
        "hada_w2_b": (4, 320),
        "alpha": (),
    }
    assert f"{linear}.hada_t1" not in tucker


def test_lokr_variants() -> None:
    assert factorization(1280) == (32, 40) and factorization(320) == (16, 20) and factorization(7) == (1, 7)
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"  # [1280, 768]
    conv = "lora_unet_down_blocks_1_resnets_0_conv1"  # [640, 320, 3, 3]
    select = f"{name}|{conv}$"
    decomposed = fixture_tensors("sd15_lokr", rank=4, dtype="fp32", select=select)
    assert decomposed[f"{name}.lokr_w1"].shape == (32, 24)
    assert decomposed[f"{name}.lokr_w2_a"].shape == (40, 4)
    assert decomposed[f"{name}.lokr_w2_b"].shape == (4, 32)
    assert decomposed[f"{conv}.lokr_w2_b"].shape == (4, 20 * 9)
    full = fixture_tensors("sd15_lokr_full", rank=4, alpha=1, dtype="fp32", select=select)
    assert full[f"{conv}.lokr_w2"].shape == (32, 20, 3, 3)
    assert float(full[f"{conv}.alpha"]) == 4.0  # both factors full: alpha = rank, scale 1
    tucker = fixture_tensors("sd15_lokr_tucker", rank=4, dtype="fp32", select=select)
    assert {k.split(".", 1)[1]: tuple(v.shape) for k, v in tucker.items() if k.startswith(conv)} == {
        "lokr_w1_a": (20, 4),
        "lokr_w1_b": (4, 16),
        "lokr_t2": (4, 4, 3, 3),
        "lokr_w2_a": (4, 32),
        "lokr_w2_b": (4, 20),
        "alpha": (),
    }


def test_locon_tucker_dora_ia3_full_and_norm() -> None:
    conv = "lora_unet_up_blocks_3_resnets_2_conv2"
    t = fixture_tensors("sd15_locon_tucker", rank=4, dtype="fp32", select=conv)
    assert {k: tuple(v.shape) for k, v in t.items()} == {
        f"{conv}.lora_down.weight": (4, 320, 1, 1),
        f"{conv}.lora_mid.weight": (4, 4, 3, 3),
        f"{conv}.lora_up.weight": (320, 4, 1, 1),
        f"{conv}.alpha": (),
    }
    dora = fixture_tensors("sd15_dora", rank=4, dtype="fp32")
    assert dora["lora_te_text_model_encoder_layers_0_mlp_fc1.dora_scale"].shape == (3072, 1)
    assert dora["lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale"].shape == (320, 1, 1, 1)
    assert all(v.min() > 0 for k, v in dora.items() if k.endswith("dora_scale"))
    ia3 = fixture_tensors("sd15_ia3", dtype="fp32")
    assert ia3["lora_te_text_model_encoder_layers_0_mlp_fc2.weight"].shape == (3072,)
    assert float(ia3["lora_te_text_model_encoder_layers_0_mlp_fc2.on_input"]) == 1.0
    assert ia3["lora_te_text_model_encoder_layers_0_mlp_fc1.weight"].shape == (3072,)
    assert float(ia3["lora_te_text_model_encoder_layers_0_mlp_fc1.on_input"]) == 0.0
    assert not any("proj_in" in k for k in ia3)  # Conv2d layers are not adapted by the IA3 fixture
    full = fixture_tensors("sd15_full", dtype="fp32")
    assert full["lora_te_text_model_encoder_layers_0_self_attn_q_proj.diff"].shape == (768, 768)
    assert full["lora_te_text_model_encoder_layers_0_self_attn_q_proj.diff_b"].shape == (768,)
    to_q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert f"{to_q}.diff" in full and f"{to_q}.diff_b" not in full  # diffusers to_q has no bias
    norm = fixture_tensors("sd15_norm", rank=2, dtype="fp32")
    assert norm["lora_unet_down_blocks_0_attentions_0_norm.w_norm"].shape == (320,)
    assert norm["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_norm3.b_norm"].shape == (320,)


def test_peft_names_have_no_alpha() -> None:
    t = fixture_tensors("sd15_peft", rank=4, dtype="fp32")
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
    assert t[key].shape == (4, 320)
    assert t["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"].shape == (768, 4)
    assert not any(k.endswith("alpha") for k in t)
    xl = fixture_tensors("sdxl_peft", rank=4, dtype="fp32")
    assert "text_encoder_2.text_model.encoder.layers.31.self_attn.out_proj.lora_A.weight" in xl


def test_seed_dtype_rank_and_alpha_options() -> None:
    select = "layers_0_self_attn_q_proj|down_blocks_0_resnets_0_conv1"
    a = fixture_tensors("sd15_locon", rank=4, alpha=2, seed=3, dtype="fp32", select=select)
    b = fixture_tensors("sd15_locon", rank=4, alpha=2, seed=3, dtype="fp32", select=select)
    c = fixture_tensors("sd15_locon", rank=4, alpha=2, seed=4, dtype="fp32", select=select)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"],
        c["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"],
    )
    half = fixture_tensors("sd15_locon", rank=4, alpha=2, seed=3, dtype="bf16", select=select)
    assert {v.dtype for v in half.values()} == {torch.bfloat16}
    assert torch.equal(
        half["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"],
        a["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"].bfloat16(),
    )
    mixed = fixture_tensors(
        "sd15_locon",
        rank=4,
        alpha=2,
        conv_rank=6,
        conv_alpha=3,
        ranks={"layers_0_self_attn": 16},
        alphas={"layers_0_self_attn": 8},
        select=select,
    )
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert mixed[f"{conv}.lora_down.weight"].shape == (6, 320, 3, 3)
    assert float(mixed[f"{conv}.alpha"]) == 3.0
    assert mixed["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"].shape == (768, 16)
    assert float(mixed["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"]) == 8.0
    default = fixture_tensors("sd15", rank=4, select="layers_0_mlp_fc1")
    assert float(default["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"]) == 4.0  # alpha None = rank
    assert not any(
        k.endswith(".alpha") for k in fixture_tensors("sd15", rank=2, omit_alpha=True, select="fc1")
    )


def test_every_kind_has_nonzero_deltas() -> None:
    for kind in FIXTURE_KINDS:
        select = None if kind == "sd15_full" else (r"layers[._]0[._]|down_blocks[._]0[._]|double_blocks[._]0[._]"
                                                   r"|transformer_blocks[._]0[._]|block[._]0[._]")
        tensors = fixture_tensors(kind, rank=2, dtype="fp32", select=select)
        assert tensors, kind
        for key, value in tensors.items():
            if key.endswith(("lora_up.weight", "lora_B.weight", "hada_w1_a", "lokr_w2_a", "lokr_w2", "diff",
                             "_lora.up.weight")):
                assert float(value.abs().max()) > 0, key
                assert math.isfinite(float(value.abs().max())), key


def test_write_fixture_file_metadata_and_hashes(tmp_path) -> None:
    path = write_fixture("sd15", tmp_path / "gobuhime.safetensors", rank=4, alpha=2, seed=1)
    tensors = load_file(path)
    expected = fixture_tensors("sd15", rank=4, alpha=2, seed=1)
    assert tensors.keys() == expected.keys() and all(torch.equal(tensors[k], expected[k]) for k in expected)
    with safe_open(path, "pt") as handle:
        md = handle.metadata()
    assert md["ss_network_module"] == "networks.lora"
    assert (md["ss_network_dim"], md["ss_network_alpha"]) == ("4", "2.0")
    assert md["ss_base_model_version"] == "sd_v1" and md["ss_output_name"] == "gobuhime"
    assert md["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert json.loads(md["ss_tag_frequency"])["10_gobuhime"]["gobuhime"] == 40
    assert md["sshs_model_hash"] == addnet_hash(path)
    with pytest.raises(LbwError, match=r"already exists"):
        write_fixture("sd15", path, rank=4)


def test_fixture_metadata_for_lycoris_peft_and_flux() -> None:
    loha = fixture_metadata("sd15_loha", rank=8, alpha=4, conv_rank=4, conv_alpha=1)
    assert loha["ss_network_module"] == "lycoris.kohya"
    assert json.loads(loha["ss_network_args"]) == {
        "algo": "loha",
        "conv_dim": "4",
        "conv_alpha": "1",
        "preset": "full",
    }
    assert fixture_metadata("sd15_peft") == {"format": "pt"}
    flux = fixture_metadata("flux")
    assert (flux["ss_base_model_version"], flux["ss_network_module"]) == ("flux1", "networks.lora_flux")
    assert fixture_metadata("sd2")["ss_v2"] == "True"
    assert "ss_network_args" not in fixture_metadata("sdxl")


def test_unknown_kind_and_dtype_are_refused() -> None:
    with pytest.raises(LbwError, match=r"unknown fixture kind 'sd3'"):
        fixture_tensors("sd3")
    with pytest.raises(LbwError, match=r"unknown dtype 'fp8'"):
        fixture_tensors("sd15", dtype="fp8")


def tiny_models(sdxl: bool = False):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    te_config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=100,
        projection_dim=32,
    )
    if sdxl:
        unet = UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=64,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            norm_num_groups=8,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8,
            transformer_layers_per_block=(1, 2),
        )
        return unet, [CLIPTextModel(te_config), CLIPTextModelWithProjection(te_config)]
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return unet, [CLIPTextModel(te_config)]


def test_lora_for_tiny_models_matches_their_layers() -> None:
    unet, encoders = tiny_models()
    tensors = lora_tensors_for_models(unet, encoders, rank=2, alpha=1, conv_rank=2, preset="conv")
    layers = dict(unet.named_modules())
    up = tensors["lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight"]
    assert up.shape == (32, 2) and up.dtype == torch.float32
    down = tensors["lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"]
    assert down.shape == (2, layers["up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"].in_features)
    assert tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape == (2, 32, 3, 3)
    assert tensors["lora_te_text_model_encoder_layers_1_mlp_fc1.lora_up.weight"].shape == (64, 2)
    assert float(tensors["lora_te_text_model_encoder_layers_1_mlp_fc1.alpha"]) == 1.0
    assert "lora_unet_up_blocks_0_upsamplers_0_conv.lora_down.weight" in tensors


def test_lora_for_tiny_sdxl_type_models_uses_sgm_names() -> None:
    unet, encoders = tiny_models(sdxl=True)
    tensors = lora_tensors_for_models(unet, encoders, rank=2)
    modules = modules_of(tensors)
    assert "lora_unet_input_blocks_3_1_transformer_blocks_1_attn1_to_q" in modules
    assert "lora_unet_output_blocks_0_1_proj_in" in modules
    assert any(m.startswith("lora_te2_text_model_") for m in modules)
    peft = lora_tensors_for_models(unet, encoders, rank=2, family="peft", preset="peft_attention")
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.lora_A.weight" in peft
