"""The arithmetic of money moving on an account (pure): one rule for reserving and one for
settling, used by the charging core to decide from the state it holds and by the store
to apply the same decision atomically against the state it holds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import NamedTuple

from ..money import ZERO
from .model import Account, AccountKind


def day_key(now_ms: int) -> str:
    """The UTC day of a timestamp, ``YYYY-MM-DD`` (spend caps restart when it changes)."""
    return _day_key(now_ms // 86_400_000)


@functools.lru_cache(maxsize=64)
def _day_key(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")


def rolled(acc: Account, now_ms: int) -> Account:
    """The account as of ``now_ms``: daily (monthly) spend restarts on a new UTC day (month)."""
    today = _day_key(now_ms // 86_400_000)  # day_key(now_ms), one call less: every command
    if acc.day_key == today:
        return acc
    month_same = acc.day_key[:7] == today[:7]
    return evolve(acc, {"day_key": today, "day_spend": ZERO,
                        "month_spend": acc.month_spend if month_same else ZERO})


class Effect(NamedTuple):
    """What one command does to an account: changes of balance, holds and spend, and a
    suspension it causes (a postpaid cap reached). A named tuple: the core and the store
    make several per call (``commands.py`` says why not a frozen dataclass)."""

    balance: Decimal = ZERO
    held: Decimal = ZERO
    spend: Decimal = ZERO
    suspend_reason: str = ""
    block_reason: str = ""  # a fraud rule blocks new calls

    def apply(self, acc: Account) -> Account:
        # evolve(acc, changes), with the changes written straight into the new state
        state = acc.__dict__.copy()
        state["balance"] = acc.balance + self.balance
        state["held"] = acc.held + self.held
        if self.spend:
            state["day_spend"] = acc.day_spend + self.spend
            state["month_spend"] = acc.month_spend + self.spend
        susp = self.suspend_reason
        if susp and not acc.suspended:
            state["suspended"] = True
            state["suspend_reason"] = susp
        if self.block_reason and not acc.blocked:
            state["blocked"] = self.block_reason
        new = _new(Account)
        _setattr(new, "__dict__", state)
        return new

    def plus(self, other: Effect) -> Effect:
        """Both effects, one after the other."""
        return Effect(self.balance + other.balance, self.held + other.held,
                      self.spend + other.spend, other.suspend_reason or self.suspend_reason,
                      other.block_reason or self.block_reason)

    def minus(self, other: Effect) -> Effect:
        """This sum of effects without ``other`` (one of them, now confirmed)."""
        return Effect(self.balance - other.balance, self.held - other.held,
                      self.spend - other.spend, self.suspend_reason, self.block_reason)


NO_EFFECT = Effect()
_PREPAID = AccountKind.PREPAID


def evolve(acc: Account, changes: dict[str, object]) -> Account:
    """A copy of ``acc`` with ``changes``: ``dataclasses.replace`` without its cost (the
    charging core and the store do this for every command). The new instance dictionary
    is built in one step and set through ``object.__setattr__`` (the frozen class refuses
    assignments of its own)."""
    new = _new(Account)
    _setattr(new, "__dict__", acc.__dict__ | changes)
    return new


_new = object.__new__
_setattr = object.__setattr__


Fit = Callable[[Decimal], tuple[Decimal, int]]


def grant(acc: Account, want: Decimal, want_seconds: int, fit: Fit, paid_before: int
          ) -> tuple[Decimal, int]:
    """What a reservation takes from ``acc``: ``want`` (bringing the call to
    ``want_seconds`` paid) when the account can cover it, else ``fit(available)``: the
    most worth reserving. Never more than is available."""
    avail = acc.available()
    granted, seconds = (want, want_seconds) if want <= avail else fit(avail)
    if granted > avail or granted < 0:
        return ZERO, paid_before
    return granted, seconds


def reserve_effect(amount: Decimal) -> Effect:
    return Effect(-amount, amount)  # (balance, held): positional, the cheaper call


class SettleAmounts(NamedTuple):
    """Settling one call: its holds released, its cost charged (what the account can
    cover; the rest written off), and a FAS credit given back."""

    charged: Decimal
    written_off: Decimal
    credited: Decimal
    effect: Effect


def settle_amounts(acc: Account, held: Decimal, cost: Decimal, credit: Decimal
                   ) -> SettleAmounts:
    """Release ``held`` and charge ``cost`` on ``acc`` (as of the settlement's day).

    A prepaid account is never taken below zero; a postpaid one not below its credit
    limit: what it cannot cover is written off. ``credit`` (a false answer) gives back
    at most what was charged. A postpaid account whose daily or monthly spend reaches
    its cap is suspended."""
    if acc.kind is _PREPAID:
        return settle_prepaid(acc.balance, held, cost, credit)
    balance = acc.balance + held
    floor = -acc.credit_limit
    # min() and max() spelled out (each keeps its first argument on a tie, as they do)
    room = balance - floor
    room = room if room >= ZERO else ZERO  # max(room, ZERO)
    collectable = room if room < cost else cost  # min(cost, room)
    credited = collectable if collectable < credit else credit  # min(credit, collectable)
    spend = collectable - credited
    reason = ""
    if acc.kind is AccountKind.POSTPAID and not acc.suspended:
        if acc.daily_cap is not None and acc.day_spend + spend >= acc.daily_cap:
            reason = f"daily cap {acc.daily_cap} reached"
        elif acc.monthly_cap is not None and acc.month_spend + spend >= acc.monthly_cap:
            reason = f"monthly cap {acc.monthly_cap} reached"
    return SettleAmounts(collectable, cost - collectable, credited,
                         Effect(held - collectable + credited, -held, spend, reason))


def settle_prepaid(balance: Decimal, held: Decimal, cost: Decimal, credit: Decimal
                   ) -> SettleAmounts:
    """:func:`settle_amounts` of a prepaid account with ``balance`` (all it depends on):
    never below zero, what the balance cannot cover written off."""
    room = balance + held
    room = room if room >= ZERO else ZERO  # max(room, ZERO)
    collectable = room if room < cost else cost  # min(cost, room)
    credited = collectable if collectable < credit else credit  # min(credit, collectable)
    return SettleAmounts(collectable, cost - collectable, credited,
                         Effect(held - collectable + credited, -held,
                                collectable - credited))
