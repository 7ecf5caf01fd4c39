"""The streaming writer: hashes taken while writing equal the file's, wherever the legacy window falls; metadata
completed after the data; an interrupted write leaves nothing behind (no file, no thread)."""

from __future__ import annotations

import builtins
import hashlib
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

import lbw.files.write_pass as write_pass
import lbw.files.writer as writer
from lbw.errors import OutputError
from lbw.files.hashes import addnet_hash, stored_and_computed
from lbw.files.safetensors_header import read_header
from lbw.files.writer import save_lora


def tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    return {
        "m.lora_up.weight": torch.randn(700, 300, generator=gen).half(),
        "m.lora_down.weight": torch.randn(300, 500, generator=gen).bfloat16(),
        "m.alpha": torch.tensor(4.0),
        "n.diff": torch.randn(3, 5, generator=gen).double()[:, 1:4],  # not contiguous
        "n.flag": torch.tensor([True, False, True]),
        "n.empty": torch.zeros(0, 2),
    }


# ss_* metadata sizes that put the ss_*-only header before, across and past the window [1 MiB, 1 MiB + 64 KiB).
@pytest.mark.parametrize("pad", [0, (1 << 20) - 40_000, (1 << 20) + 30_000, (1 << 20) + 70_000])
def test_hashes_equal_the_written_file_wherever_the_legacy_window_falls(tmp_path: Path, pad: int) -> None:
    path = tmp_path / "a.safetensors"
    # one ss_* key: the safetensors library orders metadata keys at random, and the reference must not vary
    metadata = {"ss_note": "é" * (pad // 2), "ssmd_author": "someone" * 50}
    written = save_lora(tensors(), metadata, path)
    header = read_header(path)
    assert header.metadata["sshs_model_hash"] == written.model_hash == addnet_hash(path)
    report = stored_and_computed(path)
    assert report["legacy_stored"] == report["legacy_computed"] == written.legacy_hash
    training = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    reference = save({k: v.contiguous() for k, v in tensors().items()}, training)
    assert written.legacy_hash == hashlib.sha256(reference[0x100000:0x110000]).hexdigest()[:8]
    assert path.read_bytes()[header.data_start :] == reference[8 + int.from_bytes(reference[:8], "little") :]
    assert written.size == path.stat().st_size


def test_final_metadata_replaces_placeholders_after_the_data(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    late = hashlib.sha256(b"source").hexdigest()
    calls = []

    def final() -> dict[str, str]:
        calls.append(path.with_name(path.name).exists())  # still the temporary file: dest not there yet
        return {"ss_source": late, "other": f"x({late[:12]})"}

    written = save_lora(tensors(), {"ss_source": "0" * 64, "other": "x(000000000000)"}, path, final_metadata=final)
    assert calls == [False]
    md = read_header(path).metadata
    assert md["ss_source"] == late and md["other"] == f"x({late[:12]})"
    assert md["sshs_model_hash"] == written.model_hash == addnet_hash(path)
    report = stored_and_computed(path)
    assert report["legacy_stored"] == report["legacy_computed"]
    eager = tmp_path / "b.safetensors"
    save_lora(tensors(), {"ss_source": late, "other": f"x({late[:12]})"}, eager)
    assert eager.read_bytes() == path.read_bytes()


def test_final_metadata_of_another_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    with pytest.raises(OutputError, match="header changed length"):
        save_lora(tensors(), {"k": "0" * 8}, path, final_metadata=lambda: {"k": "0" * 9})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("hashes", [True, False])
def test_interrupted_write_leaves_no_file_and_no_thread(tmp_path: Path, monkeypatch, hashes: bool) -> None:
    class Interrupting:
        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            self.written += self.handle.write(data)
            if self.written > 200_000:
                raise KeyboardInterrupt
            return len(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def opener(path, mode="r"):
        return Interrupting(builtins.open(path, mode))  # closed by Interrupting.__exit__

    monkeypatch.setattr(writer, "open", opener, raising=False)
    with pytest.raises(KeyboardInterrupt):
        save_lora(tensors(), {"ss_a": "b"}, tmp_path / "a.safetensors", hashes=hashes)
    assert list(tmp_path.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == "lbw-sha256"]


def lazy_of(values: dict[str, torch.Tensor], produced: list[str] | None = None) -> writer.LazyTensors:
    def produce(name: str) -> torch.Tensor:
        if produced is not None:
            produced.append(name)
        return values[name]

    return writer.LazyTensors({name: (t.dtype, tuple(t.shape)) for name, t in values.items()}, produce)


def test_lazy_tensors_write_the_same_bytes_each_produced_once_in_data_order(tmp_path: Path) -> None:
    eager, lazy = tmp_path / "eager.safetensors", tmp_path / "lazy.safetensors"
    produced: list[str] = []
    first = save_lora(tensors(), {"ss_a": "b"}, eager)
    second = save_lora(lazy_of(tensors(), produced), {"ss_a": "b"}, lazy)
    assert lazy.read_bytes() == eager.read_bytes()
    assert (second.model_hash, second.legacy_hash, second.size) == (first.model_hash, first.legacy_hash, first.size)
    entries = sorted(read_header(lazy).tensors.values(), key=lambda info: info.begin)
    assert produced == [info.name for info in entries]  # once each, in the order of the data
    assert produced[:2] == ["n.diff", "m.alpha"]  # F64 before F32 before BF16 ...


@pytest.mark.parametrize("wrong", [(torch.float32, (3, 4)), (torch.float16, (3, 5)), (torch.float16, (12,))])
def test_a_lazy_tensor_unlike_its_announcement_is_refused_and_nothing_is_left(tmp_path: Path, wrong) -> None:
    values = tensors()
    values["n.diff"] = torch.zeros(3, 4, dtype=torch.float16)
    specs = {name: (t.dtype, tuple(t.shape)) for name, t in values.items()}
    bad = torch.zeros(wrong[1], dtype=wrong[0])
    lazy = writer.LazyTensors(specs, lambda name: bad if name == "n.diff" else values[name])
    with pytest.raises(OutputError, match=r"internal error: tensor 'n.diff' came as .* announced as F16 \[3, 4\]"):
        save_lora(lazy, None, tmp_path / "a.safetensors")
    assert list(tmp_path.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == "lbw-sha256"]


def test_lazy_tensors_are_dropped_once_written_and_hashed_from_the_file(tmp_path: Path, monkeypatch) -> None:
    import weakref

    monkeypatch.setattr(write_pass.FileSha256, "BATCH", 3 << 20)  # hashed from the file 3 MiB at a time
    alive: list[weakref.ref] = []
    most = 0

    def produce(name: str) -> torch.Tensor:
        nonlocal most
        most = max(most, sum(ref() is not None for ref in alive))
        tensor = torch.full((1 << 18,), float(int(name[1:])))  # 1 MiB each
        alive.append(weakref.ref(tensor))
        return tensor

    specs = {f"t{i:02d}": (torch.float32, (1 << 18,)) for i in range(40)}
    written = save_lora(writer.LazyTensors(specs, produce), {"ss_a": "b"}, tmp_path / "a.safetensors")
    assert len(alive) == 40 and most == 0  # each one gone before the next is made
    assert written.model_hash == addnet_hash(tmp_path / "a.safetensors")
    assert stored_and_computed(tmp_path / "a.safetensors")["legacy_computed"] == written.legacy_hash
    data = (tmp_path / "a.safetensors").read_bytes()[read_header(tmp_path / "a.safetensors").data_start :]
    assert data == b"".join(torch.full((1 << 18,), float(i)).numpy().tobytes() for i in range(40))


def test_a_failed_early_writeback_is_reported_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    import errno

    calls = []

    def failing(fd: int) -> None:  # the background sync only: the writer's own final sync is the real one
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    def produce(name: str) -> torch.Tensor:
        if name >= "t3":  # the sync started after t0 (1 MiB): let it run before the data end
            for _ in range(500):
                if calls:
                    break
                time.sleep(0.01)
        return torch.zeros(1 << 18)

    monkeypatch.setattr(write_pass.Writeback, "STEP", 1 << 20)
    monkeypatch.setattr(write_pass, "datasync", failing)
    lazy = writer.LazyTensors({f"t{i}": (torch.float32, (1 << 18,)) for i in range(6)}, produce)  # 1 MiB each
    with pytest.raises(OutputError, match="cannot write: Input/output error; nothing was written"):
        save_lora(lazy, None, tmp_path / "a.safetensors")
    assert calls and list(tmp_path.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name in ("lbw-sha256", "lbw-writeback")]


def test_the_output_is_hashed_without_a_memory_map_where_the_file_system_has_none(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    import errno

    def no_map(*args, **kwargs):
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(write_pass.FileSha256, "BATCH", 1 << 20)
    monkeypatch.setattr(write_pass.mmap, "mmap", no_map)
    values = {f"t{i}": torch.full((300_000,), float(i)) for i in range(5)}  # 1.2 MB each: hashed in parts
    written = save_lora(values, {"ss_a": "b"}, tmp_path / "a.safetensors")
    monkeypatch.undo()
    assert written.model_hash == addnet_hash(tmp_path / "a.safetensors")
    assert stored_and_computed(tmp_path / "a.safetensors")["legacy_computed"] == written.legacy_hash
