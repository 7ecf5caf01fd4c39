"""Atomic writes: every file lbw writes goes through here (temporary file, fsync, rename).

A crash or Ctrl-C mid-write leaves the destination untouched. The temporary file beside it names its writer
(``lbw.files.stale``) and is locked while written, so one that a SIGKILL or a power cut leaves behind is removed
by the next lbw write into that folder (logged as a warning on the ``lbw.files`` logger, which the CLI prints
as a note). Writing through a symbolic link writes the file it points to and keeps the link.

With ``replace=False`` the final step never replaces anything: ``renameat2(RENAME_NOREPLACE)`` where the system
has it, else a hard link then the unlink of the temporary name; if the destination appeared meanwhile (another
program made it) the result is discarded with an OutputError and the other file is kept.

Example:
    >>> with atomic_path("out.safetensors", replace=False) as tmp:
    ...     save_file(tensors, tmp)           # write anything to tmp
    >>> write_text_atomic("sheet.toml", text)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from lbw.errors import OutputError
from lbw.files.locks import resolve_target
from lbw.files.stale import clean_stale_temps, temp_name

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def atomic_path(
    dest: str | os.PathLike[str],
    *,
    replace: bool = True,
    before_commit: Callable[[], object] | None = None,
) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success fsync it and move it to ``dest``.

    ``replace=False``: an existing ``dest`` is never replaced, even one created while the temporary file was
    written (OutputError). ``before_commit`` runs once the temporary file is complete and synced, just before
    the final step (e.g. to keep a backup only when the write has succeeded). On any exception
    (KeyboardInterrupt included) the temporary file is removed and ``dest`` is unchanged. Stale temporary files
    of interrupted lbw runs in the folder are removed first (``lbw.files.stale.clean_stale_temps``).
    """
    dest = resolve_target(dest)
    directory = dest.parent if str(dest.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"folder {directory} does not exist", where=str(dest))
    if dest.is_dir():
        raise OutputError("is a folder; expected a file name", where=str(dest))
    if not replace and os.path.lexists(dest):
        raise OutputError("already exists; use --force to overwrite it", where=str(dest))
    clean_stale_temps(directory)
    fd, tmp = _create_temp(directory, dest)
    try:
        # A new file gets the mode a plain open() would give it; a replaced file keeps its own.
        os.chmod(tmp, dest.stat().st_mode & 0o7777 if dest.exists() else 0o666 & ~_umask())
        yield tmp
        with open(tmp, "rb+") as handle:  # reopened: the caller may have replaced the file at tmp
            os.fsync(handle.fileno())
        if before_commit is not None:
            before_commit()
        if replace:
            try:
                os.replace(tmp, dest)
            except OSError as error:
                raise OutputError(f"cannot write: {error.strerror}", where=str(dest)) from None
        else:
            _move_no_replace(tmp, dest)
        _fsync_dir(directory)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(error, OSError) and error.errno in _WRITE_ERRORS and error.filename in (None, str(tmp)):
            raise OutputError(f"cannot write: {error.strerror}; nothing was written", where=str(dest)) from None
        raise
    finally:
        os.close(fd)  # releases the lock on the temporary file


def write_bytes_atomic(dest: str | os.PathLike[str], data: bytes, *, replace: bool = True) -> None:
    """Write ``data`` to ``dest`` atomically (``replace=False``: never over an existing file)."""
    with atomic_path(dest, replace=replace) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: str | os.PathLike[str], text: str, *, replace: bool = True) -> None:
    """Write UTF-8 ``text`` to ``dest`` atomically (newlines kept as given)."""
    write_bytes_atomic(dest, text.encode("utf-8"), replace=replace)


def _create_temp(directory: Path, dest: Path) -> tuple[int, Path]:
    """Create and lock a new temporary file for ``dest`` in ``directory`` (mode 0600 until chmod)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = directory / temp_name(dest.name)
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue
        except OSError as error:
            raise OutputError(f"cannot write into {directory}: {error.strerror}", where=str(dest)) from None
        if fcntl is not None:
            with contextlib.suppress(OSError):  # a file system without locks: the process-id check remains
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, tmp
    raise OutputError(f"cannot create a temporary file in {directory}", where=str(dest))


def _move_no_replace(tmp: Path, dest: Path) -> None:
    """Move ``tmp`` to ``dest`` unless ``dest`` exists, atomically where the file system allows it."""
    exists = OutputError("appeared while lbw was writing it (another program created it); it was kept as it is "
                         "and the new result was discarded. Use --force to overwrite it", where=str(dest))
    outcome = _renameat2_noreplace(tmp, dest)
    if outcome == 0:
        return
    if outcome == errno.EEXIST:
        raise exists
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise exists from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise OutputError(f"cannot write: {error.strerror}", where=str(dest)) from None
        # No hard links here (FAT, some network and FUSE file systems): check, then rename. Another lbw is kept
        # out by the target lock; only a foreign program could slip in between.
        if os.path.lexists(dest):
            raise exists from None
        try:
            os.replace(tmp, dest)
        except OSError as error2:
            raise OutputError(f"cannot write: {error2.strerror}", where=str(dest)) from None
        return
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


# Errors of a write that fails for want of room or a working disk: one line for the user, not a traceback.
_WRITE_ERRORS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EFBIG", "EDQUOT", "EIO") if hasattr(errno, name))
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _renameat2_noreplace(tmp: Path, dest: Path) -> int | None:
    """0 when moved, EEXIST when ``dest`` exists, None when this system or file system has no renameat2."""
    function = _renameat2()
    if function is None:
        return None
    result = function(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(dest), _RENAME_NOREPLACE)
    if result == 0:
        return 0
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        return errno.EEXIST
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return None  # not supported here: the link fallback decides
    raise OutputError(f"cannot write: {os.strerror(code)}", where=str(dest))


_renameat2_function: object = False  # False: not looked up yet


def _renameat2() -> Callable[..., int] | None:
    global _renameat2_function
    if _renameat2_function is False:
        function = None
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                function = ctypes.CDLL(None, use_errno=True).renameat2
                function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
                function.restype = ctypes.c_int
        _renameat2_function = function
    return _renameat2_function  # type: ignore[return-value]


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
