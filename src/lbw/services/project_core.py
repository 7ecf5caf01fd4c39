"""The machinery the project actions share: one mutation transaction, views of store records, argument checks.

Internal to ``lbw.services.projects`` (and the modules it is split into): callers use the actions there.
``_mutate`` reads a project, checks ``expected_version``, asks a change function what to write (a ``_Change``) and
writes it with its decisions in one transaction; an empty change writes nothing and keeps the version.

Example:
    >>> def archive(record, con):
    ...     return _Change(archived=True, decisions=[db.NewDecision("archive", "command")])
    >>> _mutate(store, "Face", view.version, archive).archived
    True
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lbw.domain.sheet import Sheet
from lbw.errors import ProjectError, StoreError
from lbw.services.project_types import (
    MODES,
    SOURCES,
    AnalysisBlockView,
    AnalysisView,
    CellView,
    DecisionView,
    IterationSummary,
    IterationView,
    ProjectSettings,
    ProjectView,
)
from lbw.store import Store
from lbw.store import records as db

# ------------------------------------------------------------------------------------------ mutations


@dataclass
class _Change:
    """What a mutation writes: new fields (None: unchanged) and the decisions; empty = nothing to write."""

    sheet: Sheet | None = None
    settings: ProjectSettings | None = None
    mode: str | None = None
    archived: bool | None = None
    decisions: list[db.NewDecision] | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if self.decisions is None:
            self.decisions = []

    @property
    def empty(self) -> bool:
        return not self.decisions and not self.force


_ChangeFn = Callable[[db.ProjectRecord, sqlite3.Connection], _Change]


def _mutate(store: Store, name: str, expected_version: int, change: _ChangeFn) -> ProjectView:
    """Read the project, check the version, compute the change, write it and its decisions: one transaction."""
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise ProjectError(f"expected_version must be the project's version number, got {expected_version!r}")
    with store.write() as con:
        record = db.project_by_name(con, name)
        if record.version != expected_version:
            raise _conflict(record, expected_version)
        result = change(record, con)
        if result.empty:
            return _view(store, con, record)
        latest = db.latest_iteration(con, record.id)
        updated = db.update_project(
            con, record, expected_version=expected_version, sheet=result.sheet,
            settings=None if result.settings is None else result.settings.to_dict(), mode=result.mode,
            archived=result.archived)
        db.insert_decisions(con, record.id, result.decisions or [], iteration_id=None if latest is None else latest.id)
        return _view(store, con, updated, latest)


def _conflict(project: Any, expected: int) -> StoreError:
    from lbw.errors import VersionConflict

    return VersionConflict(project.name, expected, project.version)


# ---------------------------------------------------------------------------------------------- views


def _view(store: Store, con: sqlite3.Connection, record: db.ProjectRecord,
          latest: db.IterationRecord | None = None) -> ProjectView:
    latest = latest if latest is not None else db.latest_iteration(con, record.id)
    return ProjectView(
        id=record.id, name=record.name, version=record.version, settings=_settings_of(record), sheet=record.sheet,
        mode=record.mode, archived=record.archived, iteration_count=db.iteration_count(con, record.id),
        latest=None if latest is None else _summary(store, latest), created=record.created, updated=record.updated,
        workspace=store.workspace,
    )


def _settings_of(record: db.ProjectRecord) -> ProjectSettings:
    return ProjectSettings.from_dict(record.settings, where=f"project {record.name!r}")


def _summary(store: Store, record: db.IterationRecord) -> IterationSummary:
    grid = None if record.grid is None else store.path_of(record.grid)
    return IterationSummary(record.number, record.kind, record.cell_count, grid, record.created, record.finished)


def _iteration_view(store: Store, con: sqlite3.Connection, record: db.IterationRecord,
                    decisions: Sequence[db.DecisionRecord]) -> IterationView:
    cells = tuple(
        CellView(c.position, c.label, c.block, c.value, c.seed, store.path_of(c.path), c.path, c.sha256,
                 c.diff_percent, c.base_label)
        for c in db.cell_records(con, record.id)
    )
    grids = record.extra.get("grids") if record.kind == "eba" else None
    grid_paths = tuple(store.path_of(g) for g in grids if isinstance(g, str)) if isinstance(grids, list) else ()
    grid = None if record.grid is None else store.path_of(record.grid)
    return IterationView(
        number=record.number, kind=record.kind, sheet_before=record.sheet_before, plan_json=record.plan,
        folder=store.path_of(record.folder), grid=grid, grids=grid_paths or ((grid,) if grid else ()), cells=cells,
        decisions=tuple(_decision_view(d) for d in decisions), created=record.created, finished=record.finished,
        analysis=_analysis_view(con, record, None, None), extra_files=record.extra,
    )


def _decision_view(record: db.DecisionRecord) -> DecisionView:
    return DecisionView(record.id, record.action, record.source, record.block, record.old_value, record.new_value,
                        record.old_fixed, record.fixed, record.iteration, record.detail, record.created)


def _analysis_view(con: sqlite3.Connection, target: db.IterationRecord, important: float | None,
                   unneeded: float | None) -> AnalysisView | None:
    if target.kind != "eba":
        return None
    from lbw.render.analysis import Thresholds

    rows = db.analysis_records(con, target.id)
    try:
        spec = json.loads(target.plan).get("eba") or {}
    except (ValueError, AttributeError):
        spec = {}
    rule = Thresholds(
        float(spec.get("important", 5.0)) if important is None else important,
        float(spec.get("unneeded", 1.0)) if unneeded is None else unneeded,
    )
    views = []
    for row in rows:
        score = row.diff_percent if row.roi_diff_percent is None else row.roi_diff_percent
        views.append(AnalysisBlockView(row.rank, row.block, row.diff_percent, row.roi_diff_percent,
                                       row.roi_share_percent, rule.classify(score)))
    return AnalysisView(tuple(views), rule.important, rule.unneeded, spec.get("roi"),
                        max((r.diff_percent for r in rows), default=0.0))


# --------------------------------------------------------------------------------------------- checks


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ProjectError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ProjectError(f"unknown decision source {source!r}; expected one of {', '.join(SOURCES)}")
