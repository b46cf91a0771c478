"""The SQLite database: opening it, its schema, and transactions.

Money is stored as TEXT holding a plain decimal (exact); times as Unix milliseconds
(INTEGER) unless a column says otherwise. sqlite-utils creates and inspects the schema;
hot paths use the sqlite3 connection directly inside explicit transactions.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

DEFAULT_DB = "sidecar.db"
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS plans (
    name TEXT PRIMARY KEY,
    currency TEXT NOT NULL,
    notice_days INTEGER NOT NULL DEFAULT 7,
    second_rounding TEXT NOT NULL DEFAULT 'ceil',
    chunk_seconds INTEGER NOT NULL DEFAULT 60,
    international_prefix TEXT NOT NULL DEFAULT '00',
    national_prefix TEXT NOT NULL DEFAULT '',
    country_code TEXT NOT NULL DEFAULT '',
    strip_prefixes TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0  -- bumped by every change of the settings above
);

-- A deck version is written 'staged' (invisible to every reader), its rates in batches of
-- short transactions, then made 'active' at once. 'dropping': a failed or abandoned
-- import whose rates are being deleted. While staged, started_ms is when the import
-- started or last committed a batch, and importer the importing process (host:pid).
CREATE TABLE IF NOT EXISTS deck_versions (
    id INTEGER PRIMARY KEY,
    plan TEXT NOT NULL REFERENCES plans(name),
    version INTEGER NOT NULL,
    imported_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    lines INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    started_ms INTEGER,
    importer TEXT,
    UNIQUE (plan, version)
);

CREATE TABLE IF NOT EXISTS rates (
    id INTEGER PRIMARY KEY,
    plan TEXT NOT NULL,
    version INTEGER NOT NULL,
    destination TEXT NOT NULL,
    prefix TEXT NOT NULL,
    origin TEXT NOT NULL DEFAULT '',
    rate TEXT NOT NULL,
    increment TEXT NOT NULL,
    effective_from TEXT NOT NULL,
    connection_fee TEXT NOT NULL DEFAULT '0',
    minimum_charge TEXT NOT NULL DEFAULT '0',
    short_call_seconds INTEGER NOT NULL DEFAULT 0,
    short_call_surcharge TEXT NOT NULL DEFAULT '0',
    currency TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rates_plan ON rates (plan, version);

CREATE TABLE IF NOT EXISTS accounts (
    code TEXT PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    plan TEXT NOT NULL REFERENCES plans(name),
    currency TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('prepaid', 'postpaid')),
    balance TEXT NOT NULL DEFAULT '0',
    held TEXT NOT NULL DEFAULT '0',
    credit_limit TEXT NOT NULL DEFAULT '0',
    daily_cap TEXT,
    monthly_cap TEXT,
    day_key TEXT NOT NULL DEFAULT '',
    day_spend TEXT NOT NULL DEFAULT '0',
    month_key TEXT NOT NULL DEFAULT '',
    month_spend TEXT NOT NULL DEFAULT '0',
    chunk_seconds INTEGER,
    max_call_seconds INTEGER NOT NULL DEFAULT 14400,
    low_balance TEXT,
    recharge_below TEXT,
    recharge_amount TEXT,
    suspended INTEGER NOT NULL DEFAULT 0,
    suspend_reason TEXT NOT NULL DEFAULT '',
    parent TEXT,
    address TEXT NOT NULL DEFAULT '',
    tax_number TEXT NOT NULL DEFAULT '',
    tax_rate TEXT NOT NULL DEFAULT '0',
    created_ms INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS sip_accounts (
    kind TEXT NOT NULL CHECK (kind IN ('user', 'ip')),
    value TEXT NOT NULL,
    account TEXT NOT NULL REFERENCES accounts(code),
    PRIMARY KEY (kind, value)
);

CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    account TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN
        ('topup', 'reserve', 'release', 'charge', 'credit', 'adjustment')),
    amount TEXT NOT NULL,
    call_ref TEXT,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS ledger_account ON ledger (account, ts_ms);

CREATE TABLE IF NOT EXISTS live_calls (
    call_ref TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    number TEXT NOT NULL,
    destination TEXT NOT NULL,
    prefix TEXT NOT NULL,
    rate TEXT NOT NULL,
    increment TEXT NOT NULL,
    answered_ms INTEGER NOT NULL,
    paid_seconds INTEGER NOT NULL,
    reserved TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- Keys of commands applied once whatever replays them (a journaled top-up).
CREATE TABLE IF NOT EXISTS applied_keys (
    key TEXT PRIMARY KEY,
    applied_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS cdrs (
    id INTEGER PRIMARY KEY,
    call_ref TEXT NOT NULL UNIQUE,
    call_id TEXT NOT NULL,
    account TEXT,
    plan TEXT,
    caller TEXT NOT NULL DEFAULT '',
    callee TEXT NOT NULL DEFAULT '',
    destination TEXT NOT NULL DEFAULT '',
    prefix TEXT NOT NULL DEFAULT '',
    origin TEXT NOT NULL DEFAULT '',
    rate TEXT NOT NULL DEFAULT '0',
    increment TEXT NOT NULL DEFAULT '',
    currency TEXT NOT NULL DEFAULT '',
    offered_ms INTEGER,
    ringing_ms INTEGER,
    answered_ms INTEGER,
    billable_ms INTEGER,
    media_ms INTEGER,
    ended_ms INTEGER,
    duration_ms INTEGER NOT NULL DEFAULT 0,
    billed_seconds INTEGER NOT NULL DEFAULT 0,
    usage TEXT NOT NULL DEFAULT '0',
    connection_fee TEXT NOT NULL DEFAULT '0',
    surcharge TEXT NOT NULL DEFAULT '0',
    minimum_uplift TEXT NOT NULL DEFAULT '0',
    cost TEXT NOT NULL DEFAULT '0',
    charged TEXT NOT NULL DEFAULT '0',
    written_off TEXT NOT NULL DEFAULT '0',
    credited TEXT NOT NULL DEFAULT '0',
    disposition TEXT NOT NULL,
    sip_code INTEGER,
    ended_by TEXT NOT NULL DEFAULT '',
    end_reason TEXT NOT NULL DEFAULT '',
    fas_verdict TEXT NOT NULL DEFAULT '',
    fas_reasons TEXT NOT NULL DEFAULT '',
    route TEXT NOT NULL DEFAULT '',
    media TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS cdrs_route ON cdrs (route, offered_ms);
CREATE INDEX IF NOT EXISTS cdrs_account ON cdrs (account, answered_ms);

-- Issued invoices and credit notes. A row is the frozen document: ``data`` is the invoice
-- model as JSON (money as strings), ``detail`` its call detail (zlib-compressed JSON), and
-- ``sha256`` the hash of both, so a re-render is the same document and tampering shows.
CREATE TABLE IF NOT EXISTS invoices (
    number TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('invoice', 'credit_note')),
    seq INTEGER NOT NULL,
    account TEXT NOT NULL,
    period TEXT NOT NULL,
    issued_ms INTEGER NOT NULL,
    refers_to TEXT REFERENCES invoices(number),
    currency TEXT NOT NULL,
    net TEXT NOT NULL,
    tax TEXT NOT NULL,
    total TEXT NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT NOT NULL,
    data TEXT NOT NULL,
    detail BLOB,
    UNIQUE (kind, seq)
);
CREATE INDEX IF NOT EXISTS invoices_account ON invoices (account, period);

-- The last number handed out per series; numbers are never reused, even if a row vanished.
CREATE TABLE IF NOT EXISTS invoice_sequences (
    kind TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);

-- An issued document never changes: a correction is a credit note.
CREATE TRIGGER IF NOT EXISTS invoices_immutable BEFORE UPDATE ON invoices
BEGIN SELECT RAISE(ABORT, 'issued invoices are immutable: issue a credit note'); END;
CREATE TRIGGER IF NOT EXISTS invoices_no_delete BEFORE DELETE ON invoices
BEGIN SELECT RAISE(ABORT, 'issued invoices are never deleted: issue a credit note'); END;
"""


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


# Columns added after version 1, for databases created before them. Columns of plans and
# deck_versions are added at the end, in the order of _SCHEMA, so that both kinds of
# database have the same column order (``sidecar replay`` copies rows between them).
_ADDED_COLUMNS = {
    "cdrs": (("ringing_ms", "INTEGER"), ("media_ms", "INTEGER"),
             ("media", "TEXT NOT NULL DEFAULT ''")),
    "plans": (("revision", "INTEGER NOT NULL DEFAULT 0"),),
    "deck_versions": (("state", "TEXT NOT NULL DEFAULT 'active'"), ("started_ms", "INTEGER"),
                      ("importer", "TEXT")),
}


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
    for table, columns in _ADDED_COLUMNS.items():
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if have:  # an older database: bring the table up to date
            for name, decl in columns:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
    conn.executescript(_SCHEMA)
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(SCHEMA_VERSION),),
    )


def utils(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """A sqlite-utils view of the connection (introspection, ad-hoc queries)."""
    return sqlite_utils.Database(conn)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: one writer decides and records at once.

    IMMEDIATE takes the write lock up front, so a read-then-write decision (is there
    credit? then reserve it) cannot interleave with another process's.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
