"""Route health: a carrier pulled when its FAS score or ASR crosses a threshold (with the
evidence), back after the cool-down or by an operator, judged afresh after its return."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.routing import EventKind, HealthPolicy, RouteHealth, WindowStats
from sidecar.routing.health import HealthError

T0 = 1_795_262_400_000
MIN = 60_000
POLICY = HealthPolicy(window_ms=60 * MIN, min_attempts=20, max_fas_score=50,
                      min_asr=Decimal("0.15"), cooldown_ms=15 * MIN)


def stats(h: RouteHealth, carrier: str, now: int, attempts: int, answered: int,
          fas: int | None = None) -> WindowStats:
    start, end = h.window(carrier, now)
    return WindowStats(start, end, attempts, answered, fas)


def test_a_fas_score_at_the_threshold_pulls_the_carrier_with_its_evidence() -> None:
    h = RouteHealth(POLICY)
    now = T0
    assert h.observe("ok", stats(h, "ok", now, 40, 20, 49), now) == []
    [ev] = h.observe("fake", stats(h, "fake", now, 40, 20, 50), now)
    assert (ev.carrier, ev.kind, ev.actor, ev.at_ms, ev.until_ms) == (
        "fake", EventKind.PULLED, "health", now, now + 15 * MIN)
    assert ev.reason == "FAS score 50 at or above 50 over 40 calls in 60 min"
    assert ev.evidence == {"from_ms": now - 60 * MIN, "to_ms": now, "attempts": 40,
                           "answered": 20, "fas_score": 50, "asr": "0.5000",
                           "max_fas_score": 50}
    assert h.pulled == {"fake": ev.reason} and h.is_pulled("fake")
    assert not h.is_pulled("ok")


def test_an_asr_strictly_below_the_minimum_pulls_it() -> None:
    h = RouteHealth(POLICY)
    assert h.observe("edge", stats(h, "edge", T0, 100, 15), T0) == []  # 0.15: not below
    [ev] = h.observe("low", stats(h, "low", T0, 10_000, 1_499), T0)  # 0.1499
    assert ev.reason == "ASR 0.1499 below 0.15 over 10000 calls in 60 min"
    assert ev.evidence["min_asr"] == "0.15"
    both = h.observe("both", stats(h, "both", T0, 20, 0, 90), T0)
    assert both[0].reason.startswith("FAS score 90 at or above 50 and ASR 0.0000 below 0.15")


def test_too_few_calls_judge_nothing() -> None:
    h = RouteHealth(POLICY)
    assert h.observe("new", stats(h, "new", T0, 19, 0, 100), T0) == []
    assert h.pulled == {}


def test_back_after_the_cool_down_and_judged_only_on_calls_since() -> None:
    h = RouteHealth(POLICY)
    h.observe("c", stats(h, "c", T0, 30, 0), T0)
    assert h.next_deadline() == T0 + 15 * MIN
    assert h.tick(T0 + 15 * MIN - 1) == []
    # While pulled, more bad figures change nothing.
    assert h.observe("c", stats(h, "c", T0 + MIN, 30, 0), T0 + MIN) == []
    back = T0 + 15 * MIN
    [ev] = h.tick(back)
    assert (ev.kind, ev.actor, ev.at_ms) == (EventKind.RESTORED, "cool-down", back)
    assert ev.evidence == {"pulled_ms": T0}
    assert h.pulled == {} and h.next_deadline() is None
    # The window now starts at its return ...
    assert h.window("c", back + 5 * MIN) == (back, back + 5 * MIN)
    # ... so figures over the last hour (the calls that pulled it) judge nothing,
    old = WindowStats(back + 5 * MIN - 60 * MIN, back + 5 * MIN, 60, 0)
    assert h.observe("c", old, back + 5 * MIN) == []
    # while bad calls made since pull it again.
    again = h.observe("c", stats(h, "c", back + 5 * MIN, 20, 1), back + 5 * MIN)
    assert [e.kind for e in again] == [EventKind.PULLED]
    # An hour after its return the full window applies again.
    later = back + 2 * 60 * MIN
    assert h.window("c", later) == (later - 60 * MIN, later)


def test_an_operator_brings_a_carrier_back_at_once() -> None:
    h = RouteHealth(POLICY)
    assert h.restore("c", T0) == []  # not pulled: nothing to do
    h.observe("c", stats(h, "c", T0, 30, 0), T0)
    [ev] = h.restore("c", T0 + MIN, "carrier fixed its gateway")
    assert (ev.kind, ev.actor, ev.reason) == (EventKind.RESTORED, "operator",
                                              "carrier fixed its gateway")
    assert h.pulled == {} and h.tick(T0 + 60 * MIN) == []


def test_a_pull_held_by_the_store_resumes() -> None:
    h = RouteHealth(POLICY)
    h.load("c", T0 + MIN, T0 - MIN, "ASR 0.01 below 0.15")
    assert h.pulled == {"c": "ASR 0.01 below 0.15"} and h.until("c") == T0 + MIN
    assert [e.carrier for e in h.tick(T0 + MIN)] == ["c"]


@pytest.mark.parametrize("kw", [{"window_ms": 0}, {"min_attempts": 0}, {"max_fas_score": 0},
                                {"max_fas_score": 101}, {"min_asr": Decimal("1.1")},
                                {"cooldown_ms": 0}])
def test_bad_settings_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(HealthError):
        HealthPolicy(**kw)  # type: ignore[arg-type]


steps = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 40),
                           st.integers(0, 40), st.one_of(st.none(), st.integers(0, 100)),
                           st.integers(0, 20 * MIN), st.booleans()), max_size=40)


@given(steps)
def test_pulled_carriers_are_exactly_those_pulled_and_not_yet_back(
    seq: list[tuple[str, int, int, int | None, int, bool]],
) -> None:
    h = RouteHealth(POLICY)
    now = T0
    state: dict[str, int] = {}  # carrier -> until, rebuilt from the events alone
    for carrier, attempts, answered, fas, advance, operator in seq:
        now += advance
        events = h.tick(now)
        if operator:
            events += h.restore(carrier, now)
        events += h.observe(carrier, stats(h, carrier, now, attempts, min(answered, attempts),
                                           fas), now)
        for e in events:
            if e.kind is EventKind.PULLED:
                assert e.carrier not in state
                asr = Decimal(min(answered, attempts)) / attempts
                assert attempts >= 20 and ((fas is not None and fas >= 50)
                                           or asr < Decimal("0.15"))
                assert e.until_ms == now + 15 * MIN
                state[e.carrier] = e.until_ms
            else:
                assert e.carrier in state
                assert e.actor == "operator" or state[e.carrier] <= now
                del state[e.carrier]
        assert set(h.pulled) == set(state)
        assert all(until > now for until in state.values()) or h.next_deadline() is not None
