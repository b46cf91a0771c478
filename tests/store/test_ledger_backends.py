"""The store's money rules on both databases: the same tests on SQLite (a file of the test's
own) and on PostgreSQL (a fresh database on the local server, dropped afterwards), through
``execute`` as the live writer drives it. Then what only PostgreSQL is for: several
processes charging one account at once.

Failures are real: a trigger that fails the batch halfway through its writes, a lock held
by another connection, a server backend terminated under the ledger. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sidecar.charging.commands import BatchResult, Settle
from sidecar.charging.model import AccountKind
from sidecar.store.accounts import SqliteLedger, SqlLedger, add_account, map_sip
from sidecar.store.db import connect
from sidecar.store.decks import import_deck
from sidecar.store.pg import (
    PG,
    PgLedger,
    add_account_pg,
    connect_pg,
    ensure_schema_pg,
    open_pool,
    redact,
    verify_ledger_pg,
)
from sidecar.store.schema import SCHEMA_VERSION
from tests.store import pgdb
from tests.store.pgdb import T0, fresh_database, reserve, settle, topup, with_retail_plan

DECK = """destination;code;rate_usd;increment;effective_from
Germany Fixed;4930;0.60;1/1;2026-06-01
"""

State = dict[str, list[tuple[str, ...]]]


@dataclass
class Backend:
    """One database under the same tests."""

    name: str
    ledger: SqlLedger
    _add: Callable[..., object]
    rows: Callable[[str], list[tuple[Any, ...]]]  # a query on a connection of its own
    write: Callable[[str], None]  # a statement committed there
    map_sip: Callable[[str, str, str], None]
    fail_halfway: Callable[[], contextlib.AbstractContextManager[None]]
    outage: Callable[[], contextlib.AbstractContextManager[SqlLedger]]

    def add(self, code: str, balance: str = "0", kind: AccountKind = AccountKind.PREPAID,
            **kw: Any) -> None:
        self._add(code, kind, Decimal(balance), **kw)

    def money(self, sql: str) -> Decimal:
        (v,), = self.rows(sql)
        return Decimal(str(v))

    def state(self) -> State:
        """Everything the money path writes, as another connection sees it."""
        return {t: sorted(tuple(str(v) for v in r) for r in self.rows(f"SELECT * FROM {t}"))
                for t in ("accounts", "ledger", "live_calls", "cdrs", "applied_keys")}

    def verified(self) -> None:
        checks = self.ledger.verify()
        assert checks and all(not c.problems for c in checks), checks


# --- SQLite -------------------------------------------------------------------------------

@contextlib.contextmanager
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    db = tmp_path / "ledger.db"
    conn = connect(db)
    deck = tmp_path / "deck.csv"
    deck.write_text(DECK)
    import_deck(conn, "retail", deck, as_of=datetime(2026, 11, 1, tzinfo=UTC))
    ledger = SqliteLedger(conn)
    reader = connect(db)

    def add(code: str, kind: AccountKind, balance: Decimal, **kw: Any) -> None:
        add_account(conn, code, "retail", kind, now_ms=T0, **kw)
        if balance:
            ledger.topup(code, balance, T0, "opening balance")

    def rows(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in reader.execute(sql)]

    @contextlib.contextmanager
    def fail_halfway() -> Iterator[None]:
        # The CDR of call 'boom' is written after the batch's ledger rows, balances and
        # live calls: the failure comes with all of them written in the transaction.
        conn.execute("CREATE TRIGGER boom BEFORE INSERT ON cdrs WHEN NEW.call_ref = 'boom' "
                     "BEGIN SELECT RAISE(ABORT, 'disk I/O failed (test)'); END")
        try:
            yield
        finally:
            conn.execute("DROP TRIGGER boom")

    @contextlib.contextmanager
    def outage() -> Iterator[SqlLedger]:
        # Another process holds the write lock for longer than the writer waits.
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        conn.execute("PRAGMA busy_timeout = 100")
        try:
            yield ledger
        finally:
            other.execute("ROLLBACK")
            other.close()
            conn.execute("PRAGMA busy_timeout = 10000")

    b = Backend("sqlite", ledger, add, rows, lambda sql: reader.execute(sql) and None,
                lambda kind, value, code: map_sip(conn, kind, value, code),
                fail_halfway, outage)
    try:
        yield b
    finally:
        reader.close()
        conn.close()


# --- PostgreSQL ---------------------------------------------------------------------------

def _terminate(url: str, where: str, timeout: float = 10.0) -> int:
    """End the server backends of this database matching ``where`` (once there is one)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as admin:
        while time.monotonic() < deadline:
            pids = [r[0] for r in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                f"AND pid <> pg_backend_pid() AND {where}")]  # type: ignore[arg-type]
            if pids:
                for pid in pids:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                return len(pids)
            time.sleep(0.01)
    raise AssertionError(f"no backend {where}")


@contextlib.contextmanager
def pg_backend() -> Iterator[Backend]:
    with fresh_database() as url:
        admin = connect_pg(url)
        with_retail_plan(admin)
        pool = open_pool(url, min_size=1, max_size=2)
        ledger = PgLedger(pool)

        def add(code: str, kind: AccountKind, balance: Decimal, **kw: Any) -> None:
            add_account_pg(admin, code, "retail", kind, currency="USD", now_ms=T0,
                           balance=balance, **kw)

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return admin.execute(sql).fetchall()  # type: ignore[arg-type]

        def write(sql: str) -> None:
            admin.execute(sql)  # type: ignore[arg-type]

        @contextlib.contextmanager
        def fail_halfway() -> Iterator[None]:
            # The connection is lost while the CDR of call 'boom' is being written, after
            # the batch's ledger rows, balances and live calls: the server is told to end
            # the backend while it sleeps in a trigger.
            admin.execute("""CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN IF NEW.call_ref = 'boom' THEN PERFORM pg_sleep(30); END IF;
                RETURN NEW; END $$""")
            admin.execute("CREATE TRIGGER boom BEFORE INSERT ON cdrs FOR EACH ROW "
                          "EXECUTE FUNCTION boom()")
            killer = threading.Thread(target=_terminate, args=(url, "wait_event = 'PgSleep'"))
            killer.start()
            try:
                yield
            finally:
                killer.join()
                admin.execute("DROP TRIGGER boom ON cdrs")
                admin.execute("DROP FUNCTION boom()")

        @contextlib.contextmanager
        def outage() -> Iterator[SqlLedger]:
            # A ledger on one connection, whose server backend is ended under it.
            conn = connect_pg(url)
            conn.execute("SET application_name = 'doomed'")
            _terminate(url, "application_name = 'doomed'")
            try:
                yield PgLedger(conn)
            finally:
                conn.close()

        b = Backend("postgresql", ledger, add, rows, write,
                    lambda kind, value, code: map_sip(admin, kind, value, code, PG),
                    fail_halfway, outage)
        try:
            yield b
        finally:
            pool.close()
            admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with (sqlite_backend(tmp_path) if request.param == "sqlite" else pg_backend()) as b:
        yield b


def ok(res: BatchResult) -> BatchResult:
    assert not res.error, res.error
    return res


# --- the same rules on both ---------------------------------------------------------------

def test_reserve_settle_topup(ledger: Backend) -> None:
    ledger.add("acme", "10")
    res = ok(ledger.ledger.execute([topup(1, "acme", "5", "pay-1"),
                                    reserve(2, "acme", "c1", "1.20", 120)]))
    assert [o.ok for o in res.outcomes] == [True, True]
    assert (res.outcomes[1].granted, res.outcomes[1].seconds) == (Decimal("1.20"), 120)
    acc = res.accounts["acme"]
    assert (acc.balance, acc.held) == (Decimal("13.80"), Decimal("1.20"))
    [live] = ledger.ledger.live_calls()
    assert live["call_ref"] == "c1" and Decimal(str(live["reserved"])) == Decimal("1.20")
    assert live["paid_seconds"] == 120

    res = ok(ledger.ledger.execute([settle(3, "c1", "acme", "0.90")]))
    s = res.outcomes[0].settlement
    assert s is not None and not s.duplicate
    assert (s.charged, s.written_off) == (Decimal("0.90"), Decimal("0"))
    acc = res.accounts["acme"]
    assert (acc.balance, acc.held) == (Decimal("14.10"), Decimal("0"))
    assert ledger.ledger.live_calls() == []
    assert ledger.money("SELECT balance FROM accounts WHERE code = 'acme'") == Decimal("14.10")
    kinds = [(k, Decimal(str(a))) for k, a in
             ledger.rows("SELECT kind, amount FROM ledger ORDER BY id")]
    assert kinds == [("topup", Decimal("10")), ("topup", Decimal("5")),
                     ("charge", Decimal("-0.90"))]
    assert ledger.money("SELECT charged FROM cdrs WHERE call_ref = 'c1'") == Decimal("0.90")
    acc2 = ledger.ledger.account("acme", T0)
    assert acc2 is not None and acc2.balance == Decimal("14.10")
    ledger.verified()


def test_a_call_belongs_to_the_node_that_reserved_it(ledger: Backend) -> None:
    led = ledger.ledger
    ledger.add("acme", "10")
    led.node = "n1"
    ok(led.execute([reserve(1, "acme", "c1", "0.60")]))
    led.node = "n2"
    ok(led.execute([reserve(2, "acme", "c2", "0.60"),
                    reserve(3, "acme", "c1", "0.60", paid_before=60)]))  # renews, not takes
    assert [r["call_ref"] for r in led.live_calls("n1")] == ["c1"]
    assert [r["call_ref"] for r in led.live_calls("n2")] == ["c2"]
    assert {r["call_ref"]: r["node"] for r in led.live_calls()} == {"c1": "n1", "c2": "n2"}
    res = ok(led.execute([settle(4, "c1", "acme", "0.90")]))
    assert res.outcomes[0].settlement is not None
    assert ledger.rows("SELECT node FROM cdrs WHERE call_ref = 'c1'") == [("n1",)]
    ledger.verified()


def test_another_node_settles_a_call_once_its_lease_ran_out(ledger: Backend) -> None:
    led = ledger.ledger
    ledger.add("acme", "10")
    led.node, led.lease_ms = "dead", 1_000
    ok(led.execute([reserve(1, "acme", "c1", "0.60")]))
    (row,) = led.live_calls("dead")
    lease = int(str(row["lease_ms"]))
    led.node = "alive"
    assert led.expired_calls(lease - 1) == []  # still vouched for
    (late,) = led.expired_calls(lease + 1)
    assert late["call_ref"] == "c1"
    # Settled only if the lease still ran out when the settlement commits...
    early = Settle(2, pgdb.cdr("c1", "acme", "0.60"), T0, lease_ended_by=lease)
    s = ok(led.execute([early])).outcomes[0].settlement
    assert s is not None and s.duplicate and led.live_calls() != []
    # ...and then once, whoever else tries.
    res = ok(led.execute([Settle(3, pgdb.cdr("c1", "acme", "0.60"), T0,
                                 lease_ended_by=lease + 1)]))
    s = res.outcomes[0].settlement
    assert s is not None and not s.duplicate and s.charged == Decimal("0.60")
    again = ok(led.execute([Settle(4, pgdb.cdr("c1", "acme", "0.60"), T0,
                                   lease_ended_by=lease + 1)])).outcomes[0].settlement
    assert again is not None and again.duplicate
    assert led.live_calls() == [] and ledger.rows("SELECT node FROM cdrs") == [("dead",)]
    assert ledger.money("SELECT balance FROM accounts") == Decimal("9.40")
    ledger.verified()


def test_renewed_leases_keep_a_call_from_being_taken_over(ledger: Backend) -> None:
    led = ledger.ledger
    ledger.add("acme", "10")
    led.node, led.lease_ms = "n1", 1_000
    ok(led.execute([reserve(1, "acme", "c1", "0.60")]))
    (row,) = led.live_calls()
    later = int(str(row["lease_ms"])) + 60_000
    assert led.renew_leases(later) == 1
    led.node = "n2"
    assert led.renew_leases(later) == 0  # another node renews only its own
    assert led.expired_calls(later + 999) == []
    assert [r["call_ref"] for r in led.expired_calls(later + 1_001)] == ["c1"]


def test_a_call_settled_elsewhere_gets_no_more_credit_and_keeps_no_hold(
        ledger: Backend) -> None:
    led = ledger.ledger
    ledger.add("acme", "10")
    ok(led.execute([reserve(1, "acme", "c1", "0.60")]))
    ok(led.execute([settle(2, "c1", "acme", "0.60")]))  # e.g. by a node that took over
    # The call's own node did not know: its next reservation gets nothing...
    res = ok(led.execute([reserve(3, "acme", "c1", "0.60", paid_before=60)]))
    assert (res.outcomes[0].granted, res.outcomes[0].seconds) == (0, 60)
    assert res.outcomes[0].settled_elsewhere
    assert led.live_calls() == []
    # ...a hold that raced the settlement in (an older release) is given back by the
    # duplicate settlement, and verify flags one meanwhile.
    ledger.write("INSERT INTO live_calls (call_ref, account, number, destination, prefix, "
                 "rate, increment, answered_ms, paid_seconds, reserved, updated_ms) VALUES "
                 "('c1', 'acme', '4930123456', 'Germany Fixed', '4930', 0.6, '1/1', 0, 120, "
                 "0.60, 0)")
    ledger.write("UPDATE accounts SET balance = 8.80, held = 0.60 WHERE code = 'acme'")
    (check,) = led.verify()
    assert check.problems == ("1 reservation(s) left on calls settled already (e.g. c1)",)
    dup = ok(led.execute([settle(4, "c1", "acme", "0.60")])).outcomes[0].settlement
    assert dup is not None and dup.duplicate and dup.charged == 0
    assert led.live_calls() == []
    assert ledger.money("SELECT balance FROM accounts") == Decimal("9.40")
    assert ledger.money("SELECT held FROM accounts") == 0
    ledger.verified()


def test_resolve_and_reads(ledger: Backend) -> None:
    ledger.add("acme", "10", name="Acme Ltd")
    ledger.add("beta", "0", AccountKind.POSTPAID, credit_limit=Decimal("50"))
    ledger.map_sip("user", "alice", "acme")
    ledger.map_sip("ip", "192.0.2.7", "beta")
    led = ledger.ledger
    acc, how = led.resolve("beta", "alice", "", T0)
    assert acc is not None and acc.code == "beta" and how == "account code"
    acc, how = led.resolve("", "alice", "192.0.2.7", T0)
    assert acc is not None and (acc.code, acc.name, acc.balance) == ("acme", "Acme Ltd",
                                                                     Decimal("10"))
    assert how == "SIP user alice"
    acc, how = led.resolve("", "bob", "192.0.2.7", T0)
    assert acc is not None and acc.code == "beta" and acc.kind is AccountKind.POSTPAID
    assert acc.available() == Decimal("50")
    assert led.resolve("nobody", "", "", T0) == (None, "unknown account code 'nobody'")
    assert led.resolve("", "bob", "10.0.0.1", T0)[0] is None
    assert led.account("nobody", T0) is None
    acc2 = led.topup("beta", Decimal("-5"), T0, "correction", kind="adjustment")
    assert acc2.balance == Decimal("-5")
    with pytest.raises(ValueError, match="below zero"):
        led.topup("acme", Decimal("-11"), T0, "too much", kind="adjustment")
    assert ledger.money("SELECT balance FROM accounts WHERE code = 'acme'") == Decimal("10")
    ledger.verified()


def test_duplicate_settle_charges_once(ledger: Backend) -> None:
    ledger.add("acme", "10")
    ok(ledger.ledger.execute([reserve(1, "acme", "c1", "0.60")]))
    res = ok(ledger.ledger.execute([settle(2, "c1", "acme", "0.50"),
                                    settle(3, "c1", "acme", "0.50")]))
    first, second = (o.settlement for o in res.outcomes)
    assert first is not None and not first.duplicate and first.charged == Decimal("0.50")
    assert second is not None and second.duplicate and second.charged == 0
    # Late, from a journal replayed after a restart: still once.
    res = ok(ledger.ledger.execute([settle(4, "c1", "acme", "0.50")]))
    late = res.outcomes[0].settlement
    assert late is not None and late.duplicate
    assert ledger.rows("SELECT COUNT(*) FROM ledger WHERE kind = 'charge'") == [(1,)]
    assert ledger.rows("SELECT COUNT(*) FROM cdrs") == [(1,)]
    assert ledger.money("SELECT balance FROM accounts") == Decimal("9.50")
    assert ledger.money("SELECT held FROM accounts") == 0
    ledger.verified()


def test_unknown_account_fails_alone(ledger: Backend) -> None:
    ledger.add("acme", "10")
    res = ok(ledger.ledger.execute([reserve(1, "nobody", "x1", "0.60"),
                                    reserve(2, "acme", "c1", "0.60"),
                                    topup(3, "nobody", "5", "pay-x"),
                                    settle(4, "x2", "nobody", "1.00")]))
    assert [o.ok for o in res.outcomes] == [False, True, False, True]
    assert "nobody" in res.outcomes[0].error and "not found" in res.outcomes[0].error
    assert res.outcomes[1].granted == Decimal("0.60")
    # A CDR of an account the store does not know is kept, and moves no money.
    s = res.outcomes[3].settlement
    assert s is not None and s.charged == 0 and s.before is None
    assert list(res.accounts) == ["acme"]
    assert ledger.money("SELECT held FROM accounts WHERE code = 'acme'") == Decimal("0.60")
    assert ledger.rows("SELECT call_ref FROM cdrs") == [("x2",)]
    ledger.verified()


def test_prepaid_never_below_zero(ledger: Backend) -> None:
    ledger.add("small", "1.005")
    res = ok(ledger.ledger.execute([reserve(1, "small", "c1", "3.00", 300),
                                    reserve(2, "small", "c2", "0.60", 60)]))
    # Only part of the first reservation can be granted (whole seconds of what is
    # there); nothing is left for the second.
    assert (res.outcomes[0].granted, res.outcomes[0].seconds) == (Decimal("1.00"), 100)
    assert (res.outcomes[1].granted, res.outcomes[1].seconds) == (Decimal("0"), 0)
    acc = res.accounts["small"]
    assert (acc.balance, acc.held) == (Decimal("0.005"), Decimal("1.00"))
    # The call cost more than was held: what the account cannot cover is written off.
    res = ok(ledger.ledger.execute([settle(3, "c1", "small", "2.50"),
                                    settle(4, "c2", "small", "0.30")]))
    s1, s2 = (o.settlement for o in res.outcomes)
    assert s1 is not None and (s1.charged, s1.written_off) == (Decimal("1.005"),
                                                               Decimal("1.495"))
    assert s2 is not None and (s2.charged, s2.written_off) == (Decimal("0"), Decimal("0.30"))
    assert res.accounts["small"].balance == 0
    assert ledger.money("SELECT balance FROM accounts") == 0
    written_off = [Decimal(str(v)) for v, in ledger.rows("SELECT written_off FROM cdrs")]
    assert sum(written_off) == Decimal("1.795")  # (SQLite's SUM of TEXT would be a float)
    ledger.verified()


def test_postpaid_stops_at_its_credit_limit(ledger: Backend) -> None:
    ledger.add("corp", "0", AccountKind.POSTPAID, credit_limit=Decimal("2"))
    res = ok(ledger.ledger.execute([reserve(1, "corp", "c1", "3.00", 300)]))
    assert res.outcomes[0].granted == Decimal("2.00")
    res = ok(ledger.ledger.execute([settle(2, "c1", "corp", "5")]))
    s = res.outcomes[0].settlement
    assert s is not None and (s.charged, s.written_off) == (Decimal("2"), Decimal("3"))
    assert res.accounts["corp"].balance == Decimal("-2")
    ledger.verified()


def test_topup_key_applied_once(ledger: Backend) -> None:
    ledger.add("acme", "1")
    res = ok(ledger.ledger.execute([topup(1, "acme", "5", "pay-7"),
                                    topup(2, "acme", "5", "pay-7")]))
    a, b = (o.settlement for o in res.outcomes)
    assert a is not None and not a.duplicate
    assert b is not None and b.duplicate
    res = ok(ledger.ledger.execute([topup(3, "acme", "5", "pay-7"),
                                    topup(4, "acme", "2", "pay-8")]))
    c, d = (o.settlement for o in res.outcomes)
    assert c is not None and c.duplicate
    assert d is not None and not d.duplicate
    assert ledger.money("SELECT balance FROM accounts") == Decimal("8")
    assert sorted(ledger.rows("SELECT key FROM applied_keys")) == [("pay-7",), ("pay-8",)]
    ledger.verified()


def test_failure_halfway_is_reported_and_nothing_is_written(ledger: Backend) -> None:
    ledger.add("acme", "10")
    ok(ledger.ledger.execute([reserve(1, "acme", "c1", "0.60")]))
    before = ledger.state()
    cmds = [topup(2, "acme", "5", "pay-9"), reserve(3, "acme", "c2", "0.60"),
            settle(4, "c1", "acme", "0.40"), settle(5, "boom", "acme", "0.10")]
    with ledger.fail_halfway():
        res = ledger.ledger.execute(cmds)  # never raises
    assert res.error
    assert [o.ok for o in res.outcomes] == [False] * 4
    assert all(o.error == res.error for o in res.outcomes)
    assert [o.seq for o in res.outcomes] == [2, 3, 4, 5]
    assert res.accounts == {}
    assert ledger.state() == before  # not one row of the batch
    # The store goes on; the top-up's key was not used up by the failed batch.
    res = ok(ledger.ledger.execute(cmds[:3]))
    assert all(o.ok for o in res.outcomes)
    t = res.outcomes[0].settlement
    assert t is not None and not t.duplicate
    assert ledger.money("SELECT balance FROM accounts") == Decimal("14.00")
    assert ledger.money("SELECT held FROM accounts") == Decimal("0.60")
    ledger.verified()


def test_store_unavailable_is_reported_not_raised(ledger: Backend) -> None:
    ledger.add("acme", "10")
    before = ledger.state()
    cmds = [reserve(1, "acme", "c1", "0.60"), topup(2, "acme", "1", "pay-1"),
            settle(3, "c0", "acme", "0.10")]
    with ledger.outage() as down:
        res = down.execute(cmds)
    assert res.error
    assert [(o.seq, o.ok) for o in res.outcomes] == [(1, False), (2, False), (3, False)]
    assert ledger.state() == before
    ok(ledger.ledger.execute(cmds))
    ledger.verified()


def test_verify_finds_a_tampered_balance(ledger: Backend) -> None:
    ledger.add("acme", "10")
    ledger.add("beta", "3")
    ok(ledger.ledger.execute([reserve(1, "acme", "c1", "0.60")]))
    ledger.verified()
    ledger.write("UPDATE accounts SET balance = 4 WHERE code = 'beta'")
    checks = {c.account: c for c in ledger.ledger.verify()}
    assert checks["acme"].problems == ()
    assert checks["beta"].problems == ("balance 4 + held 0 != ledger sum 3",)


# --- PostgreSQL only ----------------------------------------------------------------------

@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        with contextlib.closing(connect_pg(url)) as conn:
            with_retail_plan(conn)
        yield url


def test_pg_money_is_numeric_and_exact(pg_url: str) -> None:
    with contextlib.closing(connect_pg(pg_url)) as conn:
        ensure_schema_pg(conn)  # again: nothing changes
        types = dict(conn.execute(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
            "WHERE column_name IN ('balance', 'held', 'amount', 'reserved', 'charged', 'cost', "
            "'written_off', 'credited', 'rate')").fetchall())
        assert set(types.values()) == {"numeric"}, types
        assert {"accounts.balance", "ledger.amount", "live_calls.reserved",
                "cdrs.charged"} <= set(types)
        add_account_pg(conn, "acme", "retail", AccountKind.PREPAID, currency="USD",
                       now_ms=T0, balance=Decimal("0.3"))
        ledger = PgLedger(conn)
        # A thousand holds of 0.00000001 on top of 0.3: no float ever comes near them.
        for i in range(10):
            ok(ledger.execute([reserve(j, "acme", f"c{i}", "0.00000001")
                               for j in range(i * 100, i * 100 + 100)]))
        (bal, held), = conn.execute("SELECT balance, held FROM accounts").fetchall()
        assert isinstance(bal, Decimal) and isinstance(held, Decimal)
        assert (bal, held) == (Decimal("0.29999"), Decimal("0.00001"))
        assert all(not c.problems for c in verify_ledger_pg(conn))
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                            ).fetchall() == [(str(SCHEMA_VERSION),)]


def test_pg_password_never_shown() -> None:
    url = "postgresql://postgres:s3cr3t-pw@127.0.0.1:1/nowhere"
    assert "s3cr3t-pw" not in redact(url)
    assert "s3cr3t-pw" not in redact("host=127.0.0.1 password=s3cr3t-pw")
    with pytest.raises(psycopg.OperationalError) as exc:
        connect_pg(url)
    assert "s3cr3t-pw" not in str(exc.value)
    pool = open_pool(url, timeout=0.5)
    try:
        res = PgLedger(pool).execute([reserve(1, "acme", "c1", "0.60")])
    finally:
        pool.close()
    assert res.error and "s3cr3t-pw" not in res.error
    assert not res.outcomes[0].ok


def test_pg_ledger_on_a_pool_recovers_from_a_lost_connection(pg_url: str) -> None:
    with contextlib.closing(connect_pg(pg_url)) as conn:
        add_account_pg(conn, "acme", "retail", AccountKind.PREPAID, currency="USD",
                       now_ms=T0, balance=Decimal("10"))
    pool = open_pool(pg_url, min_size=1, max_size=1)
    try:
        ledger = PgLedger(pool)
        ok(ledger.execute([reserve(1, "acme", "c1", "0.60")]))
        _terminate(pg_url, "application_name = 'sidecar'")  # the server restarts, say
        ok(ledger.execute([settle(2, "c1", "acme", "0.30")]))
        assert all(not c.problems for c in ledger.verify())
    finally:
        pool.close()


def test_pg_account_locked_elsewhere_fails_the_batch_in_bounded_time(pg_url: str) -> None:
    """A session elsewhere holds the account's row (stuck mid-transaction): the batch
    waits at most the lock timeout, then is reported failed, every outcome failed,
    nothing written; once the lock is gone the same batch commits."""
    with contextlib.closing(connect_pg(pg_url)) as conn:
        add_account_pg(conn, "acme", "retail", AccountKind.PREPAID, currency="USD",
                       now_ms=T0, balance=Decimal("10"))
    ledger = PgLedger(connect_pg(pg_url))
    stuck = psycopg.connect(pg_url)  # not autocommit: its transaction stays open
    try:
        stuck.execute("SELECT 1 FROM accounts WHERE code = 'acme' FOR UPDATE")
        t0 = time.monotonic()
        res = ledger.execute([reserve(1, "acme", "c1", "0.60")])
        waited = time.monotonic() - t0
        assert res.error and "lock" in res.error.lower(), res.error
        assert not any(o.ok for o in res.outcomes)
        assert 1.5 <= waited < 6, waited  # LOCK_TIMEOUT_MS, not forever
        stuck.rollback()
        ok(ledger.execute([reserve(2, "acme", "c1", "0.60")]))
        assert all(not c.problems for c in ledger.verify())
    finally:
        stuck.close()
        ledger.db.close()


def test_pg_two_nodes_settling_one_call_charge_it_once(pg_url: str) -> None:
    """Two sidecars (two connections) settle the same calls at the same moment: the row
    lock on the account orders them, and the second sees the first's CDR."""
    with contextlib.closing(connect_pg(pg_url)) as conn:
        add_account_pg(conn, "acme", "retail", AccountKind.PREPAID, currency="USD",
                       now_ms=T0, balance=Decimal("100"))
    nodes = [PgLedger(connect_pg(pg_url)), PgLedger(connect_pg(pg_url))]
    try:
        calls = 20
        ok(nodes[0].execute([reserve(i, "acme", f"c{i}", "0.60") for i in range(calls)]))
        results: list[list[BatchResult]] = [[], []]
        barrier = threading.Barrier(2)

        def node(n: int) -> None:
            for i in range(calls):
                barrier.wait(10)
                results[n].append(nodes[n].execute([settle(i, f"c{i}", "acme", "0.50")]))

        threads = [threading.Thread(target=node, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i in range(calls):
            outs = [results[n][i].outcomes[0] for n in (0, 1)]
            assert all(o.ok for o in outs), outs
            dup = sorted(o.settlement.duplicate for o in outs if o.settlement)
            assert dup == [False, True]
        with contextlib.closing(connect_pg(pg_url)) as conn:
            assert conn.execute("SELECT balance, held FROM accounts").fetchall() == [
                (Decimal("90.00"), Decimal("0.00"))]
            assert all(not c.problems for c in verify_ledger_pg(conn))
    finally:
        for led in nodes:
            assert isinstance(led.db, psycopg.Connection)
            led.db.close()


def test_pg_concurrent_batches_over_many_accounts(pg_url: str) -> None:
    """Batches naming more accounts than one read takes (500), in random orders, from two
    connections at once: all of them commit (the accounts are locked in one order
    everywhere, so no two batches wait for each other in a cycle: PostgreSQL would end
    one with a deadlock error) and the holds add up."""
    codes = [f"{p}{i:03d}" for p in ("a", "B", "é", "Z") for i in range(150)]
    random.Random(7).shuffle(codes)  # stored in no particular order
    with (contextlib.closing(connect_pg(pg_url)) as conn, conn.transaction(),
          conn.cursor() as cur):
        cur.executemany("INSERT INTO accounts (code, plan, currency, kind, balance, "
                        "created_ms) VALUES (%s, 'retail', 'USD', 'prepaid', 1, %s)",
                        [(c, T0) for c in codes])
        cur.executemany("INSERT INTO ledger (ts_ms, account, kind, amount) "
                        "VALUES (%s, %s, 'topup', 1)", [(T0, c) for c in codes])
    nodes = [PgLedger(connect_pg(pg_url)), PgLedger(connect_pg(pg_url))]
    errors: list[str] = []

    def node(n: int) -> None:
        rng = random.Random(n)
        for b in range(6):
            picked = rng.sample(codes, 520)
            res = nodes[n].execute([reserve(i, c, f"n{n}-b{b}-{c}", "0.01")
                                    for i, c in enumerate(picked)])
            if res.error or not all(o.ok and o.granted for o in res.outcomes):
                errors.append(res.error or "not granted")

    try:
        threads = [threading.Thread(target=node, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:3]
        with contextlib.closing(connect_pg(pg_url)) as conn:
            assert all(not c.problems for c in verify_ledger_pg(conn))
            (held,), = conn.execute("SELECT SUM(held) FROM accounts").fetchall()
            assert held == Decimal("0.01") * 2 * 6 * 520
    finally:
        for led in nodes:
            assert isinstance(led.db, psycopg.Connection)
            led.db.close()


def test_pg_processes_sharing_one_prepaid_account(pg_url: str) -> None:
    """Four processes reserve and settle calls on ONE prepaid account with little credit,
    all at once: it never goes below zero, the ledger verifies, and what was charged is
    what the CDRs say."""
    procs, calls, opening = 4, 120, Decimal("30")
    with contextlib.closing(connect_pg(pg_url)) as conn:
        add_account_pg(conn, "shared", "retail", AccountKind.PREPAID, currency="USD",
                       now_ms=T0, balance=opening)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(procs + 1)
    out = ctx.Queue()
    workers = [ctx.Process(target=pgdb.shared_account_worker,
                           args=(pg_url, "shared", p, calls, start, out)) for p in range(procs)]
    for w in workers:
        w.start()
    lowest = opening
    stop = threading.Event()

    def watch() -> None:  # the balance as any other reader sees it, all along
        nonlocal lowest
        with contextlib.closing(connect_pg(pg_url)) as conn:
            while not stop.is_set():
                (bal, held), = conn.execute("SELECT balance, held FROM accounts").fetchall()
                assert held >= 0
                lowest = min(lowest, bal)
                time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    try:
        start.wait(60)
        watcher.start()
        reports = [out.get(timeout=120) for _ in workers]
    finally:
        stop.set()
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.kill()
        if watcher.is_alive():
            watcher.join(10)
    errors = [r[2] for r in reports if r[0] != "ok"]
    assert not errors, "\n".join(errors)
    assert lowest >= 0
    charged = sum((Decimal(r[2]) for r in reports), Decimal(0))
    topped = sum((Decimal(r[3]) for r in reports), Decimal(0))
    assert all(Decimal(r[5]) >= 0 for r in reports)
    with contextlib.closing(connect_pg(pg_url)) as conn:
        checks = verify_ledger_pg(conn)
        assert all(not c.problems for c in checks), checks
        (bal, held), = conn.execute("SELECT balance, held FROM accounts").fetchall()
        (cdr_charged, cdr_written_off, n), = conn.execute(
            "SELECT SUM(charged), SUM(written_off), COUNT(*) FROM cdrs").fetchall()
        (ledger_charges,), = conn.execute(
            "SELECT -SUM(amount) FROM ledger WHERE kind = 'charge'").fetchall()
        assert conn.execute("SELECT COUNT(*) FROM live_calls").fetchall() == [(0,)]
    assert n == procs * calls
    assert cdr_charged == charged == ledger_charges
    assert held == 0 and bal >= 0
    assert bal == opening + topped - charged
    assert topped == procs * (calls // 25)
    # The credit really ran out while the calls went on (the floor was exercised).
    assert cdr_written_off > 0


def test_a_float_is_drawn_on_never_beyond_what_is_free_and_given_back_once_its_node_is_gone(
        ledger: Backend) -> None:
    """Resellers' floats (issue 14): credit a node holds on a reseller for its customers'
    chunks. A draw the float has no free credit for is refused (the call gets nothing
    more); another node settles a dead node's call out of that node's float and, once the
    node has no live call left, gives the rest back to the reseller."""
    from sidecar.charging.commands import FloatHold
    from sidecar.store.writer import expired_cdr, held_tiers

    led = ledger.ledger
    ledger.add("RES", "10", reseller=True)
    ledger.add("acme", "10", parent="RES")
    led.node, led.lease_ms = "dead", 1_000
    res = ok(led.execute([FloatHold(1, "RES", Decimal("2.00"), T0)]))
    assert res.outcomes[0].granted == Decimal("2.00")
    assert (res.accounts["RES"].balance, res.accounts["RES"].held) == (Decimal("8.00"),
                                                                       Decimal("2.00"))
    first = reserve(2, "acme", "c1", "0.60")._replace(float_draws=(("RES", Decimal("0.50")),))
    over = reserve(3, "acme", "c2", "0.60")._replace(float_draws=(("RES", Decimal("1.60")),))
    res = ok(led.execute([first, over]))
    assert res.outcomes[0].chain_granted == (Decimal("0.50"),)
    assert (res.outcomes[1].granted, res.outcomes[1].seconds, res.outcomes[1].chain_granted
            ) == (Decimal("0"), 0, ())  # only 1.50 was free in the float
    assert led.floats() == {"RES": Decimal("2.00")}
    ledger.verified()
    (row,) = [r for r in led.live_calls("dead") if r["call_ref"] == "c1"]
    lease = int(str(row["lease_ms"]))
    led.node = "alive"
    assert led.expired_floats(lease + 1) == []  # its node still has a live call
    cdr = expired_cdr(row, led.account("acme", T0), "alive")
    ok(led.execute([Settle(4, cdr, T0, lease_ended_by=lease + 1,
                           tiers=held_tiers(row, int(str(row["paid_seconds"]))))]))
    assert ledger.money("SELECT charged FROM cdr_tiers WHERE call_ref = 'c1'") == Decimal(
        "0.50")
    ledger.verified()
    assert led.live_calls() == []  # (c2's refused chunk was never recorded)
    ((node, code, held),) = led.expired_floats(lease + 1)
    assert (node, code, held) == ("dead", "RES", Decimal("1.50"))
    ok(led.execute([FloatHold(5, code, -held, T0, node=node)]))
    assert led.expired_floats(lease + 1) == [] and led.floats("dead") == {}
    assert ledger.money("SELECT balance FROM accounts WHERE code = 'RES'") == Decimal("9.50")
    assert ledger.money("SELECT held FROM accounts WHERE code = 'RES'") == Decimal("0")
    ledger.verified()
