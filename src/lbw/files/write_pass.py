"""The write pass of ``lbw.files.writer.save_lora``: the output's SHA-256 computed from the file as it is written,
on a background thread (``FileSha256``), and the data sent to the disk while more are written (``Writeback``).

Example:
    >>> with open(tmp, "wb") as out, FileSha256(tmp, 0, out) as digest, Writeback(out) as writeback:
    ...     out.write(data); writeback.wrote(len(data)); digest.wrote(len(data), last=True)
    ...     out.flush()
    ...     digest.hexdigest() == hashlib.sha256(data).hexdigest()
    True
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import threading
from pathlib import Path
from typing import Any

from lbw.errors import OutputError

# fdatasync where the platform has it (not macOS), else fsync.
datasync = getattr(os, "fdatasync", os.fsync)


class Writeback:
    """Gets the data onto the disk while more are written: after every ``STEP`` bytes, an fdatasync on a
    background thread (unless one is still running), so that the sync which completes the file has little left
    and the disk works while the CPU does. An error of a background sync is raised on leaving the ``with``
    block (the kernel reports a writeback error once: it must not be lost there)."""

    STEP = 32 << 20

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._since = 0
        self._wanted = threading.Event()
        self._done = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="lbw-writeback", daemon=True)

    def __enter__(self) -> Writeback:
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if self._thread.is_alive():
            self._done = True
            self._wanted.set()
            self._thread.join()
        if error is None and self._error is not None:
            raise self._error

    def wrote(self, nbytes: int) -> None:
        """Count ``nbytes`` written; past ``STEP`` since the last sync, start another one if none is running."""
        self._since += nbytes
        if self._since < self.STEP or self._wanted.is_set():
            return
        self._since = 0
        self._handle.flush()  # the buffered bytes go to the kernel first
        if not self._thread.is_alive():
            self._thread.start()
        self._wanted.set()

    def _run(self) -> None:
        while not self._done:  # set before the last wake-up: seen here or after the wait
            self._wanted.wait()
            if self._done:
                return
            try:
                datasync(self._handle.fileno())
            except OSError as error:
                self._error = self._error or error
            self._wanted.clear()


class FileSha256:
    """SHA-256 of the data region of the file being written, computed on a background thread from the file
    itself (its pages memory-mapped, no copy), ``BATCH`` bytes at a time as the writer reports them written
    (``wrote``: the handle is flushed first). Hashing the tensors' own memory instead would need Python's GIL
    once per tensor on that thread, and a thread that waits for the GIL thousands of times falls behind a writer
    whose producer holds it (``LazyTensors``); here it needs it once per batch, and a tensor can go as soon as
    it is written. Leaving the ``with`` block on an error stops the thread."""

    BATCH = 8 << 20

    def __init__(self, path: Path, start: int, handle: Any, *, enabled: bool = True) -> None:
        self._path = path
        self._handle = handle
        self._enabled = enabled
        self._start = start  # where the data begin
        self._sent = start  # reported to the thread up to here
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._digest = hashlib.sha256()
        self._stop = False
        self._error: BaseException | None = None
        self._source: int | None = None  # a read-only descriptor of the file
        self._mappable = True
        self._thread = threading.Thread(target=self._run, name="lbw-sha256", daemon=True)
        self._result: str | None = None

    def __enter__(self) -> FileSha256:
        if self._enabled:
            self._source = os.open(self._path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._thread.start()
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if not self._enabled:
            return
        if error is not None:
            self._stop = True
        try:
            self._finish()
        finally:
            assert self._source is not None
            os.close(self._source)

    def wrote(self, end: int, *, last: bool = False) -> None:
        """The file holds the data up to offset ``end`` (from its start); hashed once ``BATCH`` bytes are
        waiting, or now with ``last`` (the handle must be flushed then)."""
        if not self._enabled or end - self._sent < (1 if last else self.BATCH):
            return
        if not last:
            self._handle.flush()
        self._queue.put(end)
        self._sent = end

    def hexdigest(self) -> str:
        """The digest of the data reported (waits for the thread)."""
        if not self._enabled:
            raise OutputError("internal error: hashing was not enabled")
        self._finish()
        if self._error is not None:
            raise OutputError(f"internal error while hashing the output: {self._error}")
        assert self._result is not None
        return self._result

    def _finish(self) -> None:
        if self._result is None:
            self._queue.put(None)
            self._thread.join()
            self._result = self._digest.hexdigest()

    def _run(self) -> None:
        done = self._start
        while (end := self._queue.get()) is not None:
            if self._stop or self._error is not None:
                continue
            try:
                self._hash(done, end)
                done = end
            except BaseException as error:  # reported by hexdigest; the queue is still drained
                self._error = error

    def _hash(self, start: int, end: int) -> None:
        """Hash the file's bytes [start, end): through a memory map, else (a file system that cannot map files)
        read ``BATCH`` bytes at a time."""
        if self._mappable:
            base = start - start % mmap.ALLOCATIONGRANULARITY
            try:
                pages = mmap.mmap(self._source, end - base, offset=base, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                self._mappable = False
            else:
                with pages, memoryview(pages) as whole, whole[start - base :] as part:
                    self._digest.update(part)
                return
        while start < end:
            chunk = os.pread(self._source, min(end - start, self.BATCH), start)
            if not chunk:
                raise OutputError(f"the file being written ends at {start}, expected {end} bytes")
            self._digest.update(chunk)
            start += len(chunk)
