"""Two nodes, one prepaid account (issue 11): two real Kamailios, each with its own real
``sidecar run``, sharing ONE store; real SIPp calls with RTP through both at once.

The account holds credit for 60 call-seconds (0.060 at 0.001/s); 20 long calls (70 s
each if nobody cut them), 10 through each node, are offered in one burst and answered
together, so that both sidecars authorize all of them from their own (soon stale) view
of the account and then reserve from it at the same moment. The store decides every
reservation atomically against what it holds: whichever node asks last gets what is
left, possibly nothing, and cuts its calls when that is used.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sidecar.lab.nodes import BalanceWatch, NodesLab, StoreTarget
from sidecar.lab.sipp import SippResult
from sidecar.store.accounts import verify_ledger
from sidecar.store.conn import open_db
from tests.e2e.test_live_sidecar import DECK, DIALLED

pytestmark = pytest.mark.timeout(240)

CREDIT = Decimal("0.060")  # 60 s at 0.001/s
PER_SECOND = Decimal("0.001")
CALLS_PER_NODE = 10
HOLD_MS = 70_000  # what each caller would talk for if no one cut it
RING_MS = 1_500
CUT_SLACK_S = 1.0  # a cut call's BYE reaches the caller this soon after its paid time


def _sidecar(store: StoreTarget, *args: str) -> None:
    """One ``sidecar`` command on the store (a SQLite path or a PostgreSQL URL)."""
    subprocess.run([sys.executable, "-m", "sidecar", "--db", str(store), *args], check=True,
                   capture_output=True, text=True)


def _prepare(store: StoreTarget, tmp_path: Path, *accounts: Sequence[str]) -> StoreTarget:
    """The deck and the accounts (``account add`` arguments after the code's), through
    the CLI as an operator sets up a store of either kind."""
    deck = tmp_path / "deck.csv"
    deck.write_text(DECK)
    _sidecar(store, "deck", "import", str(deck), "--plan", "retail", "--as-of", "2026-01-01")
    for acc in accounts:
        _sidecar(store, "account", "add", *acc)
    return store


PREPAID = ("PRE", "--plan", "retail", "--balance", str(CREDIT))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreTarget]:
    """The one store both nodes share, with the deck and the prepaid account: a SQLite
    file (WAL), or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield _prepare(tmp_path / "shared.db", tmp_path, PREPAID)
        return
    from psycopg.conninfo import conninfo_to_dict

    from tests.store.pgdb import fresh_database

    with fresh_database() as conninfo:
        p = conninfo_to_dict(conninfo)
        yield _prepare(f"postgresql://{p['user']}@{p['host']}:{p['port']}/{p['dbname']}",
                       tmp_path, PREPAID)


class Reader:
    """Queries on the shared store from the test's own connection (either database:
    ``?`` placeholders on both)."""

    def __init__(self, store: StoreTarget) -> None:
        self.conn = open_db(store)

    def rows(self, sql: str, *params: object) -> list[dict[str, Any]]:
        cur = self.conn.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def close(self) -> None:
        self.conn.close()


def _call_ids(r: SippResult) -> set[str]:
    return {m.call_id for m in r.sent("INVITE") if not m.is_response}


def _talk_s(r: SippResult) -> dict[str, float]:
    """Per call, as the caller saw it: from the INVITE's 200 OK to the proxy's BYE."""
    ok = {m.call_id: m.timestamp for m in r.received("INVITE") if m.status_code == 200}
    bye = {m.call_id: m.timestamp for m in r.received("BYE") if not m.is_response}
    return {cid: bye[cid] - ok[cid] for cid in ok if cid in bye}


def _wait_for(cond: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("min_chunk", [6, 2], ids=["chunk6", "chunk2"])
def test_one_prepaid_account_on_two_nodes_is_never_overdrawn(
        store: StoreTarget, min_chunk: int, tmp_path: Path) -> None:
    """``chunk6`` (the default configuration): while credit is low each call reserves
    6 s, so the first chunks of 10 calls take it all and the other calls get nothing.
    ``chunk2``: first chunks of 2 s leave 20 s that the two nodes' renewals race for."""
    reader = Reader(store)
    t0 = time.monotonic()
    try:
        with NodesLab(tmp_path / "lab", store, 2,
                      extra_config=f"[charging]\nmin_chunk_seconds = {min_chunk}\n") as lab, \
                BalanceWatch(store, "PRE", every_s=0.1) as watch:
            # The callees ring 1.5 s; the callers place their 10 calls in ~50 ms: every
            # offer on both nodes is authorized before the first answer reserves anything
            # (so none is refused 402), and the 20 answers then race for the credit.
            callees = lab.uas("uas_ringlong.xml", calls=CALLS_PER_NODE, duration_ms=RING_MS,
                              timeout_s=120)
            callers = [node.uac(account_code="PRE", dialled=DIALLED, duration_ms=HOLD_MS,
                                calls=CALLS_PER_NODE, timeout_s=110, extra=["-r", "200"])
                       for node in lab]
            results = [c.wait() for c in callers]
            ended_s = time.monotonic() - t0
            uas_results = [c.wait() for c in callees]
            logs = lab.log_tail(60)
            names = lab.names
            _wait_for(lambda: len(reader.rows("SELECT call_id FROM cdrs")) >= 2 * CALLS_PER_NODE)
            time.sleep(0.3)  # the watch takes its last samples of the settled account
        cdrs = reader.rows("SELECT * FROM cdrs ORDER BY id")
        (acc,) = reader.rows("SELECT balance, held FROM accounts WHERE code = 'PRE'")
        live_calls = reader.rows("SELECT call_ref FROM live_calls")
        checks = verify_ledger(reader.conn)
    finally:
        reader.close()

    # Every call through both nodes was answered and ended, both legs with a BYE.
    for r, ru in zip(results, uas_results, strict=True):
        assert r.successful_calls == CALLS_PER_NODE and r.failed_calls == 0, \
            r.output_tail() + logs
        assert len([m for m in r.received("BYE") if not m.is_response]) == CALLS_PER_NODE, \
            r.output_tail() + logs
        assert len([m for m in ru.received("BYE") if not m.is_response]) == CALLS_PER_NODE, \
            ru.output_tail() + logs

    # Exactly one CDR per call, and both nodes carried theirs.
    per_node = [_call_ids(r) for r in results]
    assert all(len(ids) == CALLS_PER_NODE for ids in per_node)
    assert not per_node[0] & per_node[1]
    assert sorted(str(c["call_id"]) for c in cdrs) == sorted(per_node[0] | per_node[1]), cdrs
    by_id = {str(c["call_id"]): c for c in cdrs}
    for name, ids in zip(names, per_node, strict=True):  # where CDRs name their node
        assert {by_id[cid].get("node") or name for cid in ids} == {name}, (name, cdrs)

    # Every call was cut by the proxy because the credit ran out...
    assert {(c["disposition"], c["ended_by"], c["end_reason"]) for c in cdrs} == {
        ("answered", "proxy", "credit exhausted")}, cdrs
    # ... no later than its paid time (plus the BYE's way back), as the caller measured it.
    talk: dict[str, float] = {}
    for r in results:
        talk |= _talk_s(r)
    assert set(talk) == set(by_id)
    late = {cid: (t, by_id[cid]["billed_seconds"]) for cid, t in talk.items()
            if t > int(by_id[cid]["billed_seconds"]) + CUT_SLACK_S}
    assert not late, late
    assert sum(talk.values()) <= 60 + 2 * CALLS_PER_NODE * CUT_SLACK_S, talk

    # The money: never below zero at any sampled moment, the credit spent and no more.
    assert not watch.errors, watch.errors
    assert len(watch.samples) >= 20, len(watch.samples)
    lowest = watch.lowest
    assert lowest is not None and lowest.balance >= 0, lowest
    balance, held = Decimal(str(acc["balance"])), Decimal(str(acc["held"]))
    assert held == 0 and not live_calls, (held, live_calls)
    assert Decimal(0) <= balance < Decimal("0.002"), balance
    charged = sum(Decimal(str(c["charged"])) for c in cdrs)
    assert charged <= CREDIT
    assert charged + balance == CREDIT, (charged, balance)
    assert sum(int(c["billed_seconds"]) for c in cdrs) <= 60
    for c in cdrs:
        assert Decimal(str(c["charged"])) == PER_SECOND * int(c["billed_seconds"]), c
        assert Decimal(str(c["written_off"])) == 0, c
    assert checks and all(not c.problems for c in checks), checks

    # For the record (pytest -s): how the credit was shared and how fast calls were cut.
    for i, ids in enumerate(per_node):
        node_cdrs = [by_id[cid] for cid in ids]
        print(f"node {i}: billed {sorted(int(c['billed_seconds']) for c in node_cdrs)} s, "
              f"charged {sum(Decimal(str(c['charged'])) for c in node_cdrs)}; "
              f"cut after paid time: "
              f"{sorted(round(talk[cid] - int(by_id[cid]['billed_seconds']), 3) for cid in ids)}")
    print(f"lowest sampled balance {lowest.balance} (held {lowest.held}); final {balance}; "
          f"{len(watch.samples)} samples; calls done {ended_s:.1f} s after start")


def test_a_sidecar_restarting_on_one_node_leaves_the_other_nodes_calls_alone(
        tmp_path: Path) -> None:
    """Node 1's sidecar restarts while a call runs through node 0: the call stays node 0's
    to charge and settle, once, at its real end."""
    path = _prepare(tmp_path / "shared.db", tmp_path,
                    ("ACME", "--plan", "retail", "--balance", "10", "--chunk-seconds", "3"))
    reader = Reader(path)

    def count(table: str) -> int:
        return len(reader.rows(f"SELECT 1 FROM {table}"))

    try:
        with NodesLab(tmp_path / "lab", path, 2) as lab:
            callee = lab[0].uas("uas.xml")
            call = lab[0].uac(account_code="ACME", dialled=DIALLED, duration_ms=8_000)
            _wait_for(lambda: count("live_calls") == 1)
            lab[1].stop_sidecar()
            lab[1].start_sidecar()
            r = call.wait()
            callee.wait()
            logs = lab.log_tail(60)
            _wait_for(lambda: count("cdrs") >= 1)
            time.sleep(1.0)  # a second settlement, if any, lands
        assert r.calls_ok, r.output_tail() + logs
        cdrs = reader.rows("SELECT * FROM cdrs")
        assert len(cdrs) == 1, cdrs
        (cdr,) = cdrs
        assert (cdr["ended_by"], cdr["end_reason"]) == ("caller", "bye"), (cdr, logs)
        assert 7_900 <= int(cdr["duration_ms"]) <= 9_000, cdr
        assert count("live_calls") == 0
        (acc,) = reader.rows("SELECT held FROM accounts WHERE code = 'ACME'")
        assert Decimal(str(acc["held"])) == 0
        assert all(not c.problems for c in verify_ledger(reader.conn))
    finally:
        reader.close()
