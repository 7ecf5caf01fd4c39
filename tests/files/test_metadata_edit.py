"""Editing metadata (lbw.services.meta): keys kept, tensor bytes identical, hashes recomputed, backups, -o."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from lbw.errors import LbwError, LoraFileError, OutputError
from lbw.files.fixtures import write_fixture
from lbw.files.hashes import addnet_hash, stored_and_computed
from lbw.files.safetensors_header import read_header
from lbw.services.meta import MetaChanges, SidecarChanges, edit_meta, planned_metadata, show_meta


@pytest.fixture()
def lora(tmp_path):
    """An SD1.5 rank-2 LoRA (about 2.4 MB, so the legacy hash slice lies in the data region)."""
    return write_fixture("sd15", tmp_path / "gobuhime.safetensors", rank=2, alpha=1)


def data_bytes(path) -> bytes:
    return path.read_bytes()[read_header(path).data_start :]


def test_edit_in_place_keeps_keys_and_tensor_bytes(lora, tmp_path) -> None:
    original_bytes, before = lora.read_bytes(), read_header(lora).metadata
    Image.new("RGB", (16, 24), (1, 2, 3)).save(tmp_path / "cover.jpg")
    result = edit_meta(lora, MetaChanges(
        display_name="Gobuhime", author="me", rating=7, cover=tmp_path / "cover.jpg", title="Gobuhime v1",
        trigger_phrase="gobuhime", weights="Gobuhime:1,1,1,1,0.5,1,1,1,1,1,1,1,1,1,1,1,1", license="MIT"))
    after = read_header(lora).metadata
    assert result.path == lora and result.backup == tmp_path / "gobuhime.safetensors.backup"
    assert result.backup.read_bytes() == original_bytes
    assert data_bytes(lora) == original_bytes[read_header(result.backup).data_start :]
    kept = {k: v for k, v in before.items() if k != "modelspec.title"}
    assert {k: after[k] for k in kept} == kept  # every other key kept, the hashes unchanged
    assert after["ssmd_display_name"] == "Gobuhime" and after["ssmd_rating"] == "7"
    assert after["ssmd_author"] == after["modelspec.author"] == "me"
    assert after["lbw_block_layout"] == "SD17" and after["modelspec.license"] == "MIT"
    assert len(json.loads(after["ssmd_cover_images"])) == 1
    assert after["sshs_model_hash"] == addnet_hash(lora) == before["sshs_model_hash"]
    report = stored_and_computed(lora)
    assert report["legacy_stored"] == report["legacy_computed"] == before["sshs_legacy_hash"]
    assert set(result.changes) == {
        "ssmd_display_name", "ssmd_author", "modelspec.author", "ssmd_rating", "ssmd_cover_images",
        "modelspec.title", "modelspec.trigger_phrase", "modelspec.license", "lbw_block_weights",
        "lbw_block_layout"}
    assert result.changes["modelspec.title"] == ("gobuhime", "Gobuhime v1")
    loaded = load_file(lora)
    assert all(torch.equal(loaded[k], v) for k, v in load_file(result.backup).items())


def test_backup_is_kept_once_and_can_be_skipped(lora, tmp_path) -> None:
    original = lora.read_bytes()
    edit_meta(lora, MetaChanges(author="a"))
    second = edit_meta(lora, MetaChanges(author="b"))
    assert second.backup is None  # the first backup (the original) is kept
    assert (tmp_path / "gobuhime.safetensors.backup").read_bytes() == original
    other = write_fixture("sd15", tmp_path / "other.safetensors", rank=1, select="fc1")
    edit_meta(other, MetaChanges(author="a"), backup=False)
    assert not (tmp_path / "other.safetensors.backup").exists()


def test_output_file_leaves_the_source_alone(lora, tmp_path) -> None:
    original = lora.read_bytes()
    out = tmp_path / "copy.safetensors"
    result = edit_meta(lora, MetaChanges(keywords="gobuhime, 1girl"), out=out)
    assert lora.read_bytes() == original and result.backup is None and result.path == out
    assert read_header(out).metadata["ssmd_keywords"] == "gobuhime, 1girl"
    assert data_bytes(out) == data_bytes(lora)
    with pytest.raises(OutputError, match=r"copy.safetensors: already exists; use --force"):
        edit_meta(lora, MetaChanges(author="x"), out=out)
    edit_meta(lora, MetaChanges(author="x"), out=out, force=True)
    assert read_header(out).metadata["ssmd_author"] == "x"
    with pytest.raises(OutputError, match=r"is the input file; leave out -o"):
        edit_meta(lora, MetaChanges(author="x"), out=lora)


def test_no_change_means_no_write_and_rehash_fixes_stale_hashes(lora, tmp_path) -> None:
    before = lora.read_bytes()
    result = edit_meta(lora, MetaChanges(author=None))
    assert result.path is None and result.changes == {} and lora.read_bytes() == before
    stale = tmp_path / "stale.safetensors"
    save_file(load_file(lora), stale, metadata={"ss_network_dim": "2", "sshs_model_hash": "0" * 64})
    fixed = edit_meta(stale, MetaChanges(), rehash=True, backup=False)
    assert fixed.changes["sshs_model_hash"] == ("0" * 64, addnet_hash(stale))
    report = stored_and_computed(stale)
    assert report["stored"] == report["computed"] and report["legacy_stored"] == report["legacy_computed"]


def test_set_and_unset_keys() -> None:
    current = {"ss_network_dim": "8", "ssmd_tags": "a", "sshs_model_hash": "h"}
    planned = planned_metadata(current, MetaChanges(set_keys={"my_key": "v"}, unset=("ssmd_tags",), tags="b, c"))
    assert planned == {"ss_network_dim": "8", "sshs_model_hash": "h", "my_key": "v", "ssmd_tags": "b, c",
                       "modelspec.tags": "b, c"}
    with pytest.raises(LbwError, match=r"cannot unset 'ssmd_author': the file has no such key"):
        planned_metadata(current, MetaChanges(unset=("ssmd_author",)))
    with pytest.raises(LbwError, match=r"cannot set 'sshs_model_hash': hash keys are computed"):
        planned_metadata(current, MetaChanges(set_keys={"sshs_model_hash": "x"}))
    with pytest.raises(LbwError, match=r"sshs_model_hash is computed from the file"):
        planned_metadata(current, MetaChanges(unset=("sshs_model_hash",)))


def test_sidecar_is_derived_and_merged(lora, tmp_path) -> None:
    side = tmp_path / "gobuhime.json"
    side.write_text(json.dumps({"notes": "old notes", "negative text": "lowres"}), encoding="utf-8")
    result = edit_meta(lora, MetaChanges(trigger_phrase="gobuhime", description="A goblin princess"),
                       sidecar=SidecarChanges(preferred_weight=0.8))
    assert result.sidecar == side
    assert json.loads(side.read_text(encoding="utf-8")) == {
        "notes": "old notes", "negative text": "lowres", "activation text": "gobuhime",
        "description": "A goblin princess", "sd version": "SD1", "preferred weight": 0.8}
    only_side = edit_meta(lora, MetaChanges(), sidecar=SidecarChanges(notes="new"))
    assert only_side.path is None  # sidecar-only change: the LoRA is not rewritten
    assert json.loads(side.read_text(encoding="utf-8"))["notes"] == "new"


def test_show_meta_reports_hashes_and_sidecar(lora) -> None:
    view = show_meta(lora)
    data = view.to_json()
    assert data["hashes"]["match"] is True and data["hashes"]["stored"] == addnet_hash(lora)
    assert data["metadata"]["training"]["ss_network_dim"] == "2"
    assert data["block_weights"] is None and data["cover"] is None
    assert data["sidecar"] == {"path": str(lora.with_suffix(".json")), "content": None}


def test_malformed_input_is_refused_in_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(LoraFileError, match=r"bad.safetensors: header is not valid JSON"):
        edit_meta(bad, MetaChanges(author="x"))
    with pytest.raises(LoraFileError, match=r"old.ckpt: is a pickle checkpoint"):
        show_meta(tmp_path / "old.ckpt")


def test_in_place_edit_keeps_the_file_permissions(lora) -> None:
    lora.chmod(0o644)
    result = edit_meta(lora, MetaChanges(author="me"))
    assert lora.stat().st_mode & 0o777 == 0o644
    assert result.backup is not None and result.backup.stat().st_mode & 0o777 == 0o644


def test_flux_sidecar_says_unknown_not_sd1(tmp_path) -> None:
    flux = write_fixture("flux", tmp_path / "flux.safetensors", rank=1, select="single_blocks_0_")
    result = edit_meta(flux, MetaChanges(), sidecar=SidecarChanges(activation_text="x"))
    assert json.loads(result.sidecar.read_text(encoding="utf-8")) == {"activation text": "x", "sd version": "Unknown"}
