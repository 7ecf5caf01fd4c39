"""Target locks: one lbw writer per output file at a time, across processes and threads.

The lock is an exclusive ``flock`` on ``.<name>.lbw-lock`` beside the target (beside the file a symbolic link
points to, for a link). Its holder writes its process id into it, so a refused writer can say who holds it, and
removes it when done: the holder unlinks it while still holding it, and whoever locks a lock file checks that
the name still points to the file it locked (else it tries again), so two writers never hold "the" lock at once.
A writer killed with SIGKILL loses its lock with its process; the lock file stays (harmless: the next writer
reuses it, and the next lbw write into the folder removes it, see ``lbw.files.stale``).

The lock is reentrant within a thread (a service holding it may call writers that take it again); another
thread of the same process is refused or waits like another process. Where ``fcntl`` does not exist (Windows)
or the file system refuses locks, writes go ahead unlocked: two lbw processes writing one file at once are then
not detected (the no-clobber final step of ``lbw.files.atomic`` still stops a silent replacement of a new
output).

Example:
    >>> with target_lock("out.safetensors"):            # refuse at once if another lbw writes it
    ...     save_lora(tensors, metadata, "out.safetensors")
    >>> with target_lock("face.safetensors", wait=LOCK_WAIT_S):   # read-modify-write: wait for the other one
    ...     edit(...)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lbw.errors import OutputError
from lbw.files.stale import NAME_BYTES, cut_name, name_token

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("lbw.files")

# How long a writer that may wait (an in-place edit, an overwrite with --force) waits for another one.
LOCK_WAIT_S = 300.0
LOCK_SUFFIX = ".lbw-lock"
_UNLOCKED = -1  # a "held" lock on a file system without locks


@dataclass
class _Held:
    fd: int
    thread: int
    count: int


_held: dict[str, _Held] = {}
_guard = threading.Lock()


def resolve_target(path: str | os.PathLike[str]) -> Path:
    """The file a write to ``path`` changes: the file a symbolic link points to (through every link), else
    ``path`` itself.

    >>> resolve_target("loras/face.safetensors")     # a link to /store/face.safetensors
    PosixPath('/store/face.safetensors')
    """
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file of ``target``: ``.<name>.lbw-lock`` in the folder of the (link-resolved) target; a long
    name is cut and completed with a hash of the whole name.

    >>> lock_path("loras/face.safetensors")
    PosixPath('loras/.face.safetensors.lbw-lock')
    """
    real = resolve_target(target)
    name = real.name
    if len(name.encode("utf-8", "surrogateescape")) > NAME_BYTES:
        name = f"{cut_name(name)}~{name_token(name)}"
    return real.parent / f".{name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def target_lock(target: str | os.PathLike[str], *, wait: float = 0.0) -> Iterator[Path]:
    """Hold the lock of ``target`` for the ``with`` block; yields the lock file's path.

    With ``wait`` 0 a lock held by another writer is an OutputError at once (naming its process id when known);
    otherwise the lock is awaited for up to ``wait`` seconds (one note is logged), then an OutputError.
    """
    path = lock_path(target)
    key = os.path.join(os.path.realpath(path.parent), path.name)
    me = threading.get_ident()

    def attempt() -> str | None:
        with _guard:
            held = _held.get(key)
            if held is not None and held.thread == me:
                held.count += 1
                return None
            if held is None:
                fd = _try_lock(path, target)
                if fd is not None:
                    _held[key] = _Held(fd, me, 1)
                    return None
        return "another thread of this process" if held is not None else _holder(path)

    _acquire(attempt, target, wait)
    try:
        yield path
    finally:
        _release(key, path)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], *, wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` itself (all its hard links share it) for the ``with``
    block; waits like ``target_lock``. For in-place writes, where the file keeps its inode; a no-op without
    file locks.
    """
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise OutputError(f"cannot open for writing: {error.strerror}", where=str(path)) from None

    def attempt() -> str | None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "another lbw process"
        except OSError:
            pass  # no locks on this file system
        return None

    try:
        _acquire(attempt, path, wait)
        yield
    finally:
        os.close(fd)


def _acquire(attempt: Callable[[], str | None], target: str | os.PathLike[str], wait: float) -> None:
    """Call ``attempt`` (None when locked, else who holds it) until it succeeds or ``wait`` seconds pass."""
    deadline = time.monotonic() + wait
    delay = 0.02
    announced = False
    while (holder := attempt()) is not None:
        if wait <= 0:
            raise OutputError(f"{holder} is writing this file right now; nothing was written (wait for it to "
                              "finish, or choose another output)", where=str(target))
        if time.monotonic() >= deadline:
            raise OutputError(f"{holder} kept this file locked for over {wait:g} s; gave up waiting, nothing was "
                              "written", where=str(target))
        if not announced:
            log.info(f"waiting for {holder}, which is writing {target}")
            announced = True
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _release(key: str, path: Path) -> None:
    with _guard:
        held = _held[key]
        held.count -= 1
        if held.count:
            return
        del _held[key]
        if held.fd != _UNLOCKED:
            with contextlib.suppress(OSError):
                os.unlink(path)  # still holding it: see the module text
            os.close(held.fd)


def _try_lock(path: Path, target: str | os.PathLike[str]) -> int | None:
    """A descriptor of the locked lock file, None when another writer holds it, _UNLOCKED without locks."""
    if fcntl is None:
        log.debug("no file locks on this platform: concurrent lbw writers are not detected")
        return _UNLOCKED
    for _ in range(100):
        fd = _open_lock_file(path, target)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as error:  # ENOLCK, EOPNOTSUPP: a file system without locks
            os.close(fd)
            log.debug(f"{path.parent}: file locks are not supported ({error.strerror}); writing unlocked")
            return _UNLOCKED
        try:
            same = os.path.samestat(os.fstat(fd), os.lstat(path))
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            return fd
        os.close(fd)  # its holder removed it as we locked it: lock the current one
    raise OutputError("cannot take the lock file: it keeps being replaced", where=str(path))


def _open_lock_file(path: Path, target: str | os.PathLike[str]) -> int:
    flags = os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, os.O_RDWR | flags, 0o666)
    except FileNotFoundError:
        raise OutputError(f"folder {path.parent} does not exist", where=str(target)) from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OutputError(f"{path.name} is a link; lbw's lock files are plain files: remove it",
                              where=str(path.parent)) from None
        if error.errno == errno.EACCES:
            with contextlib.suppress(OSError):  # another user's lock file: still lockable
                return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        raise OutputError(f"cannot write into {path.parent}: {error.strerror}", where=str(target)) from None


def _holder(path: Path) -> str:
    """``another lbw process (pid N)``, or without the pid when the lock file does not say."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(32).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"another lbw process (pid {text})" if text.isdigit() else "another lbw process"
