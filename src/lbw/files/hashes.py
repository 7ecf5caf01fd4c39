"""The hashes LoRA tools store and show: addnet (``sshs_model_hash``), legacy (``sshs_legacy_hash``), file.

- addnet hash: SHA-256 of the data region (bytes after ``8 + N``), 64 lowercase hex; metadata cannot
  change it.
- legacy hash: first 8 hex of SHA-256 over bytes [1 MiB, 1 MiB + 64 KiB) of the file (old webui
  ``model_hash``).
- sd-scripts and the Additional Networks editor compute the legacy hash over a re-serialisation holding only
  the ``ss_*`` metadata (``ss_only_legacy_hash``); the editor uses the plain file slice when every key is
  ``ss_*`` (``addnet_legacy_hash``).

Everything is streamed in 1 MiB chunks; headers are read and validated by ``safetensors_header.read_header``.

Example:
    >>> stored_and_computed("style.safetensors")
    {'stored': '3f1c…', 'computed': '3f1c…', 'legacy_stored': '9a0b12cd', 'legacy_computed': '9a0b12cd'}
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from lbw.errors import LoraFileError
from lbw.files.header_encoding import encode_header
from lbw.files.safetensors_header import Header, read_header

CHUNK = 1 << 20
LEGACY_OFFSET = 0x100000
LEGACY_LENGTH = 0x10000
MODEL_HASH_KEY = "sshs_model_hash"
LEGACY_HASH_KEY = "sshs_legacy_hash"


def addnet_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 (64 hex) of the data region of a safetensors file: the value of ``sshs_model_hash``.

    >>> addnet_hash("style.safetensors")[:12]
    '3f1c0a9b5e77'
    """
    header = read_header(path)
    return _sha256_file(Path(path), header.data_start)


def legacy_hash(path: str | os.PathLike[str]) -> str:
    """First 8 hex of SHA-256 over the file's bytes [0x100000, 0x110000) (empty slice for small files).

    >>> legacy_hash("tiny.safetensors")   # shorter than 1 MiB: hash of nothing
    'e3b0c442'
    """
    with _open(Path(path)) as stream:
        stream.seek(LEGACY_OFFSET)
        return hashlib.sha256(stream.read(LEGACY_LENGTH)).hexdigest()[:8]


def ss_only_legacy_hash(path: str | os.PathLike[str], header: Header | None = None) -> str:
    """Legacy hash of the file re-serialised with only its ``ss_*`` metadata (how sd-scripts computes
    ``sshs_legacy_hash`` at save time). Only the header is rebuilt; data bytes are read from the file.

    >>> ss_only_legacy_hash("style.safetensors")
    '9a0b12cd'
    """
    header = header or read_header(path)
    training = {k: v for k, v in header.metadata.items() if k.startswith("ss_")}
    entries = sorted(header.tensors.values(), key=lambda info: info.begin)
    prefix = encode_header(entries, training)
    with _open(Path(path)) as stream:

        def read_data(offset: int, length: int) -> bytes:
            stream.seek(header.data_start + offset)
            return stream.read(length)

        return legacy_slice_hash(prefix, read_data)


def addnet_legacy_hash(path: str | os.PathLike[str]) -> str:
    """The legacy hash the Additional Networks editor writes: over the ``ss_*``-only re-serialisation when
    the file has any other key, else over the plain file slice."""
    header = read_header(path)
    if all(key.startswith("ss_") for key in header.metadata):
        return legacy_hash(path)
    return ss_only_legacy_hash(path, header)


def full_file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (64 hex) of the whole file (webui "new" checkpoint hash)."""
    return _sha256_file(Path(path), 0)


def stored_and_computed(path: str | os.PathLike[str]) -> dict[str, str | None]:
    """Stored ``sshs_*`` hashes next to the values computed from the file (None where nothing is stored).

    ``computed`` is the addnet hash; ``legacy_computed`` follows the Additional Networks rule
    (``addnet_legacy_hash``), which is what sd-scripts stores in ``sshs_legacy_hash``.
    """
    header = read_header(path)
    return {
        "stored": header.metadata.get(MODEL_HASH_KEY),
        "computed": _sha256_file(Path(path), header.data_start),
        "legacy_stored": header.metadata.get(LEGACY_HASH_KEY),
        "legacy_computed": addnet_legacy_hash(path),
    }


def short_hash(value: str) -> str:
    """The 12-hex short form A1111 and Additional Networks show (``Name(abcdef012345)``)."""
    return value[:12]


def legacy_slice_hash(prefix: bytes, read_data: Callable[[int, int], bytes]) -> str:
    """Legacy hash of a buffer made of ``prefix`` (8-byte length + header) followed by a data region.

    ``read_data(offset, length)`` returns bytes of the data region (fewer at its end).

    >>> legacy_slice_hash(b"x" * 16, lambda offset, length: b"")
    'e3b0c442'
    """
    start, stop = LEGACY_OFFSET, LEGACY_OFFSET + LEGACY_LENGTH
    piece = prefix[start:stop]
    if len(prefix) < stop:
        begin = max(start - len(prefix), 0)
        piece += read_data(begin, stop - len(prefix) - begin)
    return hashlib.sha256(piece).hexdigest()[:8]


def sha256_chunks(chunks: Iterable[bytes | memoryview]) -> str:
    """SHA-256 (64 hex) over an iterable of bytes-like chunks."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as error:
        raise LoraFileError(f"cannot read: {error.strerror}", where=str(path)) from None


def _sha256_file(path: Path, start: int) -> str:
    digest = hashlib.sha256()
    with _open(path) as stream:
        stream.seek(start)
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
