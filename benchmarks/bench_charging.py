"""Charging benchmark: authorize + reserve + charge cycles per second against SQLite with
1,000 calls running at once, and how far after credit runs out the end-call leaves.

    python benchmarks/bench_charging.py [--cycles 20000] [--live 1000] [--cutoffs 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import deque
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sidecar.charging import Action, Charger, EndCall, PlanRates
from sidecar.charging.model import AccountKind
from sidecar.live.timer import CreditTimer, wall_ms
from sidecar.store.accounts import SqliteLedger, add_account
from sidecar.store.db import connect
from sidecar.store.decks import import_deck, load_table

DECK = """destination;code;rate_usd;increment;effective_from
Germany Fixed;4930;0.0095;1/1;2026-01-01
UK Mobile;447;0.0150;6/6;2026-01-01
France;33;0.0100;30/6;2026-01-01
"""
NUMBERS = ["4930123456", "447700900123", "33123456789"]


def setup(tmp: Path) -> tuple[Charger, SqliteLedger]:
    conn = connect(tmp / "bench.db")
    (tmp / "deck.csv").write_text(DECK)
    import_deck(conn, "bench", tmp / "deck.csv", as_of=datetime(2026, 1, 1, tzinfo=UTC))
    table = load_table(conn, "bench")
    ledger = SqliteLedger(conn)
    return Charger(ledger, lambda _p: PlanRates(table, 60)), ledger


def bench_cycles(cycles: int, live: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        charger, ledger = setup(Path(tmp))
        now = wall_ms()
        accounts = [f"acct-{i}" for i in range(100)]
        for a in accounts:
            add_account(ledger.conn, a, "bench", AccountKind.PREPAID, now_ms=now)
            ledger.topup(a, Decimal("100000"), now)
        running: deque[str] = deque()

        def start(i: int) -> None:
            ref = f"call-{i}"
            d = charger.authorize(
                ref, number=NUMBERS[i % 3], account_code=accounts[i % 100], now_ms=now + i
            )
            assert d.allow
            charger.answer(ref, now + i)
            running.append(ref)

        for i in range(live):
            start(i)
        t0 = time.perf_counter()
        for i in range(live, live + cycles):
            start(i)
            charger.end(running.popleft(), now + i + 45_000, ended_by="caller")
        dt = time.perf_counter() - t0
        assert len(charger.sessions) == live
        print(
            f"authorize + reserve + charge: {cycles:,} cycles in {dt:.2f} s = "
            f"{cycles / dt:,.0f} cycles/s with {live:,} calls running "
            f"(target 5,000/s; SQLite WAL, one core)"
        )


async def bench_cutoffs(calls: int) -> None:
    """Each call's account holds credit for 1-3 s: measure when EndCall is handed to the
    edge, against the exact moment the paid time runs out."""
    with tempfile.TemporaryDirectory() as tmp:
        charger, ledger = setup(Path(tmp))
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
            add_account(ledger.conn, code, "bench", AccountKind.PREPAID, now_ms=now)
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
    asyncio.run(bench_cutoffs(args.cutoffs))


if __name__ == "__main__":
    main()
