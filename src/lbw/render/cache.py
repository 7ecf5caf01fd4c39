"""Content cache of rendered cells: the key is a hash of everything that determines the image.

Key parts: backend, model hash, LoRA hashes and strengths, the effective block weights, seed and settings.
Each finished cell is written atomically as ``<key>.png`` right away, so an interrupted run resumes where it
stopped and a re-run renders only what changed.

Example:
    >>> cache = CellCache(Path("out/cache"))
    >>> key = cache_key({"model": "ab12", "seed": 1, "weights": [1, 0.5]})
    >>> cache.get(key) is None
    True
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from lbw.errors import RenderError
from lbw.files.atomic import write_bytes_atomic, write_text_atomic
from lbw.render.grid import png_bytes

_HASH_MEMO = "file-hashes.json"
_CHUNK = 1 << 20


def cache_key(parts: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``parts`` (sorted keys, floats as JSON numbers)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class CellCache:
    """A folder of ``<key>.png`` cell images plus a memo of file hashes (path, size, mtime -> sha256)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        """Where the image of ``key`` lives (whether or not it exists)."""
        return self.folder / f"{key}.png"

    def get(self, key: str) -> Path | None:
        """The cached image path for ``key``, or None when it was never rendered."""
        path = self.path_for(key)
        return path if path.is_file() else None

    def put(self, key: str, image: Image.Image, text: Mapping[str, str] | None = None) -> Path:
        """Store ``image`` under ``key`` atomically and return its path."""
        path = self.path_for(key)
        write_bytes_atomic(path, png_bytes(image, text))
        return path

    def file_hash(self, path: str | Path) -> str:
        """SHA-256 of a file's (or a folder's files') contents, memoised by path, size and mtime.

        A diffusers folder hashes every file's relative path and bytes in sorted order.
        """
        path = Path(path).resolve()
        if not path.exists():
            raise RenderError("file not found", where=str(path))
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        stamp = [
            [str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns]
            for p in files
        ]
        memo = self._read_memo()
        entry = memo.get(str(path))
        if entry and entry.get("stamp") == stamp:
            return str(entry["sha256"])
        digest = hashlib.sha256()
        for p, (name, _, _) in zip(files, stamp, strict=True):
            if path.is_dir():
                digest.update(name.encode("utf-8") + b"\0")
            with open(p, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
        value = digest.hexdigest()
        memo[str(path)] = {"stamp": stamp, "sha256": value}
        write_text_atomic(self.folder / _HASH_MEMO, json.dumps(memo, indent=1))
        return value

    def _read_memo(self) -> dict[str, Any]:
        try:
            data = json.loads((self.folder / _HASH_MEMO).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}


def link_or_copy(source: Path, dest: Path) -> Path:
    """Make ``dest`` show ``source``'s bytes: a hard link when possible, else an atomic copy."""
    if dest.exists():
        dest.unlink()
    try:
        os.link(source, dest)
    except OSError:
        write_bytes_atomic(dest, source.read_bytes())
    return dest
