"""End to end: least-cost routing (issue 15) with the real Kamailio and its shipped
configuration, the real ``sidecar run`` and several real SIPp carriers on 127.0.0.1.

Carriers and their buy decks are set up the way an operator does it (``sidecar carrier
add`` and ``sidecar carrier deck import``) before the sidecar starts. The sidecar picks
the carriers at the INVITE, Kamailio tries them in order, and each test asserts what an
operator notices: which carrier got the INVITE, the code the caller gets, the CDR's
buy cost, sell price and margin, and route health pulling a carrier that fakes answers.
Every process is stopped by PID when the test ends, also on failure.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sidecar.lab import free_port, free_port_block
from sidecar.lab.live import HOST, LiveLab
from sidecar.lab.sipp import SippProcess
from sidecar.money import fmt
from sidecar.store.accounts import verify_ledger
from tests.e2e.test_limits import cli, cli_json, reasons
from tests.e2e.test_live_sidecar import account, cdrs, deck_store, wait_for
from tests.e2e.test_metrics import scrape

pytestmark = pytest.mark.timeout(180)

# The customer's sell deck: Germany Fixed at 0.06/min per second; Berlin Mobile at
# 0.05/min, which only the dearest carrier serves (above the sell price).
SELL = """destination;code;rate_usd;increment;effective_from
Germany Fixed;4930;0.0600;1/1;2026-01-01
Germany Mobile;4915;0.0500;1/1;2026-01-01
"""
FIXED = "4930123456"
MOBILE = "4915112345678"
AS_OF = "2026-01-01T00:00:00Z"


def buy_deck(rate: str, increment: str, mobile: str | None = None) -> str:
    text = ("destination;code;rate_usd;increment;effective_from\n"
            f"Germany Fixed;4930;{rate};{increment};2026-01-01\n")
    if mobile is not None:
        text += f"Germany Mobile;4915;{mobile};1/1;2026-01-01\n"
    return text


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sidecar.db"


@pytest.fixture
def db(db_path: Path, tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = deck_store(tmp_path, SELL)
    account(conn, "ACME", "10")
    yield conn
    conn.close()


class Carrier:
    """A SIPp carrier on its own SIP and RTP ports, known to the sidecar's store."""

    def __init__(self, lab: LiveLab | None, db_path: Path | str, tmp: Path, name: str,
                 deck: str) -> None:
        self.lab = lab  # whose exit stack stops its SIPp (set before ``answer``)
        self.name = name
        self.port = free_port("udp", HOST)
        self.uri = f"sip:{HOST}:{self.port}"
        cli(db_path, "carrier", "add", name, "--uri", self.uri, "--currency", "USD")
        path = tmp / f"buy-{name}.csv"
        path.write_text(deck)
        cli(db_path, "carrier", "deck", "import", name, str(path), "--as-of", AS_OF)
        self.proc: SippProcess | None = None

    def answer(self, scenario: str, *, calls: int = 1, duration_ms: int = 0) -> SippProcess:
        """Start the carrier's SIPp (it takes ``calls`` calls, then ends)."""
        assert self.lab is not None
        self.proc = self.lab._stack.enter_context(self.lab.uas_sipp.start_uas(
            scenario, port=self.port, media_port=free_port_block(HOST), calls=calls,
            duration_ms=duration_ms, timeout_s=60, name=self.name))
        return self.proc

    def invites(self) -> int:
        """INVITEs this carrier received (0 when it was never started: nobody listens)."""
        if self.proc is None:
            return 0
        return len([m for m in self.proc.result().received("INVITE") if not m.is_response])


@pytest.fixture
def lab(tmp_path: Path, db: sqlite3.Connection) -> Iterator[LiveLab]:
    with LiveLab(tmp_path / "lab", tmp_path / "sidecar.db", with_sidecar=False,
                 extra_config=MEDIA_AND_ROUTING, metrics=True) as lab:
        yield lab


MEDIA_AND_ROUTING = ('[media]\nenabled = true\ninterface = "lo"\n'
                     "[routing]\nhealth_min_attempts = 3\nhealth_cooldown_s = 3600\n")


def expected_buy(rate: str, step: int, signalled_ms: int) -> Decimal:
    """The carrier's price of a call: whole seconds rounded up, then up to its increment
    (``step``/``step``), at ``rate`` per minute (worked out here by hand, not by the
    rating code)."""
    seconds = math.ceil(signalled_ms / 1000)
    billed = math.ceil(seconds / step) * step
    return (Decimal(rate) * billed / 60).quantize(Decimal("0.00000001"))


def one_cdr(db: sqlite3.Connection, n: int = 1) -> dict[str, Any]:
    wait_for(lambda: len(cdrs(db, "ACME")) == n)
    return cdrs(db, "ACME")[-1]


def test_the_cheapest_carrier_answers_503_and_the_call_completes_on_the_second(
        lab: LiveLab, db: sqlite3.Connection, db_path: Path, tmp_path: Path) -> None:
    cheap = Carrier(lab, db_path, tmp_path, "cheap", buy_deck("0.0200", "1/1"))
    solid = Carrier(lab, db_path, tmp_path, "solid", buy_deck("0.0350", "6/6"))
    dear = Carrier(lab, db_path, tmp_path, "dear", buy_deck("0.0700", "1/1"))
    lab.start_sidecar()
    cheap.answer("uas_unavailable.xml")
    solid.answer("uas.xml")
    dear.answer("uas.xml")
    r = lab.uac(account_code="ACME", dialled=FIXED, duration_ms=2000).wait()
    assert r.calls_ok and r.final_codes == [200], r.output_tail() + lab.log_tail()
    c = one_cdr(db)
    assert (c["disposition"], c["route"]) == ("answered", "solid"), c
    # Cheapest first: cheap got the INVITE, answered 503; solid took the call; dear,
    # priced above the customer's 0.06/min, was never tried.
    assert (cheap.invites(), solid.invites(), dear.invites()) == (1, 1, 0)
    # Sell: 0.06/min per second on the billed seconds; buy: solid's 0.035/min in 6 s
    # steps from its 200 OK to the end; the margin is their difference, to the last place.
    billed = int(str(c["billed_seconds"]))
    sell = (Decimal("0.06") * billed / 60).quantize(Decimal("0.00000001"))
    assert Decimal(str(c["cost"])) == sell
    buy = expected_buy("0.0350", 6, int(str(c["signalled_ms"])))
    assert Decimal(str(c["buy_cost"])) == buy
    assert Decimal(str(c["margin"])) == sell - buy
    # What the customer pays is unchanged by routing.
    assert Decimal(str(c["charged"])) == sell
    assert all(not chk.problems for chk in verify_ledger(db))
    # The CLI shows the same CDR with its buy cost and margin.
    (shown,) = [x for x in json.loads(cli(db_path, "cdrs", "--account", "ACME", "--format",
                                          "json")) if x["call_ref"] == c["call_ref"]]
    assert (Decimal(shown["buy_cost"]), Decimal(shown["margin"])) == (buy, sell - buy)


def test_a_carrier_above_the_customers_rate_is_never_tried_no_route_is_refused_503(
        lab: LiveLab, db: sqlite3.Connection, db_path: Path, tmp_path: Path) -> None:
    solid = Carrier(lab, db_path, tmp_path, "solid", buy_deck("0.0350", "6/6"))
    dear = Carrier(lab, db_path, tmp_path, "dear", buy_deck("0.0700", "1/1",
                                                           mobile="0.0900"))
    lab.start_sidecar()
    solid.answer("uas.xml")
    dear.answer("uas.xml")
    r = lab.uac("uac_reject.xml", account_code="ACME", dialled=MOBILE).wait()
    assert r.final_codes == [503], r.output_tail() + lab.log_tail()
    assert reasons(r) == ["SIP/2.0 503 No Route Available"]
    c = one_cdr(db)
    assert c["disposition"] == "rejected" and c["sip_code"] == 503
    # The reason names every carrier and why it was left out.
    assert "dear costs 0.09" in str(c["end_reason"]), c["end_reason"]
    assert "solid has no rate for 4915112345678" in str(c["end_reason"]), c["end_reason"]
    assert c["buy_cost"] is None and c["margin"] is None
    assert (solid.invites(), dear.invites()) == (0, 0)
    assert Decimal(str(c["charged"])) == 0


def test_a_carrier_that_answers_without_media_is_pulled_and_no_longer_tried(
        lab: LiveLab, db: sqlite3.Connection, db_path: Path, tmp_path: Path) -> None:
    faker = Carrier(lab, db_path, tmp_path, "faker", buy_deck("0.0100", "1/1"))
    solid = Carrier(lab, db_path, tmp_path, "solid", buy_deck("0.0350", "6/6"))
    lab.start_sidecar()
    faker.answer("uas_nomedia.xml", calls=3)
    solid.answer("uas.xml", calls=1)
    for n in (1, 2, 3):  # health judges a carrier from 3 calls on ([routing] above)
        lab.uac(account_code="ACME", dialled=FIXED, duration_ms=1500).wait()
        c = one_cdr(db, n)
        assert (c["route"], c["fas_verdict"], c["disposition"]) == (
            "faker", "no-media", "no-media"), c
        # The customer pays nothing for a false answer; the carrier's charge is a loss.
        assert Decimal(str(c["charged"])) == 0
        assert Decimal(str(c["margin"])) == -Decimal(str(c["buy_cost"])) < 0
    wait_for(lambda: cli_json(db_path, "carrier", "show", "faker")["enabled"] is False)
    shown = cli_json(db_path, "carrier", "show", "faker")
    assert shown["disabled_by"] == "health", shown
    assert "FAS score" in shown["disabled_reason"], shown
    events = [e for e in shown["events"] if e["kind"] == "pulled"]
    assert len(events) == 1 and events[0]["evidence"]["attempts"] == 3, events
    assert "carrier faker pulled from the routes" in lab.sidecar_log.read_text()
    metrics = scrape(lab)
    assert metrics[("sidecar_carrier_pulled", (("carrier", "faker"),))] == 1
    assert metrics[("sidecar_carrier_pulled", (("carrier", "solid"),))] == 0
    assert metrics[("sidecar_carrier_fas_score", (("carrier", "faker"),))] >= 50
    # The next call goes to solid, though faker is cheaper.
    r = lab.uac(account_code="ACME", dialled=FIXED, duration_ms=1500).wait()
    assert r.calls_ok, r.output_tail() + lab.log_tail()
    c = one_cdr(db, 4)
    assert (c["route"], c["disposition"], c["fas_verdict"]) == ("solid", "answered", "")
    assert faker.invites() == 3 and solid.invites() == 1
    # An operator puts it back: the next call is offered to faker again.
    cli(db_path, "carrier", "enable", "faker", "--note", "carrier fixed its gateway")
    faker.answer("uas.xml", calls=1)
    wait_for(lambda: "faker enabled by an operator" in lab.sidecar_log.read_text())
    r = lab.uac(account_code="ACME", dialled=FIXED, duration_ms=1500).wait()
    assert r.calls_ok, r.output_tail() + lab.log_tail()
    assert one_cdr(db, 5)["route"] == "faker"


def test_stats_margin_by_carrier_destination_and_customer(
        lab: LiveLab, db: sqlite3.Connection, db_path: Path, tmp_path: Path) -> None:
    solid = Carrier(lab, db_path, tmp_path, "solid", buy_deck("0.0350", "6/6"))
    lab.start_sidecar()
    solid.answer("uas.xml", calls=2)
    for _ in range(2):
        r = lab.uac(account_code="ACME", dialled=FIXED, duration_ms=1500).wait()
        assert r.calls_ok, r.output_tail() + lab.log_tail()
    rows = [one_cdr(db, 2), cdrs(db, "ACME")[0]]
    sell = sum((Decimal(str(c["cost"])) for c in rows), Decimal(0))
    buy = sum((Decimal(str(c["buy_cost"])) for c in rows), Decimal(0))
    for by, key in (("carrier", "solid"), ("destination", "Germany Fixed"),
                    ("account", "ACME")):
        doc = cli_json(db_path, "stats", "margin", "--by", by)
        (row,) = doc["rows"]
        assert row["key"] == key, doc
        assert (row["calls"], row["answered"]) == (2, 2)
        assert (Decimal(row["sell"]), Decimal(row["buy"]), Decimal(row["margin"])) == (
            sell, buy, sell - buy), doc
    text = cli(db_path, "stats", "margin", "--by", "carrier")
    assert "solid" in text and fmt(sell - buy) in text
