"""The leader lock of a node: one active sidecar, a standby that takes over.

The SQLite lock (a ``flock``) is tested across real processes, killed with SIGKILL; the
PostgreSQL advisory lock with two real sessions on the local server (``tests/store/pgdb``),
including a session the server ends under the leader. ``sidecar run`` itself is run
twice on one store, SQLite and PostgreSQL (no Kamailio: nothing listens on its evapi
port), so the standby's log, the takeover and the exit when the lock is lost are those
of the real command.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from sidecar.config import ConfigError, load_config
from sidecar.live.leader import (
    FileLeaderLock,
    LeaderLock,
    LeaderLockError,
    LeadershipLost,
    PgLeaderLock,
    acquire,
    keep,
    leader_key,
    leader_lock,
    off_loop,
)
from sidecar.store.db import connect
from sidecar.store.decks import import_deck
from sidecar.store.pg import _SCHEMA_LOCK
from tests.store.pgdb import fresh_database

pytestmark = pytest.mark.timeout(120)


# --- node names -------------------------------------------------------------------------

def test_node_name_defaults_to_the_host_name_and_is_read_from_node_name(tmp_path: Path
                                                                         ) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text("[database]\npath = \"x.db\"\n")
    assert load_config(cfg).node == socket.gethostname()
    cfg.write_text('[node]\nname = "kam-1.fra_2"\n')
    assert load_config(cfg).node == "kam-1.fra_2"


@pytest.mark.parametrize(("value", "problem"), [
    ('""', "must not be empty"),
    ('"' + "n" * 65 + '"', "at most 64 characters"),
    ('"kam 1"', "letters, digits"),
    ('"../etc"', "letters, digits"),
    ('"kam\\u00e91"', "letters, digits"),
    ('"kam\\n1"', "letters, digits"),
    ('".."', "letters, digits"),
    ("7", "must be str"),
])
def test_a_bad_node_name_is_refused_naming_file_and_key(tmp_path: Path, value: str,
                                                        problem: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f"[node]\nname = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert str(err.value).startswith(f"{cfg}: node.name: ")
    assert problem in str(err.value)


def test_run_refuses_a_bad_node_option(tmp_path: Path) -> None:
    r = subprocess.run([*_sidecar(), "--db", str(tmp_path / "x.db"), "run", "--node", "a/b"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--node must be letters, digits" in r.stderr
    assert not list(tmp_path.iterdir())  # nothing created


# --- the SQLite lock: a flock beside the database, across processes -----------------------

HOLDER = """
import sys, time
from sidecar.live.leader import FileLeaderLock
lock = FileLeaderLock(sys.argv[1], sys.argv[2], serves="evapi 127.0.0.1:1")
while not lock.try_acquire():
    time.sleep(0.05)
print("locked", flush=True)
time.sleep(600)
"""


@contextmanager
def holder_process(db: Path, node: str) -> Iterator[subprocess.Popen[str]]:
    """A process that takes the node's file lock (waiting for it if need be), then
    sleeps; killed by PID at the end."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), node],
                            stdout=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def wait_locked(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"


def test_a_stop_that_comes_as_the_lock_answers_is_not_lost() -> None:
    """SIGTERM cancels the standby's task in the very loop turn in which a lock try
    answers: the cancellation must still end the wait (it once went on polling)."""

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        assert me is not None

        def try_acquire() -> bool:  # the stop is queued just before the answer
            loop.call_soon_threadsafe(me.cancel)
            return False

        try:
            await off_loop(try_acquire, timeout=5.0)
        except asyncio.CancelledError:
            return "cancelled"
        return "went on"

    for _ in range(20):
        assert asyncio.run(scenario()) == "cancelled"


def test_file_lock_one_holder_across_processes_released_by_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "sidecar.db"
    mine = FileLeaderLock(db, "node1", serves="evapi 127.0.0.1:2")
    with holder_process(db, "node1") as other:
        wait_locked(other)
        path = tmp_path / "sidecar.db.leader.node1"
        assert mine.path == path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for _ in range(3):
            assert not mine.try_acquire()
        assert mine.holder().startswith(f"pid {other.pid} since ")
        assert mine.holder_serves() == "evapi 127.0.0.1:1"
        # Another node's lock is another file: free.
        other_node = FileLeaderLock(db, "node2")
        assert other_node.try_acquire()
        other_node.release()
        # kill -9: the kernel drops the lock with the process.
        os.kill(other.pid, signal.SIGKILL)
        other.wait(10)
        t0 = time.monotonic()
        while not mine.try_acquire():
            assert time.monotonic() - t0 < 2, "the lock of a killed process stayed taken"
            time.sleep(0.01)
    mine.check()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    # Now the other process waits: it cannot have it while this one holds it.
    with holder_process(db, "node1") as second:
        time.sleep(0.5)
        assert second.poll() is None
        mine.check()
        mine.release()
        wait_locked(second)  # takes it as soon as it is released
        assert not mine.try_acquire()


def test_file_lock_in_one_process_two_opens_exclude_each_other(tmp_path: Path) -> None:
    a = FileLeaderLock(tmp_path / "db", "n")
    b = FileLeaderLock(tmp_path / "db", "n")
    assert a.try_acquire() and a.try_acquire()  # held: still True
    assert not b.try_acquire()
    a.release()
    assert b.try_acquire()
    b.release()


def test_removed_lock_file_counts_as_lost(tmp_path: Path) -> None:
    """Someone deleted the lock file: a new sidecar could lock a new one, so the holder
    must consider itself no longer the leader."""
    a = FileLeaderLock(tmp_path / "db", "n")
    assert a.try_acquire()
    a.path.unlink()
    with pytest.raises(LeadershipLost, match="removed or replaced"):
        a.check()
    b = FileLeaderLock(tmp_path / "db", "n")
    assert b.try_acquire()  # a new file
    b.release()
    a.release()


def test_a_lock_file_that_cannot_be_created_is_an_error(tmp_path: Path) -> None:
    lock = FileLeaderLock(tmp_path / "missing-dir" / "db", "n")
    with pytest.raises(LeaderLockError, match="cannot open the lock file"):
        lock.try_acquire()


def test_leader_lock_picks_the_kind_by_store() -> None:
    assert isinstance(leader_lock("/var/lib/sidecar.db", "n"), FileLeaderLock)
    pg = leader_lock("postgresql://u:secret@127.0.0.1/db", "n")
    assert isinstance(pg, PgLeaderLock)
    assert "secret" not in pg.where
    with pytest.raises(ValueError, match="node name"):
        leader_lock("/x.db", "a/b")


# --- waiting and keeping, off the event loop ---------------------------------------------

def test_acquire_logs_standby_once_and_takes_over_when_released(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    active = FileLeaderLock(tmp_path / "db", "n", serves="evapi 127.0.0.1:1")
    standby = FileLeaderLock(tmp_path / "db", "n", serves="evapi 127.0.0.1:1")
    assert active.try_acquire()

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, active.release)
        ticks = 0

        async def ticker() -> None:  # the loop keeps running while the standby waits
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        waited = await acquire(standby, poll_s=0.05)
        t.cancel()
        assert ticks > 50
        return waited

    with caplog.at_level(logging.INFO, logger="sidecar.leader"):
        waited = asyncio.run(scenario())
    assert 0.9 < waited < 2.0
    msgs = [r.getMessage() for r in caplog.records]
    assert len([m for m in msgs if m.startswith("standby for node n: another sidecar is "
                                                "active (pid ")]) == 1
    assert any(m.startswith("active for node n: took over after") for m in msgs)
    assert not any("share a node name" in m for m in msgs)
    standby.release()


def test_two_kamailios_with_one_node_name_are_told_apart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    active = FileLeaderLock(tmp_path / "db", "n", serves="evapi 127.0.0.1:1")
    other = FileLeaderLock(tmp_path / "db", "n", serves="evapi 127.0.0.1:2")
    assert active.try_acquire()

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(acquire(other, poll_s=0.05), 0.5)

    with caplog.at_level(logging.INFO, logger="sidecar.leader"):
        asyncio.run(scenario())
    assert any("two Kamailio nodes share a node name" in r.getMessage()
               for r in caplog.records)
    active.release()


class HangingLock(LeaderLock):
    """A lock whose check never answers (a server that stopped answering)."""

    where = "nowhere"
    can_expire = True

    def try_acquire(self) -> bool:
        return True

    def check(self) -> None:
        time.sleep(30)

    def release(self) -> None:
        pass


def test_keep_gives_up_leadership_when_a_check_does_not_answer() -> None:
    async def scenario() -> float:
        t0 = time.monotonic()
        with pytest.raises(LeadershipLost, match="did not answer a check within"):
            await keep(HangingLock("n"), interval_s=0.05, timeout_s=0.3)
        return time.monotonic() - t0

    assert asyncio.run(scenario()) < 1.5  # and the hanging thread does not hold us up


class SlowFileLock(FileLeaderLock):
    """A file lock whose checks answer late for a while (a process short of CPU)."""

    def __init__(self, path: Path, node: str, slow: int) -> None:
        super().__init__(path, node)
        self.slow = slow

    def check(self) -> None:
        if self.slow > 0:
            self.slow -= 1
            time.sleep(0.5)
        super().check()


def test_a_slow_check_of_a_file_lock_is_not_taken_for_a_lost_lock(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file lock is held by its descriptor: a check that answers late (the process
    starved of CPU under overload) says nothing about the lock, and the sidecar stays
    active; removing the file is still noticed."""
    lock = SlowFileLock(tmp_path / "x", "n", slow=3)
    assert lock.try_acquire()

    async def scenario() -> None:
        keeping = asyncio.ensure_future(keep(lock, interval_s=0.05, timeout_s=0.2))
        await asyncio.sleep(2.5)
        assert not keeping.done()  # three late checks: still the leader
        (tmp_path / "x.leader.n").unlink()
        with pytest.raises(LeadershipLost, match="removed or replaced"):
            await asyncio.wait_for(keeping, 3)

    with caplog.at_level(logging.INFO, logger="sidecar.leader"):
        asyncio.run(scenario())
    msgs = [r.getMessage() for r in caplog.records]
    assert len([m for m in msgs if "took over 0.2 s" in m]) == 1, msgs
    assert any("answers its checks again" in m for m in msgs), msgs
    lock.release()


# --- PostgreSQL: an advisory lock per node -------------------------------------------------

def test_pg_key_is_stable_and_apart_from_the_schema_lock() -> None:
    assert leader_key("node1") == leader_key("node1") == -2_862_743_930_984_754_504
    assert leader_key("node1") != leader_key("node2")
    assert _SCHEMA_LOCK not in {leader_key(f"node{i}") for i in range(1000)}


def test_pg_advisory_lock_one_holder_per_node() -> None:
    with fresh_database() as url:
        a, b, c = PgLeaderLock(url, "node1"), PgLeaderLock(url, "node1"), \
            PgLeaderLock(url, "node2")
        try:
            assert a.try_acquire()
            assert not b.try_acquire() and not b.try_acquire()
            assert "sidecar leader node1" in b.holder()
            assert c.try_acquire()  # another node: another key
            a.check()  # finds its own lock in pg_locks (the key's two halves)
            c.check()
            a.release()
            with pytest.raises(LeadershipLost):
                a.check()
            assert b.try_acquire()
            b.check()
        finally:
            for lock in (a, b, c):
                lock.release()


def _backend_of(url: str, node: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                           (f"sidecar leader {node}",)).fetchone()
    assert row is not None
    return int(row[0])


def test_pg_lost_lock_session_is_taken_again_when_nobody_else_took_it() -> None:
    """The server ends the leader's session (a restart, a connection cut): nobody holds
    the lock then, and the leader takes it again on a new session instead of stepping
    down (every node would otherwise stop at each server restart)."""
    with fresh_database() as url:
        leader, standby = PgLeaderLock(url, "node1"), PgLeaderLock(url, "node1")
        try:
            assert leader.try_acquire()
            first = _backend_of(url, "node1")
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (first,))

            async def watch() -> None:
                keeping = asyncio.create_task(keep(leader, interval_s=0.2))
                await asyncio.sleep(1.5)
                assert not keeping.done()  # still the leader
                keeping.cancel()

            asyncio.run(watch())
            assert _backend_of(url, "node1") != first  # a new session holds it
            assert not standby.try_acquire()
            leader.check()
        finally:
            leader.release()
            standby.release()


def test_pg_lost_lock_session_taken_by_the_standby_ends_the_leadership() -> None:
    with fresh_database() as url:
        leader, standby = PgLeaderLock(url, "node1"), PgLeaderLock(url, "node1")
        try:
            assert leader.try_acquire()
            assert not standby.try_acquire()
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (_backend_of(url, "node1"),))
            # The standby is first to the lock: the old leader must not take it back.
            deadline = time.monotonic() + 5
            while not standby.try_acquire():
                assert time.monotonic() < deadline
                time.sleep(0.02)

            async def watch() -> float:
                t0 = time.monotonic()
                with pytest.raises(LeadershipLost, match="another sidecar took the lock"):
                    await keep(leader, interval_s=0.2)
                return time.monotonic() - t0

            assert asyncio.run(watch()) < 3.0
            standby.check()
        finally:
            leader.release()
            standby.release()


def test_pg_standby_waits_out_a_server_it_cannot_reach(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    """No server at the URL: the standby says so once and keeps trying."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lock = PgLeaderLock(f"postgresql://nobody:secret@127.0.0.1:{port}/none", "n")

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(acquire(lock), 2.5)

    with caplog.at_level(logging.INFO, logger="sidecar.leader"):
        asyncio.run(scenario())
    msgs = [r.getMessage() for r in caplog.records]
    assert len([m for m in msgs if "cannot reach the leader lock" in m]) == 1, msgs
    assert not any("secret" in m for m in msgs)


# --- two real `sidecar run` on one database ------------------------------------------------

def _sidecar() -> list[str]:
    script = Path(sys.executable).with_name("sidecar")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sidecar"]


class Run:
    """One ``sidecar run`` in the background, with its log; killed by PID at the end."""

    def __init__(self, tmp: Path, name: str, db: Path | str, cfg: Path, node: str) -> None:
        self.log = tmp / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*_sidecar(), "--db", str(db), "run", "--config", str(cfg), "--node", node,
                 "--log-format", "json"], stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def messages(self) -> list[str]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(str(json.loads(line)["msg"]))
            except (ValueError, KeyError, TypeError):
                out.append(line)
        return out

    def wait_log(self, prefix: str, timeout: float = 20.0) -> float:
        t0 = time.monotonic()
        while not any(m.startswith(prefix) for m in self.messages()):
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.messages()}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"no {prefix!r} in {self.messages()}")
            time.sleep(0.02)
        return time.monotonic() - t0

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"did not stop on signal {sig}: {self.messages()}") from None


@pytest.fixture
def node_config(tmp_path: Path) -> tuple[Path, Path]:
    db = tmp_path / "sidecar.db"
    connect(db).close()
    with socket.socket() as s:  # an evapi port nobody listens on: no Kamailio needed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "sidecar.toml"
    cfg.write_text(f'[kamailio]\nevapi_port = {port}\n'
                   f'rpc_socket = "{tmp_path / "no-kamailio.sock"}"\nrpc_timeout = 0.2\n')
    return db, cfg


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    """The ``sidecar run`` processes a test starts: killed by PID at its end, whatever
    happened."""
    started: list[Run] = []
    yield started
    for r in started:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait(10)


def test_sidecar_run_standby_waits_and_takes_over_when_the_active_one_stops(
        tmp_path: Path, node_config: tuple[Path, Path], runs: list[Run]) -> None:
    db, cfg = node_config
    first = Run(tmp_path, "first", db, cfg, "n1")
    runs.append(first)
    first.wait_log("active for node n1 (lock ")
    first.wait_log("store loaded")
    second = Run(tmp_path, "second", db, cfg, "n1")
    runs.append(second)
    second.wait_log("standby for node n1: another sidecar is active (pid "
                    f"{first.proc.pid} since ")
    time.sleep(1.0)
    assert not any(m.startswith(("active", "store loaded")) for m in second.messages())
    other_node = Run(tmp_path, "other", db, cfg, "n2")  # another node: active at once
    runs.append(other_node)
    other_node.wait_log("active for node n2")
    # The active one stops (SIGTERM): it releases the lock once its store is flushed.
    assert first.stop() == 0
    assert second.wait_log("active for node n1: took over after", timeout=5) < 2
    second.wait_log("store loaded")
    # A standby stopped while it waits exits cleanly, at once.
    third = Run(tmp_path, "third", db, cfg, "n1")
    runs.append(third)
    third.wait_log("standby for node n1")
    t0 = time.monotonic()
    assert third.stop() == 0
    assert time.monotonic() - t0 < 3
    assert "standby for node n1 stopped" in third.messages()
    assert second.stop() == 0


def test_a_standby_is_hot_its_rate_plans_loaded_ahead_and_kept_up_to_date(
        tmp_path: Path, node_config: tuple[Path, Path], runs: list[Run]) -> None:
    db, cfg = node_config
    conn = connect(db)
    deck = tmp_path / "deck.csv"
    deck.write_text("destination;code;rate_usd;increment;effective_from\n"
                    + "".join(f"D{i};{100000 + i};0.01;1/1;2026-06-01\n"
                              for i in range(20_000)))
    import_deck(conn, "big", deck)
    try:
        first = Run(tmp_path, "first", db, cfg, "n1")
        runs.append(first)
        first.wait_log("store loaded: 0 accounts, 1 plans")
        second = Run(tmp_path, "second", db, cfg, "n1")
        runs.append(second)
        second.wait_log("standby for node n1")
        second.wait_log("standby: 1 rate plan(s) loaded ahead")
        # A plan imported while it waits is picked up too, before it takes over.
        deck.write_text("destination;code;rate_usd;increment;effective_from\n"
                        "DE;49;0.02;1/1;2026-06-01\n")
        import_deck(conn, "small", deck)
        time.sleep(2.5)  # a refresh (every 2 s) while standing by
        assert first.stop() == 0
        second.wait_log("active for node n1: took over after", timeout=5)
        second.wait_log("store loaded: 0 accounts, 2 plans")
        assert second.stop() == 0
    finally:
        conn.close()


def test_sidecar_run_that_loses_its_lock_stops_at_once_with_status_3(
        tmp_path: Path, node_config: tuple[Path, Path]) -> None:
    db, cfg = node_config
    run = Run(tmp_path, "active", db, cfg, "n1")
    try:
        run.wait_log("store loaded")
        Path(f"{db}.leader.n1").unlink()  # its lock is no longer the node's lock
        assert run.proc.wait(10) == 3
        msgs = run.messages()
        assert any(m.startswith("node n1: leadership lost (") and "no longer answering" in m
                   for m in msgs), msgs
        assert any(m.startswith("sidecar stopped") for m in msgs)
        assert "error: node n1: leadership lost" in run.log.read_text()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(10)


def test_sidecar_run_on_postgresql_takeover_after_kill_9_and_exit_when_the_lock_is_dropped(
        tmp_path: Path, node_config: tuple[Path, Path]) -> None:
    _, cfg = node_config
    with fresh_database() as conninfo:
        p = conninfo_to_dict(conninfo)
        url = f"postgresql://{p['user']}@{p['host']}:{p['port']}/{p['dbname']}"
        subprocess.run([*_sidecar(), "--db", url, "db", "upgrade"], check=True,
                       capture_output=True, timeout=60)
        runs = []
        try:
            first = Run(tmp_path, "first", url, cfg, "pg1")
            runs.append(first)
            first.wait_log("store loaded")
            second = Run(tmp_path, "second", url, cfg, "pg1")
            runs.append(second)
            second.wait_log("standby for node pg1: another sidecar is active (PostgreSQL "
                            "session ")
            assert first.stop(signal.SIGKILL) == -signal.SIGKILL
            assert second.wait_log("active for node pg1: took over after", timeout=5) < 2
            second.wait_log("store loaded")
            # The server ends the lock's session and someone else takes the lock before
            # it can be taken again: the sidecar stops answering and exits 3.
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (_backend_of(url, "pg1"),))
                admin.execute("SELECT pg_advisory_lock(%s)", (leader_key("pg1"),))
                assert second.proc.wait(10) == 3
            assert any(m.startswith("node pg1: leadership lost (the lock's connection to "
                                    "PostgreSQL ") and "another sidecar took the lock" in m
                       for m in second.messages())
        finally:
            for r in runs:
                if r.proc.poll() is None:
                    r.proc.kill()
                    r.proc.wait(10)
