"""Read and validate a safetensors header without touching the tensor data.

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of UTF-8 JSON + the data region. ``read_header``
reads exactly ``8 + N`` bytes and checks everything a later tensor read relies on: the header length against the
file size, JSON and UTF-8, string-only metadata, known dtypes, shapes and offsets of plain non-negative integers
below 2**63, and data offsets that stay inside the data region, do not overlap or leave gaps, and match
``numel x dtype size``. Hostile but valid JSON is refused with one line too (``lbw.files.json_text``): deep
nesting, integers past Python's digit limit, keys repeated with different values, unpaired UTF-16 surrogates.
Pickle-based checkpoints are refused, never loaded. Messages show header values shortened (``preview``).

Example:
    >>> header = read_header("style.safetensors")
    >>> header.metadata.get("ss_network_dim"), len(header.tensors)
    ('8', 792)
    >>> header.tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"].shape
    ()
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lbw.errors import LoraFileError
from lbw.files.json_text import load_json, preview, quoted

# Header sizes above this are refused as absurd (real LoRA headers are well under 10 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024
# Shape dimensions and offsets must be below this (torch sizes and file offsets are signed 64-bit).
MAX_COUNT = 2**63

# Bits per element of every safetensors dtype (sub-byte float formats included).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

# Extensions of pickle-based checkpoints: loading them can run arbitrary code, so lbw never does.
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of the header: dtype name, shape and byte range relative to the data region."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        """Number of elements (1 for a scalar)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Size of the tensor's bytes in the data region."""
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A validated safetensors header.

    ``tensors`` keeps the header's key order; ``data_start`` is the absolute file offset of the data region.
    """

    path: Path
    metadata: Mapping[str, str]
    tensors: Mapping[str, TensorInfo]
    header_size: int
    data_start: int
    file_size: int

    @property
    def data_size(self) -> int:
        """Size of the data region in bytes."""
        return self.file_size - self.data_start


def read_header(path: str | os.PathLike[str]) -> Header:
    """Read and validate the header of the safetensors file at ``path`` (reads ``8 + N`` bytes only).

    Example:
        >>> read_header("lora.safetensors").metadata["ss_base_model_version"]
        'sdxl_base_v1-0'
    """
    path = Path(path)
    where = str(path)
    refuse_pickle(path)
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            return read_header_from(stream, size, path)
    except FileNotFoundError:
        raise LoraFileError("file not found", where=where) from None
    except IsADirectoryError:
        raise LoraFileError("is a folder, expected a .safetensors file", where=where) from None
    except PermissionError:
        raise LoraFileError("permission denied", where=where) from None


def read_header_from(stream: BinaryIO, file_size: int, path: Path) -> Header:
    """Validate the header read from ``stream`` (positioned at 0) of a file of ``file_size`` bytes.

    Reads exactly ``8 + N`` bytes. ``path`` only names the file in errors and in the result.

    Example:
        >>> with open("a.safetensors", "rb") as f:
        ...     header = read_header_from(f, os.fstat(f.fileno()).st_size, Path("a.safetensors"))
    """
    where = str(path)
    if file_size < 8:
        raise LoraFileError(f"truncated: {file_size} bytes, a safetensors file starts with an 8-byte "
                            "header length", where=where)
    prefix = stream.read(8)
    if len(prefix) != 8:
        raise LoraFileError("truncated: could not read the 8-byte header length", where=where)
    (header_size,) = struct.unpack("<Q", prefix)
    if header_size > MAX_HEADER_BYTES or 8 + header_size > file_size:
        _refuse_pickle_magic(prefix, where)
    if header_size > MAX_HEADER_BYTES:
        raise LoraFileError(f"header length {header_size} bytes is absurd (limit {MAX_HEADER_BYTES}); "
                            "not a safetensors file?", where=where)
    if 8 + header_size > file_size:
        raise LoraFileError(f"header length {header_size} bytes runs past the end of the file "
                            f"({file_size} bytes); truncated or not a safetensors file", where=where)
    raw = stream.read(header_size)
    if len(raw) != header_size:
        raise LoraFileError(f"truncated: read {len(raw)} of {header_size} header bytes", where=where)
    entries = _parse_json(raw, where)
    metadata = _parse_metadata(entries.pop("__metadata__", None), where)
    data_start = 8 + header_size
    tensors = {name: _parse_tensor(name, entry, where) for name, entry in entries.items()}
    _check_layout(tensors, file_size - data_start, where)
    return Header(path, metadata, tensors, header_size, data_start, file_size)


def refuse_pickle(path: Path) -> None:
    """Raise LoraFileError for pickle checkpoints (``.ckpt``, ``.pt``, ``.pth``, ``.bin``); lbw never unpickles.

    Example:
        >>> refuse_pickle(Path("old.ckpt"))
        Traceback (most recent call last):
        lbw.errors.LoraFileError: old.ckpt: is a pickle checkpoint (.ckpt) ...
    """
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise LoraFileError(
            f"is a pickle checkpoint ({suffix}); lbw never unpickles files because loading a pickle can run "
            "arbitrary code. Convert it to .safetensors first with a trusted tool",
            where=str(path),
        )


def _refuse_pickle_magic(prefix: bytes, where: str) -> None:
    if prefix.startswith(b"PK\x03\x04") or prefix[:1] == b"\x80":
        raise LoraFileError("looks like a PyTorch pickle/zip checkpoint, not safetensors; lbw never unpickles "
                            "files: convert it to .safetensors first", where=where)


def _parse_json(raw: bytes, where: str) -> dict[str, object]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LoraFileError(f"header is not valid UTF-8 (byte {error.start})", where=where) from None
    entries = load_json(text, where=where, what="header")
    if not isinstance(entries, dict):
        raise LoraFileError(f"header must be a JSON object, found {type(entries).__name__}", where=where)
    return entries


def _parse_metadata(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LoraFileError(f"__metadata__ must be an object of strings, found {type(value).__name__}",
                            where=where)
    for key, item in value.items():
        if not isinstance(item, str):
            raise LoraFileError(f"metadata value of {quoted(key)} must be a string, found {type(item).__name__}",
                                where=where)
    return dict(value)


def _parse_tensor(name: str, entry: object, where: str) -> TensorInfo:
    def fail(problem: str) -> LoraFileError:
        return LoraFileError(f"tensor {quoted(name)}: {problem}", where=where)

    if not isinstance(entry, dict):
        raise fail(f"entry must be an object, found {type(entry).__name__}")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise fail(f"unknown dtype {preview(dtype)}; expected one of {', '.join(sorted(DTYPE_BITS))}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise fail(f"shape must be a list of non-negative integers below 2**63, found {preview(shape)}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets)
            or offsets[0] > offsets[1]):
        raise fail(f"data_offsets must be [begin, end] with 0 <= begin <= end < 2**63, found {preview(offsets)}")
    info = TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])
    bits = info.numel * DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != info.nbytes:
        raise fail(f"shape {preview(list(info.shape))} x {dtype} needs {_bytes_text(bits)} bytes but data_offsets "
                   f"span {info.nbytes}")
    return info


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNT


def _bytes_text(bits: int) -> str:
    """``bits / 8`` exactly, also for products of many huge dimensions (no float conversion)."""
    whole = bits // 8
    text = str(whole) if whole.bit_length() < 128 else preview(whole)
    return text + {0: "", 2: ".25", 4: ".5", 6: ".75"}.get(bits % 8, f" and {bits % 8} bits")


def _check_layout(tensors: Mapping[str, TensorInfo], data_size: int, where: str) -> None:
    """Offsets must tile the data region: inside it, no overlap, no gap, nothing after the last tensor."""
    position, previous = 0, None
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.end > data_size:
            raise LoraFileError(f"tensor {quoted(info.name)}: data_offsets [{info.begin}, {info.end}] run past the "
                                f"data region ({data_size} bytes); file truncated?", where=where)
        if info.begin < position:
            raise LoraFileError(f"tensor {quoted(info.name)}: data_offsets [{info.begin}, {info.end}] overlap "
                                f"tensor {quoted(previous or '')}", where=where)
        if info.begin > position:
            raise LoraFileError(f"tensor {quoted(info.name)}: gap of {info.begin - position} bytes before its "
                                "data; offsets must be contiguous", where=where)
        position, previous = info.end, info.name
    if position != data_size:
        raise LoraFileError(f"data region has {data_size - position} bytes after the last tensor; header and "
                            "data disagree", where=where)
