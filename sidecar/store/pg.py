"""The money path on PostgreSQL: connections, the schema, and :class:`PgLedger`.

Several sidecars (on several hosts) can share one PostgreSQL database and so share
balances: each batch of the charging core's commands is one transaction that locks the
accounts it changes (``SELECT ... FOR UPDATE``, in code order, so two batches never
deadlock) before it reads anything else, and the rules that decide what moves are the
very ones SQLite runs (``batch.py``, ``accounts.py``): only the :class:`PgDialect` differs.

- Money columns are ``NUMERIC`` (exact, any scale), read back as :class:`~decimal.Decimal`.
- A CDR's ``call_ref`` is unique: a settle of a call already settled is a duplicate and
  moves no money. Applied top-up keys (``applied_keys``) make top-ups idempotent.
- A transaction that fails (server down, connection lost, a constraint) is rolled back
  whole; :meth:`PgLedger.execute` reports it in its result, never raises.

Connections are in autocommit mode and every write runs in an explicit transaction
block. A URL's password is never logged (:func:`redact`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, ClassVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool

from ..charging.model import Account, AccountKind
from ..money import ZERO
from .accounts import LedgerCheck, SqlLedger, add_account, verify_ledger
from .db import SchemaTooNew
from .dialect import Bulk, Dialect
from .schema import SCHEMA_VERSION, added_columns, statements

log = logging.getLogger("sidecar.store")

PgConnection = psycopg.Connection[TupleRow]
PgPool = ConnectionPool[PgConnection]

#: One schema version for both databases (``schema.py``).
PG_SCHEMA_VERSION = SCHEMA_VERSION

# Serialises schema creation among sidecars starting at once (CREATE TABLE IF NOT EXISTS
# is not safe against a concurrent twin on PostgreSQL).
_SCHEMA_LOCK = 0x5_1DECA4
#: The namespace of the per-plan locks deck imports take (``PgDialect.serialize``).
_PLAN_LOCKS = 0x5_1DEC


def redact(url: str) -> str:
    """The connection string without its password, for logs and messages."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "<unparsable connection string>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


_DEFAULTS: dict[str, str | int] = {
    "application_name": "sidecar",
    "connect_timeout": 5,
    # A server that vanished (host down, cable cut) is noticed in ~25 s, not hours.
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
}


#: A batch waits at most this long for a row another transaction holds (an account
#: locked by a stuck session elsewhere): it then fails and is reported like any store
#: failure (its settlements go to the journal), instead of stopping charging. The same
#: bound as the SQLite writer's busy timeout.
LOCK_TIMEOUT_MS = 2000


def _conninfo(url: str) -> str:
    """``url`` with the project's defaults for what it does not say."""
    params = conninfo_to_dict(url)
    for k, v in _DEFAULTS.items():
        params.setdefault(k, v)
    options = str(params.get("options") or "")
    if "lock_timeout" not in options:
        params["options"] = f"{options} -c lock_timeout={LOCK_TIMEOUT_MS}".strip()
    return make_conninfo("", **params)


def connect_pg(url: str) -> PgConnection:
    """A connection to the PostgreSQL database at ``url`` (``postgresql://user@host/db``
    or ``key=value`` form), in autocommit mode: writes go in explicit transaction blocks.
    The schema is not touched (:func:`ensure_schema_pg`)."""
    log.debug("connecting to PostgreSQL %s", redact(url))
    try:
        return psycopg.connect(_conninfo(url), autocommit=True)
    except psycopg.Error as exc:
        raise _without_password(exc, url) from None


def open_pool(url: str, *, min_size: int = 1, max_size: int = 4,
              timeout: float = 5.0) -> PgPool:
    """A pool of autocommit connections to ``url``; each connection is checked when it is
    handed out, so a batch after a lost connection or a server restart gets a new one."""
    log.debug("opening a PostgreSQL pool on %s", redact(url))
    return ConnectionPool(_conninfo(url), kwargs={"autocommit": True}, min_size=min_size,
                          max_size=max_size, timeout=timeout, open=True,
                          check=ConnectionPool.check_connection, name="sidecar")


def _without_password(exc: psycopg.Error, url: str) -> psycopg.Error:
    try:
        password = str(conninfo_to_dict(url).get("password") or "")
    except psycopg.Error:
        password = ""
    if password and password in str(exc):
        return type(exc)(str(exc).replace(password, "***"))
    return exc


def stored_version_pg(conn: PgConnection) -> int | None:
    """The schema version recorded in the database (None: a new or unversioned one)."""
    if conn.execute("SELECT to_regclass('meta')").fetchone() in (None, (None,)):
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row and str(row[0]).isdigit() else None


def ensure_schema_pg(conn: PgConnection) -> None:
    """Create the tables where missing, add the columns newer versions need, record the
    schema version. Refuses (:class:`SchemaTooNew`) a database of a newer schema."""
    if stored_version_pg(conn) == PG_SCHEMA_VERSION:
        # Up to date: no DDL, whose table locks would queue behind (and deadlock with)
        # the transactions of the sidecars already running on this database.
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        found = stored_version_pg(conn)
        if found is not None and found > PG_SCHEMA_VERSION:
            raise SchemaTooNew(f"the database has schema version {found}, newer than this "
                               f"release's {PG_SCHEMA_VERSION}: upgrade the sidecar")
        if found == PG_SCHEMA_VERSION:  # another process did it meanwhile
            return
        for table, name, decl in added_columns("postgresql"):
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() not in (None, (None,)):
                conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {decl}")
        for stmt in statements("postgresql"):
            conn.execute(stmt)
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                     (str(PG_SCHEMA_VERSION),))


class PgDialect(Dialect):
    """PostgreSQL: ``%s`` placeholders; the accounts a batch changes are locked
    ``FOR UPDATE`` in code order; money is NUMERIC (Decimals in, Decimals out)."""

    name: ClassVar[str] = "postgresql"
    # Byte order (the "C" collation), which is the order Python sorts the codes in when a
    # batch reads them in several parts: the locks are taken in one order everywhere.
    lock: ClassVar[str] = ' ORDER BY code COLLATE "C" FOR UPDATE'
    errors: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error,)
    money_as_text: ClassVar[bool] = False

    def __init__(self) -> None:
        self._sql: dict[str, str] = {}

    @staticmethod
    def money(v: Decimal) -> object:
        return v

    def sql(self, q: str) -> str:
        out = self._sql.get(q)
        if out is None:
            if len(self._sql) > 10_000:  # IN lists of every length: keep it bounded
                self._sql.clear()
            out = self._sql[q] = q.replace("%", "%%").replace("?", "%s")
        return out

    def execute(self, conn: Any, q: str, params: Sequence[object] = ()) -> Any:
        return _raw(conn).execute(self.sql(q), params)

    def executemany(self, conn: Any, q: str, rows: Iterable[Sequence[object]]) -> None:
        with _raw(conn).cursor() as cur:
            cur.executemany(self.sql(q), rows)

    # One array parameter, not a list of them: the plan is the same for any number of
    # keys (an index look-up per key), where a prepared ``IN ($1, ..., $500)`` can end up
    # with a generic plan that compares every row with every key.
    keys_per_lookup: ClassVar[int] = 100_000

    def any_of(self, column: str, keys: Sequence[object]) -> tuple[str, Sequence[object]]:
        return f"{column} = ANY(?)", [list(keys)]

    def write(self, conn: Any, bulk: Bulk, rows: Sequence[Sequence[object]]) -> None:
        if not rows:
            return
        raw = _raw(conn)
        if bulk.copy:  # the rows streamed: no statement per row at all
            with raw.cursor() as cur, cur.copy(bulk.copy) as copy:
                for row in rows:
                    copy.write_row(row)
        elif bulk.unnest:
            arrays = ", ".join(f"%s::{t}[]" for t in bulk.types)
            q = bulk.unnest.replace("{rows}", f"unnest({arrays})")
            raw.execute(q, [list(col) for col in zip(*rows, strict=True)])
        else:
            self.executemany(conn, bulk.sql, rows)

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[object]:
        conn = _raw(conn)
        # A block opened inside a transaction already running would only be a savepoint,
        # committed whenever its owner commits: refuse it rather than seem to commit.
        if not conn.autocommit and conn.info.transaction_status != TransactionStatus.IDLE:
            raise psycopg.ProgrammingError(
                "a transaction is already open on this connection: the store needs "
                "autocommit connections (connect_pg, open_pool)")
        with conn.transaction():
            yield conn

    for_update: ClassVar[str] = " FOR UPDATE"

    def serialize(self, conn: Any, key: str) -> None:
        _raw(conn).execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_PLAN_LOCKS, key))

    def db(self, conn: Any) -> Any:
        return conn if isinstance(conn, PgConn) else PgConn(conn)

    @contextlib.contextmanager
    def snapshot(self, conn: Any) -> Iterator[None]:
        conn = _raw(conn)
        if conn.info.transaction_status != TransactionStatus.IDLE:
            yield
            return
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield


PG = PgDialect()


def _raw(conn: Any) -> Any:
    """The driver's connection (``conn`` itself, or the one a :class:`PgConn` wraps)."""
    return getattr(conn, "raw", conn)


class PgLedger(SqlLedger):
    """The charging core's store on PostgreSQL, on one connection or a pool of them.

    On one connection (:func:`connect_pg`), a lost connection stays lost: every batch
    then fails (reported, not raised) until the owner connects again. On a pool
    (:func:`open_pool`), each batch takes a connection that was checked first, so the
    batch after a lost connection or a server restart runs on a new one.
    """

    dialect: ClassVar[Dialect] = PG

    def __init__(self, db: PgConnection | PgPool) -> None:
        self.db = db
        #: Server processes this ledger's connections ran on: its own changes, which
        #: :class:`PgChanges` does not report.
        self.pids: set[int] = set()

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        if isinstance(self.db, ConnectionPool):
            with self.db.connection() as conn:
                self.pids.add(conn.info.backend_pid)
                yield conn
        else:
            self.pids.add(self.db.info.backend_pid)
            yield self.db

    def close(self) -> None:
        self.db.close()

    def add_account(self, code: str, plan: str, kind: AccountKind, *, currency: str,
                    now_ms: int, **kw: Any) -> Account:
        """:func:`~sidecar.store.accounts.add_account` on this store."""
        with self.connection() as conn:
            return add_account_pg(conn, code, plan, kind, currency=currency, now_ms=now_ms,
                                  **kw)


def add_account_pg(conn: PgConnection, code: str, plan: str, kind: AccountKind, *,
                   currency: str, now_ms: int, balance: Decimal = ZERO, **kw: Any) -> Account:
    """Create an account (the options of :func:`~sidecar.store.accounts.add_account`),
    with an opening ``balance`` as its first top-up when one is given."""
    acc = add_account(conn, code, plan, kind, currency=currency, now_ms=now_ms, dialect=PG,
                      **kw)
    if balance:
        acc = PgLedger(conn).topup(code, balance, now_ms, "opening balance")
    return acc


def verify_ledger_pg(conn: PgConnection) -> list[LedgerCheck]:
    """:func:`~sidecar.store.accounts.verify_ledger` on PostgreSQL (one snapshot)."""
    return verify_ledger(conn, PG)


class PgConn:
    """A PostgreSQL connection that takes the store's SQL as the SQLite connection does
    (``?`` placeholders, ``execute`` on the connection, :func:`~.db.transaction`), so the
    modules that read and write plans, decks, CDRs and invoices run unchanged on both.

    Autocommit: every write goes in an explicit transaction block (``transaction``)."""

    dialect: ClassVar[Dialect] = PG

    def __init__(self, raw: PgConnection, url: str = "") -> None:
        self.raw = raw
        self.url = url  # as given (a password included): never log it, ``redact`` it

    def execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        if not params:  # no placeholders: the text goes as written (``%`` included)
            return self.raw.execute(sql)
        return self.raw.execute(PG.sql(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        PG.executemany(self.raw, sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[PgConn]:
        with PG.transaction(self.raw):
            yield self

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> PgConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_pg(url: str) -> PgConn:
    """Connect to ``url`` and bring its schema up to date (refusing a newer one)."""
    raw = connect_pg(url)
    # Money read back as the exact text SQLite stores ("0.00500000"), so what reads the
    # store sees the same values on both (the ledger converts with Decimal(str())).
    raw.adapters.register_loader("numeric", TextLoader)
    try:
        ensure_schema_pg(raw)
    except BaseException:
        raw.close()
        raise
    return PgConn(raw, url)


class PgChanges:
    """Did another process change accounts, SIP mappings or rate plans? Their tables'
    triggers notify ``sidecar_changes`` at each commit with the table and the server
    process that committed (``schema.py``); a connection of its own listens, and the
    writer's own commits (its ledger's and reader's processes) are not reported.

    A listener that lost its connection (a server restart) reconnects and reports a
    change: what was committed meanwhile was not heard."""

    CHANNEL = "sidecar_changes"

    def __init__(self, url: str, ledger: PgLedger, reader: PgConn) -> None:
        self.url = url
        self.ledger = ledger
        self.reader = reader
        self._listen: PgConnection | None = None
        self._connect()

    def _connect(self) -> None:
        try:
            conn = connect_pg(self.url)
            conn.execute(f"LISTEN {self.CHANNEL}")
            self._listen = conn
        except psycopg.Error as exc:
            log.error("cannot listen for the store's changes (%s): will retry", exc)
            self._listen = None

    def changed(self) -> bool:
        listen = self._listen
        if listen is None or listen.closed or listen.broken:
            self._connect()
            return True
        own = set(self.ledger.pids)
        if not self.reader.raw.closed:
            own.add(self.reader.raw.info.backend_pid)
        seen = False
        try:
            for note in listen.notifies(timeout=0):
                _table, _, pid = note.payload.partition(" ")
                if not pid.isdigit() or int(pid) not in own:
                    seen = True
        except psycopg.Error as exc:
            log.error("lost the store's change notifications (%s): reconnecting", exc)
            with contextlib.suppress(psycopg.Error):
                listen.close()
            self._listen = None
            return True
        return seen

    def close(self) -> None:
        if self._listen is not None:
            self._listen.close()
