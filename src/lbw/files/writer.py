"""Write LoRA files: whole files from tensors (``save_lora``) and header-only rewrites (``rewrite_metadata``).

Both write through ``lbw.files.atomic.atomic_path`` and produce exactly the layout the safetensors library
writes (compact JSON header, ``__metadata__`` first, tensors ordered by dtype then name, header padded with
spaces to a multiple of 8). Both set ``sshs_model_hash`` and ``sshs_legacy_hash`` from the bytes as written,
so the stored hash equals the file's addnet hash. ``rewrite_metadata`` copies the data region byte for byte
(streamed, no tensor decode), so tensor bytes and the addnet hash never change. ``save_lora`` also takes
``LazyTensors``: names, dtypes and shapes up front, each tensor produced only when its bytes are written, so a
large file is written with only a few of its tensors in memory at once.

Example:
    >>> tensors = {"m.lora_up.weight": up, "m.lora_down.weight": down}
    >>> written = save_lora(tensors, {"ss_network_dim": "8"}, "a.safetensors")
    >>> written.model_hash == addnet_hash("a.safetensors")
    True
    >>> metadata = {**read_header("a.safetensors").metadata, "ssmd_author": "me"}
    >>> rewrite_metadata("a.safetensors", "b.safetensors", metadata).model_hash == written.model_hash
    True
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lbw.errors import OutputError
from lbw.files.atomic import atomic_path
from lbw.files.hashes import (
    CHUNK,
    LEGACY_HASH_KEY,
    LEGACY_LENGTH,
    LEGACY_OFFSET,
    MODEL_HASH_KEY,
    legacy_slice_hash,
)
from lbw.files.header_encoding import HeaderEncoder, encode_header
from lbw.files.locks import LOCK_WAIT_S, target_lock
from lbw.files.safetensors_header import TensorInfo, read_header
from lbw.files.write_pass import FileSha256, Writeback, datasync

if TYPE_CHECKING:
    import torch

# safetensors writes the data region sorted by dtype, in this order (its dtype enum, descending), then by
# name.
DTYPE_ORDER: tuple[str, ...] = (
    "U64",
    "I64",
    "F64",
    "C64",
    "F32",
    "U32",
    "I32",
    "BF16",
    "F16",
    "U16",
    "I16",
    "F8_E4M3",
    "F8_E5M2",
    "I8",
    "U8",
    "BOOL",
)
_TORCH_DTYPES: dict[str, str] = {
    "torch.uint64": "U64",
    "torch.int64": "I64",
    "torch.float64": "F64",
    "torch.complex64": "C64",
    "torch.float32": "F32",
    "torch.uint32": "U32",
    "torch.int32": "I32",
    "torch.bfloat16": "BF16",
    "torch.float16": "F16",
    "torch.uint16": "U16",
    "torch.int16": "I16",
    "torch.float8_e4m3fn": "F8_E4M3",
    "torch.float8_e5m2": "F8_E5M2",
    "torch.int8": "I8",
    "torch.uint8": "U8",
    "torch.bool": "BOOL",
}


@dataclass(frozen=True)
class WrittenFile:
    """The result of a write: the path, the hashes stored in it (None when not set) and its size in bytes."""

    path: Path
    model_hash: str | None
    legacy_hash: str | None
    size: int


@dataclass(frozen=True)
class LazyTensors:
    """Tensors announced by dtype and shape, produced one at a time while ``save_lora`` writes them.

    ``specs`` maps each name to (torch dtype, shape). ``produce(name)`` is called once per name, in the order
    the data are written (safetensors' order: dtype, then name), and must return a tensor of exactly that dtype
    and shape: the header is already out, so anything else is an OutputError (an internal error of the
    producer). The writer keeps each tensor only until its bytes are written.

    Example:
        >>> lazy = LazyTensors({"m.alpha": (torch.float32, ())}, lambda name: torch.tensor(4.0))
        >>> save_lora(lazy, None, "a.safetensors").model_hash == addnet_hash("a.safetensors")
        True
    """

    specs: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]
    produce: Callable[[str], torch.Tensor]


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """A copy of ``metadata`` after checking every key and value is a string (safetensors requires it)."""
    result: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise OutputError(f"metadata key {key!r} must be a string, found {type(key).__name__}")
        if not isinstance(value, str):
            raise OutputError(f"metadata value of {key!r} must be a string, found {type(value).__name__}")
        result[key] = value
    return result


def save_lora(
    tensors: Mapping[str, torch.Tensor] | LazyTensors,
    metadata: Mapping[str, str] | None,
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    hashes: bool = True,
    final_metadata: Callable[[], Mapping[str, str]] | None = None,
) -> WrittenFile:
    """Write ``tensors`` and ``metadata`` to ``dest`` atomically; with ``hashes`` set ``sshs_model_hash`` and
    ``sshs_legacy_hash`` computed from the bytes written (legacy: over the ``ss_*``-only serialisation, as
    sd-scripts does). Refuses an existing ``dest`` unless ``force`` (OutputError), also one that another program
    creates while this one writes; holds ``dest``'s lock (``lbw.files.locks``) while writing: another lbw writing
    it is an OutputError at once, or, with ``force``, awaited.

    One pass: the header goes out with placeholder hashes of their final length, each tensor's bytes are
    written straight from the tensor (no serialised copy) while a background thread hashes them from the file,
    several MiB at a time (hashlib releases the GIL), then the header is rewritten in place with the hashes.
    The temporary file is fsynced before the rename (``atomic_path``), so an interrupted write leaves nothing
    at ``dest``.

    ``final_metadata``, when given, is called once the data are written and returns the metadata to store in
    place of ``metadata``, which then only holds placeholders of the same encoded length (e.g. a source hash
    still being computed on another thread, given as 64 zeros). A different header length is an OutputError.

    With ``LazyTensors``, each tensor is produced when its turn comes and dropped once written.

    >>> save_lora(tensors, {"ss_network_dim": "8"}, "out.safetensors").model_hash[:12]
    '5d41402abc4b'
    """
    dest = Path(dest)
    _check_dest(dest, force)
    entries, datas = _layout(tensors)  # datas stay referenced until the write is over
    header = HeaderEncoder(entries)
    md = _with_hashes(check_metadata(metadata) if metadata is not None else None, hashes, "0" * 64, "0" * 8)
    prefix = header.encode(md)
    window = _LegacyWindow(header.encode(_training(md))) if hashes else None
    with (
        target_lock(dest, wait=LOCK_WAIT_S if force else 0.0),
        atomic_path(dest, replace=force) as tmp,
        open(tmp, "wb") as out,
    ):
        out.write(prefix)
        with FileSha256(tmp, len(prefix), out, enabled=hashes) as digest:
            with Writeback(out) as writeback:
                for index, entry in enumerate(entries):
                    data = datas[index] if datas is not None else _produced(tensors, entry)
                    view = _bytes_of(data)
                    out.write(view)  # a produced tensor goes with ``data``: its bytes are in the file now
                    writeback.wrote(view.nbytes)
                    digest.wrote(len(prefix) + entry.end)
                    if window is not None:
                        window.capture(entry.begin, view)
                    del view, data
            if final_metadata is None and not hashes:
                md_final = md
            else:
                out.flush()
                digest.wrote(len(prefix) + (entries[-1].end if entries else 0), last=True)
                datasync(out.fileno())  # write the data back while the hash finishes; atomic_path fsyncs again
                md_final = md if final_metadata is None else check_metadata(final_metadata())
                if hashes:
                    assert window is not None
                    legacy = window.hexdigest(header.encode(_training(md_final)))
                    md_final = _with_hashes(md_final, hashes, digest.hexdigest(), legacy)
        if md_final is not md:
            final = header.encode(md_final)
            if len(final) != len(prefix):
                raise OutputError(f"internal error: the header changed length ({len(prefix)} to {len(final)} "
                                  "bytes) when its final values were set", where=str(dest))
            out.seek(0)
            out.write(final)
    model_hash = md_final.get(MODEL_HASH_KEY) if hashes and md_final is not None else None
    legacy_hash = md_final.get(LEGACY_HASH_KEY) if hashes and md_final is not None else None
    return WrittenFile(dest, model_hash, legacy_hash, len(prefix) + (entries[-1].end if entries else 0))


def _with_hashes(md: dict[str, str] | None, hashes: bool, model: str, legacy: str) -> dict[str, str] | None:
    """``md`` with the two hash keys set (kept in place when present, else appended), or as is without hashes."""
    if not hashes:
        return md
    return {**(md or {}), MODEL_HASH_KEY: model, LEGACY_HASH_KEY: legacy}


def _training(md: Mapping[str, str] | None) -> dict[str, str]:
    """The ``ss_*`` keys: the metadata of the serialisation sd-scripts takes the legacy hash over."""
    return {k: v for k, v in (md or {}).items() if k.startswith("ss_")}


def rewrite_metadata(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    metadata: Mapping[str, str],
    *,
    force: bool = False,
    hashes: bool = True,
    before_commit: Callable[[], object] | None = None,
) -> WrittenFile:
    """Write ``src`` to ``dest`` with ``metadata`` as its whole ``__metadata__``, copying the data region byte for
    byte in one streamed pass. ``dest`` may be ``src`` (in-place edit, atomic); another existing ``dest`` is
    refused unless ``force`` (also one created meanwhile by another program). With ``hashes``,
    ``sshs_model_hash``/``sshs_legacy_hash`` are recomputed from the copied bytes (the tensor order and bytes of
    ``src`` are kept). ``before_commit`` runs once the new file is complete, just before it takes ``dest``'s name.

    ``dest``'s lock is held from the read of ``src`` to the end, so edits by several lbw processes never undo
    each other: an in-place edit (or ``force``) waits for another lbw writing ``dest``, a new ``dest`` is an
    OutputError at once when another lbw writes it.

    >>> rewrite_metadata("a.safetensors", "a.safetensors", {"ss_output_name": "a", "ssmd_author": "me"}).path
    PosixPath('a.safetensors')
    """
    src, dest = Path(src), Path(dest)
    in_place = _same_file(src, dest)
    with target_lock(dest, wait=LOCK_WAIT_S if in_place or force else 0.0):
        return _rewrite_locked(src, dest, metadata, in_place=in_place, force=force, hashes=hashes,
                               before_commit=before_commit)


def _rewrite_locked(
    src: Path,
    dest: Path,
    metadata: Mapping[str, str],
    *,
    in_place: bool,
    force: bool,
    hashes: bool,
    before_commit: Callable[[], object] | None,
) -> WrittenFile:
    header = read_header(src)
    if not in_place:
        _check_dest(dest, force)
    entries = sorted(header.tensors.values(), key=lambda info: (info.begin, info.end))
    md = check_metadata(metadata)
    if hashes:  # placeholders of the final length; the header is rewritten once the hashes are known
        md = {**md, MODEL_HASH_KEY: "0" * 64, LEGACY_HASH_KEY: "0" * 8}
    prefix = encode_header(entries, md)
    with (
        open(src, "rb") as source,
        atomic_path(dest, replace=in_place or force, before_commit=before_commit) as tmp,
        open(tmp, "wb") as out,
    ):
        out.write(prefix)
        digest = _copy_data(source, out, header.data_start, header.data_size, src)
        if hashes:
            training = {k: v for k, v in md.items() if k.startswith("ss_")}
            legacy = legacy_slice_hash(
                encode_header(entries, training), _file_reader(source, header.data_start)
            )
            md = {**md, MODEL_HASH_KEY: digest, LEGACY_HASH_KEY: legacy}
            final = encode_header(entries, md)
            if len(final) != len(prefix):  # cannot happen: hashes have fixed lengths
                raise OutputError(
                    "internal error: header length changed while setting hashes", where=str(dest)
                )
            out.seek(0)
            out.write(final)
    return WrittenFile(
        dest,
        md.get(MODEL_HASH_KEY) if hashes else None,
        md.get(LEGACY_HASH_KEY) if hashes else None,
        len(prefix) + header.data_size,
    )


def _check_dest(dest: Path, force: bool) -> None:
    if dest.is_dir():
        raise OutputError("is a folder, expected a file path", where=str(dest))
    if dest.exists() and not force:
        raise OutputError("already exists; use --force (force=True) to overwrite it", where=str(dest))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _copy_data(source, out, start: int, size: int, src: Path) -> str:
    """Copy ``size`` bytes from ``source`` at ``start`` to ``out``; return their SHA-256."""
    digest = hashlib.sha256()
    source.seek(start)
    copied = 0
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        out.write(chunk)
        copied += len(chunk)
    if copied != size:
        raise OutputError(
            f"read {copied} data bytes, expected {size}; did the file change while copying?", where=str(src)
        )
    return digest.hexdigest()


def _file_reader(source, data_start: int) -> Callable[[int, int], bytes]:
    def read(offset: int, length: int) -> bytes:
        source.seek(data_start + offset)
        return source.read(length)

    return read


def _layout(
    tensors: Mapping[str, torch.Tensor] | LazyTensors,
) -> tuple[list[TensorInfo], list[torch.Tensor] | None]:
    """Header entries, in safetensors' data order, and the contiguous CPU tensors in that order (None for
    ``LazyTensors``: produced while writing)."""
    rows = []
    if isinstance(tensors, LazyTensors):
        for name, (torch_dtype, shape) in tensors.specs.items():
            dtype = _safetensors_dtype(name, torch_dtype)
            shape = tuple(int(size) for size in shape)
            rows.append((DTYPE_ORDER.index(dtype), name, dtype, shape, math.prod(shape) * torch_dtype.itemsize, None))
    else:
        for name, tensor in tensors.items():
            data = _cpu_contiguous(name, tensor)
            dtype = _safetensors_dtype(name, tensor.dtype)
            rows.append((DTYPE_ORDER.index(dtype), name, dtype, tuple(tensor.shape),
                         data.numel() * data.element_size(), data))
    rows.sort(key=lambda row: (row[0], row[1]))
    entries, datas, offset = [], [], 0
    for _, name, dtype, shape, nbytes, data in rows:
        entries.append(TensorInfo(name, dtype, shape, offset, offset + nbytes))
        datas.append(data)
        offset += nbytes
    return entries, None if isinstance(tensors, LazyTensors) else datas


def _safetensors_dtype(name: str, dtype: torch.dtype) -> str:
    found = _TORCH_DTYPES.get(str(dtype))
    if found is None:
        raise OutputError(f"tensor {name!r} has dtype {dtype}, which safetensors files cannot hold")
    return found


def _cpu_contiguous(name: str, tensor: object) -> torch.Tensor:
    """``tensor`` detached, on the CPU and contiguous (copied only where needed)."""
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise OutputError(f"tensor {name!r} is a {type(tensor).__name__}, expected a torch.Tensor")
    data = tensor.detach() if tensor.requires_grad else tensor
    if data.device.type != "cpu":
        data = data.cpu()
    if not data.is_contiguous():
        data = data.contiguous()
    return data


def _produced(tensors: Mapping[str, torch.Tensor] | LazyTensors, entry: TensorInfo) -> torch.Tensor:
    """The tensor of ``entry`` from ``LazyTensors.produce``, refused unless it has the announced dtype and shape."""
    assert isinstance(tensors, LazyTensors)
    data = _cpu_contiguous(entry.name, tensors.produce(entry.name))
    dtype = _TORCH_DTYPES.get(str(data.dtype))
    if dtype != entry.dtype or tuple(data.shape) != entry.shape:
        raise OutputError(f"internal error: tensor {entry.name!r} came as {data.dtype} {list(data.shape)}, "
                          f"announced as {entry.dtype} {list(entry.shape)}")
    return data


def _bytes_of(data: torch.Tensor) -> memoryview:
    """The raw (little-endian) bytes of a contiguous CPU tensor, without a copy. The view does not keep the
    tensor alive: the caller holds it until every use of the view is over."""
    nbytes = data.numel() * data.element_size()
    return memoryview((ctypes.c_char * nbytes).from_address(data.data_ptr())).cast("B")


class _LegacyWindow:
    """Collects the data bytes inside the legacy-hash window of the ``ss_*``-only serialisation (whose
    ``8 + N`` prefix is given), so the legacy hash needs neither a second serialisation nor a re-read."""

    def __init__(self, prefix: bytes) -> None:
        self._size = len(prefix)
        self._begin = max(LEGACY_OFFSET - len(prefix), 0)
        self._end = max(LEGACY_OFFSET + LEGACY_LENGTH - len(prefix), 0)
        self._data = bytearray()

    def capture(self, offset: int, view: memoryview) -> None:
        """Keep the part of ``view`` (data bytes from ``offset``) inside the window; views come in data order."""
        low, high = max(self._begin, offset), min(self._end, offset + view.nbytes)
        if low < high:
            self._data += view[low - offset : high - offset]

    def hexdigest(self, prefix: bytes) -> str:
        """The legacy hash (8 hex) given the final ``ss_*``-only prefix (same length as the first one)."""
        if len(prefix) != self._size:
            raise OutputError("internal error: the ss_* metadata changed length when its final values were set")
        data = bytes(self._data)
        return legacy_slice_hash(prefix, lambda offset, length: data[offset - self._begin :][:length])
