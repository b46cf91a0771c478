"""End to end: the concurrent-call limit (issue 13) across two nodes sharing one
PostgreSQL store: two real Kamailios with the shipped configuration, each with its own
real ``sidecar run``, real SIPp calls on 127.0.0.1.

Each node counts its own calls up plus the answered calls the other nodes hold
reservations for (the store's ``live_calls``, read again after each change the store
reports, about every half second). With ``concurrent_calls=2`` and one long call up on
each node, a third call is refused on either node (``486 Concurrent Call Limit``, a
"rejected" CDR saying the other node's call counted); once one of the long calls ends, a
new call on the other node goes through within about two seconds.

The limit is set the way an operator sets it, with the CLI on the shared store, before
the sidecars start. Every process is stopped by PID when the test ends, also on failure
(the lab's exit stacks); the database is dropped afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sidecar.lab.nodes import NodesLab
from sidecar.lab.sipp import SipMessage, SippResult
from sidecar.store.accounts import verify_ledger
from tests.e2e.test_live_sidecar import DECK, DIALLED
from tests.e2e.test_two_nodes import Reader

pytestmark = pytest.mark.timeout(90)

ACCOUNT = "CONC"
LIMIT = 2
LONG_A_MS = 7_000  # node 0's long call: ends on its own while node 1's still runs
LONG_B_MS = 15_000  # node 1's long call: up for the whole test
SEEN_S = 1.5  # each node has read the other's reservation by then (reads every ~0.5 s)
ALLOWED_WITHIN_S = 2.0  # after a call ends, the other node lets a new one through by then


def cli(store: str, *args: str) -> str:
    """``sidecar --db STORE ARGS...``; its stdout (fails the test on a non-zero exit)."""
    p = subprocess.run([sys.executable, "-m", "sidecar", "--db", store, *args],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"sidecar {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards) with the deck, the account and its
    limit, set up through the CLI as an operator would."""
    from tests.store.pgdb import as_url, fresh_database

    with fresh_database() as conninfo:
        url = as_url(conninfo)
        deck = tmp_path / "deck.csv"
        deck.write_text(DECK)
        cli(url, "deck", "import", str(deck), "--plan", "retail", "--as-of", "2026-01-01")
        cli(url, "account", "add", ACCOUNT, "--plan", "retail", "--balance", "10")
        cli(url, "limits", "set", "--account", ACCOUNT, f"concurrent_calls={LIMIT}")
        shown = json.loads(cli(url, "limits", "show", "--account", ACCOUNT, "--json"))
        assert shown["effective"]["concurrent_calls"] == LIMIT, shown
        assert shown["source"]["concurrent_calls"] == f"account {ACCOUNT}", shown
        yield url


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"not met in {timeout} s: {what}")


def reasons(r: SippResult) -> list[str]:
    """The final INVITE responses' status lines ("SIP/2.0 486 Concurrent Call Limit")."""
    return [m.first_line for m in r.received("INVITE")
            if m.status_code is not None and m.status_code >= 200 and m.cseq_number == 1]


def bye_requests(r: SippResult) -> list[SipMessage]:
    return [m for m in r.received("BYE") if not m.is_response]


def call_id(r: SippResult) -> str:
    return next(m.call_id for m in r.sent("INVITE") if not m.is_response)


def test_concurrent_calls_count_the_answered_calls_of_the_other_node(
        store: str, tmp_path: Path) -> None:
    reader = Reader(store)

    def live(node: str | None = None) -> list[dict[str, Any]]:
        rows = reader.rows("SELECT call_ref, node FROM live_calls WHERE account = ?", ACCOUNT)
        return [r for r in rows if node is None or r["node"] == node]

    def cdr_rows() -> dict[str, dict[str, Any]]:
        return {str(c["call_id"]): c for c in
                reader.rows("SELECT * FROM cdrs WHERE account = ? ORDER BY id", ACCOUNT)}

    try:
        with NodesLab(tmp_path / "lab", store, 2) as lab:
            n0, n1 = lab.names
            logs = lab.log_tail
            # Node 0's callee takes A; node 1's takes B and, at the end, D. The refused
            # calls never reach a callee.
            uas0 = lab[0].uas("uas.xml", calls=1, timeout_s=60)
            uas1 = lab[1].uas("uas.xml", calls=2, timeout_s=60)
            a = lab[0].uac(account_code=ACCOUNT, dialled=DIALLED, duration_ms=LONG_A_MS,
                           timeout_s=40, name="A")
            b = lab[1].uac(account_code=ACCOUNT, dialled=DIALLED, duration_ms=LONG_B_MS,
                           timeout_s=40, name="B")
            # Both answered: each node holds a reservation for its call in the store.
            wait_for(lambda: len(live(n0)) == 1 and len(live(n1)) == 1, 10,
                     "one live call on each node")
            time.sleep(SEEN_S)  # each node has read the other's reservation

            # A third call, on either node, is refused: one call up here, one there.
            refused: dict[int, SippResult] = {}
            for i, node in enumerate(lab):
                r = node.uac("uac_reject.xml", account_code=ACCOUNT, dialled=DIALLED,
                             timeout_s=15, name=f"C{i}").wait(timeout=20)
                assert r.final_codes == [486], r.output_tail() + logs(60)
                assert reasons(r) == ["SIP/2.0 486 Concurrent Call Limit"], reasons(r)
                refused[i] = r
            assert a.running() and b.running(), logs(60)
            assert len(live()) == 2, live()

            # A ends (its caller hangs up): node 1 soon sees one call up in all, its own,
            # and lets a new one through.
            ra = a.wait(timeout=20)
            assert ra.calls_ok and not bye_requests(ra), ra.output_tail() + logs(60)
            a_bye = next(m.timestamp for m in ra.sent("BYE") if not m.is_response)
            wait_for(lambda: not live(n0), 5, "A's reservation released")
            # The store has settled A; node 1 reads the change within ~0.5 s. No earlier
            # attempt: a refused one would be a CDR of its own.
            time.sleep(max(0.0, a_bye + ALLOWED_WITHIN_S - 0.5 - time.time()))
            rd = lab[1].uac(account_code=ACCOUNT, dialled=DIALLED, duration_ms=1_000,
                            timeout_s=15, name="D").wait(timeout=20)
            assert rd.calls_ok and rd.final_codes == [200], rd.output_tail() + logs(60)
            d_invite = next(m.timestamp for m in rd.sent("INVITE") if not m.is_response)
            assert d_invite - a_bye <= ALLOWED_WITHIN_S, (a_bye, d_invite)
            assert not bye_requests(rd), "D was cut"

            assert b.running(), "B ended early\n" + logs(60)
            rb = b.wait(timeout=30)
            assert rb.calls_ok and not bye_requests(rb), rb.output_tail() + logs(60)
            ru0, ru1 = uas0.wait(timeout=10), uas1.wait(timeout=10)
            assert ru0.successful_calls == 1, ru0.output_tail()
            assert ru1.successful_calls == 2, ru1.output_tail()

            wait_for(lambda: len(cdr_rows()) == 5, 10, "5 CDRs")
            time.sleep(0.5)  # a duplicate CDR, if any, lands
            final_logs = logs(80)
        rows = cdr_rows()
        all_cdrs = reader.rows("SELECT call_id FROM cdrs")
        left = live()
        (acc,) = reader.rows("SELECT balance, held FROM accounts WHERE code = ?", ACCOUNT)
        checks = verify_ledger(reader.conn)
    finally:
        reader.close()

    ids = {"A": call_id(ra), "B": call_id(rb), "C0": call_id(refused[0]),
           "C1": call_id(refused[1]), "D": call_id(rd)}
    assert len(all_cdrs) == 5 and set(rows) == set(ids.values()), (rows, ids)
    got = {name: (rows[cid]["disposition"], rows[cid]["sip_code"], rows[cid]["ended_by"])
           for name, cid in ids.items()}
    assert got == {"A": ("answered", 200, "caller"), "B": ("answered", 200, "caller"),
                   "C0": ("rejected", 486, ""), "C1": ("rejected", 486, ""),
                   "D": ("answered", 200, "caller")}, (got, final_logs)
    for name in ("C0", "C1"):
        c = rows[ids[name]]
        reason = str(c["end_reason"])
        # Each node counted its own call and the other node's.
        assert "2 calls up" in reason and "(1 on other nodes)" in reason, reason
        assert f"limit is {LIMIT}" in reason, reason
        assert Decimal(str(c["charged"])) == 0, c
    assert not left, left
    assert Decimal(str(acc["held"])) == 0, acc
    assert checks and all(not c.problems for c in checks), checks
