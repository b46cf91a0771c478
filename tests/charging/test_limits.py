"""Usage limits and fraud rules in the charging core: at the INVITE, during and after
calls (the real SQLite store under a simulated clock), and their inheritance."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.charging import PlanRates
from sidecar.charging.fraud import FraudGuard
from sidecar.charging.limits import NO_LIMITS, Limits, LimitsError, effective, parse_assignments
from sidecar.charging.model import Alert, AuthDecision, EndCall
from sidecar.rating import RateLine
from sidecar.store.accounts import verify_ledger
from tests.charging.harness import Sim


def with_limits(sim: Sim, **values: object) -> Limits:
    """The plan's default limits become ``values`` (accounts inherit them)."""
    lim = Limits.parse(values)
    table = sim.table
    sim.charger.plans = lambda _name: PlanRates(table, 60, lim)
    return lim


def offer(sim: Sim, ref: str, number: str = "4930111", account: str = "acme") -> AuthDecision:
    d = sim.charger.authorize(ref, number=number, account_code=account, now_ms=sim.now)
    sim.actions += sim.charger.take_actions()
    return d


def clean(sim: Sim) -> None:
    assert all(not c.problems for c in verify_ledger(sim.conn)), verify_ledger(sim.conn)


# --- the limit set ----------------------------------------------------------------------
def test_bad_limits_name_the_key_and_what_is_wrong() -> None:
    with pytest.raises(LimitsError, match=r"limits\.concurrent_calls: expected a whole number"):
        Limits.parse({"concurrent_calls": "two"})
    with pytest.raises(LimitsError, match=r"limits\.max_rate: expected an amount >= 0"):
        Limits.parse({"max_rate": "-1"})
    with pytest.raises(LimitsError, match=r"limits\.deny: '49x' is not a digit prefix"):
        Limits.parse({"deny": "49x,33"})
    with pytest.raises(LimitsError, match=r"limits\.spend_per_hour_action: expected one of"):
        Limits.parse({"spend_per_hour_action": "explode"})
    with pytest.raises(LimitsError, match=r"limits\.cps: unknown limit"):
        Limits.parse({"cps": 3})
    with pytest.raises(LimitsError, match="expected KEY=VALUE"):
        parse_assignments(["concurrent_calls"])


def test_each_key_inherits_on_its_own_and_none_stops_the_inheritance() -> None:
    account = Limits.parse({"concurrent_calls": 2, "deny": None})
    parent = Limits.parse({"concurrent_calls": 10, "calls_per_second": 5, "deny": "882,881"})
    plan = Limits.parse({"calls_per_second": 50, "max_rate": "1.50", "deny": "979"})
    eff, source = effective([account, parent, plan])
    assert eff.concurrent_calls == 2 and source["concurrent_calls"] == 0
    assert eff.calls_per_second == 5 and source["calls_per_second"] == 1
    assert eff.max_rate == Decimal("1.50") and source["max_rate"] == 2
    assert eff.deny is None and source["deny"] == 0  # the account said: no deny list
    assert Limits.from_json(account.to_json()) == account
    assert Limits.from_json("") is NO_LIMITS
    assert account.updated({}, unset=["deny"]).to_dict() == {"concurrent_calls": 2}


# --- at the INVITE ---------------------------------------------------------------------
def test_the_call_over_the_concurrent_limit_is_refused_486_and_a_retransmission_is_not_a_call(
) -> None:
    sim = Sim()
    sim.account("acme", "50")
    with_limits(sim, concurrent_calls=2)
    assert offer(sim, "a").allow and offer(sim, "b").allow
    assert offer(sim, "a").allow  # the INVITE retransmitted: the same answer, not counted
    d = offer(sim, "c")
    assert (d.allow, d.code, d.phrase, d.limit) == (False, 486, "Concurrent Call Limit",
                                                     "concurrent_calls")
    sim.answer("a")
    sim.now += 5_000
    sim.end("a", ended_by="caller")
    assert offer(sim, "d").allow  # one ended: room for one more
    rejected = [c for c in sim.cdrs("acme") if c["disposition"] == "rejected"]
    assert [(c["call_ref"], c["sip_code"]) for c in rejected] == [("c", 486)]
    clean(sim)


def test_calls_per_second_and_per_minute() -> None:
    sim = Sim()
    sim.account("acme", "50")
    with_limits(sim, calls_per_second=2, calls_per_minute=3)
    assert offer(sim, "a").allow and offer(sim, "b").allow
    d = offer(sim, "c")
    assert (d.code, d.phrase, d.limit) == (503, "Call Rate Limit", "calls_per_second")
    sim.now += 1_000
    assert offer(sim, "d").allow
    sim.now += 1_000
    d = offer(sim, "e")
    assert (d.code, d.limit) == (503, "calls_per_minute")
    sim.now += 58_001
    assert offer(sim, "f").allow  # the first two are out of the minute


@pytest.mark.parametrize(("values", "number", "code", "phrase"), [
    ({"max_rate": "0.10"}, "447700900", 403, "Destination Price Above Limit"),
    ({"max_connection_fee": "0.005"}, "33123456", 403, "Connection Fee Above Limit"),
    ({"deny": "44,33"}, "447700900", 403, "Destination Not Allowed"),
    ({"high_cost_rate": "0.25"}, "447700900", 403, "High-Cost Destination Not Allowed"),
])
def test_destination_limits(values: dict[str, object], number: str, code: int,
                            phrase: str) -> None:
    sim = Sim()
    sim.account("acme", "50")
    with_limits(sim, **values)
    d = offer(sim, "x", number)
    assert (d.allow, d.code, d.phrase) == (False, code, phrase)
    assert offer(sim, "y", "4930111").allow  # Germany at 0.06 passes every one of them
    (rejected,) = [c for c in sim.cdrs("acme") if c["call_ref"] == "x"]
    assert rejected["sip_code"] == code and rejected["destination"]  # rated, then refused


def test_an_allowed_prefix_passes_the_deny_list_and_the_high_cost_class() -> None:
    sim = Sim()
    sim.account("acme", "50")
    with_limits(sim, deny="44", high_cost_rate="0.25", allow="4477")
    assert offer(sim, "a", "447700900").allow
    assert not offer(sim, "b", "447800900").allow


def test_calls_to_the_same_number_per_hour() -> None:
    sim = Sim()
    sim.account("acme", "50")
    with_limits(sim, same_number_per_hour=2)
    for ref in ("a", "b"):
        assert offer(sim, ref).allow
        sim.end(ref, ended_by="caller")
    d = offer(sim, "c")
    assert (d.code, d.phrase) == (403, "Too Many Calls To Number")
    assert offer(sim, "other", "4930222").allow
    sim.now += 3_600_000
    assert offer(sim, "d").allow


def test_a_call_is_cut_when_it_reaches_the_maximum_cost_and_charged_exactly_that() -> None:
    sim = Sim()
    sim.account("acme", "50")
    with_limits(sim, max_call_cost="0.05")  # Germany 0.06/min, per second: 50 s
    d = offer(sim, "c")
    assert d.allow and d.max_seconds == 50
    sim.answer("c")
    start = sim.now
    sim.advance_to(start + 120_000)
    (cut,) = sim.ended
    assert cut.at_ms - start == 50_000  # to the millisecond
    assert cut.reason == "maximum call cost 0.05 reached"
    sim.now = cut.at_ms + 300  # the BYE arrives a little later
    sim.end("c", ended_by="proxy")
    (cdr,) = sim.cdrs("acme")
    assert (cdr["billed_seconds"], Decimal(cdr["cost"]), Decimal(cdr["charged"])) == (
        50, Decimal("0.05"), Decimal("0.05"))
    assert cdr["end_reason"] == "maximum call cost 0.05 reached"
    clean(sim)


def test_a_maximum_cost_below_the_first_increment_refuses_the_call() -> None:
    sim = Sim()
    sim.account("acme", "50")
    with_limits(sim, max_call_cost="0.20")  # UK mobile: 0.30 for its first 60 s
    d = offer(sim, "c", "447700900")
    assert (d.allow, d.code, d.phrase) == (False, 403, "Call Cost Limit")


# --- detection rules --------------------------------------------------------------------
def test_spend_velocity_suspends_the_account_and_ends_its_live_calls_at_once() -> None:
    sim = Sim()
    sim.account("acme", "50")
    sim.account("other", "50")
    with_limits(sim, spend_per_minute="0.50", spend_per_minute_action="suspend")
    for ref in ("a", "b"):  # UK mobile: 0.30 reserved for each call's first minute
        assert offer(sim, ref, "447700900").allow
    assert offer(sim, "o", "447700900", "other").allow
    sim.answer("o")
    sim.answer("a")
    assert not sim.ended
    sim.now += 2_000
    sim.answer("b")  # 0.60 in a minute: over 0.50
    ended = {e.call_ref: e.reason for e in sim.ended}
    assert set(ended) == {"a", "b"}  # every live call of the account, not the other's
    assert all(r.startswith("account suspended: fraud rule spend_per_minute") for r in
               ended.values())
    alerts = [a for a in sim.actions if isinstance(a, Alert) and a.kind == "fraud"]
    assert [a.account for a in alerts] == ["acme"]
    d = offer(sim, "c")
    assert (d.allow, d.code, d.phrase) == (False, 403, "Account Suspended")
    row = sim.conn.execute("SELECT suspended, suspend_reason FROM accounts WHERE code='acme'"
                           ).fetchone()
    assert row[0] == 1 and row[1].startswith("fraud rule spend_per_minute")
    ev = sim.conn.execute("SELECT rule, action, evidence FROM fraud_events").fetchall()
    assert [(r[0], r[1]) for r in ev] == [("spend_per_minute", "suspend")]
    assert '"spent": "0.6"' in ev[0][2]
    for ref in ("a", "b"):
        sim.end(ref, ended_by="proxy")
    for c in sim.cdrs("acme"):
        if c["call_ref"] in ("a", "b"):
            assert c["end_reason"].startswith("account suspended: fraud rule")
    clean(sim)


def test_a_block_rule_refuses_new_calls_but_lets_live_ones_run() -> None:
    sim = Sim()
    sim.account("acme", "50")
    with_limits(sim, distinct_callees=2, distinct_action="block")
    for i, ref in enumerate(("a", "b")):
        assert offer(sim, ref, f"493011{i}").allow
        sim.answer(ref)
    d = offer(sim, "c", "4930119")  # a third distinct number in 10 minutes
    assert (d.allow, d.code, d.phrase, d.limit) == (False, 403, "Calls Blocked", "blocked")
    assert not sim.ended
    assert not offer(sim, "d", "4930110").allow
    blocked = sim.conn.execute("SELECT blocked FROM accounts WHERE code='acme'").fetchone()[0]
    assert blocked.startswith("fraud rule distinct_callees")


def test_a_new_expensive_country_alerts_once_and_an_old_one_does_not() -> None:
    sim = Sim()
    sim.account("acme", "50")
    with_limits(sim, new_country_rate="0.20")
    sim.charger.guard.seed("acme", "49", sim.now - 86_400_000)
    assert offer(sim, "de", "4930111").allow  # called yesterday, and cheap
    assert offer(sim, "uk", "447700900").allow  # new and 0.30/min: alert (default action)
    assert offer(sim, "uk2", "447700901").allow  # not new any more
    alerts = [a for a in sim.actions if isinstance(a, Alert) and a.kind == "fraud"]
    assert len(alerts) == 1 and "+44" in alerts[0].message


def test_a_flood_of_short_calls_trips() -> None:
    sim = Sim()
    sim.account("acme", "50")
    with_limits(sim, short_calls=2, short_call_seconds=5, short_calls_action="block")
    for ref in ("a", "b", "c"):
        assert offer(sim, ref).allow
        sim.answer(ref)
        sim.now += 2_000
        sim.end(ref, ended_by="caller")
    assert not offer(sim, "d").allow


# --- property: limits never let more through than configured -----------------------------
LINE = RateLine("Germany", "49", Decimal("0.06"), None, None, "USD")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(concurrent=st.integers(1, 4), cps=st.integers(1, 4),
       ops=st.lists(st.tuples(st.sampled_from(["offer", "end", "wait"]),
                              st.integers(0, 9), st.integers(0, 700)), max_size=80))
def test_limits_never_let_through_more_than_configured(
        concurrent: int, cps: int, ops: list[tuple[str, int, int]]) -> None:
    guard = FraudGuard()
    lim = Limits.parse({"concurrent_calls": concurrent, "calls_per_second": cps})
    now = 1_000_000
    up: set[str] = set()
    starts: list[int] = []
    n = 0
    for op, i, dt in ops:
        if op == "wait":
            now += dt
        elif op == "offer":
            n += 1
            ref = f"c{n}"
            if guard.check("a", lim, LINE, "4930", now) is None:
                guard.started("a", ref, lim, LINE, "4930", now)
                up.add(ref)
                starts.append(now)
        elif up:
            ref = sorted(up)[i % len(up)]
            up.discard(ref)
            guard.ended("a", ref, lim, True, 10_000, now)
        assert len(up) <= concurrent
        assert guard.up("a") == len(up)
        assert sum(1 for t in starts if t > now - 1000) <= cps


def test_no_limits_means_the_plain_path() -> None:
    sim = Sim()
    sim.account("acme", "50")
    for i in range(20):
        assert offer(sim, f"c{i}").allow
    assert not [a for a in sim.actions if isinstance(a, EndCall)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limit=st.integers(1, 3), cps=st.integers(1, 3),
       ops=st.lists(st.tuples(st.sampled_from(["offer", "answer", "end", "fail", "wait"]),
                              st.integers(0, 7), st.integers(0, 1500)), max_size=60))
def test_the_charger_never_has_more_calls_up_than_the_limit(
        limit: int, cps: int, ops: list[tuple[str, int, int]]) -> None:
    """Random interleavings of offers (retransmitted ones too), answers, ends and failures
    on one account: never more calls allowed and not ended than ``concurrent_calls``,
    never more allowed in a second than ``calls_per_second``, and the ledger is right."""
    sim = Sim(":memory:")
    sim.account("acme", "20")
    with_limits(sim, concurrent_calls=limit, calls_per_second=cps)
    allowed_at: list[int] = []
    for op, i, dt in ops:
        ref = f"c{i}"
        if op == "wait":
            sim.advance_to(sim.now + dt)
        elif op == "offer":
            known = ref in sim.charger.sessions
            d = offer(sim, ref)
            if d.allow and not known:
                allowed_at.append(sim.now)
        elif op == "answer":
            sim.answer(ref)
        elif op == "end":
            sim.end(ref, ended_by="caller")
        else:
            sim._take(sim.charger.fail(ref, sim.now, 486))
        up = [s for s in sim.charger.sessions.values() if s.account == "acme"]
        assert len(up) <= limit
        assert sim.charger.guard.up("acme") == len(up)
        assert sum(1 for t in allowed_at if t > sim.now - 1000) <= cps
    clean(sim)


def test_the_new_country_history_comes_from_the_stored_cdrs() -> None:
    from sidecar.store.fraud import countries_called

    sim = Sim()
    sim.account("acme", "50")
    assert offer(sim, "uk", "447700900").allow
    sim.answer("uk")
    sim.now += 10_000
    sim.end("uk", ended_by="caller")
    offered = sim.now - 10_000
    sim.now += 1_000
    assert not offer(sim, "nope", "447700900", "nobody").allow  # rejected: not history
    assert countries_called(sim.conn, 0) == {("acme", "44"): offered}
    assert countries_called(sim.conn, sim.now) == {}
    # A sidecar seeded with it does not see +44 as new.
    fresh = Sim(sim.conn.execute("PRAGMA database_list").fetchone()[2])
    with_limits(fresh, new_country_rate="0.01", new_country_action="block")
    for (account, country), last in countries_called(fresh.conn, 0).items():
        fresh.charger.guard.seed(account, country, last)
    fresh.now = sim.now
    assert offer(fresh, "uk2", "447700901").allow
    d = offer(fresh, "fr", "33123456")  # France is new, and above 0.01: blocked
    assert (d.allow, d.phrase) == (False, "Calls Blocked")


def test_the_concurrent_limit_counts_the_calls_other_nodes_carry() -> None:
    guard = FraudGuard()
    lim = Limits.parse({"concurrent_calls": 3})
    guard.started("a", "c1", lim, LINE, "4930", 0)
    guard.elsewhere = {"a": 1}
    assert guard.check("a", lim, LINE, "4930", 0) is None
    guard.elsewhere = {"a": 2}
    refusal = guard.check("a", lim, LINE, "4930", 0)
    assert refusal is not None and refusal.reason == "3 calls up (2 on other nodes), the limit is 3"
    assert guard.check("b", lim, LINE, "4930", 0) is None
