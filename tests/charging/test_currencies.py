"""Accounts paying in another currency than their plan rates in (issue 14, currencies):
the call is rated on the deck, converted at the rate in force when it is rated, reserved
and charged in the account's currency; the CDR keeps both amounts and the rate. On a real
SQLite store, with the charging core's own arithmetic checked against hand arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from sidecar.store.accounts import verify_ledger
from sidecar.store.fx import load_fx, set_rate
from tests.charging.harness import T0, Sim

D = Decimal


def eur_sim(rate: str = "0.92") -> Sim:
    sim = Sim()
    set_rate(sim.conn, "USD", "EUR", rate, datetime(2026, 1, 1, tzinfo=UTC), now_ms=T0)
    sim.charger.fx = load_fx(sim.conn)
    sim.account("acme", "10", currency="EUR")
    return sim


def test_a_call_is_rated_on_the_deck_and_charged_in_the_accounts_currency() -> None:
    sim = eur_sim()
    d = sim.charger.authorize("c", number="33123456", account_code="acme", now_ms=sim.now)
    # France: 0.12 USD/min on 30/6 with a 0.01 USD fee; 10 EUR buy
    # (10 - 0.0092) / (0.12 * 0.92 / 60) = 5429.5 s -> 5424 s on the 30/6 grid.
    assert d.allow and d.max_seconds == 5424
    sim.answer("c")
    sim.now += 95_300  # 95.3 s: 96 s billed on 30/6
    sim.end("c", ended_by="caller", reason="bye")
    (cdr,) = sim.cdrs("acme")
    assert (cdr["currency"], cdr["deck_currency"], cdr["fx_rate"]) == ("EUR", "USD", "0.92")
    assert cdr["billed_seconds"] == 96
    # Deck: 0.12 * 96 / 60 = 0.192 + 0.01 fee = 0.202 USD. Account: each part converted
    # exactly and rounded once: 0.1104 * 96 / 60 = 0.17664 + 0.0092 = 0.18584 EUR.
    assert D(cdr["deck_cost"]) == D("0.202")
    assert D(cdr["cost"]) == D("0.18584") == D(cdr["charged"])
    assert sim.balance("acme") == D("10") - D("0.18584")
    assert all(not chk.problems for chk in verify_ledger(sim.conn))


def test_without_a_rate_in_force_no_account_is_made_and_no_call_is_rated() -> None:
    sim = eur_sim()
    with pytest.raises(ValueError, match="no exchange rate USD/GBP is in force"):
        sim.account("brit", "10", currency="GBP")
    set_rate(sim.conn, "USD", "GBP", "0.79", datetime(2026, 11, 1, tzinfo=UTC), now_ms=T0)
    sim.charger.fx = load_fx(sim.conn)
    sim.account("brit", "10", currency="GBP")
    early = T0 - 30 * 86_400_000  # before the rate's first day
    d = sim.charger.authorize("x", number="4930111", account_code="brit", now_ms=early)
    assert (d.allow, d.code, d.phrase, d.limit) == (False, 503, "No Exchange Rate", "fx")
    assert "no exchange rate USD/GBP in force" in d.reason
    assert sim.charger.authorize("y", number="4930111", account_code="brit",
                                 now_ms=sim.now).allow


def test_a_new_rate_applies_to_calls_rated_after_it() -> None:
    sim = eur_sim()
    set_rate(sim.conn, "USD", "EUR", "0.95", datetime.fromtimestamp((T0 + 60_000) / 1000, UTC),
             now_ms=T0)
    sim.charger.fx = load_fx(sim.conn)
    for ref in ("before", "after"):
        sim.charger.authorize(ref, number="4930111", account_code="acme", now_ms=sim.now)
        sim.answer(ref)
        sim.now += 60_000
        sim.end(ref, ended_by="caller", reason="bye")
    rows = {c["call_ref"]: c for c in sim.cdrs("acme")}
    # 0.06 USD a minute: 0.0552 EUR at 0.92, 0.057 EUR at 0.95.
    assert (rows["before"]["fx_rate"], D(rows["before"]["cost"])) == ("0.92", D("0.0552"))
    assert (rows["after"]["fx_rate"], D(rows["after"]["cost"])) == ("0.95", D("0.057"))
    assert D(rows["before"]["deck_cost"]) == D(rows["after"]["deck_cost"]) == D("0.06")


def test_spend_in_one_reporting_currency() -> None:
    from sidecar.invoices.analytics import spend
    from sidecar.rating.fx import FxError

    sim = eur_sim("0.8")
    sim.account("yank", "10")  # pays in the plan's dollars
    for ref, code in (("e", "acme"), ("u", "yank")):
        sim.charger.authorize(ref, number="4930111", account_code=code, now_ms=sim.now)
        sim.answer(ref)
        sim.now += 60_000
        sim.end(ref, ended_by="caller", reason="bye")
    own = {(r.key, r.currency): r.exact for r in spend(sim.conn, "account")}
    assert own == {("acme", "EUR"): D("0.048"), ("yank", "USD"): D("0.06")}
    # In dollars: the euro call back at the rate of its end (0.048 / 0.8 = 0.06).
    usd = {r.key: (r.currency, r.exact, r.amount) for r in spend(sim.conn, "account",
                                                                  currency="USD")}
    assert usd == {"acme": ("USD", D("0.06"), D("0.06")), "yank": ("USD", D("0.06"), D("0.06"))}
    (total,) = spend(sim.conn, "destination", currency="EUR")
    assert (total.currency, total.exact) == ("EUR", D("0.096"))
    with pytest.raises(FxError, match="EUR/GBP in force"):
        spend(sim.conn, "account", currency="GBP")
