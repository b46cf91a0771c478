"""Nodes failing for real: a node's sidecar killed for good, and the shared PostgreSQL
restarted under load. Real Kamailios with the shipped configuration, real ``sidecar run``
processes, real SIPp calls with RTP; every process is stopped by PID, also on failure,
and the PostgreSQL server is running again when a test ends, whatever happened.

1. Two nodes share one store (SQLite or PostgreSQL) with a 3 s lease. Node 1's sidecar is
   killed with SIGKILL while its calls are up, and stays down: node 0 settles node 1's
   calls once the lease has run out, each once, billed its paid time and never more;
   node 0's own calls go on and end normally. Node 1's Kamailio ends its calls (the
   callers' BYE, or the dialog timeout: the backstop the authorization set). When node 1's
   sidecar comes back, Kamailio replays the `end` events it kept and the sidecar adopts
   the dialog still up (the store grants it nothing: it is ended): nothing charged twice.
2. Two nodes on PostgreSQL carry a steady stream of short calls while the server is
   restarted (or stopped for 6 s): every completed call has exactly one CDR, none twice,
   the ledger verifies, offers refused meanwhile (503, fail-closed) are charged nothing,
   whatever was journaled is applied. A sidecar whose leader lock's session ended with the
   server exits (status 3); the test restarts it as a supervisor would.
3. A store outage longer than the lease must not make one live node settle the other's
   calls as a dead node's.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sidecar.lab import Every
from sidecar.lab.nodes import NodesLab, StoreTarget
from sidecar.lab.sipp import SippResult
from sidecar.store.accounts import verify_ledger
from tests.e2e.test_live_sidecar import DIALLED
from tests.e2e.test_two_nodes import Reader, _prepare

pytestmark = pytest.mark.timeout(240)

PER_SECOND = Decimal("0.001")  # the deck's 0.06/min on 1/1 for DIALLED
CHUNK_S = 5  # paid time grows by 5 s, 2.5 s before it runs out
LEASE_S = 3
NODE_CONFIG = f"[node]\nlease_s = {LEASE_S}\n"

# Prepaid, postpaid, and a prepaid account whose credit buys 16 s: the authorization
# gives Kamailio a 16 s maximum (dialog timeout 17 s), the backstop when no sidecar meters.
LOW_CREDIT = Decimal("0.016")
ACCOUNTS = (
    ("PRE", "--plan", "retail", "--balance", "10", "--chunk-seconds", str(CHUNK_S)),
    ("POST", "--plan", "retail", "--kind", "postpaid", "--credit-limit", "100",
     "--chunk-seconds", str(CHUNK_S)),
    ("LOW", "--plan", "retail", "--balance", str(LOW_CREDIT), "--chunk-seconds", str(CHUNK_S)),
)
OPENING = {"PRE": Decimal("10"), "POST": Decimal(0), "LOW": LOW_CREDIT}

NODE0_MS = 14_000  # node 0's calls: up before the kill, ending after the takeover
NODE1_MS = 12_000  # node 1's calls ended by their callers, after the takeover
LOW_MS = 40_000  # node 1's LOW call: Kamailio's dialog timeout ends it first (~17 s)
LONG_MS = 30_000  # node 1's long call: still up when node 1's sidecar comes back


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreTarget]:
    """The store both nodes share with the deck and the accounts: a SQLite file, or a
    fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield _prepare(tmp_path / "shared.db", tmp_path, *ACCOUNTS)
        return
    from tests.store.pgdb import as_url, fresh_database

    with fresh_database() as conninfo:
        yield _prepare(as_url(conninfo), tmp_path, *ACCOUNTS)


def _wait_for(cond: Any, timeout: float, what: str = "condition") -> float:
    """Poll ``cond`` every 50 ms; the seconds it took to hold."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not met within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - t0


def _invites(r: SippResult) -> set[str]:
    return {m.call_id for m in r.sent("INVITE") if not m.is_response}


def _byes(r: SippResult, *, sent: bool) -> set[str]:
    msgs = r.sent("BYE") if sent else r.received("BYE")
    return {m.call_id for m in msgs if not m.is_response}


def _talk_s(r: SippResult) -> dict[str, float]:
    """Per call, as the caller saw it: from the 200 OK to the BYE (either side's)."""
    ok = {m.call_id: m.timestamp for m in r.received("INVITE") if m.status_code == 200}
    bye = {m.call_id: m.timestamp for m in r.messages if m.method == "BYE"
           and not m.is_response}
    return {cid: bye[cid] - ok[cid] for cid in ok if cid in bye}


def _log(path: Path) -> list[str]:
    """The messages of a sidecar's JSON log."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(str(json.loads(line)["msg"]))
        except (ValueError, KeyError, TypeError):
            out.append(line)
    return out


def _money(reader: Reader) -> dict[str, object]:
    """What a second settlement would change: the ledger, the balances, the CDRs."""
    return {
        "ledger": sorted((str(r["account"]), str(r["kind"]), Decimal(str(r["amount"])),
                          str(r["call_ref"])) for r in reader.rows(
            "SELECT account, kind, amount, call_ref FROM ledger")),
        "accounts": {str(r["code"]): (Decimal(str(r["balance"])), Decimal(str(r["held"])))
                     for r in reader.rows("SELECT code, balance, held FROM accounts")},
        "cdrs": sorted((str(r["call_id"]), str(r["ended_by"]), str(r["charged"])) for r in
                       reader.rows("SELECT call_id, ended_by, charged FROM cdrs")),
    }


def test_a_node_down_for_good_has_its_calls_settled_once_after_the_lease(
        store: StoreTarget, tmp_path: Path) -> None:
    """Node 1's sidecar killed for good: its reservations are settled once after the
    lease, never beyond paid time."""
    reader = Reader(store)

    def live(node: str) -> dict[str, dict[str, Any]]:
        return {str(r["call_ref"]): r for r in
                reader.rows("SELECT * FROM live_calls WHERE node = ?", node)}

    try:
        with NodesLab(tmp_path / "lab", store, 2, extra_config=NODE_CONFIG) as lab:
            n0, n1 = lab.names
            callee0 = lab[0].uas("uas.xml", calls=4, timeout_s=90)
            callee1 = lab[1].uas("uas.xml", calls=6, timeout_s=90)
            t0 = time.monotonic()
            callers0 = [lab[0].uac(account_code=code, dialled=DIALLED, duration_ms=NODE0_MS,
                                   calls=2, timeout_s=60, extra=["-r", "10"])
                        for code in ("PRE", "POST")]
            callers1 = [lab[1].uac(account_code=code, dialled=DIALLED, duration_ms=NODE1_MS,
                                   calls=2, timeout_s=60, extra=["-r", "10"])
                        for code in ("PRE", "POST")]
            low = lab[1].uac(account_code="LOW", dialled=DIALLED, duration_ms=LOW_MS,
                             timeout_s=70)
            long_call = lab[1].uac(account_code="POST", dialled=DIALLED, duration_ms=LONG_MS,
                                   timeout_s=70)
            # Every call answered and reserved for; node 1's past their first renewal
            # (10 s paid), none near the next (at 7.5 s).
            _wait_for(lambda: len(live(n0)) == 4 and len(live(n1)) == 6 and all(
                int(r["paid_seconds"]) == 2 * CHUNK_S for r in live(n1).values()),
                timeout=20, what="calls answered, paid 10 s")
            at_kill = live(n1)
            lab[1].stop_sidecar(kill=True)
            killed = time.monotonic()
            # The store still holds node 1's calls until their lease runs out (the last
            # renewal was at most lease/3 before the kill): nothing settled before that.
            assert live(n1).keys() == at_kill.keys()
            takeover_s = _wait_for(lambda: not live(n1), timeout=LEASE_S + 5,
                                   what="node 1's calls settled by node 0")
            # Node 0's calls are its own: still up, untouched.
            assert len(live(n0)) == 4
            settled_at = time.monotonic() - t0
            results0 = [c.wait() for c in callers0]
            results1 = [c.wait() for c in callers1]
            r_low = low.wait()
            # Node 1's Kamailio ended every call (callers' BYEs, the LOW call's dialog
            # timeout); what the kept `end` events would settle again is in the store.
            time.sleep(0.5)
            money_before = _money(reader)
            seen = len(_log(lab[1].sidecar_log))
            lab[1].start_sidecar()
            restarted_at = time.monotonic() - t0
            _wait_for(lambda: any(m.startswith("reconciled with Kamailio")
                                  for m in _log(lab[1].sidecar_log)[seen:]), timeout=10,
                      what="node 1's sidecar reconciled")
            r_long = long_call.wait()
            ru = [callee0.wait(), callee1.wait()]
            _wait_for(lambda: len(reader.rows("SELECT 1 FROM cdrs")) >= 4, timeout=10,
                      what="node 0's CDRs")
            time.sleep(1.0)  # a second settlement, if any, lands
            logs = lab.log_tail(40)
            log0, log1 = _log(lab[0].sidecar_log), _log(lab[1].sidecar_log)[seen:]
        money_after = _money(reader)
        cdrs = reader.rows("SELECT * FROM cdrs ORDER BY id")
        left = reader.rows("SELECT call_ref FROM live_calls")
        checks = verify_ledger(reader.conn)
    finally:
        reader.close()

    print(f"\n[{'sqlite' if isinstance(store, Path) else 'postgresql'}] kill -9 of node 1's "
          f"sidecar {killed - t0:.1f} s after the first INVITE; node 0 settled its "
          f"{len(at_kill)} calls {takeover_s:.1f} s after the kill (lease {LEASE_S} s), "
          f"{settled_at:.1f} s after start; node 1's sidecar restarted at {restarted_at:.1f} s")
    for line in log1:
        if "replayed" in line or line.startswith(("reconciled", "cdr ", "end ")):
            print("  node 1:", line)

    # Every call went through and was ended (no SIPp failure).
    for r in [*results0, *results1, r_low, r_long]:
        assert r.calls_ok, r.output_tail() + logs
    assert all(r.successful_calls == n for r, n in zip(ru, (4, 6), strict=True)), logs
    ids0 = set().union(*map(_invites, results0))
    ids1 = set().union(*map(_invites, [*results1, r_low, r_long]))
    assert len(ids0) == 4 and len(ids1) == 6 and at_kill.keys() == ids1

    # Exactly one CDR per call.
    by_id: dict[str, dict[str, Any]] = {}
    for c in cdrs:
        assert str(c["call_id"]) not in by_id, ("two CDRs", c, by_id.get(str(c["call_id"])))
        by_id[str(c["call_id"])] = c
    assert by_id.keys() == ids0 | ids1, cdrs

    # Node 1's calls: settled by node 0 once the lease ran out, billed what they had paid
    # when the node died (never beyond), charged what was reserved. Each ran longer.
    talk = {cid: t for r in [*results1, r_low, r_long] for cid, t in _talk_s(r).items()}
    for cid in ids1:
        c, paid = by_id[cid], at_kill[cid]
        assert c["disposition"] == "answered", c
        assert c["ended_by"] == f"node {n0}", c
        assert str(c["end_reason"]).startswith(f"lease expired: node {n1}"), c
        assert c["node"] == n1, c
        assert int(c["billed_seconds"]) == int(paid["paid_seconds"]) == 2 * CHUNK_S, (c, paid)
        assert Decimal(str(c["charged"])) == Decimal(str(c["cost"])) \
            == Decimal(str(paid["reserved"])) == PER_SECOND * 2 * CHUNK_S, (c, paid)
        assert Decimal(str(c["written_off"])) == 0, c
        assert talk[cid] > int(c["billed_seconds"]), (cid, talk[cid], c)
    # Kamailio ended them: the short calls by their callers' BYE, the LOW call by its
    # dialog timeout (max_duration 16 s + 2 s grace: BYE from the proxy to the caller).
    for r in results1:
        assert _byes(r, sent=True) == _invites(r), r.output_tail()
        assert all(abs(talk[cid] - NODE1_MS / 1000) < 1.5 for cid in _invites(r)), talk
    assert _byes(r_low, sent=False) == _invites(r_low), r_low.output_tail() + logs
    (low_id,) = _invites(r_low)
    assert 17 <= talk[low_id] <= 20, talk[low_id]

    # Node 0's calls: untouched, settled by node 0 itself at their real end.
    for cid in ids0:
        c = by_id[cid]
        assert (c["disposition"], c["ended_by"], c["end_reason"], c["node"]) == (
            "answered", "caller", "bye", n0), c
        assert NODE0_MS - 100 <= int(c["duration_ms"]) <= NODE0_MS + 1_500, c
        assert Decimal(str(c["charged"])) == PER_SECOND * int(c["billed_seconds"]), c

    # Node 1's sidecar back: Kamailio replays the 5 `end` events it kept (4 BYEs, the
    # LOW call's timeout) and the sidecar adopts the long call from dlg.list. The store
    # grants a call settled already nothing, so the long call is ended at once (it is
    # not metered a second time); nothing more charged, no CDR more or changed.
    assert "evapi: Kamailio replayed 5 event(s) kept while no sidecar was connected" \
        in log1, log1[-30:]
    assert "reconciled with Kamailio: 1 dialogs, 1 adopted, 0 settled as lost" in log1, \
        log1[-30:]
    (long_id,) = _invites(r_long)
    assert _byes(r_long, sent=False) == {long_id}, r_long.output_tail()
    assert restarted_at - 5 < talk[long_id] < restarted_at + 2, (talk[long_id], restarted_at)
    assert money_after == money_before, (money_before, money_after)
    takeovers = [m for m in log0 if m.startswith("settled call ")]
    assert len(takeovers) == len(ids1), takeovers

    # The money: one charge row per call, balances = opening - charges, no hold left.
    ledger: list[tuple[str, str, Decimal, str]] = money_after["ledger"]  # type: ignore[assignment]
    charges = [(acc, ref) for acc, kind, _, ref in ledger if kind == "charge"]
    assert sorted(ref for _, ref in charges) == sorted(ids0 | ids1), charges
    assert not left
    accounts: dict[str, tuple[Decimal, Decimal]] = money_after["accounts"]  # type: ignore[assignment]
    for code, opening in OPENING.items():
        charged = sum((Decimal(str(c["charged"])) for c in cdrs if c["account"] == code),
                      Decimal(0))
        assert accounts[code] == (opening - charged, 0), (code, accounts[code], charged)
    assert checks and all(not c.problems for c in checks), checks


# --- 2. PostgreSQL restarted mid-load -----------------------------------------------------
RATE = 10  # calls/s through each node
CALLS = 250  # per node: 25 s of offers
#: Seconds after PostgreSQL accepts connections again by which every node serves again: a
#: node whose sidecar stepped down (its lock's session ended) has it restarted, waiting as
#: the standby until it takes its lock again (polled every second).
SERVING_AGAIN_S = 3.0
CALL_MS = 3_000
POST_LIMIT = Decimal("1000")
PRE_BALANCE = Decimal("100")


def _pg_cluster() -> tuple[str, str] | None:
    """The Debian cluster (version, name) serving the tests' PostgreSQL port, if it runs
    here."""
    from psycopg.conninfo import conninfo_to_dict

    from tests.store.pgdb import SERVER_URL

    params = conninfo_to_dict(SERVER_URL)
    if str(params.get("host", "")) not in ("127.0.0.1", "localhost", ""):
        return None
    try:
        out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] == str(params.get("port", "5432")) and f[3] == "online":
            return f[0], f[1]
    return None


def _pg_accepts(timeout_s: int = 2) -> bool:
    import psycopg

    from tests.store.pgdb import SERVER_URL

    try:
        with psycopg.connect(SERVER_URL, connect_timeout=timeout_s) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


class PgProbe(Every):
    """Connects to the server every 50 ms in a thread: when it stopped and started
    accepting connections (monotonic times)."""

    def __init__(self) -> None:
        super().__init__("pg-probe")
        self.samples: list[tuple[float, bool]] = []

    def tick(self) -> None:
        self.samples.append((time.monotonic(), _pg_accepts(1)))

    @property
    def down(self) -> tuple[float, float] | None:
        """From the first refused connection to the first accepted one after it."""
        first = next((t for t, ok in self.samples if not ok), None)
        if first is None:
            return None
        back = next((t for t, ok in self.samples if ok and t > first), None)
        return None if back is None else (first, back)


def _ensure_pg_up(cluster: tuple[str, str], timeout: float = 60.0) -> None:
    """The server runs and accepts connections again (started if the restart left it
    down)."""
    if subprocess.run(["pg_ctlcluster", *cluster, "status"], capture_output=True,
                      check=False).returncode != 0:
        subprocess.run(["pg_ctlcluster", *cluster, "start"], capture_output=True, check=False)
    _wait_for(_pg_accepts, timeout=timeout, what="PostgreSQL accepting connections")


@pytest.fixture
def pg_store(tmp_path: Path) -> Iterator[tuple[str, tuple[str, str]]]:
    """A fresh PostgreSQL database with the deck, a postpaid and a prepaid account (60 s
    chunks), and the cluster serving it (which the test restarts)."""
    cluster = _pg_cluster()
    if cluster is None:
        pytest.skip("no local Debian PostgreSQL cluster on the tests' port to restart")
    from tests.store.pgdb import as_url, fresh_database

    with fresh_database() as conninfo:
        url = _prepare(as_url(conninfo), tmp_path,
                       ("POST", "--plan", "retail", "--kind", "postpaid", "--credit-limit",
                        str(POST_LIMIT)),
                       ("PRE", "--plan", "retail", "--balance", str(PRE_BALANCE)))
        yield str(url), cluster


class Supervisor(Every):
    """What systemd's ``Restart=on-failure`` does for ``sidecar run``: a node's sidecar that
    exits (status 3: its leader lock's session was lost) is started again at once, as
    that node's sidecar (waiting for the lock, then adopting the node's calls), until the
    block ends. The replacements are the lab's spawned sidecars: stopped by PID with it."""

    def __init__(self, lab: NodesLab) -> None:
        self.lab = lab
        self.current: list[int | None] = lab.sidecar_pids()
        self.exits: list[tuple[int, int, float]] = []  # (node, exit status, monotonic)
        self.logs: list[list[Path]] = [[node.sidecar_log] for node in lab]
        self.errors: list[str] = []
        super().__init__("supervisor")

    def tick(self) -> None:
        for i, node in enumerate(self.lab):
            pid = self.current[i]
            code = None if pid is None else node.sidecar_exit_code(pid)
            if pid is None or code is None:
                continue
            self.exits.append((i, code, time.monotonic()))
            name = f"restart{len(self.exits)}"
            try:
                self.current[i] = node.spawn_sidecar(name)
            except Exception as exc:  # reported by the test
                self.errors.append(f"node {i}: {type(exc).__name__}: {exc}")
                self.current[i] = None
            self.logs[i].append(node.spawned_log(name))


#: What a sidecar logs when its store connections are cut (its own batch, its reader, its
#: change listener).
STORE_LOST = ("store failed", "could not read the store's changes",
              "lost the store's change notifications")


def _final_codes(r: SippResult) -> dict[str, int]:
    """Each call's final INVITE response code as the caller received it."""
    out: dict[str, int] = {}
    for m in r.received("INVITE"):
        code = m.status_code
        if code is not None and code >= 200:
            out.setdefault(m.call_id, code)
    return out


def _pg_ctl(cluster: tuple[str, str], action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pg_ctlcluster", *cluster, action], capture_output=True,
                          text=True, check=False, timeout=60)


@pytest.mark.parametrize("down_s", [0, 6, 11], ids=["restart", "down6s", "down11s"])
def test_postgresql_restarted_during_calls_loses_no_cdr_and_doubles_none(
        pg_store: tuple[str, tuple[str, str]], down_s: int, tmp_path: Path) -> None:
    """PostgreSQL restarted during calls loses nothing; no CDR lost, none doubled.

    ``restart``: ``pg_ctlcluster restart`` (the server refuses connections for well under
    a second here). ``down6s``: stopped for 6 s, longer than a batch waits for a pool
    connection (5 s), so that settlements go to the journal and are applied later.
    ``down11s``: stopped for 11 s, so that each sidecar that stepped down (its lock's
    session ended) hands what it held to its journal and ends while the server is still
    down, and its restart waits for the server as the standby, then applies the journal."""
    url, cluster = pg_store
    try:
        with NodesLab(tmp_path / "lab", url, 2) as lab, Supervisor(lab) as sup:
            callees = lab.uas("uas.xml", calls=CALLS, timeout_s=90)
            t0 = time.monotonic()
            callers = [node.uac(account_code=code, dialled=DIALLED, duration_ms=CALL_MS,
                                calls=CALLS, timeout_s=80, extra=["-r", str(RATE)])
                       for node, code in zip(lab, ("POST", "PRE"), strict=True)]
            reader = Reader(url)
            try:  # a few seconds of calls settled before the restart
                _wait_for(lambda: len(reader.rows("SELECT 1 FROM cdrs")) >= 2 * 2 * RATE,
                          timeout=20, what="the first CDRs")
            finally:
                reader.close()
            with PgProbe() as probe:
                wall_offset = time.time() - time.monotonic()  # SIPp logs wall-clock times
                restart_at = time.monotonic()
                if down_s:
                    steps = [_pg_ctl(cluster, "stop")]
                    time.sleep(down_s)
                    steps.append(_pg_ctl(cluster, "start"))
                else:
                    steps = [_pg_ctl(cluster, "restart")]
                _ensure_pg_up(cluster)
                restart_s = time.monotonic() - restart_at
                time.sleep(0.2)
            assert all(done.returncode == 0 for done in steps), [d.stderr for d in steps]
            results = [c.wait() for c in callers]
            # The callees see every call that reached them end (refused ones never did).
            reached = [{cid for cid, code in _final_codes(r).items() if code == 200}
                       for r in results]

            def ended_at_callees() -> bool:
                return all(ids <= {m.call_id for m in c.result().messages
                                   if m.method == "BYE" and m.is_response}
                           for c, ids in zip(callees, reached, strict=True))
            _wait_for(ended_at_callees, timeout=15, what="every call ended at its callee")
            uas = [c.stop() for c in callees]
            # Every settlement in the store, the journals applied and emptied.
            reader = Reader(url)
            try:
                _wait_for(lambda: not reader.rows("SELECT 1 FROM live_calls")
                          and all(not (n.journal and n.journal.exists()
                                       and n.journal.stat().st_size) for n in lab),
                          timeout=20, what="no live call, journals applied")
                time.sleep(1.0)  # nothing more lands late
                cdrs = reader.rows("SELECT * FROM cdrs ORDER BY id")
                charges = reader.rows("SELECT account, call_ref, amount FROM ledger "
                                      "WHERE kind = 'charge'")
                accounts = {str(r["code"]): r for r in
                            reader.rows("SELECT code, balance, held FROM accounts")}
                checks = verify_ledger(reader.conn)
            finally:
                reader.close()
            logs = [[m for path in paths for m in _log(path)] for paths in sup.logs]
            tail = lab.log_tail(40)
            alive = [pid is not None and lab[i].sidecar_exit_code(pid) is None
                     for i, pid in enumerate(sup.current)]
    finally:
        _ensure_pg_up(cluster)

    # Every node has its sidecar at the end. One that exited did so on purpose: status 3,
    # its leader lock's session ended with the server (never a crash).
    assert all(alive) and not sup.errors, (alive, sup.errors, tail)
    assert {code for _, code, _ in sup.exits} <= {3}, (sup.exits, tail)
    if not down_s:
        # A restart (the server back within the 1.9 s a leader tries to take its lock
        # again on a new session): no sidecar stepped down at all.
        assert not sup.exits, (sup.exits, tail)
    codes = [_final_codes(r) for r in results]
    offered = [_invites(r) for r in results]
    completed = [{cid for cid, code in c.items() if code == 200} for c in codes]
    refused = [{cid for cid, code in c.items() if code != 200} for c in codes]
    for i, r in enumerate(results):
        assert len(offered[i]) == CALLS, r.output_tail()
        # Every offer was answered: a 200 OK, or a refusal while the store was down (503,
        # fail-closed); none left without a final response.
        assert set(codes[i]) == offered[i], (offered[i] - set(codes[i]), r.output_tail())
        assert {codes[i][cid] for cid in refused[i]} <= {503}, codes[i]
        assert r.successful_calls == len(completed[i]), r.output_tail()
    assert sum(map(len, completed)) >= CALLS, (completed, tail)  # the load went on

    # No CDR lost, none doubled: every completed call has exactly one, answered.
    by_id: dict[str, list[dict[str, Any]]] = {}
    for c in cdrs:
        by_id.setdefault(str(c["call_id"]), []).append(c)
    doubled = {cid: rows for cid, rows in by_id.items() if len(rows) > 1}
    assert not doubled, doubled
    all_completed = set().union(*completed)
    all_refused = set().union(*refused)
    lost = all_completed - by_id.keys()
    assert not lost, (sorted(lost), tail)
    assert by_id.keys() <= all_completed | all_refused, by_id.keys() - all_completed
    for cid in all_completed:
        (c,) = by_id[cid]
        assert c["disposition"] == "answered", c
        assert Decimal(str(c["charged"])) == PER_SECOND * int(c["billed_seconds"]), c
        # Billed its real duration: never up to a restart (a settlement the old sidecar
        # held went to its journal, not lost and then settled as a lost call).
        assert int(c["billed_seconds"]) <= CALL_MS // 1000 + 1, c
    cut = [c for (c,) in (by_id[cid] for cid in all_completed)
           if c["ended_by"] != "caller"]
    # Refused offers: at most a rejected CDR each, charged nothing.
    charged_refs = {str(r["call_ref"]) for r in charges}
    for cid in all_refused:
        assert all(c["disposition"] == "rejected" and Decimal(str(c["charged"])) == 0
                   for c in by_id.get(cid, [])), by_id[cid]
        assert cid not in charged_refs
    # One charge row per charged call, summing to what the CDRs charged; balances agree.
    refs = [str(r["call_ref"]) for r in charges]
    assert len(refs) == len(set(refs)), "a call charged twice"
    for code, opening in (("POST", Decimal(0)), ("PRE", PRE_BALANCE)):
        charged = sum((Decimal(str(c["charged"])) for c in cdrs if c["account"] == code),
                      Decimal(0))
        ledger = -sum((Decimal(str(r["amount"])) for r in charges if r["account"] == code),
                      Decimal(0))
        assert ledger == charged, (code, ledger, charged)
        acc = accounts[code]
        assert (Decimal(str(acc["balance"])), Decimal(str(acc["held"]))) == (
            opening - charged, 0), (code, acc, charged)
    assert checks and all(not c.problems for c in checks), checks
    # The callees saw every completed call end, and none other.
    assert [{m.call_id for m in u.received("INVITE")} for u in uas] == completed

    # Every node's sidecar saw the store go (a batch failed and went to the journal, its
    # change notifications or its leader lock's session were cut), and served again: the
    # offers through each node from SERVING_AGAIN_S after the server was back were all
    # answered. Every settlement kept in a journal was applied (the journals are empty,
    # above).
    back = (probe.down[1] if probe.down else restart_at + restart_s) + wall_offset
    kept = applied = 0
    for i, msgs in enumerate(logs):
        assert any(m.startswith(STORE_LOST) or ("leadership lost" in m) for m in msgs), \
            (i, msgs[-40:])
        late = {m.call_id for m in results[i].sent("INVITE")
                if m.timestamp >= back + SERVING_AGAIN_S}
        assert len(late) >= RATE, f"the server came back too late for this test: {late}"
        assert late <= completed[i], (i, sorted(late - completed[i]), msgs[-40:])
        kept += sum(1 for m in msgs if m.endswith("settlement kept in the journal"))
        applied += sum(int(m.split()[1]) for m in msgs
                       if m.startswith("applied ") and "journaled settlements" in m)
        print(f"node {i}: {len(completed[i])} calls completed, {len(refused[i])} refused; "
              + "; ".join(m.replace("\n", " ").replace("\t", "")[:160] for m in msgs
                          if m.startswith(("store failed", "store writable", "applied ",
                                           "store recovered", "node "))))
    assert applied >= kept, (kept, applied)
    down = probe.down
    rejected = sum(1 for c in cdrs if c["disposition"] == "rejected")
    print(f"PostgreSQL restarted {restart_at - t0:.1f} s into the load: refused connections "
          + (f"for {down[1] - down[0]:.2f} s" if down else "never (too quick to see)")
          + f"; pg_ctlcluster took {restart_s:.1f} s. {len(all_refused)} offers "
          f"refused (503): {rejected} by a sidecar (the store down, a rejected CDR), "
          f"{len(all_refused) - rejected} by Kamailio (no sidecar connected); {kept} "
          f"settlements journaled, {applied} applied; {len(cut)} calls not ended by their "
          f"caller; sidecars restarted: " + (", ".join(
              f"node {i} exited {code} at {at - t0:.1f} s" for i, code, at in sup.exits)
              or "none"))


# --- 3. A store outage longer than the lease: no node is taken for dead ---------------------
OUTAGE_CALLS = 10  # per node, all up across the outage
OUTAGE_CALL_MS = 20_000


def test_a_store_outage_longer_than_the_lease_takes_no_live_node_for_dead(
        pg_store: tuple[str, tuple[str, str]], tmp_path: Path) -> None:
    """Two live nodes, a 3 s lease, PostgreSQL stopped for 6 s while 20 calls are up:
    neither node's renewals reach the store meanwhile, and neither may settle the other's
    calls as a dead node's. Every call runs to its end, billed its real duration, once."""
    url, cluster = pg_store
    try:
        with NodesLab(tmp_path / "lab", url, 2, extra_config=NODE_CONFIG) as lab, \
                Supervisor(lab) as sup:
            callees = lab.uas("uas.xml", calls=OUTAGE_CALLS, timeout_s=90)
            callers = [node.uac(account_code=code, dialled=DIALLED,
                                duration_ms=OUTAGE_CALL_MS, calls=OUTAGE_CALLS, timeout_s=80,
                                extra=["-r", "10"])
                       for node, code in zip(lab, ("POST", "PRE"), strict=True)]
            reader = Reader(url)
            try:
                _wait_for(lambda: len(reader.rows("SELECT 1 FROM live_calls"))
                          == 2 * OUTAGE_CALLS, timeout=20, what="every call answered")
            finally:
                reader.close()
            try:
                stop = _pg_ctl(cluster, "stop")
                time.sleep(2 * LEASE_S)
            finally:
                start = _pg_ctl(cluster, "start")
                _ensure_pg_up(cluster)
            assert stop.returncode == 0 and start.returncode == 0, (stop.stderr, start.stderr)
            results = [c.wait() for c in callers]
            for c in callees:
                c.wait()
            reader = Reader(url)
            try:
                _wait_for(lambda: len(reader.rows("SELECT 1 FROM cdrs")) >= 2 * OUTAGE_CALLS
                          and not reader.rows("SELECT 1 FROM live_calls"), timeout=20,
                          what="every call settled")
                time.sleep(1.0)
                cdrs = reader.rows("SELECT * FROM cdrs ORDER BY id")
                checks = verify_ledger(reader.conn)
            finally:
                reader.close()
            tail = lab.log_tail(30)
    finally:
        _ensure_pg_up(cluster)
    print(f"\nsidecars restarted: {sup.exits}")
    assert all(r.calls_ok for r in results), tail
    ids = set().union(*map(_invites, results))
    assert sorted(str(c["call_id"]) for c in cdrs) == sorted(ids), cdrs
    taken = [c for c in cdrs if str(c["end_reason"]).startswith("lease expired")]
    assert not taken, [(c["call_id"], c["node"], c["ended_by"], c["billed_seconds"])
                       for c in taken]
    for c in cdrs:
        assert (c["ended_by"], c["end_reason"]) == ("caller", "bye"), c
        assert OUTAGE_CALL_MS - 100 <= int(c["duration_ms"]) <= OUTAGE_CALL_MS + 1_500, c
        assert Decimal(str(c["charged"])) == PER_SECOND * int(c["billed_seconds"]), c
    assert checks and all(not c.problems for c in checks), checks
