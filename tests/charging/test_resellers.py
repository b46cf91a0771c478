"""Resellers (issue 14): a call is rated at every tier of its account's chain and every
tier pays its own price, reserved together, so a reseller out of credit stops its
customers' calls; the CDR carries each tier's price and margin. On a real SQLite store,
checked against hand arithmetic and with property tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidecar.charging import Action, Charger, ChargingConfig, MediaOutcome
from sidecar.charging.book import AccountBook
from sidecar.charging.model import AccountKind
from sidecar.rating.bundles import Bundle
from sidecar.store.accounts import add_account, list_accounts, verify_ledger
from sidecar.store.bundles import add_bundle, bundle_book, list_bundles, recent_usage
from sidecar.store.decks import PlanCache, import_deck
from tests.charging.harness import T0, Op, Sim, drive
from tests.charging.test_properties import Delayed, noise, scenario

D = Decimal
# Germany Fixed on 1/1 at each tier: the customer pays 0.06/min, its reseller 0.04, the
# distributor above it 0.02. UK Mobile on 60/60 likewise, France only in retail.
PLANS = {
    "res": "destination;code;rate_usd;increment;effective_from\n"
           "Germany Fixed;4930;0.04;1/1;2026-06-01\nUK Mobile;447;0.20;60/60;2026-06-01\n",
    "dist": "destination;code;rate_usd;increment;effective_from\n"
            "Germany;49;0.02;1/1;2026-06-01\nUK Mobile;447;0.10;60/60;2026-06-01\n",
}


def chain_sim(cust: str = "10", res: str = "10", dist: str = "10", *, db: str | None = None,
              config: ChargingConfig | None = None, chunk: int | None = None) -> Sim:
    sim = Sim(db, config)
    tmp = Path(sim._tmp.name)
    for name, deck in PLANS.items():
        (tmp / f"{name}.csv").write_text(deck)
        import_deck(sim.conn, name, tmp / f"{name}.csv", as_of=datetime(2026, 11, 1, tzinfo=UTC))
    sim.charger = Charger(sim.ledger, PlanCache(sim.conn), config)
    extra: dict[str, object] = {"chunk_seconds": chunk} if chunk else {}
    for code, plan, parent, balance in (("DIST", "dist", None, dist), ("RES", "res", "DIST", res),
                                        ("CUST", "retail", "RES", cust)):
        add_account(sim.conn, code, plan, AccountKind.PREPAID, now_ms=T0, parent=parent,
                    reseller=code != "CUST", **extra)  # type: ignore[arg-type]
        if D(balance):
            sim.ledger.topup(code, D(balance), T0, "initial")
    return sim


def tiers(sim: Sim, cdr: object) -> list[dict[str, object]]:
    """The call's price at each reseller (cdr_tiers), nearest first."""
    cur = sim.conn.execute("SELECT * FROM cdr_tiers WHERE call_ref = ? ORDER BY tier",
                           (cdr["call_ref"],))  # type: ignore[index]
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur]


def test_every_tier_pays_its_own_price_and_the_margins_add_up() -> None:
    sim = chain_sim()
    d = sim.charger.authorize("c", number="4930123", account_code="CUST", now_ms=sim.now)
    assert d.allow
    sim.answer("c")
    sim.advance_to(sim.now + 90_000)
    sim.end("c", ended_by="caller")
    (cdr,) = sim.cdrs("CUST")
    assert D(cdr["cost"]) == D("0.09")  # 90 s at 0.06/min
    t = tiers(sim, cdr)
    assert [(x["tier"], x["account"], x["plan"], D(str(x["cost"])), D(str(x["charged"])),
             D(str(x["margin"]))) for x in t] == [
        (1, "RES", "res", D("0.06"), D("0.06"), D("0.03")),
        (2, "DIST", "dist", D("0.03"), D("0.03"), D("0.03"))]
    # Margins add up: what the customer paid = the top tier's price + every margin.
    assert D(cdr["cost"]) == D(str(t[-1]["cost"])) + sum(D(str(x["margin"])) for x in t)
    assert (sim.balance("CUST"), sim.balance("RES"), sim.balance("DIST")) == (
        D("9.91"), D("9.94"), D("9.97"))
    rows = sim.conn.execute("SELECT account, tier, cost, charged FROM cdr_tiers ORDER BY tier"
                            ).fetchall()
    assert [(a, n, D(c), D(ch)) for a, n, c, ch in rows] == [
        ("RES", 1, D("0.06"), D("0.06")), ("DIST", 2, D("0.03"), D("0.03"))]
    assert all(not c.problems for c in verify_ledger(sim.conn))


def test_a_reseller_out_of_credit_stops_its_customers_call_at_the_right_moment() -> None:
    sim = chain_sim(res="0.02")  # 30 s at the reseller's 0.04/min
    d = sim.charger.authorize("c", number="4930123", account_code="CUST", now_ms=sim.now)
    assert d.allow and d.max_seconds == 30
    sim.answer("c")
    sim.advance_to(sim.now + 300_000)
    (end,) = sim.ended
    assert end.at_ms == T0 + 30_000 and end.reason == "credit exhausted"
    sim.end("c", ended_by="proxy")
    (cdr,) = sim.cdrs("CUST")
    assert (cdr["billed_seconds"], D(cdr["cost"])) == (30, D("0.03"))
    assert [D(str(x["charged"])) for x in tiers(sim, cdr)] == [D("0.02"), D("0.01")]
    assert (sim.balance("CUST"), sim.balance("RES"), sim.balance("DIST")) == (
        D("9.97"), D("0"), D("9.99"))
    # The reseller has nothing left: its customer's next call is refused.
    d = sim.charger.authorize("d", number="4930123", account_code="CUST", now_ms=sim.now)
    assert (d.allow, d.code, d.limit) == (False, 402, "reseller")
    assert "reseller RES (above account CUST) has no credit" in d.reason
    assert all(not c.problems for c in verify_ledger(sim.conn))


def test_the_top_tier_out_of_credit_stops_the_whole_chain() -> None:
    sim = chain_sim(dist="0.005")  # 15 s at the distributor's 0.02/min
    sim.charger.authorize("c", number="4930123", account_code="CUST", now_ms=sim.now)
    sim.answer("c")
    sim.advance_to(sim.now + 300_000)
    (end,) = sim.ended
    assert end.at_ms == T0 + 15_000
    sim.end("c", ended_by="proxy")
    assert sim.balance("DIST") == 0 and sim.balance("RES") == D("9.99")


def test_a_suspended_reseller_or_one_without_a_rate_refuses_the_call() -> None:
    sim = chain_sim()
    d = sim.charger.authorize("fr", number="33123456", account_code="CUST", now_ms=sim.now)
    assert (d.allow, d.code) == (False, 404)
    assert "reseller RES (above account CUST): no rate for 33123456 in plan res" in d.reason
    sim.conn.execute("UPDATE accounts SET suspended = 1, suspend_reason = 'unpaid' "
                     "WHERE code = 'DIST'")
    sim.conn.commit()
    d = sim.charger.authorize("de", number="4930123", account_code="CUST", now_ms=sim.now)
    assert (d.allow, d.code, d.phrase) == (False, 403, "Account Suspended")
    assert "reseller DIST (above account CUST) suspended: unpaid" in d.reason


def test_a_parent_that_is_not_a_reseller_is_not_charged() -> None:
    sim = chain_sim()
    sim.conn.execute("UPDATE accounts SET reseller = 0 WHERE code = 'RES'")
    sim.conn.commit()
    sim.charger.authorize("c", number="4930123", account_code="CUST", now_ms=sim.now)
    sim.answer("c")
    sim.advance_to(sim.now + 60_000)
    sim.end("c", ended_by="caller")
    (cdr,) = sim.cdrs("CUST")
    # Only DIST, the reseller above, rates it; its margin is over what CUST paid.
    assert [(x["tier"], x["account"], D(str(x["margin"]))) for x in tiers(sim, cdr)] == [
        (1, "DIST", D("0.04"))]
    assert sim.balance("RES") == 10


def test_a_false_answer_gives_every_tier_its_money_back() -> None:
    sim = chain_sim()
    sim.charger.authorize("c", number="4930123", account_code="CUST", now_ms=sim.now)
    sim.answer("c")
    sim.advance_to(sim.now + 40_000)
    sim.end("c", ended_by="caller", media=MediaOutcome(T0, verdict="fas", reasons="ringback",
                                                       credit=True))
    assert (sim.balance("CUST"), sim.balance("RES"), sim.balance("DIST")) == (
        D(10), D(10), D(10))
    assert all(not c.problems for c in verify_ledger(sim.conn))


def test_a_restarted_core_settles_an_adopted_call_on_every_tier() -> None:
    sim = chain_sim()
    sim.charger.authorize("c", number="4930123", account_code="CUST", now_ms=sim.now)
    sim.answer("c")
    (row,) = sim.ledger.live_calls()
    import json
    # The chunk was drawn from this node's floats on the resellers (recorded on the call).
    drawn = {k: D(v) for k, v in json.loads(str(row["tier_draws"])).items()}
    assert drawn == {"RES": D("0.04"), "DIST": D("0.02")} and not row["tier_holds"]
    floats = sim.ledger.floats()
    assert floats["RES"] > D("0.04") and floats["DIST"] > D("0.02")
    fresh = Charger(sim.ledger, PlanCache(sim.conn))
    fresh.load_floats(floats, sim.now)
    sim.now += 45_000
    fresh.adopt("c", account="CUST", number=str(row["number"]), caller="", now_ms=sim.now,
                answered_ms=int(str(row["answered_ms"])),
                paid_seconds=int(str(row["paid_seconds"])), reserved=D(str(row["reserved"])),
                supervise=False, tier_draws=drawn)
    # What the floats hold beyond the call's draws is free for the restarted core.
    assert fresh.floats["RES"].free == floats["RES"] - D("0.04")
    fresh.end("c", sim.now, ended_by="caller")
    (cdr,) = sim.cdrs("CUST")
    assert [D(str(x["charged"])) for x in tiers(sim, cdr)] == [D("0.03"), D("0.015")]
    assert all(not c.problems for c in verify_ledger(sim.conn))
    fresh.release_floats(sim.now)  # (as a stopping sidecar does)
    assert sim.ledger.floats() == {}
    assert (sim.balance("RES"), sim.balance("DIST")) == (D("9.97"), D("9.985"))
    assert all(not c.problems for c in verify_ledger(sim.conn))


# --- properties ----------------------------------------------------------------------

NUMBERS = ["4930111", "447700900", "4930222"]


def _check(sim: Sim, initial: dict[str, Decimal]) -> None:
    for code in ("CUST", "RES", "DIST"):
        assert sim.balance(code) >= 0
    for check in verify_ledger(sim.conn):
        assert not check.problems, check.problems
    assert sim.conn.execute("SELECT COUNT(*) FROM live_calls").fetchone()[0] == 0
    assert sim.conn.execute("SELECT SUM(CAST(held AS REAL)) FROM accounts").fetchone()[0] == 0
    assert sim.conn.execute("SELECT COUNT(*) FROM reseller_floats WHERE CAST(held AS REAL) "
                            "<> 0").fetchone()[0] == 0
    for cdr in sim.cdrs("CUST"):
        t = tiers(sim, cdr)
        if cdr["disposition"] != "answered" or not t:
            continue
        # Margins add up, and every tier covered the same seconds.
        assert D(cdr["cost"]) - D(cdr["credited"]) == (
            D(str(t[-1]["cost"])) - D(str(t[-1]["credited"]))
            + sum(D(str(x["margin"])) for x in t))
        # Charged what it could cover, the rest written off: never more than its price.
        assert all(D(str(x["charged"])) + D(str(x["written_off"])) == D(str(x["cost"]))
                   for x in t)
    # Every tier's invoice for the month is the sum of its rows and reconciles with the
    # CDRs, its tier rows and its ledger.
    from sidecar.invoices import InvoiceSettings, Period, draft_invoice, reconcile
    for code in ("CUST", "RES", "DIST"):
        inv = draft_invoice(sim.conn, code, Period(2026, 11), InvoiceSettings(),
                            now_ms=sim.now).invoice
        own = sum((D(r[0]) for r in sim.conn.execute(
            "SELECT charged FROM cdrs WHERE account = ?", (code,))), D(0))
        resold = sum((D(r[0]) for r in sim.conn.execute(
            "SELECT charged FROM cdr_tiers WHERE account = ?", (code,))), D(0))
        assert inv.exact_charged == own + resold
        assert inv.charges == sum((ln.amount for ln in inv.lines), D(0))
        rec = reconcile(sim.conn, inv)
        assert rec.ok, rec
    # Each tier's price of a call is above the price of the tier above it (these plans).
    for cdr in sim.cdrs("CUST"):
        costs = [D(str(x["cost"])) for x in tiers(sim, cdr)]
        assert costs == sorted(costs, reverse=True)
    event(f"reseller spent all: {sim.balance('RES') == 0}")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cust=st.decimals(D("0"), D("0.3"), places=3), res=st.decimals(D("0"), D("0.2"), places=3),
       chunk=st.sampled_from([6, 30, 60]), bundle=st.integers(0, 90),
       floats=st.sampled_from([0, 1, 3, 50]), ops=scenario(st.one_of(noise)))
def test_no_tier_ever_goes_below_zero_and_every_tier_is_charged_once(
        cust: Decimal, res: Decimal, chunk: int, bundle: int, floats: int, ops: list[Op]
) -> None:
    """``floats``: the resellers' floats hold this many chunks (0: a hold per call and
    tier); small ones are topped up, drained and given back many times in one run."""
    sim = chain_sim(str(cust), str(res), "1", db=":memory:",
                    config=_config(chunk, floats), chunk=chunk)
    if bundle:
        add_bundle(sim.conn, "account", "CUST", Bundle("free", bundle), now_ms=T0)
        sim.charger.bundles = bundle_book(sim.conn)
    _run(sim, sim.charger, ops, None)
    sim.charger.release_floats(sim.now)  # (a stopping sidecar gives back what they hold)
    _check(sim, {"CUST": cust, "RES": res, "DIST": D(1)})


def _config(chunk: int, floats: int) -> ChargingConfig:
    return ChargingConfig(renew_lead_ms=chunk * 300, float_chunks=floats, float_low_chunks=1)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cust=st.decimals(D("0"), D("0.3"), places=3), res=st.decimals(D("0"), D("0.2"), places=3),
       chunk=st.sampled_from([6, 30, 60]), floats=st.sampled_from([0, 1, 3, 50]),
       ops=scenario(st.one_of(noise, st.tuples(st.just("flush"), st.integers(0, 0),
                                               st.just("")))))
def test_the_chain_holds_with_late_store_answers(cust: Decimal, res: Decimal, chunk: int,
                                                 floats: int, ops: list[Op]) -> None:
    """The live form: the core decides every tier from its book (and its floats, counting
    a top-up before the store has granted it), the store answers later and applies the
    same chain rule to what it holds (and refuses a draw its float does not have)."""
    sim = chain_sim(str(cust), str(res), "1", config=_config(chunk, floats), chunk=chunk)
    store = Delayed(sim)
    book = AccountBook()
    book.load(list_accounts(sim.conn, sim.now), {})
    ch = Charger(store, sim.charger.plans, sim.charger.config, book=book)
    ch.bundles.load(list_bundles(sim.conn), recent_usage(sim.conn, sim.now))
    _run(sim, ch, ops, lambda: store.flush(ch))
    ch.release_floats(sim.now)
    store.flush(ch)
    assert ch.inflight() == 0
    _check(sim, {"CUST": cust, "RES": res, "DIST": D(1)})


def _run(sim: Sim, ch: Charger, ops: list[Op],
         flush: Callable[[], list[Action]] | None) -> None:
    def check() -> None:
        for code in ("CUST", "RES", "DIST"):
            assert sim.balance(code) >= 0

    drive(sim, ch, ops, "CUST", flush=flush, each=check,
          number=lambda n: n if n in NUMBERS else "4930111")


# --- invoices --------------------------------------------------------------------------

def test_each_tier_is_invoiced_by_the_tier_above_at_its_own_price() -> None:
    from sidecar.invoices import InvoiceSettings, Period, draft_invoice, reconcile

    sim = chain_sim()
    sim.conn.execute("UPDATE accounts SET name = 'Reseller Ltd', address = '1 Main St', "
                     "tax_number = 'DE123' WHERE code = 'RES'")
    sim.conn.commit()
    for ref, secs in (("a", 90), ("b", 30)):
        sim.charger.authorize(ref, number="4930123", account_code="CUST", now_ms=sim.now)
        sim.answer(ref)
        sim.advance_to(sim.now + secs * 1000)
        sim.end(ref, ended_by="caller")
    settings = InvoiceSettings(provider_name="Operator plc")
    docs = {code: draft_invoice(sim.conn, code, Period(2026, 11), settings,
                                now_ms=sim.now).invoice for code in ("CUST", "RES", "DIST")}
    # Who invoices whom: the reseller above, with its own details; the top, the operator.
    assert (docs["CUST"].provider.name, docs["CUST"].provider.address,
            docs["CUST"].provider.tax_number) == ("Reseller Ltd", "1 Main St", "DE123")
    assert docs["RES"].provider.name == "DIST"
    assert docs["DIST"].provider.name == "Operator plc"
    # Each at its own price for the same 120 s: 0.12, 0.08, 0.04.
    for code, total, rate in (("CUST", "0.12", "0.06"), ("RES", "0.08", "0.04"),
                              ("DIST", "0.04", "0.02")):
        inv = docs[code]
        (ln,) = inv.lines_of("usage")
        assert (ln.calls, ln.billed_seconds, ln.rate, ln.exact) == (2, 120, D(rate), D(total))
        assert inv.exact_charged == D(total) == D(10) - sim.balance(code)
        rec = reconcile(sim.conn, inv)
        assert rec.ok, rec


def test_a_reseller_numbers_its_own_invoices_in_a_series_of_its_own() -> None:
    from sidecar.invoices import InvoiceSettings, Period, issue_credit_note, issue_invoice

    sim = chain_sim()
    add_account(sim.conn, "CUST2", "retail", AccountKind.PREPAID, now_ms=T0, parent="RES")
    sim.ledger.topup("CUST2", D(5), T0, "initial")
    for ref, code in (("a", "CUST"), ("b", "CUST2")):
        sim.charger.authorize(ref, number="4930123", account_code=code, now_ms=sim.now)
        sim.answer(ref)
        sim.advance_to(sim.now + 60_000)
        sim.end(ref, ended_by="caller")
    after = int(datetime(2026, 12, 2, tzinfo=UTC).timestamp() * 1000)
    settings = InvoiceSettings(provider_name="Operator plc")
    issued = {code: issue_invoice(sim.conn, code, Period(2026, 11), settings, now_ms=after)
              .invoice for code in ("DIST", "CUST", "RES", "CUST2")}
    # The operator's series for its customer (DIST), DIST's for RES, RES's for its two.
    assert {c: i.number for c, i in issued.items()} == {
        "DIST": "INV-000001", "CUST": "RES-INV-000001", "RES": "DIST-INV-000001",
        "CUST2": "RES-INV-000002"}
    assert issued["CUST2"].provider.code == "RES"
    note = issue_credit_note(sim.conn, "RES-INV-000002", "goodwill", now_ms=after + 1).invoice
    assert note.number == "RES-CN-000001"
    # Issuing again gives the same document, with its number.
    again = issue_invoice(sim.conn, "CUST", Period(2026, 11), settings, now_ms=after + 2)
    assert again.invoice.number == "RES-INV-000001" and not again.new


def test_a_resellers_charges_in_one_transaction_are_posted_once_per_day() -> None:
    """Calls of a reseller's customers settled in one store transaction (the live writer's
    group commit) across a UTC midnight: the reseller's ledger gets one charge row per day,
    each the sum of that day's cdr_tiers charges with the number of calls, and every
    balance still equals its ledger."""
    sim = chain_sim(config=_config(60, 3), chunk=60)
    store = Delayed(sim)
    book = AccountBook()
    book.load(list_accounts(sim.conn, sim.now), {})
    ch = Charger(store, sim.charger.plans, sim.charger.config, book=book)
    midnight = int(datetime(2026, 11, 22, tzinfo=UTC).timestamp() * 1000)
    calls = {"a": (midnight - 100_000, midnight - 40_000),
             "b": (midnight - 90_000, midnight - 20_000),
             "c": (midnight - 30_000, midnight + 30_000)}
    events = sorted([(t, 0, ref) for ref, (t, _e) in calls.items()]
                    + [(t, 1, ref) for ref, (_s, t) in calls.items()])
    for t, what, ref in events:
        while (d := ch.next_deadline()) is not None and d <= t:
            ch.tick(d)
        sim.now = t
        if what == 0:
            assert ch.authorize(ref, number="4930123", account_code="CUST", now_ms=t).allow
            ch.answer(ref, t)
        else:
            ch.end(ref, t, ended_by="caller")
    assert store.batches == 0  # nothing reached the store yet: one transaction for all
    store.flush(ch)
    ch.release_floats(sim.now)
    store.flush(ch)
    assert ch.inflight() == 0
    for code in ("RES", "DIST"):
        rows = [(int(ts), D(str(a)), str(n)) for ts, a, n in sim.conn.execute(
            "SELECT ts_ms, amount, note FROM ledger WHERE account = ? AND kind = 'charge' "
            "ORDER BY ts_ms", (code,))]
        per_day = {}
        for ref, charged in sim.conn.execute(
                "SELECT call_ref, charged FROM cdr_tiers WHERE account = ?", (code,)):
            day = calls[str(ref)][1] // 86_400_000
            got = per_day.get(day, (D(0), 0))
            per_day[day] = (got[0] + D(str(charged)), got[1] + 1)
        assert len(per_day) == 2 and all(n for _a, n in per_day.values())
        assert [(ts // 86_400_000, -a, n) for ts, a, n in rows] == [
            (day, total, f"resold calls: {n} (detail: cdr_tiers)")
            for day, (total, n) in sorted(per_day.items())]
        # Each row is dated by the first of its day's calls settled.
        assert [ts for ts, _a, _n in rows] == [midnight - 40_000, midnight + 30_000]
    assert all(not c.problems for c in verify_ledger(sim.conn))
