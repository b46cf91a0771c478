"""Resellers (pure): a call is rated at every tier of its account's chain, and every tier
pays its own price, reserved and charged together.

An account marked ``reseller`` is charged for the calls of every account below it, at
its own plan's price for the call; its customers pay theirs. The chain of a call is its
account, then each reseller above it, nearest first (at most four tiers in all, as the
account tree). A reservation covers the same seconds on every tier: when one tier
cannot pay for the chunk, every tier reserves for the seconds that tier can pay for, so a
reseller out of credit stops its customers' calls as a customer out of credit stops its
own. The core decides from its view; the store applies :func:`grant_chain` again to the
accounts it holds locked, in one transaction.

Floats: that path costs a hold per call and tier, and the store work of each. A node
instead holds a float of each busy reseller's credit (``FloatHold``: moved from its
balance to its holds, as a call's reservation is) and draws its customers' chunks from it
in memory; a chunk's draws ride on the customer's own reservation (recorded on the live
call), and the settlement charges each tier's price out of the call's draws (what is left
of them goes back to the reseller's balance). A chunk that some float cannot cover in
full takes the per-call path; a float that cannot be topped up (the reseller has less
than twice a top-up available) gives its remainder back first, so that the reseller's
last credit is where every call and node can reserve it. Nothing else changes: every
tier covers the same seconds, a reseller's credit is never spent twice, and a reseller
out of credit still stops its customers' calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from ..money import ZERO
from ..rating.deck import RateLine
from ..rating.engine import affordable_seconds, price
from .model import Account
from .settle import Fit, grant

#: The price of the seconds from the call's paid time so far to ``d`` (one tier).
CostTo = Callable[[int], Decimal]


@dataclass(slots=True)
class Upline:
    """A reseller above a call's account: its rate line for the call (in its own
    currency) and what is held on it for the call."""

    account: str
    plan: str
    line: RateLine
    reserved: Decimal = ZERO
    fx_rate: Decimal | None = None  # its plan rates in another currency than it pays in
    drawn: Decimal = ZERO  # what the call drew from this node's float on it


@dataclass(slots=True)
class Float:
    """This node's float on a reseller, as the core sees it: ``free``, what it holds that
    no live call has drawn (the store holds ``free`` + the live calls' draws); ``asking``:
    top-ups on their way to the store (counted in ``free`` already); ``used_ms``: its last draw."""

    free: Decimal = ZERO
    asking: int = 0
    used_ms: int = 0
    #: What its calls' chunks asked of it since ``since_ms`` (the last top-up asked):
    #: how fast it drains.
    drawn: Decimal = ZERO
    since_ms: int = 0
    low: Decimal = ZERO  # below this, it asks for more (set with each top-up)


def grant_chain(leaf: tuple[Account | None, Decimal, Fit, CostTo],
                parts: Sequence[tuple[Decimal | None, Decimal, RateLine, Decimal]],
                target: int, paid: int) -> tuple[int, list[Decimal]]:
    """What a chunk reserves on every tier of a chain: (the paid seconds it brings the
    call to, each tier's amount, the account's first). ``leaf``: the call's account, the
    amount it wants for ``target`` seconds, its fit (the most it can pay for with what is
    available) and its price of ``d`` seconds; ``parts``: per reseller what its account
    has available (None: unknown), the amount it wants, its rate line and the price on
    it of the ``paid`` seconds. Every
    tier covers the same seconds: the fewest any tier can pay for. An unknown account
    stops the chain (nothing is reserved)."""
    n = 1 + len(parts)
    acc, want, fit, cost_to = leaf
    if acc is None:
        return paid, [ZERO] * n
    seconds = grant(acc, want, target, fit, paid)[1]
    for avail, want_u, line, _base in parts:
        if avail is None:
            return paid, [ZERO] * n
        if want_u > avail:
            s = affordable_seconds(line, avail, paid)
            if s < seconds:
                seconds = s
    if seconds <= paid:
        return paid, [ZERO] * n
    if seconds >= target:
        return target, [want, *(p[1] for p in parts)]
    return seconds, [cost_to(seconds), *(price(line, seconds).cost - base
                                         for _u, _w, line, base in parts)]
