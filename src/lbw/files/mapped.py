"""Zero-copy tensors of a safetensors file through one private memory map (the fast read path of bake/merge).

``MappedTensors`` maps the whole file once (copy-on-write: nothing is ever written back to the file) and
returns tensors that view the mapped bytes, so reading a tensor costs no copy and no allocation, and writing
an unchanged tensor to another file copies it once, from the page cache. ``data_sha256`` hashes the data
region from the same map (the addnet hash, ``sshs_model_hash``). The header must already be validated
(``read_header``); the map is checked against it (size and header length), so a file replaced in between is
refused rather than misread.

Tensors keep the map alive: ``close`` drops this object's reference and the map is unmapped with the last
tensor. The input file must not be modified while tensors are in use (the same rule as safetensors'
``safe_open``, which maps the file too).

Example:
    >>> header = read_header("style.safetensors")
    >>> with MappedTensors(header) as mapped:
    ...     up = mapped.tensor("lora_unet_mid_block_attentions_0_proj_in.lora_up.weight")
    ...     up.dtype, mapped.data_sha256() == addnet_hash("style.safetensors")
    (torch.float16, True)
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import struct
import sys
from typing import TYPE_CHECKING

from lbw.errors import LoraFileError
from lbw.files.safetensors_header import Header

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import torch

# Linux madvise advice (5.14+): populate the page tables, readable, without copy-on-write (not in Python 3.11's mmap).
_MADV_POPULATE_READ: int | None = getattr(mmap, "MADV_POPULATE_READ", 22) if sys.platform.startswith("linux") else None
# safetensors dtype -> torch dtype attribute.
TORCH_DTYPE_NAMES: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64",
    "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


class MappedTensors:
    """Tensors of one safetensors file, viewed in place in a private memory map.

    Example:
        >>> mapped = MappedTensors(read_header("a.safetensors"))
        >>> mapped.tensors({"lora_up": "m.lora_up.weight"})["lora_up"].shape
        torch.Size([320, 8])
    """

    def __init__(self, header: Header) -> None:
        if sys.byteorder != "little":
            raise LoraFileError("memory-mapped reading needs a little-endian host", where=str(header.path))
        self.header = header
        try:
            with open(header.path, "rb") as stream:
                self._map: mmap.mmap | None = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as error:
            raise LoraFileError(f"cannot map the file: {error}", where=str(header.path)) from None
        if len(self._map) != header.file_size or self._map[:8] != struct.pack("<Q", header.header_size):
            self._map.close()  # no tensor views it yet
            raise LoraFileError("the file changed since its header was read", where=str(header.path))

    def tensor(self, key: str) -> torch.Tensor:
        """The tensor ``key`` as stored (dtype and shape), viewing the mapped bytes (copied only when its offset
        is not aligned to its element size, which safetensors' own writer never produces)."""
        import torch

        info = self.header.tensors.get(key)
        if info is None:
            raise LoraFileError(f"no tensor {key!r}", where=str(self.header.path))
        name = TORCH_DTYPE_NAMES.get(info.dtype)
        if name is None:
            raise LoraFileError(f"tensor {key!r} has dtype {info.dtype}, which lbw cannot compute with",
                                where=str(self.header.path))
        dtype = getattr(torch, name)
        if info.numel == 0:
            return torch.empty(info.shape, dtype=dtype)
        start = self.header.data_start + info.begin
        source = self._buffer()
        if start % dtype.itemsize:
            source, start = bytearray(source[start : start + info.nbytes]), 0
        flat = torch.frombuffer(source, dtype=dtype, count=info.numel, offset=start)
        return flat.reshape(info.shape)

    def tensors(self, keys: Mapping[str, str], roles: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Role -> tensor for a module's ``keys`` (role -> tensor key), all roles or the given ones.

        Example:
            >>> mapped.tensors(module.keys)["alpha"].dtype
            torch.float16
        """
        return {role: self.tensor(keys[role]) for role in (keys if roles is None else roles)}

    def populate(self) -> None:
        """Map every page of the file at once (Linux ``MADV_POPULATE_READ``, no copy): touching the pages one
        by one costs a page fault each, which doubles the time to write the mapped bytes elsewhere. Ignored
        where the kernel lacks it."""
        if _MADV_POPULATE_READ is not None:
            with contextlib.suppress(OSError, ValueError):
                self._buffer().madvise(_MADV_POPULATE_READ)

    def data_sha256(self) -> str:
        """SHA-256 (64 hex) of the data region read from the map: the file's addnet hash. Populates the map
        first (so a hashing thread started early maps the pages for everyone)."""
        self.populate()
        view = memoryview(self._buffer())
        try:
            return hashlib.sha256(view[self.header.data_start :]).hexdigest()
        finally:
            view.release()

    def close(self) -> None:
        """Drop this object's reference to the map; tensors already returned stay valid. The map is never
        closed explicitly: ``torch.frombuffer`` holds a reference to it but no buffer export, so an explicit
        ``mmap.close`` would unmap memory the tensors still use. It is unmapped when the last user goes."""
        self._map = None

    def __enter__(self) -> MappedTensors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _buffer(self) -> mmap.mmap:
        if self._map is None:
            raise LoraFileError("the memory map is closed", where=str(self.header.path))
        return self._map
