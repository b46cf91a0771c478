"""Schema upgrades and moving a single node's store from SQLite onto PostgreSQL.

- :func:`upgrade` brings a database (a SQLite path or a ``postgresql://`` URL) to this
  release's schema; a database of a newer schema is refused (:class:`~.db.SchemaTooNew`).
- :func:`copy_to_postgres` copies every table (rate plans and decks, accounts, SIP
  mappings, the ledger, live calls, applied keys, CDRs, invoices and their numbering,
  fraud events)
  from a SQLite file into an empty PostgreSQL database in ONE transaction, with
  PostgreSQL's ``COPY``, then proves nothing was lost: the same rows per table, the same
  sums of money, and ``ledger verify`` clean on both sides.
  Anything wrong rolls the copy back whole.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from .accounts import verify_ledger
from .conn import is_url as is_url  # also imported from here
from .db import connect, stored_version
from .schema import SCHEMA_VERSION, TABLES

#: What a copy moves: every table but ``meta``, in the order their references need.
COPIED_TABLES = tuple(t for t in TABLES if t != "meta")
#: Sums compared after a copy: (table, money column).
_SUMS = (("accounts", "balance"), ("accounts", "held"), ("ledger", "amount"),
         ("live_calls", "reserved"), ("cdrs", "cost"), ("cdrs", "charged"),
         ("cdrs", "credited"), ("cdrs", "written_off"), ("rates", "rate"),
         ("invoices", "net"), ("invoices", "tax"), ("invoices", "total"))


#: Tables whose ``id`` the database hands out (an identity on PostgreSQL).
_IDENTITIES = ("deck_versions", "rates", "ledger", "cdrs", "fraud_events")


class CopyError(RuntimeError):
    """The copy was refused or did not verify; the target is left as it was."""


@dataclass
class UpgradeReport:
    database: str
    before: int | None
    after: int


def upgrade(target: str) -> UpgradeReport:
    """Bring ``target`` to this release's schema (creating it if new)."""
    if is_url(target):
        from .pg import (
            PG_SCHEMA_VERSION,
            connect_pg,
            ensure_schema_pg,
            redact,
            stored_version_pg,
        )
        with connect_pg(target) as pg:
            before = stored_version_pg(pg)
            ensure_schema_pg(pg)
        return UpgradeReport(redact(target), before, PG_SCHEMA_VERSION)
    path = Path(target)
    before = None
    if path.exists():
        probe = sqlite3.connect(str(path))
        try:
            before = stored_version(probe)
        finally:
            probe.close()
    connect(path).close()  # applies the schema (and refuses a newer one)
    return UpgradeReport(str(path), before, SCHEMA_VERSION)


@dataclass
class CopyReport:
    source: str
    target: str
    rows: dict[str, int] = field(default_factory=dict)
    sums: dict[str, str] = field(default_factory=dict)
    accounts_verified: int = 0
    not_copied: list[str] = field(default_factory=list)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")]


def _sum(values: Any) -> Decimal:
    total = Decimal(0)
    for (v,) in values:
        if v is not None and v != "":
            total += Decimal(str(v))
    return total


def copy_to_postgres(sqlite_path: str | Path, url: str) -> CopyReport:
    """Copy the tables of the SQLite database at ``sqlite_path`` into the (empty)
    PostgreSQL database at ``url``; see the module docstring."""
    from .pg import connect_pg, ensure_schema_pg, redact, verify_ledger_pg

    path = Path(sqlite_path)
    if not path.exists():
        raise CopyError(f"{path}: no such SQLite database")
    src = connect(path)
    report = CopyReport(str(path), redact(url))
    try:
        bad = [c for c in verify_ledger(src) if c.problems]
        if bad:
            raise CopyError(f"{path}: the ledger does not verify (account {bad[0].account}: "
                            f"{bad[0].problems[0]}); fix it before moving it")
        have = {str(r[0]) for r in src.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        report.not_copied = sorted(have - set(COPIED_TABLES) - {"meta"})
        with connect_pg(url) as pg:
            ensure_schema_pg(pg)
            numeric = {(str(t), str(c)) for t, c in pg.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND data_type = 'numeric'")}
            with pg.transaction():
                for table in COPIED_TABLES:
                    if pg.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
                        raise CopyError(f"{redact(url)}: table {table} is not empty: the "
                                        f"copy goes into an empty database only")
                for table in COPIED_TABLES:
                    report.rows[table] = _copy_table(src, pg, table, numeric)
                for table in _IDENTITIES:  # identities continue after the copy
                    pg.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"GREATEST((SELECT max(id) FROM {table}), 1))")
                for table, column in _SUMS:
                    a = _sum(src.execute(f"SELECT {column} FROM {table}"))
                    b = _sum(pg.execute(f"SELECT {column} FROM {table}").fetchall())
                    if a != b:
                        raise CopyError(f"sum of {table}.{column} differs after the copy: "
                                        f"{a} in SQLite, {b} in PostgreSQL")
                    report.sums[f"{table}.{column}"] = str(a)
                for table in COPIED_TABLES:
                    (n,) = pg.execute(f"SELECT count(*) FROM {table}").fetchone() or (0,)
                    if n != report.rows[table]:
                        raise CopyError(f"{table}: {report.rows[table]} rows in SQLite, "
                                        f"{n} copied")
                checks = verify_ledger_pg(pg)
                bad = [c for c in checks if c.problems]
                if bad:
                    raise CopyError(f"the copy does not verify (account {bad[0].account}: "
                                    f"{bad[0].problems[0]})")
                report.accounts_verified = len(checks)
    finally:
        src.close()
    return report


def _has_rowid(src: sqlite3.Connection, table: str) -> bool:
    """Whether a table has SQLite's rowid (its insertion order, to copy it in): not one
    declared ``WITHOUT ROWID`` (``cdr_tiers`` is since schema 11; older files keep it)."""
    got = src.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                      (table,)).fetchone()
    return got is None or "WITHOUT ROWID" not in str(got[0]).upper()


def _copy_table(src: sqlite3.Connection, pg: Any, table: str,
                numeric: set[tuple[str, str]]) -> int:
    """COPY one table's rows; money text becomes exact NUMERIC. Returns the row count."""
    columns = _columns(src, table)
    money = [i for i, c in enumerate(columns) if (table, c) in numeric]
    count = 0
    with pg.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in src.execute(f"SELECT {', '.join(columns)} FROM {table}"
                               + (" ORDER BY rowid" if _has_rowid(src, table) else "")):
            values = list(row)
            for i in money:
                v = values[i]
                values[i] = None if v is None or v == "" else Decimal(str(v))
            copy.write_row(values)
            count += 1
    return count
