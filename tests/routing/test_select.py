"""The route list of a call: margin protection exact to the last decimal, cost and quality
order, carriers left out with why (unit and property tests of the pure core)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.rating import Increment, RateLine, RateTable, price
from sidecar.routing import (
    Carrier,
    CarrierBook,
    CarrierDeck,
    Load,
    Margin,
    Order,
    Quality,
    RoutingError,
    RoutingPolicy,
    Why,
    quality_score,
    select_routes,
)

D = Decimal
JUNE = datetime(2026, 6, 1, tzinfo=UTC)
NOW_MS = 1_795_262_400_000  # 2026-11-21 12:00 UTC
NUMBER = "4930123456"


def line(rate: str, prefix: str = "4930", inc: str = "1/1", fee: str = "0",
         currency: str = "USD", effective: datetime = JUNE, version: int = 1) -> RateLine:
    return RateLine(f"dest {prefix}", prefix, D(rate), Increment.parse(inc), effective,
                    currency, connection_fee=D(fee), version=version)


def deck(name: str, *lines: RateLine, max_calls: int | None = None,
         max_cps: int | None = None, enabled: bool = True, **state: object) -> CarrierDeck:
    currency = lines[0].currency if lines else "USD"
    c = Carrier(name, f"sip:{name}.example", f"carrier:{name}", max_calls, max_cps, enabled,
                **state)  # type: ignore[arg-type]
    return CarrierDeck(c, RateTable(lines, currency))


SELL = line("0.0200", "49")
POLICY = RoutingPolicy()


def names(res: object) -> list[str]:
    return [r.carrier for r in res.routes]  # type: ignore[attr-defined]


def why(res: object) -> dict[str, Why]:
    return {e.carrier: e.why for e in res.excluded}  # type: ignore[attr-defined]


def test_cheapest_first_and_a_carrier_above_the_sell_price_never_used() -> None:
    decks = [deck("mid", line("0.0120")), deck("dear", line("0.0250")),
             deck("cheap", line("0.0090", "49")), deck("even", line("0.0200"))]
    res = select_routes(NUMBER, NOW_MS, SELL, decks, POLICY)
    assert names(res) == ["cheap", "mid", "even"]
    assert why(res) == {"dear": Why.LOSS}
    cheap = res.routes[0]
    assert (cheap.buy, cheap.sell, cheap.margin, cheap.margin_per_minute,
            cheap.margin_percent) == (D("0.009"), D("0.02"), D("0.011"), D("0.011"), D("55.00"))
    assert cheap.uri == "sip:cheap.example" and cheap.line.prefix == "49"
    assert "costs 0.025, above the sell price 0.02" in res.excluded[0].detail


def test_each_carrier_matches_its_own_longest_prefix_in_effect_at_the_call() -> None:
    later = datetime(2026, 12, 1, tzinfo=UTC)
    a = deck("a", line("0.0100", "49"), line("0.0150", "4930"),
             line("0.0050", "4930", effective=later, version=2))
    res = select_routes(NUMBER, NOW_MS, SELL, [a], POLICY)
    assert res.routes[0].line.prefix == "4930" and res.routes[0].buy == D("0.015")
    after = int(later.timestamp() * 1000)
    assert select_routes(NUMBER, after, SELL, [a], POLICY).routes[0].buy == D("0.005")
    res = select_routes("4940123", NOW_MS, SELL, [a, deck("b", line("0.001", "33"))], POLICY)
    assert res.routes[0].line.prefix == "49"
    assert why(res) == {"b": Why.NO_RATE}


def test_a_minimum_margin_per_minute_is_exact_to_the_last_decimal() -> None:
    at_minimum = deck("at", line("0.01500000"))  # margin 0.005 exactly
    one_below = deck("below", line("0.01500001"))  # margin 0.00499999
    policy = RoutingPolicy(Margin(per_minute=D("0.005")))
    res = select_routes(NUMBER, NOW_MS, SELL, [at_minimum, one_below], policy)
    assert names(res) == ["at"]
    assert why(res) == {"below": Why.MARGIN}
    assert res.excluded[0].margin == D("0.00499999")
    assert "below the minimum margin of 0.005/min" in res.excluded[0].detail


def test_a_minimum_margin_in_percent_is_exact_too() -> None:
    decks = [deck("at", line("0.0150")), deck("below", line("0.01500001"))]  # 25% / 24.99995%
    res = select_routes(NUMBER, NOW_MS, SELL, decks, RoutingPolicy(Margin(percent=D("25"))))
    assert names(res) == ["at"] and why(res) == {"below": Why.MARGIN}
    res = select_routes(NUMBER, NOW_MS, SELL, decks,
                        RoutingPolicy(Margin(percent=D("25.0000001"))))
    assert names(res) == [] and set(why(res).values()) == {Why.MARGIN}


def test_both_minimums_apply_and_zero_admits_break_even_but_never_a_loss() -> None:
    decks = [deck("even", line("0.0200")), deck("loss", line("0.02000001"))]
    res = select_routes(NUMBER, NOW_MS, SELL, decks, RoutingPolicy())
    assert names(res) == ["even"] and why(res) == {"loss": Why.LOSS}
    both = RoutingPolicy(Margin(per_minute=D("0.001"), percent=D("30")))
    res = select_routes(NUMBER, NOW_MS, SELL, [deck("a", line("0.0150"))], both)
    assert why(res) == {"a": Why.MARGIN}  # 0.005/min is enough, 25% is not
    assert "of 30%" in res.excluded[0].detail and "/min" not in res.excluded[0].detail[-12:]


def test_buy_and_sell_are_compared_on_the_reference_call_as_billing_prices_it() -> None:
    # Sold 60/60: a 30 s call sells a whole minute (0.02). Bought 1/1 plus a fee.
    fee = deck("fee", line("0.0100", fee="0.0060"))  # 30 s: 0.005 + 0.006 = 0.011
    block = deck("block", line("0.0150", inc="60/60"))  # 30 s: 0.015
    sell = line("0.0200", "49", inc="60/60")
    res = select_routes(NUMBER, NOW_MS, sell, [fee, block], RoutingPolicy(reference_seconds=30))
    assert [(r.carrier, r.buy, r.sell, r.margin) for r in res.routes] == [
        ("fee", D("0.011"), D("0.02"), D("0.009")), ("block", D("0.015"), D("0.02"),
                                                     D("0.005"))]
    assert res.routes[0].margin_per_minute == D("0.018")  # 0.009 over 30 s
    # At 60 s the fee carrier costs 0.016 and the block one 0.015: the order turns.
    assert names(select_routes(NUMBER, NOW_MS, sell, [fee, block], POLICY)) == [
        "block", "fee"]


def test_disabled_pulled_and_full_carriers_are_left_out_with_their_prices() -> None:
    decks = [
        deck("off", line("0.010"), enabled=False, disabled_reason="maintenance",
             disabled_by="operator", disabled_ms=NOW_MS - 1000),
        deck("sick", line("0.011"), enabled=False, disabled_reason="FAS score 80",
             disabled_by="health", disabled_ms=NOW_MS - 1000, until_ms=NOW_MS + 1),
        deck("back", line("0.012"), enabled=False, disabled_by="health",
             disabled_ms=NOW_MS - 10_000, until_ms=NOW_MS),  # its cool-down is over
        deck("busy", line("0.013"), max_calls=10),
        deck("fast", line("0.014"), max_cps=5),
        deck("free", line("0.015"), max_calls=10, max_cps=5),
        deck("watched", line("0.009")),
    ]
    loads = {"busy": Load(calls=10), "fast": Load(calls=100, cps=5), "free": Load(9, 4)}
    res = select_routes(NUMBER, NOW_MS, SELL, decks, POLICY, loads=loads,
                        pulled={"watched": "ASR 0.05 below 0.15"})
    assert names(res) == ["back", "free"]
    assert why(res) == {"off": Why.DISABLED, "sick": Why.PULLED, "busy": Why.CAPACITY,
                        "fast": Why.CAPACITY, "watched": Why.PULLED}
    detail = {e.carrier: e.detail for e in res.excluded}
    assert detail["off"] == "disabled: maintenance"
    assert detail["busy"] == "at capacity: 10 calls up (max 10)"
    assert detail["fast"] == "at capacity: 5 calls in the last second (max 5 cps)"
    assert detail["watched"] == "pulled by route health: ASR 0.05 below 0.15"
    assert {e.carrier: e.buy for e in res.excluded}["off"] == D("0.01")


def test_a_deck_in_another_currency_is_not_compared() -> None:
    res = select_routes(NUMBER, NOW_MS, SELL, [deck("eu", line("0.001", currency="EUR"))],
                        POLICY)
    assert names(res) == [] and why(res) == {"eu": Why.CURRENCY}
    assert res.reason == "no route to 4930123456: eu sells in EUR, the customer buys in USD"


def test_an_empty_list_says_why_for_every_carrier() -> None:
    res = select_routes(NUMBER, NOW_MS, SELL, [], POLICY)
    assert res.routes == () and res.reason == "no route to 4930123456: no carriers"
    res = select_routes(NUMBER, NOW_MS, SELL, [deck("a", line("0.05")), deck("b")], POLICY)
    assert res.reason.startswith("no route to 4930123456: a costs 0.05, above the sell price")
    assert "; b has no rate for 4930123456" in res.reason
    ok = select_routes(NUMBER, NOW_MS, SELL, [deck("a", line("0.01"))], POLICY)
    assert ok.reason == ""


def test_quality_order_weighs_a_cheap_carrier_that_fakes_answers_down() -> None:
    decks = [deck("cheap", line("0.0100")), deck("good", line("0.0120")),
             deck("new", line("0.0110"))]
    policy = RoutingPolicy(order=Order.QUALITY)
    scores = {"cheap": quality_score(Quality(D("0.30"), D("8"), 3000, 90), policy),
              "good": quality_score(Quality(D("0.60"), D("150"), 1500, 0), policy)}
    res = select_routes(NUMBER, NOW_MS, SELL, decks, policy, quality=scores)
    assert names(res) == ["good", "new", "cheap"]  # new: unknown figures count 0.5
    assert [r.rank for r in res.routes] == sorted(r.rank for r in res.routes)
    good = res.routes[0]
    assert good.quality == scores["good"]
    assert good.rank == good.buy * (1 + (1 - good.quality))
    # Cost order ignores quality.
    assert names(select_routes(NUMBER, NOW_MS, SELL, decks, POLICY, quality=scores)) == [
        "cheap", "new", "good"]
    # A zero penalty is cost order.
    flat = RoutingPolicy(order=Order.QUALITY, quality_penalty=D(0))
    assert names(select_routes(NUMBER, NOW_MS, SELL, decks, flat, quality=scores)) == [
        "cheap", "new", "good"]


def test_quality_score_of_known_figures() -> None:
    best = quality_score(Quality(D(1), D(500), 0, 0), POLICY)
    worst = quality_score(Quality(D(0), D(0), 20_000, 100), POLICY)
    assert (best, worst) == (D(1), D(0))
    assert quality_score(Quality(), POLICY) == D("0.5")
    # asr 0.5 (w3), acd 60/120 (w1), pdd 1 - 2500/10000 (w1), fas 1 - 0.2 (w3), over 8.
    assert quality_score(Quality(D("0.5"), D(60), 2500, 20), POLICY) == (
        D(3) * D("0.5") + D("0.5") + D("0.75") + D(3) * D("0.8")) / 8


def test_the_number_of_routes_a_call_tries_can_be_capped() -> None:
    decks = [deck(n, line(r)) for n, r in (("a", "0.010"), ("b", "0.011"), ("c", "0.012"))]
    res = select_routes(NUMBER, NOW_MS, SELL, decks, RoutingPolicy(max_routes=2))
    assert names(res) == ["a", "b"] and why(res) == {"c": Why.LIMIT}


def test_equal_costs_go_by_name() -> None:
    decks = [deck(n, line("0.010")) for n in ("zulu", "alpha", "mike")]
    assert names(select_routes(NUMBER, NOW_MS, SELL, decks, POLICY)) == ["alpha", "mike",
                                                                           "zulu"]


@pytest.mark.parametrize("make", [
    lambda: Margin(per_minute=D("-0.001")), lambda: Margin(percent=D("-1")),
    lambda: RoutingPolicy(reference_seconds=0), lambda: RoutingPolicy(max_routes=0),
    lambda: RoutingPolicy(unknown_quality=D("1.5")),
    lambda: RoutingPolicy(quality_penalty=D("-1")),
])
def test_settings_that_could_lose_money_or_make_no_sense_are_refused(make: object) -> None:
    with pytest.raises(RoutingError):
        make()  # type: ignore[operator]


# -- properties ------------------------------------------------------------------------

rates = st.decimals(min_value=D("0"), max_value=D("0.2"), places=6)
fees = st.one_of(st.just(D(0)), st.decimals(min_value=D(0), max_value=D("0.02"), places=4))
incs = st.sampled_from(["1/1", "6/6", "30/6", "60/60", "60/1", "1/60"])
prefixes = st.sampled_from(["4", "49", "493", "4930", "49301"])
lines_ = st.builds(line, rates.map(str), prefixes, incs, fees.map(str))
carriers = st.lists(st.lists(lines_, min_size=0, max_size=3), min_size=0, max_size=8)
margins = st.builds(Margin, st.decimals(min_value=D(0), max_value=D("0.02"), places=5),
                    st.decimals(min_value=D(0), max_value=D(60), places=3))


def _unique_prefixes(ls: list[RateLine]) -> list[RateLine]:
    seen: dict[str, RateLine] = {}
    for ln in ls:
        seen.setdefault(ln.prefix, ln)
    return list(seen.values())


@given(lines_, carriers, margins, st.integers(1, 300), st.sampled_from(list(Order)))
def test_never_a_route_below_the_minimum_margin_and_always_in_order(
    sell: RateLine, decks_lines: list[list[RateLine]], margin: Margin, ref: int, order: Order,
) -> None:
    decks = [deck(f"c{i}", *_unique_prefixes(ls)) for i, ls in enumerate(decks_lines)]
    policy = RoutingPolicy(margin, order, ref)
    res = select_routes(NUMBER, NOW_MS, sell, decks, policy)
    sell_cost = price(sell, ref).cost
    for r in res.routes:
        # Recomputed from the definition, not from the code under test.
        buy = price(r.line, ref).cost
        assert r.buy == buy and r.sell == sell_cost and r.margin == sell_cost - buy
        assert r.margin >= 0
        assert r.margin * 60 / ref >= margin.per_minute
        if margin.percent:
            assert sell_cost > 0 and r.margin / sell_cost * 100 >= margin.percent
    ranks = [(r.rank, r.buy, r.carrier) for r in res.routes]
    assert ranks == sorted(ranks)
    if order is Order.COST:
        assert [r.buy for r in res.routes] == sorted(r.buy for r in res.routes)
    # Every carrier is either a route or left out, once.
    assert sorted([r.carrier for r in res.routes] + [e.carrier for e in res.excluded]) == \
        sorted(d.carrier.name for d in decks)
    for e in res.excluded:
        if e.why is Why.LOSS:
            assert e.margin is not None and e.margin < 0
        if e.why is Why.MARGIN:
            assert e.margin is not None and e.margin >= 0
    assert (res.reason == "") == bool(res.routes)


@given(st.decimals(min_value=D(0), max_value=D(1), places=4),
       st.decimals(min_value=D(0), max_value=D(1), places=4),
       st.decimals(min_value=D(0), max_value=D(600), places=1),
       st.integers(0, 30_000), st.integers(0, 100))
def test_quality_is_between_0_and_1_and_better_asr_never_scores_lower(
    asr1: Decimal, asr2: Decimal, acd: Decimal, pdd: int, fas: int,
) -> None:
    lo, hi = sorted((asr1, asr2))
    q_lo = quality_score(Quality(lo, acd, pdd, fas), POLICY)
    q_hi = quality_score(Quality(hi, acd, pdd, fas), POLICY)
    assert D(0) <= q_lo <= q_hi <= D(1)
    assert quality_score(Quality(hi, acd, pdd, min(fas + 10, 100)), POLICY) <= q_hi


dated = st.builds(
    lambda rate, prefix, inc, month, origin: RateLine(
        f"dest {prefix}", prefix, rate, Increment.parse(inc),
        datetime(2026, month, 1, tzinfo=UTC), "USD", origin=origin),
    rates, st.sampled_from(["3", "33", "4", "49", "493", "4930", "49301", "493012"]), incs,
    st.integers(1, 12), st.sampled_from(["", "", "EEA"]))
numbers = st.sampled_from(["4930123456", "493", "4931", "33123", "49301299", "1234", "4"])


def _dedup(ls: list[RateLine]) -> list[RateLine]:
    seen: dict[tuple[str, str, datetime], RateLine] = {}
    for ln in ls:
        seen.setdefault((ln.prefix, ln.origin, ln.effective_from), ln)
    return list(seen.values())


@given(st.lists(st.lists(dated, max_size=6), max_size=6), numbers,
       st.integers(1, 12), st.sampled_from(["", "EEA", "NON-EEA"]), margins)
def test_a_carrier_book_routes_exactly_as_the_decks_do(
    decks_lines: list[list[RateLine]], number: str, month: int, origin: str, margin: Margin,
) -> None:
    decks = [deck(f"c{i}", *_dedup(ls)) for i, ls in enumerate(decks_lines)]
    book = CarrierBook(decks)
    at_ms = int(datetime(2026, month, 15, tzinfo=UTC).timestamp() * 1000)
    assert book.lines(number, at_ms // 1000, origin) == [
        d.table.lookup(number, at_ms // 1000, origin) for d in decks]
    sell = line("0.0300", "4")
    for ref in (60, 7, 60, 7):  # the second time from the book's kept prices
        policy = RoutingPolicy(margin, reference_seconds=ref)
        assert select_routes(number, at_ms, sell, book, policy, origin=origin) == \
            select_routes(number, at_ms, sell, decks, policy, origin=origin)
