"""Writer: byte-exact safetensors layout, hashes from the bytes written, header-only rewrites, refusals."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from lbw.errors import OutputError
from lbw.files.hashes import addnet_hash, legacy_hash, stored_and_computed
from lbw.files.safetensors_header import read_header
from lbw.files.writer import encode_header, rewrite_metadata, save_lora


def mixed_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "b.lora_up.weight": torch.randn(6, 2, generator=gen).half(),
        "a.lora_down.weight": torch.randn(2, 5, generator=gen).bfloat16(),
        "a.alpha": torch.tensor(1.5),
        "c.index": torch.arange(3),
        "c.flag": torch.tensor([True, False]),
        "c.small": torch.tensor([1, 2], dtype=torch.int8),
        "d.conv": torch.randn(2, 3, 3, 3, generator=gen),
        "e.empty": torch.zeros(0, 4),
    }


def big_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return {
        "m.lora_down.weight": torch.randn(512, 1024, generator=gen).half(),
        "m.lora_up.weight": torch.randn(1024, 512, generator=gen).half(),
        "m.alpha": torch.tensor(8.0).half(),
    }


@pytest.mark.parametrize("metadata", [None, {}, {"ss_a": 'é\n"/\x01\x7f\\'}, {"format": "pt"}])
def test_save_lora_writes_the_same_bytes_as_safetensors(tmp_path, metadata) -> None:
    path = tmp_path / "a.safetensors"
    save_lora(mixed_tensors(), metadata, path, hashes=False)
    assert path.read_bytes() == save(mixed_tensors(), metadata)


def test_save_lora_matches_safetensors_with_many_keys(tmp_path) -> None:
    metadata = {f"ss_key{i}": "v" * i for i in range(30)}
    path = tmp_path / "a.safetensors"
    save_lora(mixed_tensors(), metadata, path, hashes=False)
    reference = save(mixed_tensors(), metadata)  # the library orders metadata keys at random
    ours = path.read_bytes()
    assert len(ours) == len(reference)
    (n,) = struct.unpack("<Q", ours[:8])
    assert json.loads(ours[8 : 8 + n]) == json.loads(reference[8 : 8 + n])
    assert ours[8 + n :] == reference[8 + n :]


def test_encode_header_matches_the_library_prefix() -> None:
    tensors = mixed_tensors()
    reference = save(tensors, {"k": "v"})
    (n,) = struct.unpack("<Q", reference[:8])
    entries = read_header_of_bytes(reference)
    assert encode_header(entries, {"k": "v"}) == reference[: 8 + n]


def read_header_of_bytes(buffer: bytes):
    from lbw.files.safetensors_header import TensorInfo

    (n,) = struct.unpack("<Q", buffer[:8])
    document = json.loads(buffer[8 : 8 + n])
    document.pop("__metadata__", None)
    rows = [TensorInfo(k, v["dtype"], tuple(v["shape"]), *v["data_offsets"]) for k, v in document.items()]
    return sorted(rows, key=lambda e: e.begin)


def test_save_lora_sets_hashes_from_the_written_bytes(tmp_path) -> None:
    path = tmp_path / "a.safetensors"
    training = {"ss_network_dim": "8", "ss_output_name": "a"}
    written = save_lora(big_tensors(), {**training, "ssmd_author": "me" * 100}, path)
    with safe_open(path, "pt") as handle:
        md = handle.metadata()
    assert md["sshs_model_hash"] == written.model_hash == addnet_hash(path)
    reference = save(big_tensors(), training)  # sd-scripts: ss_* only, then the 64 KiB slice at 1 MiB
    import hashlib

    assert md["sshs_legacy_hash"] == hashlib.sha256(reference[0x100000:0x110000]).hexdigest()[:8]
    assert md["sshs_legacy_hash"] != legacy_hash(path)
    assert md["ssmd_author"] == "me" * 100
    assert written.size == path.stat().st_size


def test_save_lora_refuses_existing_and_bad_input(tmp_path) -> None:
    path = tmp_path / "a.safetensors"
    save_lora(big_tensors(), {}, path)
    before = path.read_bytes()
    with pytest.raises(OutputError, match=r"a.safetensors: already exists; use --force"):
        save_lora(big_tensors(), {}, path)
    with pytest.raises(OutputError, match=r"metadata value of 'ss_network_dim' must be a string, found int"):
        save_lora(big_tensors(), {"ss_network_dim": 8}, path, force=True)
    with pytest.raises(OutputError, match=r"tensor 'x' is a list, expected a torch.Tensor"):
        save_lora({"x": [1, 2]}, {}, path, force=True)
    with pytest.raises(OutputError, match=r"does not exist"):
        save_lora(big_tensors(), {}, tmp_path / "missing" / "a.safetensors")
    assert path.read_bytes() == before
    save_lora(mixed_tensors(), {}, path, force=True)
    assert load_file(path).keys() == mixed_tensors().keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]  # no temp files left


def test_rewrite_metadata_copies_tensor_bytes_exactly(tmp_path) -> None:
    src = tmp_path / "src.safetensors"
    save_file(big_tensors(), src, metadata={"ss_network_dim": "8", "sshs_model_hash": "stale"})
    original = src.read_bytes()
    header = read_header(src)
    dest = tmp_path / "dest.safetensors"
    new_md = {**header.metadata, "ssmd_display_name": "Gobuhime ゴブ姫", "modelspec.title": "t"}
    written = rewrite_metadata(src, dest, new_md)
    assert src.read_bytes() == original  # source untouched
    out = read_header(dest)
    assert dest.read_bytes()[out.data_start :] == original[header.data_start :]
    assert {k: (v.dtype, v.shape, v.begin, v.end) for k, v in out.tensors.items()} == {
        k: (v.dtype, v.shape, v.begin, v.end) for k, v in header.tensors.items()
    }
    assert out.metadata["ssmd_display_name"] == "Gobuhime ゴブ姫"
    assert out.metadata["ss_network_dim"] == "8"
    assert out.metadata["sshs_model_hash"] == written.model_hash == addnet_hash(src) == addnet_hash(dest)
    report = stored_and_computed(dest)
    assert report["stored"] == report["computed"] and report["legacy_stored"] == report["legacy_computed"]
    loaded, expected = load_file(dest), load_file(src)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_rewrite_metadata_in_place_and_refusals(tmp_path) -> None:
    src = tmp_path / "a.safetensors"
    save_lora(big_tensors(), {"ss_network_dim": "8"}, src)
    data_before = src.read_bytes()[read_header(src).data_start :]
    rewrite_metadata(src, src, {"ss_network_dim": "8", "ssmd_author": "me"})
    assert src.read_bytes()[read_header(src).data_start :] == data_before
    assert read_header(src).metadata["ssmd_author"] == "me"
    other = tmp_path / "b.safetensors"
    other.write_bytes(b"keep")
    with pytest.raises(OutputError, match=r"b.safetensors: already exists"):
        rewrite_metadata(src, other, {})
    assert other.read_bytes() == b"keep"
    rewrite_metadata(src, other, {}, force=True, hashes=False)
    assert read_header(other).metadata == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]
