"""``sidecar db``: schema upgrades (SQLite and PostgreSQL), a newer schema refused, and a
single node's store copied onto a real PostgreSQL without losing a row."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from sidecar.charging.commands import Flag
from sidecar.store.accounts import SqliteLedger
from sidecar.store.db import SCHEMA_VERSION, connect
from sidecar.store.migrate import COPIED_TABLES
from sidecar.store.pg import PG_SCHEMA_VERSION
from tests.cli.test_rating_cli import DECK, run
from tests.conftest import write
from tests.store.pgdb import T0, as_url, reserve, settle, topup
from tests.store.pgdb import fresh_database as _fresh_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database as a URL (what users pass to --db)."""
    with _fresh_database() as conninfo:
        yield as_url(conninfo)


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A single node's SQLite store with some history: two accounts (prepaid, postpaid), a
    SIP mapping, top-ups (keyed and by hand), settled calls, a call still running."""
    run(tmp_path, "deck", "import", str(write(tmp_path / "carrier.csv", DECK)), "--plan",
        "carrier", "--as-of", "2026-11-21")
    run(tmp_path, "account", "add", "ACME", "--plan", "carrier", "--balance", "20")
    run(tmp_path, "account", "add", "POST", "--plan", "carrier", "--kind", "postpaid",
        "--credit-limit", "50")
    run(tmp_path, "account", "map-sip", "ACME", "--user", "alice")
    conn = connect(tmp_path / "cli.db")
    ledger = SqliteLedger(conn)
    seq = 0
    for i in range(40):
        acct = "ACME" if i % 2 else "POST"
        seq += 2
        res = ledger.execute([reserve(seq - 1, acct, f"c{i}", "0.60", now=T0 + i),
                              topup(seq, acct, "0.25", f"t{i}", now=T0 + i)])
        assert not res.error, res.error
        if i < 39:  # the last call is still up: its hold stays
            seq += 1
            res = ledger.execute([settle(seq, f"c{i}", acct, Decimal("0.0123") * i)])
            assert not res.error, res.error
    # A fraud rule blocked POST (the event and the account's block are copied too).
    res = ledger.execute([Flag(seq + 1, "POST", "distinct_callees", "block",
                               "fraud rule distinct_callees: 31 numbers in 10 min",
                               '{"numbers": 31}', "fraud-1", T0 + 50)])
    assert not res.error and res.accounts["POST"].blocked, res
    conn.close()
    run(tmp_path, "account", "topup", "ACME", "1.5", "--note", "card 1234")
    return tmp_path


def counts(conn: sqlite3.Connection | psycopg.Connection[tuple[object, ...]]
           ) -> dict[str, int]:
    out = {}
    for t in COPIED_TABLES:
        row = conn.execute(f"SELECT count(*) FROM {t}").fetchone()
        assert row is not None
        out[t] = int(row[0])
    return out


def test_upgrade_a_new_and_a_current_sqlite_database(tmp_path: Path) -> None:
    out = run(tmp_path, "db", "upgrade").stdout
    assert f"schema version none (new) -> {SCHEMA_VERSION}" in out
    assert "up to date" in run(tmp_path, "db", "upgrade").stdout
    doc = json.loads(run(tmp_path, "db", "upgrade", "--json").stdout)
    assert doc["before"] == doc["after"] == SCHEMA_VERSION


def test_a_newer_schema_is_refused_and_left_alone(node: Path) -> None:
    db = node / "cli.db"
    with sqlite3.connect(db) as c:
        c.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    for args in (("db", "upgrade"), ("account", "list")):
        p = run(node, *args, ok=False)
        assert p.returncode == 1
        assert "schema version 99, newer than this release's" in p.stderr
        assert "Traceback" not in p.stderr
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                         ).fetchone() == ("99",)


def test_upgrade_a_postgresql_database(tmp_path: Path, pg_url: str) -> None:
    # A password in the URL (the server trusts loopback and ignores it) is never shown.
    with_password = pg_url.replace("postgres@", "postgres:s3cr3t-pw@")
    p = run(tmp_path, "--db", with_password, "db", "upgrade")
    assert f"schema version none (new) -> {PG_SCHEMA_VERSION}" in p.stdout
    assert "s3cr3t-pw" not in p.stdout + p.stderr
    assert "up to date" in run(tmp_path, "--db", pg_url, "db", "upgrade").stdout
    with psycopg.connect(pg_url, autocommit=True) as pg:
        pg.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    p = run(tmp_path, "--db", pg_url, "db", "upgrade", ok=False)
    assert p.returncode == 1 and "schema version 99, newer" in p.stderr


def test_copy_a_node_onto_postgresql_without_losing_a_row(node: Path, pg_url: str) -> None:
    src = connect(node / "cli.db")
    before = counts(src)
    balances = {str(r[0]): (Decimal(r[1]), Decimal(r[2])) for r in src.execute(
        "SELECT code, balance, held FROM accounts")}
    src.close()
    assert before["live_calls"] == 1 and before["cdrs"] == 39
    assert before["fraud_events"] == 1

    doc = json.loads(run(node, "db", "copy", str(node / "cli.db"), pg_url, "--json").stdout)
    assert doc["rows"] == before
    assert doc["accounts_verified"] == 2
    assert doc["not_copied"] == []  # every table, rate plans and decks included
    assert pg_url.rsplit("/", 1)[1] in doc["target"]

    with psycopg.connect(pg_url) as pg:
        assert counts(pg) == before
        got = {str(r[0]): (r[1], r[2]) for r in pg.execute(
            "SELECT code, balance, held FROM accounts")}
        assert got == balances  # exact: NUMERIC read back as Decimal
        assert pg.execute("SELECT reserved FROM live_calls").fetchone() == (Decimal("0.6"),)
        assert pg.execute("SELECT blocked FROM accounts WHERE code = 'POST'").fetchone() == (
            "fraud rule distinct_callees: 31 numbers in 10 min",)
        assert pg.execute("SELECT account, rule, evidence FROM fraud_events").fetchall() == [
            ("POST", "distinct_callees", '{"numbers": 31}')]
        # New rows continue after the copied ones (identities moved on).
        (top,) = pg.execute("INSERT INTO ledger (ts_ms, account, kind, amount) VALUES "
                            "(1, 'ACME', 'topup', 1) RETURNING id").fetchone() or (0,)
        (highest,) = pg.execute("SELECT max(id) FROM ledger WHERE ts_ms <> 1").fetchone() \
            or (0,)
        assert top > highest
        pg.rollback()

    # The sidecar's own check agrees on the copy, and the node now runs on it.
    out = run(node, "--db", pg_url, "db", "upgrade").stdout
    assert "up to date" in out
    assert run(node, "--db", pg_url, "ledger", "verify").stdout == \
        run(node, "ledger", "verify").stdout
    assert run(node, "--db", pg_url, "deck", "export", "--plan", "carrier").stdout == \
        run(node, "deck", "export", "--plan", "carrier").stdout


def test_copy_refuses_a_target_with_data_and_changes_nothing(node: Path, pg_url: str
                                                             ) -> None:
    run(node, "db", "copy", str(node / "cli.db"), pg_url)
    with psycopg.connect(pg_url) as pg:
        first = counts(pg)
    p = run(node, "db", "copy", str(node / "cli.db"), pg_url, ok=False)
    assert p.returncode == 1 and "table plans is not empty" in p.stderr
    with psycopg.connect(pg_url) as pg:
        assert counts(pg) == first


def test_copy_refuses_a_store_whose_ledger_does_not_verify(node: Path, pg_url: str) -> None:
    with sqlite3.connect(node / "cli.db") as c:
        c.execute("UPDATE accounts SET balance = '1000' WHERE code = 'ACME'")
    p = run(node, "db", "copy", str(node / "cli.db"), pg_url, ok=False)
    assert p.returncode == 1 and "does not verify" in p.stderr and "ACME" in p.stderr
    with psycopg.connect(pg_url) as pg:
        assert pg.execute("SELECT to_regclass('accounts')").fetchone() in (None, (None,))


def test_copy_names_a_missing_source(tmp_path: Path, pg_url: str) -> None:
    p = run(tmp_path, "db", "copy", str(tmp_path / "nope.db"), pg_url, ok=False)
    assert p.returncode == 1 and "no such SQLite database" in p.stderr
