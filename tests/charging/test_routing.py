"""Least-cost routing in the charging core, on a real SQLite store: the route list at the
offer, the next carrier after a failed try, capacity, buy cost and margin on the CDR to
the last decimal, route health pulling a carrier (stored once, also from a journal) and
an operator bringing it back."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.charging import Alert, AuthDecision
from sidecar.charging.commands import CarrierHealth
from sidecar.charging.model import MediaOutcome
from sidecar.routing.health import HealthPolicy
from sidecar.routing.router import Router, RouterConfig
from sidecar.routing.select import CarrierBook, Order, RoutingPolicy
from sidecar.store.carriers import (
    CarrierLoader,
    add_carrier,
    carrier_events,
    get_carrier,
    import_carrier_deck,
    set_enabled,
)
from sidecar.store.journal import Journal, decode, encode
from tests.charging.harness import T0, Sim

D = Decimal
HEADER = "destination;code;rate_usd;increment;effective_from;connection_fee\n"


def carriers(sim: Sim, tmp: Path, decks: dict[str, str], **kw: int) -> None:
    """Carriers named in ``decks`` (name -> lines under HEADER), in that order."""
    for name, lines in decks.items():
        add_carrier(sim.conn, name, f"sip:{name}.example:5060", currency="USD",
                    now_ms=sim.now, max_calls=kw.get(f"{name}_calls"))
        path = tmp / f"{name}.csv"
        path.write_text(HEADER + lines)
        from datetime import UTC, datetime

        import_carrier_deck(sim.conn, name, path, as_of=datetime(2026, 11, 1, tzinfo=UTC))


def routed(sim: Sim, config: RouterConfig | None = None) -> Router:
    router = Router(config or RouterConfig(health=HealthPolicy(min_attempts=3)))
    router.set_book(book_of(sim), sim.now)
    sim.charger.router = router
    return router


def book_of(sim: Sim) -> CarrierBook:
    """The carriers' book as ``sidecar run``'s store thread loads it."""
    loader = CarrierLoader()
    job = loader.load(sim.conn)
    assert job is not None
    return loader.build(job)


def offer(sim: Sim, ref: str, number: str = "4930111") -> AuthDecision:
    return sim.charger.authorize(ref, number=number, account_code="acme", now_ms=sim.now)


@pytest.fixture
def sim(tmp_path: Path) -> Sim:
    s = Sim()
    s.account("acme", "10")
    carriers(s, tmp_path, {
        "cheap": "Germany Fixed;4930;0.0200;1/1;2026-06-01;0\n",
        "solid": "Germany Fixed;4930;0.0350;6/6;2026-06-01;0.0010\n",
        "dear": "Germany Fixed;4930;0.0700;1/1;2026-06-01;0\n"
                "France;33;0.0500;1/1;2026-06-01;0\n",
    })
    return s


def test_the_offer_carries_the_routes_cheapest_first_and_never_a_loss(sim: Sim) -> None:
    routed(sim)
    d = offer(sim, "a")
    assert d.allow
    assert [(r.carrier, r.uri) for r in d.routes] == [
        ("cheap", "sip:cheap.example:5060"), ("solid", "sip:solid.example:5060")]
    # A retransmitted offer gets the same list.
    assert offer(sim, "a").routes == d.routes


def test_no_carrier_may_take_the_call_refused_503_naming_each(sim: Sim) -> None:
    routed(sim)
    d = offer(sim, "f", number="33123456789")  # France: sold 0.12 on 30/6, fee 0.01
    assert d.allow and [r.carrier for r in d.routes] == ["dear"]
    set_enabled(sim.conn, "dear", False, reason="contract ended", now_ms=sim.now)
    routed(sim)
    d = offer(sim, "g", number="33123456789")
    assert (d.allow, d.code, d.phrase, d.limit) == (
        False, 503, "No Route Available", "no_route")
    assert "dear disabled: contract ended" in d.reason
    assert "cheap has no rate for 33123456789" in d.reason
    (cdr,) = sim.cdrs("acme")
    assert (cdr["disposition"], cdr["sip_code"], cdr["buy_cost"]) == ("rejected", 503, None)


def test_a_failed_try_moves_the_call_and_the_cdr_prices_the_carrier_that_took_it(
        sim: Sim) -> None:
    routed(sim)
    offer(sim, "c")
    sim.now += 300
    sim.charger.attempt("c", sim.now, 503, "cheap")
    sim.now += 700
    sim.charger.answer("c", sim.now, route="solid")
    sim.now += 61_400  # 61.4 s after solid's 200 OK
    sim.end("c", ended_by="caller", reason="bye", route="solid")
    (cdr,) = sim.cdrs("acme")
    # Sell: 0.06/min on 1/1: 62 s -> 0.062. Buy: solid's 0.035/min on 6/6 -> 66 s
    # = 0.0385, plus its 0.001 connection fee.
    assert D(cdr["cost"]) == D("0.062")
    assert D(cdr["buy_cost"]) == D("0.0395")
    assert D(cdr["margin"]) == D("0.0225")
    assert cdr["route"] == "solid"


def test_a_false_answer_is_a_loss_the_customer_does_not_pay(sim: Sim) -> None:
    routed(sim)
    offer(sim, "x")
    sim.charger.answer("x", sim.now, route="cheap")
    sim.now += 10_000
    sim.end("x", ended_by="caller", reason="bye", route="cheap",
            media=MediaOutcome(None, "no-media", "no callee media"))
    (cdr,) = sim.cdrs("acme")
    assert D(cdr["charged"]) == 0
    assert D(cdr["buy_cost"]) == D("0.00333333") and D(cdr["margin"]) == D("-0.00333333")


def test_capacity_the_full_carrier_is_left_out_until_a_call_ends(tmp_path: Path) -> None:
    sim = Sim()
    sim.account("acme", "10")
    carriers(sim, tmp_path, {"cheap": "Germany Fixed;4930;0.0200;1/1;2026-06-01;0\n",
                             "solid": "Germany Fixed;4930;0.0350;1/1;2026-06-01;0\n"},
             cheap_calls=1)
    routed(sim)
    assert [r.carrier for r in offer(sim, "a").routes] == ["cheap", "solid"]
    assert [r.carrier for r in offer(sim, "b").routes] == ["solid"]
    sim.charger.attempt("a", sim.now, 503, "cheap")  # cheap refused a: a is on solid now
    assert [r.carrier for r in offer(sim, "c").routes] == ["cheap", "solid"]
    sim.end("c", ended_by="caller", reason="cancel", route="cheap", sip_code=487)
    assert offer(sim, "d").routes[0].carrier == "cheap"


def test_route_health_pulls_a_carrier_once_stores_it_and_an_operator_brings_it_back(
        sim: Sim) -> None:
    router = routed(sim)
    for i in range(3):  # three answers without media on cheap
        ref = f"n{i}"
        offer(sim, ref)
        sim.charger.answer(ref, sim.now, route="cheap")
        sim.now += 5_000
        sim.end(ref, ended_by="caller", reason="bye", route="cheap",
                media=MediaOutcome(None, "no-media", "no callee media"))
    actions = sim.advance_to(sim.now + 1)
    alerts = [a for a in actions if isinstance(a, Alert)]
    assert [a.kind for a in alerts] == ["route_pulled"]
    assert alerts[0].data["carrier"] == "cheap" and "FAS score" in alerts[0].message
    c = get_carrier(sim.conn, "cheap")
    assert (c.enabled, c.disabled_by) == (False, "health")
    (ev,) = [e for e in carrier_events(sim.conn, "cheap") if e["kind"] == "pulled"]
    assert ev["evidence"]["attempts"] == 3 and ev["evidence"]["answered"] == 3  # type: ignore[index]
    # The next call skips it; it is judged no more while pulled.
    assert [r.carrier for r in offer(sim, "next").routes] == ["solid"]
    assert not [a for a in sim.advance_to(sim.now + 5_000) if isinstance(a, Alert)]
    # An operator enables it; the store tells the router (a new book), and it is back.
    sim.now += 1_000
    set_enabled(sim.conn, "cheap", True, now_ms=sim.now)
    assert router.set_book(book_of(sim), sim.now) == ["cheap enabled by an operator"]
    assert offer(sim, "again").routes[0].carrier == "cheap"


def test_a_pull_journaled_while_the_store_failed_applies_once(sim: Sim, tmp_path: Path) -> None:
    cmd = CarrierHealth(9, "cheap", "pulled", "health", "ASR 0 below 0.15",
                        json.dumps({"attempts": 20}), T0 + 900_000, T0)
    assert decode(json.loads(json.dumps(encode(cmd)))) == cmd
    journal = Journal(tmp_path / "j")
    journal.append([cmd, cmd], "run-1")
    sim.ledger.execute([c for _run, c in journal.entries()])
    c = get_carrier(sim.conn, "cheap")
    assert (c.enabled, c.until_ms, c.disabled_reason) == (False, T0 + 900_000,
                                                           "ASR 0 below 0.15")
    assert len([e for e in carrier_events(sim.conn, "cheap") if e["kind"] == "pulled"]) == 1


def test_a_restarted_router_takes_up_the_stored_pull_until_its_cool_down(sim: Sim) -> None:
    sim.ledger.execute([CarrierHealth(1, "cheap", "pulled", "health", "FAS score 60",
                                      "{}", sim.now + 60_000, sim.now)])
    router = routed(sim)
    assert router.health.is_pulled("cheap")
    assert [r.carrier for r in offer(sim, "a").routes] == ["solid"]
    sim.advance_to(sim.now + 60_000)
    assert not router.health.is_pulled("cheap")
    assert get_carrier(sim.conn, "cheap").enabled  # the restore was stored
    assert offer(sim, "b").routes[0].carrier == "cheap"


def test_quality_order_prefers_the_carrier_that_completes_calls(sim: Sim) -> None:
    # A carrier of quality 0 counts at 5 times its price, one of quality 1 at its price.
    routed(sim, RouterConfig(policy=RoutingPolicy(order=Order.QUALITY, quality_penalty=D(4)),
                             health=HealthPolicy(min_attempts=50)))
    first = offer(sim, "first")  # nothing known yet: the price decides
    assert [r.carrier for r in first.routes] == ["cheap", "solid"]
    sim.end("first", ended_by="caller", reason="cancel", sip_code=487)
    for i in range(10):  # cheap fails every try; solid answers every call
        ref = f"q{i}"
        offer(sim, ref)
        sim.charger.attempt(ref, sim.now, 503, "cheap")
        sim.charger.answer(ref, sim.now + 500, route="solid")
        sim.now += 130_000
        sim.end(ref, ended_by="caller", reason="bye", route="solid")
    sim.now += 2_000
    assert [r.carrier for r in offer(sim, "z").routes] == ["solid", "cheap"]


def test_a_carrier_state_change_reuses_the_books_index_a_new_deck_builds_a_new_one(
        sim: Sim, tmp_path: Path) -> None:
    loader = CarrierLoader()
    first = loader.build(loader.load(sim.conn))  # type: ignore[arg-type]
    assert loader.load(sim.conn) is None  # nothing changed: nothing to build
    set_enabled(sim.conn, "dear", False, reason="maintenance", now_ms=sim.now)
    job = loader.load(sim.conn)
    assert job is not None
    second = loader.build(job)
    assert second._index is first._index
    assert {d.carrier.name: d.carrier.enabled for d in second.decks} == {
        "cheap": True, "dear": False, "solid": True}
    (tmp_path / "v2.csv").write_text(HEADER + "Germany Fixed;4930;0.0190;1/1;2026-06-01;0\n")
    from datetime import UTC, datetime

    import_carrier_deck(sim.conn, "cheap", tmp_path / "v2.csv",
                        as_of=datetime(2026, 11, 1, tzinfo=UTC))
    third = loader.build(loader.load(sim.conn))  # type: ignore[arg-type]
    assert third._index is not first._index
    (cheap, _dear, _solid) = third.lines("4930111", sim.now // 1000)  # by name
    assert cheap is not None and cheap.rate == D("0.0190")
