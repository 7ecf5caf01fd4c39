"""Verify: passes an exact bake/merge, fails a SuperMerger-style squared bake, reports missing/extra modules,
tolerance by dtype, JSON."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from safetensors.torch import save_file

from lbw.domain.layouts import SD26
from lbw.domain.weights import BlockWeights
from lbw.files.fixtures import write_fixture
from lbw.files.lora_file import LoraFile
from lbw.services.bake import BakeOptions, bake
from lbw.services.sources import Defaults, open_source, split_specs
from lbw.services.verify import verify

SELECT = (r"down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q|down_blocks_0_attentions_1_proj_in"
          r"|mid_block_attentions_0_proj_out|up_blocks_3_attentions_2_proj_out|encoder_layers_0_self_attn_q")
VECTOR = "Face:1,0.5,-0.5,1,1,1.75,1,0,1,1,1,1,1,1,1,1,2"


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture("sd15", tmp_path_factory.mktemp("v") / "in.safetensors", rank=4, alpha=2, dtype="fp16",
                         seed=5, select=SELECT)


def sources_for(src: Path, weights: str, **kw: float) -> list:
    return [open_source(s, Defaults(weights=weights, **kw)) for s in split_specs([str(src)])]


def test_exact_bake_passes_with_fp16_tolerance(src: Path, tmp_path: Path) -> None:
    from lbw.services.resolve import load_weights

    bake(src, tmp_path / "out.safetensors", load_weights(VECTOR).weights, te=0.5)
    report = verify(tmp_path / "out.safetensors", sources_for(src, VECTOR, te=0.5))
    assert report.passed and report.tolerance == 2e-3 and report.max_error < 2e-3
    assert [b.block for b in report.blocks] == ["BASE", "IN01", "IN02", "M00", "OUT11"]
    m00 = next(b for b in report.blocks if b.block == "M00")
    assert m00.max_error == 0.0  # removed at weight 0, as expected
    wrong = verify(tmp_path / "out.safetensors", sources_for(src, VECTOR, te=1.0))
    assert not wrong.passed and wrong.blocks[0].block == "BASE"
    assert wrong.blocks[0].max_error == pytest.approx(0.5, rel=1e-3)


def test_supermerger_style_squared_bake_fails(src: Path, tmp_path: Path) -> None:
    """SuperMerger's default "Merge LoRAs" multiplies up AND down by ρ: ρ² per block, sign lost."""
    weights = {"BASE": 1.0, "IN01": 0.5, "IN02": -0.5, "M00": 1.0, "OUT11": 2.0}
    tensors = {}
    with LoraFile.open(src) as lora:
        for module in lora.modules:
            ratio = weights[module.block]
            for role, key in module.keys.items():
                tensor = lora.module_tensors(module)[role]
                tensors[key] = (tensor.float() * ratio).half() if role in ("lora_up", "lora_down") else tensor
    save_file(tensors, str(tmp_path / "squared.safetensors"))
    vector = "1,0.5,-0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,2"
    report = verify(tmp_path / "squared.safetensors", sources_for(src, vector))
    errors = {b.block: b.max_error for b in report.blocks}
    assert not report.passed
    assert errors["BASE"] < 2e-3 and errors["M00"] < 2e-3
    assert errors["IN01"] == pytest.approx(0.5, rel=1e-2)  # 0.25 instead of 0.5
    assert errors["IN02"] == pytest.approx(1.5, rel=1e-2)  # +0.25 instead of -0.5
    assert errors["OUT11"] == pytest.approx(1.0, rel=1e-2)  # 4 instead of 2


def test_missing_and_extra_modules(src: Path, tmp_path: Path) -> None:
    other = write_fixture("sd15", tmp_path / "other.safetensors", rank=2, dtype="fp32",
                          select="up_blocks_2_attentions_0_proj_in")
    report = verify(other, sources_for(src, "ALL"))
    statuses = {m.name: m.status for m in report.modules}
    assert statuses["lora_unet_up_blocks_2_attentions_0_proj_in"] == "extra"
    assert statuses["lora_unet_mid_block_attentions_0_proj_out"] == "missing"
    assert math.isinf(report.max_error)
    assert report.to_json()["max_error"] == "inf" and report.to_json()["passed"] is False


def test_tolerance_override_and_dtype_default(src: Path, tmp_path: Path) -> None:
    bake(src, tmp_path / "o32.safetensors", BlockWeights.filled(SD26, 0.3), options=BakeOptions(dtype="fp32"))
    report = verify(tmp_path / "o32.safetensors", sources_for(src, "0.3," * 25 + "0.3"))
    assert report.tolerance == 1e-5 and report.passed
    strict = verify(tmp_path / "o32.safetensors", sources_for(src, "0.3," * 25 + "0.3001"), tolerance=1e-6)
    assert not strict.passed and strict.to_json()["failures"][0]["block"] == "OUT11"


@pytest.mark.parametrize("kind", ["sd15_locon_tucker", "sd15_loha_tucker", "sd15_lokr", "sd15_ia3", "sd15_full"])
def test_verify_passes_bakes_of_every_kind_and_fails_a_wrong_vector(kind: str, tmp_path: Path) -> None:
    select = None if kind == "sd15_full" else (
        r"down_blocks_0_resnets_0_conv1|down_blocks_0_attentions_1_proj_in|mid_block_attentions_0_transformer_"
        r"blocks_0_attn1_to_q|up_blocks_1_attentions_0_transformer_blocks_0_ff_net_2|encoder_layers_0_self_attn_q")
    src = write_fixture(kind, tmp_path / "in.safetensors", rank=2, dtype="fp32", seed=9, select=select)
    vector = "0.5,-0.5,1.75,0,2,1,1,1,1,1,1,1,1,1.5,1,1,1,1,0.25,1,1,1,1,1,1,1"  # SD26
    from lbw.services.resolve import load_weights

    bake(src, tmp_path / "out.safetensors", load_weights(vector).weights, te=0.5)
    assert verify(tmp_path / "out.safetensors", sources_for(src, vector, te=0.5)).passed
    assert not verify(tmp_path / "out.safetensors", sources_for(src, vector, te=0.6)).passed
