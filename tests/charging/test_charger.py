"""The charging core with a simulated clock and the real SQLite store."""

from __future__ import annotations

from decimal import Decimal

from sidecar.charging import Alert, Recharge
from sidecar.charging.model import AccountKind
from sidecar.store.accounts import map_sip, set_suspended, verify_ledger
from tests.charging.harness import Sim


def clean(sim: Sim) -> None:
    assert all(not c.problems for c in verify_ledger(sim.conn)), verify_ledger(sim.conn)


def test_two_calls_share_100_seconds_of_credit_and_stop_when_it_is_spent() -> None:
    sim = Sim()
    sim.account("acme", "0.10")  # 0.06/min = 0.001/s: credit for 100 s
    for ref in ("a", "b"):
        d = sim.charger.authorize(ref, number="+4930111", account_code="acme", now_ms=sim.now)
        assert d.allow and d.max_seconds == 100
    sim.answer("a")
    sim.answer("b")
    start = sim.now
    sim.advance_to(start + 200_000)
    ends = {e.call_ref: e.at_ms - start for e in sim.ended}
    assert set(ends) == {"a", "b"}
    # Both ended by the time the credit was spent (100 s of calling in total) ...
    assert sum(ends.values()) <= 100_000
    # ... and shared it fairly while it was low: neither was starved.
    assert abs(ends["a"] - ends["b"]) <= 6_000, ends
    for e in sim.ended:
        sim.now = e.at_ms + 40  # the BYE is seen a little later
        sim.end(e.call_ref, ended_by="proxy", reason="rpc")
    assert Decimal(0) <= sim.balance("acme") < Decimal("0.001")
    assert len(sim.cdrs("acme")) == 2
    charged = sum(Decimal(c["charged"]) for c in sim.cdrs("acme"))
    assert charged + sim.balance("acme") == Decimal("0.10")
    clean(sim)


def test_call_ending_inside_a_chunk_pays_its_real_duration() -> None:
    sim = Sim()
    sim.account("acme", "5")
    sim.charger.authorize("c", number="4930111", account_code="acme", now_ms=sim.now)
    sim.answer("c")
    assert sim.balance("acme") == Decimal("5") - Decimal("0.06")  # first 60 s chunk held
    sim.advance_to(sim.now + 90_500)  # chunk 2 reserved at 55 s
    sim.end("c", ended_by="caller", reason="bye")
    (cdr,) = sim.cdrs("acme")
    assert (cdr["duration_ms"], cdr["billed_seconds"]) == (90_500, 91)
    assert Decimal(cdr["charged"]) == Decimal("0.091")
    assert sim.balance("acme") == Decimal("4.909")
    clean(sim)


def test_duplicate_and_reordered_events_never_charge_twice() -> None:
    sim = Sim()
    sim.account("acme", "5")
    sim.charger.authorize("c", number="4930111", account_code="acme", now_ms=sim.now)
    sim.answer("c")
    sim.answer("c")  # duplicate answer: nothing more reserved
    assert sim.balance("acme") == Decimal("4.94")
    sim.advance_to(sim.now + 10_000)
    sim.end("c", ended_by="caller")
    sim.end("c", ended_by="callee")  # duplicate BYE
    sim.answer("c")  # answer arriving after the end
    sim.advance_to(sim.now + 120_000)
    assert len(sim.cdrs()) == 1
    assert sim.balance("acme") == Decimal("4.99")
    # A retransmitted INVITE of an ended call is not authorized again.
    assert not sim.charger.authorize("c", number="4930111", account_code="acme",
                                     now_ms=sim.now).allow
    clean(sim)


def test_authorization_codes() -> None:
    sim = Sim()
    sim.account("empty")
    sim.account("rich", "10")
    auth = sim.charger.authorize
    assert auth("1", number="4930111", account_code="nobody", now_ms=sim.now).code == 403
    assert auth("2", number="4930111", account_code="empty", now_ms=sim.now).code == 402
    assert auth("3", number="+81312345678", account_code="rich", now_ms=sim.now).code == 404
    set_suspended(sim.conn, "rich", True, "fraud check")
    d = auth("4", number="4930111", account_code="rich", now_ms=sim.now)
    assert (d.code, d.reason) == (403, "account rich suspended: fraud check")
    assert [c["disposition"] for c in sim.cdrs()] == ["rejected"] * 4
    assert all(c["charged"] == "0" for c in sim.cdrs())


def test_max_duration_accounts_for_connection_fee_and_increment() -> None:
    sim = Sim()
    sim.account("acme", "0.10")  # France: 0.12/min, 30/6, fee 0.01
    d = sim.charger.authorize("f", number="0033123456", account_code="acme", now_ms=sim.now)
    # (0.10 - 0.01) buys 45 s at 0.002/s: on the 30/6 grid that is 42 s.
    assert d.max_seconds == 42
    sim.account("poor", "0.06")  # the first 30 s block + fee cost 0.07
    assert sim.charger.authorize("g", number="0033123456", account_code="poor",
                                 now_ms=sim.now).code == 402


def test_sip_user_and_ip_map_to_accounts() -> None:
    sim = Sim()
    sim.account("acme", "1")
    map_sip(sim.conn, "user", "alice", "acme")
    map_sip(sim.conn, "ip", "192.0.2.7", "acme")
    auth = sim.charger.authorize
    assert auth("1", number="4930111", sip_user="alice", now_ms=sim.now).account == "acme"
    assert auth("2", number="4930111", sip_user="bob", src_ip="192.0.2.7",
                now_ms=sim.now).account == "acme"
    assert auth("3", number="4930111", sip_user="bob", src_ip="192.0.2.8",
                now_ms=sim.now).code == 403


def test_unanswered_call_writes_a_zero_cdr_and_releases_nothing() -> None:
    sim = Sim()
    sim.account("acme", "1")
    sim.charger.authorize("c", number="4930111", account_code="acme", now_ms=sim.now)
    sim.charger.fail("c", sim.now + 3000, 486, "Busy Here")
    (cdr,) = sim.cdrs()
    assert (cdr["disposition"], cdr["sip_code"], cdr["charged"]) == ("failed", 486, "0")
    assert sim.balance("acme") == Decimal("1")


def test_low_balance_alert_and_auto_recharge() -> None:
    sim = Sim()
    sim.account("acme", "1", low_balance=Decimal("0.5"), recharge_below=Decimal("0.3"),
                recharge_amount=Decimal("5"))
    sim.charger.authorize("c", number="447700900", account_code="acme", now_ms=sim.now)
    sim.answer("c")  # 0.30 per 60/60 minute: reserves 0.30, balance 0.70
    sim.advance_to(sim.now + 150_000)
    kinds = [a.kind for a in sim.actions if isinstance(a, Alert)]
    assert kinds.count("low_balance") == 1
    recharges = [a for a in sim.actions if isinstance(a, Recharge)]
    assert len(recharges) == 1 and recharges[0].amount == Decimal("5")
    sim.ledger.topup("acme", recharges[0].amount, sim.now, "auto-recharge")
    sim.charger.recharged("acme")
    sim.end("c", ended_by="caller")
    assert Decimal(sim.cdrs()[0]["charged"]) == Decimal("0.90")
    assert sim.balance("acme") == Decimal("1") + Decimal("5") - Decimal("0.90")
    clean(sim)


def test_postpaid_daily_cap_suspends_the_account() -> None:
    sim = Sim()
    sim.account("corp", kind=AccountKind.POSTPAID, credit_limit=Decimal("100"),
                daily_cap=Decimal("0.60"))
    for i in range(3):
        ref = f"c{i}"
        d = sim.charger.authorize(ref, number="447700900", account_code="corp", now_ms=sim.now)
        if not d.allow:
            break
        sim.answer(ref)
        sim.advance_to(sim.now + 60_000)
        sim.end(ref, ended_by="caller")
    assert [a.kind for a in sim.actions if isinstance(a, Alert)] == ["budget", "suspended"]
    assert d.code == 403 and "daily cap 0.60 reached" in d.reason
    assert sim.balance("corp") == Decimal("-0.60")
    clean(sim)


def test_live_view_shows_running_cost_and_remaining_time() -> None:
    sim = Sim()
    sim.account("acme", "5")
    sim.charger.authorize("c", number="4930111", account_code="acme", now_ms=sim.now)
    sim.answer("c")
    sim.advance_to(sim.now + 30_000)
    (live,) = sim.charger.live(sim.now)
    assert live["cost"] == Decimal("0.03") and live["remaining_ms"] == 30_000
    rows = sim.ledger.live_calls()
    assert rows[0]["paid_seconds"] == 60 and Decimal(str(rows[0]["reserved"])) == Decimal("0.06")


def test_a_call_another_node_settled_ends_at_its_paid_time_with_that_reason() -> None:
    """Another node settled the call (this node's lease on it had run out): the next
    reservation gets nothing, the call ends at the paid time billed, saying why, and its
    own settlement charges nothing more."""
    from sidecar.charging.charger import REASON_SETTLED
    from sidecar.charging.commands import Settle
    from sidecar.charging.model import Cdr, Disposition

    sim = Sim()
    sim.account("acme", "10")
    assert sim.charger.authorize("c", number="4930111", account_code="acme",
                                 now_ms=sim.now).allow
    sim.answer("c")
    paid = sim.charger.sessions["c"].paid_seconds
    assert paid == 60
    other = Cdr("c", "c", Disposition.ANSWERED, account="acme", plan="retail",
                answered_ms=sim.now, billable_ms=sim.now, ended_ms=sim.now + paid * 1000,
                duration_ms=paid * 1000, billed_seconds=paid, cost=Decimal("0.06"),
                usage=Decimal("0.06"), end_reason="lease expired")
    res = sim.ledger.execute([Settle(-1, other, sim.now, lease_ended_by=sim.now + 10**9)])
    assert res.outcomes[0].settlement is not None
    assert not res.outcomes[0].settlement.duplicate
    sim.advance_to(sim.now + paid * 1000 + 1)
    (ended,) = sim.ended
    assert ended.reason == REASON_SETTLED
    sim.end("c", ended_by="proxy")
    assert len(sim.cdrs()) == 1 and sim.balance("acme") == Decimal("9.94")
    assert all(not c.problems for c in verify_ledger(sim.conn))


def test_a_call_to_a_free_destination_runs_its_chunks_and_costs_nothing() -> None:
    deck = ("destination;code;rate_usd;increment;effective_from;connection_fee\n"
            "Freephone;800;0.0000;1/1;2026-06-01;0\n"
            "Germany Fixed;4930;0.06;1/1;2026-06-01;0\n")
    sim = Sim(deck=deck)
    sim.account("acme")  # no credit at all
    d = sim.charger.authorize("f", number="800123", account_code="acme", now_ms=sim.now)
    assert d.allow and d.max_seconds == 14_400
    sim.answer("f")  # the first chunk: nothing to hold, but the call is recorded
    (live,) = sim.conn.execute("SELECT paid_seconds, reserved FROM live_calls").fetchall()
    assert live[0] == 60 and Decimal(live[1]) == 0
    sim.advance_to(sim.now + 150_000)  # chunks renewed; never ended for credit
    assert not sim.ended
    sim.end("f", ended_by="caller")
    (cdr,) = sim.cdrs("acme")
    assert (cdr["billed_seconds"], Decimal(cdr["cost"])) == (150, Decimal(0))
    assert not sim.charger.authorize("g", number="4930111", account_code="acme",
                                     now_ms=sim.now).allow  # still no credit elsewhere
    clean(sim)
