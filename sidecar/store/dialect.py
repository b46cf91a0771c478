"""What differs between the databases the store runs on (SQLite, PostgreSQL).

The money rules, and the SQL that applies them, are written once (``batch.py``,
``accounts.py``) with ``?`` placeholders. A :class:`Dialect` carries what is not the same
from one database to the other: the placeholder style, how a transaction starts, how the
accounts a transaction changes are locked, how an amount goes in as a parameter, how an
account row is decoded, how many rows are written at once, and which exceptions mean that
the database failed (and are reported, not raised, by ``execute``).

This module is SQLite's dialect and what the dialects share; PostgreSQL's is in ``pg.py``
(the only module that imports its driver).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Protocol

from ..charging.limits import NO_LIMITS, Limits, LimitsError
from ..charging.model import Account, AccountKind
from ..charging.settle import day_key
from ..money import ZERO, to_text
from .db import transaction

ACCOUNT_COLUMNS = (
    "code, plan, currency, kind, balance, held, credit_limit, daily_cap, monthly_cap, "
    "day_key, day_spend, month_key, month_spend, chunk_seconds, max_call_seconds, "
    "low_balance, recharge_below, recharge_amount, suspended, suspend_reason, name, "
    "blocked, parent, limits, reseller")

log = logging.getLogger("sidecar.store")


class Connection(Protocol):
    """What both drivers' connections do alike (``sqlite3`` and ``psycopg``)."""

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...


def _d(v: object) -> Decimal | None:
    return None if v is None or v == "" else Decimal(str(v))


_KINDS = {k.value: k for k in AccountKind}

# Stored limit sets, parsed once: accounts mostly share a few (or have none), and an
# account row is converted for every batch that touches it.
_LIMITS: dict[str, Limits] = {"": NO_LIMITS}


def stored_limits(text: object, where: str) -> Limits:
    """A stored limit set (``accounts.limits``, ``plans.limits``), parsed once per text.
    One that does not parse (written by hand, or by a newer release) is logged and read
    as no limits: the live sidecar keeps running."""
    key = "" if text is None else str(text)
    found = _LIMITS.get(key)
    if found is not None:
        return found
    try:
        limits = Limits.from_json(key, where)
    except LimitsError as exc:
        log.error("%s: ignored, no limits applied until it is fixed (%s)", where, exc)
        limits = NO_LIMITS
    if len(_LIMITS) > 1000:
        _LIMITS.clear()
        _LIMITS[""] = NO_LIMITS
    _LIMITS[key] = limits
    return limits


def row_to_account(r: Sequence[object], now_ms: int | None = None) -> Account:
    """An ``accounts`` row (``ACCOUNT_COLUMNS``) as the charging core's :class:`Account`:
    money from TEXT (SQLite) or NUMERIC (PostgreSQL, already a Decimal) alike. With
    ``now_ms``, the day and month spend of another day (month) read as zero."""
    (code, plan, ccy, kind, bal, held, limit, dcap, mcap, dkey, dspend, mkey, mspend, chunk,
     maxs, low, rbelow, ramount, susp, sreason, name, blocked, parent, limits, reseller) = r
    today = day_key(now_ms) if now_ms is not None else str(dkey)
    k = _KINDS.get(kind) if isinstance(kind, str) else None
    lim = _LIMITS.get(limits) if isinstance(limits, str) else None
    # Built as ``Account(...)`` would build it, without the cost of its frozen __init__
    # (the store converts every account it touches in a batch).
    acc = object.__new__(Account)
    acc.__dict__.update(
        code=str(code), plan=str(plan), currency=str(ccy),
        kind=k if k is not None else AccountKind(str(kind)),
        balance=Decimal(str(bal)), held=Decimal(str(held)), credit_limit=Decimal(str(limit)),
        daily_cap=_d(dcap), monthly_cap=_d(mcap),
        day_spend=Decimal(str(dspend)) if dkey == today else ZERO,
        month_spend=Decimal(str(mspend)) if mkey == today[:7] else ZERO, day_key=today,
        chunk_seconds=int(str(chunk)) if chunk is not None else None,
        max_call_seconds=int(str(maxs)), low_balance=_d(low), recharge_below=_d(rbelow),
        recharge_amount=_d(ramount), suspended=bool(susp), suspend_reason=str(sreason),
        name=str(name), blocked=str(blocked or ""),
        parent=None if parent is None or parent == "" else str(parent),
        limits=lim if lim is not None else stored_limits(limits, f"account {code} limits"),
        reseller=bool(reseller))
    return acc


@dataclass(frozen=True)
class Bulk:
    """A statement applied to many rows at once, in the forms the databases do fastest.

    ``sql``: one row's statement (``?`` placeholders), run for each row on SQLite (an
    ``INSERT ... VALUES`` as multi-row statements: :meth:`Dialect.write`). ``copy``:
    ``COPY table (columns)`` for plain inserts on PostgreSQL; ``unnest``: the whole batch
    as ONE statement on PostgreSQL, whose ``{rows}`` is replaced by ``unnest(%s::type[],
    ...)`` over the columns ``types`` (one array per column, one round trip, one plan)."""

    sql: str
    copy: str = ""
    unnest: str = ""
    types: tuple[str, ...] = ()


class Dialect:
    """SQLite: one writer at a time (``BEGIN IMMEDIATE`` takes the database's write lock, so
    the accounts a batch reads need no lock of their own); money stored as exact TEXT.

    Subclasses override what their database does otherwise (``pg.PgDialect``)."""

    name: ClassVar[str] = "sqlite"
    #: Appended to the read of the accounts a write transaction changes.
    lock: ClassVar[str] = ""
    #: Appended to a read whose rows the transaction then changes (a deck version).
    for_update: ClassVar[str] = ""
    #: The exceptions that mean the database failed (the batch is rolled back).
    errors: ClassVar[tuple[type[Exception], ...]] = (sqlite3.Error,)
    #: Money parameters as exact text (SQLite has no exact number type).
    money_as_text: ClassVar[bool] = True

    @staticmethod
    def money(v: Decimal) -> object:
        """An amount as a query parameter."""
        return to_text(v)

    def sql(self, q: str) -> str:
        """``q`` (written with ``?`` placeholders) as this database takes it."""
        return q

    def execute(self, conn: Connection, q: str, params: Sequence[object] = ()) -> Any:
        """Run one statement; the driver's cursor (iterable, ``fetchone``)."""
        return conn.execute(self.sql(q), params)

    def executemany(self, conn: Any, q: str, rows: Iterable[Sequence[object]]) -> None:
        """Run one statement for each of ``rows``."""
        conn.executemany(self.sql(q), rows)

    #: How many keys one look-up takes (SQLite: host parameters per statement).
    keys_per_lookup: ClassVar[int] = 500

    def any_of(self, column: str, keys: Sequence[object]) -> tuple[str, Sequence[object]]:
        """``column`` is one of ``keys``: the condition and its parameters."""
        return f"{column} IN ({','.join('?' * len(keys))})", keys

    #: Rows of the multi-row statements :meth:`write` uses, largest first.
    multi_sizes: ClassVar[tuple[int, ...]] = (100, 20, 5, 2)

    def write(self, conn: Any, bulk: Bulk, rows: Sequence[Sequence[object]]) -> None:
        """Apply ``bulk`` to every row of ``rows``.

        SQLite: an ``INSERT ... VALUES (?, ...)`` goes in as multi-row ``VALUES (...),
        (...)`` statements (of :attr:`multi_sizes` rows: as few statements as those make,
        and a few distinct ones for SQLite's statement cache), the same rows in the same
        order (ids, and conflicts, as row by row); a ``DELETE ... WHERE key = ?`` as
        ``WHERE key IN (?, ...)``; an ``UPDATE t SET a = ?, ... WHERE key = ?`` (rows of
        distinct keys) as ``UPDATE t SET a = u.column1, ... FROM (VALUES ...) AS u``.
        SQLite runs each statement without the interpreter lock and must win it back
        after: one statement per row would wait for it once per row while the charging
        core keeps it busy."""
        if not rows:
            return
        multi = _multi_row(bulk.sql) if len(rows) > 1 else None
        if multi is None:
            self.executemany(conn, bulk.sql, rows)
            return
        cap = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // multi[1].count("?")
        flat = itertools.chain.from_iterable
        i, n = 0, len(rows)
        for size in self.multi_sizes:
            if size > cap:
                continue
            if n - i >= size:
                q = _multi_sql(*multi, size)
                while n - i >= size:
                    conn.execute(q, list(flat(rows[i:i + size])))
                    i += size
        if i < n:
            self.executemany(conn, bulk.sql, rows[i:])

    def transaction(self, conn: Any) -> contextlib.AbstractContextManager[object]:
        """A write transaction: committed at the end of the block, rolled back on error."""
        return transaction(conn)

    @contextlib.contextmanager
    def snapshot(self, conn: Any) -> Iterator[None]:
        """Reads that see one state of the database (a deferred read transaction), unless
        the caller has a transaction open already."""
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")

    def to_account(self, row: Sequence[object], now_ms: int | None = None) -> Account:
        return row_to_account(row, now_ms)

    def serialize(self, conn: Any, key: str) -> None:
        """Make the transaction open on ``conn`` the only one working on ``key`` (a rate
        plan) until it ends. SQLite: nothing to do, its write lock covers the database."""

    def db(self, conn: Any) -> Any:
        """``conn`` as the modules that write plain SQL take it (``conn.execute`` with
        ``?`` placeholders): the driver's connection on SQLite, wrapped on PostgreSQL."""
        return conn


SQLITE = Dialect()

_VALUES = re.compile(r"^(INSERT INTO \w+ \([^)]*\) VALUES )(\((?:\?, )*\?\))(.*)$", re.S)
_DELETE = re.compile(r"^(DELETE FROM \w+ WHERE \w+) = \?$")
_UPDATE = re.compile(r"^UPDATE (\w+) SET ((?:\w+ = \?, )*\w+ = \?) WHERE (\w+) = \?$")


@functools.lru_cache(maxsize=64)
def _multi_row(sql: str) -> tuple[str, str, str] | None:
    """A one-row statement as the head, the one row of placeholders and the tail of its
    many-row form (rows joined by ", "): ``INSERT ... VALUES (?, ...) [ON CONFLICT ...]``,
    ``DELETE FROM t WHERE key = ?`` (as ``key IN (?, ...)``) and ``UPDATE t SET a = ?, ...
    WHERE key = ?`` (as an ``UPDATE ... FROM (VALUES ...)``, SQLite 3.33 and later); None
    for any other."""
    m = _VALUES.match(sql)
    if m is not None:
        return m.group(1), m.group(2), m.group(3)
    m = _DELETE.match(sql)
    if m is not None:
        return m.group(1) + " IN (", "?", ")"
    m = _UPDATE.match(sql)
    if m is None or sqlite3.sqlite_version_info < (3, 33):
        return None
    table, sets, key = m.groups()
    cols = [c.split(" = ")[0] for c in sets.split(", ")]
    head = (f"UPDATE {table} SET "
            + ", ".join(f"{c} = u.column{i}" for i, c in enumerate(cols, 1)) + " FROM (VALUES ")
    one = "(" + ", ".join("?" * (len(cols) + 1)) + ")"
    return head, one, f") AS u WHERE {table}.{key} = u.column{len(cols) + 1}"


@functools.lru_cache(maxsize=256)
def _multi_sql(head: str, one: str, tail: str, rows: int) -> str:
    return head + ", ".join([one] * rows) + tail


def dialect_of(conn: object) -> Dialect:
    """The dialect of a store connection (SQLite's for a ``sqlite3`` connection)."""
    d = getattr(conn, "dialect", None)
    return d if isinstance(d, Dialect) else SQLITE
