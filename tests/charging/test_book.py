"""The account book's views: however commands are applied (with or without building the
view at once) and however the store confirms them, every read shows the store's last
state plus what it has not confirmed yet, exactly."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.charging.book import AccountBook
from sidecar.charging.model import Account, AccountKind
from sidecar.charging.settle import Effect, evolve, settle_amounts, settle_prepaid

CODES = ("A", "B", "R")
cents = st.integers(min_value=-5000, max_value=5000).map(lambda c: Decimal(c) / 100)
# (kind of step, account index, amounts, build the view at once)
step = st.one_of(
    st.tuples(st.just("apply"), st.integers(0, 2), cents, cents, st.booleans()),
    st.tuples(st.just("confirm"), st.integers(0, 2), st.just(Decimal(0)),
              st.just(Decimal(0)), st.booleans()),
    st.tuples(st.just("read"), st.integers(0, 2), st.just(Decimal(0)),
              st.just(Decimal(0)), st.booleans()),
)


def account(code: str, kind: AccountKind, balance: Decimal) -> Account:
    return Account(code, "p", "EUR", kind, balance=balance,
                   credit_limit=Decimal("50") if kind is AccountKind.POSTPAID else Decimal(0),
                   day_key="2026-11-30")


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=60), st.sampled_from(list(AccountKind)))
def test_views_equal_the_store_plus_pending(steps: list[tuple[str, int, Decimal, Decimal,
                                                             bool]],
                                            kind: AccountKind) -> None:
    now = 1_796_000_000_000  # 2026-11-30
    store = {c: account(c, kind, Decimal("100")) for c in CODES}
    book = AccountBook()
    book.load(store.values(), {})
    pending: list[tuple[int, str, Effect]] = []
    seq = 0
    for what, i, bal, held, at_once in steps:
        code = CODES[i]
        if what == "apply":
            seq += 1
            effect = Effect(bal, held)
            got = book.apply(seq, code, effect, view_after=at_once)
            pending.append((seq, code, effect))
            if at_once:
                assert got is not None and got.balance == expected(store, pending, code)
            else:
                assert got is None
        elif what == "confirm" and pending:  # the store commits the oldest commands
            n = 1 + i
            done, pending = pending[:n], pending[n:]
            for _s, c, e in done:
                a = store[c]
                store[c] = evolve(a, {"balance": a.balance + e.balance,
                                      "held": a.held + e.held})
            book.committed([(c, s) for s, c, _e in done],
                           {c: store[c] for _s, c, _e in done})
        view = book.get(code, now)
        assert view is not None
        assert view.balance == expected(store, pending, code)
        assert view.held == store[code].held + sum(
            (e.held for _s, c, e in pending if c == code), Decimal(0))
        assert book.available(code, now) == view.available()
        if kind is AccountKind.PREPAID:
            assert book.prepaid_balance(code) == view.balance
        else:
            assert book.prepaid_balance(code) is None
        peeked = book.peek(code)
        assert peeked is not None and peeked.code == code and not peeked.suspended


def expected(store: dict[str, Account], pending: list[tuple[int, str, Effect]],
             code: str) -> Decimal:
    return store[code].balance + sum((e.balance for _s, c, e in pending if c == code),
                                     Decimal(0))


def test_a_suspension_not_confirmed_yet_shows_through_peek() -> None:
    book = AccountBook()
    book.load([account("R", AccountKind.POSTPAID, Decimal("10"))], {})
    book.apply(1, "R", Effect(suspend_reason="daily cap 5 reached"), view_after=False)
    peeked = book.peek("R")
    assert peeked is not None and peeked.suspended
    assert peeked.suspend_reason == "daily cap 5 reached"


@settings(max_examples=500, deadline=None)
@given(cents, cents.map(abs), cents.map(abs), cents.map(abs))
def test_prepaid_settlement_is_the_one_rule(balance: Decimal, held: Decimal, cost: Decimal,
                                            credit: Decimal) -> None:
    acc = account("A", AccountKind.PREPAID, balance)
    assert settle_prepaid(balance, held, cost, credit) == settle_amounts(acc, held, cost,
                                                                         credit)
    got = settle_prepaid(balance, held, cost, credit)
    assert got.charged + got.written_off == cost
    after = balance + got.effect.balance
    if balance + held >= 0:  # never below zero: what it cannot cover is written off
        assert after >= 0
    assert got.credited <= got.charged
