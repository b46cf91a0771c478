"""`sidecar run --log-format json` beside the real Kamailio, with real SIPp calls: the log
lines about calls carry call, account, decision, code, reason, latency_ms and node as
JSON keys of their own, with the values of those calls."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sidecar.charging.model import AccountKind
from sidecar.lab.live import LiveLab
from sidecar.store.accounts import add_account, ledger_for
from sidecar.store.db import connect
from sidecar.store.decks import import_deck

pytestmark = pytest.mark.timeout(240)

DECK = "destination;code;rate_usd;increment;effective_from\n" \
       "Germany Fixed;4930;0.0600;1/1;2026-01-01\n"
DIALLED = "4930123456"  # 0.06/min = 0.001/s on 1/1


class DebugLab(LiveLab):
    """The lab's sidecar at debug level, so allowed offers are logged too."""

    def sidecar_argv(self, *extra: str) -> list[str]:
        return super().sidecar_argv("--log-level", "debug", *extra)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(tmp_path / "sidecar.db")
    (tmp_path / "deck.csv").write_text(DECK)
    import_deck(conn, "retail", tmp_path / "deck.csv", as_of=datetime(2026, 1, 1, tzinfo=UTC))
    now = int(time.time() * 1000)
    for code, balance in (("BROKE", "0"), ("PRE", "0.003")):  # PRE: 3 s at 0.001/s
        add_account(conn, code, "retail", AccountKind.PREPAID, now_ms=now)
        if Decimal(balance):
            ledger_for(conn).topup(code, Decimal(balance), now, "test")
    yield conn
    conn.close()


def lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for text in log.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(text))
        except ValueError:
            continue
    return out


def wait_for_line(log: Path, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [d for d in lines(log) if pred(d)]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("no such log line:\n" + log.read_text()[-3000:])


def test_call_log_lines_carry_their_fields(tmp_path: Path, db: sqlite3.Connection) -> None:
    with DebugLab(tmp_path / "lab", tmp_path / "sidecar.db") as lab:
        r = lab.uac("uac_reject.xml", account_code="BROKE", dialled=DIALLED).wait()
        assert r.final_codes == [402], r.output_tail() + lab.log_tail()
        r = lab.uac("uac_reject.xml", account_code="NOBODY", dialled=DIALLED).wait()
        assert r.final_codes == [403], r.output_tail()
        uas = lab.uas("uas.xml")
        r = lab.uac(account_code="PRE", dialled=DIALLED, duration_ms=15_000).wait()
        uas.wait()
        assert r.calls_ok, r.output_tail() + lab.log_tail()
        log, node = lab.sidecar_log, lab.node
        wait_for_line(log, lambda d: d.get("decision") == "cdr" and d.get("account") == "PRE")
    calls = dict(db.execute("SELECT account, call_ref FROM cdrs WHERE account IS NOT NULL"))
    (nobody,) = [c for (c,) in db.execute("SELECT call_ref FROM cdrs WHERE account IS NULL")]
    docs = lines(log)
    for d in docs:
        assert {"ts", "level", "logger", "msg"} <= set(d), d

    def one(**want: Any) -> dict[str, Any]:
        found = [d for d in docs if all(d.get(k) == v for k, v in want.items())]
        assert len(found) == 1, (want, [d for d in docs if "call" in d])
        return found[0]

    # The authorization decisions: the answer sent to Kamailio, with its latency.
    broke = one(logger="sidecar.live", call=calls["BROKE"], decision="reject")
    assert (broke["account"], broke["code"], broke["node"], broke["level"]) == \
        ("BROKE", 402, node, "info")
    assert "credit" in broke["reason"]
    assert isinstance(broke["latency_ms"], float) and 0 < broke["latency_ms"] < 2000
    unknown = one(logger="sidecar.live", call=nobody, decision="reject")
    assert (unknown["account"], unknown["code"], unknown["node"]) == (None, 403, node)
    assert "NOBODY" in unknown["reason"]
    allow = one(logger="sidecar.live", call=calls["PRE"], decision="allow")
    assert (allow["account"], allow["code"], allow["node"], allow["level"]) == \
        ("PRE", 200, node, "debug")
    assert 0 < allow["latency_ms"] < 2000
    # The core's own refusal line names the call and the account too.
    core = one(logger="sidecar.charging", call=calls["BROKE"], decision="reject")
    assert (core["account"], core["code"]) == ("BROKE", 402)
    # The cut: the core decides to end the call, the edge sends dlg.end_dlg (how late).
    ending = one(logger="sidecar.charging", call=calls["PRE"], decision="end")
    assert (ending["account"], ending["reason"]) == ("PRE", "credit exhausted")
    sent = one(logger="sidecar.live", call=calls["PRE"], decision="end")
    assert (sent["account"], sent["reason"], sent["node"]) == ("PRE", "credit exhausted", node)
    assert isinstance(sent["latency_ms"], int) and 0 <= sent["latency_ms"] < 1000
    # The CDR of the call the sidecar ended (info: it needs a look), and of a refusal.
    cdr = one(call=calls["PRE"], decision="cdr")
    assert (cdr["account"], cdr["node"], cdr["level"], cdr["reason"]) == \
        ("PRE", node, "info", "credit exhausted")
    cdr = one(call=calls["BROKE"], decision="cdr")
    assert (cdr["account"], cdr["code"], cdr["level"]) == ("BROKE", 402, "debug")
