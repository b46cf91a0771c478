"""End to end: usage and fraud limits (issue 13) with the real Kamailio and its shipped
configuration, the real ``sidecar run`` and real SIPp calls on 127.0.0.1.

Limits are set the way an operator sets them, with the CLI on the lab's store
(``sidecar limits set``), before the sidecar starts; fraud events are read and a
suspension lifted with ``sidecar fraud ...`` while it runs. Each test asserts what a user
notices: the SIP code and reason phrase the caller gets, when the BYE arrives, the CDRs.
Every process is stopped by PID when the test ends, also on failure (the lab's exit stack).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sidecar.lab.live import LiveLab
from sidecar.lab.sipp import SipMessage, SippProcess, SippResult
from sidecar.store.accounts import verify_ledger
from sidecar.store.db import connect
from sidecar.store.decks import import_deck
from tests.e2e.test_live_sidecar import account, balance, cdrs, wait_for

pytestmark = pytest.mark.timeout(120)

DECK = """destination;code;rate_usd;increment;effective_from
Germany Fixed;4930;0.0600;1/1;2026-01-01
Germany;49;0.1200;60/60;2026-01-01
Premium Services;88299;0.6000;1/1;2026-01-01
Satellite;8816;1.2000;1/1;2026-01-01
"""
CHEAP = "4930123456"  # 0.06/min on 1/1: 0.001/s
PREMIUM = "882991234567"  # 0.60/min on 1/1: 0.01/s
SATELLITE = "881612345678"  # 1.20/min on 1/1: a 60 s chunk reserves 1.20


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sidecar.db"


@pytest.fixture
def db(db_path: Path, tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(db_path)
    (tmp_path / "deck.csv").write_text(DECK)
    import_deck(conn, "retail", tmp_path / "deck.csv", as_of=datetime(2026, 1, 1, tzinfo=UTC))
    yield conn
    conn.close()


@pytest.fixture
def lab(tmp_path: Path, db: sqlite3.Connection, db_path: Path) -> Iterator[LiveLab]:
    """Kamailio up; the sidecar is started by the test (``lab.start_sidecar()``) once its
    limits are set. Everything is stopped by PID when the test ends."""
    with LiveLab(tmp_path / "lab", db_path, with_sidecar=False) as lab:
        yield lab


def cli(db_path: Path | str, *args: str) -> str:
    """Run ``sidecar --db DB ARGS...``; its stdout (fails the test on a non-zero exit)."""
    p = subprocess.run([sys.executable, "-m", "sidecar", "--db", str(db_path), *args],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"sidecar {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def cli_json(db_path: Path | str, *args: str) -> Any:
    return json.loads(cli(db_path, *args, "--json"))


def set_limits(db_path: Path, code: str, *pairs: str) -> None:
    """``sidecar limits set --account CODE KEY=VALUE...``, then check that ``limits show``
    says they apply, from the account itself."""
    cli(db_path, "limits", "set", "--account", code, *pairs)
    shown = cli_json(db_path, "limits", "show", "--account", code)
    for pair in pairs:
        key, value = pair.split("=", 1)
        assert str(shown["effective"].get(key)) == value, (pair, shown)
        assert shown["source"][key] == f"account {code}", (pair, shown)


def fraud_events(db_path: Path, code: str, *options: str) -> list[dict[str, Any]]:
    events = cli_json(db_path, "fraud", "events", "--account", code, *options)
    assert isinstance(events, list), events
    return events


def account_json(db_path: Path, code: str) -> dict[str, Any]:
    doc = cli_json(db_path, "account", "show", code)
    assert isinstance(doc, dict), doc
    return doc


def live_calls(conn: sqlite3.Connection, code: str) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM live_calls WHERE account = ?",
                            (code,)).fetchone()[0])


def reasons(r: SippResult) -> list[str]:
    """The final INVITE responses' status lines ("SIP/2.0 486 Concurrent Call Limit")."""
    return [m.first_line for m in r.received("INVITE")
            if m.status_code is not None and m.status_code >= 200 and m.cseq_number == 1]


def invite_200_ts(r: SippResult) -> float:
    """When the caller got the 200 OK to its INVITE (SIPp's clock: epoch seconds)."""
    return next(m.timestamp for m in r.received()
                if m.status_code == 200 and m.cseq_method == "INVITE" and m.cseq_number == 1)


def bye_requests(r: SippResult) -> list[SipMessage]:
    return [m for m in r.received("BYE") if not m.is_response]


def reinvite_answered(proc: SippProcess) -> bool:
    """The caller's re-INVITE (CSeq 2 INVITE) got its 200 OK (SIPp's message trace)."""
    return any(m.status_code == 200 and m.cseq_method == "INVITE" and m.cseq_number == 2
               for m in proc.result().received())


def test_concurrent_calls_the_third_is_refused_486_and_a_reinvite_is_not_a_call(
    lab: LiveLab, db: sqlite3.Connection, db_path: Path
) -> None:
    account(db, "CONC", "10")
    set_limits(db_path, "CONC", "concurrent_calls=2")
    lab.start_sidecar()
    uas = lab.uas("uas_reinvite.xml", calls=3, timeout_s=50)  # A, B and D (C never gets here)
    # A: up, a re-INVITE 1 s after its answer, then 5 s more; B: up 14 s.
    a = lab.uac("uac_reinvite.xml", account_code="CONC", dialled=CHEAP, duration_ms=5_000,
                timeout_s=40, name="A")
    b = lab.uac(account_code="CONC", dialled=CHEAP, duration_ms=14_000, timeout_s=40, name="B")
    wait_for(lambda: live_calls(db, "CONC") == 2)
    # The re-INVITE inside A's dialog, with both calls up: answered, not refused.
    wait_for(lambda: reinvite_answered(a), timeout=5)
    assert a.running() and b.running(), a.result().output_tail() + lab.log_tail()

    rc = lab.uac("uac_reject.xml", account_code="CONC", dialled=CHEAP, name="C").wait()
    assert rc.final_codes == [486], rc.output_tail() + lab.log_tail()
    assert reasons(rc) == ["SIP/2.0 486 Concurrent Call Limit"]

    ra = a.wait()
    assert ra.calls_ok, ra.output_tail() + lab.log_tail()
    # Every final reply A got to an INVITE (the call's and the re-INVITE's) was a 200.
    assert sorted((m.cseq_number, m.status_code) for m in ra.received("INVITE")
                  if m.status_code and m.status_code >= 200) == [(1, 200), (2, 200)]
    assert not bye_requests(ra), "A was cut"
    # A has ended: one call up (B), so a new one is let through; had the re-INVITE counted
    # as a call, the account would still look full.
    wait_for(lambda: len([c for c in cdrs(db, "CONC") if c["disposition"] == "answered"]) == 1)
    rd = lab.uac(account_code="CONC", dialled=CHEAP, duration_ms=1_000, name="D").wait()
    assert rd.calls_ok and rd.final_codes == [200], rd.output_tail() + lab.log_tail()
    assert b.running(), "B ended early"
    rb = b.wait()
    ru = uas.wait()
    assert rb.calls_ok and not bye_requests(rb), rb.output_tail() + lab.log_tail()
    # The callee got the re-INVITE (relayed inside the dialog) and three calls, not four.
    assert ru.successful_calls == 3, ru.output_tail()
    assert len([m for m in ru.received("INVITE")
                if not m.is_response and m.cseq_number == 2]) == 1, ru.output_tail()

    wait_for(lambda: len(cdrs(db, "CONC")) == 4)
    rows = {c["call_id"]: c for c in cdrs(db, "CONC")}
    call_id = {name: r.messages[0].call_id for name, r in
               (("A", ra), ("B", rb), ("C", rc), ("D", rd))}
    got = {name: (rows[cid]["disposition"], rows[cid]["sip_code"], rows[cid]["ended_by"])
           for name, cid in call_id.items()}
    assert got == {"A": ("answered", 200, "caller"), "B": ("answered", 200, "caller"),
                   "C": ("rejected", 486, ""), "D": ("answered", 200, "caller")}, got
    assert rows[call_id["C"]]["charged"] == "0"
    assert all(not c.problems for c in verify_ledger(db))


def test_calls_per_second_holds_under_a_sipp_burst_of_20_per_second(
    lab: LiveLab, db: sqlite3.Connection, db_path: Path
) -> None:
    limit, n = 5, 60
    account(db, "CPS", "100")
    set_limits(db_path, "CPS", f"calls_per_second={limit}")
    lab.start_sidecar()
    uas = lab.uas("uas_nomedia.xml", calls=n, timeout_s=40)
    burst = lab.uac("uac_either.xml", account_code="CPS", dialled=CHEAP, duration_ms=500,
                    calls=n, extra=["-r", "20", "-rp", "1000"], timeout_s=40, name="burst")
    r = burst.wait()
    uas.stop()
    assert r.successful_calls == n and r.failed_calls == 0, r.output_tail() + lab.log_tail()
    codes = Counter(r.final_codes)
    assert set(codes) <= {200, 503} and sum(codes.values()) == n, codes
    assert all(line == "SIP/2.0 503 Call Rate Limit"
               for line in reasons(r) if " 503 " in line), Counter(reasons(r))

    wait_for(lambda: len(cdrs(db, "CPS")) == n)
    rows = cdrs(db, "CPS")
    allowed = sorted(int(str(c["offered_ms"])) for c in rows if c["disposition"] == "answered")
    refused = [c for c in rows if c["disposition"] != "answered"]
    assert {(c["disposition"], c["sip_code"]) for c in refused} <= {("rejected", 503)}
    assert len(allowed) == codes[200] and len(refused) == codes[503]
    # In every 1-second window, no more than the limit was let through...
    worst = max(sum(1 for u in allowed if t <= u < t + 1000) for t in allowed)
    assert worst <= limit, (worst, allowed)
    # ... and the limit was used: the burst lasted about 3 s.
    assert len(allowed) >= 10, (len(allowed), codes)
    assert all(not c.problems for c in verify_ledger(db))


def test_max_call_cost_cuts_the_call_on_time_and_charges_exactly_the_cap(
    lab: LiveLab, db: sqlite3.Connection, db_path: Path
) -> None:
    account(db, "CAP", "10")
    set_limits(db_path, "CAP", "max_call_cost=0.05")  # 0.01/s: 5 s
    lab.start_sidecar()
    uas = lab.uas("uas.xml")
    r = lab.uac(account_code="CAP", dialled=PREMIUM, duration_ms=15_000).wait()
    ru = uas.wait()
    assert r.calls_ok and ru.calls_ok, r.output_tail() + ru.output_tail() + lab.log_tail()
    answered = invite_200_ts(r)
    (bye_to_caller,) = bye_requests(r)
    (bye_to_callee,) = bye_requests(ru)
    for bye in (bye_to_caller, bye_to_callee):
        assert 5.0 - 0.05 <= bye.timestamp - answered <= 5.0 + 0.6, bye.timestamp - answered
    wait_for(lambda: len(cdrs(db, "CAP")) == 1)
    (cdr,) = cdrs(db, "CAP")
    assert cdr["disposition"] == "answered" and cdr["ended_by"] == "proxy", cdr
    assert "cost" in str(cdr["end_reason"]).lower(), cdr["end_reason"]
    assert 4_950 <= int(str(cdr["duration_ms"])) <= 5_000, cdr["duration_ms"]
    assert cdr["billed_seconds"] == 5, cdr
    assert Decimal(str(cdr["cost"])) == Decimal("0.05"), cdr
    assert Decimal(str(cdr["charged"])) == Decimal("0.05"), cdr
    assert balance(db, "CAP") == Decimal("9.95")
    assert all(not c.problems for c in verify_ledger(db))


def test_spend_velocity_suspends_the_account_and_ends_its_calls_within_a_second(
    lab: LiveLab, db: sqlite3.Connection, db_path: Path
) -> None:
    account(db, "VEL", "100")
    # Each answered Satellite call reserves a 60 s chunk: 1.20. The 5th makes 6.00 > 5.
    set_limits(db_path, "VEL", "spend_per_minute=5", "spend_per_minute_action=suspend")
    lab.start_sidecar()
    n = 5
    uas = lab.uas("uas.xml", calls=n + 1, timeout_s=60)
    burst = lab.uac(account_code="VEL", dialled=SATELLITE, duration_ms=30_000, calls=n,
                    extra=["-r", "10", "-l", str(n)], timeout_s=45, name="burst")
    wait_for(lambda: bool(fraud_events(db_path, "VEL")), timeout=15)
    r = burst.wait(timeout=15)  # every call is cut: long before its 30 s
    assert r.successful_calls == n and r.failed_calls == 0, r.output_tail() + lab.log_tail()

    (event,) = fraud_events(db_path, "VEL")
    assert (event["rule"], event["action"]) == ("spend_per_minute", "suspend"), event
    assert isinstance(event["evidence"], dict) and event["evidence"], event
    assert fraud_events(db_path, "VEL", "--open") == [event]
    trip_ms = int(event["ts_ms"])

    acc = account_json(db_path, "VEL")
    assert acc["suspended"] is True, acc
    assert str(acc["suspend_reason"]).startswith("fraud rule "), acc

    # Every live call of the account ended within 1 s of the trip: the BYE reached each
    # caller, and each CDR says so and why.
    byes = bye_requests(r)
    assert len(byes) == n, r.output_tail()
    for bye in byes:
        assert -0.05 <= bye.timestamp - trip_ms / 1000 <= 1.0, (bye, trip_ms)
    wait_for(lambda: len(cdrs(db, "VEL")) == n)
    for cdr in cdrs(db, "VEL"):
        assert cdr["disposition"] == "answered" and cdr["ended_by"] == "proxy", cdr
        assert abs(int(str(cdr["ended_ms"])) - trip_ms) <= 1000, (cdr["ended_ms"], trip_ms)
        assert "suspend" in str(cdr["end_reason"]).lower(), cdr["end_reason"]
        assert "fraud rule" in str(cdr["end_reason"]), cdr["end_reason"]
    # Their reservations were released: only what the calls used was charged.
    wait_for(lambda: Decimal(str(account_json(db_path, "VEL")["held"])) == 0, timeout=5)

    # New calls are refused while suspended.
    rs = lab.uac("uac_reject.xml", account_code="VEL", dialled=CHEAP, name="suspended").wait()
    assert rs.final_codes == [403], rs.output_tail() + lab.log_tail()
    assert reasons(rs) == ["SIP/2.0 403 Account Suspended"]
    wait_for(lambda: len(cdrs(db, "VEL")) == n + 1)
    assert (cdrs(db, "VEL")[-1]["disposition"], cdrs(db, "VEL")[-1]["sip_code"]) == (
        "rejected", 403)

    # The operator lifts it: calls go through again (the running sidecar learns of it
    # within about half a second).
    cli(db_path, "fraud", "lift", "VEL")
    acc = account_json(db_path, "VEL")
    assert acc["suspended"] is False and not acc["blocked"], acc
    assert fraud_events(db_path, "VEL", "--open") == []
    (event,) = fraud_events(db_path, "VEL")
    assert event["lifted_ms"] is not None, event
    time.sleep(1.5)
    ok = lab.uac(account_code="VEL", dialled=CHEAP, duration_ms=2_000, name="lifted").wait()
    uas.wait()
    assert ok.calls_ok and ok.final_codes == [200], ok.output_tail() + lab.log_tail()
    assert not bye_requests(ok), "the call after the lift was cut"
    wait_for(lambda: len(cdrs(db, "VEL")) == n + 2)
    last = cdrs(db, "VEL")[-1]
    assert (last["disposition"], last["ended_by"]) == ("answered", "caller"), last
    assert len(fraud_events(db_path, "VEL")) == 1
    assert account_json(db_path, "VEL")["suspended"] is False
    assert all(not c.problems for c in verify_ledger(db))
