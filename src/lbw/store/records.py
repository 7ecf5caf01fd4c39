"""Rows of the project store and the queries that read and write them (no rendering, no policy).

The services (``lbw.services.projects``) decide what to write; this module only maps rows to frozen records and
back. A sheet is stored as JSON (``sheet_to_json``); settings as a JSON object the services define; every
project update checks the caller's version (optimistic concurrency) and raises ``VersionConflict`` when another
writer got there first.

Example:
    >>> with store.write() as con:
    ...     project = insert_project(con, "Face", {"prompt": "1girl"}, Sheet.new("Face"), "sub")
    ...     project = update_project(con, project, expected_version=1, mode="add")
    >>> project.version
    2
"""

from __future__ import annotations

import difflib
import json
import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lbw.domain.layouts import LAYOUTS
from lbw.domain.sheet import Sheet
from lbw.errors import LbwError, StoreError, VersionConflict


def now() -> str:
    """The current UTC time, ISO 8601 with milliseconds (sorts as text)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------------------------- sheets


def sheet_to_data(sheet: Sheet) -> dict[str, Any]:
    """A JSON-ready dict of ``sheet`` (fixed blocks in layout order)."""
    return {
        "name": sheet.name,
        "layout": sheet.layout.name,
        "values": list(sheet.values),
        "fixed": [b for b in sheet.layout.ids if b in sheet.fixed],
        "step": sheet.step,
        "lower": sheet.lower,
        "upper": sheet.upper,
        "lora": sheet.lora,
    }


def sheet_to_json(sheet: Sheet) -> str:
    """Compact JSON text of ``sheet``."""
    return json.dumps(sheet_to_data(sheet), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def sheet_from_data(data: Any, *, where: str | None = None) -> Sheet:
    """Rebuild a sheet from ``sheet_to_data`` output; StoreError naming ``where`` when it is not one."""
    try:
        if not isinstance(data, dict) or data.get("layout") not in LAYOUTS or not isinstance(data.get("name"), str):
            raise StoreError("not a stored sheet")
        values = data.get("values")
        fixed = data.get("fixed", [])
        if not isinstance(values, list) or not isinstance(fixed, list) or not all(isinstance(b, str) for b in fixed):
            raise StoreError("not a stored sheet")
        lora = data.get("lora")
        return Sheet(
            name=data["name"],
            layout=LAYOUTS[data["layout"]],
            values=tuple(values),
            fixed=frozenset(fixed),
            step=data.get("step", 0.5),
            lower=data.get("lower"),
            upper=data.get("upper"),
            lora=lora if isinstance(lora, str) else None,
        )
    except LbwError as error:
        raise StoreError(f"stored sheet is damaged: {error.message}", where=where) from None
    except (TypeError, AttributeError):
        raise StoreError("stored sheet is damaged", where=where) from None


def sheet_from_json(text: str, *, where: str | None = None) -> Sheet:
    """Rebuild a sheet from ``sheet_to_json`` text."""
    return sheet_from_data(_json(text, where), where=where)


def _json(text: str | None, where: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise StoreError("stored JSON is damaged", where=where) from None


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# ------------------------------------------------------------------------------------------- projects


@dataclass(frozen=True)
class ProjectRecord:
    """One project row: settings as a JSON object (the services' ``ProjectSettings``), the current sheet."""

    id: int
    name: str
    version: int
    settings: dict[str, Any]
    sheet: Sheet
    mode: str
    archived: bool
    created: str
    updated: str


def _project(row: sqlite3.Row) -> ProjectRecord:
    where = f"project {row['name']!r}"
    settings = _json(row["settings"], where)
    if not isinstance(settings, dict):
        raise StoreError("stored settings are damaged", where=where)
    return ProjectRecord(
        id=row["id"],
        name=row["name"],
        version=row["version"],
        settings=settings,
        sheet=sheet_from_json(row["sheet"], where=where),
        mode=row["mode"],
        archived=bool(row["archived"]),
        created=row["created"],
        updated=row["updated"],
    )


def insert_project(
    con: sqlite3.Connection, name: str, settings: Mapping[str, Any], sheet: Sheet, mode: str
) -> ProjectRecord:
    """Add a project at version 1; StoreError when the name is taken."""
    if con.execute("SELECT 1 FROM projects WHERE name = ?", (name,)).fetchone():
        raise StoreError(f"a project named {name!r} exists already; pick another name")
    stamp = now()
    cursor = con.execute(
        "INSERT INTO projects (name, version, settings, sheet, mode, created, updated) VALUES (?, 1, ?, ?, ?, ?, ?)",
        (name, _dumps(dict(settings)), sheet_to_json(sheet), mode, stamp, stamp),
    )
    return project_by_id(con, int(cursor.lastrowid or 0))


def project_by_id(con: sqlite3.Connection, project_id: int) -> ProjectRecord:
    """The project with this id."""
    row = con.execute("SELECT * FROM projects WHERE id = ?", (project_id,)).fetchone()
    if row is None:
        raise StoreError(f"no project with id {project_id}")
    return _project(row)


def project_by_name(con: sqlite3.Connection, name: str) -> ProjectRecord:
    """The project named ``name``; StoreError listing close names when there is none."""
    row = con.execute("SELECT * FROM projects WHERE name = ?", (name,)).fetchone()
    if row is None:
        names = [r[0] for r in con.execute("SELECT name FROM projects ORDER BY name")]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(repr(n) for n in close)}?" if close else (
            "; `lbw project list` shows them" if names else "; create one with `lbw project new`")
        raise StoreError(f"no project named {name!r}{hint}")
    return _project(row)


def project_records(con: sqlite3.Connection) -> list[ProjectRecord]:
    """Every project, by name."""
    return [_project(row) for row in con.execute("SELECT * FROM projects ORDER BY name")]


def update_project(
    con: sqlite3.Connection,
    project: ProjectRecord,
    *,
    expected_version: int,
    settings: Mapping[str, Any] | None = None,
    sheet: Sheet | None = None,
    mode: str | None = None,
    archived: bool | None = None,
) -> ProjectRecord:
    """Write the given fields and bump the version, if the stored version is ``expected_version``.

    Raises ``VersionConflict`` (nothing written) when another writer changed the project since.
    """
    sets = ["version = version + 1", "updated = ?"]
    values: list[Any] = [now()]
    for column, value in (
        ("settings", None if settings is None else _dumps(dict(settings))),
        ("sheet", None if sheet is None else sheet_to_json(sheet)),
        ("mode", mode),
        ("archived", None if archived is None else int(archived)),
    ):
        if value is not None:
            sets.append(f"{column} = ?")
            values.append(value)
    cursor = con.execute(
        f"UPDATE projects SET {', '.join(sets)} WHERE id = ? AND version = ?",
        (*values, project.id, expected_version),
    )
    if cursor.rowcount != 1:
        check_version(con, project, expected_version)
    return project_by_id(con, project.id)


def check_version(con: sqlite3.Connection, project: ProjectRecord, expected_version: int) -> None:
    """Raise ``VersionConflict`` unless the stored version of ``project`` is ``expected_version``."""
    row = con.execute("SELECT version FROM projects WHERE id = ?", (project.id,)).fetchone()
    found = -1 if row is None else int(row[0])
    if found != expected_version:
        raise VersionConflict(project.name, expected_version, found)


# ----------------------------------------------------------------------------------------- iterations


@dataclass(frozen=True)
class IterationRecord:
    """One rendered plan: its number in the project, kind, the sheet it started from, plan JSON, files."""

    id: int
    project_id: int
    number: int
    kind: str
    sheet_before: Sheet
    plan: str
    folder: str
    grid: str | None
    grid_sha256: str | None
    created: str
    finished: str | None
    extra: dict[str, Any]
    cell_count: int = 0


@dataclass(frozen=True)
class CellRecord:
    """One rendered image of an iteration; ``diff_percent`` against ``base_label`` (None for a base cell)."""

    position: int
    label: str
    block: str | None
    value: float | None
    seed: int
    path: str
    sha256: str
    diff_percent: float | None
    base_label: str | None = None


@dataclass(frozen=True)
class AnalysisRecord:
    """One block of an analyzer iteration's ranked table (means over the seeds)."""

    rank: int
    block: str
    diff_percent: float
    roi_diff_percent: float | None = None
    roi_share_percent: float | None = None


_ITERATION_COLUMNS = (
    "i.id, i.project_id, i.number, i.kind, i.sheet_before, i.plan, i.folder, i.grid, i.grid_sha256, i.created, "
    "i.finished, i.extra, (SELECT count(*) FROM cells c WHERE c.iteration_id = i.id) AS cell_count"
)


def _iteration(row: sqlite3.Row) -> IterationRecord:
    where = f"iteration {row['number']}"
    extra = _json(row["extra"], where)
    return IterationRecord(
        id=row["id"],
        project_id=row["project_id"],
        number=row["number"],
        kind=row["kind"],
        sheet_before=sheet_from_json(row["sheet_before"], where=where),
        plan=row["plan"],
        folder=row["folder"],
        grid=row["grid"],
        grid_sha256=row["grid_sha256"],
        created=row["created"],
        finished=row["finished"],
        extra=extra if isinstance(extra, dict) else {},
        cell_count=row["cell_count"],
    )


def next_iteration_number(con: sqlite3.Connection, project_id: int) -> int:
    """1 + the highest iteration number of the project (1 for the first)."""
    row = con.execute("SELECT max(number) FROM iterations WHERE project_id = ?", (project_id,)).fetchone()
    return int(row[0] or 0) + 1


def insert_iteration(
    con: sqlite3.Connection,
    project_id: int,
    *,
    number: int,
    kind: str,
    sheet_before: Sheet,
    plan: str,
    folder: str,
    grid: str | None,
    grid_sha256: str | None,
    created: str,
    cells: Sequence[CellRecord],
    extra: Mapping[str, Any] | None = None,
    analysis: Sequence[AnalysisRecord] = (),
) -> IterationRecord:
    """Add a finished iteration with its cells (and analyzer table)."""
    cursor = con.execute(
        "INSERT INTO iterations (project_id, number, kind, sheet_before, plan, folder, grid, grid_sha256, created, "
        "finished, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (project_id, number, kind, sheet_to_json(sheet_before), plan, folder, grid, grid_sha256, created, now(),
         _dumps(dict(extra or {}))),
    )
    iteration_id = int(cursor.lastrowid or 0)
    con.executemany(
        "INSERT INTO cells (iteration_id, position, label, block, value, seed, path, sha256, diff_percent, base_label)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(iteration_id, c.position, c.label, c.block, c.value, c.seed, c.path, c.sha256, c.diff_percent,
          c.base_label) for c in cells],
    )
    con.executemany(
        "INSERT INTO analysis_blocks (iteration_id, rank, block, diff_percent, roi_diff_percent, roi_share_percent)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(iteration_id, a.rank, a.block, a.diff_percent, a.roi_diff_percent, a.roi_share_percent) for a in analysis],
    )
    return iteration_by_id(con, iteration_id)


def iteration_by_id(con: sqlite3.Connection, iteration_id: int) -> IterationRecord:
    """The iteration with this id."""
    row = con.execute(f"SELECT {_ITERATION_COLUMNS} FROM iterations i WHERE i.id = ?", (iteration_id,)).fetchone()
    if row is None:
        raise StoreError(f"no iteration with id {iteration_id}")
    return _iteration(row)


def iteration_by_number(con: sqlite3.Connection, project: ProjectRecord, number: int) -> IterationRecord:
    """Iteration ``number`` of ``project``; StoreError saying which numbers exist."""
    row = con.execute(
        f"SELECT {_ITERATION_COLUMNS} FROM iterations i WHERE i.project_id = ? AND i.number = ?", (project.id, number)
    ).fetchone()
    if row is None:
        last = next_iteration_number(con, project.id) - 1
        exists = f"its iterations are 1..{last}" if last else "it has no iteration yet"
        raise StoreError(f"project {project.name!r} has no iteration {number}; {exists}")
    return _iteration(row)


def iteration_records(con: sqlite3.Connection, project_id: int) -> list[IterationRecord]:
    """Every iteration of the project, oldest first."""
    rows = con.execute(
        f"SELECT {_ITERATION_COLUMNS} FROM iterations i WHERE i.project_id = ? ORDER BY i.number", (project_id,)
    )
    return [_iteration(row) for row in rows]


def latest_iteration(con: sqlite3.Connection, project_id: int) -> IterationRecord | None:
    """The newest iteration of the project, if any."""
    row = con.execute(
        f"SELECT {_ITERATION_COLUMNS} FROM iterations i WHERE i.project_id = ? ORDER BY i.number DESC LIMIT 1",
        (project_id,),
    ).fetchone()
    return None if row is None else _iteration(row)


def iteration_count(con: sqlite3.Connection, project_id: int) -> int:
    """How many iterations the project has."""
    return int(con.execute("SELECT count(*) FROM iterations WHERE project_id = ?", (project_id,)).fetchone()[0])


def cell_records(con: sqlite3.Connection, iteration_id: int) -> list[CellRecord]:
    """The cells of an iteration in plan order (position, then seed)."""
    rows = con.execute(
        "SELECT position, label, block, value, seed, path, sha256, diff_percent, base_label FROM cells "
        "WHERE iteration_id = ? ORDER BY position, id", (iteration_id,)
    )
    return [CellRecord(*row) for row in rows]


def analysis_records(con: sqlite3.Connection, iteration_id: int) -> list[AnalysisRecord]:
    """The analyzer table of an iteration, largest change first (empty for a plot iteration)."""
    rows = con.execute(
        "SELECT rank, block, diff_percent, roi_diff_percent, roi_share_percent FROM analysis_blocks "
        "WHERE iteration_id = ? ORDER BY rank", (iteration_id,)
    )
    return [AnalysisRecord(*row) for row in rows]


# ------------------------------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class NewDecision:
    """A decision to record: a block's value/Fix change, or a project-wide one (``block`` None: mode, step...)."""

    action: str
    source: str
    block: str | None = None
    old_value: float | None = None
    new_value: float | None = None
    old_fixed: bool | None = None
    fixed: bool | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DecisionRecord:
    """A recorded decision; ``iteration`` is the number of the iteration it followed (None: before any)."""

    id: int
    action: str
    source: str
    block: str | None
    old_value: float | None
    new_value: float | None
    old_fixed: bool | None
    fixed: bool | None
    iteration: int | None
    detail: dict[str, Any]
    created: str


def insert_decisions(
    con: sqlite3.Connection, project_id: int, decisions: Iterable[NewDecision], *, iteration_id: int | None
) -> None:
    """Record decisions taken after the iteration ``iteration_id`` (None: before the first render)."""
    stamp = now()
    con.executemany(
        "INSERT INTO decisions (project_id, iteration_id, block, old_value, new_value, fixed, source, created, action,"
        " old_fixed, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(project_id, iteration_id, d.block, _finite(d.old_value), _finite(d.new_value), _flag(d.fixed), d.source,
          stamp, d.action, _flag(d.old_fixed), _dumps(dict(d.detail)) if d.detail else None) for d in decisions],
    )


def decision_records(con: sqlite3.Connection, project_id: int) -> list[DecisionRecord]:
    """Every decision of the project, oldest first."""
    rows = con.execute(
        "SELECT d.id, d.action, d.source, d.block, d.old_value, d.new_value, d.old_fixed, d.fixed, i.number, "
        "d.detail, d.created FROM decisions d LEFT JOIN iterations i ON i.id = d.iteration_id "
        "WHERE d.project_id = ? ORDER BY d.id", (project_id,)
    )
    result = []
    for row in rows:
        detail = _json(row[9], f"decision {row[0]}")
        result.append(DecisionRecord(
            id=row[0], action=row[1], source=row[2], block=row[3], old_value=row[4], new_value=row[5],
            old_fixed=None if row[6] is None else bool(row[6]), fixed=None if row[7] is None else bool(row[7]),
            iteration=row[8], detail=detail if isinstance(detail, dict) else {}, created=row[10],
        ))
    return result


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value):
        raise StoreError(f"refusing to store a non-finite number {value!r}")
    return float(value)
