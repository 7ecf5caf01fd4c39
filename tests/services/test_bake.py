"""Bake: ΔW_out = factor·ΔW_in module by module against the dense oracle, for every adapter kind and SD1.5,
SDXL and Flux; removal of zero blocks, balanced split, DoRA dense, dtypes, metadata and hashes, refusals."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lbw.adapters import delta, dora_to_full
from lbw.domain.layouts import FLUX61, SD26, XL20
from lbw.domain.weights import BlockWeights, parse_weights
from lbw.errors import AdapterError, OutputError, WeightsError
from lbw.files.fixtures import write_fixture
from lbw.files.hashes import stored_and_computed
from lbw.files.lora_file import LoraFile
from lbw.services.bake import BakeOptions, bake

# A mixed cycle: 0, a fraction, a negative, above 1, 1.
CYCLE = (0.0, 0.5, -0.5, 1.75, 1.0, 2.5)
SD_SELECT: dict[str, str | None] = {
    "attention": r"down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_[qk]|down_blocks_0_attentions_1_proj_in"
                 r"|mid_block_attentions_0_proj_out|up_blocks_1_attentions_0_transformer_blocks_0_ff_net_2"
                 r"|up_blocks_3_attentions_2_proj_out|encoder_layers_0_self_attn_q",
    "conv": r"conv_in|conv_out|time_embedding_linear_1|down_blocks_0_resnets_0_conv1|down_blocks_0_downsamplers"
            r"|down_blocks_1_attentions_0_proj_in|mid_block_resnets_1_conv2|up_blocks_0_resnets_0_conv_shortcut"
            r"|down_blocks_0_resnets_1_conv2|up_blocks_0_resnets_1_conv1"
            r"|up_blocks_1_upsamplers|up_blocks_3_resnets_2_time_emb_proj|encoder_layers_1_mlp_fc1",
    "peft": r"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_[qk]|down_blocks.0.attentions.1.transformer"
            r"_blocks.0.attn2.to_v|mid_block.attentions.0.transformer_blocks.0.attn1.to_out|layers.0.self_attn.q",
    "full": None,
}
KIND_SELECT = {
    "sd15": "attention", "sd15_peft": "peft", "sd15_full": "full", "sd15_ia3": "attention", "sd15_norm": "attention",
    "sd15_locon": "conv", "sd15_locon_tucker": "conv", "sd15_loha": "conv", "sd15_loha_tucker": "conv",
    "sd15_lokr": "conv", "sd15_lokr_full": "conv", "sd15_lokr_tucker": "conv",
}


def mixed(layout, *, base: float = 0.75) -> BlockWeights:
    """A vector over ``layout`` cycling through CYCLE, BASE (or CLIP) at ``base``."""
    values = [base] + [CYCLE[i % len(CYCLE)] for i in range(len(layout) - 1)]
    return BlockWeights(layout, tuple(values), "Mixed")


def dense(lora: LoraFile, name: str, base: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """ΔW (with bias delta appended) of a module in float64: the oracle."""
    module = lora.module(name)
    roles = {r: t.to(torch.float64) for r, t in lora.module_tensors(module).items()}
    weight = None if base is None else base.get(name)
    change = delta(module.kind, roles, base_weight=weight).reshape(-1)
    if module.kind.value in ("full", "norm"):
        bias = roles.get("diff_b", roles.get("b_norm"))
        if bias is not None:
            change = torch.cat([change, bias.reshape(-1)])
    return change


def expected_factor(module, weights: BlockWeights, te: float, unet: float) -> float:
    values = dict(weights.items())
    is_te = module.block in ("BASE", "CLIP", "T5") or module.name.startswith(("lora_te", "text_encoder"))
    ratio = 1.0 if module.block is None else values.get(module.block, 0.0)
    return ratio * (te if is_te else unet)


def ia3_bases(lora: LoraFile) -> dict[str, torch.Tensor]:
    """Random base weights W0 for IA3 modules (ΔW = W0 ⊙ w)."""
    gen = torch.Generator().manual_seed(7)
    bases = {}
    for module in lora.modules:
        if module.kind.value == "ia3":
            w = lora.module_tensors(module)["weight"]
            on_input = bool(lora.module_tensors(module).get("on_input", torch.tensor(0.0)).item())
            shape = (5, w.numel()) if on_input else (w.numel(), 3)
            bases[module.name] = torch.randn(*shape, generator=gen, dtype=torch.float64)
    return bases


def check_bake(src: Path, out: Path, weights: BlockWeights, te: float, unet: float, tol: float) -> int:
    """Assert ΔW_out = factor·ΔW_in for every module (removed iff factor 0); return the number checked."""
    with LoraFile.open(src) as before, LoraFile.open(out) as after:
        bases = ia3_bases(before)
        kept = {m.name for m in after.modules}
        checked = 0
        for module in before.modules:
            factor = expected_factor(module, weights, te, unet)
            if factor == 0:
                assert module.name not in kept, module.name
                continue
            expected = factor * dense(before, module.name, bases)
            actual = dense(after, module.name, bases)
            error = float((actual - expected).norm() / expected.norm())
            assert error < tol, (module.name, factor, error)
            checked += 1
    return checked


@pytest.mark.parametrize("kind", sorted(KIND_SELECT))
def test_bake_every_adapter_kind_matches_dense_oracle(tmp_path: Path, kind: str) -> None:
    src = write_fixture(kind, tmp_path / "in.safetensors", rank=3, alpha=2, dtype="fp32", seed=1,
                        select=SD_SELECT[KIND_SELECT[kind]])
    weights = mixed(SD26)
    bake(src, tmp_path / "out.safetensors", weights, te=0.5, unet=1.25)
    assert check_bake(src, tmp_path / "out.safetensors", weights, 0.5, 1.25, 1e-6) >= 4


@pytest.mark.parametrize(("kind", "layout", "select"), [
    ("sdxl", XL20, r"input_blocks_4_1_transformer_blocks_0_attn1_to_[qk]|input_blocks_7_1_proj_in"
                   r"|middle_block_1_proj_out|output_blocks_0_1_proj_in|output_blocks_5_1_transformer_blocks_1_"
                   r"attn2_to_v|input_blocks_8_1_proj_out|output_blocks_2_1_proj_in|output_blocks_4_1_transformer_blocks_0_"
                   r"attn2_to_v|te1_text_model_encoder_layers_0_self_attn_q|te2_text_model_encoder_layers_31_mlp_fc2"),
    ("flux", FLUX61, r"double_blocks_0_img_attn_proj|double_blocks_3_txt_attn_proj|double_blocks_4_img_attn_proj"
                     r"|single_blocks_0_linear2"),
])
def test_bake_sdxl_and_flux(tmp_path: Path, kind: str, layout, select: str) -> None:
    src = write_fixture(kind, tmp_path / "in.safetensors", rank=2, alpha=1, dtype="fp32", seed=2, select=select)
    weights = mixed(layout)
    bake(src, tmp_path / "out.safetensors", weights, te=1.0, unet=0.8)
    assert check_bake(src, tmp_path / "out.safetensors", weights, 1.0, 0.8, 1e-6) >= 3


def test_bake_fp16_keeps_dtype_within_fp16_tolerance(tmp_path: Path) -> None:
    src = write_fixture("sd15", tmp_path / "in.safetensors", rank=4, alpha=2, dtype="fp16",
                        select=SD_SELECT["attention"])
    weights = mixed(SD26)
    bake(src, tmp_path / "out.safetensors", weights)
    with safe_open(str(tmp_path / "out.safetensors"), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()}  # noqa: SIM118 == {torch.float16}
    check_bake(src, tmp_path / "out.safetensors", weights, 1.0, 1.0, 2e-3)


def test_bake_dtype_option_casts_once(tmp_path: Path) -> None:
    src = write_fixture("sd15", tmp_path / "in.safetensors", rank=4, dtype="fp32", select=SD_SELECT["attention"])
    bake(src, tmp_path / "out.safetensors", mixed(SD26), options=BakeOptions(dtype="bf16"))
    with LoraFile.open(tmp_path / "out.safetensors") as out:
        assert out.dtypes == {"BF16": out.tensor_count}
    check_bake(src, tmp_path / "out.safetensors", mixed(SD26), 1.0, 1.0, 1.6e-2)


def test_unmapped_modules_keep_ratio_one_times_unet(tmp_path: Path) -> None:
    src = write_fixture("sd15_locon_tucker", tmp_path / "in.safetensors", rank=2, dtype="fp32",
                        select="conv_out|time_embedding_linear_1|conv_in")
    weights = BlockWeights.filled(SD26, 0.0)  # every block 0: only unmapped modules survive
    report = bake(src, tmp_path / "out.safetensors", weights, te=2.0, unet=0.3)
    assert report.removed == ("lora_unet_conv_in",)
    with LoraFile.open(src) as before, LoraFile.open(tmp_path / "out.safetensors") as after:
        for name in ("lora_unet_conv_out", "lora_unet_time_embedding_linear_1"):
            torch.testing.assert_close(dense(after, name), 0.3 * dense(before, name), rtol=1e-6, atol=1e-9)


def test_keep_zero_keeps_zeroed_modules(tmp_path: Path) -> None:
    src = write_fixture("sd15", tmp_path / "in.safetensors", rank=2, dtype="fp32", select=SD_SELECT["attention"])
    weights = mixed(SD26)
    report = bake(src, tmp_path / "out.safetensors", weights, options=BakeOptions(keep_zero=True))
    assert report.removed == () and report.modules_out == report.modules_in
    with LoraFile.open(tmp_path / "out.safetensors") as after:
        zero = [m for m in after.modules if m.block == "M00"]
        assert zero and all(float(dense(after, m.name).abs().max()) == 0.0 for m in zero)


def test_balanced_splits_magnitude_and_keeps_sign_on_up(tmp_path: Path) -> None:
    src = write_fixture("sd15", tmp_path / "in.safetensors", rank=2, dtype="fp32",
                        select="down_blocks_0_attentions_1_proj_in")
    weights = mixed(SD26)
    assert dict(weights.items())["IN02"] == -0.5
    bake(src, tmp_path / "out.safetensors", weights, options=BakeOptions(balanced=True))
    name = "lora_unet_down_blocks_0_attentions_1_proj_in"
    with LoraFile.open(src) as before, LoraFile.open(tmp_path / "out.safetensors") as after:
        old, new = before.module_tensors(before.module(name)), after.module_tensors(after.module(name))
        root = math.sqrt(0.5)
        torch.testing.assert_close(new["lora_up"], -root * old["lora_up"])
        torch.testing.assert_close(new["lora_down"], root * old["lora_down"])
        assert float(new["alpha"]) == float(old["alpha"])
    check_bake(src, tmp_path / "out.safetensors", weights, 1.0, 1.0, 1e-6)


def test_dora_refused_without_dense_then_exact_with_base_model(tmp_path: Path) -> None:
    src = write_fixture("sd15_dora", tmp_path / "in.safetensors", rank=2, dtype="fp32",
                        select="down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q|mid_block_attentions_0_"
                               "transformer_blocks_0_attn2_to_out")
    weights = mixed(SD26)
    with pytest.raises(AdapterError, match="not linear"):
        bake(src, tmp_path / "out.safetensors", weights)
    assert not (tmp_path / "out.safetensors").exists()
    # A base "checkpoint" with CompVis names (SD1 single-file layout).
    gen = torch.Generator().manual_seed(3)
    prefix = "model.diffusion_model."
    base = {
        prefix + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": torch.randn(320, 320, generator=gen),
        prefix + "middle_block.1.transformer_blocks.0.attn2.to_out.0.weight": torch.randn(1280, 1280, generator=gen),
    }
    save_file(base, str(tmp_path / "base.safetensors"))
    with pytest.raises(AdapterError, match="--model"):
        bake(src, tmp_path / "out.safetensors", weights, options=BakeOptions(dora="dense"))
    report = bake(src, tmp_path / "out.safetensors", weights, unet=0.7,
                  options=BakeOptions(dora="dense", model=tmp_path / "base.safetensors"))
    assert len(report.dora_dense) == 2  # M00 is at ratio 0, but DoRA at ρ = 0 is not zero: kept, exact
    names = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0":
            "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_out.0.weight",
    }
    values = dict(weights.items())
    with LoraFile.open(src) as before, LoraFile.open(tmp_path / "out.safetensors") as after:
        assert {m.kind.value for m in after.modules} == {"full"}
        for module in before.modules:
            ratio = values[module.block]
            oracle = dora_to_full(before.module_tensors(module), base[names[module.name]], ratio, strength=0.7)
            torch.testing.assert_close(after.module_tensors(after.module(module.name))["diff"], oracle["diff"])


def test_metadata_and_hashes_after_the_cast(tmp_path: Path) -> None:
    src = write_fixture("sd15", tmp_path / "face.safetensors", rank=4, alpha=2, dtype="fp32",
                        select=SD_SELECT["attention"], metadata={"lbw_block_weights": "X:1,1,1,1,1,1,1,1,1,1,1,1"})
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    weights = parse_weights("Face:1,0,0.5,-0.5,1.75,1,1,1,1,1,1,1,1,1,1,1,2")
    report = bake(src, tmp_path / "face-baked.safetensors", weights, te=0.5, options=BakeOptions(dtype="fp16"))
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before  # input bytes unchanged
    hashes = stored_and_computed(tmp_path / "face-baked.safetensors")
    assert hashes["stored"] == hashes["computed"] == report.written.model_hash
    assert hashes["legacy_stored"] == hashes["legacy_computed"]
    with LoraFile.open(tmp_path / "face-baked.safetensors") as out:
        md = dict(out.metadata)
    source_hash = stored_and_computed(src)["computed"]
    assert md["ss_output_name"] == "face-baked"
    assert md["lbw_baked_weights"] == "Face:1,0,0.5,-0.5,1.75,1,1,1,1,1,1,1,1,1,1,1,2"
    assert md["lbw_baked_layout"] == "SD17"
    assert (md["lbw_baked_te"], md["lbw_baked_unet"]) == ("0.5", "1")
    assert md["lbw_baked_from"] == "face.safetensors"
    assert md["lbw_baked_from_sshs_model_hash"] == source_hash
    assert md["modelspec.merged_from"] == f"face({source_hash[:12]})"
    assert (md["ss_network_dim"], md["ss_network_alpha"]) == ("4", "2")
    assert "lbw_block_weights" not in md  # weights for inference are applied now
    assert md["ss_network_module"] == "networks.lora"


def test_dynamic_dim_when_ranks_differ(tmp_path: Path) -> None:
    src = write_fixture("sd15", tmp_path / "in.safetensors", rank=4, dtype="fp32", select=SD_SELECT["attention"],
                        ranks={"proj_out": 8}, alphas={"proj_out": 2})
    report = bake(src, tmp_path / "out.safetensors", BlockWeights.filled(SD26, 1.0))
    assert (report.metadata["ss_network_dim"], report.metadata["ss_network_alpha"]) == ("Dynamic", "Dynamic")


def test_refusals(tmp_path: Path) -> None:
    src = write_fixture("sd15", tmp_path / "in.safetensors", rank=2, dtype="fp32", select=SD_SELECT["attention"])
    ones = BlockWeights.filled(SD26, 1.0)
    with pytest.raises(OutputError, match="never overwrites its input"):
        bake(src, src, ones, options=BakeOptions(force=True))
    (tmp_path / "link.safetensors").symlink_to(src)
    with pytest.raises(OutputError, match="never overwrites its input"):
        bake(src, tmp_path / "link.safetensors", ones, options=BakeOptions(force=True))
    (tmp_path / "exists.safetensors").write_bytes(b"keep")
    with pytest.raises(OutputError, match="already exists"):
        bake(src, tmp_path / "exists.safetensors", ones)
    assert (tmp_path / "exists.safetensors").read_bytes() == b"keep"
    with pytest.raises(WeightsError, match="61 values are for Flux only"):
        bake(src, tmp_path / "o.safetensors", BlockWeights.filled(FLUX61, 1.0))
    with pytest.raises(OutputError, match="nothing to write"):
        bake(src, tmp_path / "o.safetensors", BlockWeights.filled(SD26, 0.0))
    with pytest.raises(AdapterError, match="overflows fp16"):
        bake(src, tmp_path / "o.safetensors", BlockWeights.filled(SD26, 1e9), options=BakeOptions(dtype="fp16"))
    assert not (tmp_path / "o.safetensors").exists()
