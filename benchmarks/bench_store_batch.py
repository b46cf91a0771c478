"""Store batch benchmark: CPU per command of ``SqliteLedger.execute`` (one transaction per
batch, as the live sidecar's writer thread applies them), beside the code as it was at
``BASELINE_COMMIT``, in the same run.

    python benchmarks/bench_store_batch.py [--rounds 5] [--calls 6000] [--prefill 20000]

The workload is the live one: every call is one Reserve (its first chunk) and one Settle
(its CDR, releasing the hold and charging the cost), on 100 prepaid accounts, in batches
of 12 commands (300 calls/s with the 20 ms commit delay) and of 500 (a backlog); now and
then another connection tops an account up (as the CLI would), which the store must see
at its next batch. Each variant has its own database (WAL, on disk), prefilled alike, so
the ledger and CDR tables grow alike; the variants take turns, and the figures are the
medians over the rounds of ``time.process_time`` around ``execute`` alone. At the end
the two databases are compared row by row: the stored data must be the same (the
baseline also writes holds as ledger rows, which the comparison leaves out, and a live
call's lease runs from the wall clock, so ``live_calls.lease_ms`` is left out too).

The baseline is read with ``git show BASELINE_COMMIT:sidecar/store/...``; without git,
only the current code is measured. On the shared 2-core development machine the
baseline's medians ranged over runs from 108 to 123 us per command in batches of 12 and
from 80 to 93 in batches of 500 (the run-to-run noise there is about 10%); about 60% of
it is SQLite's own work (the COMMIT and the inserts into the indexed ledger and cdrs).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sidecar.charging.commands import BatchResult, Reserve, Settle, StoreCommand
from sidecar.charging.model import AccountKind, Cdr, Disposition
from sidecar.store.accounts import SqliteLedger, add_account, verify_ledger
from sidecar.store.db import connect
from sidecar.store.decks import import_deck

BASELINE_COMMIT = "d278406c1d59c3387ee0375be74401675ed09acb"
ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = [f"acct-{i:03d}" for i in range(100)]
LIVE = 2000  # calls up at once
T0 = 1_780_000_000_000  # a fixed clock: both variants store the same rows
DECK = """destination;code;rate_usd;increment;effective_from
Germany Fixed;4930;0.0095;1/1;2026-01-01
UK Mobile;447;0.0150;6/6;2026-01-01
France;33;0.0100;30/6;2026-01-01
"""
LINES = [  # destination, prefix, rate, increment, number
    ("Germany Fixed", "4930", Decimal("0.0095"), "1/1", "4930123456"),
    ("UK Mobile", "447", Decimal("0.0150"), "6/6", "447700900123"),
    ("France", "33", Decimal("0.0100"), "30/6", "33123456789"),
]
Execute = Callable[[Sequence[StoreCommand]], BatchResult]


def load_baseline() -> type[Any] | None:
    """``SqliteLedger`` as it was at ``BASELINE_COMMIT`` (its ``batch`` module with it)."""
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{BASELINE_COMMIT}:{path}"], cwd=ROOT,
                              check=True, capture_output=True, text=True).stdout

    try:
        batch_src = show("sidecar/store/batch.py")
        accounts_src = show("sidecar/store/accounts.py")
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"baseline not available ({exc}): measuring the current code only")
        return None
    accounts_src = accounts_src.replace("from .batch import", "from ._baseline_batch import")
    ledger: type[Any] | None = None
    for name, src in (("_baseline_batch", batch_src), ("_baseline_accounts", accounts_src)):
        mod = types.ModuleType(f"sidecar.store.{name}")
        mod.__package__ = "sidecar.store"
        sys.modules[mod.__name__] = mod
        exec(compile(src, f"{BASELINE_COMMIT[:7]}:{name}", "exec"), mod.__dict__)
        ledger = getattr(mod, "SqliteLedger", None)
    return ledger


def prepare(db: Path) -> sqlite3.Connection:
    conn = connect(db)
    deck = db.with_suffix(".csv")
    deck.write_text(DECK)
    import_deck(conn, "bench", deck, as_of=datetime(2026, 1, 1, tzinfo=UTC))
    ledger = SqliteLedger(conn)
    for i, a in enumerate(ACCOUNTS):
        add_account(conn, a, "bench", AccountKind.PREPAID, now_ms=T0, name=f"Account {i}",
                    low_balance=Decimal("10") if i % 2 else None)
        ledger.topup(a, Decimal("10000000"), T0, note="opening balance")
    return conn


class Workload:
    """Calls numbered from 0, each reserved once and settled later."""

    def __init__(self) -> None:
        self.seq = 0
        self.next_call = 0
        self.open: list[int] = []

    def _fit(self, avail: Decimal) -> tuple[Decimal, int]:
        return Decimal("0E-8"), 0

    def reserve(self, i: int, now: int) -> Reserve:
        dest, prefix, rate, inc, number = LINES[i % 3]
        self.seq += 1
        amount = (rate * 60).quantize(Decimal("1E-8"))
        live: dict[str, object] = {"number": number + str(i % 1000), "destination": dest,
                                   "prefix": prefix, "rate": format(rate, "f"),
                                   "increment": inc, "answered_ms": now - 900}
        return Reserve(self.seq, ACCOUNTS[i % 100], f"call-{i}", amount, 60, 0, self._fit,
                       live, now)

    def settle(self, i: int, now: int) -> Settle:
        dest, prefix, rate, inc, number = LINES[i % 3]
        self.seq += 1
        secs = 20 + i % 40
        usage = (rate * secs / 60).quantize(Decimal("1E-8"))
        cdr = Cdr(f"call-{i}", f"{i:08x}@10.0.0.1", Disposition.ANSWERED,
                  account=ACCOUNTS[i % 100], plan="bench", caller=f"user{i % 100}",
                  callee=number, destination=dest, prefix=prefix, rate=rate, increment=inc,
                  currency="USD", offered_ms=now - 30_000, ringing_ms=now - 29_000,
                  answered_ms=now - 25_000, billable_ms=now - 24_900, media_ms=now - 24_900,
                  ended_ms=now, duration_ms=secs * 1000 + 123, billed_seconds=secs,
                  usage=usage, cost=usage, sip_code=200, ended_by="caller",
                  end_reason="bye", route="carrier-a")
        return Settle(self.seq, cdr, now)

    def batches(self, size: int, count: int, now: int) -> list[list[StoreCommand]]:
        """``count`` batches of ``size``: once ``LIVE`` calls are up, half of each batch
        settles the oldest calls and half reserves new ones."""
        out: list[list[StoreCommand]] = []
        for _ in range(count):
            now += 20
            n = min(size // 2, max(0, len(self.open) - LIVE))
            settle, self.open = self.open[:n], self.open[n:]
            cmds: list[StoreCommand] = [self.settle(i, now) for i in settle]
            while len(cmds) < size:
                cmds.append(self.reserve(self.next_call, now))
                self.open.append(self.next_call)
                self.next_call += 1
            out.append(cmds)
        return out


class Variant:
    def __init__(self, name: str, ledger_cls: type[Any], db: Path) -> None:
        self.name = name
        self.conn = prepare(db)
        self.ledger = ledger_cls(self.conn)
        self.work = Workload()
        self.now = T0 + 1000
        self.figures: dict[int, list[float]] = {}
        # Another process (the CLI) tops accounts up now and then.
        self.other = SqliteLedger(connect(db))
        self.batches_run = 0

    def run(self, size: int, count: int, record: bool = True) -> None:
        batches = self.work.batches(size, count, self.now)
        self.now += 20 * count
        execute: Execute = self.ledger.execute
        cpu = 0.0
        for cmds in batches:
            t = time.process_time()
            res = execute(cmds)
            cpu += time.process_time() - t
            if res.error or not all(o.ok for o in res.outcomes):
                raise SystemExit(f"{self.name}: batch failed: {res.error}")
            self.batches_run += 1
            if self.batches_run % 97 == 0:
                acct = cmds[0].cdr.account if isinstance(cmds[0], Settle) else cmds[0].account
                self.other.topup(str(acct), Decimal("1.5"), self.now, note="cli")
        if record:
            n = sum(len(b) for b in batches)
            self.figures.setdefault(size, []).append(cpu / n * 1e6)


def dump(conn: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    tables = ("accounts", "cdrs", "applied_keys")
    out = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}
    # A live call's lease runs from the wall clock when its batch ran (and a baseline
    # older than leases writes none): every other column is compared.
    out["live_calls"] = conn.execute(
        "SELECT call_ref, account, number, destination, prefix, rate, increment, "
        "answered_ms, paid_seconds, reserved, updated_ms, node FROM live_calls "
        "ORDER BY 1").fetchall()
    # The ledger's money rows, in order. Holds are no ledger rows any more (live_calls
    # records them): the reserve/release rows an older baseline writes are left out.
    out["ledger"] = conn.execute(
        "SELECT ts_ms, account, kind, amount, call_ref, note FROM ledger "
        "WHERE kind NOT IN ('reserve', 'release') ORDER BY id").fetchall()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=6000, help="calls per batch size per round")
    ap.add_argument("--prefill", type=int, default=20000, help="calls stored before measuring")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        variants = [Variant("current", SqliteLedger, Path(tmp) / "current.db")]
        base = load_baseline()
        if base is not None:
            variants.insert(0, Variant("baseline", base, Path(tmp) / "baseline.db"))
        for v in variants:
            v.run(500, args.prefill * 2 // 500, record=False)
        sizes = (12, 500)
        for r in range(args.rounds):
            for size in sizes:
                for v in variants if r % 2 == 0 else variants[::-1]:
                    v.run(size, max(1, args.calls * 2 // size))
        print(f"{args.rounds} rounds, {args.calls} calls (Reserve + Settle) per batch size "
              f"and round, {args.prefill} calls stored before; us CPU per command (median)")
        print(f"{'batch':>6} " + " ".join(f"{v.name:>10}" for v in variants)
              + ("   change" if len(variants) == 2 else ""))
        for size in sizes:
            meds = [statistics.median(v.figures[size]) for v in variants]
            line = f"{size:>6} " + " ".join(f"{m:>10.1f}" for m in meds)
            if len(meds) == 2:
                line += f"   {(meds[1] - meds[0]) / meds[0] * 100:+.0f}%"
            print(line)
            for v in variants:
                print(f"{'':>6}   {v.name}: " + " ".join(f"{x:.1f}" for x in v.figures[size]))
        for v in variants:
            bad = [c for c in verify_ledger(v.conn) if c.problems]
            print(f"ledger verify ({v.name}): {'ok' if not bad else bad[:3]}")
        if len(variants) == 2:
            same = dump(variants[0].conn) == dump(variants[1].conn)
            print(f"stored data identical: {'yes' if same else 'NO'}")
            if not same:
                raise SystemExit(1)
        for v in variants:
            v.conn.close()
            v.other.conn.close()


if __name__ == "__main__":
    main()
