"""Charging benchmark: authorize + reserve + settle cycles per second against SQLite with
1,000 calls running at once, and how far after credit runs out the end-call leaves.

    python benchmarks/bench_charging.py [--cycles 20000] [--live 1000] [--cutoffs 300]

Two paths, same core, same work, in the same run:

- baseline: each store command in its own transaction, waited for (the synchronous
  store: ``Charger(SqliteLedger(conn), plans)``);
- live: the core decides from memory and a writer thread commits what has queued up in
  one transaction (``StoreWriter``, as ``sidecar run`` does); the figure counts until the
  last command is committed and its outcome is back in the core.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sidecar.charging import Action, Charger, EndCall, PlanRates
from sidecar.charging.book import AccountBook
from sidecar.charging.model import AccountKind
from sidecar.live.timer import CreditTimer, wall_ms
from sidecar.store.accounts import SqliteLedger, add_account, verify_ledger
from sidecar.store.db import connect
from sidecar.store.decks import PlanLoader, import_deck, load_table
from sidecar.store.writer import Snapshot, StoreWriter, WriterEvent

DECK = """destination;code;rate_usd;increment;effective_from
Germany Fixed;4930;0.0095;1/1;2026-01-01
UK Mobile;447;0.0150;6/6;2026-01-01
France;33;0.0100;30/6;2026-01-01
"""
NUMBERS = ["4930123456", "447700900123", "33123456789"]
ACCOUNTS = [f"acct-{i}" for i in range(100)]


def prepare(db: Path) -> None:
    conn = connect(db)
    deck = db.with_suffix(".csv")
    deck.write_text(DECK)
    import_deck(conn, "bench", deck, as_of=datetime(2026, 1, 1, tzinfo=UTC))
    now = wall_ms()
    ledger = SqliteLedger(conn)
    for a in ACCOUNTS:
        add_account(conn, a, "bench", AccountKind.PREPAID, now_ms=now)
        ledger.topup(a, Decimal("100000"), now)
    conn.close()


def run_cycles(charger: Charger, cycles: int, live: int, pump: Callable[[], None]) -> float:
    """Start ``live`` calls, then ``cycles`` times: one new call authorized and answered
    (first chunk reserved), the oldest ended (settled). Returns the seconds taken."""
    now = wall_ms()
    running: deque[str] = deque()

    def start(i: int) -> None:
        ref = f"call-{i}"
        d = charger.authorize(ref, number=NUMBERS[i % 3], account_code=ACCOUNTS[i % 100],
                              now_ms=now + i)
        assert d.allow, d
        charger.answer(ref, now + i)
        running.append(ref)

    for i in range(live):
        start(i)
    pump()
    t0 = time.perf_counter()
    for i in range(live, live + cycles):
        start(i)
        charger.end(running.popleft(), now + i + 45_000, ended_by="caller")
        if i % 64 == 0:
            pump()
    pump()
    dt = time.perf_counter() - t0
    assert len(charger.sessions) == live
    return dt


def baseline(db: Path, cycles: int, live: int) -> float:
    conn = connect(db)
    table = load_table(conn, "bench")
    charger = Charger(SqliteLedger(conn), lambda _p: PlanRates(table, 60))
    dt = run_cycles(charger, cycles, live, lambda: None)
    assert all(not c.problems for c in verify_ledger(conn))
    conn.close()
    return dt


def writer_path(db: Path, cycles: int, live: int) -> tuple[float, StoreWriter]:
    events: queue.SimpleQueue[WriterEvent] = queue.SimpleQueue()
    book = AccountBook()
    plans: dict[str, PlanRates] = {}
    writer = StoreWriter(db, db.with_suffix(".journal"), PlanLoader(), events.put)
    charger = Charger(writer, lambda name: plans[name], book=book)
    now = wall_ms()

    def handle(ev: WriterEvent) -> None:
        if isinstance(ev, Snapshot):
            if ev.complete:
                book.load(ev.accounts, ev.sip)
            plans.update(ev.plans)
        else:
            charger.on_results(ev, now)

    def pump() -> None:  # what the event loop does with the writer's answers
        while True:
            try:
                handle(events.get_nowait())
            except queue.Empty:
                return

    writer.start()
    handle(events.get(timeout=30))  # the first snapshot
    t0 = time.perf_counter()
    run_cycles(charger, cycles, live, pump)
    while charger.inflight():  # until every command is committed and answered
        handle(events.get(timeout=30))
    dt = time.perf_counter() - t0
    writer.stop()
    conn = connect(db)
    assert all(not c.problems for c in verify_ledger(conn))
    conn.close()
    return dt, writer


def bench_cycles(cycles: int, live: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "baseline.db", Path(tmp) / "writer.db"
        prepare(a)
        prepare(b)
        t_base = baseline(a, cycles, live)
        t_new, writer = writer_path(b, cycles, live)
    base_rate, new_rate = cycles / t_base, cycles / t_new
    print(f"authorize + reserve + settle, {cycles:,} cycles, {live:,} calls running "
          f"(SQLite WAL):")
    print(f"  baseline, one transaction per step:   {base_rate:>9,.0f} cycles/s")
    print(f"  writer thread, group commit:          {new_rate:>9,.0f} cycles/s "
          f"({writer.commands / max(writer.batches, 1):.0f} commands per transaction)")
    print(f"  ratio {new_rate / base_rate:.1f}x (target: >= 20,000/s and >= 4x)")


async def bench_cutoffs(calls: int) -> None:
    """Each call's account holds credit for 1-3 s: measure when EndCall is handed to the
    edge, against the exact moment the paid time runs out."""
    with tempfile.TemporaryDirectory() as tmp:
        conn = connect(Path(tmp) / "bench.db")
        (Path(tmp) / "deck.csv").write_text(DECK)
        import_deck(conn, "bench", Path(tmp) / "deck.csv",
                    as_of=datetime(2026, 1, 1, tzinfo=UTC))
        table = load_table(conn, "bench")
        ledger = SqliteLedger(conn)
        charger = Charger(ledger, lambda _p: PlanRates(table, 60))
        lateness: list[float] = []
        due: dict[str, int] = {}

        def on_actions(actions: list[Action]) -> None:
            t = wall_ms()
            for a in actions:
                if isinstance(a, EndCall):
                    lateness.append(t - due[a.call_ref])
                    charger.end(a.call_ref, t, ended_by="proxy")

        timer = CreditTimer(charger, on_actions)
        timer.start()
        now = wall_ms()
        for i in range(calls):
            code = f"pre-{i}"
            add_account(conn, code, "bench", AccountKind.PREPAID, now_ms=now)
            # 0.0095/min Germany: credit for 1..3 s
            ledger.topup(code, Decimal("0.0095") * (60 + i % 120) / 60 / 60, now)
        for i in range(calls):
            ref = f"c{i}"
            t = wall_ms()
            charger.authorize(ref, number=NUMBERS[0], account_code=f"pre-{i}", now_ms=t)
            charger.answer(ref, t)
            s = charger.sessions[ref]
            due[ref] = s.paid_until_ms or t
            timer.poke()
            await asyncio.sleep(0.002)
        while charger.sessions:
            await asyncio.sleep(0.05)
        await timer.stop()
        lateness.sort()
        p50 = statistics.median(lateness)
        p99 = lateness[int(len(lateness) * 0.99) - 1]
        print(
            f"credit run-out -> end-call handed to Kamailio edge: {len(lateness)} calls, "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {lateness[-1]:.1f} ms "
            f"(target < 100 ms; cnxcc polls once a second)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cycles", type=int, default=20_000)
    ap.add_argument("--live", type=int, default=1_000)
    ap.add_argument("--cutoffs", type=int, default=300)
    args = ap.parse_args()
    bench_cycles(args.cycles, args.live)
    if args.cutoffs:
        asyncio.run(bench_cutoffs(args.cutoffs))


if __name__ == "__main__":
    main()
