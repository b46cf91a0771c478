"""Charging benchmark: authorize + reserve + settle cycles per second with 1,000 calls
running at once, on SQLite and on PostgreSQL with several sidecar processes, and how far
after credit runs out the end-call leaves.

    python benchmarks/bench_charging.py [--cycles 20000] [--live 1000] [--cutoffs 300]
                                        [--nodes-seconds 10]

Two paths, same core, same work, in the same run:

- baseline: each store command in its own transaction, waited for (the synchronous
  store: ``Charger(SqliteLedger(conn), plans)``);
- live: the core decides from memory and a writer thread commits what has queued up in
  one transaction (``StoreWriter``, as ``sidecar run`` does); the figure counts until the
  last command is committed and its outcome is back in the core.

Then several nodes (issue 11): each node is a process of its own (``spawn``) holding a
Charger + StoreWriter as ``sidecar run`` does (its own node name and journal), with
``--live`` calls running; the processes wait on one barrier and then charge cycles for the
same ``--nodes-seconds`` window; a process's figure counts until its last command is
committed and answered. Set-ups, in one run: SQLite with one process (the one-node
baseline) and two processes sharing one file; PostgreSQL (a fresh database on the tests'
server, ``$SIDECAR_TEST_PG``, dropped afterwards) with one process, two processes each
charging accounts of its own, and two processes charging the same 4 accounts (their
batches wait for each other's row locks). Printed per set-up: aggregate and per-process
cycles/s, the writers' commands per transaction and transactions per second, and the
cores used by the sidecar processes, by PostgreSQL's server processes and by the whole
machine; and whether every call has its CDR and every balance equals its ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import queue
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sidecar.charging import Action, Charger, EndCall, PlanRates
from sidecar.charging.book import AccountBook
from sidecar.charging.model import AccountKind
from sidecar.live.timer import CreditTimer, wall_ms
from sidecar.rating.bundles import Bundle
from sidecar.store.accounts import (
    SqliteLedger,
    SqlLedger,
    add_account,
    set_parent,
    verify_ledger,
)
from sidecar.store.bundles import add_bundle
from sidecar.store.conn import is_url, open_db
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


def prepare(target: str | Path, accounts: Sequence[str] = ACCOUNTS) -> None:
    """The plan and the prepaid ``accounts`` (credit for any run) on a SQLite path or a
    PostgreSQL URL."""
    conn = open_db(target)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            deck = Path(tmp) / "deck.csv"
            deck.write_text(DECK)
            import_deck(conn, "bench", deck, as_of=datetime(2026, 1, 1, tzinfo=UTC))
        now = wall_ms()
        ledger: SqlLedger
        if isinstance(conn, sqlite3.Connection):
            ledger = SqliteLedger(conn)
        else:
            from sidecar.store.pg import PgLedger

            ledger = PgLedger(conn.raw)
        for a in accounts:
            add_account(conn, a, "bench", AccountKind.PREPAID, now_ms=now)
            ledger.topup(a, Decimal("100000"), now)
    finally:
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


class Core:
    """The charging core fed by a real StoreWriter thread, as ``sidecar run`` wires them:
    ``pump`` is what the event loop does with the writer's answers."""

    def __init__(self, target: str | Path, journal: str | Path, node: str = "") -> None:
        # As ``sidecar run``: the writer thread gets the interpreter lock back within 1 ms
        # (not 5) of wanting it, so its answers reach the core while it works.
        sys.setswitchinterval(0.001)
        self.events: queue.SimpleQueue[WriterEvent] = queue.SimpleQueue()
        self.book = AccountBook()
        self.plans: dict[str, PlanRates] = {}
        self.writer = StoreWriter(target, journal, PlanLoader(), self.events.put, node=node)
        self.charger = Charger(self.writer, lambda name: self.plans[name], book=self.book)
        self.now = wall_ms()

    def handle(self, ev: WriterEvent) -> None:
        if isinstance(ev, Snapshot):
            if ev.complete:
                self.book.load(ev.accounts, ev.sip)
            self.plans.update(ev.plans)
            if ev.bundles is not None or ev.bundle_usage is not None:
                self.charger.bundles.load(ev.bundles, ev.bundle_usage)
        else:
            self.charger.on_results(ev, self.now)

    def pump(self) -> None:
        while True:
            try:
                self.handle(self.events.get_nowait())
            except queue.Empty:
                return


def writer_path(db: Path, cycles: int, live: int) -> tuple[float, StoreWriter]:
    core = Core(db, db.with_suffix(".journal"))
    events, writer, charger = core.events, core.writer, core.charger
    handle, pump = core.handle, core.pump

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


# Every limit and detector a live offer meets, set high enough that every call passes.
FULL_LIMITS = {
    "concurrent_calls": 100_000, "calls_per_second": 100_000, "calls_per_minute": 1_000_000,
    "max_rate": "5", "max_connection_fee": "1", "deny": "882,881,979",
    "allow": "4930", "high_cost_rate": "2", "same_number_per_hour": 1_000_000,
    "max_call_cost": "50", "new_country_rate": "1", "distinct_callees": 1_000_000,
    "distinct_countries": 1_000, "high_cost_calls": 1_000, "spend_per_minute": "1000000",
    "spend_per_hour": "1000000", "short_calls": 1_000_000,
}


def bench_limits(offers: int, live: int, rounds: int = 5) -> None:
    """What usage limits and fraud detectors add at the INVITE: the same offers (each
    one authorized and answered, and the oldest call ended, as in the cycles above)
    with no limits and with every limit and detector on (``FULL_LIMITS``), each on its
    own store and writer; the two take turns in ``rounds`` rounds and the figure is the
    median of the rounds' CPU per offer, timed around ``authorize`` alone."""
    from sidecar.charging.limits import Limits

    with tempfile.TemporaryDirectory() as tmp:
        setups: dict[str, tuple[Core, deque[str]]] = {}
        for label, limits in (("no limits", Limits()),
                              ("every limit and detector", Limits.parse(FULL_LIMITS))):
            db = Path(tmp) / f"limits-{len(setups)}.db"
            prepare(db)
            core = Core(db, db.with_suffix(".journal"))
            core.writer.start()
            core.handle(core.events.get(timeout=30))
            for name, rates in list(core.plans.items()):
                core.plans[name] = PlanRates(rates.table, rates.chunk_seconds, limits)
            setups[label] = (core, deque())
        figures: dict[str, list[float]] = {label: [] for label in setups}
        now = wall_ms()
        per_round = max(1, offers // rounds)
        i = 0
        for r in range(rounds + 1):
            for label, (core, running) in setups.items():
                charger = core.charger
                spent = 0.0
                n = live if r == 0 else per_round  # round 0: the live calls come up
                for k in range(i, i + n):
                    ref = f"call-{k}"
                    t = time.thread_time()
                    d = charger.authorize(ref, number=NUMBERS[k % 3] + str(k % 997),
                                          account_code=ACCOUNTS[k % 100], now_ms=now + k)
                    spent += time.thread_time() - t
                    assert d.allow, d
                    charger.take_actions()
                    charger.answer(ref, now + k)
                    running.append(ref)
                    if len(running) > live:
                        charger.end(running.popleft(), now + k + 45_000, ended_by="caller")
                    if k % 64 == 0:
                        core.pump()
                if r:
                    figures[label].append(spent / n * 1e6)
            i += live if r == 0 else per_round
        for core, _ in setups.values():
            while core.charger.inflight():
                core.handle(core.events.get(timeout=30))
            core.writer.stop()
    base = statistics.median(figures["no limits"])
    full = statistics.median(figures["every limit and detector"])
    print(f"authorize, {per_round * rounds:,} offers in {rounds} rounds, {live:,} calls "
          "running, CPU per offer (median of the rounds):")
    print(f"  no limits:                 {base:7.1f} us")
    print(f"  every limit and detector:  {full:7.1f} us")
    print(f"  added by limits and fraud detectors: {full - base:.1f} us per offer "
          f"(target < 20 us)")


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


# ------------------------------------------------------------------ several nodes (issue 11)
SHARED = [f"shared-{i}" for i in range(4)]  # the accounts both nodes charge in "shared"
#: Commands a node lets wait for its store before its loop waits too: without a bound the
#: core (faster than any store) would queue work the window never sees committed.
MAX_INFLIGHT = 8_000
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class NodeSpec:
    """One node of a several-node run: what its process needs (it is pickled)."""

    target: str  # a SQLite path or a PostgreSQL URL, shared by the nodes
    node: str
    journal: str
    accounts: tuple[str, ...]
    live: int
    seconds: float


@dataclass(frozen=True)
class NodeFigures:
    """What one node did in the window (``t0``/``t1``: ``time.monotonic()``, one clock
    for every process of the machine)."""

    node: str
    cycles: int  # calls authorized, answered and ended (settled)
    refused: int  # offers the core refused (its store had failed)
    t0: float
    t1: float
    batches: int
    commands: int
    failed_batches: int  # transactions that could not commit (their money: journaled)
    journaled: int
    cpu_s: float  # the whole process (core + writer thread)
    writer_cpu_s: float  # the writer thread applying batches

    @property
    def rate(self) -> float:
        return self.cycles / (self.t1 - self.t0)


def run_node(spec: NodeSpec, barrier: Any, done: Any,
             report: Callable[[NodeFigures], None], log_file: str) -> None:
    """A sidecar's charging path in this process: Charger + StoreWriter on the shared
    store, ``spec.live`` calls started; then, from the barrier, one new call authorized
    and answered and the oldest one ended, again and again for ``spec.seconds``; counted
    until every command is committed and its outcome is back in the core. Its figures go
    to ``report``; the store is closed once every node has reported (``done``), so the
    server processes serving it are there until the parent has read their CPU time. The
    sidecar's log goes to ``log_file``."""
    logging.basicConfig(filename=log_file, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target: str | Path = spec.target if is_url(spec.target) else Path(spec.target)
    core = Core(target, spec.journal, node=spec.node)
    events, writer, charger, now = core.events, core.writer, core.charger, core.now
    handle, pump = core.handle, core.pump
    accounts = spec.accounts
    running: deque[str] = deque()
    refused = 0

    def wait_for_store(limit: int) -> None:
        while charger.inflight() > limit:
            handle(events.get(timeout=120))

    def start(i: int) -> bool:
        ref = f"{spec.node}-call-{i}"
        d = charger.authorize(ref, number=NUMBERS[i % 3], account_code=accounts[i % len(accounts)],
                              now_ms=now + i)
        if not d.allow:
            assert d.code == 503, d  # the store failed: new calls are refused meanwhile
            return False
        charger.answer(ref, now + i)
        running.append(ref)
        return True

    writer.start()
    writer.started.wait(120)
    if writer.start_error is not None:
        raise writer.start_error
    handle(events.get(timeout=10))  # the first snapshot
    try:
        for i in range(spec.live):
            if not start(i):
                raise RuntimeError(f"call {i} refused before the window")
        wait_for_store(0)
        b0, c0, w0 = writer.batches, writer.commands, writer.cpu_s
        f0, j0 = writer.failed_batches, writer.journaled
        barrier.wait(300)
        cpu0 = time.process_time()
        t0 = time.monotonic()
        deadline = t0 + spec.seconds
        i = spec.live
        while True:
            if not start(i):
                refused += 1
            if len(running) > spec.live:
                charger.end(running.popleft(), now + i + 45_000, ended_by="caller")
            i += 1
            if i % 64 == 0:
                pump()
                wait_for_store(MAX_INFLIGHT)
                if time.monotonic() >= deadline:
                    break
        wait_for_store(0)
        t1 = time.monotonic()
        report(NodeFigures(spec.node, i - spec.live - refused, refused, t0, t1,
                           writer.batches - b0, writer.commands - c0,
                           writer.failed_batches - f0, writer.journaled - j0,
                           time.process_time() - cpu0, writer.cpu_s - w0))
        done.wait(120)
    finally:
        writer.stop()


def node_process(spec: NodeSpec, barrier: Any, done: Any, out: Any, log_file: str) -> None:
    """The target of a node's process: its figures, or the traceback of what failed."""
    try:
        run_node(spec, barrier, done, lambda fig: out.put(("ok", fig)), log_file)
    except BaseException:
        out.put(("error", f"node {spec.node}:\n{traceback.format_exc()}"))
        for b in (barrier, done):  # the others (and the parent) stop waiting
            with contextlib.suppress(Exception):
                b.abort()


def _cpu_ticks(pid: int) -> int:
    """User+system CPU ticks of a process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])


def postgres_pids(server: str, dbname: str) -> list[int]:
    """The server processes serving database ``dbname`` and the server's own background
    processes (WAL writer, checkpointer, ...), from ``pg_stat_activity``."""
    import psycopg

    with psycopg.connect(server, autocommit=True) as admin:
        rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s OR "
                             "(datname IS NULL AND backend_type <> 'client backend')",
                             (dbname,)).fetchall()
    return [int(r[0]) for r in rows]


def machine_busy_s() -> float:
    """CPU seconds the machine has been busy (all cores; /proc/stat less idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICKS


@dataclass(frozen=True)
class NodesRun:
    """One set-up: its nodes' figures and what the machine did meanwhile."""

    label: str
    nodes: list[NodeFigures]
    cdrs: int
    ledger_ok: bool
    postgres_cores: float | None
    machine_cores: float
    server_restarted: bool = False  # PostgreSQL restarted meanwhile: the figures are void

    @property
    def cycles(self) -> int:
        return sum(n.cycles for n in self.nodes)

    @property
    def window_s(self) -> float:
        return max(n.t1 for n in self.nodes) - min(n.t0 for n in self.nodes)

    @property
    def rate(self) -> float:
        return self.cycles / self.window_s

    @property
    def sidecar_cores(self) -> float:
        return sum(n.cpu_s for n in self.nodes) / self.window_s


@contextlib.contextmanager
def pg_database() -> Iterator[tuple[str, str]]:
    """A fresh database on the PostgreSQL server the tests use (``$SIDECAR_TEST_PG``, by
    default 127.0.0.1:5432): its ``postgresql://`` URL and the server's maintenance URL;
    dropped at the end whatever happened (``tests/store/pgdb.py``)."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # run as a script: the repository root is not on the path
        sys.path.insert(0, root)
    from tests.store.pgdb import SERVER_URL, as_url, fresh_database

    with fresh_database() as conninfo:
        yield as_url(conninfo), SERVER_URL


def pg_started(url: str) -> str:
    """When the PostgreSQL server was (re)started: a restart during a run (other work on
    a shared machine) voids its figures."""
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()
    return str(row[0]) if row else ""


def run_nodes(label: str, target: str, specs: Sequence[NodeSpec], server: str,
              logs: Path) -> NodesRun:
    """Start one process per node (spawn), release them together, gather their figures,
    then check the store: one CDR per offer and every balance equal to its ledger."""
    ctx = multiprocessing.get_context("spawn")
    barrier, done = ctx.Barrier(len(specs) + 1), ctx.Barrier(len(specs) + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=node_process, name=s.node,
                         args=(s, barrier, done, out, str(logs / f"{s.node}.log")))
             for s in specs]
    pg = is_url(target)
    started = pg_started(server) if pg else ""
    for p in procs:
        p.start()
    try:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(300)  # broken: a node failed, its traceback is in ``out``
        pids = postgres_pids(server, urlsplit(target).path.lstrip("/")) if pg else []
        m0, pg0 = machine_busy_s(), sum(map(_cpu_ticks, pids))
        t0 = time.monotonic()
        got = [out.get(timeout=max(s.seconds for s in specs) + 300) for _ in specs]
        dt = time.monotonic() - t0
        m1, pg1 = machine_busy_s(), sum(map(_cpu_ticks, pids))
        with contextlib.suppress(threading.BrokenBarrierError):
            done.wait(60)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
                p.join()
    errors = [str(msg) for kind, msg in got if kind == "error"]
    if errors:
        raise RuntimeError("\n".join(errors))
    nodes = sorted((fig for _kind, fig in got if isinstance(fig, NodeFigures)),
                   key=lambda f: f.node)
    conn = open_db(target)
    try:
        cdrs = int(conn.execute("SELECT COUNT(*) FROM cdrs").fetchone()[0])
        ok = all(not c.problems for c in verify_ledger(conn))
    finally:
        conn.close()
    restarted = pg and pg_started(server) != started
    return NodesRun(label, nodes, cdrs, ok, (pg1 - pg0) / TICKS / dt if pg else None,
                    (m1 - m0) / dt, restarted)


def node_specs(target: str, tmp: Path, names: Sequence[str], live: int, seconds: float,
               shared: bool) -> list[NodeSpec]:
    """Each node its own journal; its own 100 accounts, or the 4 shared ones."""
    return [NodeSpec(target, name, str(tmp / f"{name}.journal"),
                     tuple(SHARED if shared else [f"{name}-acct-{i}" for i in range(100)]),
                     live, seconds) for name in names]


SETUPS: list[tuple[str, str, int, bool]] = [  # label, store, processes, shared accounts
    ("SQLite, 1 process (baseline: one node)", "sqlite", 1, False),
    ("SQLite, 2 processes, one file", "sqlite", 2, False),
    ("PostgreSQL, 1 process", "pg", 1, False),
    ("PostgreSQL, 2 processes, own accounts", "pg", 2, False),
    ("PostgreSQL, 2 processes, 4 shared accounts", "pg", 2, True),
]


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_nodes(live: int, seconds: float) -> None:
    print(f"\nseveral nodes: authorize + reserve + settle for {seconds:g} s, {live:,} calls "
          f"running in each process; each process one node (Charger + StoreWriter of its "
          f"own, as `sidecar run --node NAME`), all released at once (load average before: "
          f"{loadavg()})")
    headers = (f"  {'set-up':<43} {'cycles/s':>8}  {'per process':<15} {'cmds/txn':>8} "
               f"{'txn/s':>5} {'writer us/cmd':>13}  {'cores: sidecars':>15} "
               f"{'PostgreSQL':>10} {'other':>5} {'machine':>7}")
    print(headers)
    print("  " + "-" * (len(headers) - 2))
    runs: list[NodesRun] = []
    for label, kind, count, shared in SETUPS:
        names = [f"n{k + 1}" for k in range(count)]
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            server = ""
            if kind == "pg":
                try:
                    target, server = stack.enter_context(pg_database())
                except Exception as exc:  # no server: the SQLite figures still stand
                    print(f"  {label}: skipped, no PostgreSQL server ({exc})")
                    continue
            else:
                target = str(Path(tmp) / "nodes.db")
            codes = SHARED if shared else [f"{n}-acct-{i}" for n in names for i in range(100)]
            prepare(target, codes)
            run = run_nodes(label, target, node_specs(target, Path(tmp), names, live,
                                                      seconds, shared), server, Path(tmp))
            problems = [line for n in names
                        for line in (Path(tmp) / f"{n}.log").read_text().splitlines()
                        if " ERROR " in line or " CRITICAL " in line]
        runs.append(run)
        per = " + ".join(f"{n.rate:,.0f}" for n in run.nodes) if count > 1 else ""
        txn = sum(n.batches for n in run.nodes)
        cmds = sum(n.commands for n in run.nodes)
        pg = None if run.server_restarted else run.postgres_cores
        other = run.machine_cores - run.sidecar_cores - (pg or 0.0)
        writer_us = sum(n.writer_cpu_s for n in run.nodes) * 1e6 / max(cmds, 1)
        print(f"  {label:<43} {run.rate:>8,.0f}  {per:<15} {cmds / max(txn, 1):>8,.0f} "
              f"{txn / run.window_s:>5,.1f} {writer_us:>13,.0f}  {run.sidecar_cores:>15.2f} "
              f"{'-' if pg is None else f'{pg:.2f}':>10} {max(other, 0.0):>5.2f} "
              f"{run.machine_cores:>7.2f}", flush=True)
        refused = sum(n.refused for n in run.nodes)
        failed = sum(n.failed_batches for n in run.nodes)
        if refused or failed:
            print(f"    {failed} transactions failed ({sum(n.journaled for n in run.nodes):,} "
                  f"settlements journaled, applied later), {refused:,} offers refused (503) "
                  f"meanwhile; first error: {problems[0] if problems else '-'}")
        if run.server_restarted:
            print("    DISTURBED: the PostgreSQL server was restarted during the run (by "
                  "other work on this machine): these figures do not stand")
        if run.cdrs != run.cycles + refused or not run.ledger_ok:
            print(f"    PROBLEM: {run.cdrs:,} CDRs for {run.cycles + refused:,} offers; "
                  f"balances {'=' if run.ledger_ok else 'NOT equal to'} their ledgers")
    print("  cycles/s: all processes' cycles over the window from the first start to the "
          "last commit; per process: each one's over its own;\n"
          "  cmds/txn, txn/s: the writers' commands per transaction, transactions per "
          "second (all processes); writer us/cmd: the writer threads' CPU per command;\n"
          "  cores used over the window: the sidecar processes, PostgreSQL's server "
          "processes (this database's and the server's own), other work, the whole "
          f"machine ({os.cpu_count()} cores)")
    base = next((r for r in runs if r.label.startswith("SQLite, 1")), None)
    pg2 = next((r for r in runs if r.label == "PostgreSQL, 2 processes, own accounts"), None)
    if pg2 is not None:
        vs = f"; {pg2.rate / base.rate:.2f}x SQLite's one process" if base else ""
        print(f"PostgreSQL with 2 processes: {pg2.rate:,.0f} cycles/s in aggregate (target "
              f">= 5,000/s: {'ok' if pg2.rate >= 5000 else 'MISSED'}){vs}")
    print(f"load average after: {loadavg()}")


TIER_PLANS = ("bench", "tier1", "tier2", "tier3")  # the customers' plan, then each reseller's


def prepare_tiers(target: str | Path) -> None:
    """Issue 14's set-up: the same 100 customer accounts as :func:`prepare`, below a
    4-tier chain (three resellers, each on a plan of its own, the customers on 'bench'),
    every customer with a free-minute bundle for Germany Fixed (a third of the calls draw
    on it)."""
    prepare(target)
    conn = open_db(target)
    try:
        now = wall_ms()
        ledger = SqliteLedger(conn) if isinstance(conn, sqlite3.Connection) else None
        assert ledger is not None, "the tiers set-up runs on SQLite"
        parent = None
        with tempfile.TemporaryDirectory() as tmp:
            for level, plan in enumerate(TIER_PLANS[:0:-1], 1):  # tier3 (top) first
                deck = Path(tmp) / f"{plan}.csv"
                deck.write_text(DECK.replace("0.0", f"0.00{level}", 1))
                import_deck(conn, plan, deck, as_of=datetime(2026, 1, 1, tzinfo=UTC))
                code = f"R{4 - level}"
                add_account(conn, code, plan, AccountKind.PREPAID, now_ms=now, parent=parent,
                            reseller=True)
                ledger.topup(code, Decimal("10000000"), now)
                parent = code
        for a in ACCOUNTS:
            set_parent(conn, a, parent)
            add_bundle(conn, "account", a, Bundle("de", 10**8, prefixes=("4930",)),
                       now_ms=now)
    finally:
        conn.close()


def bench_tiers(cycles: int, live: int, rounds: int = 1) -> None:
    """Charging cycles/s of a call through a 4-tier chain with bundles, side by side
    with a flat call (one account, no bundle), both on the live path (writer thread,
    group commit), in one run. Target (issue 14): at most 2x the flat call's cost.
    With ``rounds`` > 1 the two alternate, each on a fresh store, and the medians are
    compared (the machine is shared: one disturbed round moves a median little)."""
    flat_rates: list[float] = []
    tier_rates: list[float] = []
    flat_us: list[float] = []
    tier_us: list[float] = []
    resold = bundled = 0
    commands_per_batch = 0.0
    load_before = loadavg()
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            flat, tiers = Path(tmp) / "flat.db", Path(tmp) / "tiers.db"
            prepare(flat)
            prepare_tiers(tiers)
            t_flat, wf = writer_path(flat, cycles, live)
            t_tiers, w = writer_path(tiers, cycles, live)
            conn = connect(tiers)
            (resold,) = conn.execute("SELECT COUNT(*) FROM cdr_tiers").fetchone()
            (bundled,) = conn.execute("SELECT COUNT(*) FROM cdrs WHERE bundle_seconds > 0"
                                      ).fetchone()
            conn.close()
        flat_rates.append(cycles / t_flat)
        tier_rates.append(cycles / t_tiers)
        flat_us.append(wf.cpu_s / cycles * 1e6)
        tier_us.append(w.cpu_s / cycles * 1e6)
        commands_per_batch = w.commands / max(w.batches, 1)

    def rng(xs: list[float], unit: str = "") -> str:
        if len(xs) == 1:
            return f"{xs[0]:,.0f}{unit}"
        return f"{statistics.median(xs):,.0f}{unit} (range {min(xs):,.0f}-{max(xs):,.0f})"

    flat_rate, tier_rate = statistics.median(flat_rates), statistics.median(tier_rates)
    ratios = [f / t for f, t in zip(flat_rates, tier_rates, strict=True)]
    print(f"4-tier chain with bundles vs a flat call, {cycles:,} cycles, {live:,} running "
          f"(live path, SQLite), {rounds} round(s) alternating; load average "
          f"{load_before} -> {loadavg()}:")
    print(f"  flat: one account, no bundle:      {rng(flat_rates)} cycles/s "
          f"(store thread {rng(flat_us, ' us')} CPU per cycle)")
    print(f"  4 tiers (3 resellers) + bundles:   {rng(tier_rates)} cycles/s "
          f"(store thread {rng(tier_us, ' us')} CPU per cycle; "
          f"{commands_per_batch:.0f} commands per transaction; {resold:,} "
          f"reseller rows, {bundled:,} calls on a bundle)")
    each = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"  cost ratio {flat_rate / tier_rate:.2f}x a flat call (medians; each round: "
          f"{each}) (target: <= 2x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cycles", type=int, default=20_000)
    ap.add_argument("--live", type=int, default=1_000)
    ap.add_argument("--cutoffs", type=int, default=300)
    ap.add_argument("--nodes-seconds", type=float, default=10.0,
                    help="window of each several-node set-up (0: skip them)")
    ap.add_argument("--limit-offers", type=int, default=20_000,
                    help="offers of the limits section (0: skip it)")
    ap.add_argument("--tiers", action="store_true",
                    help="also: a 4-tier reseller chain with bundles vs a flat call")
    ap.add_argument("--only-tiers", action="store_true", help="only that comparison")
    ap.add_argument("--rounds", type=int, default=1,
                    help="the tiers comparison: rounds of flat and tiers, alternating")
    args = ap.parse_args()
    if args.tiers or args.only_tiers:
        bench_tiers(args.cycles, args.live, args.rounds)
        if args.only_tiers:
            return
    bench_cycles(args.cycles, args.live)
    if args.limit_offers:
        bench_limits(args.limit_offers, args.live)
    if args.nodes_seconds:
        bench_nodes(args.live, args.nodes_seconds)
    if args.cutoffs:
        asyncio.run(bench_cutoffs(args.cutoffs))


if __name__ == "__main__":
    main()
