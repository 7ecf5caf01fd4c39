"""Checks shared by ``lbw bake`` and ``lbw merge`` before and while they write: the destination, its lock, the
inputs (only exactly transformable files) and the output dtype.

- ``check_destination``: never an input (also through links, even with ``force``), never a folder, never an
  existing file without ``force``, always a ``.safetensors`` name. Run before the lock and again under it.
- ``output_lock``: held for the whole bake or merge, so two runs writing one new output never both succeed.
- ``refuse_unsupported``: OFT, GLoRA and unknown keys are refused, never dropped or copied blindly.
- ``torch_dtype``: ``--dtype`` (``fp16``/``bf16``/``fp32``) as a torch dtype.

Example:
    >>> check_destination(Path("out.safetensors"), [Path("face.safetensors")], force=False)
    >>> with output_lock(Path("out.safetensors"), force=False):
    ...     torch_dtype("fp16")
    torch.float16
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from lbw.errors import LoraFileError, OutputError
from lbw.files.lora_file import LoraFile

if TYPE_CHECKING:
    import torch

OUTPUT_DTYPES = ("fp16", "bf16", "fp32")


def check_destination(dest: Path, sources: Iterable[Path], *, force: bool) -> None:
    """Refuse an output that is one of the inputs (also through links, even with force) or exists without force.

    Example:
        >>> check_destination(Path("a.safetensors"), [Path("./a.safetensors")], force=True)
        Traceback (most recent call last):
        lbw.errors.OutputError: a.safetensors: is an input file; lbw never overwrites its input
    """
    for source in sources:
        if _same_file(source, dest):
            raise OutputError("is an input file; lbw never overwrites its input, choose another output",
                              where=str(dest))
    if dest.is_dir():
        raise OutputError("is a folder, expected a file path", where=str(dest))
    if dest.exists() and not force:
        raise OutputError("already exists; use --force to overwrite it", where=str(dest))
    if not dest.name.lower().endswith(".safetensors"):
        raise OutputError("the output must be a .safetensors file", where=str(dest))


def output_lock(dest: Path, *, force: bool) -> contextlib.AbstractContextManager[Path]:
    """The lock of ``dest``, held for a whole bake or merge: another lbw writing ``dest`` is an OutputError at
    once, or, with ``force`` (an overwrite was asked for anyway), awaited for up to ``LOCK_WAIT_S`` seconds.

    Example:
        >>> with output_lock(Path("out.safetensors"), force=False):
        ...     pass
    """
    from lbw.files.locks import LOCK_WAIT_S, target_lock

    return target_lock(dest, wait=LOCK_WAIT_S if force else 0.0)


def refuse_unsupported(lora: LoraFile) -> None:
    """Refuse files with modules or keys lbw cannot transform exactly (OFT, GLoRA, unknown keys).

    Example:
        >>> refuse_unsupported(LoraFile.open("oft.safetensors"))
        Traceback (most recent call last):
        lbw.errors.LoraFileError: oft.safetensors: module lora_unet_... cannot be transformed exactly: ...
    """
    if lora.unsupported:
        module = lora.unsupported[0]
        more = f" (and {len(lora.unsupported) - 1} more)" if len(lora.unsupported) > 1 else ""
        raise LoraFileError(f"module {module.name}{more} cannot be transformed exactly: {module.reason}",
                            where=str(lora.path))
    if lora.unrecognized_keys:
        raise LoraFileError(f"tensor key {lora.unrecognized_keys[0]!r} belongs to no known adapter module; "
                            "lbw will not drop or copy it blindly", where=str(lora.path))


def torch_dtype(name: str | None) -> torch.dtype | None:
    """``fp16``/``bf16``/``fp32`` → torch dtype (None keeps each tensor's stored dtype).

    Example:
        >>> torch_dtype("bf16")
        torch.bfloat16
    """
    if name is None:
        return None
    import torch

    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    key = name.lower()
    if key not in table:
        raise OutputError(f"unknown output dtype {name!r}; expected {', '.join(OUTPUT_DTYPES)}")
    return table[key]


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
