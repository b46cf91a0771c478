"""End to end: the real Kamailio with the shipped config, the real ``sidecar run`` and real
SIPp calls with RTP on 127.0.0.1. Every process is stopped by PID, also on failure."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.charging.model import AccountKind
from sidecar.lab.live import LiveLab
from sidecar.store.accounts import add_account, ledger_for, verify_ledger
from sidecar.store.conn import Db
from sidecar.store.db import connect
from sidecar.store.decks import import_deck

pytestmark = pytest.mark.timeout(240)

DECK = """destination;code;rate_usd;increment;effective_from
Germany Fixed;4930;0.0600;1/1;2026-01-01
Germany;49;0.1200;60/60;2026-01-01
"""
DIALLED = "4930123456"  # 0.06/min = 0.001/s on 1/1


def deck_store(tmp_path: Path, deck: str = DECK) -> sqlite3.Connection:
    """``tmp_path/sidecar.db`` with ``deck`` imported as plan ``retail`` (from 2026)."""
    conn = connect(tmp_path / "sidecar.db")
    (tmp_path / "deck.csv").write_text(deck)
    import_deck(conn, "retail", tmp_path / "deck.csv", as_of=datetime(2026, 1, 1, tzinfo=UTC))
    return conn


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = deck_store(tmp_path)
    yield conn
    conn.close()


def account(conn: Db, code: str, balance: str, **kw: object) -> None:
    now = int(time.time() * 1000)
    add_account(conn, code, "retail", AccountKind.PREPAID, now_ms=now, **kw)  # type: ignore[arg-type]
    if Decimal(balance):
        ledger_for(conn).topup(code, Decimal(balance), now, "test")


def cdrs(conn: Db, account: str | None = None) -> list[dict[str, object]]:
    cur = conn.execute("SELECT * FROM cdrs" + (" WHERE account = ?" if account else "")
                       + " ORDER BY id", (account,) if account else ())
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur]


def balance(conn: sqlite3.Connection, code: str) -> Decimal:
    return Decimal(conn.execute("SELECT balance FROM accounts WHERE code = ?",
                                (code,)).fetchone()[0])


def wait_for(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def lab(tmp_path: Path, db: sqlite3.Connection) -> Iterator[LiveLab]:
    with LiveLab(tmp_path / "lab", tmp_path / "sidecar.db") as lab:
        yield lab


def test_answered_call_with_media_gets_one_cdr_with_the_right_duration_and_cost(
    lab: LiveLab, db: sqlite3.Connection
) -> None:
    account(db, "ACME", "10")
    uas = lab.uas("uas.xml")
    r = lab.uac(account_code="ACME", dialled=DIALLED, duration_ms=3000).wait()
    uas.wait()
    assert r.calls_ok, r.output_tail() + lab.log_tail()
    wait_for(lambda: len(cdrs(db, "ACME")) == 1)
    (cdr,) = cdrs(db, "ACME")
    assert cdr["disposition"] == "answered"
    assert r.talk_time_s is not None
    assert abs(int(str(cdr["duration_ms"])) / 1000 - r.talk_time_s) <= 0.05, (cdr, r.talk_time_s)
    billed = int(str(cdr["billed_seconds"]))
    assert billed == -(-int(str(cdr["duration_ms"])) // 1000)
    assert Decimal(str(cdr["charged"])) == Decimal("0.001") * billed
    assert balance(db, "ACME") == Decimal("10") - Decimal("0.001") * billed
    assert all(not c.problems for c in verify_ledger(db))


def test_no_credit_gets_402_and_unknown_account_403(lab: LiveLab, db: sqlite3.Connection
                                                     ) -> None:
    account(db, "BROKE", "0")
    r = lab.uac("uac_reject.xml", account_code="BROKE", dialled=DIALLED).wait()
    assert r.final_codes == [402], r.output_tail() + lab.log_tail()
    r = lab.uac("uac_reject.xml", account_code="NOBODY", dialled=DIALLED).wait()
    assert r.final_codes == [403], r.output_tail()
    wait_for(lambda: len(cdrs(db)) == 2)
    rows = cdrs(db)
    assert [(c["account"], c["sip_code"], c["disposition"], c["charged"]) for c in rows] == [
        ("BROKE", 402, "rejected", "0"), (None, 403, "rejected", "0")]
    assert balance(db, "BROKE") == 0


def _invite_200_ts(messages: list) -> float:  # type: ignore[type-arg]
    return next(m.timestamp for m in messages if m.status_code == 200 and m.cseq_method == "INVITE")


def call_cut_on_time(lab: LiveLab, account_code: str, seconds: float) -> None:
    """A 15 s call of ``account_code`` through the lab: both legs get the sidecar's BYE
    ``seconds`` after the 200 OK (at most 1 s late)."""
    uas = lab.uas("uas.xml")
    r = lab.uac(account_code=account_code, dialled=DIALLED, duration_ms=15_000).wait()
    ru = uas.wait()
    assert r.calls_ok and ru.calls_ok, r.output_tail() + lab.log_tail()
    answered = _invite_200_ts(r.received())
    (bye_to_caller,) = r.received("BYE")
    (bye_to_callee,) = ru.received("BYE")
    for bye in (bye_to_caller, bye_to_callee):
        assert seconds - 0.05 <= bye.timestamp - answered <= seconds + 1.0, (
            bye.timestamp - answered)


def test_credit_run_out_ends_the_call_with_bye_both_ways_on_time(
    lab: LiveLab, db: sqlite3.Connection
) -> None:
    account(db, "PRE", "0.004")  # 4 s at 0.001/s
    call_cut_on_time(lab, "PRE", 4.0)
    wait_for(lambda: len(cdrs(db, "PRE")) == 1)
    (cdr,) = cdrs(db, "PRE")
    assert cdr["ended_by"] == "proxy" and cdr["end_reason"] == "credit exhausted"
    assert cdr["billed_seconds"] == 4 and Decimal(str(cdr["charged"])) == Decimal("0.004")
    assert balance(db, "PRE") == 0
    assert all(not c.problems for c in verify_ledger(db))


def test_two_calls_share_100_seconds_of_credit_and_never_overdraw(
    lab: LiveLab, db: sqlite3.Connection
) -> None:
    account(db, "SHARED", "0.100")  # 100 s at 0.001/s
    uas = lab.uas("uas.xml", calls=2, timeout_s=180)
    a = lab.uac(account_code="SHARED", dialled=DIALLED, duration_ms=150_000, timeout_s=180)
    b = lab.uac(account_code="SHARED", dialled=DIALLED, duration_ms=150_000, timeout_s=180)
    ra, rb = a.wait(), b.wait()
    uas.wait()
    assert ra.calls_ok and rb.calls_ok, ra.output_tail() + rb.output_tail() + lab.log_tail()
    wait_for(lambda: len(cdrs(db, "SHARED")) == 2)
    rows = cdrs(db, "SHARED")
    assert {c["end_reason"] for c in rows} == {"credit exhausted"}
    talk = [int(str(c["duration_ms"])) for c in rows]
    assert sum(talk) <= 100_000 + 100, talk  # ended by the time the credit was spent
    assert abs(talk[0] - talk[1]) <= 7_000, talk  # and shared it
    assert Decimal(0) <= balance(db, "SHARED") < Decimal("0.002")
    charged = sum(Decimal(str(c["charged"])) for c in rows)
    assert charged + balance(db, "SHARED") == Decimal("0.100")
    assert all(not c.problems for c in verify_ledger(db))


def test_sidecar_restarted_mid_call_adopts_it_and_charges_once(
    lab: LiveLab, db: sqlite3.Connection
) -> None:
    account(db, "ACME", "10", chunk_seconds=3)
    uas = lab.uas("uas.xml")
    call = lab.uac(account_code="ACME", dialled=DIALLED, duration_ms=9_000)
    wait_for(lambda: db.execute("SELECT COUNT(*) FROM live_calls").fetchone()[0] == 1)
    time.sleep(1.0)
    lab.stop_sidecar()
    time.sleep(3.0)  # the 3 s chunk runs out while the sidecar is away
    lab.start_sidecar()
    r = call.wait()
    uas.wait()
    assert r.calls_ok, r.output_tail() + lab.log_tail()
    assert not [m for m in r.received("BYE") if not m.is_response], "cut despite credit"
    wait_for(lambda: len(cdrs(db, "ACME")) == 1)
    (cdr,) = cdrs(db, "ACME")
    assert cdr["disposition"] == "answered" and cdr["ended_by"] == "caller"
    assert r.talk_time_s is not None
    assert abs(int(str(cdr["duration_ms"])) / 1000 - r.talk_time_s) <= 0.05
    assert "adopted" in lab.sidecar_log.read_text()
    assert all(not c.problems for c in verify_ledger(db))
    assert db.execute("SELECT COUNT(*) FROM live_calls").fetchone()[0] == 0


def test_many_cut_calls_all_get_bye_on_both_legs(lab: LiveLab, db: sqlite3.Connection) -> None:
    """Regression: Kamailio 5.6 could skip the callee's BYE when the caller's 200 OK to the
    first BYE came back fast (see reply_route in kamailio.cfg)."""
    n = 8
    for i in range(n):
        account(db, f"P{i}", "0.002")  # 2 s each
    uas = lab.uas("uas.xml", calls=n, timeout_s=60)
    callers = [lab.uac(account_code=f"P{i}", dialled=DIALLED, duration_ms=20_000, timeout_s=60)
               for i in range(n)]
    results = [c.wait() for c in callers]
    ru = uas.wait()
    assert all(r.calls_ok for r in results), lab.log_tail()
    assert ru.successful_calls == n, ru.output_tail() + lab.log_tail()
    assert len([m for m in ru.received("BYE") if not m.is_response]) == n
    for r in results:
        assert len([m for m in r.received("BYE") if not m.is_response]) == 1
    wait_for(lambda: len(cdrs(db)) == n)
    assert {c["billed_seconds"] for c in cdrs(db)} == {2}


def test_no_rate_404_and_accounts_from_header_or_sip_user(lab: LiveLab, db: sqlite3.Connection
                                                          ) -> None:
    from sidecar.store.accounts import map_sip

    account(db, "ACME", "10")
    account(db, "HDR", "10")
    map_sip(db, "user", "15551230001", "ACME")  # the lab caller's SIP user
    r = lab.uac("uac_reject.xml", account_code="ACME", dialled="+81312345678").wait()
    assert r.final_codes == [404], r.output_tail() + lab.log_tail()
    uas = lab.uas("uas.xml", calls=2)
    r1 = lab.uac(account_code="HDR", account_code_header=True, dialled=DIALLED,
                 duration_ms=1000).wait()
    r2 = lab.uac(dialled=DIALLED, duration_ms=1000).wait()  # no code: the SIP user's account
    uas.wait()
    assert r1.calls_ok and r2.calls_ok, lab.log_tail()
    wait_for(lambda: len(cdrs(db)) == 3)
    assert [(c["account"], c["sip_code"], c["disposition"]) for c in cdrs(db)] == [
        ("ACME", 404, "rejected"), ("HDR", 200, "answered"), ("ACME", 200, "answered")]


def test_call_that_ends_while_the_sidecar_is_down_is_billed_to_its_real_end(
    lab: LiveLab, db: sqlite3.Connection
) -> None:
    """kill -9 the sidecar mid-call; the call ends 3 s later; the sidecar comes back a few
    seconds after that. Kamailio kept the end event and replays it: the call is billed to
    its real end, not to the reconnection, once."""
    account(db, "ACME", "10")
    uas = lab.uas("uas.xml")
    call = lab.uac(account_code="ACME", dialled=DIALLED, duration_ms=3_000)
    wait_for(lambda: db.execute("SELECT COUNT(*) FROM live_calls").fetchone()[0] == 1)
    lab.stop_sidecar(kill=True)
    r = call.wait()  # the BYE passes Kamailio while no sidecar listens
    uas.wait()
    assert r.calls_ok
    assert cdrs(db, "ACME") == []
    time.sleep(3)
    lab.start_sidecar()
    wait_for(lambda: len(cdrs(db, "ACME")) == 1)
    (cdr,) = cdrs(db, "ACME")
    assert cdr["end_reason"] == "bye"
    assert cdr["ended_by"] == "caller"
    # SIPp hangs up 3 s after the answer: billed 3 s (4 with the rounding of the BYE's
    # own latency), not the 6+ s up to the reconnection.
    assert 2_900 <= int(str(cdr["duration_ms"])) <= 4_000
    assert int(str(cdr["billed_seconds"])) in (3, 4)
    assert db.execute("SELECT COUNT(*) FROM live_calls").fetchone()[0] == 0
    assert all(not c.problems for c in verify_ledger(db))


def test_call_answered_and_ended_while_the_sidecar_is_down_is_billed_from_the_replay(
    lab: LiveLab, db: sqlite3.Connection
) -> None:
    """The sidecar authorizes the call and dies while it rings; the call is answered and
    hung up while no sidecar is connected. Nothing was reserved, so the store knows
    nothing of it: the replayed end event (with the account Kamailio kept on the dialog)
    settles it, billed for its real duration."""
    account(db, "ACME", "10")
    uas = lab.uas("uas_ringlong.xml", duration_ms=2_500)  # rings 2.5 s, then answers
    call = lab.uac(account_code="ACME", dialled=DIALLED, duration_ms=3_000)
    time.sleep(1.0)  # authorized, still ringing
    lab.stop_sidecar(kill=True)
    r = call.wait()
    uas.wait()
    assert r.calls_ok
    assert cdrs(db, "ACME") == []
    time.sleep(2)
    lab.start_sidecar()
    wait_for(lambda: len(cdrs(db, "ACME")) == 1)
    (cdr,) = cdrs(db, "ACME")
    assert (cdr["disposition"], cdr["end_reason"], cdr["ended_by"]) == (
        "answered", "bye", "caller")
    assert 2_900 <= int(str(cdr["duration_ms"])) <= 4_000
    assert Decimal(str(cdr["charged"])) > 0
    assert all(not c.problems for c in verify_ledger(db))
