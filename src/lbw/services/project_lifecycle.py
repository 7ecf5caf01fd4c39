"""Project lifecycle: open the workspace, create, read, list, change settings, archive and export projects, and
read a project's sheet as a weights argument.

Example:
    >>> store = open_workspace("lbw-workspace")
    >>> view = create_project(store, "Face", ProjectSettings(lora="face.safetensors", model="model/", prompt="1girl"))
    >>> view = update_settings(store, "Face", {"steps": 20}, expected_version=view.version)
    >>> export_project(store, "Face", "face-export").sheet.name
    'sheet.toml'
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbw.domain.layouts import SD26, Layout, layout_named
from lbw.domain.sheet import Sheet
from lbw.domain.sheet_file import sheet_to_toml
from lbw.domain.text import is_printable, json_text, printable
from lbw.domain.weights import validate_name
from lbw.errors import LbwError, OutputError, ProjectError
from lbw.files.atomic import write_text_atomic
from lbw.services.project_core import _Change, _check_mode, _mutate, _settings_of, _view
from lbw.services.project_settings import _normalised, check_settings
from lbw.services.project_types import MAX_NAME, ProjectSettings, ProjectView
from lbw.store import DEFAULT_WORKSPACE, Store
from lbw.store import records as db

# ------------------------------------------------------------------------------------------ workspace


def open_workspace(path: str | os.PathLike[str] = DEFAULT_WORKSPACE, *, create: bool = True) -> Store:
    """Open the workspace folder (created with its database unless ``create=False``)."""
    return Store.open(path, create=create)


# ------------------------------------------------------------------------------------------- projects


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


# ------------------------------------------------------------------------------------------ internals


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
