"""The project store: migrations from an empty and from an older database, settings, stored paths, damage."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from lbw.domain.layouts import SD17, SD26
from lbw.domain.sheet import Sheet
from lbw.errors import StoreError
from lbw.services.projects import get_iteration, get_project, list_projects, open_workspace, project_log
from lbw.store import DB_NAME, Store
from lbw.store import records as db
from lbw.store.schema import SCHEMA_VERSION

# The version-1 schema exactly as lbw first wrote it (kept here on purpose: the test must not follow later edits).
V1_SQL = """
CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, version INTEGER NOT NULL DEFAULT 1,
    settings TEXT NOT NULL, sheet TEXT NOT NULL, mode TEXT NOT NULL DEFAULT 'sub', created TEXT NOT NULL,
    updated TEXT NOT NULL);
CREATE TABLE iterations (id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id),
    number INTEGER NOT NULL, kind TEXT NOT NULL, sheet_before TEXT NOT NULL, plan TEXT NOT NULL, folder TEXT NOT NULL,
    grid TEXT, grid_sha256 TEXT, created TEXT NOT NULL, UNIQUE (project_id, number));
CREATE TABLE cells (id INTEGER PRIMARY KEY, iteration_id INTEGER NOT NULL REFERENCES iterations(id),
    position INTEGER NOT NULL, label TEXT NOT NULL, block TEXT, value REAL, seed INTEGER NOT NULL, path TEXT NOT NULL,
    sha256 TEXT NOT NULL, diff_percent REAL);
CREATE TABLE decisions (id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id),
    iteration_id INTEGER REFERENCES iterations(id), block TEXT, old_value REAL, new_value REAL, fixed INTEGER,
    source TEXT NOT NULL, created TEXT NOT NULL);
PRAGMA user_version = 1;
"""


def _tables(path: Path) -> dict[str, list[str]]:
    con = sqlite3.connect(path)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: [r[1] for r in con.execute(f"PRAGMA table_info({n})")] for n in names}
    finally:
        con.close()


def test_empty_folder_becomes_a_current_workspace(tmp_path):
    store = Store.open(tmp_path / "ws")
    assert store.schema_version() == SCHEMA_VERSION == 2
    tables = _tables(tmp_path / "ws" / DB_NAME)
    assert set(tables) == {"projects", "iterations", "cells", "decisions", "analysis_blocks"}
    assert "archived" in tables["projects"] and "action" in tables["decisions"]
    con = store.connect()
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert con.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    finally:
        con.close()
    Store.open(tmp_path / "ws")  # opening again changes nothing
    assert store.schema_version() == 2 and list_projects(store) == []


def test_version_1_database_is_upgraded_with_its_data(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    con = sqlite3.connect(folder / DB_NAME)
    con.executescript(V1_SQL)
    sheet = Sheet.new("Old", SD17).set_values({"IN05": 0.0}, fix=True)
    stamp = "2024-01-01T00:00:00.000+00:00"
    con.execute("INSERT INTO projects VALUES (1, 'old one', 3, ?, ?, 'add', ?, ?)",
                (json.dumps({"prompt": "1girl", "steps": 8, "seeds": [3, 4]}), db.sheet_to_json(sheet), stamp, stamp))
    con.execute("INSERT INTO iterations VALUES (1, 1, 1, 'sub', ?, '{}', 'projects/1/iterations/0001-sub', NULL, "
                "NULL, ?)", (db.sheet_to_json(Sheet.new("Old", SD17)), stamp))
    con.execute("INSERT INTO cells VALUES (1, 1, 0, 'Sub', NULL, NULL, 1, 'projects/1/c0.png', 'ab', NULL)")
    con.execute("INSERT INTO cells VALUES (2, 1, 1, 'SubIN05_0', 'IN05', 0.0, 1, 'projects/1/c1.png', 'cd', 12.5)")
    con.execute("INSERT INTO decisions VALUES (1, 1, 1, 'IN05', 1.0, 0.0, 1, 'click', ?)", (stamp,))
    con.execute("INSERT INTO decisions VALUES (2, 1, 1, 'IN04', 1.0, 1.0, 0, 'command', ?)", (stamp,))
    con.commit()
    con.close()

    store = open_workspace(folder)
    assert store.schema_version() == 2
    view = get_project(store, "old one")
    assert (view.version, view.mode, view.archived, view.iteration_count) == (3, "add", False, 1)
    assert view.settings.prompt == "1girl" and view.settings.seeds == (3, 4) and view.settings.width == 512
    assert view.sheet == sheet
    it = get_iteration(store, "old one", 1)
    assert [(c.label, c.block, c.diff_percent, c.base_label) for c in it.cells] == [
        ("Sub", None, None, None), ("SubIN05_0", "IN05", 12.5, None)]
    assert it.cells[1].image == store.workspace / "projects" / "1" / "c1.png"
    assert it.analysis is None and it.extra_files == {}
    log = [e.text for e in project_log(store, "old one")]
    assert log == ["iteration 1: sub, 2 cells, from open: 17 of 17 blocks unfixed "
                   "(BASE,IN01,IN02,IN04,IN05,IN07,IN08,M00,OUT03,OUT04,OUT05,OUT06,OUT07,OUT08,OUT09,OUT10,OUT11)",
                   "fix IN05 1 -> 0 fixed (click)", "unfix IN04 1 -> 1 unfixed (command)"]


def test_newer_or_damaged_database_is_refused(tmp_path):
    folder = tmp_path / "new"
    store = Store.open(folder)
    con = sqlite3.connect(store.db_path)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(StoreError, match="newer lbw \\(schema 99; this lbw knows up to 2\\)"):
        Store.open(folder)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / DB_NAME).write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not an lbw workspace database"):
        Store.open(junk)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        Store.open(tmp_path / "file")
    with pytest.raises(StoreError, match="no lbw workspace here"):
        Store.open(tmp_path / "none", create=False)
    assert not (tmp_path / "none").exists()


def test_stored_paths_stay_inside_the_workspace(tmp_path):
    store = Store.open(tmp_path / "ws")
    (store.workspace / "projects").mkdir()
    assert store.path_of("projects/a.png") == store.workspace / "projects" / "a.png"
    for bad in ("../x.png", "/etc/passwd", "projects/../../x", "", "a\\..\\b", "a\x00b"):
        with pytest.raises(StoreError):
            store.path_of(bad)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, store.workspace / "projects" / "link")
    with pytest.raises(StoreError, match="symbolic link"):
        store.path_of("projects/link/secret.png")
    assert store.relative(store.workspace / "projects" / "a.png") == "projects/a.png"
    with pytest.raises(StoreError, match="outside the workspace"):
        store.relative(outside)


def test_damaged_rows_are_one_line_errors(tmp_path):
    store = Store.open(tmp_path / "ws")
    with store.write() as con:
        db.insert_project(con, "P", {}, Sheet.new("P", SD26), "sub")
        con.execute("UPDATE projects SET sheet = '{\"name\": \"P\", \"layout\": \"SD26\", \"values\": [1]}'")
    with pytest.raises(StoreError, match="project 'P': stored sheet is damaged: SD26 needs 26 values, got 1"):
        get_project(store, "P")
    with store.write() as con:
        con.execute("UPDATE projects SET sheet = ?, settings = '[1, 2]'", (db.sheet_to_json(Sheet.new("P")),))
    with pytest.raises(StoreError, match="stored settings are damaged"):
        get_project(store, "P")


def test_a_failed_write_leaves_nothing(tmp_path):
    store = Store.open(tmp_path / "ws")
    with pytest.raises(RuntimeError), store.write() as con:
        db.insert_project(con, "P", {}, Sheet.new("P", SD26), "sub")
        raise RuntimeError("stop")
    assert list_projects(store) == []
    with pytest.raises(StoreError, match="exists already"), store.write() as con:
        db.insert_project(con, "Q", {}, Sheet.new("Q", SD26), "sub")
        db.insert_project(con, "Q", {}, Sheet.new("Q", SD26), "sub")
    assert list_projects(store) == []
