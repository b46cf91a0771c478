"""One way to open the store, whichever database it is on.

``--db`` / ``$SIDECAR_DB`` / ``[database]`` name a SQLite file (a path: the embedded
default, one node) or a PostgreSQL database (a ``postgresql://`` URL: several nodes
sharing balances). :func:`open_db` opens either with its schema up to date; the modules
that read and write the store take the connection it returns (:data:`Db`) and run the
same SQL on both (``?`` placeholders; what differs is in :mod:`.dialect`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from .db import connect
from .dialect import dialect_of

__all__ = ["Db", "describe", "dialect_of", "filters", "is_url", "open_db"]

if TYPE_CHECKING:
    import sqlite3

    from .pg import PgConn

#: A connection to the store: SQLite's own, or :class:`~.pg.PgConn` on PostgreSQL.
Db: TypeAlias = "sqlite3.Connection | PgConn"


def is_url(target: str | os.PathLike[str]) -> bool:
    """True for a PostgreSQL URL (``postgresql://`` or ``postgres://``)."""
    return str(target).startswith(("postgresql://", "postgres://"))


def open_db(target: str | os.PathLike[str]) -> Db:
    """Open the store at ``target`` (a SQLite path or a PostgreSQL URL), creating or
    upgrading its schema; a schema newer than this release's is refused
    (:class:`~.db.SchemaTooNew`)."""
    if is_url(target):
        from .pg import open_pg

        return open_pg(str(target))
    return connect(Path(target))


def describe(target: str | os.PathLike[str]) -> str:
    """``target`` as it may be printed (a URL without its password)."""
    if is_url(target):
        from .pg import redact

        return redact(str(target))
    return str(target)


def filters(*conditions: tuple[str, object]) -> tuple[str, list[object]]:
    """The conditions whose value is not None, ANDed (``"1 = 1"`` when none), and their
    parameters: ``filters(("account = ?", account), ("ended_ms >= ?", from_ms))``."""
    clauses = [c for c, v in conditions if v is not None]
    return " AND ".join(clauses) or "1 = 1", [v for _, v in conditions if v is not None]
