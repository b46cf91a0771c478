"""The SQLite database: opening it, its schema, and transactions.

Money is stored as TEXT holding a plain decimal (exact); times as Unix milliseconds
(INTEGER) unless a column says otherwise. sqlite-utils creates and inspects the schema;
hot paths use the sqlite3 connection directly inside explicit transactions.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, cast

import sqlite_utils

from .schema import SCHEMA_VERSION, added_columns, statements

DEFAULT_DB = "sidecar.db"


def _null(_none: None) -> None:
    return None


# Binding None (NULL) makes the sqlite3 module look for an adapter for it and, finding
# none, for ``PrepareProtocol.__adapt__``: a failed attribute look-up that builds and
# drops an AttributeError for every NULL parameter (a CDR has several). This adapter
# answers at once with the same None, bound as NULL as before.
sqlite3.register_adapter(type(None), _null)


def db_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The database path: the argument, else ``$SIDECAR_DB``, else ``./sidecar.db``."""
    return Path(explicit or os.environ.get("SIDECAR_DB") or DEFAULT_DB)


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open (creating if needed) the database with the project's settings and schema.

    The connection is in autocommit mode: callers group writes with :func:`transaction`.
    """
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    if str(path) != ":memory:":
        conn.execute("PRAGMA journal_mode = WAL")
    # WAL + NORMAL: a commit survives a crash of the process; only a power loss may lose
    # the last transactions. A larger checkpoint interval keeps commits short.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 10000")
    conn.execute("PRAGMA cache_size = -65536")
    conn.execute("PRAGMA foreign_keys = ON")
    ensure_schema(conn)
    return conn


class SchemaTooNew(RuntimeError):
    """The database was written by a newer release: running this one could corrupt it."""


def stored_version(conn: sqlite3.Connection) -> int | None:
    """The schema version recorded in the database (None: a new or unversioned one)."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
                        ).fetchone():
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row and str(row[0]).isdigit() else None


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create missing tables, add columns newer versions need, record the version.
    Refuses (:class:`SchemaTooNew`) a database of a newer schema than this release's."""
    found = stored_version(conn)
    if found is not None and found > SCHEMA_VERSION:
        raise SchemaTooNew(f"the database has schema version {found}, newer than this "
                           f"release's {SCHEMA_VERSION}: upgrade the sidecar")
    for table, name, decl in added_columns("sqlite"):
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if have and name not in have:  # an older database: bring the table up to date
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
    conn.executescript(";\n".join(statements("sqlite")) + ";")
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(SCHEMA_VERSION),),
    )


def utils(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """A sqlite-utils view of the connection (introspection, ad-hoc queries)."""
    return sqlite_utils.Database(conn)


def transaction(conn: Any) -> AbstractContextManager[Any]:
    """A write transaction on a store connection (``conn.transaction()`` on PostgreSQL).

    On SQLite, ``BEGIN IMMEDIATE`` ... ``COMMIT``: IMMEDIATE takes the write lock up
    front, so a read-then-write decision (is there credit? then reserve it) cannot
    interleave with another process's."""
    if isinstance(conn, sqlite3.Connection):
        return _immediate(conn)
    return cast(AbstractContextManager[Any], conn.transaction())


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
