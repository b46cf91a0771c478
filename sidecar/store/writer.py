"""The live sidecar's store edge: a thread that owns its own SQLite connection.

    event loop                          writer thread
    Charger ── submit(cmd) ──queue──▶  batch: every command waiting (up to max_batch)
                                       one transaction (group commit)
            ◀── deliver(BatchResult) ── outcomes + touched accounts after the commit
            ◀── deliver(Snapshot) ───── accounts, SIP mappings, changed rate plans, when
                                        another process changed the store
                                        (``PRAGMA data_version``)

The loop never waits on the disk or a lock. The writer waits ``commit_delay_ms`` after the
first command of a batch so that those arriving meanwhile share its transaction: the
core has decided already, so nothing waits on that delay, and a transaction's fixed cost
is paid once per batch instead of once per command. After a full batch (``max_batch``:
the writer is behind) the next one is taken at once: it has waited a batch already.
When a batch cannot be committed (disk full, database locked for longer than
``busy_timeout_ms``, gone), its settlements, top-ups and
fraud events go to the local :class:`~sidecar.store.journal.Journal` (fsync'd) and are applied once
the store commits again; reservations fail, and the core ends the prepaid calls that
needed them. The store is probed every ``probe_s`` meanwhile.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from ..charging import PlanRates
from ..charging.bundles import OwnedBundle
from ..charging.commands import (
    BatchResult,
    FloatHold,
    Outcome,
    Reserve,
    Settle,
    StoreCommand,
    TierPrice,
    UsageKey,
)
from ..charging.model import Account, Cdr, Disposition
from ..money import ZERO
from ..rating.fx import FxRate, FxTable
from ..routing.select import CarrierBook
from .accounts import SqliteLedger, SqlLedger, list_accounts
from .bundles import list_bundles, recent_usage
from .carriers import CarrierJob, CarrierLoader
from .conn import Db, is_url
from .db import connect
from .fraud import calls_elsewhere, countries_called
from .fx import list_rates
from .journal import Journal, JournalError

log = logging.getLogger("sidecar.store")


@dataclass(frozen=True)
class Snapshot:
    """The store as it stands: every account, the SIP mappings, and the rate plans that
    changed (all of them in the first snapshot). ``live_calls``: the calls the store
    holds reservations for (first snapshot only: a restarted sidecar adopts them)."""

    accounts: list[Account]
    sip: dict[tuple[str, str], str]
    plans: dict[str, PlanRates]
    live_calls: list[dict[str, object]] = field(default_factory=list)
    first: bool = False
    #: (account, country code) -> its last answered call (first snapshot only): the
    #: history of the new-country fraud rule.
    called: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Per account, the answered calls other nodes carry (with every complete snapshot).
    elsewhere: dict[str, int] = field(default_factory=dict)
    complete: bool = True  # False: only plans changed; accounts and mappings as they were
    #: The carriers and their buy decks (least-cost routing) when they changed (all of
    #: them in the first snapshot); None: as they were.
    carriers: CarrierBook | None = None
    #: The exchange rates when they changed (all of them in the first snapshot).
    fx: FxTable | None = None
    #: Free-minute bundles when they changed (all of them in the first snapshot), and
    #: their usage in the current periods (with the first and every complete snapshot).
    bundles: list[OwnedBundle] | None = None
    bundle_usage: dict[UsageKey, int] | None = None
    #: This node's floats on resellers (first snapshot only): reseller -> what it holds.
    floats: dict[str, Decimal] | None = None


WriterEvent = BatchResult | Snapshot

#: How far back the new-country rule's history goes (its ``new_country_days`` at most).
HISTORY_MS = 366 * 86_400_000


class _BookBuilder:
    """Builds carrier books (:class:`~.carriers.CarrierLoader.build`) in a thread of its
    own and hands each to the loop as a snapshot: indexing millions of buy lines must
    hold up neither the loop nor the store thread's commits. Jobs that queue up while one
    is built are coalesced: only the newest is built."""

    def __init__(self, loader: CarrierLoader, deliver: Callable[[WriterEvent], None]) -> None:
        self.loader = loader
        self.deliver = deliver
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="carrier-books",
                                            daemon=True)
            self._thread.start()

    def submit(self, job: CarrierJob) -> None:
        self._q.put(job)

    def stop(self) -> None:
        self._q.put(_STOP)

    def _run(self) -> None:
        while True:
            job = self._q.get()
            while not self._q.empty():  # only the newest matters
                nxt = self._q.get()
                job = nxt if job is not _STOP else job
            if job is _STOP:
                return
            try:
                book = self.loader.build(job)
            except Exception:  # a bad deck must not end routing: keep the book in use
                log.exception("could not build the carriers' book; the previous one stays")
                continue
            self.deliver(Snapshot([], {}, {}, complete=False, carriers=book))


class PlanSource(Protocol):
    """Loads rate plans for the live sidecar (``decks.PlanLoader``)."""

    def load_all(self, conn: Any) -> dict[str, PlanRates]: ...

    def warm(self, conn: Any) -> dict[str, PlanRates]: ...

    def refresh(self, conn: Any) -> dict[str, PlanRates]: ...


_STOP = object()


class StoreWriter:
    """Applies the charging core's commands off the event loop, in batches."""

    def __init__(self, db: str | Path, journal: str | Path, plans: PlanSource,
                 deliver: Callable[[WriterEvent], None], *, max_batch: int = 4000,
                 poll_s: float = 0.1, probe_s: float = 1.0, busy_timeout_ms: int = 2000,
                 accounts_every_s: float = 0.5, commit_delay_ms: int = 50,
                 node: str = "", lease_ms: int = 30_000) -> None:
        self.db = db
        self.node = node
        self.lease_ms = lease_ms
        self.renew_every_s = lease_ms / 3000  # a lease survives two missed renewals
        self.expired_every_s = lease_ms / 6000
        self.journal = Journal(journal)
        self._stopping = threading.Event()  # stop() was called: no new try of a down store
        self.plans = plans
        self.carriers = CarrierLoader()  # least-cost routing: carriers and buy decks
        self._books = _BookBuilder(self.carriers, deliver)
        self._fx_rates: list[FxRate] | None = None
        self._bundles: list[OwnedBundle] | None = None
        self.deliver = deliver
        self.max_batch = max_batch
        self.poll_s = poll_s
        self.probe_s = probe_s
        self.busy_timeout_ms = busy_timeout_ms
        self.accounts_every_s = accounts_every_s
        self.commit_delay_s = commit_delay_ms / 1000
        self._accounts_stale = False
        self._accounts_read = 0.0
        self.run_id = uuid.uuid4().hex
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._memory: list[StoreCommand] = []  # journaled nowhere: the journal failed too
        self._judge_after = 0.0  # monotonic time from which other nodes' leases are judged
        self._renewed = 0.0  # when this node's leases were last renewed
        self.down = False
        self.error = ""
        #: Figures for logs and benchmarks (written by the thread, read anywhere).
        self.batches = 0
        self.commands = 0
        self.journaled = 0
        self.failed_batches = 0
        self.taken_over = 0  # other nodes' calls settled here after their lease ran out
        #: Settlements, top-ups and fraud events waiting for the store in the journal (or
        #: memory), counted without reading the journal file (for metrics).
        self.journal_depth = 0
        self.cpu_s = 0.0  # CPU spent applying batches
        self.started = threading.Event()
        self.start_error: BaseException | None = None

    # --- the loop's side ---------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def submit(self, cmd: StoreCommand) -> None:
        """Queue a command (thread-safe, never blocks)."""
        self._q.put(cmd)

    def stop(self, timeout: float = 10.0) -> None:
        """Apply what is queued, then end the thread. With the store down, what is queued
        goes to the journal at once (no new try of the store: each may wait seconds for a
        connection), and the restarted sidecar applies it."""
        if self._thread is None:
            return
        self._stopping.set()
        self._q.put(_STOP)
        self._books.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("store writer did not stop within %.0f s", timeout)

    @property
    def stopped(self) -> bool:
        """The thread has ended (every command taken was answered or journaled)."""
        return self._thread is None or not self._thread.is_alive()

    def queued(self) -> int:
        """Commands submitted and not yet taken into a batch (approximate, never blocks)."""
        return self._q.qsize()

    def pending_journal(self) -> int:
        """Settlements, top-ups and fraud events waiting for the store (journal and
        memory)."""
        return len(self.journal) + len(self._memory)

    # --- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._open()
            conn = self.conn
            self._apply_journal(startup=True)
            self._changes.changed()  # from here on
            with _bulk_load():
                plans = self.plans.warm(conn)  # loaded already by a standby: refreshed
                job = self.carriers.load(conn)
                carriers = self.carriers.build(job) if job is not None else None
                fx = self._fx_changed(conn) or FxTable()
                bundles = self._bundles_changed(conn) or []
            self._books.start()
            self.deliver(Snapshot(list_accounts(conn, _now_ms()), _sip(conn), plans,
                                  self.ledger.live_calls(self.node), first=True,
                                  called=countries_called(conn, _now_ms() - HISTORY_MS),
                                  elsewhere=calls_elsewhere(conn, self.node),
                                  carriers=carriers, fx=fx, bundles=bundles,
                                  bundle_usage=recent_usage(conn, _now_ms()),
                                  floats=self.ledger.floats()))
        except BaseException as exc:  # the sidecar cannot start without its store
            self.start_error = exc
            self.started.set()
            log.error("store writer could not start: %s", exc)
            return
        self.started.set()
        last_check = last_probe = last_renew = last_expired = time.monotonic()
        self._reached_store()
        self._renew_leases()  # the calls adopted (a restart, a standby's takeover): ours now
        stopping = False
        behind = False  # the last batch was full: more had queued up than one takes
        while not stopping:
            batch: list[StoreCommand] = []
            try:
                item = self._q.get(timeout=self.poll_s)
                # Behind, what is queued has waited a whole batch already: no delay more.
                if self.commit_delay_s and item is not _STOP and not behind:
                    self._gather()
                while True:
                    if item is _STOP:
                        stopping = True
                    else:
                        batch.append(item)
                    if len(batch) >= self.max_batch:
                        break
                    item = self._q.get_nowait()
            except queue.Empty:
                pass
            behind = len(batch) >= self.max_batch
            if batch:
                self._apply(batch)
            if stopping:
                break
            if self._stopping.is_set():  # draining for stop(): no probe, reconnection or
                continue  # renewal to wait on (each may wait seconds for a down store)
            now = time.monotonic()
            if self.down and now - last_probe >= self.probe_s:
                last_probe = now
                self._probe()
            if now - last_check >= self.poll_s:
                last_check = now
                self._check_changes()
            if not self.down and now - last_renew >= self.renew_every_s:
                last_renew = now
                self._renew_leases()
            if (not self.down and now - last_expired >= self.expired_every_s
                    and time.monotonic() >= self._judge_after):
                last_expired = now
                self._settle_expired()
        self._close()

    def _gather(self) -> None:
        """Group commit: let what arrives within ``commit_delay_ms`` share this
        transaction, but no longer than it takes a full batch to queue up."""
        deadline = time.monotonic() + self.commit_delay_s
        while self._q.qsize() < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.01))  # few wake-ups: a full batch waits 10 ms at most

    def _apply(self, batch: list[StoreCommand]) -> None:
        t0 = time.thread_time()
        if self.down and self._stopping.is_set():
            error = f"{self.error} (at shutdown)"
            result = BatchResult([Outcome(c.seq, False, error=error) for c in batch], {},
                                 error)
        else:
            result = self.ledger.execute(batch)
        self.cpu_s += time.thread_time() - t0
        self.batches += 1
        self.commands += len(batch)
        if result.error:
            result = self._failed(batch, result)
        elif self.down:
            self._recovered()
        self.deliver(result)

    def _failed(self, batch: list[StoreCommand], result: BatchResult) -> BatchResult:
        """The batch was rolled back: keep its money in the journal, fail its holds."""
        self.failed_batches += 1
        if not self.down:
            log.error("store failed (%s): settlements go to the journal %s; new calls are "
                      "refused until it recovers", result.error, self.journal.path)
        self.down = True
        self.error = result.error
        keep = [c for c in batch if not isinstance(c, (Reserve, FloatHold))]
        where = "journal"
        if keep:
            try:
                self.journal.append(keep, self.run_id)
                self.journaled += len(keep)
            except JournalError as exc:
                where = "memory"
                self._memory += keep
                log.critical("cannot write the journal either (%s): %d settlements kept in "
                             "memory only until the store or the journal recovers", exc,
                             len(self._memory))
            self.journal_depth += len(keep)
        kept = {c.seq for c in keep}
        outcomes = [Outcome(o.seq, False, journaled=o.seq in kept,
                            error=f"{result.error} (kept in the {where})" if o.seq in kept
                            else result.error) for o in result.outcomes]
        return BatchResult(outcomes, {}, result.error)

    def _probe(self) -> None:
        """Is the store writable again? A real (tiny) write says so; taking the lock
        alone would not notice a full disk."""
        try:
            self._probe_write()
        except self.ledger.dialect.errors as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return
        self._recovered()
        self.deliver(BatchResult([], {}))

    def _reached_store(self) -> None:
        """The store answers again (or for the first time): other nodes' leases are judged
        only a whole lease from now. While this writer could not reach the store their
        renewals may have failed as its own did, and a live node's calls must never be
        taken over."""
        self._judge_after = time.monotonic() + self.lease_ms / 1000
        self._renewed = time.monotonic()

    def _recovered(self) -> None:
        self._reached_store()
        log.warning("store writable again after: %s", self.error)
        self.down = False
        self.error = ""
        self._apply_journal(startup=False)

    def _apply_journal(self, *, startup: bool) -> None:
        """Apply what the journal (and memory) holds, then empty it."""
        entries = self.journal.entries()
        memory, self._memory = self._memory, []
        if not entries and not memory:
            self.journal_depth = 0
            return
        cmds = [c for _run, c in entries] + memory
        result = self.ledger.execute(cmds)
        if result.error:
            self._memory = memory
            self.journal_depth = len(cmds)
            self.down = True
            self.error = result.error
            log.error("journal not applied yet (%s): %d entries wait", result.error, len(cmds))
            if startup:
                raise RuntimeError(f"the store cannot take the journal {self.journal.path}: "
                                   f"{result.error}")
            return
        self.journal.clear()
        self.journal_depth = 0
        log.warning("applied %d journaled settlements/top-ups/fraud events to the store",
                    len(cmds))
        if not startup:
            # Outcomes of this run's commands reach the core; older runs' are not its own.
            mine = {c.seq for run, c in entries if run == self.run_id} | {c.seq for c in memory}
            self.deliver(BatchResult([o for o in result.outcomes if o.seq in mine],
                                     result.accounts))

    def _check_changes(self) -> None:
        """Another process committed (a top-up, a new account, a deck): send what changed.

        Rate plans are checked at every change (one small query unless a version became
        active); accounts and SIP mappings are read again at most every
        ``accounts_every_s``, so a deck import's many short commits cost one reload."""
        try:
            if self._changes.changed():
                self._accounts_stale = True
                with _bulk_load():
                    plans = self.plans.refresh(self.conn)
                    job = self.carriers.load(self.conn)
                    fx = self._fx_changed(self.conn)
                    bundles = self._bundles_changed(self.conn)
                if job is not None:  # built off this thread: commits go on meanwhile
                    self._books.submit(job)
                if plans or fx is not None or bundles is not None:
                    self.deliver(Snapshot([], {}, plans, complete=False, fx=fx,
                                          bundles=bundles))
            now = time.monotonic()
            if self._accounts_stale and now - self._accounts_read >= self.accounts_every_s:
                self._accounts_stale = False
                self._accounts_read = now
                self.deliver(Snapshot(list_accounts(self.conn, _now_ms()), _sip(self.conn),
                                      {}, elsewhere=calls_elsewhere(self.conn, self.node),
                                      bundle_usage=recent_usage(self.conn, _now_ms())))
        except self.ledger.dialect.errors as exc:
            log.error("could not read the store's changes: %s", exc)
            self._reconnect_reader()


    def _bundles_changed(self, conn: Any) -> list[OwnedBundle] | None:
        """The bundles, when they differ from the last ones read (else None)."""
        bundles = list_bundles(conn)
        if bundles == self._bundles:
            return None
        self._bundles = bundles
        return bundles

    def _fx_changed(self, conn: Any) -> FxTable | None:
        """The exchange rates, when they differ from the last ones read (else None)."""
        rates = list_rates(conn)
        if rates == self._fx_rates:
            return None
        self._fx_rates = rates
        return FxTable(rates)

    # --- the database: SQLite or PostgreSQL ----------------------------------------------
    def _open(self) -> None:
        """The writer's connections: SQLite, one connection; PostgreSQL, a reader (rate
        plans, accounts, SIP mappings), a small pool for the batches (a batch after a
        lost connection or a server restart gets a new one) and a listener."""
        self.conn: Db
        self.ledger: SqlLedger
        if is_url(self.db):
            from .pg import PgChanges, PgLedger, open_pg, open_pool

            url = str(self.db)
            self.conn = open_pg(url)  # brings the schema up to date first
            self.ledger = PgLedger(open_pool(url, min_size=1, max_size=2))
            self._changes: Changes = PgChanges(url, self.ledger, self.conn)
        else:
            conn = connect(self.db)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            # The writer appends: its working set is the last pages of each table and
            # index and the accounts, not the 64 MB cache an interactive reader wants.
            conn.execute("PRAGMA cache_size = -16384")
            self.conn = conn
            self.ledger = SqliteLedger(conn)
            self._changes = SqliteChanges(conn)
        self.ledger.node = self.node
        self.ledger.lease_ms = self.lease_ms

    def _close(self) -> None:
        self._changes.close()
        self.ledger.close()
        self.conn.close()

    def _reconnect_reader(self) -> None:
        """PostgreSQL: a reader whose connection broke (a server restart) is replaced."""
        raw = getattr(self.conn, "raw", None)
        if raw is None or not (raw.broken or raw.closed):
            return
        from .pg import open_pg

        with contextlib.suppress(Exception):
            self.conn.close()
        try:
            self.conn = open_pg(str(self.db))
            self._changes.reader = self.conn
        except self.ledger.dialect.errors as exc:
            log.error("cannot reconnect to the store: %s", exc)

    def _probe_write(self) -> None:
        """A tiny real write (taking the lock alone would not notice a full disk)."""
        d = self.ledger.dialect
        with self.ledger.connection() as conn, d.transaction(conn):
            d.execute(conn, "INSERT INTO meta (key, value) VALUES ('probe', ?) "
                      "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                      (str(_now_ms()),))

    # --- nodes: leases on the calls' reservations ------------------------------------
    def _renew_leases(self) -> None:
        """This node lives: its calls' leases run on (else another node settles them)."""
        try:
            self.ledger.renew_leases(_now_ms())
        except self.ledger.dialect.errors as exc:
            log.error("could not renew this node's leases: %s", exc)
            self._reached_store()  # (not yet: counted from its next answer at the earliest)
            return
        now = time.monotonic()
        if now - self._renewed > 2 * self.renew_every_s:  # the store stalled (a batch
            self._reached_store()  # waiting for a connection): as good as down meanwhile
        self._renewed = now

    def _settle_expired(self) -> None:
        """Settle, once, the calls of nodes whose lease ran out (the node is down or cut
        off from the store): each is charged for its paid time at most (what its last
        reservation covered), and its CDR says so. Its Kamailio ends it (the dialog
        timeout) if it still runs."""
        try:
            expired = self.ledger.expired_calls(_now_ms())
        except self.ledger.dialect.errors as exc:
            log.error("could not read other nodes' expired calls: %s", exc)
            self._reached_store()
            return
        for row in expired:
            now = _now_ms()
            acc = self.ledger.account(str(row["account"]), now)
            cdr = expired_cdr(row, acc, self.node)
            result = self.ledger.execute([Settle(
                -1, cdr, now, lease_ended_by=now,
                tiers=held_tiers(row, int(str(row["paid_seconds"]))))])
            if result.error:
                log.error("could not settle call %s of node %s: %s", cdr.call_ref,
                          row["node"], result.error)
                return
            (outcome,) = result.outcomes
            if outcome.settlement is not None and not outcome.settlement.duplicate:
                self.taken_over += 1
                log.warning("settled call %s of node %s (account %s): its lease ran out "
                            "%d ms ago; charged %s for its paid %d s", cdr.call_ref,
                            row["node"], cdr.account, now - int(str(row["lease_ms"])),
                            outcome.settlement.charged, cdr.billed_seconds)
                self.deliver(BatchResult([], result.accounts))
        try:
            floats = self.ledger.expired_floats(_now_ms())
        except self.ledger.dialect.errors as exc:
            log.error("could not read other nodes' expired floats: %s", exc)
            return
        for node, code, held in floats:  # nothing will draw on them: back to the balance
            result = self.ledger.execute([FloatHold(-1, code, -held, _now_ms(), node=node)])
            if result.error:
                log.error("could not give back node %s's float on %s: %s", node, code,
                          result.error)
                return
            log.warning("gave back node %s's float on reseller %s (%s): its lease ran out "
                        "and it has no live call left", node, code, held)
            self.deliver(BatchResult([], result.accounts))


def expired_cdr(row: dict[str, object], acc: Account | None, node: str) -> Cdr:
    """The CDR of another node's call settled after its lease ran out: answered, billed
    for the paid time its reservations covered (its real end is not known here)."""
    answered = int(str(row["answered_ms"]))
    paid = int(str(row["paid_seconds"]))
    reserved = Decimal(str(row["reserved"]))
    return Cdr(
        str(row["call_ref"]), str(row["call_ref"]), Disposition.ANSWERED,
        account=str(row["account"]), plan=acc.plan if acc else None,
        callee=str(row["number"]), destination=str(row["destination"]),
        prefix=str(row["prefix"]), rate=Decimal(str(row["rate"])),
        increment=str(row["increment"]), currency=acc.currency if acc else "",
        answered_ms=answered, billable_ms=answered, ended_ms=answered + paid * 1000,
        duration_ms=paid * 1000, billed_seconds=paid, usage=reserved, cost=reserved,
        ended_by=f"node {node}",
        end_reason=f"lease expired: node {row['node']} stopped renewing it; billed its "
                   f"paid time",
        # Its bundle seconds held are used first: the reservations' money paid the rest.
        bundle=str(row.get("bundle") or ""),
        bundle_period=None if row.get("bundle_period") is None else int(str(
            row["bundle_period"])),
        bundle_seconds=min(int(str(row.get("bundle_held") or 0)), paid))


def held_tiers(row: dict[str, object], paid: int) -> tuple[TierPrice, ...]:
    """The resellers' prices of a call settled for its paid time: each is charged what
    was held on it or drawn from a float on it for the call (its price of that time)."""
    held: dict[str, Decimal] = {}
    for column in ("tier_draws", "tier_holds"):  # drawn from floats, held on its own
        for code, v in json.loads(str(row.get(column) or "{}")).items():
            held[code] = held.get(code, ZERO) + Decimal(str(v))
    return tuple(
        TierPrice(i, code, "", "", str(row["destination"]), str(row["prefix"]), ZERO, "",
                  paid, amount, ZERO, ZERO, ZERO, amount, ZERO, None)
        for i, (code, amount) in enumerate(held.items(), 1))


class Changes(Protocol):
    """Did another process change the store since the last call (accounts, SIP mappings,
    rate plans)?"""

    reader: Any

    def changed(self) -> bool: ...

    def close(self) -> None: ...


class SqliteChanges:
    """SQLite's ``PRAGMA data_version``: changes when another connection commits."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.reader = conn
        self._version = -1

    def changed(self) -> bool:
        version = int(self.reader.execute("PRAGMA data_version").fetchone()[0])
        if version == self._version:
            return False
        self._version = version
        return True

    def close(self) -> None:
        pass


class WarmPlans:
    """Rate plans loaded before they are needed, and kept up to date: a standby sidecar
    loads them from a thread (with a connection of its own) while it waits for the lock,
    so taking over costs a refresh, not the load of every deck. Nothing else of the store
    is read ahead: its accounts and live calls are read at takeover, as they are then."""

    def __init__(self, target: str | Path, plans: PlanSource, *, every_s: float = 2.0) -> None:
        self.target = target
        self.plans = plans
        self.every_s = every_s
        self.loaded = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plans-warm", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop (waiting for a load under way): the loader is then the caller's alone."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        from .conn import describe, open_db

        try:
            conn = open_db(self.target)
        except Exception as exc:  # the writer will say what is wrong at takeover
            log.warning("standby: cannot read rate plans ahead from %s: %s",
                        describe(self.target), exc)
            return
        try:
            t0 = time.monotonic()
            with _bulk_load():
                plans = self.plans.warm(conn)
            self.loaded = True
            log.info("standby: %d rate plan(s) loaded ahead in %.1f s", len(plans),
                     time.monotonic() - t0)
            while not self._stop.wait(self.every_s):
                with _bulk_load():
                    self.plans.refresh(conn)
        except Exception as exc:
            log.warning("standby: reading rate plans ahead failed: %s", exc)
        finally:
            conn.close()


@contextlib.contextmanager
def _bulk_load() -> Iterator[None]:
    """Loading rate plans makes hundreds of thousands of long-lived objects. The cyclic
    garbage collector would walk the whole heap several times meanwhile, holding the
    interpreter lock for tens of milliseconds each time and stalling the event loop; it is
    paused while they are built, and what was built is then moved out of its sight
    (``gc.freeze``): rate tables are dropped by reference counting alone."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()


def _sip(conn: Db) -> dict[tuple[str, str], str]:
    return {(str(k), str(v)): str(a)
            for k, v, a in conn.execute("SELECT kind, value, account FROM sip_accounts")}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
