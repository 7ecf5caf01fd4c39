"""Iterations: render the sheet or run the analyzer and record the result as the project's next iteration, and
read iterations, analyzer tables and the project's log back.

A render adds an iteration without changing the project's version (it changes no editable state), except that a
render in another mode first switches the mode (a ``mode`` decision).

Example:
    >>> it = render_iteration(store, "Face", backend_options={"device": "cpu"})     # the Sub grid of the sheet
    >>> [c.label for c in it.cells][:2], list_iterations(store, "Face")[-1].number == it.number
    (['Sub', 'SubIN01_0'], True)
    >>> table = analysis_table(store, "Face", run_analysis(store, "Face").number, important=3.0)
"""

from __future__ import annotations

import secrets
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from lbw.domain.layouts import SD26, canonical_block_id
from lbw.errors import ProjectError
from lbw.render.plan import Plan
from lbw.services.project_core import _analysis_view, _conflict, _decision_view, _iteration_view, _summary
from lbw.services.project_edits import set_mode
from lbw.services.project_lifecycle import get_project
from lbw.services.project_settings import check_prompt
from lbw.services.project_types import AnalysisView, IterationSummary, IterationView, LogEntry, ProjectView
from lbw.store import Store
from lbw.store import records as db

CellProgress = Callable[[int, int, str, bool], None]
StepProgress = Callable[[float, str], None]


# -------------------------------------------------------------------------------------------- reading


def list_iterations(store: Store, name: str) -> list[IterationSummary]:
    """The project's iterations, oldest first."""
    with store.read() as con:
        record = db.project_by_name(con, name)
        return [_summary(store, r) for r in db.iteration_records(con, record.id)]


def get_iteration(store: Store, name: str, number: int | None = None) -> IterationView:
    """Iteration ``number`` in full (None: the latest)."""
    with store.read() as con:
        record = db.project_by_name(con, name)
        if number is None:
            latest = db.latest_iteration(con, record.id)
            if latest is None:
                raise ProjectError(f"project {record.name!r} has no iteration yet; render one first")
            number = latest.number
        target = db.iteration_by_number(con, record, number)
        decisions = [d for d in db.decision_records(con, record.id) if d.iteration == number]
        return _iteration_view(store, con, target, decisions)


def analysis_table(
    store: Store, name: str, iteration_number: int, *, important: float | None = None, unneeded: float | None = None
) -> AnalysisView:
    """An analyzer iteration's ranked table, classified with these thresholds (default: the run's own); nothing is
    rendered or stored, so a page can move the thresholds and show the classes at once."""
    with store.read() as con:
        record = db.project_by_name(con, name)
        target = db.iteration_by_number(con, record, iteration_number)
        table = _analysis_view(con, target, important, unneeded)
        if table is None:
            raise ProjectError(f"iteration {iteration_number} is a {target.kind} grid, not an analyzer run")
        return table


def project_log(store: Store, name: str) -> list[LogEntry]:
    """Iterations (at the time they were recorded) and decisions, oldest first, one line each."""
    with store.read() as con:
        record = db.project_by_name(con, name)
        entries = [
            LogEntry(it.finished or it.created, "iteration", it.number,
                     f"iteration {it.number}: {it.kind}, {it.cell_count} cells, from {it.sheet_before.status()}")
            for it in db.iteration_records(con, record.id)
        ]
        for decision in db.decision_records(con, record.id):
            view = _decision_view(decision)
            entries.append(LogEntry(decision.created, "decision", decision.iteration, view.describe(), view))
    return sorted(entries, key=lambda e: (e.created, e.kind != "iteration"))


# ------------------------------------------------------------------------------------------ rendering


def render_iteration(
    store: Store,
    name: str,
    *,
    mode: str | None = None,
    progress: CellProgress | None = None,
    on_step: StepProgress | None = None,
    cancel: threading.Event | None = None,
    backend: Any = None,
    backend_options: Mapping[str, Any] | None = None,
    allow_empty_prompt: bool = False,
    expected_version: int | None = None,
    source: str = "command",
) -> IterationView:
    """Render the current sheet's list (``mode``, default the project's) with the project's settings and record
    it as the next iteration: the sheet before, the plan, the cells with their Diff % against the base cell.

    ``progress(done, total, label, cached)`` follows each cell, ``on_step(fraction, label)`` each step; setting
    ``cancel`` stops between cells (and steps) with ``Cancelled``: nothing is recorded, finished cells stay in the
    workspace cache. A ``mode`` other than the project's switches the project's mode first (a ``mode`` decision,
    checked against ``expected_version`` when given). ``backend``: an open backend to reuse (left open); else one
    is made from the settings and ``backend_options`` (device, dtype, batch_size, timeouts) and closed after.
    """
    from lbw.services.project_render import project_plan

    view = get_project(store, name)
    if expected_version is not None and expected_version != view.version:
        raise _conflict(view, expected_version)
    if mode is not None and mode != view.mode:
        view = set_mode(store, name, mode, source=source, expected_version=view.version)
    check_prompt(view.settings, allow_empty_prompt)
    plan = project_plan(view.sheet, view.settings, view.mode)
    return _run_and_record(store, view, plan, progress, on_step, cancel, backend, backend_options)


def run_analysis(
    store: Store,
    name: str,
    *,
    blocks: Sequence[str] | None = None,
    probe: float = 0.5,
    base: float = 1.0,
    threshold: int = 20,
    important: float = 5.0,
    unneeded: float = 1.0,
    transpose: bool = False,
    diff_color: str = "black",
    progress: CellProgress | None = None,
    on_step: StepProgress | None = None,
    cancel: threading.Event | None = None,
    backend: Any = None,
    backend_options: Mapping[str, Any] | None = None,
    allow_empty_prompt: bool = False,
) -> IterationView:
    """Run the Effective Block Analyzer on the project's LoRA (``blocks``: default the sheet's open blocks when it
    is a 26-block sheet with some open, else all 26) and record it as an iteration with its ranked table.

    ``view.analysis.no_change`` is True when no block changed the image: then no sheet is suggested.
    """
    from lbw.render.analysis import Thresholds
    from lbw.services.project_render import analysis_plan

    view = get_project(store, name)
    check_prompt(view.settings, allow_empty_prompt)
    if blocks is None:
        blocks = view.sheet.unfixed_ids if view.sheet.layout is SD26 and view.sheet.unfixed_ids else SD26.ids
    plan = analysis_plan(view.sheet, view.settings, blocks=tuple(canonical_block_id(b) for b in blocks),
                         probe=probe, base=base, threshold=threshold, thresholds=Thresholds(important, unneeded),
                         transpose=transpose, diff_color=diff_color)
    return _run_and_record(store, view, plan, progress, on_step, cancel, backend, backend_options)


# ------------------------------------------------------------------------------------------ internals


def _run_and_record(
    store: Store,
    view: ProjectView,
    plan: Plan,
    progress: CellProgress | None,
    on_step: StepProgress | None,
    cancel: threading.Event | None,
    backend: Any,
    backend_options: Mapping[str, Any] | None,
) -> IterationView:
    from lbw.render.plan import plan_to_json
    from lbw.services.project_render import make_project_backend, run_into

    project_dir = store.workspace / "projects" / str(view.id)
    staging = project_dir / "staging" / secrets.token_hex(6)
    staging.mkdir(parents=True)
    engine = backend if backend is not None else make_project_backend(view.settings, backend_options)
    created = db.now()
    try:
        try:
            run = run_into(plan, engine, staging, cache_dir=store.workspace / "cache", progress=progress,
                           on_step=on_step, cancel=cancel)
        finally:
            if backend is None:
                engine.close()
        with store.write() as con:
            record = db.project_by_id(con, view.id)
            number = db.next_iteration_number(con, record.id)
            folder = project_dir / "iterations" / f"{number:04d}-{plan.kind}"
            if folder.exists():
                folder = folder.with_name(f"{folder.name}-{secrets.token_hex(3)}")
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(folder)
            try:
                rel = store.relative(folder)
                cells = [replace(c, path=f"{rel}/{c.path}") for c in run.cells]
                extra = _prefixed(run.extra, rel)
                extra["rendered"], extra["reused"] = run.rendered, run.reused
                target = db.insert_iteration(
                    con, record.id, number=number, kind=plan.kind, sheet_before=view.sheet, plan=plan_to_json(plan),
                    folder=rel, grid=None if run.grid is None else f"{rel}/{run.grid}", grid_sha256=run.grid_sha256,
                    created=created, cells=cells, extra=extra, analysis=run.analysis)
            except BaseException:
                folder.rename(staging)
                raise
            return _iteration_view(store, con, target, [])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prefixed(extra: Any, rel: str) -> Any:
    """Relative paths inside ``extra`` (strings ending in .png/.json/.toml) prefixed with the iteration folder."""
    if isinstance(extra, dict):
        return {k: _prefixed(v, rel) for k, v in extra.items()}
    if isinstance(extra, list):
        return [_prefixed(v, rel) for v in extra]
    if isinstance(extra, str) and extra.endswith((".png", ".json", ".toml")):
        return f"{rel}/{extra}"
    return extra
