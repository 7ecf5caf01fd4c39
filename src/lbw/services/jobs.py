"""Long actions (renders, analyses, bakes) run one at a time per device, in a worker thread, cancellable.

``JobQueue.submit(device, work)`` queues ``work(job)``; one worker thread per device runs the jobs in order, so two
tabs (or two pages) never render on one GPU at once. A device may name several resources joined by ``RESOURCES``
(a pool of servers): a job starts when every one of them is free, so a job on a pool and one on a server of that
pool wait for each other. The work reports progress with ``job.report(done, total)``
(renders pass ``job.on_cell`` / ``job.on_step`` to the runner) and calls ``job.check()`` where it may stop; a
cancelled job raises ``JobCancelled`` there. The page polls ``job.snapshot()`` for its progress line (done,
total, elapsed, ETA) and never waits on the work itself.

Example:
    >>> queue = JobQueue()
    >>> job = queue.submit("cpu", lambda job: 42, label="answer")
    >>> job.wait(5).result
    42
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lbw.errors import LbwError

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
RESOURCES = " + "  # joins the resources of one device: "comfyui:http://a:8188 + comfyui:http://b:8188"
CLAIM_POLL = 0.2  # seconds between looks at a cancel while a job waits for a resource another device holds
FINAL = (DONE, FAILED, CANCELLED)


class JobCancelled(LbwError):
    """The user cancelled the job; what it would have recorded was not recorded."""


@dataclass(frozen=True)
class JobSnapshot:
    """A job's state for a progress line: position in the queue, cells done, seconds elapsed and left."""

    id: int
    label: str
    device: str
    state: str
    ahead: int
    done: float
    total: int
    elapsed: float
    eta: float | None
    error: str | None
    note: str

    @property
    def finished(self) -> bool:
        """True once the job is done, failed or cancelled."""
        return self.state in FINAL


class Job:
    """One queued action; the worker fills ``result`` or ``error``."""

    def __init__(self, id: int, device: str, label: str, work: Callable[[Job], Any], queue: JobQueue) -> None:
        self.id = id
        self.device = device
        self.label = label
        self.work = work
        self.state = QUEUED
        self.result: Any = None
        self.error: str | None = None
        self.exception: BaseException | None = None
        self.done: float = 0.0
        self.total = 0
        self.note = ""
        self.detail: Any = None  # what the work publishes beyond done/total (the tune's TuneWatch) for its page
        self.started: float | None = None
        self.finished_at: float | None = None
        self._queue = queue
        self._cancel = threading.Event()
        self._finished = threading.Event()

    # ----------------------------------------------------------------------------------------- work side
    def check(self) -> None:
        """Raise JobCancelled when the user asked to cancel (the work calls this between steps)."""
        if self._cancel.is_set():
            raise JobCancelled(f"{self.label or 'job'} cancelled")

    def report(self, done: float, total: int, note: str = "") -> None:
        """Progress: ``done`` of ``total`` units (cells); checks for a cancel."""
        self.done, self.total = float(done), int(total)
        if note:
            self.note = note
        self.check()

    def on_cell(self, done: int, total: int, label: str, cached: bool) -> None:
        """A runner ``CellCallback``: one more cell finished."""
        self.report(done, total, label)

    def on_step(self, fraction: float, text: str, cells: int = 1) -> None:
        """A backend ``StepCallback``: progress inside the ``cells`` cells being drawn together (a batch)."""
        if self.total and 0.0 <= fraction <= 1.0:
            self.done = min(float(self.total), int(self.done) + fraction * max(cells, 1))
        self.check()

    # --------------------------------------------------------------------------------------- caller side
    def cancel(self) -> None:
        """Ask the job to stop; a queued job is dropped at once, a running one stops at its next check."""
        self._cancel.set()
        self._queue._drop(self)

    @property
    def cancel_event(self) -> threading.Event:
        """The event a service's ``cancel`` argument takes (set by cancel())."""
        return self._cancel

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called."""
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> Job:
        """Block until the job finished (or ``timeout`` seconds passed); returns the job."""
        self._finished.wait(timeout)
        return self

    def snapshot(self) -> JobSnapshot:
        """The job's state now."""
        now = time.monotonic()
        elapsed = 0.0 if self.started is None else (self.finished_at or now) - self.started
        eta = None
        if self.state == RUNNING and self.total and self.done > 0:
            eta = max(0.0, elapsed / self.done * (self.total - self.done))
        return JobSnapshot(self.id, self.label, self.device, self.state, self._queue.ahead(self), self.done,
                           self.total, elapsed, eta, self.error, self.note)

    def _finish(self, state: str) -> None:
        self.state = state
        self.finished_at = time.monotonic()
        self._finished.set()


class JobQueue:
    """One FIFO and one worker thread per device (``cpu``, ``cuda:0``, a server URL ...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Job]] = {}
        self._wake: dict[str, threading.Condition] = {}
        self._running: dict[str, Job | None] = {}
        self._ids = itertools.count(1)
        self._jobs: dict[int, Job] = {}
        self._holders: dict[str, Job] = {}  # resource -> the job using it
        self._freed = threading.Condition(self._lock)

    def submit(self, device: str, work: Callable[[Job], Any], *, label: str = "") -> Job:
        """Queue ``work(job)`` on ``device``; returns the job at once."""
        with self._lock:
            job = Job(next(self._ids), device, label, work, self)
            self._jobs[job.id] = job
            if device not in self._queues:
                self._queues[device] = deque()
                self._wake[device] = threading.Condition(self._lock)
                self._running[device] = None
                threading.Thread(target=self._worker, args=(device,), name=f"lbw-jobs-{device}", daemon=True).start()
            self._queues[device].append(job)
            self._wake[device].notify()
        return job

    def get(self, job_id: int) -> Job | None:
        """A job by id (the page keeps only the id)."""
        return self._jobs.get(job_id)

    def ahead(self, job: Job) -> int:
        """How many jobs run or wait before ``job`` on its device (0 when it runs or finished)."""
        with self._lock:
            if job.state != QUEUED:
                return 0
            if self._running.get(job.device) is job:  # waiting for resources another device's jobs hold
                return len({id(self._holders[r]) for r in resources(job.device) if r in self._holders})
            queue = self._queues.get(job.device, deque())
            running = 1 if self._running.get(job.device) is not None else 0
            return running + (list(queue).index(job) if job in queue else 0)

    def _drop(self, job: Job) -> None:
        with self._lock:
            queue = self._queues.get(job.device)
            if queue is not None and job in queue and job.state == QUEUED:
                queue.remove(job)
                job.error = f"{job.label or 'job'} cancelled"
                job._finish(CANCELLED)

    def _claim(self, job: Job) -> bool:
        """Hold every resource of ``job``'s device, waiting (the lock released) while another job holds one; False
        when the job was cancelled while it waited. Called with the lock held."""
        wanted = resources(job.device)
        while any(resource in self._holders for resource in wanted):
            if job.cancelled:
                return False
            self._freed.wait(CLAIM_POLL)
        for resource in wanted:
            self._holders[resource] = job
        return True

    def _worker(self, device: str) -> None:
        while True:
            with self._lock:
                while not self._queues[device]:
                    self._wake[device].wait()
                job = self._queues[device].popleft()
                self._running[device] = job
                if not self._claim(job):
                    self._running[device] = None
                    job.error = f"{job.label or 'job'} cancelled"
                    job._finish(CANCELLED)
                    continue
                job.state = RUNNING
                job.started = time.monotonic()
            try:
                job.check()
                job.result = job.work(job)
            except JobCancelled as error:
                job.error = str(error)
                job._finish(CANCELLED)
            except LbwError as error:
                if job.cancelled:
                    job.error = f"{job.label or 'job'} cancelled"
                    job._finish(CANCELLED)
                else:
                    job.error, job.exception = str(error), error
                    job._finish(FAILED)
            except Exception as error:  # a bug: keep the worker alive, show one line
                job.error, job.exception = f"{type(error).__name__}: {error}", error
                job._finish(FAILED)
            else:
                job._finish(DONE)
            finally:
                with self._lock:
                    self._running[device] = None
                    for resource in resources(device):
                        if self._holders.get(resource) is job:
                            del self._holders[resource]
                    self._freed.notify_all()


def resources(device: str) -> tuple[str, ...]:
    """The resources a device occupies: itself, or each part of a pool joined by ``RESOURCES``.

    Example:
        >>> resources("comfyui:http://a:8188 + comfyui:http://b:8188")
        ('comfyui:http://a:8188', 'comfyui:http://b:8188')
    """
    return tuple(sorted({part.strip() for part in device.split(RESOURCES) if part.strip()} or {device}))
