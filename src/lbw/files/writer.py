"""Write LoRA files: whole files from tensors (``save_lora``) and header-only rewrites (``rewrite_metadata``).

Both write through ``lbw.files.atomic.atomic_path`` and produce exactly the layout the safetensors library
writes (compact JSON header, ``__metadata__`` first, tensors ordered by dtype then name, header padded with
spaces to a multiple of 8). Both set ``sshs_model_hash`` and ``sshs_legacy_hash`` from the bytes as written,
so the stored hash equals the file's addnet hash. ``rewrite_metadata`` copies the data region byte for byte
(streamed, no tensor decode), so tensor bytes and the addnet hash never change.

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

import hashlib
import json
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lbw.errors import OutputError
from lbw.files.atomic import atomic_path
from lbw.files.hashes import (
    CHUNK,
    LEGACY_HASH_KEY,
    MODEL_HASH_KEY,
    legacy_slice_hash,
    sha256_chunks,
)
from lbw.files.safetensors_header import read_header

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


class HeaderEntry(Protocol):
    """What ``encode_header`` needs of a tensor entry (``safetensors_header.TensorInfo`` fits)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Entry:
    """A tensor entry of a header being written."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class WrittenFile:
    """The result of a write: the path, the hashes stored in it (None when not set) and its size in bytes."""

    path: Path
    model_hash: str | None
    legacy_hash: str | None
    size: int


def encode_header(entries: Sequence[HeaderEntry], metadata: Mapping[str, str] | None) -> bytes:
    """The first ``8 + N`` bytes of a safetensors file: little-endian N, then the compact JSON header padded
    with spaces to a multiple of 8, as the safetensors library writes it. ``entries`` in data order; no
    ``__metadata__`` object when ``metadata`` is None.

    >>> encode_header([Entry("a", "F16", (2,), 0, 4)], {"k": "v"})[8:]
    b'{"__metadata__":{"k":"v"},"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}      '
    """
    document: dict[str, Any] = {} if metadata is None else {"__metadata__": dict(metadata)}
    for entry in entries:
        document[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [entry.begin, entry.end],
        }
    try:
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as error:
        raise OutputError(f"metadata holds text that is not valid Unicode ({error.reason})") from None
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


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
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None,
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    hashes: bool = True,
) -> WrittenFile:
    """Write ``tensors`` and ``metadata`` to ``dest`` atomically; with ``hashes`` set ``sshs_model_hash`` and
    ``sshs_legacy_hash`` computed from the bytes written (legacy: over the ``ss_*``-only serialisation, as
    sd-scripts does). Refuses an existing ``dest`` unless ``force`` (OutputError).

    >>> save_lora(tensors, {"ss_network_dim": "8"}, "out.safetensors").model_hash[:12]
    '5d41402abc4b'
    """
    dest = Path(dest)
    _check_dest(dest, force)
    md = check_metadata(metadata) if metadata is not None else None
    entries, views = _layout(tensors)
    model_hash = legacy = None
    if hashes:
        model_hash = sha256_chunks(views)
        training = {k: v for k, v in (md or {}).items() if k.startswith("ss_")}
        legacy = legacy_slice_hash(encode_header(entries, training), _memory_reader(entries, views))
        md = {**(md or {}), MODEL_HASH_KEY: model_hash, LEGACY_HASH_KEY: legacy}
    prefix = encode_header(entries, md)
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        out.write(prefix)
        for view in views:
            out.write(view)
    return WrittenFile(dest, model_hash, legacy, len(prefix) + sum(v.nbytes for v in views))


def rewrite_metadata(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    metadata: Mapping[str, str],
    *,
    force: bool = False,
    hashes: bool = True,
) -> WrittenFile:
    """Write ``src`` to ``dest`` with ``metadata`` as its whole ``__metadata__``, copying the data region
    byte for
    byte in one streamed pass. ``dest`` may be ``src`` (in-place edit, atomic); another existing ``dest`` is
    refused unless ``force``. With ``hashes``, ``sshs_model_hash``/``sshs_legacy_hash`` are recomputed from
    the
    copied bytes (the tensor order and bytes of ``src`` are kept).

    >>> rewrite_metadata("a.safetensors", "a.safetensors", {"ss_output_name": "a", "ssmd_author": "me"}).path
    PosixPath('a.safetensors')
    """
    src, dest = Path(src), Path(dest)
    header = read_header(src)
    if not _same_file(src, dest):
        _check_dest(dest, force)
    entries = sorted(header.tensors.values(), key=lambda info: (info.begin, info.end))
    md = check_metadata(metadata)
    if hashes:  # placeholders of the final length; the header is rewritten once the hashes are known
        md = {**md, MODEL_HASH_KEY: "0" * 64, LEGACY_HASH_KEY: "0" * 8}
    prefix = encode_header(entries, md)
    with open(src, "rb") as source, atomic_path(dest) as tmp, open(tmp, "wb") as out:
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


def _layout(tensors: Mapping[str, torch.Tensor]) -> tuple[list[Entry], list[memoryview]]:
    """Header entries and raw little-endian bytes of ``tensors``, in safetensors' data order."""
    import torch

    rows = []
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise OutputError(f"tensor {name!r} is a {type(tensor).__name__}, expected a torch.Tensor")
        dtype = _TORCH_DTYPES.get(str(tensor.dtype))
        if dtype is None:
            raise OutputError(
                f"tensor {name!r} has dtype {tensor.dtype}, which safetensors files cannot hold"
            )
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        rows.append((DTYPE_ORDER.index(dtype), name, dtype, tuple(tensor.shape), flat))
    rows.sort(key=lambda row: (row[0], row[1]))
    entries, views, offset = [], [], 0
    for _, name, dtype, shape, flat in rows:
        view = memoryview(flat.view(torch.uint8).numpy()).cast("B")
        entries.append(Entry(name, dtype, shape, offset, offset + view.nbytes))
        views.append(view)
        offset += view.nbytes
    return entries, views


def _memory_reader(entries: Sequence[Entry], views: Sequence[memoryview]) -> Callable[[int, int], bytes]:
    def read(offset: int, length: int) -> bytes:
        stop, parts = offset + length, []
        for entry, view in zip(entries, views, strict=True):
            if entry.end > offset and entry.begin < stop:
                parts.append(bytes(view[max(offset - entry.begin, 0) : min(stop, entry.end) - entry.begin]))
        return b"".join(parts)

    return read
