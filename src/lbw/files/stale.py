"""Temporary files that name their writer, and the removal of those whose writer is gone.

Every temporary file lbw writes is called ``.<name>.lbw-<host>-<boot>-<pid>-<start>-<random>.tmp``: the writer's
host (8 hex of its host name's SHA-256), boot (8 hex of the kernel's boot id), process id and process start time
(clock ticks after boot, from ``/proc``; 0 where unknown). The writer holds an exclusive ``flock`` on it while it
writes. A SIGKILL or a power cut leaves it behind; the next lbw write into that folder removes it when all of
these hold:

- the name matches the pattern above exactly, and it is a regular file (never a link or a folder);
- it was written on this host (another machine's process ids mean nothing here);
- the writer is gone: the machine restarted since (another boot id), or no process has that id, or the process
  with that id is a zombie or started at another time (the id was reused);
- nobody holds its lock (a live writer always does; the lock dies with its process, whatever the process id).

Anything else is left alone: other programs' files, temporary files of older lbw versions (``.<name>.XXXXXXXX.tmp``,
which do not say who wrote them), files of a writer that may be alive. Lock files (``.<name>.lbw-lock``, see
``lbw.files.locks``) that nobody holds are removed as well. Without ``fcntl`` (Windows) nothing is removed.

Example:
    >>> name = temp_name("face.safetensors")      # '.face.safetensors.lbw-1a2b3c4d-9f8e7d6c-4242-8123456-0a1b2c3d.tmp'
    >>> parse_temp_name(name).pid == os.getpid()
    True
    >>> clean_stale_temps("loras").message()       # after a killed run
    'removed 1 stale temporary file (4.8 MB) left by an interrupted lbw run (pid 4242) in loras'
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("lbw.files")

UNKNOWN_BOOT = "0" * 8
UNKNOWN_START = "0"
# The informative part of a temporary or lock file name: the target's name, cut so the whole name stays well
# under the 255-byte limit of common file systems.
NAME_BYTES = 120

_TEMP = re.compile(
    r"\A\..*\.lbw-(?P<host>[0-9a-f]{8})-(?P<boot>[0-9a-f]{8})-(?P<pid>[1-9][0-9]{0,9})-(?P<start>[0-9]{1,20})"
    r"-[0-9a-f]{8}\.tmp\Z",
    re.DOTALL,
)
_LOCK = re.compile(r"\A\..*\.lbw-lock\Z", re.DOTALL)
LOCK_FILE_MAX_BYTES = 64  # a lock file holds its holder's pid; anything bigger is not one of ours


@dataclass(frozen=True)
class TempOwner:
    """Who wrote a temporary file: host and boot tokens, process id and process start time."""

    host: str
    boot: str
    pid: int
    start: str


@dataclass(frozen=True)
class StaleTemp:
    """A removed temporary file: its path, size in bytes and the id of the process that wrote it."""

    path: Path
    size: int
    pid: int


@dataclass(frozen=True)
class Cleanup:
    """What ``clean_stale_temps`` removed from ``folder``."""

    folder: Path
    removed: tuple[StaleTemp, ...] = ()

    @property
    def size(self) -> int:
        """Bytes freed."""
        return sum(item.size for item in self.removed)

    def message(self) -> str:
        """One line for the user, e.g. ``removed 1 stale temporary file (4.8 MB) left by an interrupted lbw run
        (pid 4242) in loras``; empty when nothing was removed."""
        count = len(self.removed)
        if not count:
            return ""
        pids = sorted({item.pid for item in self.removed})
        who = f"pid {pids[0]}" if len(pids) == 1 else f"pids {', '.join(map(str, pids[:5]))}"
        runs = "an interrupted lbw run" if len(pids) == 1 else "interrupted lbw runs"
        files = "file" if count == 1 else "files"
        return (f"removed {count} stale temporary {files} ({format_size(self.size)}) left by {runs} ({who}) "
                f"in {self.folder}")


def temp_name(dest_name: str) -> str:
    """A new temporary file name for a file called ``dest_name``, naming this process as its writer."""
    return f".{cut_name(dest_name)}.lbw-{_HOST}-{_BOOT}-{os.getpid()}-{_START}-{secrets.token_hex(4)}.tmp"


def parse_temp_name(name: str) -> TempOwner | None:
    """The writer a temporary file name records, or None when ``name`` is not an lbw temporary file.

    >>> parse_temp_name(".a.safetensors.x1y2z3w4.tmp") is None    # an older lbw's or another program's file
    True
    """
    found = _TEMP.match(name)
    if found is None:
        return None
    return TempOwner(found["host"], found["boot"], int(found["pid"]), found["start"])


def is_lock_name(name: str) -> bool:
    """True for the name of an lbw lock file (``.<name>.lbw-lock``)."""
    return _LOCK.match(name) is not None


def writer_gone(owner: TempOwner) -> bool:
    """True only when the process that wrote a temporary file cannot be running any more (see the module text).
    Unknown means alive."""
    if owner.host != _HOST or sys.platform == "win32":  # (Windows' os.kill(pid, 0) would send a Ctrl-C)
        return False
    if UNKNOWN_BOOT not in (owner.boot, _BOOT) and owner.boot != _BOOT:
        return True  # the machine restarted since: every process of that boot is gone
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists (another user's)
    except (OSError, OverflowError):
        return False
    state = process_state(owner.pid)
    if state is None:
        return False
    status, start = state
    if status in ("Z", "X"):
        return True  # killed, not yet reaped by its parent: it writes nothing more and holds no lock
    return owner.start != UNKNOWN_START and start != owner.start  # the id now belongs to a later process


def clean_stale_temps(folder: str | os.PathLike[str]) -> Cleanup:
    """Remove the temporary files in ``folder`` that lbw wrote and whose writer is gone, and lock files nobody
    holds; return what was removed (never raises: an unreadable folder or file is left alone)."""
    folder = Path(folder)
    removed: list[StaleTemp] = []
    if fcntl is None:
        return Cleanup(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return Cleanup(folder)
    for entry in entries:
        name = entry.name
        if not name.startswith("."):
            continue
        owner = parse_temp_name(name) if name.endswith(".tmp") else None
        if owner is not None and writer_gone(owner):
            size = _remove_if_unlocked(Path(entry.path), max_size=None)
            if size is not None:
                removed.append(StaleTemp(Path(entry.path), size, owner.pid))
        elif owner is None and is_lock_name(name):
            _remove_if_unlocked(Path(entry.path), max_size=LOCK_FILE_MAX_BYTES)
    result = Cleanup(folder, tuple(removed))
    if removed:
        log.warning(result.message())
    return result


def process_state(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in clock ticks after boot) of a process, from ``/proc``; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command name, in parentheses, may hold spaces
    if len(fields) < 20:
        return None
    return fields[0], fields[19]


def format_size(size: int) -> str:
    """Bytes in a short human form: ``812 bytes``, ``4.8 MB``, ``5.4 GB``."""
    if size < 1000:
        return f"{size} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12)):
        if size < scale * 1000 or unit == "TB":
            return f"{size / scale:.1f} {unit}"
    raise AssertionError("unreachable")


def _remove_if_unlocked(path: Path, *, max_size: int | None) -> int | None:
    """Unlink ``path`` if it is a regular file nobody holds a lock on (taking the lock first, so a writer that
    starts meanwhile is never robbed); return its size, or None when it was left alone."""
    assert fcntl is not None
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None  # gone already, a link, not ours to open
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or (max_size is not None and info.st_size > max_size):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None  # held (its writer lives) or locks unsupported here: keep it
        try:
            now = os.lstat(path)
        except OSError:
            return None
        if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
            return None  # replaced meanwhile
        try:
            os.unlink(path)
        except OSError:
            return None
        return info.st_size
    finally:
        os.close(fd)


def cut_name(name: str) -> str:
    """``name`` cut to NAME_BYTES bytes of UTF-8 (whole characters)."""
    data = name.encode("utf-8", "surrogateescape")
    if len(data) <= NAME_BYTES:
        return name
    return data[:NAME_BYTES].decode("utf-8", "ignore")


def name_token(text: str) -> str:
    """8 hex of the SHA-256 of ``text``."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _boot_token() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip().replace("-", "").lower()
    except OSError:
        return UNKNOWN_BOOT
    return boot[:8] if re.fullmatch(r"[0-9a-f]{8,}", boot) else UNKNOWN_BOOT


def _start_token() -> str:
    state = process_state(os.getpid())
    return state[1] if state is not None and state[1].isdigit() else UNKNOWN_START


_HOST = name_token(socket.gethostname())
_BOOT = _boot_token()
_START = _start_token()


def _reset_identity_after_fork() -> None:
    """A forked child is another process: its temporary files must carry its own start time."""
    global _START
    _START = _start_token()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_identity_after_fork)
