"""Carriers in the store, on SQLite and PostgreSQL alike: added with a checked
destination, their buy decks imported by the sell decks' code (versions, notice, errors)
and kept apart from the sell plans, disabled and enabled with events, route health's
events applied once, and the schema upgrade from version 6."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.charging.model import AccountKind
from sidecar.rating import DeckError
from sidecar.routing import CarrierError, EventKind, HealthEvent, RoutingPolicy, select_routes
from sidecar.store.accounts import add_account
from sidecar.store.carriers import (
    CarrierExists,
    CarrierNotFound,
    add_carrier,
    buy_plan,
    carrier_events,
    deck_info,
    get_carrier,
    import_carrier_deck,
    list_carriers,
    load_carrier_decks,
    record_health_event,
    set_enabled,
)
from sidecar.store.conn import Db
from sidecar.store.decks import (
    BUY,
    PlanLoader,
    PlanNotFound,
    get_plan,
    import_deck,
    list_plans,
    load_table,
    plan_revisions,
)
from sidecar.store.schema import SCHEMA_VERSION
from tests.conftest import downgrade_and_reopen, write

H = "destination;code;rate_usd;increment;effective_from\n"
NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)
T0 = int(NOW.timestamp() * 1000)
D = Decimal


@pytest.fixture
def db(store: Db, tmp_path: Path) -> Db:
    """Sell plan 'retail' (0.02/min to 49) and carriers alpha (USD) and beta (USD)."""
    retail = write(tmp_path / "retail.csv", H + "DE;49;0.0200;1/1;2026-06-01\n")
    import_deck(store, "retail", retail, as_of=NOW)
    add_carrier(store, "alpha", "sip:gw.alpha.example:5060", currency="USD", max_calls=50,
                now_ms=T0)
    add_carrier(store, "beta", "sip:10.1.2.3", currency="USD", now_ms=T0)
    return store


def test_a_carrier_is_added_once_with_a_checked_destination(db: Db) -> None:
    a = get_carrier(db, "alpha")
    assert (a.name, a.uri, a.plan, a.max_calls, a.max_cps, a.enabled) == (
        "alpha", "sip:gw.alpha.example:5060", "carrier:alpha", 50, None, True)
    assert [c.name for c in list_carriers(db)] == ["alpha", "beta"]
    with pytest.raises(CarrierExists, match="carrier 'alpha' exists already"):
        add_carrier(db, "alpha", "sip:other.example", currency="USD", now_ms=T0)
    for bad in ({"uri": "tel:+4930"}, {"uri": "sip:x.example", "max_calls": 0},
                {"uri": "sip:x.example", "name": "no spaces"}):
        args = {"name": "gamma", "currency": "USD", "now_ms": T0, **bad}
        with pytest.raises(CarrierError):
            add_carrier(db, **args)  # type: ignore[arg-type]
    assert [c.name for c in list_carriers(db)] == ["alpha", "beta"]  # nothing written
    with pytest.raises(CarrierNotFound, match=r"carrier 'gamma' not found \(carriers: alpha, "
                                              r"beta\)"):
        get_carrier(db, "gamma")
    assert [e["kind"] for e in carrier_events(db, "alpha")] == ["added"]


def test_a_buy_deck_is_imported_by_the_sell_decks_code(db: Db, tmp_path: Path) -> None:
    v1 = import_carrier_deck(db, "alpha", write(tmp_path / "a1.csv", H + (
        "DE;49;0.0100;1/1;2026-06-01\nDE Berlin;4930;0.0090;1/1;2026-06-01\n")), as_of=NOW)
    assert (v1.plan, v1.version, v1.lines, v1.currency) == ("carrier:alpha", 1, 2, "USD")
    # The notice rule of sell decks: an increase needs 7 days.
    with pytest.raises(DeckError, match=r"increase for 4930 .* gives less than the plan's "
                                        r"7-day notice"):
        import_carrier_deck(db, "alpha", write(tmp_path / "a2.csv", H + (
            "DE Berlin;4930;0.0120;1/1;2026-11-22\n")), as_of=NOW)
    # The errors name file, line and column; nothing is imported.
    with pytest.raises(DeckError) as exc:
        import_carrier_deck(db, "alpha", write(tmp_path / "bad.csv", H + (
            "DE;49;0.01x;1/1;2026-06-01\n")), as_of=NOW)
    assert f"{tmp_path / 'bad.csv'}:2:3 (rate_usd)" in str(exc.value)
    # A decrease applies at once, as the next version.
    v2 = import_carrier_deck(db, "alpha", write(tmp_path / "a3.csv", H + (
        "DE Berlin;4930;0.0080;1/1;2026-11-21\n")), as_of=NOW)
    assert (v2.version, v2.decreases) == (2, 1)
    info = deck_info(db, get_carrier(db, "alpha"))
    assert [v["version"] for v in info["versions"]] == [1, 2]  # type: ignore[attr-defined]
    table = load_table(db, "carrier:alpha", kind=BUY)
    assert table.lookup("4930123", T0 // 1000).rate == Decimal("0.0080")  # type: ignore[union-attr]
    # A deck in another currency than the carrier's is refused.
    with pytest.raises(DeckError, match="deck is in EUR but buy deck 'carrier:beta' is in USD"):
        import_carrier_deck(db, "beta", write(tmp_path / "eur.csv", (
            "destination;code;rate_eur;increment;effective_from\nDE;49;0.01;1/1;2026-06-01\n")),
            as_of=NOW)
    assert deck_info(db, get_carrier(db, "beta"))["versions"] == []


def test_buy_decks_are_never_sell_plans(db: Db, tmp_path: Path) -> None:
    import_carrier_deck(db, "alpha", write(tmp_path / "a.csv", H + "DE;49;0.01;1/1;2026-06-01\n"),
                        as_of=NOW)
    assert [p["plan"] for p in list_plans(db)] == ["retail"]
    assert [p["plan"] for p in list_plans(db, kind=BUY)] == ["carrier:alpha"]
    assert set(plan_revisions(db)) == {"retail"}
    assert set(PlanLoader().load_all(db)) == {"retail"}
    assert set(PlanLoader(kind=BUY).load_all(db)) == {"carrier:alpha"}
    with pytest.raises(PlanNotFound, match="rate plan 'carrier:alpha' not found"):
        get_plan(db, "carrier:alpha")
    with pytest.raises(PlanNotFound):
        add_account(db, "ACME", "carrier:alpha", AccountKind.PREPAID, now_ms=T0)
    # A sell deck cannot be imported into a buy deck, nor the reverse.
    with pytest.raises(DeckError, match="'carrier:alpha' is a buy deck, not a rate plan"):
        import_deck(db, "carrier:alpha", write(tmp_path / "s.csv", H + "DE;49;1;1/1;2026-06-01\n"),
                    as_of=NOW)
    with pytest.raises(DeckError, match="'retail' is a rate plan, not a buy deck"):
        import_deck(db, "retail", tmp_path / "s.csv", as_of=NOW, kind=BUY)
    # A plan taking a carrier's buy deck name keeps the carrier from being added.
    import_deck(db, buy_plan("gamma"), tmp_path / "s.csv", as_of=NOW)
    with pytest.raises(CarrierExists, match="a rate plan named 'carrier:gamma' exists"):
        add_carrier(db, "gamma", "sip:g.example", currency="USD", now_ms=T0)


def test_the_loaded_decks_give_the_route_list(db: Db, tmp_path: Path) -> None:
    for name, row in (("alpha", "DE;49;0.0150;1/1;2026-06-01\n"),
                      ("beta", "DE;4930;0.0120;1/1;2026-06-01\n")):
        import_carrier_deck(db, name, write(tmp_path / f"{name}.csv", H + row), as_of=NOW)
    sell = load_table(db, "retail").lookup("4930555", T0 // 1000)
    assert sell is not None
    decks = load_carrier_decks(db)
    res = select_routes("4930555", T0, sell, decks, RoutingPolicy())
    assert [(r.carrier, r.buy, r.margin) for r in res.routes] == [
        ("beta", Decimal("0.012"), Decimal("0.008")), ("alpha", Decimal("0.015"),
                                                       Decimal("0.005"))]
    set_enabled(db, "beta", False, reason="maintenance", now_ms=T0 + 1)
    res = select_routes("4930555", T0 + 2, sell, load_carrier_decks(db), RoutingPolicy())
    assert [r.carrier for r in res.routes] == ["alpha"]
    assert res.excluded[0].detail == "disabled: maintenance"


def test_disable_and_enable_are_events_and_keep_since_when(db: Db) -> None:
    c = set_enabled(db, "alpha", False, reason="maintenance", now_ms=T0 + 1000)
    assert (c.enabled, c.disabled_reason, c.disabled_ms, c.disabled_by) == (
        False, "maintenance", T0 + 1000, "operator")
    c = set_enabled(db, "alpha", False, reason="still maintenance", now_ms=T0 + 2000)
    assert (c.disabled_reason, c.disabled_ms) == ("still maintenance", T0 + 1000)
    c = set_enabled(db, "alpha", True, reason="done", now_ms=T0 + 3000)
    assert (c.enabled, c.disabled_reason, c.disabled_ms) == (True, "", None)
    set_enabled(db, "alpha", True, now_ms=T0 + 4000)  # already enabled: no event
    assert [(e["kind"], e["reason"]) for e in carrier_events(db, "alpha")] == [
        ("enabled", "done"), ("disabled", "still maintenance"), ("disabled", "maintenance"),
        ("added", "added: sip:gw.alpha.example:5060, buy deck in USD")]
    with pytest.raises(CarrierNotFound):
        set_enabled(db, "nope", False, now_ms=T0)


def test_route_health_events_apply_once(db: Db) -> None:
    pulled = HealthEvent("beta", EventKind.PULLED, T0, "health",
                         "FAS score 70 at or above 50 over 40 calls in 60 min",
                         {"fas_score": 70, "attempts": 40}, T0 + 900_000)
    assert record_health_event(db, pulled) is True
    assert record_health_event(db, pulled) is False  # replayed: once
    b = get_carrier(db, "beta")
    assert (b.enabled, b.disabled_by, b.until_ms) == (False, "health", T0 + 900_000)
    assert not b.usable(T0 + 899_999) and b.usable(T0 + 900_000)
    [ev] = [e for e in carrier_events(db, "beta") if e["kind"] == "pulled"]
    assert ev["evidence"] == {"fas_score": 70, "attempts": 40, "until_ms": T0 + 900_000}
    restored = HealthEvent("beta", EventKind.RESTORED, T0 + 900_000, "cool-down", "over")
    assert record_health_event(db, restored)
    assert get_carrier(db, "beta").enabled
    # A restore by route health does not undo an operator's disable.
    record_health_event(db, HealthEvent("alpha", EventKind.PULLED, T0, "health", "ASR", {},
                                        T0 + 1))
    set_enabled(db, "alpha", False, reason="contract ended", now_ms=T0 + 1)
    record_health_event(db, HealthEvent("alpha", EventKind.RESTORED, T0 + 2, "cool-down", ""))
    a = get_carrier(db, "alpha")
    assert (a.enabled, a.disabled_by, a.disabled_reason) == (False, "operator",
                                                              "contract ended")


def test_a_version_6_store_gains_carriers(db: Db, tmp_path: Path) -> None:
    """A store of the previous release (no carriers, no plan kinds) is upgraded in place:
    its plans are sell plans, and carriers can be added."""
    sql = ["DROP TABLE carrier_events", "DROP TABLE carriers",
           "DELETE FROM plans WHERE kind = 'buy'", "ALTER TABLE plans DROP COLUMN kind",
           "UPDATE meta SET value = '6' WHERE key = 'schema_version'"]
    up, columns = downgrade_and_reopen(db, sql)
    try:
        assert up.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[
            0] == str(SCHEMA_VERSION) == "11"
        assert [str(r[0]) for r in up.execute(columns, ("plans",))][-2:] == ["limits", "kind"]
        assert [p["plan"] for p in list_plans(up)] == ["retail"]
        assert list_carriers(up) == []
        add_carrier(up, "alpha", "sip:gw.alpha.example", currency="USD", now_ms=T0)
        import_carrier_deck(up, "alpha", write(tmp_path / "a.csv", H + "DE;49;0.01;1/1;"
                                               "2026-06-01\n"), as_of=NOW)
        assert [p["plan"] for p in list_plans(up)] == ["retail"]
    finally:
        up.close()


def test_a_pull_in_a_store_batch_and_routed_cdrs_add_up_to_the_margins(db: Db) -> None:
    """The live sidecar's writes on each database: a route health pull applied once in a
    batch (also when replayed), routed CDRs with buy cost and margin, and
    ``stats margin``'s sums exact."""
    from sidecar.charging.commands import CarrierHealth, Settle
    from sidecar.charging.model import Cdr, Disposition
    from sidecar.invoices.analytics import margins
    from sidecar.store.accounts import ledger_for

    add_account(db, "ACME", "retail", AccountKind.POSTPAID, now_ms=T0)
    pull = CarrierHealth(1, "alpha", "pulled", "health", "ASR 0.1000 below 0.15",
                         '{"attempts": 20}', T0 + 60_000, T0)
    calls = [("c1", "alpha", "0.06", "0.035", "0"), ("c2", "alpha", "0.02", "0.01", "0.02"),
             ("c3", "beta", "0.10", "0.09", "0")]
    settles = [Settle(i + 2, Cdr(ref, ref, Disposition.ANSWERED, account="ACME",
                                 plan="retail", destination="DE", currency="USD",
                                 offered_ms=T0, answered_ms=T0, ended_ms=T0 + 60_000,
                                 billed_seconds=60, cost=D(cost), credited=D(credit),
                                 route=carrier, buy_cost=D(buy),
                                 margin=D(cost) - D(credit) - D(buy)), T0 + 60_000)
               for i, (ref, carrier, cost, buy, credit) in enumerate(calls)]
    ledger = ledger_for(db)
    res = ledger.execute([pull, *settles])
    assert all(o.ok for o in res.outcomes), res
    ledger.execute([pull])  # replayed from a journal: nothing more
    a = get_carrier(db, "alpha")
    assert (a.enabled, a.disabled_by, a.until_ms) == (False, "health", T0 + 60_000)
    assert [e["kind"] for e in carrier_events(db, "alpha")].count("pulled") == 1
    rows = {r.key: r for r in margins(db, "carrier")}
    assert (rows["alpha"].calls, rows["alpha"].sell, rows["alpha"].buy,
            rows["alpha"].margin, rows["alpha"].losses) == (
        2, D("0.06"), D("0.045"), D("0.015"), 1)
    assert (rows["beta"].margin, rows["beta"].percent) == (D("0.01"), D("10.00"))
    (dest,) = margins(db, "destination")
    assert (dest.key, dest.margin) == ("DE", D("0.025"))
    stored = {str(r[0]): (r[1], r[2]) for r in db.execute(
        "SELECT call_ref, buy_cost, margin FROM cdrs")}
    assert D(str(stored["c2"][1])) == D("-0.01")
