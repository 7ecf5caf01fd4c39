"""Projects: the state of a tuning in one store, one function per user action (the CLI and the web call these).

A project is one tuning: the LoRA (and others rendered beside it), the model, the backend, the render settings,
the sheet (weights, Fix flags, step, bounds), the mode (sub/add/subadd/addsub) and its history. Every render is
an iteration (the sheet before, the plan, the cells with Diff %); every change of the sheet is a decision
(block, old value, new value, fixed, source, the iteration it followed, the time). Nothing is ever deleted:
``undo_to`` goes back to an iteration's sheet and is itself recorded as a decision.

Every mutating call takes ``expected_version`` (the ``version`` of the ``ProjectView`` the caller shows) and
raises ``VersionConflict`` when the project changed meanwhile (another tab or command): reload, then try again.
A call that changes nothing records nothing and keeps the version. Renders add iterations without changing the
version (they change no editable state), except that a render in another mode first switches the mode.

Imports stay light (no torch, numpy or PIL) until a render or an analyzer table is asked for.

Example:
    >>> store = open_workspace("lbw-workspace")
    >>> view = create_project(store, "Face", ProjectSettings(lora="face.safetensors", model="model/",
    ...                                                      prompt="1girl"))
    >>> it = render_iteration(store, "Face")                      # the Sub grid of the sheet
    >>> view = fix_cell(store, "Face", "SubIN05_0", take=True, expected_version=view.version)
    >>> view.sheet.value("IN05"), "IN05" in view.sheet.fixed
    (0.0, True)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lbw.domain.layouts import SD26, Layout, canonical_block_id, layout_named
from lbw.domain.sheet import Sheet, variants
from lbw.domain.sheet_file import sheet_to_toml
from lbw.domain.text import is_printable, json_text, printable
from lbw.domain.weights import validate_name
from lbw.errors import LbwError, OutputError, ProjectError, StoreError
from lbw.files.atomic import write_text_atomic
from lbw.render.plan import Cell, LoraSpec, Plan, Settings, require_prompt
from lbw.services.project_types import (
    A1111_MODES,
    BACKENDS,
    MAX_NAME,
    MODES,
    SOURCES,
    AnalysisBlockView,
    AnalysisView,
    CellView,
    DecisionView,
    IterationSummary,
    IterationView,
    LogEntry,
    OtherLora,
    ProjectSettings,
    ProjectView,
)
from lbw.store import DEFAULT_WORKSPACE, Store
from lbw.store import records as db

__all__ = [
    "DEFAULT_WORKSPACE",
    "AnalysisBlockView",
    "AnalysisView",
    "CellView",
    "DecisionView",
    "ExportResult",
    "IterationSummary",
    "IterationView",
    "LogEntry",
    "OtherLora",
    "ProjectSettings",
    "ProjectView",
    "Store",
    "analysis_table",
    "check_prompt",
    "check_settings",
    "create_project",
    "export_project",
    "fix_block",
    "fix_cell",
    "get_iteration",
    "get_project",
    "list_iterations",
    "list_projects",
    "open_workspace",
    "project_log",
    "render_iteration",
    "replace_sheet",
    "run_analysis",
    "set_archived",
    "set_block",
    "set_bounds",
    "set_mode",
    "set_step",
    "start_sheet_from_analysis",
    "undo_to",
    "unfix_block",
    "update_settings",
    "weights_text",
]

CellProgress = Callable[[int, int, str, bool], None]
StepProgress = Callable[[float, str], None]


# ------------------------------------------------------------------------------------------ workspace


def open_workspace(path: str | os.PathLike[str] = DEFAULT_WORKSPACE, *, create: bool = True) -> Store:
    """Open the workspace folder (created with its database unless ``create=False``)."""
    return Store.open(path, create=create)


# -------------------------------------------------------------------------------------------- projects


def create_project(
    store: Store,
    name: str,
    settings: ProjectSettings | None = None,
    sheet: Sheet | None = None,
    *,
    mode: str = "sub",
    layout: Layout | str = SD26,
) -> ProjectView:
    """Add a project: ``sheet`` (e.g. read from a sheet TOML) or a new one (every block 1, nothing fixed).

    Local paths in the settings are made absolute; the settings are checked as a render would check them.
    """
    name = _project_name(name)
    settings = _normalised(settings or ProjectSettings())
    check_settings(settings)
    _check_mode(mode)
    if sheet is None:
        sheet = Sheet.new(_sheet_name(name), layout_named(layout) if isinstance(layout, str) else layout)
    with store.write() as con:
        record = db.insert_project(con, name, settings.to_dict(), sheet, mode)
        return _view(store, con, record)


def get_project(store: Store, name: str) -> ProjectView:
    """The project named ``name``."""
    with store.read() as con:
        return _view(store, con, db.project_by_name(con, name))


def list_projects(store: Store, *, archived: bool = False) -> list[ProjectView]:
    """Every project by name (archived ones only with ``archived=True``)."""
    with store.read() as con:
        return [_view(store, con, r) for r in db.project_records(con) if archived or not r.archived]


def update_settings(
    store: Store, name: str, changes: Mapping[str, Any], *, expected_version: int, source: str = "command"
) -> ProjectView:
    """Change some settings (``{"prompt": "1girl", "steps": 20}``); recorded as one ``settings`` decision."""

    def change(record: db.ProjectRecord, con: sqlite3.Connection) -> _Change:
        old = _settings_of(record)
        new = _normalised(old.with_changes(dict(changes), where=f"project {record.name!r}"))
        check_settings(new)
        before, after = old.to_dict(), new.to_dict()
        changed = {k: [before[k], after[k]] for k in after if before[k] != after[k]}
        if not changed:
            return _Change()
        return _Change(settings=new, decisions=[db.NewDecision("settings", source, detail={"changed": changed})])

    return _mutate(store, name, expected_version, change)


def set_archived(
    store: Store, name: str, archived: bool = True, *, expected_version: int, source: str = "command"
) -> ProjectView:
    """Archive a project (hidden from ``list_projects``; nothing deleted) or bring it back."""

    def change(record: db.ProjectRecord, con: sqlite3.Connection) -> _Change:
        if record.archived == archived:
            return _Change()
        action = "archive" if archived else "unarchive"
        return _Change(archived=archived, decisions=[db.NewDecision(action, source)])

    return _mutate(store, name, expected_version, change)


# ------------------------------------------------------------------------------------------ the sheet


def set_block(
    store: Store,
    name: str,
    block: str,
    *,
    value: float | None = None,
    fixed: bool | None = None,
    source: str = "command",
    expected_version: int,
    action: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> ProjectView:
    """Set a block's weight and/or Fix flag (None: unchanged); one decision when something changed."""
    _check_source(source)

    def change(record: db.ProjectRecord, con: sqlite3.Connection) -> _Change:
        return _block_change(record, block, value, fixed, source, action, detail)

    return _mutate(store, name, expected_version, change)


def fix_block(
    store: Store,
    name: str,
    block: str,
    value: float | None = None,
    *,
    source: str = "command",
    expected_version: int,
) -> ProjectView:
    """Fix ``block`` at ``value`` (None: at its current weight)."""
    return set_block(store, name, block, value=value, fixed=True, source=source, expected_version=expected_version,
                     action="fix")


def unfix_block(
    store: Store, name: str, block: str, *, source: str = "command", expected_version: int
) -> ProjectView:
    """Unfix ``block``: it gets Sub/Add variants again (its weight stays)."""
    return set_block(store, name, block, fixed=False, source=source, expected_version=expected_version,
                     action="unfix")


def fix_cell(
    store: Store,
    name: str,
    cell_label: str,
    *,
    take: bool = True,
    iteration: int | None = None,
    source: str = "click",
    expected_version: int,
) -> ProjectView:
    """Fix the block a cell varies: ``take=True`` at the cell's value, ``take=False`` ("keep") at the base value.

    The label (``SubIN05_0``) is looked up in the current sheet's Sub/Add lists first, then among the cells of
    iteration ``iteration`` (default: the latest), so a cell clicked in any shown grid works.
    """
    _check_source(source)

    def change(record: db.ProjectRecord, con: sqlite3.Connection) -> _Change:
        block, cell_value, base_value, found_in = _resolve_cell(con, record, cell_label.strip(), iteration)
        detail: dict[str, Any] = {"cell": cell_label.strip()}
        if found_in is not None:
            detail["iteration"] = found_in
        return _block_change(record, block, cell_value if take else base_value, True, source,
                             "take" if take else "keep", detail)

    return _mutate(store, name, expected_version, change)


def set_mode(store: Store, name: str, mode: str, *, source: str = "command", expected_version: int) -> ProjectView:
    """Switch the list the next render uses: ``sub``, ``add``, ``subadd`` or ``addsub``."""
    _check_mode(mode)
    _check_source(source)

    def change(record: db.ProjectRecord, con: sqlite3.Connection) -> _Change:
        if record.mode == mode:
            return _Change()
        return _Change(mode=mode, decisions=[db.NewDecision("mode", source, detail={"old": record.mode, "new": mode})])

    return _mutate(store, name, expected_version, change)


def set_step(store: Store, name: str, step: float, *, source: str = "command", expected_version: int) -> ProjectView:
    """Set the sheet's step (AddSubValue)."""
    _check_source(source)

    def change(record: db.ProjectRecord, con: sqlite3.Connection) -> _Change:
        sheet = _sheet_op(lambda: replace(record.sheet, step=step))
        if sheet == record.sheet:
            return _Change()
        return _Change(sheet=sheet, decisions=[db.NewDecision(
            "step", source, old_value=record.sheet.step, new_value=sheet.step,
            detail={"old": record.sheet.step, "new": sheet.step})])

    return _mutate(store, name, expected_version, change)


def set_bounds(
    store: Store,
    name: str,
    lower: float | None,
    upper: float | None,
    *,
    source: str = "command",
    expected_version: int,
) -> ProjectView:
    """Set (or with None remove) the bounds the Sub/Add variants never leave."""
    _check_source(source)

    def change(record: db.ProjectRecord, con: sqlite3.Connection) -> _Change:
        sheet = _sheet_op(lambda: replace(record.sheet, lower=lower, upper=upper))
        if sheet == record.sheet:
            return _Change()
        return _Change(sheet=sheet, decisions=[db.NewDecision("bounds", source, detail={
            "old": [record.sheet.lower, record.sheet.upper], "new": [sheet.lower, sheet.upper]})])

    return _mutate(store, name, expected_version, change)


def replace_sheet(
    store: Store, name: str, sheet: Sheet, *, source: str = "command", expected_version: int
) -> ProjectView:
    """Replace the whole sheet (e.g. one read from a TOML file); one decision per block that changed."""
    _check_source(source)

    def change(record: db.ProjectRecord, con: sqlite3.Connection) -> _Change:
        return _sheet_change(record, sheet, "sheet", source, {})

    return _mutate(store, name, expected_version, change)


def undo_to(
    store: Store, name: str, iteration_number: int, *, source: str = "command", expected_version: int
) -> ProjectView:
    """Go back to the sheet (and mode) iteration ``iteration_number`` was rendered from; history is kept and the
    undo is recorded as decisions (one per block it changed, or one saying nothing changed)."""
    _check_source(source)

    def change(record: db.ProjectRecord, con: sqlite3.Connection) -> _Change:
        target = db.iteration_by_number(con, record, iteration_number)
        detail = {"iteration": iteration_number}
        result = _sheet_change(record, target.sheet_before, "undo", source, detail)
        if target.kind in MODES and target.kind != record.mode:
            result.mode = target.kind
            result.decisions.append(db.NewDecision("undo", source, detail={**detail, "old": record.mode,
                                                                           "new": target.kind}))
        if not result.decisions:
            result.decisions.append(db.NewDecision("undo", source, detail={**detail, "unchanged": True}))
        result.force = True
        return result

    return _mutate(store, name, expected_version, change)


def start_sheet_from_analysis(
    store: Store,
    name: str,
    iteration_number: int,
    *,
    important: float | None = None,
    unneeded: float | None = None,
    source: str = "command",
    expected_version: int,
) -> ProjectView:
    """Set the sheet from an analyzer iteration: important blocks 1 and fixed, unneeded 0 and fixed, unclear 0.5
    and open (the tutorial's rule), classified with the given thresholds (default: the run's own).

    Refused when no block changed the image (max Diff % = 0): the prompt, trigger or strength needs a look first.
    """
    from lbw.services.analyze import SHEET_ENTRY

    _check_source(source)

    def change(record: db.ProjectRecord, con: sqlite3.Connection) -> _Change:
        target = db.iteration_by_number(con, record, iteration_number)
        table = _analysis_view(con, target, important, unneeded)
        if table is None:
            raise ProjectError(f"iteration {iteration_number} is a {target.kind} grid, not an analyzer run")
        if table.no_change:
            raise ProjectError(NO_CHANGE_MESSAGE)
        values = dict(zip(record.sheet.layout.ids, record.sheet.values, strict=True))
        fixed = set(record.sheet.fixed)
        for block, category in table.classes().items():
            if block in values:
                values[block], is_fixed = SHEET_ENTRY[category]
                (fixed.add if is_fixed else fixed.discard)(block)
        sheet = _sheet_op(lambda: replace(record.sheet, values=tuple(values.values()), fixed=frozenset(fixed)))
        return _sheet_change(record, sheet, "analysis", source, {
            "iteration": iteration_number, "important": table.important, "unneeded": table.unneeded})

    return _mutate(store, name, expected_version, change)


NO_CHANGE_MESSAGE = (
    "no block changed the image (max Diff % = 0): check the prompt/trigger/strength; no sheet was suggested"
)


# ----------------------------------------------------------------------------------------- iterations


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


@dataclass(frozen=True)
class ExportResult:
    """The files ``export_project`` wrote."""

    sheet: Path
    settings: Path


def export_project(store: Store, name: str, dest: str | os.PathLike[str], *, force: bool = False) -> ExportResult:
    """Write the project's sheet (``sheet.toml``, readable by every ``lbw sheet`` command and ``bake -w``) and its
    settings (``settings.json``) into the folder ``dest``; existing files are kept unless ``force``."""
    view = get_project(store, name)
    folder = Path(dest)
    if folder.exists() and not folder.is_dir():
        raise OutputError("is a file; expected a folder to export into", where=str(folder))
    sheet_path, settings_path = folder / "sheet.toml", folder / "settings.json"
    for path in (sheet_path, settings_path):
        if path.exists() and not force:
            raise OutputError("exists; pass --force to overwrite", where=str(path))
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(sheet_path, sheet_to_toml(view.sheet))
    data = {"lbw_project": 1, "name": view.name, "mode": view.mode, "settings": view.settings.to_dict()}
    write_text_atomic(settings_path, json_text(data, indent=2) + "\n")
    return ExportResult(sheet_path, settings_path)


def read_settings_file(path: str | os.PathLike[str]) -> ProjectSettings:
    """Settings from an exported ``settings.json`` (or a bare settings object)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise ProjectError("settings file not found", where=str(path)) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ProjectError(f"not a settings JSON file: {error}", where=str(path)) from None
    if isinstance(data, dict) and "lbw_project" in data:
        data = data.get("settings")
    return ProjectSettings.from_dict(data, where=str(path))


def weights_text(
    value: str | None,
    *,
    project: str | None = None,
    workspace: str | os.PathLike[str] = DEFAULT_WORKSPACE,
    option: str = "--weights",
) -> str | None:
    """A weights argument as vector text ``NAME:v1,...``: a sheet file (``*.toml``) and a project (its current
    sheet) are read; anything else (a vector, a preset name) is returned as given; None when neither is given.

    Example:
        >>> weights_text(None, project="Face")
        'Face:1,0,1,...'
    """
    if project is not None:
        if value is not None:
            raise ProjectError(f"give {option} or --project, not both")
        return get_project(open_workspace(workspace, create=False), project).sheet.weight_line()
    if value is not None and value.strip().lower().endswith(".toml"):
        from lbw.domain.sheet_file import sheet_from_toml

        path = Path(value.strip())
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ProjectError("sheet file not found", where=str(path)) from None
        except (OSError, UnicodeDecodeError) as error:
            raise ProjectError(f"cannot read the sheet file: {error}", where=str(path)) from None
        return sheet_from_toml(text, where=str(path)).weight_line()
    return value


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


def check_prompt(settings: ProjectSettings, allow_empty: bool = False) -> None:
    """Refuse a render without a prompt (a LoRA's trigger usually lives there) unless ``allow_empty``."""
    try:
        require_prompt(settings.prompt, allow_empty)
    except LbwError as error:
        raise ProjectError(error.message) from None


def render_settings(settings: ProjectSettings) -> Settings:
    """The plan settings of a project."""
    return Settings(prompt=settings.prompt, negative_prompt=settings.negative, steps=settings.steps, cfg=settings.cfg,
                    sampler=settings.sampler, scheduler=settings.scheduler, width=settings.width,
                    height=settings.height, clip_skip=settings.clip_skip, seeds=settings.seeds)


def lora_specs(settings: ProjectSettings) -> tuple[LoraSpec, ...]:
    """The tuned LoRA first, then the others at their strengths (ProjectError when the project has no LoRA)."""
    if not settings.lora:
        raise ProjectError("the project has no LoRA; set one (lbw project set NAME --lora FILE)")
    specs = [LoraSpec(path=_local(settings.lora), name=settings.lora_name or _stem(settings.lora),
                      strength=settings.strength, te_strength=settings.te_strength, tuned=True)]
    for other in settings.other_loras:
        specs.append(LoraSpec(path=_local(other.path), name=other.name or _stem(other.path), strength=other.strength,
                              tuned=False))
    return tuple(specs)


def check_settings(settings: ProjectSettings) -> None:
    """Refuse settings a render would refuse (sizes, steps, seeds, sampler, backend, URL, region)."""
    if settings.backend not in BACKENDS:
        raise ProjectError(f"unknown backend {settings.backend!r}; expected one of {', '.join(BACKENDS)}")
    if settings.a1111_mode not in A1111_MODES:
        raise ProjectError(f"unknown a1111 mode {settings.a1111_mode!r}; expected one of {', '.join(A1111_MODES)}")
    if settings.url is not None and not settings.url.startswith(("http://", "https://")):
        raise ProjectError(f"the server URL must start with http:// or https://, got {printable(settings.url)!r}")
    loras = (LoraSpec(name="x", strength=settings.strength, te_strength=settings.te_strength),
             *(LoraSpec(name="o", strength=o.strength, tuned=False) for o in settings.other_loras))
    try:
        Plan(kind="custom", layout="SD26", cells=(Cell("check", (1.0,) * len(SD26)),), settings=render_settings(
            settings), loras=loras)
    except LbwError as error:
        raise ProjectError(f"setting refused: {error.message}") from None
    if settings.roi:
        from lbw.render.analysis import Box

        try:
            Box.parse(settings.roi, settings.width, settings.height)
        except LbwError as error:
            raise ProjectError(f"setting 'roi' refused: {error.message}") from None


# ------------------------------------------------------------------------------------------- internals


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


def _block_change(
    record: db.ProjectRecord,
    block: str,
    value: float | None,
    fixed: bool | None,
    source: str,
    action: str | None,
    detail: Mapping[str, Any] | None,
) -> _Change:
    sheet = record.sheet
    block_id = _block_id(sheet, block)
    old_value, old_fixed = sheet.value(block_id), block_id in sheet.fixed
    new = sheet
    if value is not None:
        new = _sheet_op(lambda: new.set_values({block_id: value}))
    if fixed is True:
        new = new.fix([block_id])
    elif fixed is False:
        new = new.unfix([block_id])
    if new == sheet:
        return _Change()
    new_value, new_fixed = new.value(block_id), block_id in new.fixed
    name = action or ("fix" if new_fixed and not old_fixed else "unfix" if old_fixed and not new_fixed else "set")
    decision = db.NewDecision(name, source, block_id, old_value, new_value, old_fixed, new_fixed, dict(detail or {}))
    return _Change(sheet=new, decisions=[decision])


def _sheet_change(record: db.ProjectRecord, sheet: Sheet, action: str, source: str,
                  detail: Mapping[str, Any]) -> _Change:
    old = record.sheet
    if sheet.layout != old.layout:
        raise ProjectError(f"the sheet is {sheet.layout.name}; the project's sheet is {old.layout.name}")
    decisions = []
    for block, before, after in zip(old.layout.ids, old.values, sheet.values, strict=True):
        was, now = block in old.fixed, block in sheet.fixed
        if before != after or was != now:
            decisions.append(db.NewDecision(action, source, block, before, after, was, now, dict(detail)))
    if old.step != sheet.step:
        decisions.append(db.NewDecision(action, source, old_value=old.step, new_value=sheet.step,
                                        detail={**detail, "step": [old.step, sheet.step]}))
    if (old.lower, old.upper) != (sheet.lower, sheet.upper):
        decisions.append(db.NewDecision(action, source, detail={**detail, "bounds": [[old.lower, old.upper],
                                                                                     [sheet.lower, sheet.upper]]}))
    if (old.name, old.lora) != (sheet.name, sheet.lora):
        decisions.append(db.NewDecision(action, source, detail={**detail, "name": [old.name, sheet.name],
                                                                "lora": [old.lora, sheet.lora]}))
    if not decisions:
        return _Change()
    return _Change(sheet=sheet, decisions=decisions)


def _resolve_cell(
    con: sqlite3.Connection, record: db.ProjectRecord, label: str, iteration: int | None
) -> tuple[str, float, float, int | None]:
    """(block, the cell's value, the base value, the iteration it came from or None for the current plan)."""
    sheet = record.sheet
    if iteration is None:
        for kind in ("sub", "add"):
            for variant in variants(sheet, kind).entries:
                if variant.name == label and variant.block_id is not None:
                    index = sheet.layout.index(variant.block_id)
                    return variant.block_id, variant.weights.numbers()[index], sheet.values[index], None
        target = db.latest_iteration(con, record.id)
    else:
        target = db.iteration_by_number(con, record, iteration)
    if target is not None:
        for cell in db.cell_records(con, target.id):
            if cell.label == label and cell.block is not None and cell.value is not None:
                return cell.block, cell.value, _base_value(target, cell), target.number
    shown = [v.name for kind in ("sub", "add") for v in variants(sheet, kind).entries if v.block_id][:8]
    where = f"iteration {target.number}" if target is not None else "any iteration"
    raise ProjectError(f"no cell {label!r} in the current {record.mode} list or {where}; cells now: "
                       f"{', '.join(shown) or '(none: every block is fixed)'}")


def _base_value(target: db.IterationRecord, cell: db.CellRecord) -> float:
    """The block's value in the base cell the clicked cell was compared with."""
    try:
        plan = json.loads(target.plan)
        ids = layout_named(plan["layout"]).ids
        for item in plan["cells"]:
            if item["label"] == cell.base_label and cell.block in ids:
                return float(item["values"][ids.index(cell.block)])
    except (ValueError, KeyError, TypeError, IndexError, LbwError):
        pass
    return target.sheet_before.value(cell.block) if cell.block in target.sheet_before.layout else 1.0


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


def _block_id(sheet: Sheet, block: str) -> str:
    block_id = canonical_block_id(block.strip())
    if block_id not in sheet.layout:
        raise ProjectError(f"block {block!r} is not in the sheet's layout {sheet.layout.name} "
                           f"({', '.join(sheet.layout.ids)})")
    return block_id


def _sheet_op(make: Callable[[], Sheet]) -> Sheet:
    try:
        return make()
    except LbwError as error:
        raise ProjectError(error.message) from None


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ProjectError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ProjectError(f"unknown decision source {source!r}; expected one of {', '.join(SOURCES)}")


def _project_name(name: str) -> str:
    if not isinstance(name, str):
        raise ProjectError(f"a project name is text, got {type(name).__name__}")
    stripped = name.strip()
    if not stripped:
        raise ProjectError("the project name is empty")
    if len(stripped) > MAX_NAME:
        raise ProjectError(f"the project name is longer than {MAX_NAME} characters")
    if not is_printable(stripped):
        raise ProjectError(f"the project name '{printable(stripped)}' contains control characters")
    return stripped


def _sheet_name(name: str) -> str:
    try:
        return validate_name(name, what="sheet name")
    except LbwError:
        cleaned = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in name).strip("_")
        try:
            return validate_name(cleaned or "Sheet", what="sheet name")
        except LbwError:
            return "Sheet"


def _normalised(settings: ProjectSettings) -> ProjectSettings:
    """Local paths made absolute (a server-side name is kept as given)."""
    return replace(
        settings,
        lora=_absolute(settings.lora),
        model=_absolute(settings.model),
        other_loras=tuple(replace(o, path=_absolute(o.path) or o.path) for o in settings.other_loras),
    )


def _absolute(value: str | None) -> str | None:
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


def _local(value: str) -> str | None:
    path = Path(value)
    return str(path.resolve()) if path.exists() else None


def _stem(value: str) -> str:
    path = Path(value)
    return path.stem if path.suffix else value

