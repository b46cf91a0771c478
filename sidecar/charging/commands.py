"""What the charging core asks of its store, and what comes back (sans-IO).

The core decides from the state it holds (:class:`~sidecar.charging.book.AccountBook`)
and emits commands, each with a sequence number. A store edge applies them in order,
many to a transaction (group commit), and answers with a :class:`BatchResult`: one
:class:`Outcome` per command plus the touched accounts as they stand after the commit.
The store applies the same rules (``settle.py``) against its own state, so it stays the
authority: a reservation the store cannot cover in full comes back smaller, and the core
shortens the call.

The commands that every call sends (:class:`Reserve`, :class:`Settle`) and the outcomes
that come back are named tuples: immutable like frozen dataclasses, and several times
cheaper to build (a frozen dataclass sets each field through ``object.__setattr__``), which
counts at thousands of them per second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

from ..money import ZERO
from ..rating.deck import RateLine
from .model import Account, Cdr, Settlement
from .settle import Fit

#: A bundle's usage in one period: (account, bundle name, period start in UTC ms).
UsageKey = tuple[str, str, int]


#: The price of the seconds from a call's paid time so far to ``d`` (one tier).
CostTo = Callable[[int], Decimal]


class BundleDraw(NamedTuple):
    """The bundle part of a reservation: take ``seconds`` from the bundle's usage row
    ``key`` for the call. If the store has fewer left, it takes what it has and asks
    ``redo(taken)`` for the money part instead: (amount, fit, cost_to) for that many
    bundle seconds."""

    key: UsageKey
    seconds: int
    redo: Callable[[int], tuple[Decimal, Fit, CostTo]]


class ChainPart(NamedTuple):
    """A reseller's part of a reservation (``charging/tiers.py``): ``amount`` for the
    same seconds as the call's account, on its rate ``line`` from the call's paid time
    so far (priced ``base`` on it)."""

    account: str
    amount: Decimal
    line: RateLine
    base: Decimal


class TierPrice(NamedTuple):
    """A settled call's price at one reseller above its account (``tier`` 1: the
    nearest), on that reseller's plan; ``margin``: what the tier below paid less this
    (None across currencies). The store charges it and writes the CDR's ``tiers``."""

    tier: int
    account: str
    plan: str
    currency: str
    destination: str
    prefix: str
    rate: Decimal
    increment: str
    billed_seconds: int
    usage: Decimal
    connection_fee: Decimal
    surcharge: Decimal
    minimum_uplift: Decimal
    cost: Decimal
    credited: Decimal
    margin: Decimal | None


class Reserve(NamedTuple):
    """Hold ``amount`` on ``account`` for a call, bringing it to ``seconds`` paid; if the
    store has less available than the core thought, it grants ``fit(available)``. With
    ``bundle``, bundle seconds are drawn first (``BundleDraw``); ``seconds`` counts both."""

    seq: int
    account: str
    call_ref: str
    amount: Decimal
    seconds: int
    paid_before: int
    fit: Fit
    live: dict[str, object]  # the live call's row: number, destination, prefix, rate, ...
    now_ms: int
    bundle: BundleDraw | None = None
    #: Resellers above the account, nearest first: every tier covers the same seconds
    #: (``tiers.grant_chain``); ``cost_to``: the account's own price of ``d`` seconds.
    chain: tuple[ChainPart, ...] = ()
    cost_to: CostTo | None = None
    #: What this chunk drew from this node's floats on the resellers above the account
    #: (``FloatHold``), nearest first: (reseller, amount). The core decided it from the
    #: floats it holds; the store records it on the live call, for the settlement.
    float_draws: tuple[tuple[str, Decimal], ...] = ()


class Settle(NamedTuple):
    """Write the CDR once; for a billed call release its holds and charge its cost."""

    seq: int
    cdr: Cdr
    now_ms: int
    #: Another node's call whose lease ran out: settled only if its reservation is still
    #: there with a lease that ended before this time (``store.writer``).
    lease_ended_by: int | None = None
    #: A call on a bundle: rates the CDR again for the bundle seconds the store holds for
    #: it, when the core counted more (a reservation it had not heard back from yet got
    #: fewer than it asked for).
    reprice: Callable[[int], None] | None = None
    #: A call below resellers: its price at each (the store charges them).
    tiers: tuple[TierPrice, ...] = ()


class FloatHold(NamedTuple):
    """Move credit between a reseller's balance and a node's float on it
    (``reseller_floats``): ``amount`` > 0 holds up to that much (what the reseller has
    available, at most: the outcome's ``granted``), < 0 gives up to that much back (the
    outcome's ``granted`` is minus what was given back). ``node``: whose float (None: the
    node applying it); another node's only when its lease ran out and no call of it is
    left (``store.writer``)."""

    seq: int
    account: str
    amount: Decimal
    now_ms: int
    node: str | None = None


@dataclass(frozen=True, slots=True)
class Topup:
    """A payment (an automatic recharge) credited to the account; ``key`` makes it
    apply once, however often it is replayed."""

    seq: int
    account: str
    amount: Decimal
    note: str
    key: str
    now_ms: int


@dataclass(frozen=True, slots=True)
class Flag:
    """A fraud rule tripped on ``account``: store the event with its evidence and apply
    its action (``alert``: nothing more; ``block``: new calls refused; ``suspend``: the
    account suspended) until an operator lifts it. ``key`` makes it apply once."""

    seq: int
    account: str
    rule: str
    action: str
    reason: str  # what the account's block or suspension says
    evidence: str  # JSON: what the rule saw
    key: str
    now_ms: int


@dataclass(frozen=True, slots=True)
class CarrierHealth:
    """Route health pulled a carrier out of the route lists, or brought it back: store the
    event with its evidence and apply it to the carrier (``store.carriers``), once per
    carrier, kind and time (a replayed journal changes nothing more)."""

    seq: int
    carrier: str
    kind: str  # pulled, restored
    actor: str  # health, cool-down, operator
    reason: str
    evidence: str  # JSON: the window's figures and the threshold crossed
    until_ms: int | None  # pulled: when its cool-down ends
    now_ms: int
    account: str = ""  # no account's money moves


StoreCommand = Reserve | Settle | Topup | Flag | CarrierHealth | FloatHold


class Outcome(NamedTuple):
    """The store's answer to one command. ``ok`` False: it was not applied (the store
    failed); ``journaled``: it will be, from the local journal, once the store is back."""

    seq: int
    ok: bool
    granted: Decimal = ZERO  # Reserve: what was held
    seconds: int = 0  # Reserve: the paid seconds it brings the call to
    settlement: Settlement | None = None  # Settle, Topup
    journaled: bool = False
    settled_elsewhere: bool = False  # Reserve: the call has its CDR already (another node)
    error: str = ""
    bundle_seconds: int = 0  # Reserve: the bundle seconds taken (BundleDraw)
    chain_granted: tuple[Decimal, ...] = ()  # Reserve: what each reseller's part held


@dataclass(frozen=True)
class BatchResult:
    """One transaction's worth of outcomes, in command order, and each touched account
    as the store holds it after the commit."""

    outcomes: list[Outcome]
    accounts: dict[str, Account] = field(default_factory=dict)
    error: str = ""  # the store's failure, when the batch could not be committed
    #: Bundle usage rows the batch touched: seconds used + held after the commit.
    bundles: dict[UsageKey, int] = field(default_factory=dict)
