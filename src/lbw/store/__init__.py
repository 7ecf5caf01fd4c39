"""The project store: one SQLite database per workspace holding projects, their sheets, iterations and decisions.

It knows nothing of rendering: ``lbw.services.projects`` decides what a user action writes; ``db`` opens the
workspace (WAL, foreign keys, migrations by ``PRAGMA user_version``), ``records`` maps rows to frozen records,
``schema`` lists the migrations. See docs/projects.md.

Example:
    >>> from lbw.store import Store
    >>> Store.open("lbw-workspace").schema_version()
    2
"""

from lbw.store.db import DB_NAME, DEFAULT_WORKSPACE, Store

__all__ = ["DB_NAME", "DEFAULT_WORKSPACE", "Store"]
