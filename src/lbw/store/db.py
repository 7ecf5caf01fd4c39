"""The workspace: a folder holding ``lbw.sqlite`` (the project store) and the rendered images beside it.

One SQLite file (standard library ``sqlite3``) in WAL mode, foreign keys on, a busy timeout, the schema upgraded
by ``PRAGMA user_version`` migrations (``lbw.store.schema``) when opened. Every write runs in one
``BEGIN IMMEDIATE`` transaction (``Store.write``), so two processes or threads writing the same project are
serialised and a reader never sees half a change. A connection is opened per transaction: a ``Store`` can be
shared between threads (a web server's workers) and processes.

Paths stored in the database are relative to the workspace (POSIX form); ``Store.path_of`` turns one back into a
path and refuses any that would leave the workspace (``..``, absolute, or through a symbolic link).

Example:
    >>> store = Store.open("lbw-workspace")
    >>> with store.write() as con:
    ...     con.execute("SELECT count(*) FROM projects").fetchone()[0]
    0
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from lbw.errors import StoreError
from lbw.store.schema import MIGRATIONS, SCHEMA_VERSION

DB_NAME = "lbw.sqlite"
DEFAULT_WORKSPACE = "lbw-workspace"
BUSY_TIMEOUT_S = 10.0


class Store:
    """An opened workspace (use ``Store.open``)."""

    def __init__(self, workspace: Path, db_path: Path) -> None:
        self.workspace = workspace
        self.db_path = db_path

    @classmethod
    def open(cls, folder: str | os.PathLike[str] = DEFAULT_WORKSPACE, *, create: bool = True) -> Store:
        """Open (and create, unless ``create=False``) the workspace at ``folder``; upgrade its schema."""
        workspace = Path(folder).expanduser()
        if workspace.exists() and not workspace.is_dir():
            raise StoreError("is a file; expected a workspace folder", where=str(workspace))
        db_path = workspace / DB_NAME
        if not create and not db_path.is_file():
            raise StoreError(f"no lbw workspace here (no {DB_NAME}); create one with `lbw project new`",
                             where=str(workspace))
        try:
            workspace.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create the workspace folder: {error.strerror}", where=str(workspace)) from None
        store = cls(workspace.resolve(), db_path.resolve())
        store._migrate()
        return store

    def connect(self) -> sqlite3.Connection:
        """A new connection with lbw's settings (autocommit: transactions are explicit)."""
        try:
            con = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            con.execute("PRAGMA foreign_keys = ON")
            con.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as error:
            raise self._error(error) from None
        con.row_factory = sqlite3.Row
        return con

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed when the block ends, rolled back on error."""
        with self._transaction("BEGIN IMMEDIATE") as con:
            yield con

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same snapshot."""
        with self._transaction("BEGIN") as con:
            yield con

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        con = self.connect()
        try:
            try:
                con.execute(begin)
            except sqlite3.DatabaseError as error:
                raise self._error(error) from None
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as error:
            raise self._error(error) from None
        finally:
            con.close()

    def _error(self, error: sqlite3.DatabaseError) -> StoreError:
        text = str(error)
        if "locked" in text or "busy" in text:
            return StoreError(f"the workspace database stayed busy for {BUSY_TIMEOUT_S:g} s (another lbw is "
                              f"writing it); try again", where=str(self.db_path))
        if "not a database" in text or "malformed" in text:
            return StoreError("not an lbw workspace database (the file is damaged or something else)",
                              where=str(self.db_path))
        return StoreError(f"database error: {text}", where=str(self.db_path))

    def _migrate(self) -> None:
        con = self.connect()
        try:
            try:
                con.execute("PRAGMA journal_mode = WAL")
                version = con.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.DatabaseError as error:
                raise self._error(error) from None
            if version > SCHEMA_VERSION:
                raise StoreError(f"written by a newer lbw (schema {version}; this lbw knows up to {SCHEMA_VERSION}); "
                                 "upgrade lbw", where=str(self.db_path))
            if version == SCHEMA_VERSION:
                return
        finally:
            con.close()
        with self.write() as con:  # re-read inside the lock: another process may have migrated meanwhile
            version = con.execute("PRAGMA user_version").fetchone()[0]
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target - 1]:
                    con.execute(statement)
                con.execute(f"PRAGMA user_version = {target}")

    def schema_version(self) -> int:
        """The database's ``user_version``."""
        with self.read() as con:
            return int(con.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------------------------------------------ paths

    def relative(self, path: str | os.PathLike[str]) -> str:
        """``path`` (inside the workspace) as the POSIX text stored in the database."""
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(self.workspace).as_posix()
        except ValueError:
            raise StoreError("is outside the workspace", where=str(path)) from None

    def path_of(self, relative: str) -> Path:
        """The file a stored relative path names; StoreError when it would leave the workspace."""
        pure = PurePosixPath(relative)
        if not relative or pure.is_absolute() or ".." in pure.parts or "\\" in relative or "\x00" in relative:
            raise StoreError(f"stored path {relative!r} is not a plain path inside the workspace")
        path = self.workspace.joinpath(*pure.parts)
        if not path.resolve().is_relative_to(self.workspace):
            raise StoreError(f"stored path {relative!r} leads outside the workspace (a symbolic link)")
        return path
