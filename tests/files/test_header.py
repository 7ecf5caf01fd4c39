"""read_header: valid files, every malformed-file refusal, pickles refused, header-only reading."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lbw.errors import LoraFileError
from lbw.files.safetensors_header import MAX_HEADER_BYTES, read_header, read_header_from


def raw_file(path: Path, header: object, data: bytes = b"", *, header_bytes: bytes | None = None) -> Path:
    """Write a safetensors-like file by hand: u64 length, header JSON, data."""
    blob = header_bytes if header_bytes is not None else json.dumps(header).encode("utf-8")
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(LoraFileError) as caught:
        read_header(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_reads_metadata_shapes_offsets_of_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    tensors = {"m.lora_down.weight": torch.zeros(4, 6, dtype=torch.float16),
               "m.lora_up.weight": torch.zeros(5, 4, dtype=torch.float16),
               "m.alpha": torch.tensor(2.0, dtype=torch.float32)}
    save_file(tensors, path, metadata={"ss_network_dim": "4"})
    header = read_header(path)
    assert header.metadata == {"ss_network_dim": "4"}
    assert set(header.tensors) == set(tensors)
    down = header.tensors["m.lora_down.weight"]
    assert (down.dtype, down.shape, down.nbytes, down.numel) == ("F16", (4, 6), 48, 24)
    assert header.tensors["m.alpha"].shape == ()
    assert header.data_start == 8 + header.header_size
    assert header.file_size == path.stat().st_size
    assert header.data_size == 48 + 40 + 4


def test_file_without_metadata_has_empty_metadata(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "a.safetensors", {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                    b"\0" * 8)
    assert read_header(path).metadata == {}


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_checkpoints_are_refused_without_reading(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x02}q\x00.")
    message = error_of(path)
    assert message.startswith(f"{path}: is a pickle checkpoint ({suffix}); lbw never unpickles")
    assert "Convert it to .safetensors" in message


def test_zip_checkpoint_renamed_to_safetensors_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "renamed.safetensors"
    path.write_bytes(b"PK\x03\x04\x14\x00\x00\x00" + b"\0" * 64)
    assert "looks like a PyTorch pickle/zip checkpoint" in error_of(path)


def test_missing_file(tmp_path: Path) -> None:
    assert error_of(tmp_path / "none.safetensors") == f"{tmp_path / 'none.safetensors'}: file not found"


def test_truncated_before_the_length(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"\x10\x00\x00")
    assert error_of(path) == (f"{path}: truncated: 3 bytes, a safetensors file starts with an 8-byte header "
                              "length")


def test_header_length_beyond_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", 500) + b"{}")
    assert error_of(path) == (f"{path}: header length 500 bytes runs past the end of the file (10 bytes); "
                              "truncated or not a safetensors file")


def test_absurd_header_length(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    assert f"header length {MAX_HEADER_BYTES + 1} bytes is absurd" in error_of(path)


def test_invalid_utf8(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "t.safetensors", None, header_bytes=b'{"\xff": 1}')
    assert error_of(path) == f"{path}: header is not valid UTF-8 (byte 2)"


def test_invalid_json(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "t.safetensors", None, header_bytes=b'{"a": ')
    assert error_of(path).startswith(f"{path}: header is not valid JSON: Expecting value at character 6")


def test_header_not_an_object(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "t.safetensors", [1, 2])
    assert error_of(path) == f"{path}: header must be a JSON object, found list"


def test_non_string_metadata_value(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "t.safetensors", {"__metadata__": {"ss_network_dim": 8}})
    assert error_of(path) == f"{path}: metadata value of 'ss_network_dim' must be a string, found int"


def test_unknown_dtype_names_the_tensor(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "t.safetensors", {"w": {"dtype": "F12", "shape": [1], "data_offsets": [0, 2]}},
                    b"\0\0")
    message = error_of(path)
    assert message.startswith(f"{path}: tensor 'w': unknown dtype 'F12'; expected one of BF16, BOOL,")


def test_shape_not_a_list_of_counts(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "t.safetensors", {"w": {"dtype": "F16", "shape": [2, -1], "data_offsets": [0, 4]}},
                    b"\0" * 4)
    assert error_of(path) == (f"{path}: tensor 'w': shape must be a list of non-negative integers below 2**63, "
                              "found [2, -1]")


def test_bad_offsets(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "t.safetensors", {"w": {"dtype": "F16", "shape": [2], "data_offsets": [4, 0]}},
                    b"\0" * 4)
    assert error_of(path) == (f"{path}: tensor 'w': data_offsets must be [begin, end] with 0 <= begin <= end < "
                              "2**63, found [4, 0]")


def test_size_inconsistent_with_shape_and_dtype(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "t.safetensors", {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 12]}},
                    b"\0" * 12)
    assert error_of(path) == f"{path}: tensor 'w': shape [2, 3] x F32 needs 24 bytes but data_offsets span 12"


def test_offsets_outside_the_data_region_mean_truncation(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "t.safetensors", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                    b"\0" * 10)
    assert error_of(path) == (f"{path}: tensor 'w': data_offsets [0, 16] run past the data region (10 bytes); "
                              "file truncated?")


def test_overlapping_tensors(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    path = raw_file(tmp_path / "t.safetensors", header, b"\0" * 12)
    assert error_of(path) == f"{path}: tensor 'b': data_offsets [4, 12] overlap tensor 'a'"


def test_gap_between_tensors(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
              "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}
    path = raw_file(tmp_path / "t.safetensors", header, b"\0" * 12)
    assert error_of(path) == f"{path}: tensor 'b': gap of 4 bytes before its data; offsets must be contiguous"


def test_trailing_bytes_after_the_last_tensor(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "t.safetensors", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                    b"\0" * 6)
    assert error_of(path) == f"{path}: data region has 2 bytes after the last tensor; header and data disagree"


def test_real_file_truncated_in_its_data(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"a.lora_down.weight": torch.ones(8, 8), "a.lora_up.weight": torch.ones(8, 8)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    assert "run past the data region" in error_of(path)


def test_zero_sized_tensors_are_valid(tmp_path: Path) -> None:
    header = {"e": {"dtype": "F16", "shape": [0, 4], "data_offsets": [0, 0]},
              "a": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}
    path = raw_file(tmp_path / "t.safetensors", header, b"\0\0")
    assert read_header(path).tensors["e"].nbytes == 0


class CountingReader(io.BytesIO):
    """A stream that records how many bytes were read and the furthest position reached."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


def test_header_reading_never_reads_tensor_data(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    save_file({f"m{i}.lora_down.weight": torch.zeros(64, 1024) for i in range(8)}, path)
    data = path.read_bytes()
    stream = CountingReader(data)
    header = read_header_from(stream, len(data), path)
    assert stream.bytes_read == 8 + header.header_size
    assert header.data_size == 8 * 64 * 1024 * 4
