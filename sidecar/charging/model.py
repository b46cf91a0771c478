"""What the charging core talks about: accounts, live calls, CDRs, decisions."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple

from ..money import ZERO, fmt
from .limits import NO_LIMITS, Limits


class AccountKind(StrEnum):
    PREPAID = "prepaid"
    POSTPAID = "postpaid"


@dataclass(frozen=True)
class Account:
    """A billing account as the charging core sees it (a snapshot from the store)."""

    code: str
    plan: str
    currency: str
    kind: AccountKind
    balance: Decimal = ZERO  # sum of the ledger: open reservations are already deducted
    held: Decimal = ZERO  # sum of open reservations
    credit_limit: Decimal = ZERO  # postpaid: how far below zero the balance may go
    daily_cap: Decimal | None = None
    monthly_cap: Decimal | None = None
    day_spend: Decimal = ZERO  # charged today (UTC)
    month_spend: Decimal = ZERO
    day_key: str = ""  # the UTC day (YYYY-MM-DD) day_spend belongs to; month = its [:7]
    chunk_seconds: int | None = None  # overrides the plan's chunk
    max_call_seconds: int = 14_400
    low_balance: Decimal | None = None
    recharge_below: Decimal | None = None
    recharge_amount: Decimal | None = None
    suspended: bool = False
    suspend_reason: str = ""
    name: str = ""
    blocked: str = ""  # why new calls are refused (a fraud rule), "" when they are not
    parent: str | None = None  # the account above this one (limits are inherited)
    limits: Limits = NO_LIMITS  # this account's own limits (see charging/limits.py)
    #: A reseller: the calls of the accounts below it are charged to it too, at its own
    #: plan's price (``charging/tiers.py``).
    reseller: bool = False

    def to_dict(self) -> dict[str, object]:
        """The account for JSON (CLI ``--json`` and the HTTP API): money as strings."""
        def opt(v: Decimal | None) -> str | None:
            return None if v is None else fmt(v)

        return {
            "code": self.code, "name": self.name, "plan": self.plan, "currency": self.currency,
            "kind": self.kind.value, "balance": fmt(self.balance),
            "held": fmt(self.held), "available": fmt(self.available()),
            "credit_limit": fmt(self.credit_limit),
            "daily_cap": opt(self.daily_cap), "monthly_cap": opt(self.monthly_cap),
            "day_spend": fmt(self.day_spend), "month_spend": fmt(self.month_spend),
            "chunk_seconds": self.chunk_seconds, "max_call_seconds": self.max_call_seconds,
            "low_balance": opt(self.low_balance), "recharge_below": opt(self.recharge_below),
            "recharge_amount": opt(self.recharge_amount), "suspended": self.suspended,
            "suspend_reason": self.suspend_reason, "blocked": self.blocked,
            "parent": self.parent, "limits": self.limits.to_dict(),
            "reseller": self.reseller,
        }

    def available(self) -> Decimal:
        """What new reservations may still take.

        Prepaid: the balance. Postpaid: balance + credit limit, further bounded by what is
        left of the daily and monthly spend caps (open reservations count as spent).
        """
        if self.kind is AccountKind.PREPAID:
            avail = self.balance
            return avail if avail >= ZERO else ZERO  # max(avail, ZERO), without the call
        avail = self.balance + self.credit_limit
        if self.daily_cap is not None:
            avail = min(avail, self.daily_cap - self.day_spend - self.held)
        if self.monthly_cap is not None:
            avail = min(avail, self.monthly_cap - self.month_spend - self.held)
        return max(avail, ZERO)


class Disposition(StrEnum):
    ANSWERED = "answered"
    FAILED = "failed"  # final negative reply, cancelled, never answered
    REJECTED = "rejected"  # refused at authorization (402/403/404)
    NO_MEDIA = "no-media"  # answered but no media: not billed (FAS)


@dataclass
class Cdr:
    """One call detail record: written exactly once per call."""

    call_ref: str
    call_id: str
    disposition: Disposition
    account: str | None = None
    plan: str | None = None
    caller: str = ""
    callee: str = ""
    destination: str = ""
    prefix: str = ""
    origin: str = ""
    rate: Decimal = ZERO
    increment: str = ""
    currency: str = ""
    offered_ms: int | None = None
    ringing_ms: int | None = None  # the first 18x
    answered_ms: int | None = None  # the 200 OK
    billable_ms: int | None = None  # billing start: answer confirmed by media
    media_ms: int | None = None  # the callee's first media after the 200 OK
    ended_ms: int | None = None
    duration_ms: int = 0  # billable duration
    billed_seconds: int = 0
    usage: Decimal = ZERO
    connection_fee: Decimal = ZERO
    surcharge: Decimal = ZERO
    minimum_uplift: Decimal = ZERO
    cost: Decimal = ZERO  # the rated price
    charged: Decimal = ZERO  # what the ledger took
    written_off: Decimal = ZERO  # rated but not collectable (prepaid credit ran out)
    credited: Decimal = ZERO  # given back (FAS)
    sip_code: int | None = None
    ended_by: str = ""
    end_reason: str = ""
    fas_verdict: str = ""
    fas_reasons: str = ""
    route: str = ""
    media: str = ""  # media supervision evidence (JSON), "" when not supervised
    #: 200 OK -> end, the signalled duration of an answered call, whatever was billed (a
    #: no-media call too); None when not answered. ``duration_ms`` is the billable part.
    signalled_ms: int | None = None
    #: Least-cost routing (None: the call was not routed to a carrier by the sidecar):
    #: what the carrier that took it (``route``) charges for it, on its buy deck from its
    #: 200 OK to the end (0 for a call it did not answer), and ``cost - credited -
    #: buy_cost``, what the call leaves (negative: a loss).
    buy_cost: Decimal | None = None
    margin: Decimal | None = None
    #: A call rated on a deck in another currency than the account's: the deck's currency,
    #: the price in it (``cost``, ``rate`` and the other amounts are in the account's
    #: currency, ``currency``) and the exchange rate used (account currency per deck
    #: currency, exact). "" / None for a call rated in the account's own currency.
    deck_currency: str = ""
    deck_cost: Decimal | None = None
    fx_rate: str | None = None
    #: A call that drew on a free-minute bundle: its name, the start of the period (UTC
    #: ms) and how many of ``billed_seconds`` came from it (the rest were paid:
    #: ``rating.bundles`` has the rule). A FAS-credited call gives its bundle seconds
    #: back (0 here) as it gives its money back.
    bundle: str = ""
    bundle_period: int | None = None
    bundle_seconds: int = 0


@dataclass(frozen=True)
class MediaOutcome:
    """What media supervision decided about an answered call, for settling it.

    ``billable_ms`` None: no callee media, the call is not billed. ``credit``: the answer
    was false (ringback, silence): the call is rated and charged, and the charge is
    credited back with ``reasons`` on the CDR and the ledger."""

    billable_ms: int | None
    verdict: str = ""
    reasons: str = ""
    credit: bool = False
    media_ms: int | None = None
    evidence: str = ""


@dataclass(frozen=True)
class AuthDecision:
    """The answer to an INVITE: allow for at most ``max_seconds``, or reject."""

    allow: bool
    code: int = 200
    reason: str = ""
    max_seconds: int = 0
    account: str | None = None
    destination: str = ""
    prefix: str = ""
    phrase: str = ""  # the SIP reason phrase of a refusal ("" = the code's usual one)
    limit: str = ""  # the usage limit or fraud state that refused it (a counter name)
    #: Least-cost routing: the carriers to try, in order (``sidecar.routing.Route``);
    #: empty when the sidecar does not route (Kamailio sends the call where it is set to).
    routes: tuple[Any, ...] = ()


# Actions the core asks its edges to carry out.


@dataclass(frozen=True)
class EndCall:
    """End this dialog now (credit is spent, or nothing could be reserved)."""

    call_ref: str
    reason: str
    at_ms: int


@dataclass(frozen=True)
class Alert:
    """Something an operator is told about (logged, and sent to the webhook)."""

    kind: str  # low_balance, budget, suspended, recharge
    account: str
    message: str
    at_ms: int
    data: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Recharge:
    """Top this account up through the configured payment command or webhook."""

    account: str
    amount: Decimal
    at_ms: int


@dataclass(frozen=True)
class CdrWritten:
    """A call was settled and its CDR stored (for logs and edges that forward CDRs)."""

    cdr: Cdr


Action = EndCall | Alert | Recharge | CdrWritten


class Settlement(NamedTuple):
    """What settling a call did to the account (a named tuple: one per call, built in the
    store's writer thread; ``commands.py`` says why)."""

    charged: Decimal
    written_off: Decimal
    duplicate: bool
    before: Account | None
    after: Account | None
    suspended_now: bool = False
