"""Memory-mapped tensors: the stored values and dtypes without a copy, the data hash, unaligned offsets,
tensors that outlive the reader, and a file changed after its header was read."""

from __future__ import annotations

import gc
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lbw.errors import LoraFileError
from lbw.files.hashes import addnet_hash
from lbw.files.mapped import MappedTensors
from lbw.files.safetensors_header import read_header


def sample() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return {
        "a.lora_up.weight": torch.randn(6, 2, generator=gen).half(),
        "a.lora_down.weight": torch.randn(2, 5, generator=gen).bfloat16(),
        "a.alpha": torch.tensor(1.5),
        "b.diff": torch.randn(3, 3, 3, 3, generator=gen, dtype=torch.float64),
        "c.index": torch.arange(3),
        "c.flag": torch.tensor([True, False]),
        "c.small": torch.tensor([1, -2], dtype=torch.int8),
        "d.empty": torch.zeros(0, 4),
    }


def test_tensors_equal_the_stored_ones_and_hash_matches(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    save_file(sample(), path)
    expected = load_file(path)
    with MappedTensors(read_header(path)) as mapped:
        got = {key: mapped.tensor(key) for key in expected}
        assert mapped.data_sha256() == addnet_hash(path)
        roles = mapped.tensors({"lora_up": "a.lora_up.weight", "alpha": "a.alpha"})
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.dtype and got[key].shape == tensor.shape
        assert torch.equal(got[key], tensor), key
    assert set(roles) == {"lora_up", "alpha"} and float(roles["alpha"]) == 1.5
    got["a.lora_up.weight"].mul_(2)  # a private mapping: writable, and the file is never changed
    assert load_file(path)["a.lora_up.weight"].equal(expected["a.lora_up.weight"])


def test_tensors_outlive_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    save_file(sample(), path)
    mapped = MappedTensors(read_header(path))
    down = mapped.tensor("a.lora_down.weight")
    mapped.close()
    del mapped
    gc.collect()
    torch.zeros(1 << 20)  # reuse freed memory, if any was wrongly freed
    assert torch.equal(down, load_file(path)["a.lora_down.weight"])


def test_unaligned_offsets_are_copied(tmp_path: Path) -> None:
    # safetensors' own writer keeps every tensor aligned; another writer may not: U8[3] then F32[2].
    values = torch.tensor([1.5, -2.25])
    header = {"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes([1, 2, 3]) + values.numpy().tobytes())
    with MappedTensors(read_header(path)) as mapped:
        assert mapped.tensor("a").tolist() == [1, 2, 3]
        assert torch.equal(mapped.tensor("b"), values)


def test_refusals(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    save_file(sample(), path)
    header = read_header(path)
    with MappedTensors(header) as mapped, pytest.raises(LoraFileError, match="no tensor 'missing'"):
        mapped.tensor("missing")
    save_file({"x": torch.ones(3)}, path)  # replaced after the header was read
    with pytest.raises(LoraFileError, match=r"a\.safetensors: the file changed since its header was read"):
        MappedTensors(header)
    closed = MappedTensors(read_header(path))
    closed.close()
    with pytest.raises(LoraFileError, match="memory map is closed"):
        closed.tensor("x")
