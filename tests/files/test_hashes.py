"""Hashes: addnet (data region), legacy slices (file and ss_-only re-serialisation), full file, stored vs
computed."""

from __future__ import annotations

import hashlib
import struct

import pytest
import torch
from safetensors.torch import save, save_file

from lbw.errors import LoraFileError
from lbw.files.hashes import (
    addnet_hash,
    addnet_legacy_hash,
    full_file_sha256,
    legacy_hash,
    legacy_slice_hash,
    short_hash,
    ss_only_legacy_hash,
    stored_and_computed,
)
from lbw.files.writer import save_lora

EMPTY_SHA = "e3b0c442"


def big_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """About 1.5 MiB of fp16 data: the legacy slice at 1 MiB falls inside the data region."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "lora_unet_a.lora_down.weight": torch.randn(256, 1024, generator=gen).half(),
        "lora_unet_a.lora_up.weight": torch.randn(1024, 256, generator=gen).half(),
        "lora_unet_a.alpha": torch.tensor(4.0).half(),
        "lora_unet_b.lora_down.weight": torch.randn(64, 1024, generator=gen),
    }


def data_region(path) -> bytes:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw[8 + n :]


def test_addnet_hash_is_sha256_of_the_data_region(tmp_path) -> None:
    path = tmp_path / "a.safetensors"
    save_file(big_tensors(), path, metadata={"ss_x": "1", "ssmd_author": "someone"})
    assert addnet_hash(path) == hashlib.sha256(data_region(path)).hexdigest()
    other = tmp_path / "b.safetensors"
    save_file(big_tensors(), other, metadata={"ss_x": "1"})  # metadata differs, data identical
    assert addnet_hash(other) == addnet_hash(path)
    assert short_hash(addnet_hash(path)) == addnet_hash(path)[:12]


def test_legacy_hash_reads_64k_at_1mib(tmp_path) -> None:
    path = tmp_path / "a.safetensors"
    save_file(big_tensors(), path, metadata={"ss_x": "1"})
    raw = path.read_bytes()
    assert len(raw) > 0x110000
    assert legacy_hash(path) == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]
    small = tmp_path / "small.safetensors"
    save_file({"x": torch.zeros(4)}, small)
    assert legacy_hash(small) == EMPTY_SHA


def test_ss_only_legacy_hash_equals_the_sd_scripts_serialisation(tmp_path) -> None:
    tensors = big_tensors()
    training = {"ss_network_dim": "8", "ss_output_name": "gobuhime"}
    user = {"ssmd_author": "x" * 5000, "ssmd_display_name": "Gobuhime", "modelspec.title": "t"}
    path = tmp_path / "a.safetensors"
    save_file(tensors, path, metadata={**training, **user})
    reference = save(tensors, training)  # what sd-scripts hashes at save time
    expected = hashlib.sha256(reference[0x100000:0x110000]).hexdigest()[:8]
    assert ss_only_legacy_hash(path) == expected
    assert addnet_legacy_hash(path) == expected
    assert legacy_hash(path) != expected  # the user metadata moved the file's slice


def test_addnet_legacy_hash_uses_the_file_slice_when_all_keys_are_training(tmp_path) -> None:
    path = tmp_path / "a.safetensors"
    save_file(big_tensors(), path, metadata={"ss_network_dim": "8"})
    assert addnet_legacy_hash(path) == legacy_hash(path)


def test_legacy_slice_hash_spans_header_and_data() -> None:
    prefix = b"p" * (0x100000 + 10)
    data = bytes(range(256)) * 1024
    expected = hashlib.sha256((prefix + data)[0x100000:0x110000]).hexdigest()[:8]
    assert legacy_slice_hash(prefix, lambda offset, length: data[offset : offset + length]) == expected
    assert legacy_slice_hash(b"x" * 16, lambda offset, length: b"") == EMPTY_SHA


def test_full_file_sha256(tmp_path) -> None:
    path = tmp_path / "a.safetensors"
    save_file({"x": torch.arange(10)}, path)
    assert full_file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_stored_and_computed_agree_for_lbw_writes_and_flag_stale_hashes(tmp_path) -> None:
    tensors = big_tensors()
    path = tmp_path / "good.safetensors"
    written = save_lora(tensors, {"ss_network_dim": "8", "ssmd_author": "me"}, path)
    report = stored_and_computed(path)
    assert report == {
        "stored": written.model_hash,
        "computed": written.model_hash,
        "legacy_stored": written.legacy_hash,
        "legacy_computed": written.legacy_hash,
    }
    stale = tmp_path / "stale.safetensors"  # hashed in fp32, saved in fp16: the SuperMerger pitfall
    fp32 = {k: v.float() for k, v in tensors.items()}
    stale_hash = hashlib.sha256(data_region_of(save(fp32, {}))).hexdigest()
    save_file(tensors, stale, metadata={"sshs_model_hash": stale_hash})
    report = stored_and_computed(stale)
    assert report["stored"] == stale_hash != report["computed"] == addnet_hash(stale)
    assert report["legacy_stored"] is None


def data_region_of(buffer: bytes) -> bytes:
    (n,) = struct.unpack("<Q", buffer[:8])
    return buffer[8 + n :]


def test_unreadable_files_raise_one_line_errors(tmp_path) -> None:
    with pytest.raises(LoraFileError, match=r"missing.safetensors: file not found"):
        addnet_hash(tmp_path / "missing.safetensors")
    with pytest.raises(LoraFileError, match=r"cannot read"):
        legacy_hash(tmp_path / "missing.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(LoraFileError, match=r"broken.safetensors: header length 1000 bytes runs past"):
        stored_and_computed(broken)
