"""The folders a server may touch, and the one check every path from a browser goes through.

``lbw web`` is started with a workspace, LoRA folders and model folders; a path typed or chosen in the page is
accepted only when it names something inside one of them. ``Roots.check`` refuses, naming the path: a NUL or
control character, a ``..`` component (even one that would land inside), an absolute path outside the folders,
and a symlink (anywhere along the path) whose target lies outside. Relative paths are taken from the first folder
of the kind asked for. The answer is the resolved path (symlinks followed), so what is opened afterwards is what
was checked.

Example:
    >>> roots = Roots(workspace=Path("ws"), loras=(Path("loras"),))
    >>> roots.check("face.safetensors", kind="lora")  # doctest: +SKIP
    PosixPath('/home/me/loras/face.safetensors')
    >>> roots.check("../secret.txt", kind="lora")  # doctest: +SKIP
    Traceback (most recent call last):
    lbw.errors.PathRefused: ../secret.txt: refused: '..' is not allowed in a path
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from lbw.domain.text import printable
from lbw.errors import LbwError

KINDS = ("workspace", "lora", "model")
MAX_PATH = 4096


class PathRefused(LbwError):
    """A path from the page names something outside the folders this server may use."""


@dataclass(frozen=True)
class Roots:
    """The workspace and the LoRA and model folders, resolved once (symlinks followed) when made."""

    workspace: Path
    loras: tuple[Path, ...] = ()
    models: tuple[Path, ...] = ()
    extra: tuple[Path, ...] = field(default=())  # e.g. the web server's upload folder

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", _real(self.workspace))
        object.__setattr__(self, "loras", tuple(_real(p) for p in self.loras))
        object.__setattr__(self, "models", tuple(_real(p) for p in self.models))
        object.__setattr__(self, "extra", tuple(_real(p) for p in self.extra))

    def folders(self, kind: str | None = None) -> tuple[Path, ...]:
        """The folders of one kind (``workspace``, ``lora``, ``model``), or all of them (``None``)."""
        if kind == "workspace":
            return (self.workspace,)
        if kind == "lora":
            return self.loras
        if kind == "model":
            return self.models
        if kind is None:
            return (self.workspace, *self.loras, *self.models, *self.extra)
        raise ValueError(f"unknown folder kind {kind!r}; expected one of {', '.join(KINDS)}")

    def allowed_paths(self) -> list[str]:
        """Every folder as text (for Gradio's ``allowed_paths``)."""
        return [str(p) for p in self.folders()]

    def check(self, path: str | os.PathLike[str], *, kind: str | None = None, must_exist: bool = False) -> Path:
        """The resolved path when it lies inside a folder of ``kind`` (any folder for ``None``), else PathRefused.

        Relative paths start at the first folder of ``kind`` (the workspace for ``None``).
        """
        text = os.fspath(path)
        if not isinstance(text, str):
            raise PathRefused("refused: a path must be text")
        shown = _shown(text)
        if not text.strip():
            raise PathRefused("refused: the path is empty")
        if len(text) > MAX_PATH:
            raise PathRefused(f"refused: a path of {len(text)} characters", where=shown)
        if any(ord(ch) < 32 or ch == "\x7f" for ch in text):
            raise PathRefused("refused: the path contains control characters", where=shown)
        if ".." in PurePath(text.replace("\\", "/")).parts:
            raise PathRefused("refused: '..' is not allowed in a path", where=shown)
        folders = self.folders(kind)
        if not folders:
            raise PathRefused(f"refused: this server was started without a {kind} folder", where=shown)
        candidate = Path(text).expanduser() if text.startswith("~") else Path(text)
        if not candidate.is_absolute():
            candidate = folders[0] / candidate
        try:
            real = candidate.resolve(strict=False)
        except (OSError, RuntimeError) as error:  # a symlink loop
            raise PathRefused(f"refused: cannot resolve the path ({error})", where=shown) from None
        if not any(real == folder or real.is_relative_to(folder) for folder in folders):
            kinds = "folders this server may use" if kind is None else f"{kind} folders of this server"
            raise PathRefused(f"refused: outside the {kinds}", where=shown)
        if must_exist and not real.exists():
            raise PathRefused("not found", where=shown)
        return real

    def contains(self, path: str | os.PathLike[str], kind: str | None = None) -> bool:
        """True when ``check`` would accept ``path``."""
        try:
            self.check(path, kind=kind)
        except PathRefused:
            return False
        return True

    def relative(self, path: Path) -> str:
        """``path`` shown relative to the folder holding it (for lists in the page)."""
        for folder in self.folders():
            if path == folder or path.is_relative_to(folder):
                return path.relative_to(folder).as_posix() or "."
        return path.name

    def walk(self, kind: str, suffixes: Sequence[str], *, limit: int = 5000) -> Iterator[Path]:
        """Files with one of ``suffixes`` under the folders of ``kind``, sorted, each once; symlinks leaving the
        folders are skipped."""
        seen: set[Path] = set()
        for folder in self.folders(kind):
            if not folder.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.lower().endswith(tuple(suffixes)):
                        continue
                    try:
                        real = self.check(Path(dirpath) / name, kind=kind)
                    except PathRefused:
                        continue
                    if real.is_file() and real not in seen:
                        seen.add(real)
                        yield real
                        if len(seen) >= limit:
                            return


def _real(path: Path) -> Path:
    return Path(path).expanduser().resolve(strict=False)


def _shown(text: object) -> str:
    value = str(text)
    return printable(value[:200]) + ("..." if len(value) > 200 else "")
