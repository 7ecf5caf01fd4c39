"""A pool of servers as one backend: ``--url A,B,...`` spreads the cells of a plan over several web UIs or ComfyUIs.

:class:`ServerPool` wraps one backend per server (all of one kind: ``a1111`` or ``comfyui``) and is itself a
backend, so the runner, the cache and every caller stay as they are:

- ``prepare`` checks every server at once (in threads); a server that fails (refused, no LBW, an unknown LoRA)
  leaves the pool with a note naming it and why; when every server fails, the run fails with one line naming
  them and what they said.
- ``render`` starts one worker thread per server; each takes the next unit of work (a cell, or in the a1111
  ``xyz`` mode one seed's request: the backend's ``units``) from one shared queue, so a fast server takes more
  cells. Images are yielded as they arrive, so the runner caches each at once (an interrupted run keeps every
  finished cell); the cells, the grid and every result are placed by plan position as always.
- A server that fails during the run (connection refused, an error answer, a stall) leaves the pool with a note;
  the unit it was drawing goes back to the front of the queue for another server. When no server is left the run
  fails with one line; finished cells stay cached. The deadline (``--deadline``) and a cancel stop the whole run.
- Every server keeps its own retries, but fewer (``POOL_RETRIES``): another server can take the cell.
- Cache keys are the backend's, with ``server`` naming the whole pool (its public URLs): every cell may come from
  any server, so the servers must hold the same checkpoints and LoRAs (each is checked for their names).

Example:
    >>> pool = ServerPool([A1111Backend(url=u) for u in urls], urls)
    >>> run_plan(plan, pool, "out")
"""

from __future__ import annotations

import logging
import queue
import threading
import urllib.parse
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from PIL import Image

from lbw.errors import RenderError
from lbw.render.backends.base import Backend, CellFailure, Hasher, StepCallback
from lbw.render.backends.http import DeadlineReached, one_line
from lbw.render.plan import Job, Plan, public_url

POOL_RETRIES = 1  # retries per request on a pooled server (4 alone): the pool has other servers for the cell
_WAIT = 0.25  # how often waiting threads look for a stop

log = logging.getLogger("lbw.render")


class ServerPool:
    """Several servers of one HTTP backend as one backend (see the module docstring)."""

    def __init__(self, members: Sequence[Backend], urls: Sequence[str]) -> None:
        if not members or len(members) != len(urls):
            raise RenderError("a server pool needs one backend per URL")
        names = {member.name for member in members}
        if len(names) != 1:
            raise RenderError(f"a server pool has servers of one kind, not {', '.join(sorted(names))}")
        self.members = list(members)
        self.urls = [public_url(url) for url in urls]
        self.name = self.members[0].name
        self.live = list(range(len(self.members)))  # members still in the pool, in the order given

    # ------------------------------------------------------------------------------------------- prepare
    def prepare(self, plan: Plan) -> None:
        """Prepare every server at once; drop those that fail (one note each); fail when none is left."""
        errors: dict[int, BaseException] = {}

        def prepare_one(index: int) -> None:
            try:
                self.members[index].prepare(plan)
            except BaseException as error:  # handed to the caller's thread below
                errors[index] = error

        threads = [threading.Thread(target=prepare_one, args=(i,), daemon=True) for i in self.live]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():  # a timed join: Ctrl-C reaches the main thread meanwhile
                thread.join(_WAIT)
        for error in errors.values():
            if not isinstance(error, RenderError) or isinstance(error, DeadlineReached):
                raise error
        failed = [(self.urls[i], errors[i]) for i in self.live if i in errors]
        if len(failed) == len(self.live):
            raise RenderError(f"no server of the pool can render: {_failures(failed)}")
        for url, error in failed:
            log.info("%s left the pool: %s", url, _said(error))
        self.live = [i for i in self.live if i not in errors]

    # ------------------------------------------------------------------------------------------- identity
    def identity(self, plan: Plan, hasher: Hasher) -> dict[str, Any]:
        """The first server's identity with ``server`` naming the whole pool (a cell may come from any)."""
        identity = dict(self.members[self.live[0]].identity(plan, hasher))
        identity["server"] = ",".join(self.urls)
        return identity

    def job_identity(self, plan: Plan, job: Job) -> dict[str, Any]:
        """The first server's: every server is the same backend with the same plan."""
        return self.members[self.live[0]].job_identity(plan, job)

    # ------------------------------------------------------------------------------------------- render
    def render(
        self, plan: Plan, jobs: Sequence[Job], on_step: StepCallback | None = None
    ) -> Iterator[tuple[Job, Image.Image | CellFailure]]:
        """Draw ``jobs`` on every server of the pool at once; yield each image as it arrives."""
        if not jobs:
            return
        first = self.members[self.live[0]]
        units = first.units(jobs) if hasattr(first, "units") else [[job] for job in jobs]
        work = _Work(units, len(self.live))
        results: queue.Queue[tuple[Any, ...]] = queue.Queue()
        for index in self.live:
            threading.Thread(target=self._worker, args=(index, plan, work, results, on_step), daemon=True).start()
        left = len(jobs)
        try:
            while left:
                try:
                    event = results.get(timeout=_WAIT)  # a timed wait: Ctrl-C reaches the main thread meanwhile
                except queue.Empty:
                    continue
                if event[0] == "image":
                    left -= 1
                    yield event[1], event[2]
                elif event[0] == "dropped":
                    index, error = event[1], event[2]
                    self.live = [i for i in self.live if i != index]
                    if not self.live:
                        raise RenderError(f"every server of the pool failed; finished cells are kept in the cache: "
                                          f"run the same command again to go on: {_failures(work.failures)}")
                    log.info("%s left the pool: %s; its cells go to the other %s", self.urls[index], _said(error),
                             "server" if len(self.live) == 1 else f"{len(self.live)} servers")
                else:
                    raise event[1]
        finally:
            work.stop()

    def _worker(
        self, index: int, plan: Plan, work: _Work, results: queue.Queue[tuple[Any, ...]],
        on_step: StepCallback | None,
    ) -> None:
        """One server's thread: draw units from ``work`` until none is left, the run stops or the server fails."""
        member, url = self.members[index], self.urls[index]
        where = urllib.parse.urlsplit(url).netloc

        def step(fraction: float, text: str, cells: int = 1) -> None:
            if on_step is not None and not work.stopped:
                on_step(fraction, f"{text} @ {where}", cells)

        while (unit := work.take()) is not None:
            left = list(unit)
            try:
                for job, image in member.render(plan, unit, step):
                    if job in left:
                        left.remove(job)
                    results.put(("image", job, image))
                    work.done()
                if left:
                    missing = ", ".join(one_line(job.cell.label, 80) for job in left)
                    raise RenderError(f"the server finished without rendering {missing}")
            except DeadlineReached as error:
                work.stop()
                results.put(("error", error))
                return
            except RenderError as error:
                if not work.stopped:
                    work.give_back(left, url, error)
                    results.put(("dropped", index, error))
                return
            except BaseException as error:  # a cancel or a bug: the run stops with it
                work.stop()
                results.put(("error", error))
                return

    def close(self) -> None:
        """Close every server's backend."""
        for member in self.members:
            member.close()


class _Work:
    """The shared queue of units: taken by the workers, given back by a server that failed."""

    def __init__(self, units: Sequence[Sequence[Job]], workers: int) -> None:
        self.cond = threading.Condition()
        self.pending: deque[list[Job]] = deque(list(unit) for unit in units)
        self.open = sum(len(unit) for unit in units)  # jobs not rendered yet
        self.failures: list[tuple[str, BaseException]] = []
        self.stopped = False

    def take(self) -> list[Job] | None:
        """The next unit; waits while others are still drawing (one may come back); None when all is done."""
        with self.cond:
            while not self.pending and self.open > 0 and not self.stopped:
                self.cond.wait(_WAIT)
            if self.stopped or not self.pending:
                return None
            return self.pending.popleft()

    def done(self) -> None:
        with self.cond:
            self.open -= 1
            self.cond.notify_all()

    def give_back(self, unit: list[Job], url: str, error: BaseException) -> None:
        """A failed server's unfinished unit goes to the front of the queue."""
        with self.cond:
            if unit:
                self.pending.appendleft(unit)
            self.failures.append((url, error))
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


def _said(error: BaseException) -> str:
    """An error's own words without the URL it names (that may carry credentials; the pool names servers by
    their public URL)."""
    return one_line(error.message if isinstance(error, RenderError) else str(error), 300)


def _failures(failed: Sequence[tuple[str, BaseException]]) -> str:
    """``URL, URL: why; URL: why``: the servers that failed, grouped by what they said (three reasons at most)."""
    groups: dict[str, list[str]] = {}
    for url, error in failed:
        groups.setdefault(_said(error), []).append(url)
    shown = [f"{', '.join(urls)}: {said}" for said, urls in groups.items()]
    return "; ".join(shown[:3]) + (f"; and {len(shown) - 3} more" if len(shown) > 3 else "")
