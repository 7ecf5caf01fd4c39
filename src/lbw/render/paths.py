"""Output paths built from outside data stay inside the output folder.

Cell labels (from sheets, presets files, saved plans) and axis values (checkpoint names, which may come from a
server) end up in file and folder names. :func:`safe_component` turns any text into one harmless file-name
component (no separator, no ``..``, no control or reserved characters, bounded length), and :func:`inside` joins
components under a folder and proves, links resolved, that the result lies under it.

Example:
    >>> safe_component("x/../../../escaped")
    'x_escaped'
    >>> inside(Path("out"), "checkpoint_" + safe_component("../../etc"))
    PosixPath('out/checkpoint_etc')
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from lbw.errors import OutputError

_UNSAFE = re.compile(r"(?:[^A-Za-z0-9._-]|\.{2,})+")
_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))})
LIMIT = 80


def safe_component(text: str, *, fallback: str = "item", limit: int = LIMIT, unique: bool = False) -> str:
    """One file-name component made of ``A-Z a-z 0-9 . _ -`` only, never ``.``/``..``, at most ``limit`` chars.

    Runs of other characters (separators, ``..``, ``:``, NUL and control characters, non-ASCII) become one
    ``_``; leading dots and dashes are dropped; Windows device names get a ``_`` prefix. A longer result is cut
    and ends with 8 hex digits of the text's SHA-256; with ``unique`` so does every result that differs from
    ``text``, so that two different texts never share a name.

    Example:
        >>> safe_component("Sub IN04", unique=True)
        'Sub_IN04-adb2abd3'
    """
    cleaned = _UNSAFE.sub("_", text).lstrip(".-")
    cleaned = cleaned.strip("_") or fallback
    if cleaned.split(".")[0].upper() in _RESERVED:
        cleaned = f"_{cleaned}"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    if len(cleaned) > limit:
        return f"{cleaned[: limit - 9]}-{digest}"
    if unique and cleaned != text:
        return f"{cleaned}-{digest}"
    return cleaned


def inside(root: Path, *parts: str) -> Path:
    """``root / parts...``, refusing any part that is not one plain component and any result (links resolved)
    that does not lie under ``root``."""
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\0" in part:
            raise OutputError(f"refusing the output name {part!r}: not a single file name", where=str(root))
    path = root.joinpath(*parts)
    base = root.resolve()
    target = path.resolve()
    if target != base and not target.is_relative_to(base):
        raise OutputError(f"refusing to write {path}: it resolves to {target}, outside the output folder",
                          where=str(root))
    return path
