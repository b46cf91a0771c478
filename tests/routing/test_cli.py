"""``sidecar carrier ...`` and ``sidecar route`` as an operator runs them (the installed
console script), on SQLite and once on PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sidecar.charging.model import AccountKind
from sidecar.store.accounts import add_account
from sidecar.store.carriers import add_carrier, import_carrier_deck
from sidecar.store.db import connect
from sidecar.store.decks import import_deck
from tests.cli.test_rating_cli import run
from tests.conftest import write
from tests.store.pgdb import as_url, fresh_database

H = "destination;code;rate_usd;increment;effective_from\n"
SELL = H + "Germany;49;0.0200;60/60;2026-06-01\nGermany Fixed;4930;0.0180;60/60;2026-06-01\n"
AT = "2026-11-21T12:00:00"
T0 = 1_795_262_400_000  # AT in Unix ms


CARRIERS = (("alpha", "sip:gw.alpha.example:5060", "DE;49;0.0150;1/1;2026-06-01"),
            ("beta", "sips:198.51.100.7:5061;transport=tls", "DE;4930;0.0120;1/1;2026-06-01"),
            ("gamma", "sip:gw.gamma.example", "DE;4930;0.0190;1/1;2026-06-01"))


def setup_store(tmp: Path, *db: str) -> None:
    """The sell plan, account ACME and three carriers with their buy decks, through the
    commands an operator runs."""
    run(tmp, *db, "deck", "import", str(write(tmp / "sell.csv", SELL)), "--plan", "retail",
        "--as-of", "2026-11-21")
    run(tmp, *db, "account", "add", "ACME", "--plan", "retail", "--balance", "10")
    for name, uri, row in CARRIERS:
        run(tmp, *db, "carrier", "add", name, "--uri", uri, "--currency", "USD")
        out = run(tmp, *db, "carrier", "deck", "import", name,
                  str(write(tmp / f"{name}.csv", H + row + "\n")), "--as-of", "2026-11-21")
        assert f"carrier {name}: buy deck version 1 imported, 1 lines" in out.stdout


@pytest.fixture
def lcr(tmp_path: Path) -> Path:
    """The store the CLI tests use (``cli.db``), made as ``setup_store`` makes it through
    the commands, but in-process: each command costs a process start."""
    conn = connect(tmp_path / "cli.db")
    as_of = datetime(2026, 11, 21, tzinfo=UTC)
    import_deck(conn, "retail", write(tmp_path / "sell.csv", SELL), as_of=as_of)
    add_account(conn, "ACME", "retail", AccountKind.PREPAID, now_ms=T0)
    for name, uri, row in CARRIERS:
        add_carrier(conn, name, uri, currency="USD", now_ms=T0)
        import_carrier_deck(conn, name, write(tmp_path / f"{name}.csv", H + row + "\n"),
                            as_of=as_of)
    conn.close()
    return tmp_path


def route(tmp: Path, *args: str, ok: bool = True) -> dict[str, Any]:
    p = run(tmp, "route", "+4930123456", "--account", "ACME", "--at", AT, "--json", *args,
            ok=ok)
    doc: dict[str, Any] = json.loads(p.stdout)
    assert (p.returncode == 0) == bool(doc["routes"])
    return doc


def test_carriers_are_added_listed_and_shown(lcr: Path) -> None:
    listed = json.loads(run(lcr, "carrier", "list", "--json").stdout)
    assert [(c["name"], c["uri"], c["enabled"], c["deck_versions"]) for c in listed] == [
        ("alpha", "sip:gw.alpha.example:5060", True, 1),
        ("beta", "sips:198.51.100.7:5061;transport=tls", True, 1),
        ("gamma", "sip:gw.gamma.example", True, 1)]
    run(lcr, "carrier", "add", "delta", "--uri", "sip:gw.delta.example", "--currency", "USD",
        "--max-calls", "30", "--max-cps", "5")
    shown = json.loads(run(lcr, "carrier", "show", "delta", "--json").stdout)
    assert (shown["max_calls"], shown["max_cps"], shown["deck"]["versions"],
            shown["events"][0]["kind"]) == (30, 5, [], "added")
    text = run(lcr, "carrier", "show", "delta").stdout
    assert "no buy deck imported yet" in text and "max calls 30, max cps 5" in text
    bad = run(lcr, "carrier", "add", "eps", "--uri", "sip:gw.example:99999", "--currency",
              "USD", ok=False)
    assert bad.returncode == 2
    assert "port '99999' is not a number from 1 to 65535" in bad.stderr
    again = run(lcr, "carrier", "add", "alpha", "--uri", "sip:x.example", "--currency", "USD",
                ok=False)
    assert again.returncode == 1 and "carrier 'alpha' exists already" in again.stderr
    missing = run(lcr, "carrier", "show", "zeta", ok=False)
    assert missing.returncode == 1 and "carrier 'zeta' not found (carriers: alpha" in \
        missing.stderr


def test_a_bad_buy_deck_imports_nothing_and_says_where(lcr: Path) -> None:
    deck = write(lcr / "bad.csv", H + "DE;49;0.0100;1/1;2026-06-01\nDE;4930;0.01;0/6;2026-06-01\n")
    p = run(lcr, "carrier", "deck", "import", "alpha", str(deck), ok=False)
    assert p.returncode == 2
    assert f"{deck}:3:4 (increment)" in p.stderr and "nothing imported" in p.stderr
    shown = json.loads(run(lcr, "carrier", "show", "alpha", "--json").stdout)
    assert [v["version"] for v in shown["deck"]["versions"]] == [1]
    p = run(lcr, "carrier", "deck", "import", "zeta", str(deck), ok=False)
    assert p.returncode == 1 and "carrier 'zeta' not found" in p.stderr
    # The buy decks stay out of the sell plans.
    plans = json.loads(run(lcr, "deck", "plans", "--json").stdout)
    assert [p["plan"] for p in plans] == ["retail"]


def test_route_lists_buy_sell_and_margin_cheapest_first(lcr: Path) -> None:
    doc = route(lcr)
    assert doc["sell"] == {"destination": "Germany Fixed", "prefix": "4930", "rate": "0.0180",
                           "increment": "60/60", "connection_fee": "0", "cost": "0.01800000"}
    assert [(r["carrier"], r["prefix"], r["buy"], r["sell"], r["margin"],
             r["margin_percent"]) for r in doc["routes"]] == [
        ("beta", "4930", "0.01200000", "0.01800000", "0.00600000", "33.33"),
        ("alpha", "49", "0.01500000", "0.01800000", "0.00300000", "16.67")]
    assert doc["routes"][0]["uri"] == "sips:198.51.100.7:5061;transport=tls"
    assert [(e["carrier"], e["why"], e["margin"]) for e in doc["excluded"]] == [
        ("gamma", "loss", "-0.00100000")]
    text = run(lcr, "route", "+4930123456", "--account", "ACME", "--at", AT).stdout
    assert "a 60 s call sells for 0.018 USD" in text
    assert text.index("beta") < text.index("alpha") < text.index("gamma")


def test_the_minimum_margin_is_exact_and_no_route_is_a_clear_refusal(lcr: Path) -> None:
    doc = route(lcr, "--min-margin", "0.003")  # alpha leaves exactly 0.003
    assert [r["carrier"] for r in doc["routes"]] == ["beta", "alpha"]
    doc = route(lcr, "--min-margin", "0.00300001")
    assert [r["carrier"] for r in doc["routes"]] == ["beta"]
    doc = route(lcr, "--min-margin-percent", "40", ok=False)
    assert doc["routes"] == []
    assert "; beta leaves 0.006/min (33.33%), below the minimum margin of 40%; " in str(
        doc["reason"])
    p = run(lcr, "route", "+4930123456", "--account", "ACME", "--at", AT,
            "--min-margin-percent", "40", ok=False)
    assert p.returncode == 1 and "error: no route to 4930123456" in p.stderr
    neg = run(lcr, "route", "4930", "--account", "ACME", "--min-margin", "-0.01", ok=False)
    assert neg.returncode == 2 and "is negative" in neg.stderr


def test_a_disabled_carrier_is_left_out_until_enabled(lcr: Path) -> None:
    out = run(lcr, "carrier", "disable", "beta", "--reason", "maintenance window").stdout
    assert "carrier beta disabled since" in out and "by operator: maintenance window" in out
    doc = route(lcr)
    assert [r["carrier"] for r in doc["routes"]] == ["alpha"]
    assert {"carrier": "beta", "why": "disabled", "detail": "disabled: maintenance window",
            "buy": "0.01200000", "margin": "0.00600000"} in doc["excluded"]
    assert "enabled" in run(lcr, "carrier", "enable", "beta", "--note", "done").stdout
    assert "already enabled" in run(lcr, "carrier", "enable", "beta").stdout
    assert [r["carrier"] for r in route(lcr)["routes"]] == ["beta", "alpha"]
    kinds = [e["kind"] for e in json.loads(run(lcr, "carrier", "show", "beta", "--json")
                                           .stdout)["events"]]
    assert kinds == ["enabled", "disabled", "added"]


def _cdrs(db: Path, carrier: str, calls: int, answered: int) -> None:
    conn = sqlite3.connect(db)
    with conn:
        for i in range(calls):
            offered = T0 - 3_600_000 + i * 1000
            up = i < answered
            conn.execute(
                "INSERT INTO cdrs (call_ref, call_id, account, disposition, route, offered_ms, "
                "ringing_ms, answered_ms, ended_ms, duration_ms) VALUES (?, ?, 'ACME', ?, ?, ?, "
                "?, ?, ?, ?)",
                (f"{carrier}-{i}", f"{carrier}-{i}@test", "answered" if up else "failed",
                 carrier, offered, offered + 2000, offered + 6000 if up else None,
                 offered + 126_000 if up else offered + 8000, 120_000 if up else 0))
    conn.close()


def test_quality_order_puts_a_cheap_carrier_that_completes_few_calls_last(lcr: Path) -> None:
    _cdrs(lcr / "cli.db", "beta", 40, 4)  # ASR 0.10
    _cdrs(lcr / "cli.db", "alpha", 40, 30)  # ASR 0.75
    doc = route(lcr, "--order", "quality")
    routes = doc["routes"]
    assert [r["carrier"] for r in routes] == ["alpha", "beta"]
    assert routes[0]["stats"]["asr"] == "0.7500"
    assert routes[1]["stats"]["asr"] == "0.1000"
    assert float(routes[0]["quality"]) > float(routes[1]["quality"])
    # The same figures do not change the cost order.
    assert [r["carrier"] for r in route(lcr)["routes"]] == ["beta", "alpha"]


def test_route_needs_an_account_and_a_sell_price(lcr: Path) -> None:
    p = run(lcr, "route", "4930123", "--account", "NOPE", ok=False)
    assert p.returncode == 1 and "NOPE" in p.stderr
    p = run(lcr, "route", "+33123456", "--account", "ACME", ok=False)
    assert p.returncode == 1
    assert "no rate for 33123456: no route without a sell price" in p.stderr


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as conninfo:
        yield as_url(conninfo)


def test_carriers_and_routes_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    setup_store(tmp_path, "--db", pg_url)
    p = run(tmp_path, "--db", pg_url, "route", "+4930123456", "--account", "ACME", "--at", AT,
            "--json")
    doc = json.loads(p.stdout)
    assert [(r["carrier"], r["margin"]) for r in doc["routes"]] == [
        ("beta", "0.00600000"), ("alpha", "0.00300000")]
    run(tmp_path, "--db", pg_url, "carrier", "disable", "alpha", "--reason", "test")
    listed = json.loads(run(tmp_path, "--db", pg_url, "carrier", "list", "--json").stdout)
    assert [(c["name"], c["enabled"], c["disabled_reason"]) for c in listed] == [
        ("alpha", False, "test"), ("beta", True, ""), ("gamma", True, "")]
