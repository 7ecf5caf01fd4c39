"""inspect_file / compare_reports: block totals, fast norms against dense ΔW, hashes, metadata groups."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lbw.adapters import full, loha, lokr, lora, norm
from lbw.adapters.kinds import AdapterKind
from lbw.errors import LbwError
from lbw.files.fixtures import write_fixture
from lbw.files.lora_file import LoraFile
from lbw.services.inspect import compare_reports, group_metadata, inspect_file, module_norms

DENSE = {AdapterKind.LORA: lora.dense_frobenius_norm, AdapterKind.LOHA: loha.dense_frobenius_norm,
         AdapterKind.LOKR: lokr.dense_frobenius_norm, AdapterKind.FULL: full.frobenius_norm,
         AdapterKind.NORM: norm.frobenius_norm}


def dense_norm(lora_file: LoraFile, module: object) -> float:
    """Oracle: ΔW built densely in float64 from the stored tensors."""
    tensors = {role: t.double() for role, t in lora_file.module_tensors(module).items()}  # type: ignore[arg-type]
    if module.kind is AdapterKind.DORA:  # type: ignore[attr-defined]
        tensors.pop("dora_scale")
        return lora.dense_frobenius_norm(tensors)
    return DENSE[module.kind](tensors)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inspect")


@pytest.fixture(scope="module")
def sd15(folder: Path) -> Path:
    return write_fixture("sd15", folder / "sd15.safetensors", rank=4, alpha=2, seed=3,
                         ranks={"mlp_fc1": 8}, alphas={"mlp_fc1": 1})


@pytest.mark.parametrize("kind", ["sd15_locon", "sd15_locon_tucker", "sd15_loha", "sd15_loha_tucker", "sd15_lokr",
                                  "sd15_lokr_full", "sd15_lokr_tucker", "sd15_dora", "sd15_full", "sd15_norm",
                                  "sd15_peft", "flux"])
def test_fast_norms_equal_dense_norms(folder: Path, kind: str) -> None:
    select = {"sd15_full": None, "flux": r"double_blocks_0_(img|txt)_attn_proj"}.get(
        kind, r"(up_blocks_3|conv_in|conv_out|time_emb|encoder_layers_0_)")
    path = write_fixture(kind, folder / f"{kind}.safetensors", rank=4, alpha=2, seed=5, select=select,
                         dtype="fp32")
    lora_file = LoraFile.open(path)
    measured = module_norms(lora_file)
    assert set(measured) == {m.name for m in lora_file.modules}
    for module in lora_file.modules:
        expected = dense_norm(lora_file, module)
        assert expected > 0
        assert measured[module.name] == pytest.approx(expected, rel=2e-5), module.name


def test_blocks_sum_their_modules(sd15: Path) -> None:
    report = inspect_file(sd15, hashes=False)
    lora_file = LoraFile.open(sd15)
    measured = module_norms(lora_file)
    assert list(report.blocks) == list(lora_file.layout.ids)
    for block, stats in report.blocks.items():
        members = [m for m in lora_file.modules if m.block == block]
        assert stats.modules == len(members)
        assert stats.params == sum(m.params for m in members)
        assert stats.norm == pytest.approx(math.fsum(measured[m.name] for m in members), rel=1e-12)
    assert sum(stats.share for stats in report.blocks.values()) == pytest.approx(100.0)
    base = report.blocks["BASE"]
    assert (sorted(base.ranks), sorted(base.alphas)) == ([4, 8], [1.0, 2.0])
    assert (sorted(report.blocks["IN01"].ranks), sorted(report.blocks["IN01"].alphas)) == ([4], [2.0])
    # 60 TE modules at rank 4 + 12 fc1 at rank 8, one alpha each; per block: r * sum(in + out) + modules.
    assert report.blocks["IN01"].params == 4 * 11_776 + 12
    assert report.blocks["BASE"].params == 4 * (165_888 - 12 * (768 + 3072)) + 8 * 12 * (768 + 3072) + 72


def test_json_has_the_documented_keys(sd15: Path) -> None:
    data = inspect_file(sd15).to_json()
    for key in ("architecture", "naming", "adapter_types", "layout", "modules", "tensors", "blocks",
                "unmapped_modules", "metadata", "hashes"):
        assert key in data
    assert (data["architecture"], data["naming"], data["adapter_types"], data["layout"]) == (
        "sd1", "kohya", ["lora"], "SD17")
    assert (data["modules"], data["tensors"]) == (264, 792)
    assert set(data["blocks"]["IN01"]) >= {"modules", "params", "norm"}
    assert data["unmapped_modules"] == []
    assert data["metadata"]["training"]["ss_network_module"] == "networks.lora"
    hashes = data["hashes"]
    assert set(hashes) >= {"stored", "computed", "legacy_stored", "legacy_computed"}
    assert hashes["stored"] == hashes["computed"] and hashes["match"] is True
    assert len(hashes["computed"]) == 64


def test_stale_stored_hash_is_flagged(folder: Path) -> None:
    path = write_fixture("sd15", folder / "stale.safetensors", rank=2, select="mid_block")
    from lbw.files.writer import rewrite_metadata

    stale = folder / "stale2.safetensors"
    metadata = dict(LoraFile.open(path).metadata, sshs_model_hash="0" * 64)
    rewrite_metadata(path, stale, metadata, hashes=False)
    hashes = inspect_file(stale).hashes
    assert hashes["stored"] == "0" * 64
    assert hashes["match"] is False


def test_unmapped_modules_and_ia3_notes(folder: Path) -> None:
    loha_path = write_fixture("sd15_loha", folder / "loha_full.safetensors", rank=2,
                              select=r"(conv_in|conv_out|time_emb|mid_block_attentions)")
    report = inspect_file(loha_path, hashes=False)
    assert report.unmapped_modules == ("lora_unet_conv_out", "lora_unet_time_embedding_linear_1",
                                       "lora_unet_time_embedding_linear_2")
    assert report.unmapped.modules == 3 and report.unmapped.norm > 0
    assert report.blocks["IN00"].modules == 1
    total = report.unmapped.share + sum(s.share for s in report.blocks.values())
    assert total == pytest.approx(100.0)
    ia3 = inspect_file(write_fixture("sd15_ia3", folder / "ia3.safetensors", rank=2, select="mid_block"),
                       hashes=False)
    assert ia3.blocks["M00"].modules > 0 and ia3.blocks["M00"].norm == 0
    assert ia3.notes == ("IA3 modules have no norm without the base model (ΔW = W0 ⊙ w); they count 0",)


def test_compare_two_files(folder: Path) -> None:
    a = write_fixture("sd15", folder / "a.safetensors", rank=4, alpha=2, seed=7, select="mid_block|up_blocks_1")
    b = write_fixture("sd15", folder / "b.safetensors", rank=4, alpha=2, seed=7, select="mid_block|up_blocks_1",
                      alphas={"mid_block": 6})
    comparison = compare_reports(inspect_file(a, hashes=False), inspect_file(b, hashes=False))
    rows = {row.block: row for row in comparison.rows}
    assert rows["M00"].ratio == pytest.approx(3.0, rel=1e-6)
    assert rows["OUT03"].ratio == pytest.approx(1.0, rel=1e-12)
    assert rows["IN01"].ratio is None and rows["IN01"].a.modules == 0
    assert comparison.warnings == ()
    data = comparison.to_json()
    assert data["blocks"]["M00"]["modules_a"] == 12 and data["blocks"]["M00"]["modules_b"] == 12


def test_compare_warns_on_different_architectures(folder: Path, sd15: Path) -> None:
    xl = write_fixture("sdxl", folder / "xl.safetensors", rank=2, select="middle_block_1_transformer_blocks_0_")
    comparison = compare_reports(inspect_file(sd15, hashes=False), inspect_file(xl, hashes=False))
    assert comparison.warnings[0].startswith("the files are for different architectures (sd1 and sdxl)")


def test_norms_can_be_skipped_and_devices_checked(sd15: Path) -> None:
    report = inspect_file(sd15, norms=False, hashes=False)
    assert report.total_norm == 0 and report.notes == ("norms not computed (--no-norms)",)
    if not torch.cuda.is_available():
        with pytest.raises(LbwError, match="device 'cuda' is not available"):
            inspect_file(sd15, device="cuda", hashes=False)


def test_progress_reaches_the_module_count(sd15: Path) -> None:
    seen: list[tuple[int, int]] = []
    inspect_file(sd15, hashes=False, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (264, 264)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_group_metadata() -> None:
    groups = group_metadata({"ss_network_dim": "8", "ssmd_author": "me", "modelspec.title": "t",
                             "sshs_model_hash": "ab", "format": "pt"})
    assert groups["training"] == {"ss_network_dim": "8"} and groups["user"] == {"ssmd_author": "me"}
    assert groups["modelspec"] == {"modelspec.title": "t"} and groups["hashes"] == {"sshs_model_hash": "ab"}
    assert groups["other"] == {"format": "pt"}
