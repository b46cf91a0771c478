"""The live store edge: the charging core with its writer thread on a real SQLite file.

Failures are real: a database on a small tmpfs filled to the last byte, and a database
another process keeps locked. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.charging import Action, Charger, ChargingConfig, EndCall, PlanRates
from sidecar.charging.book import AccountBook
from sidecar.charging.charger import REASON_STORE
from sidecar.charging.commands import BatchResult
from sidecar.charging.model import AccountKind, CdrWritten
from sidecar.store.accounts import add_account, ledger_for, verify_ledger
from sidecar.store.conn import Db, open_db
from sidecar.store.decks import PlanLoader, import_deck
from sidecar.store.journal import Journal
from sidecar.store.writer import Snapshot, StoreWriter, WriterEvent
from tests.charging.harness import DECK, T0
from tests.conftest import fill
from tests.store.pgdb import as_url, fresh_database


def prepare(db: Path | str, accounts: dict[str, str], deck_dir: Path | None = None) -> None:
    conn = open_db(db)
    deck = (deck_dir or Path(db).parent) / "deck.csv"
    deck.write_text(DECK)
    import_deck(conn, "retail", deck, as_of=datetime(2026, 11, 1, tzinfo=UTC))
    for code, balance in accounts.items():
        add_account(conn, code, "retail", AccountKind.PREPAID, now_ms=T0)
        ledger_for(conn).topup(code, Decimal(balance), T0, "initial")
    conn.close()


class Live:
    """A charger fed by a real StoreWriter thread, the way ``sidecar run`` wires them."""

    def __init__(self, db: Path | str, journal: Path, **kw: object) -> None:
        self.events: queue.SimpleQueue[WriterEvent] = queue.SimpleQueue()
        self.book = AccountBook()
        self.plans: dict[str, PlanRates] = {}
        self.writer = StoreWriter(db, journal, PlanLoader(), self.events.put,
                                  **kw)  # type: ignore[arg-type]
        self.charger = Charger(self.writer, lambda n: self.plans[n], ChargingConfig(),
                               book=self.book)
        self.actions: list[Action] = []
        self.results: list[BatchResult] = []
        self.writer.start()
        self.wait(lambda: bool(self.plans))

    def handle(self, ev: WriterEvent) -> None:
        if isinstance(ev, Snapshot):
            if ev.complete:
                self.book.load(ev.accounts, ev.sip)
            self.plans.update(ev.plans)
        else:
            self.results.append(ev)
            self.actions += self.charger.on_results(ev, T0)

    def wait(self, cond: object, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():  # type: ignore[operator]
            assert time.monotonic() < deadline, "timed out"
            with contextlib.suppress(queue.Empty):
                self.handle(self.events.get(timeout=0.05))

    def settled(self) -> None:
        """Until every command has its answer."""
        self.wait(lambda: self.charger.inflight() == 0)

    def call(self, ref: str, account: str, seconds: int) -> None:
        now = T0 + 1000
        d = self.charger.authorize(ref, number="4930123", account_code=account, now_ms=now)
        assert d.allow, d
        self.actions += self.charger.answer(ref, now)
        self.actions += self.charger.end(ref, now + seconds * 1000, ended_by="caller")

    def stop(self) -> None:
        self.writer.stop()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "live.db"
    prepare(path, {"acme": "100", "beta": "100"})
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same store as ``db``, on each database (a SQLite path or a PostgreSQL URL)."""
    if request.param == "sqlite":
        path = tmp_path / "live.db"
        prepare(path, {"acme": "100", "beta": "100"})
        yield str(path)
        return
    with fresh_database() as conninfo:
        url = as_url(conninfo)
        prepare(url, {"acme": "100", "beta": "100"}, tmp_path)
        yield url


def check(db: Path | str) -> Db:
    conn = open_db(db)
    problems = [c for c in verify_ledger(conn) if c.problems]
    assert not problems, problems
    return conn


def test_many_calls_are_committed_in_few_transactions(store: str, tmp_path: Path) -> None:
    db = store
    live = Live(db, tmp_path / "j")
    try:
        for i in range(500):
            live.call(f"c{i}", "acme" if i % 2 else "beta", 30)
        live.settled()
    finally:
        live.stop()
    assert live.writer.commands == 1000  # a reservation and a settlement per call
    assert live.writer.batches < 200  # many commands per transaction
    assert sum(isinstance(a, CdrWritten) for a in live.actions) == 500
    conn = check(db)
    assert conn.execute("SELECT COUNT(*) FROM cdrs").fetchone()[0] == 500
    # 30 s at 0.06/min = 0.03 each
    assert conn.execute("SELECT balance FROM accounts WHERE code='acme'").fetchone()[0] == \
        "92.50000000"
    # The book agrees with the store once every answer is in.
    acc = live.book.get("acme", T0)
    assert acc is not None and acc.balance == Decimal("92.5") and acc.held == 0


def test_full_disk_refuses_new_calls_ends_prepaid_ones_and_loses_no_settlement(
        tmpfs: Path, tmp_path: Path) -> None:
    db = tmpfs / "live.db"
    prepare(db, {"acme": "100", "beta": "100"})
    journal = tmp_path / "journal"  # on another filesystem, as README advises
    live = Live(db, journal, probe_s=0.2)
    try:
        # Calls that were answered while the disk had room: their first chunk is held.
        now = T0 + 1000
        for ref in ("up1", "up2"):
            assert live.charger.authorize(ref, number="4930123", account_code="acme",
                                          now_ms=now).allow
            live.actions += live.charger.answer(ref, now)
        live.settled()
        filler = fill(tmpfs)
        # Disk full. A call answered now cannot have its credit recorded: it is ended.
        assert live.charger.authorize("late", number="4930123", account_code="beta",
                                      now_ms=now).allow
        live.actions += live.charger.answer("late", now)
        live.wait(lambda: any(isinstance(a, EndCall) and a.call_ref == "late"
                              for a in live.actions))
        ends = [a for a in live.actions if isinstance(a, EndCall)]
        assert [(e.call_ref, e.reason) for e in ends] == [("late", REASON_STORE)]
        # The store is down: new calls are refused at once.
        d = live.charger.authorize("new", number="4930123", account_code="acme", now_ms=now)
        assert (d.allow, d.code) == (False, 503)
        # Calls end meanwhile: their settlements go to the journal, fsync'd.
        for ref in ("up1", "up2", "late"):
            live.actions += live.charger.end(ref, now + 20_000, ended_by="caller")
        live.wait(lambda: live.writer.journaled >= 3)
        assert len(Journal(journal)) >= 3
        assert live.writer.down
        assert live.writer.journal_depth >= 3  # counted without reading the file
        # Space comes back: the journal is applied, the store takes new calls again.
        filler.unlink()
        live.wait(lambda: live.charger.store_ok and not journal.exists(), timeout=20)
        live.wait(lambda: live.charger.inflight() == 0)
        assert live.writer.journal_depth == 0
        assert live.charger.authorize("after", number="4930123", account_code="acme",
                                      now_ms=now).allow
    finally:
        live.stop()
    conn = check(db)
    rows = dict(conn.execute("SELECT call_ref, disposition FROM cdrs").fetchall())
    assert rows["up1"] == rows["up2"] == rows["late"] == "answered"
    assert rows["new"] == "rejected"
    charged = dict(conn.execute("SELECT call_ref, charged FROM cdrs").fetchall())
    assert charged["up1"] == charged["up2"] == "0.02000000"  # 20 s at 0.06/min, once each
    assert conn.execute("SELECT COUNT(*) FROM live_calls").fetchone()[0] == 0


def hold_lock(db: Path, seconds: float) -> subprocess.Popen[bytes]:
    """Another process keeps the database locked (as a long transaction would)."""
    code = ("import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            f"time.sleep({seconds})\n"
            "c.execute('COMMIT')\n")
    p = subprocess.Popen([shutil.which("python3") or "python3", "-c", code],
                         stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"locked"
    return p


def test_locked_store_journals_settlements_and_applies_them_once_after_a_restart(
        db: Path, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    live = Live(db, journal, busy_timeout_ms=200, probe_s=60)  # no recovery in this run
    locker = hold_lock(db, 3)
    try:
        for i in range(5):
            now = T0 + 1000
            assert live.charger.authorize(f"c{i}", number="4930123", account_code="acme",
                                          now_ms=now).allow
            live.actions += live.charger.end(f"c{i}", now, ended_by="caller")  # unanswered
        live.wait(lambda: live.writer.journaled == 5)
        assert live.writer.journal_depth == 5
    finally:
        live.stop()  # the sidecar goes away with its journal not applied
        locker.wait(10)
    assert len(Journal(journal)) == 5
    saved = journal.read_bytes()
    # A new sidecar applies the journal at start, before anything else.
    live = Live(db, journal)
    live.stop()
    assert not journal.exists()
    assert live.writer.journal_depth == 0
    conn = check(db)
    assert conn.execute("SELECT COUNT(*) FROM cdrs").fetchone()[0] == 5
    # A crash between applying and emptying it: the same journal again changes nothing.
    journal.write_bytes(saved)
    live = Live(db, journal)
    live.stop()
    assert conn.execute("SELECT COUNT(*) FROM cdrs").fetchone()[0] == 5


def test_a_sidecar_stopping_while_the_store_is_down_journals_what_it_holds_at_once(
        db: Path, tmp_path: Path) -> None:
    """A sidecar that stops during an outage (its leader lock was lost with the server)
    does not try the store again for what is queued: it journals it and ends, so that its
    restart serves again as soon as the store is back; the restart applies the journal,
    and each call is billed its real duration, once."""
    journal = tmp_path / "journal"
    live = Live(db, journal, busy_timeout_ms=4000, probe_s=60)
    now = T0 + 1000
    refs = [f"c{i}" for i in range(5)]
    for ref in refs:  # answered while the store was up: their first chunk is held
        assert live.charger.authorize(ref, number="4930123", account_code="acme",
                                      now_ms=now).allow
        live.actions += live.charger.answer(ref, now)
    live.settled()
    locker = hold_lock(db, 20)
    try:
        live.actions += live.charger.end("c0", now + 10_000, ended_by="caller")
        time.sleep(0.5)  # the writer waits on the lock for c0's batch (4 s, then down)
        for ref in refs[1:]:
            live.actions += live.charger.end(ref, now + 10_000, ended_by="caller")
        t0 = time.monotonic()
        live.stop()
        took = time.monotonic() - t0
        # Only c0's try of the store was waited for (~3.5 s left of it); the rest was not
        # tried again (another 4 s) but journaled.
        assert took < 5.5, took
        assert locker.poll() is None  # the store was down all along
        assert len(Journal(journal)) == 5
    finally:
        live.stop()
        locker.kill()
        locker.wait(10)
    live = Live(db, journal)  # the restart, the store back: the journal is applied first
    live.stop()
    assert not journal.exists()
    conn = check(db)
    rows = conn.execute("SELECT call_ref, billed_seconds, charged FROM cdrs "
                        "ORDER BY call_ref").fetchall()
    assert [tuple(r) for r in rows] == [(ref, 10, "0.01000000") for ref in refs]
    assert conn.execute("SELECT COUNT(*) FROM live_calls").fetchone()[0] == 0


def test_a_store_change_made_elsewhere_reaches_the_book(store: str, tmp_path: Path) -> None:
    db = store
    live = Live(db, tmp_path / "j")
    try:
        conn = open_db(db)
        ledger_for(conn).topup("acme", Decimal("5"), T0, "card")
        add_account(conn, "gamma", "retail", AccountKind.PREPAID, now_ms=T0)
        live.wait(lambda: live.book.get("gamma", T0) is not None)
        acc = live.book.get("acme", T0)
        assert acc is not None and acc.balance == Decimal("105")
    finally:
        live.stop()


def test_reservation_the_store_cannot_cover_shortens_the_call(store: str, tmp_path: Path
                                                              ) -> None:
    """The book thinks there is credit; another process took most of it a moment ago.
    The store grants what is left and the call is cut when that is used."""
    db = store
    live = Live(db, tmp_path / "j", poll_s=30)  # the change is not seen before the answer
    try:
        conn = open_db(db)
        ledger_for(conn).topup("acme", Decimal("-99.99"), T0, "correction",
                                 kind="adjustment")  # 0.01 left: 10 s at 0.06/min
        now = T0 + 1000
        assert live.charger.authorize("c", number="4930123", account_code="acme",
                                      now_ms=now).allow
        live.actions += live.charger.answer("c", now)
        live.wait(lambda: live.charger.inflight() == 0)
        s = live.charger.sessions["c"]
        assert s.final and s.paid_seconds == 10
        assert live.charger.next_deadline() == now + 10_000
        live.actions += live.charger.end("c", now + 10_000, ended_by="proxy")
        live.wait(lambda: live.charger.inflight() == 0)
    finally:
        live.stop()
    conn = check(db)
    balance = conn.execute("SELECT balance FROM accounts WHERE code='acme'").fetchone()[0]
    assert Decimal(balance) == 0


def test_a_node_that_stops_renewing_has_its_calls_settled_once_by_another(
        store: str, tmp_path: Path) -> None:
    """Two nodes' writers on one store; node 'n1' dies with calls up (it stops renewing
    their leases): node 'n2' settles each once, for its paid time, and says so."""
    dead = Live(store, tmp_path / "j1", node="n1", lease_ms=1_000)
    try:
        now = T0 + 1000
        for i in range(3):
            assert dead.charger.authorize(f"c{i}", number="4930123", account_code="acme",
                                          now_ms=now).allow
            dead.actions += dead.charger.answer(f"c{i}", now)
        dead.settled()
    finally:
        dead.writer.stop()  # as a crash would: the calls are never ended here
    conn = open_db(store)
    paid = {str(r[0]): int(r[1]) for r in conn.execute(
        "SELECT call_ref, paid_seconds FROM live_calls WHERE node = 'n1'")}
    assert len(paid) == 3
    alive = Live(store, tmp_path / "j2", node="n2", lease_ms=1_000)
    try:
        alive.wait(lambda: alive.writer.taken_over == 3, timeout=20)
        time.sleep(0.5)  # another round finds nothing more to do
    finally:
        alive.stop()
    assert alive.writer.taken_over == 3
    rows = conn.execute("SELECT call_ref, billed_seconds, charged, node, ended_by, end_reason "
                        "FROM cdrs ORDER BY call_ref").fetchall()
    assert [str(r[0]) for r in rows] == ["c0", "c1", "c2"]
    for ref, billed, charged, node, by, reason in rows:
        assert int(billed) == paid[str(ref)]  # its paid time, never more
        assert Decimal(str(charged)) == Decimal("0.001") * paid[str(ref)]  # 0.06/min
        assert (node, by) == ("n1", "node n2") and str(reason).startswith("lease expired")
    assert conn.execute("SELECT COUNT(*) FROM live_calls").fetchone()[0] == 0
    check(store)
    # The dead node back: it adopts nothing, and nothing is charged again.
    back = Live(store, tmp_path / "j1", node="n1", lease_ms=1_000)
    back.stop()
    assert conn.execute("SELECT COUNT(*) FROM cdrs").fetchone()[0] == 3
