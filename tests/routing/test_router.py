"""The live routing state (pure): carriers' loads, each try counted once, route health
judged on the tries, the book replaced whole."""

from __future__ import annotations

from decimal import Decimal

import pytest

from sidecar.routing import CarrierBook, RoutingError
from sidecar.routing.health import EventKind, HealthPolicy
from sidecar.routing.router import Router, RouterConfig
from tests.routing.test_select import NOW_MS, NUMBER, SELL, deck, line

D = Decimal


def router(*decks: object, **health: object) -> Router:
    r = Router(RouterConfig(health=HealthPolicy(**health)))  # type: ignore[arg-type]
    r.set_book(CarrierBook(decks), NOW_MS)  # type: ignore[arg-type]
    return r


def two() -> Router:
    return router(deck("a", line("0.0100")), deck("b", line("0.0150")), min_attempts=4)


def test_each_try_counts_once_and_the_load_follows_the_call() -> None:
    r = two()
    routes = r.route(NUMBER, NOW_MS, SELL).routes
    r.started("c1", routes, NOW_MS)
    assert r.statistics(NOW_MS)["a"]["calls"] == 1
    r.attempt("c1", "a", 503, NOW_MS + 100)  # a refused: b has the call now
    stats = r.statistics(NOW_MS + 100)
    assert (stats["a"]["calls"], stats["b"]["calls"]) == (0, 1)
    r.attempt("c1", "b", 486, NOW_MS + 200)  # b's callee is busy: the search ends
    r.finished("c1", "b", offered_ms=NOW_MS, ringing_ms=None, answered_ms=None,
               ended_ms=NOW_MS + 200)
    stats = r.statistics(NOW_MS + 300)
    assert (stats["a"]["attempts"], stats["b"]["attempts"]) == (1, 1)  # not counted twice
    assert (stats["a"]["calls"], stats["b"]["calls"]) == (0, 0)


def test_when_every_carrier_fails_the_last_failure_is_counted_once() -> None:
    r = two()
    r.started("c", r.route(NUMBER, NOW_MS, SELL).routes, NOW_MS)
    r.attempt("c", "a", 503, NOW_MS + 1)
    r.attempt("c", "b", 503, NOW_MS + 2)
    r.finished("c", "b", offered_ms=NOW_MS, ringing_ms=None, answered_ms=None,
               ended_ms=NOW_MS + 3)
    s = r.statistics(NOW_MS + 4)
    assert (s["a"]["attempts"], s["b"]["attempts"], s["b"]["calls"]) == (1, 1, 0)


def test_a_carrier_below_the_minimum_asr_is_pulled_then_back_after_its_cool_down() -> None:
    r = two()
    t = NOW_MS
    for i in range(4):
        r.started(f"c{i}", r.route(NUMBER, t, SELL).routes, t)
        r.attempt(f"c{i}", "a", 408, t + 10)
        r.finished(f"c{i}", "b", offered_ms=t, ringing_ms=t + 20, answered_ms=t + 30,
                   ended_ms=t + 60_000)
        t += 1_000
    assert r.next_deadline() is not None
    (ev,) = [e for e in r.tick(t) if e.carrier == "a"]
    assert ev.kind is EventKind.PULLED and "ASR 0.0000 below 0.15" in ev.reason
    assert [x.carrier for x in r.route(NUMBER, t, SELL).routes] == ["b"]
    until = r.health.until("a")
    assert until == t + HealthPolicy().cooldown_ms
    (back,) = r.tick(until)
    assert back.kind is EventKind.RESTORED and back.carrier == "a"
    # Judged again only on tries after its return: the old ones cannot pull it at once.
    r.started("d", r.route(NUMBER, until, SELL).routes, until)
    assert r.route(NUMBER, until, SELL).routes[0].carrier == "a"
    assert not [e for e in r.tick(until + 5_000) if e.carrier == "a"]


def test_calls_per_second_capacity() -> None:
    r = router(deck("a", line("0.0100"), max_cps=2), deck("b", line("0.0150")))
    for i in range(2):
        r.started(f"c{i}", r.route(NUMBER, NOW_MS, SELL).routes, NOW_MS + i)
    assert [x.carrier for x in r.route(NUMBER, NOW_MS + 500, SELL).routes] == ["b"]
    assert [x.carrier for x in r.route(NUMBER, NOW_MS + 1_001, SELL).routes] == ["a", "b"]


def test_a_book_with_new_carrier_states_shares_its_index() -> None:
    a, b = deck("a", line("0.0100")), deck("b", line("0.0150"))
    book = CarrierBook([a, b])
    import dataclasses

    off = dataclasses.replace(a.carrier, enabled=False, disabled_reason="maintenance",
                              disabled_by="operator")
    again = book.with_carriers([off, b.carrier])
    assert again.lines(NUMBER, NOW_MS // 1000) == book.lines(NUMBER, NOW_MS // 1000)
    r = Router()
    r.set_book(again, NOW_MS)
    assert [x.carrier for x in r.route(NUMBER, NOW_MS, SELL).routes] == ["b"]
    with pytest.raises(RoutingError):
        book.with_carriers([b.carrier, a.carrier])
