"""Cost analytics from CDRs made by the charging core: spend and route quality."""

from __future__ import annotations

from decimal import Decimal

from sidecar.invoices.analytics import route_stats, spend
from tests.charging.harness import T0
from tests.invoices.helpers import NUMBERS, add_customer, call, failed_call, new_sim

DAY = 86_400_000


def test_spend_by_destination_day_account_and_customer_with_departments() -> None:
    sim = new_sim()
    add_customer(sim, "ACME")
    add_customer(sim, "ACME-SALES", parent="ACME")
    add_customer(sim, "ACME-SUPPORT", parent="ACME")
    add_customer(sim, "OTHER")
    call(sim, "a1", NUMBERS[2], 60_000, account="ACME")  # UK 0.30
    call(sim, "s1", NUMBERS[2], 120_000, account="ACME-SALES")  # UK 0.60
    sim.advance_to(T0 + DAY)  # the next day
    call(sim, "s2", NUMBERS[1], 30_000, account="ACME-SALES")  # France 0.06 + 0.01 fee
    call(sim, "t1", NUMBERS[2], 180_000, account="ACME-SUPPORT")  # UK 0.90
    call(sim, "o1", NUMBERS[2], 240_000, account="OTHER")  # UK 1.20
    failed_call(sim, "o2", NUMBERS[0], account="OTHER")  # no spend, not a call

    by_dest = {(r.key, r.calls, r.amount) for r in spend(sim.conn, "destination")}
    assert by_dest == {("UK Mobile", 4, Decimal("3.00")), ("France", 1, Decimal("0.07"))}
    by_day = [(r.key, r.amount) for r in spend(sim.conn, "day")]
    assert by_day == [("2026-11-21", Decimal("0.90")), ("2026-11-22", Decimal("2.17"))]
    accounts = {r.key: (r.amount, r.parent) for r in spend(sim.conn, "account")}
    assert accounts == {"ACME": (Decimal("0.30"), ""), "ACME-SALES": (Decimal("0.67"), "ACME"),
                        "ACME-SUPPORT": (Decimal("0.90"), "ACME"),
                        "OTHER": (Decimal("1.20"), "")}
    # A customer's departments roll up into it, largest customer first.
    assert [(r.key, r.amount) for r in spend(sim.conn, "customer")] == [
        ("ACME", Decimal("1.87")), ("OTHER", Decimal("1.20"))]
    # Filtering on a customer includes its departments; on a department, just it.
    assert sum(r.exact for r in spend(sim.conn, "account", account="ACME")) == Decimal("1.87")
    assert [r.key for r in spend(sim.conn, "account", account="ACME-SALES")] == ["ACME-SALES"]
    # A time window on the call's end.
    assert [r.key for r in spend(sim.conn, "day", from_ms=T0 + DAY)] == ["2026-11-22"]


def test_asr_acd_and_answer_delay_per_route() -> None:
    sim = new_sim()
    add_customer(sim)
    call(sim, "a1", NUMBERS[0], 30_000, route="alpha", pdd_ms=1_000)
    call(sim, "a2", NUMBERS[0], 90_000, route="alpha", pdd_ms=3_000)
    failed_call(sim, "a3", NUMBERS[0], route="alpha")
    failed_call(sim, "a4", NUMBERS[0], route="alpha")
    call(sim, "b1", NUMBERS[1], 10_000, route="beta", pdd_ms=5_000)
    alpha, beta = route_stats(sim.conn)
    assert (alpha.route, alpha.attempts, alpha.answered, alpha.asr) == \
        ("alpha", 4, 2, Decimal("0.5000"))
    assert alpha.acd_seconds == Decimal("60.0")  # (30 + 90) / 2
    # Offer -> 200 OK: PDD plus the time the callee took to pick up.
    assert (alpha.answer_delay_mean_ms, alpha.answer_delay_p95_ms) == (2_000, 3_000)
    assert (beta.attempts, beta.answered, beta.asr, beta.acd_seconds,
            beta.answer_delay_mean_ms) == (1, 1, Decimal("1.0000"), Decimal("10.0"), 5_000)
    # No call rang (no 18x): no PDD, blank rather than a made-up figure.
    assert (alpha.pdd_mean_ms, alpha.pdd_p95_ms, beta.pdd_mean_ms) == (None, None, None)


def test_pdd_is_first_ringing_minus_offer_over_every_attempt_that_rang() -> None:
    sim = new_sim()
    add_customer(sim)
    call(sim, "a1", NUMBERS[0], 30_000, route="alpha", ringing_ms=800, pdd_ms=4_000)
    call(sim, "a2", NUMBERS[0], 30_000, route="alpha", ringing_ms=1_500, pdd_ms=9_000)
    failed_call(sim, "a3", NUMBERS[0], route="alpha", ringing_ms=2_200)
    failed_call(sim, "a4", NUMBERS[0], route="alpha")  # never rang: no PDD sample
    (alpha,) = route_stats(sim.conn)
    assert (alpha.pdd_mean_ms, alpha.pdd_p95_ms) == (1_500, 2_200)  # (800+1500+2200)/3
    assert (alpha.answer_delay_mean_ms, alpha.answer_delay_p95_ms) == (6_500, 9_000)
    assert (alpha.attempts, alpha.answered) == (4, 2)
