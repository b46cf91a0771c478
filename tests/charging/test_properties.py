"""Property test: any interleaving of concurrent calls, duplicate and reordered events
and top-ups on one prepaid account keeps the money right."""

from __future__ import annotations

import contextlib
from decimal import Decimal

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sidecar.charging import Action, Charger, ChargingConfig
from sidecar.charging.book import AccountBook
from sidecar.charging.commands import StoreCommand
from sidecar.store.accounts import list_accounts, verify_ledger
from tests.charging.harness import Op, Sim, drive

NUMBERS = ["4930111", "0033123456", "447700900"]

noise = st.one_of(
    st.tuples(st.just("advance"), st.integers(1, 90_000), st.just("")),
    st.tuples(st.just("late"), st.integers(1, 200_000), st.just("")),  # no timer fires
    st.tuples(st.just("topup"), st.integers(1, 100), st.just("")),  # cents
    st.tuples(st.just("deliver_byes"), st.integers(0, 800), st.just("")),
)


@st.composite
def scenario(draw: st.DrawFn, extra: st.SearchStrategy[Op] = noise) -> list[Op]:
    """Per call: offer, maybe answer, one or more ends (duplicates), sometimes a failure
    and sometimes its events swapped; all calls and noise interleaved at random."""
    streams: list[list[Op]] = []
    for i in range(draw(st.integers(1, 5))):
        ev: list[Op] = [("auth", i, draw(st.sampled_from(NUMBERS)))]
        if draw(st.integers(0, 9)) < 8:
            ev.append(("answer", i, ""))
        if draw(st.booleans()):
            ev.append(("answer", i, ""))  # duplicate answer
        ev += [("fail" if draw(st.integers(0, 5)) == 0 else "end", i, "")] * draw(
            st.integers(1, 3))
        if draw(st.integers(0, 4)) == 0 and len(ev) > 2:  # reorder: end before answer
            ev[1], ev[-1] = ev[-1], ev[1]
        streams.append(ev)
    streams.append(draw(st.lists(extra, max_size=25)))
    out: list[Op] = []
    while any(streams):
        live = [s for s in streams if s]
        out.append(live[draw(st.integers(0, len(live) - 1))].pop(0))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    initial=st.decimals(Decimal("0"), Decimal("0.5"), places=3),
    chunk=st.sampled_from([6, 30, 60]),
    ops=scenario(),
)
def test_money_invariants(initial: Decimal, chunk: int, ops: list[Op]) -> None:
    sim = Sim(":memory:", ChargingConfig(renew_lead_ms=chunk * 300))
    sim.account("acme", str(initial), chunk_seconds=chunk)
    topups = Decimal(0)
    authorized: set[str] = set()
    ch = sim.charger
    for kind, n, number in ops:
        ref = f"call-{n}"
        if kind == "auth":
            if ch.authorize(ref, number=number, account_code="acme", now_ms=sim.now).allow:
                authorized.add(ref)
        elif kind == "answer":
            sim.answer(ref)
        elif kind == "end":
            sim.end(ref, ended_by="caller")
        elif kind == "fail":
            sim._take(ch.fail(ref, sim.now, 487))
        elif kind == "advance":
            sim.advance_to(sim.now + n)
        elif kind == "late":
            sim.now += n
        elif kind == "topup":
            amount = Decimal(n) / 100
            sim.ledger.topup("acme", amount, sim.now)
            topups += amount
        elif kind == "deliver_byes":
            sim.now += n
            for e in list(sim.ended):
                sim.end(e.call_ref, ended_by="proxy")  # repeated deliveries are duplicates
        assert sim.balance("acme") >= 0
    # Whatever is still up ends now.
    sim.advance_to(sim.now + 1000)
    for ref in sorted(authorized):
        sim.end(ref, ended_by="caller")
    cdrs = sim.cdrs("acme")
    settled = [c["call_ref"] for c in cdrs if c["disposition"] != "rejected"]
    assert len(settled) == len(set(settled)) == len(authorized)
    charged = sum((Decimal(c["charged"]) for c in cdrs), Decimal(0))
    assert sim.balance("acme") == initial + topups - charged
    assert sim.balance("acme") >= 0
    assert sim.conn.execute("SELECT COUNT(*) FROM live_calls").fetchone()[0] == 0
    for check in verify_ledger(sim.conn):
        assert not check.problems, check.problems
    event(f"answered calls: {min(3, sum(c['disposition'] == 'answered' for c in cdrs))}+")
    event(f"some cost written off: {any(Decimal(c['written_off']) for c in cdrs)}")


class Delayed:
    """A store edge whose answers come late: commands wait until the test flushes them,
    then are applied in one transaction, as the live writer thread does."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.queue: list[StoreCommand] = []
        self.batches = 0

    def submit(self, cmd: StoreCommand) -> None:
        self.queue.append(cmd)

    def flush(self, charger: Charger) -> list[Action]:
        batch, self.queue = self.queue, []
        if not batch:
            return []
        self.batches += 1
        return charger.on_results(self.sim.ledger.execute(batch), self.sim.now)


live_noise = st.one_of(
    noise,
    st.tuples(st.just("flush"), st.integers(0, 0), st.just("")),
    st.tuples(st.just("flush"), st.integers(0, 0), st.just("")),
    st.tuples(st.just("adjust"), st.integers(1, 30), st.just("")),  # cents taken elsewhere
    st.tuples(st.just("refresh"), st.integers(0, 0), st.just("")),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    initial=st.decimals(Decimal("0"), Decimal("0.5"), places=3),
    chunk=st.sampled_from([6, 30, 60]),
    ops=scenario(live_noise),
)
def test_money_invariants_with_late_store_answers(initial: Decimal, chunk: int,
                                                   ops: list[Op]) -> None:
    """The live form: the core decides from its book, the store answers whenever it gets
    to it, and other processes change the account meanwhile (top-ups, corrections the
    book has not seen). The store never goes below zero and every call settles once."""
    sim = Sim(None, ChargingConfig(renew_lead_ms=chunk * 300))
    sim.account("acme", str(initial), chunk_seconds=chunk)
    store = Delayed(sim)
    book = AccountBook()
    book.load(list_accounts(sim.conn, sim.now), {})
    ch = Charger(store, sim.charger.plans, sim.charger.config, book=book)

    def other(kind: str, n: int) -> None:
        if kind == "adjust":
            with contextlib.suppress(ValueError):  # never below zero, even for corrections
                sim.ledger.topup("acme", -Decimal(n) / 100, sim.now, kind="adjustment")
        elif kind == "refresh":
            book.load(list_accounts(sim.conn, sim.now), {})

    def check() -> None:
        assert sim.balance("acme") >= 0

    authorized, _topups = drive(sim, ch, ops, "acme", flush=lambda: store.flush(ch),
                                other=other, each=check)
    assert ch.inflight() == 0
    cdrs = sim.cdrs("acme")
    settled = [c["call_ref"] for c in cdrs if c["disposition"] != "rejected"]
    assert len(settled) == len(set(settled)) == len(authorized)
    assert sim.balance("acme") >= 0
    assert sim.conn.execute("SELECT COUNT(*) FROM live_calls").fetchone()[0] == 0
    for check in verify_ledger(sim.conn):
        assert not check.problems, check.problems
    # Once every answer is in, the book agrees with the store.
    book.load(list_accounts(sim.conn, sim.now), {})
    acc = book.get("acme", sim.now)
    assert acc is not None and acc.balance == sim.balance("acme") and acc.held == 0
    event(f"store batches: {min(store.batches, 5)}+")
