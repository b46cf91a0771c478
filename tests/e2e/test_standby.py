"""A hot standby for one Kamailio node: ``kill -9`` of the active sidecar with 50 calls up.

The real Kamailio with the shipped configuration, two real ``sidecar run`` processes for
the same node on one store, a SQLite file or a PostgreSQL database (the second waits on
the node's leader lock), real SIPp calls with RTP. The active sidecar is killed with
SIGKILL while 50 calls are up (prepaid calls renewing 10 s chunks, postpaid calls): the
standby takes over within a few seconds, adopts every call from the store and Kamailio's
``dlg.list``, and every call gets exactly one CDR, charged once. A thread samples
Kamailio's evapi client count (and which process holds an evapi connection) the whole
time: never two at once.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.charging.model import AccountKind
from sidecar.lab import Every
from sidecar.lab.live import LiveLab
from sidecar.store.accounts import add_account, verify_ledger
from sidecar.store.conn import Db
from sidecar.store.decks import import_deck
from tests.conftest import target_of
from tests.e2e.test_live_sidecar import DECK, DIALLED, account, cdrs, wait_for

pytestmark = pytest.mark.timeout(240)

CALLS_EACH = 25  # prepaid and postpaid: 50 calls up at once
CALL_MS = 25_000
PER_SECOND = Decimal("0.001")  # the deck's 0.06/min on 1/1 for DIALLED
TAKEOVER_BOUND_S = 5.0


@pytest.fixture
def db(store: Db, tmp_path: Path) -> Db:
    """The node's store, on each database (``store`` of tests/conftest.py), with the deck."""
    (tmp_path / "deck.csv").write_text(DECK)
    import_deck(store, "retail", tmp_path / "deck.csv", as_of=datetime(2026, 1, 1, tzinfo=UTC))
    return store


def messages(log: Path) -> list[tuple[float, str]]:
    """(time, message) of each line of a sidecar's JSON log."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
            ts = datetime.strptime(doc["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            out.append((ts.timestamp(), str(doc["msg"])))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def first(log: Path, prefix: str) -> float | None:
    return next((t for t, m in messages(log) if m.startswith(prefix)), None)


class EvapiSampler(Every):
    """Samples, every 20 ms in a thread, how many evapi clients Kamailio counts and which
    of the lab's sidecars hold an evapi connection."""

    interval_s = 0.02

    def __init__(self, lab: LiveLab) -> None:
        super().__init__("evapi-sampler")
        self.lab = lab
        # (monotonic time before the reads, after them, count, connected PIDs)
        self.samples: list[tuple[float, float, int, frozenset[int]]] = []
        self.errors: list[str] = []

    def tick(self) -> None:
        t0 = time.monotonic()
        try:
            count = self.lab.kam.evapi_clients()
            pids = frozenset(self.lab.evapi_connected_pids())
        except Exception as exc:  # reported by the test; sampling goes on
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        self.samples.append((t0, time.monotonic(), count, pids))


def test_kill_9_of_the_active_sidecar_with_50_calls_up_standby_takes_over_charges_once(
        tmp_path: Path, db: Db) -> None:
    account(db, "PRE", "10", chunk_seconds=10)  # chunks renewed before and after takeover
    add_account(db, "POST", "retail", AccountKind.POSTPAID, now_ms=int(time.time() * 1000),
                credit_limit=Decimal("100"))
    with LiveLab(tmp_path / "lab", target_of(db), with_sidecar=False) as lab, \
            EvapiSampler(lab) as sampler:
        active = lab.spawn_sidecar("a")
        lab.wait_connected(active, timeout=20)
        standby = lab.spawn_sidecar("b")
        wait_for(lambda: first(lab.spawned_log("b"), "standby for node") is not None)
        uas = lab.uas("uas.xml", calls=2 * CALLS_EACH, timeout_s=150)
        callers = [lab.uac(account_code=code, dialled=DIALLED, duration_ms=CALL_MS,
                           calls=CALLS_EACH, timeout_s=120,
                           extra=["-r", "10", "-l", str(CALLS_EACH)])
                   for code in ("PRE", "POST")]
        # All 50 answered, their first chunks recorded; a few seconds of renewals.
        wait_for(lambda: db.execute("SELECT COUNT(*) FROM live_calls").fetchone()[0]
                 == 2 * CALLS_EACH, timeout=30)
        time.sleep(3.0)
        assert lab.evapi_connected_pids() == {active}
        assert first(lab.spawned_log("b"), "active for node") is None
        killed_at = time.monotonic()
        killed_wall = time.time()
        lab.kill_sidecar(active, kill=True)
        dead_at = time.monotonic()  # reaped: its connection is closed
        lab.wait_connected(standby, timeout=15)
        takeover_s = time.monotonic() - killed_at
        results = [c.wait() for c in callers]
        ru = uas.wait()
        wait_for(lambda: len(cdrs(db)) >= 2 * CALLS_EACH, timeout=20)
        time.sleep(0.5)  # nothing more lands late
        log_b = lab.spawned_log("b")
        tail = "\n".join(m for _, m in messages(log_b)[-30:]) + lab.kam.log_tail(20)
        assert all(r.calls_ok for r in results), [r.output_tail() for r in results] + [tail]
        assert ru.successful_calls == 2 * CALLS_EACH, ru.output_tail() + tail
    print(f"\ntakeover: kill -9 of the active sidecar -> standby connected to evapi in "
          f"{takeover_s * 1000:.0f} ms")
    phases = {name: first(log_b, prefix) for name, prefix in (
        ("lock", "active for node"), ("store", "store loaded"),
        ("evapi", "evapi connected"), ("reconciled", "reconciled with Kamailio"))}
    print("  standby's log, ms after the kill: " + ", ".join(
        f"{k} {(t - killed_wall) * 1000:.0f}" for k, t in phases.items() if t is not None))
    assert takeover_s < TAKEOVER_BOUND_S, (takeover_s, tail)

    # Never two sidecars on Kamailio's evapi at once; the standby never before the kill.
    assert not sampler.errors, sampler.errors[:5]
    assert len(sampler.samples) > 100
    assert max(count for _, _, count, _ in sampler.samples) == 1
    assert all(len(pids) <= 1 for *_, pids in sampler.samples)
    assert all(pids <= {active} for _, end, _, pids in sampler.samples if end < killed_at)
    assert all(pids <= {standby} for begin, _, _, pids in sampler.samples if begin > dead_at)
    # The standby adopted all 50 calls: none settled as lost.
    reconciled = [m for _, m in messages(log_b) if m.startswith("reconciled with Kamailio")]
    assert len(reconciled) == 1, tail
    assert f"{2 * CALLS_EACH} adopted" in reconciled[0], reconciled
    assert "0 settled as lost" in reconciled[0], reconciled

    # No call was cut, each ran its full length.
    for r in results:
        assert not [m for m in r.received("BYE") if not m.is_response], r.output_tail()
    call_ids = {m.call_id for r in results for m in r.sent("INVITE")}
    assert len(call_ids) == 2 * CALLS_EACH

    # Exactly one CDR per call, each billed for its real duration, charged once.
    rows = cdrs(db)
    assert len(rows) == 2 * CALLS_EACH
    per_call = dict(db.execute("SELECT call_id, COUNT(*) FROM cdrs GROUP BY call_id").fetchall())
    assert set(per_call) == call_ids and set(per_call.values()) == {1}
    for c in rows:
        assert (c["disposition"], c["ended_by"], c["end_reason"]) == (
            "answered", "caller", "bye"), c
        assert CALL_MS - 100 <= int(str(c["duration_ms"])) <= CALL_MS + 1_500, c
        assert Decimal(str(c["charged"])) == PER_SECOND * int(str(c["billed_seconds"])), c
    for code in ("PRE", "POST"):
        charged = sum((Decimal(str(c["charged"])) for c in rows if c["account"] == code),
                      Decimal(0))
        charges = db.execute("SELECT call_ref, amount FROM ledger WHERE account = ? "
                             "AND kind = 'charge'", (code,)).fetchall()
        # One charge row per call (none twice), and they sum to what the CDRs charged.
        assert sorted(ref for ref, _ in charges) == sorted(
            str(c["call_ref"]) for c in rows if c["account"] == code)
        ledger = -sum((Decimal(str(a)) for _, a in charges), Decimal(0))
        assert ledger == charged, (code, ledger, charged)
        balance, held = db.execute("SELECT balance, held FROM accounts WHERE code = ?",
                                   (code,)).fetchone()
        start = Decimal("10") if code == "PRE" else Decimal(0)
        assert Decimal(str(balance)) == start - charged and Decimal(str(held)) == 0
    assert db.execute("SELECT COUNT(*) FROM live_calls").fetchone()[0] == 0
    assert all(not c.problems for c in verify_ledger(db))
