"""One active sidecar per Kamailio node: a leader lock in the store, and a hot standby.

Two ``sidecar run`` processes for the same node (the same ``[node] name``, or
``--node``) may run at once; only the one that holds the node's leader lock talks to
Kamailio. The other waits (a *standby*), polling the lock off the event loop, and takes
over as soon as the lock is free: when the active one stops, or dies (even by ``kill
-9``: the lock is held by the process's file descriptor or database session, which the
kernel or the server ends with it).

- **SQLite store** (a path): an exclusive ``flock`` on a lock file beside the database,
  ``DB.leader.NODE`` (created 0600; never removed, so two processes always lock the same
  inode). The holder writes its PID, node and what it serves into it, for the standby's
  log. The descriptor is close-on-exec: a child (a recharge command) never inherits the
  lock and keeps it after the sidecar died.
- **PostgreSQL store** (a URL): ``pg_try_advisory_lock(KEY)`` on a connection of its own
  (autocommit, ``application_name`` ``sidecar leader NODE``). ``KEY`` is the first 8
  bytes of SHA-256 over a namespace and the node name, as a signed 64-bit integer:
  stable across releases and hosts, and apart from the schema lock of ``store/pg.py``.
  Advisory locks belong to one database, so two sidecar databases on a server never
  contend. The lock lives as long as the session: when the connection is lost the lock
  is gone, and another sidecar may take it.

While leading, :func:`keep` checks the lock every second in a thread (the PostgreSQL
session still holds it; the lock file is still the one at its path) and raises
:class:`LeadershipLost` when it is not, or when a check does not answer within 2 s:
the caller must stop answering Kamailio at once. A PostgreSQL server that dropped the
session is therefore noticed within about 3 s; ``sidecar run`` also waits, once it holds
the lock, until Kamailio counts no other evapi client before it connects.

Nothing here blocks the event loop: every lock operation runs in a daemon thread of its
own (:func:`off_loop`), so one that hangs (a server that stopped answering) never holds
up the loop, nor the process's exit.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from ..config import node_name_problem
from ..store.migrate import is_url

if TYPE_CHECKING:
    from ..store.pg import PgConnection

log = logging.getLogger("sidecar.leader")

T = TypeVar("T")

#: How often a standby tries the lock (a file lock costs a system call; a PostgreSQL
#: try costs a round trip to the server).
POLL_FILE_S = 0.1
POLL_PG_S = 0.5
#: How often the leader checks that it still holds the lock, and how long one check may
#: take before leadership counts as lost.
CHECK_INTERVAL_S = 1.0
CHECK_TIMEOUT_S = 2.0
#: The PostgreSQL lock connection gives up on unacknowledged data after this long
#: (``tcp_user_timeout``), so a check on a dead network fails rather than hangs.
PG_TCP_USER_TIMEOUT_MS = 2000

_PG_NAMESPACE = b"sidecar leader lock\0"


class LeaderLockError(RuntimeError):
    """The lock cannot be used at all (its file cannot be created): the sidecar cannot
    know whether another one is active, so it must not start."""


class LeadershipLost(RuntimeError):
    """The leader no longer holds its lock: another sidecar may be active already."""


class SessionLost(LeadershipLost):
    """The lock's database session ended (a server restart, a lost connection): nobody
    is known to hold the lock yet, so the leader may take it again on a new session."""


#: How long a leader whose lock session ended keeps trying to take the lock again on a
#: new session before it gives up leadership. Detection (a check every 1 s that may take
#: 2 s) plus this stays under the 5 s a new leader waits for Kamailio to count no other
#: evapi client (run.FENCE_S): a standby that took the lock meanwhile never overlaps.
REGAIN_WITHIN_S = 1.9


class LeaderLock(abc.ABC):
    """A node's leader lock. Every method blocks (a system call, a round trip to the
    database): call them off the event loop (:func:`off_loop`)."""

    def __init__(self, node: str) -> None:
        problem = node_name_problem(node)
        if problem:
            raise ValueError(f"node name {problem}")
        self.node = node

    @property
    @abc.abstractmethod
    def where(self) -> str:
        """Where the lock lives, for logs (never with a password)."""

    @abc.abstractmethod
    def try_acquire(self) -> bool:
        """Take the lock if it is free; True when this process holds it (now or already)."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise :class:`LeadershipLost` unless this process still holds the lock."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the lock up (a no-op when not held)."""

    def holder(self) -> str:
        """Who holds the lock, as far as can be told (for the standby's log); "" unknown."""
        return ""

    def holder_serves(self) -> str:
        """What the holder said it serves (its evapi endpoint), "" when unknown."""
        return ""

    @property
    def poll_s(self) -> float:
        """How often a standby tries the lock."""
        return POLL_FILE_S

    #: Whether the lock can be lost without this process knowing (a database session
    #: the server ended): then a check that does not answer in time counts as lost. A
    #: file lock lasts as long as its descriptor: a slow check only means the process
    #: was starved of CPU.
    can_expire = False


class FileLeaderLock(LeaderLock):
    """``flock(LOCK_EX | LOCK_NB)`` on ``DB.leader.NODE`` beside a SQLite database."""

    def __init__(self, db: str | os.PathLike[str], node: str, *, serves: str = "") -> None:
        super().__init__(node)
        self.path = Path(f"{os.fspath(db)}.leader.{node}")
        self.serves = serves
        self._fd: int | None = None

    @property
    def where(self) -> str:
        return str(self.path)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise LeaderLockError(f"cannot open the lock file {self.path}: "
                                  f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise LeaderLockError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        if not self._same_file(fd):  # removed (and maybe re-created) meanwhile: try again
            os.close(fd)
            return False
        self._fd = fd
        doc = {"pid": os.getpid(), "node": self.node, "serves": self.serves,
               "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with contextlib.suppress(OSError):  # for people and the standby's log only
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(doc) + "\n").encode(), 0)
        return True

    def _same_file(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def check(self) -> None:
        if self._fd is None:
            raise LeadershipLost(f"{self.path}: not locked by this process")
        if not self._same_file(self._fd):
            # Someone removed the file: another sidecar could now lock a new one.
            raise LeadershipLost(f"{self.path} was removed or replaced")

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # the flock goes with the last descriptor

    def _holder_doc(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def holder(self) -> str:
        doc = self._holder_doc()
        if not doc:
            return ""
        out = f"pid {doc.get('pid', '?')} since {doc.get('since', '?')}"
        return out + (f", serving {doc['serves']}" if doc.get("serves") else "")

    def holder_serves(self) -> str:
        return str(self._holder_doc().get("serves") or "")


def leader_key(node: str) -> int:
    """The PostgreSQL advisory lock key of ``node``: a signed 64-bit integer, stable."""
    digest = hashlib.sha256(_PG_NAMESPACE + node.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _key_parts(key: int) -> tuple[int, int]:
    """How ``pg_locks`` shows a bigint advisory key: (classid, objid), its high and low
    32 bits (``objsubid`` 1)."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


class PgLeaderLock(LeaderLock):
    can_expire = True
    """``pg_try_advisory_lock`` on a dedicated connection to the PostgreSQL store."""

    def __init__(self, url: str, node: str) -> None:
        super().__init__(node)
        self.url = url
        self.key = leader_key(node)
        self._conn: PgConnection | None = None
        self._held = False
        # One operation at a time on the connection: a try that outlived its caller's
        # patience (a slow connect) must not race the next one.
        self._mutex = threading.Lock()

    @property
    def where(self) -> str:
        from ..store.pg import redact

        return f"PostgreSQL {redact(self.url)}"

    @property
    def poll_s(self) -> float:
        return POLL_PG_S

    @property
    def held(self) -> bool:
        return self._held

    def _connection(self) -> PgConnection:
        if self._conn is None or self._conn.closed:
            from psycopg.conninfo import make_conninfo

            from ..store.pg import connect_pg

            self._conn = connect_pg(make_conninfo(
                self.url, application_name=f"sidecar leader {self.node}"[:63],
                tcp_user_timeout=PG_TCP_USER_TIMEOUT_MS))
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def try_acquire(self) -> bool:
        import psycopg

        with self._mutex:
            if self._held:
                return True
            try:
                row = self._connection().execute("SELECT pg_try_advisory_lock(%s)",
                                                  (self.key,)).fetchone()
            except psycopg.Error:
                self._drop()  # a new connection next time
                raise
            self._held = bool(row and row[0])
            return self._held

    def check(self) -> None:
        import psycopg

        classid, objid = _key_parts(self.key)
        with self._mutex:
            if not self._held or self._conn is None:
                raise LeadershipLost("the advisory lock is not held by this process")
            try:
                row = self._conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
                    " AND pid = pg_backend_pid() AND granted AND classid::int8 = %s"
                    " AND objid::int8 = %s AND objsubid = 1)", (classid, objid)).fetchone()
            except psycopg.Error as exc:
                self._held = False
                self._drop()
                raise SessionLost(f"the lock's connection to {self.where} was lost "
                                  f"({type(exc).__name__})") from None
            if not (row and row[0]):
                self._held = False
                raise LeadershipLost(f"the advisory lock on {self.where} is no longer held")

    def release(self) -> None:
        with self._mutex:
            if self._held and self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            self._held = False
            self._drop()  # the session's end releases it in any case

    def holder(self) -> str:
        with self._mutex:
            return self._holder()

    def _holder(self) -> str:
        if self._conn is None:
            return ""
        classid, objid = _key_parts(self.key)
        try:
            row = self._conn.execute(
                "SELECT a.pid, host(a.client_addr), a.application_name FROM pg_locks l"
                " LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND l.classid::int8 = %s AND l.objid::int8 = %s AND l.objsubid = 1",
                (classid, objid)).fetchone()
        except Exception:
            return ""
        if row is None:
            return ""
        pid, addr, app = row
        return f"PostgreSQL session {pid} from {addr or 'a local socket'} ({app or '?'})"


def leader_lock(store: str | os.PathLike[str], node: str, *, serves: str = "") -> LeaderLock:
    """The leader lock of ``node`` for a store: a PostgreSQL URL or a SQLite path.
    ``serves`` (the evapi endpoint) goes into a lock file, for the standby's log."""
    target = os.fspath(store)
    if is_url(target):
        return PgLeaderLock(target, node)
    return FileLeaderLock(target, node, serves=serves)


# --- off the event loop -------------------------------------------------------------------

async def off_loop(fn: Callable[[], T], timeout: float | None = None) -> T:
    """``fn()`` in a daemon thread of its own; its result or exception. After ``timeout``
    seconds :class:`TimeoutError` (the thread is left to finish: a daemon thread, unlike
    the default executor's, never delays the process's exit)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not fut.done():
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def work() -> None:
        try:
            result: Any = fn()
            ok = True
        except BaseException as exc:
            result, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, ok, result)

    threading.Thread(target=work, name="leader-lock", daemon=True).start()
    # Not asyncio.wait_for: on Python 3.11 it returns the result when the task is cancelled
    # in the same loop turn as ``fut`` settles, and the cancellation is lost (a standby
    # told to stop went on waiting). asyncio.timeout delivers it.
    async with asyncio.timeout(timeout):
        return await fut


async def acquire(lock: LeaderLock, *, poll_s: float | None = None) -> float:
    """Wait until this process holds ``lock``; the seconds it waited as a standby.

    Logs once that it is a standby (and who is active), once per kind of problem
    reaching the lock (a PostgreSQL server down: it keeps trying), and when it becomes
    active. Raises :class:`LeaderLockError` when the lock cannot be used at all."""
    poll = lock.poll_s if poll_s is None else poll_s
    started = time.monotonic()
    standby = False
    problem = ""
    while True:
        try:
            # (A PostgreSQL try may have to connect first: connect_timeout is 5 s.)
            got = await off_loop(lock.try_acquire, timeout=15.0)
        except LeaderLockError:
            raise
        except Exception as exc:  # the store cannot be reached: keep trying, say so once
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if text != problem:
                problem = text
                log.warning("node %s: cannot reach the leader lock on %s (%s); retrying",
                            lock.node, lock.where, text)
            await asyncio.sleep(max(poll, 1.0))
            continue
        if got:
            waited = time.monotonic() - started
            if standby:
                log.info("active for node %s: took over after %.1f s as standby (lock %s)",
                         lock.node, waited, lock.where)
            else:
                log.info("active for node %s (lock %s)", lock.node, lock.where)
            return waited
        if not standby:
            standby = True
            holder = await _quietly(lock.holder)
            log.info("standby for node %s: another sidecar is active%s; waiting for the "
                     "lock %s", lock.node, f" ({holder})" if holder else "", lock.where)
            theirs = await _quietly(lock.holder_serves)
            ours = lock.serves if isinstance(lock, FileLeaderLock) else ""
            if theirs and ours and theirs != ours:
                log.warning("node %s: the active sidecar serves %s, this one %s: two "
                            "Kamailio nodes share a node name; give each its own "
                            "[node] name (or --node)", lock.node, theirs, ours)
        problem = ""
        await asyncio.sleep(poll)


async def _quietly(fn: Callable[[], str]) -> str:
    try:
        return await off_loop(fn, timeout=2.0)
    except Exception:
        return ""


async def keep(lock: LeaderLock, *, interval_s: float = CHECK_INTERVAL_S,
               timeout_s: float = CHECK_TIMEOUT_S) -> NoReturn:
    """Check every ``interval_s`` that this process still holds ``lock``; raise
    :class:`LeadershipLost` when it does not, or when a check takes longer than
    ``timeout_s`` (a server that stopped answering may have ended the session)."""
    slow = False
    while True:
        await asyncio.sleep(interval_s)
        try:
            await off_loop(lock.check, timeout=timeout_s)
            if slow:
                slow = False
                log.info("node %s: the leader lock answers its checks again", lock.node)
        except SessionLost as exc:
            await _regain(lock, exc)
        except LeadershipLost:
            raise
        except TimeoutError:
            if lock.can_expire:
                raise LeadershipLost(f"the leader lock on {lock.where} did not answer a "
                                     f"check within {timeout_s:.0f} s") from None
            if not slow:  # held by its descriptor: still ours, the process is starved
                slow = True
                log.warning("node %s: a check of the leader lock %s took over %g s (the "
                            "process is short of CPU); a file lock cannot expire: still "
                            "active", lock.node, lock.where, timeout_s)
        except Exception as exc:  # it cannot be confirmed: as good as lost
            raise LeadershipLost(f"checking the leader lock on {lock.where} failed: "
                                 f"{type(exc).__name__}: {exc}") from None


async def _regain(lock: LeaderLock, lost: SessionLost,
                  within_s: float = REGAIN_WITHIN_S) -> None:
    """Take the lock again on a new session within ``within_s``, else raise
    :class:`LeadershipLost` (also at once when another sidecar holds it now)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    log.warning("node %s: %s; taking the leader lock again", lock.node, lost)
    problem = ""
    while (left := t0 + within_s - loop.time()) > 0:
        try:
            got = await off_loop(lock.try_acquire, timeout=left)
        except TimeoutError:
            break
        except LeaderLockError:
            raise
        except Exception as exc:  # the server is not back yet
            problem = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(min(0.2, max(0.0, t0 + within_s - loop.time())))
            continue
        if not got:
            raise LeadershipLost(f"{lost}; another sidecar took the lock meanwhile")
        log.warning("node %s: leader lock taken again after %.1f s", lock.node,
                    loop.time() - t0)
        return
    raise LeadershipLost(f"{lost}; not taken again within {within_s:.1f} s"
                         + (f" ({problem})" if problem else ""))


async def release(lock: LeaderLock, timeout_s: float = 5.0) -> None:
    """Give the lock up, off the loop; a release that hangs is left behind (the lock
    goes with the process in any case)."""
    try:
        await off_loop(lock.release, timeout=timeout_s)
    except Exception as exc:
        log.warning("node %s: releasing the leader lock: %s", lock.node, exc)
