"""Encode the first ``8 + N`` bytes of a safetensors file exactly as the safetensors library writes them.

Shared by the writer (headers of new files) and the hashes (the ``ss_*``-only re-serialisation the legacy hash is
taken over), so neither needs the other: compact JSON, ``__metadata__`` first, entries in data order, padded with
spaces to a multiple of 8, preceded by the little-endian length.

Example:
    >>> encode_header([TensorInfo("a", "F16", (2,), 0, 4)], {"k": "v"})[:8]
    b'P\\x00\\x00\\x00\\x00\\x00\\x00\\x00'
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from lbw.errors import OutputError
from lbw.files.safetensors_header import TensorInfo


def encode_header(entries: Sequence[TensorInfo], metadata: Mapping[str, str] | None) -> bytes:
    """The first ``8 + N`` bytes of a safetensors file: little-endian N, then the compact JSON header padded
    with spaces to a multiple of 8, as the safetensors library writes it. ``entries`` in data order; no
    ``__metadata__`` object when ``metadata`` is None.

    >>> encode_header([TensorInfo("a", "F16", (2,), 0, 4)], {"k": "v"})[8:]
    b'{"__metadata__":{"k":"v"},"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}      '
    """
    return HeaderEncoder(entries).encode(metadata)


class HeaderEncoder:
    """Encodes headers for one set of entries with different metadata, serialising the entries once (a LoRA
    header is mostly entries; the writer needs it with placeholder, ``ss_*``-only and final metadata).

    >>> encoder = HeaderEncoder([TensorInfo("a", "F16", (2,), 0, 4)])
    >>> encoder.encode({"k": "v"}) == encode_header([TensorInfo("a", "F16", (2,), 0, 4)], {"k": "v"})
    True
    """

    def __init__(self, entries: Sequence[TensorInfo]) -> None:
        # The members text, exactly as json.dumps writes {name: {"dtype", "shape", "data_offsets"}} compactly;
        # built as strings because thousands of small dicts and lists would only feed the garbage collector.
        self._entries = ",".join(
            f'{_json(entry.name)}:{{"dtype":{_json(entry.dtype)},"shape":[{",".join(map(str, entry.shape))}],'
            f'"data_offsets":[{entry.begin},{entry.end}]}}'
            for entry in entries
        )

    def encode(self, metadata: Mapping[str, str] | None) -> bytes:
        """``8 + N`` header bytes with ``metadata`` as ``__metadata__`` (none when None)."""
        members = [] if metadata is None else ['"__metadata__":' + _json(dict(metadata))]
        if self._entries:
            members.append(self._entries)
        try:
            text = ("{" + ",".join(members) + "}").encode("utf-8")
        except UnicodeEncodeError as error:
            raise OutputError(f"metadata holds text that is not valid Unicode ({error.reason})") from None
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text


def _json(value: Any) -> str:
    """Compact JSON as the safetensors library writes it (non-ASCII kept as is)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
