"""Sheet edits: every change of a project's sheet or mode, each recorded as decisions in one transaction.

Each action takes ``expected_version`` and raises ``VersionConflict`` when the project changed meanwhile; an edit
that changes nothing records nothing and keeps the version. ``undo_to`` is itself recorded (history is kept).

Example:
    >>> view = fix_cell(store, "Face", "SubIN05_0", take=True, expected_version=view.version)
    >>> view = set_step(store, "Face", 0.25, expected_version=view.version)
    >>> view = undo_to(store, "Face", 1, expected_version=view.version)      # the sheet iteration 1 came from
    >>> view.sheet.value("IN05"), "IN05" in view.sheet.fixed
    (1.0, False)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from lbw.domain.layouts import canonical_block_id, layout_named
from lbw.domain.sheet import Sheet, variants
from lbw.errors import LbwError, ProjectError
from lbw.services.project_core import _analysis_view, _Change, _check_mode, _check_source, _mutate
from lbw.services.project_types import MODES, ProjectView
from lbw.store import Store
from lbw.store import records as db


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


# ------------------------------------------------------------------------------------------ internals


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
