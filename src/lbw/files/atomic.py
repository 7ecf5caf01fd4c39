"""Atomic writes: every file lbw writes goes through here (temp file, fsync, rename).

A crash or Ctrl-C mid-write leaves the destination untouched and no partial file behind.

Example:
    >>> with atomic_path("out.safetensors") as tmp:
    ...     save_file(tensors, tmp)           # write anything to tmp
    >>> write_text_atomic("sheet.toml", text)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lbw.errors import OutputError


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success fsync it and rename it over ``dest``.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``dest`` is unchanged.
    """
    dest = Path(dest)
    directory = dest.parent if str(dest.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"folder {directory} does not exist", where=str(dest))
    if dest.is_dir():
        raise OutputError("is a folder; expected a file name", where=str(dest))
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise OutputError(f"cannot write into {directory}: {error.strerror}", where=str(dest)) from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the result the mode a plain open() would (or the replaced file's mode).
    os.chmod(tmp, dest.stat().st_mode & 0o7777 if dest.exists() else 0o666 & ~_umask())
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        try:
            os.replace(tmp, dest)
        except OSError as error:
            raise OutputError(f"cannot write: {error.strerror}", where=str(dest)) from None
        _fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(dest: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``dest`` atomically (newlines kept as given)."""
    write_bytes_atomic(dest, text.encode("utf-8"))


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
