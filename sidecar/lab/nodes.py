"""Several nodes on loopback sharing one store: what an operator runs on two or more hosts.

Each node is a :class:`~sidecar.lab.live.LiveLab`: a Kamailio with the shipped
configuration and its own ``sidecar run`` (own run directory, configuration file, log and
journal), with a SIPp callee of its own at that Kamailio's destination. All the nodes'
sidecars share ONE store: a SQLite path (several sidecars on one host share one file in
WAL mode) or a ``postgresql://`` URL (several hosts), passed to each as ``--db``.

:class:`BalanceWatch` samples an account's balance from a separate read-only connection
while calls run, to show that it never went below zero at any moment, not only at the end.

Everything started here is stopped by PID when the block ends, also on failure: the nodes
are started one after another (each picks its ports once the previous one holds its own)
and stopped in the reverse order.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ..store.migrate import is_url
from .live import LiveLab
from .sipp import SippProcess

#: Where the nodes' sidecars keep their balances: a SQLite path or a PostgreSQL URL.
StoreTarget = Path | str


def store_target(store: StoreTarget) -> StoreTarget:
    """A URL as given; a SQLite path made absolute (every node must open the same file)."""
    return store if isinstance(store, str) and is_url(store) else Path(store).resolve()


class NodesLab:
    """``count`` nodes (Kamailio + ``sidecar run`` each) sharing the store ``store``.

    ``live`` passes on to every node's :class:`LiveLab` (``extra_config``,
    ``kamailio_defines``, ...). ``lab[i]`` is node ``i``; its ``run_dir`` is
    ``run_dir/nI`` (short: Kamailio's UNIX socket paths live there)."""

    def __init__(self, run_dir: Path, store: StoreTarget, count: int = 2, **live: Any) -> None:
        if count < 1:
            raise ValueError("a lab needs at least one node")
        self.run_dir = Path(run_dir).resolve()
        self.store = store_target(store)
        self.count = count
        self.live = live
        self.nodes: list[LiveLab] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Self:
        try:
            for i in range(self.count):
                node_dir = self.run_dir / f"n{i}"
                # Built only now: the ports a node picks are free of the nodes before it.
                # Each LiveLab names its node (``sidecar run --node``) after its own evapi
                # port, so the nodes' sidecars hold different leader locks.
                node = LiveLab(node_dir, self.store, journal=node_dir / "sidecar.journal",
                               **self.live)
                self._stack.enter_context(node)
                self.nodes.append(node)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.close()

    def __getitem__(self, i: int) -> LiveLab:
        return self.nodes[i]

    def __iter__(self) -> Iterator[LiveLab]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def names(self) -> list[str]:
        """The nodes' names (each sidecar's ``--node``), in node order."""
        return [node.node for node in self.nodes]

    def uas(self, scenario: str = "uas.xml", **kw: Any) -> list[SippProcess]:
        """Start every node's callee (the same scenario and options for each)."""
        return [node.uas(scenario, **kw) for node in self.nodes]

    def sidecar_pids(self) -> list[int | None]:
        """Each node's ``sidecar run`` PID (``None`` where it is not running)."""
        return [node.sidecar_pid for node in self.nodes]

    def log_tail(self, n: int = 40) -> str:
        """The end of every node's sidecar and Kamailio logs, for failure messages."""
        return "\n".join(f"=== node {i} ({node.run_dir})\n{node.log_tail(n)}"
                         for i, node in enumerate(self.nodes))


@dataclass(frozen=True)
class BalanceSample:
    """An account as a reader saw it at ``at`` (``time.monotonic()``)."""

    at: float
    balance: Decimal
    held: Decimal


@dataclass
class BalanceWatch:
    """Samples ``account``'s balance and holds every ``every_s`` in a thread, from a
    read-only connection of its own to ``store``, until the block ends.

    A reader never blocks the sidecars' writers (SQLite WAL, PostgreSQL MVCC) and sees
    committed states only: each sample is what some transaction left."""

    store: StoreTarget
    account: str
    every_s: float = 0.1
    samples: list[BalanceSample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.store = store_target(self.store)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        read = self._reader()  # in this thread: a store that cannot be read fails here
        self._take(read)
        self._thread = threading.Thread(target=self._run, args=(read,),
                                        name="balance-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def lowest(self) -> BalanceSample | None:
        """The sample with the lowest balance."""
        return min(self.samples, key=lambda s: s.balance, default=None)

    def _run(self, read: _Reader) -> None:
        try:
            while not self._stop.wait(self.every_s):
                self._take(read)
            self._take(read)  # the state as the block ends
        finally:
            read.close()

    def _take(self, read: _Reader) -> None:
        try:
            row = read.fetch(self.account)
        except Exception as exc:  # kept for the test to report, the watch goes on
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        if row is not None:
            self.samples.append(BalanceSample(time.monotonic(), *row))

    def _reader(self) -> _Reader:
        if isinstance(self.store, str):
            return _PgReader(self.store)
        return _SqliteReader(self.store)


class _Reader:
    def fetch(self, account: str) -> tuple[Decimal, Decimal] | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _SqliteReader(_Reader):
    def __init__(self, path: Path) -> None:
        # mode=ro: the watch can never write, nor create the file if the path is wrong.
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                    check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout = 1000")

    def fetch(self, account: str) -> tuple[Decimal, Decimal] | None:
        row = self.conn.execute("SELECT balance, held FROM accounts WHERE code = ?",
                                (account,)).fetchone()
        return None if row is None else (Decimal(str(row[0])), Decimal(str(row[1])))

    def close(self) -> None:
        self.conn.close()


class _PgReader(_Reader):
    def __init__(self, url: str) -> None:
        from ..store.pg import connect_pg

        self.conn = connect_pg(url)
        self.conn.execute("SET default_transaction_read_only = on")

    def fetch(self, account: str) -> tuple[Decimal, Decimal] | None:
        row = self.conn.execute("SELECT balance, held FROM accounts WHERE code = %s",
                                (account,)).fetchone()
        return None if row is None else (Decimal(str(row[0])), Decimal(str(row[1])))

    def close(self) -> None:
        self.conn.close()
