"""Merge: Σ c_i·ΔW_i exactly (rank concat) for two and three LoRAs of different ranks and alphas, modules held
by one input carried over, exact sums of full diffs, refusals, SVD with the reported error, metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lbw.adapters import delta
from lbw.errors import AdapterError
from lbw.files.fixtures import write_fixture
from lbw.files.hashes import stored_and_computed
from lbw.files.lora_file import LoraFile
from lbw.services.merge import MergeOptions, merge
from lbw.services.sources import Defaults, open_source, split_specs

SHARED = (r"down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_[qk]|mid_block_attentions_0_proj_in"
          r"|encoder_layers_0_self_attn_q")
VECTOR = "Mix:0.75,0.5,-0.5,1,1,1.75,1,0,1,1,1,1,1,1,1,1,2"  # BASE .75, IN01 .5, IN02 -.5, M00 0, OUT11 2


def dense(path: Path, name: str) -> torch.Tensor | None:
    with LoraFile.open(path) as lora:
        try:
            module = lora.module(name)
        except Exception:
            return None
        roles = {r: t.to(torch.float64) for r, t in lora.module_tensors(module).items()}
        return delta(module.kind, roles).reshape(-1)


def oracle(sources: list, name: str) -> torch.Tensor | None:
    total = None
    for source in sources:
        try:
            module = source.lora.module(name)
        except Exception:
            continue
        term = source.plan.factor(module) * dense(source.spec.path, name)
        total = term if total is None else total + term
    return total


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("merge")
    return [
        write_fixture("sd15", folder / "a.safetensors", rank=2, alpha=1, dtype="fp32", seed=1,
                      select=SHARED + "|down_blocks_0_attentions_1_proj_in"),
        write_fixture("sd15", folder / "b.safetensors", rank=4, alpha=8, dtype="fp32", seed=2,
                      select=SHARED + "|up_blocks_3_attentions_2_proj_out"),
        write_fixture("sd15_locon_tucker", folder / "c.safetensors", rank=3, alpha=1.5, dtype="fp32", seed=3,
                      select=SHARED + "|down_blocks_0_resnets_0_conv1"),
    ]


def assert_exact_sum(sources: list, out: Path) -> int:
    """Every module of ``out`` equals Σ c_i·ΔW_i of the sources (rel. 1e-6); zero sums are absent. Returns the count."""
    checked = 0
    for name in sorted({m.name for s in sources for m in s.lora.modules}):
        expected, actual = oracle(sources, name), dense(out, name)
        if expected is None or float(expected.norm()) == 0:
            assert actual is None, name
            continue
        assert float((actual - expected).norm() / expected.norm()) < 1e-6, name
        checked += 1
    return checked


def open_all(args: list[str]) -> list:
    return [open_source(spec, Defaults()) for spec in split_specs(args)]


@pytest.mark.parametrize("count", [2, 3])
def test_merge_is_exact_sum(inputs: list[Path], tmp_path: Path, count: int) -> None:
    args = [f"{inputs[0]}:0.8:{VECTOR}", f"{inputs[1]}:-0.5", f"{inputs[2]}:1.25:OUTALL"][:count]
    sources = open_all(args)
    out = tmp_path / "merged.safetensors"
    report = merge(sources, out)
    assert assert_exact_sum(sources, out) >= 4
    assert report.joined >= 3 and report.carried >= 1
    with LoraFile.open(out) as merged:
        joined = merged.module("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q")
        assert joined.rank == 2 + 4  # c.safetensors is at IN01 = 0 under OUTALL: not joined
        assert joined.alpha == joined.rank  # scale 1
        md = dict(merged.metadata)
    hashes = stored_and_computed(out)
    assert hashes["stored"] == hashes["computed"]
    sources_md = json.loads(md["lbw_merge_sources"])
    assert [s["file"] for s in sources_md] == [p.name for p in inputs[:count]]
    assert sources_md[0]["weights"] == VECTOR and sources_md[1]["unet"] == "-0.5"
    assert sources_md[0]["sshs_model_hash"] == stored_and_computed(inputs[0])["computed"]
    assert md["modelspec.merged_from"].split(", ")[0] == f"a({sources_md[0]['sshs_model_hash'][:12]})"
    assert (md["ss_network_dim"], md["ss_output_name"]) == ("Dynamic", "merged")


def test_tucker_and_plain_join(inputs: list[Path], tmp_path: Path) -> None:
    sources = open_all([f"{inputs[2]}:0.5", f"{inputs[2]}:-2:OUTALL"])
    out = tmp_path / "tucker.safetensors"
    merge(sources, out)
    name = "lora_unet_down_blocks_0_resnets_0_conv1"  # Tucker conv 3x3, present in both at IN01 (second: 0)
    expected = oracle(sources, name)
    assert float((dense(out, name) - expected).norm() / expected.norm()) < 1e-6


def test_full_diffs_sum_and_loha_is_refused_without_rank(tmp_path: Path) -> None:
    full = write_fixture("sd15_full", tmp_path / "f.safetensors", rank=2, dtype="fp32")
    sources = open_all([f"{full}:0.5", f"{full}:0.25"])
    report = merge(sources, tmp_path / "ff.safetensors")
    assert report.summed == report.modules_out > 0
    with LoraFile.open(full) as lora:
        name = lora.modules[0].name
    torch.testing.assert_close(dense(tmp_path / "ff.safetensors", name), 0.75 * dense(full, name))
    loha = write_fixture("sd15_loha", tmp_path / "h.safetensors", rank=2, dtype="fp32",
                         select="down_blocks_0_resnets_0_conv1|encoder_layers_0_self_attn_q")
    with pytest.raises(AdapterError, match=r"cannot merge loha modules exactly.*--rank N"):
        merge(open_all([str(loha), f"{loha}:0.5"]), tmp_path / "hh.safetensors")
    assert not (tmp_path / "hh.safetensors").exists()


def test_rank_compression_reports_exact_error(inputs: list[Path], tmp_path: Path) -> None:
    sources = open_all([f"{inputs[0]}:0.8", f"{inputs[1]}:0.6"])
    out = tmp_path / "r.safetensors"
    report = merge(sources, out, options=MergeOptions(rank=3))
    assert report.compressed > 0 and 0 < report.overall_error < 1
    errors_sq, norms_sq = 0.0, 0.0
    for name in sorted({m.name for s in sources for m in s.lora.modules}):
        expected, actual = oracle(sources, name), dense(out, name)
        errors_sq += float((actual - expected).norm()) ** 2
        norms_sq += float(expected.norm()) ** 2
    assert report.overall_error == pytest.approx((errors_sq / norms_sq) ** 0.5, rel=1e-4)
    with LoraFile.open(out) as merged:
        assert max(m.rank for m in merged.modules) == 3
        assert merged.metadata["lbw_merge_rank"] == "3"


def test_loha_with_rank_compresses_dense_sum(tmp_path: Path) -> None:
    loha = write_fixture("sd15_loha", tmp_path / "h.safetensors", rank=2, dtype="fp32",
                         select="down_blocks_0_resnets_0_conv1|encoder_layers_0_self_attn_q")
    sources = open_all([str(loha), f"{loha}:0.5"])
    report = merge(sources, tmp_path / "hh.safetensors", options=MergeOptions(rank=64, conv_rank=64))
    with LoraFile.open(tmp_path / "hh.safetensors") as merged:
        conv = merged.module("lora_unet_down_blocks_0_resnets_0_conv1")
        assert conv.kind.value == "lora" and conv.shapes["lora_down"] == (64, 320, 3, 3)
    expected = oracle(sources, "lora_unet_down_blocks_0_resnets_0_conv1")
    actual = dense(tmp_path / "hh.safetensors", "lora_unet_down_blocks_0_resnets_0_conv1")
    assert report.overall_error < 1e-5  # LoHa rank 2 x 2: the product has rank <= 4, well within 64
    assert float((actual - expected).norm() / expected.norm()) < 1e-5


# SDXL (SGM names, both text encoders) and Flux (double/single blocks): merges of two and three inputs of
# different ranks and alphas, each with its own strength and block weights, checked module by module.
ARCH_CASES = {
    "sdxl": (
        r"input_blocks_4_1_transformer_blocks_0_attn1_to_[qk]|middle_block_1_proj_in|output_blocks_0_1_proj_out"
        r"|te1_text_model_encoder_layers_0_self_attn_q|te2_text_model_encoder_layers_0_mlp_fc1",
        "XLMix:0.5,1,-0.5,1,1,1.5,0,1,1,1,1,0.25",  # BASE .5, IN04 1, IN05 -.5, M00 1.5, OUT00 0, OUT05 .25
    ),
    "flux": (
        r"double_blocks_0_img_attn_qkv|double_blocks_7_txt_mlp_0|single_blocks_0_linear2|single_blocks_20_linear1",
        "FluxMix:1,1,1," + ",".join(["-0.5"] + ["1"] * 6 + ["1.5"] + ["1"] * 11) + ","
        + ",".join(["0.25"] + ["1"] * 19 + ["0"] + ["1"] * 17) + ",1",  # D00 -.5, D07 1.5, S00 .25, S20 0
    ),
}


@pytest.mark.parametrize("arch", sorted(ARCH_CASES))
@pytest.mark.parametrize("count", [2, 3])
def test_merge_is_exact_for_sdxl_and_flux(arch: str, count: int, tmp_path: Path) -> None:
    select, vector = ARCH_CASES[arch]
    files = [
        write_fixture(arch, tmp_path / f"{arch}{i}.safetensors", rank=rank, alpha=alpha, dtype="fp32",
                      seed=10 + i, select=select)
        for i, (rank, alpha) in enumerate([(2, 1), (4, 8), (3, 1.5)][:count])
    ]
    args = [f"{files[0]}:0.8:{vector}", f"{files[1]}:-0.5", *([f"{files[2]}:1.25:{vector}"] if count == 3 else [])]
    sources = open_all(args)
    out = tmp_path / "merged.safetensors"
    merge(sources, out)
    assert assert_exact_sum(sources, out) >= 4
    with LoraFile.open(out) as merged:
        assert merged.architecture == arch
        joined = [m for m in merged.modules if m.rank == sum(r for r, _ in [(2, 1), (4, 8), (3, 1.5)][:count])]
        assert joined and all(m.alpha == m.rank for m in joined)  # joined modules: scales folded, alpha = rank
