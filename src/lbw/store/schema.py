"""The workspace database schema, as a list of migrations numbered by ``PRAGMA user_version``.

``MIGRATIONS[i]`` upgrades a database at version ``i`` to version ``i + 1``; an empty file is version 0. Each
migration is a tuple of single statements run in one transaction together with the new ``user_version``, so a
database is always at exactly one version (a crash mid-upgrade leaves the old one). Never edit a released
migration: append a new one.

Version 1: projects, iterations, cells, decisions.
Version 2: archived projects, decision actions (``fix``/``unfix``/``take``/``keep``/``mode``/``undo``...) with the
old Fix flag and a JSON detail, each cell's base cell, iteration end time and extra files (analyzer grids, diff
images), the analyzer's per-block table, indexes.

Example:
    >>> len(MIGRATIONS)
    2
"""

from __future__ import annotations

V1: tuple[str, ...] = (
    """CREATE TABLE projects (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        version INTEGER NOT NULL DEFAULT 1,
        settings TEXT NOT NULL,
        sheet TEXT NOT NULL,
        mode TEXT NOT NULL DEFAULT 'sub',
        created TEXT NOT NULL,
        updated TEXT NOT NULL
    )""",
    """CREATE TABLE iterations (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id),
        number INTEGER NOT NULL,
        kind TEXT NOT NULL,
        sheet_before TEXT NOT NULL,
        plan TEXT NOT NULL,
        folder TEXT NOT NULL,
        grid TEXT,
        grid_sha256 TEXT,
        created TEXT NOT NULL,
        UNIQUE (project_id, number)
    )""",
    """CREATE TABLE cells (
        id INTEGER PRIMARY KEY,
        iteration_id INTEGER NOT NULL REFERENCES iterations(id),
        position INTEGER NOT NULL,
        label TEXT NOT NULL,
        block TEXT,
        value REAL,
        seed INTEGER NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        diff_percent REAL
    )""",
    """CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id),
        iteration_id INTEGER REFERENCES iterations(id),
        block TEXT,
        old_value REAL,
        new_value REAL,
        fixed INTEGER,
        source TEXT NOT NULL,
        created TEXT NOT NULL
    )""",
)

V2: tuple[str, ...] = (
    "ALTER TABLE projects ADD COLUMN archived INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE decisions ADD COLUMN action TEXT NOT NULL DEFAULT 'fix'",
    "ALTER TABLE decisions ADD COLUMN old_fixed INTEGER",
    "ALTER TABLE decisions ADD COLUMN detail TEXT",
    "UPDATE decisions SET action = CASE WHEN fixed = 0 THEN 'unfix' ELSE 'fix' END",
    "ALTER TABLE cells ADD COLUMN base_label TEXT",
    "ALTER TABLE iterations ADD COLUMN finished TEXT",
    "ALTER TABLE iterations ADD COLUMN extra TEXT",
    """CREATE TABLE analysis_blocks (
        iteration_id INTEGER NOT NULL REFERENCES iterations(id),
        rank INTEGER NOT NULL,
        block TEXT NOT NULL,
        diff_percent REAL NOT NULL,
        roi_diff_percent REAL,
        roi_share_percent REAL,
        PRIMARY KEY (iteration_id, block)
    )""",
    "CREATE INDEX cells_by_iteration ON cells (iteration_id, position)",
    "CREATE INDEX decisions_by_project ON decisions (project_id, id)",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (V1, V2)
SCHEMA_VERSION = len(MIGRATIONS)
