"""The API's request and response models, declared once (pydantic).

Every response is built by validating what the store returns against its model and
serialising the model, so what is sent is what the OpenAPI document
(:mod:`sidecar.api.openapi`, generated from these models) says, field for field:

* money is a JSON string in plain decimal notation, formatted by one function
  (:func:`sidecar.money.fmt`): no exponent, trailing zeros dropped (``0``, ``0.6``,
  ``998.93925``), so equal amounts are equal strings;
* a time is ISO 8601 UTC with milliseconds and ``Z`` (``2026-11-21T12:00:00.000Z``),
  beside its Unix milliseconds where the store keeps them;
* every field is always present (``null`` where there is no value) and declared
  required; a response with a field its model does not declare is an error, not a
  silent extra. The one exception is a limit set, which names only the keys set.

Request bodies are validated against their model before anything is read or written,
so a request the document says is malformed is refused (400) and one it allows is
handed to the same store functions the command line uses.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    create_model,
)

from ..charging.limits import ACTIONS, describe
from ..invoices.model import Invoice
from ..invoices.records import iso
from ..money import CURRENCY_MINOR_UNITS, fmt

# --- the scalar types ------------------------------------------------------------------

#: Money as the API writes it: plain decimal, no exponent, no trailing zeros.
MONEY_PATTERN = r"^-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$"


Money = Annotated[
    Decimal, Field(allow_inf_nan=False), PlainSerializer(fmt, return_type=str),
    WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN,
                    "description": "An exact decimal amount as a string: plain digits, no "
                                   "exponent, trailing zeros dropped.",
                    "examples": ["0.0095", "12.5", "0"]})]

#: Times as the API writes them.
TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"


def _time(value: object) -> str:
    """Any time the store hands out (Unix ms, a datetime, ISO text) as ISO 8601 UTC with
    milliseconds and ``Z``: one format for every time in every response."""
    if isinstance(value, str) and len(value) == 24 and value[23] == "Z" and \
            value[19] == "." and value[10] == "T":
        return value  # the store's own format already (records.iso)
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return iso(int(dt.timestamp() * 1000))
    if isinstance(value, int) and not isinstance(value, bool):
        return iso(value)
    if isinstance(value, str):
        return _time(datetime.fromisoformat(value.replace("Z", "+00:00")))
    raise ValueError(f"not a time: {value!r}")


Time = Annotated[str, BeforeValidator(_time), WithJsonSchema({
    "type": "string", "format": "date-time", "pattern": TIME_PATTERN,
    "description": "ISO 8601 UTC with milliseconds.",
    "examples": ["2026-11-21T12:00:00.000Z"]})]

Ms = Annotated[int, Field(description="Unix time in milliseconds.")]


def _json_value(value: object) -> object:
    """Evidence stored as JSON text, as its JSON value (text that is not JSON: as is)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


Evidence = Annotated[Any, BeforeValidator(_json_value)]


def _plain_text(value: object) -> object:
    """A figure printed as text (a reconciliation check): an amount in exponent form
    (``0E-8``) in plain digits, like every other amount."""
    if isinstance(value, str) and "E" in value.upper():
        try:
            d = Decimal(value)
        except InvalidOperation:
            return value
        return fmt(d) if d.is_finite() else value
    return value


Figure = Annotated[str, BeforeValidator(_plain_text)]

# --- responses -------------------------------------------------------------------------


class Out(BaseModel):
    """A response body: every field required, nothing undeclared."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class Error(Out):
    """What a refused request gets: a message naming what is wrong and where, and (a
    refused deck) every problem found, one per line of the deck, as the CLI prints them."""

    error: str
    errors: list[str]


class Health(Out):
    status: Literal["ok"]


def _whole(value: object) -> object:
    """A JSON number with no fraction (``30.0``) is the integer JSON Schema says it is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def whole(lo: int, hi: int) -> Any:
    """An integer in ``lo..hi`` in a request body (strict: never a string, never a
    boolean)."""
    return Annotated[int, Field(ge=lo, le=hi), BeforeValidator(_whole)]


def _limit_type(kind: str) -> Any:
    if kind == "int":
        return Annotated[int, Field(ge=1, le=1_000_000_000)] | None
    if kind == "money":
        return Money | None
    if kind == "prefixes":
        return list[str] | None
    return Literal["alert", "block", "suspend"] | None


def _limit_fields(request: bool) -> dict[str, Any]:
    from ..charging.limits import _KEYS

    out: dict[str, Any] = {}
    for key, (kind, _text) in _KEYS.items():
        tp = _limit_type(kind)
        if request:
            tp = {"money": MoneyIn | None, "prefixes": list[Prefix] | None,
                  "int": whole(1, 1_000_000_000) | None
                  }.get(kind, tp)
        out[key] = (tp, Field(default=None, description=describe(key)))
    return out


#: A destination prefix in a limit (``+`` allowed, digits only).
Prefix = Annotated[str, Field(pattern=r"^\+?[0-9]{1,15}$")]
#: An amount in a request: a string of plain decimal digits, at most 8 places.
MoneyIn = Annotated[str, Field(pattern=r"^[0-9]{1,12}(\.[0-9]{1,8})?$",
                               examples=["10", "0.25"])]

class _LimitSet(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _LimitsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


LimitSet = create_model(
    "LimitSet", __base__=_LimitSet,
    __doc__="Usage and fraud limits: only the keys set. null = explicitly no limit (stops "
            "inheritance); a key absent is inherited (the account, its parents, its "
            "plan). Money as strings; allow/deny as lists of digit prefixes; *_action one "
            "of alert, block, suspend.",
    **_limit_fields(request=False))

LimitsBody = create_model(
    "LimitsBody", __base__=_LimitsIn,
    __doc__="An account's own limits, replacing what it had: KEY: value, or null for "
            "explicitly no limit; a key left out is inherited (its parents, its plan).",
    **_limit_fields(request=True))


class BundleStatus(Out):
    """A free-minute bundle of an account in one period."""

    name: str
    owner: Literal["account", "plan"] = Field(description="The account's own bundle, or "
                                                          "its plan's.")
    seconds: int = Field(description="Seconds per period.")
    period: Literal["month", "day"]
    anchor_day: int = Field(description="A monthly period starts on this day (UTC).")
    period_start: Time
    period_end: Time
    destinations: list[str] = Field(description="Breakout names it covers.")
    prefixes: list[str] = Field(description="Number prefixes it covers (none of either: "
                                            "every destination).")
    used_seconds: int = Field(description="Used by settled calls in the period.")
    held_seconds: int = Field(description="Held by calls running now.")
    left_seconds: int


class Bundles(Out):
    """An account's bundles in the period holding ``at``, in the order calls draw on
    them."""

    account: str
    at: Time
    bundles: list[BundleStatus]


class Limits(Out):
    """The limits of an account: its own set, what applies, and where each key comes from."""

    account: str
    own: LimitSet  # type: ignore[valid-type]
    effective: LimitSet  # type: ignore[valid-type]
    source: dict[str, str] = Field(description='key -> "account CODE" or "plan NAME".')


class Rating(Out):
    """How the call was priced (money scale: 8 places)."""

    rate: Money
    increment: str
    currency: str
    usage: Money
    connection_fee: Money
    surcharge: Money
    minimum_uplift: Money
    cost: Money


class Cdr(Out):
    """A call detail record, written once per call; times as ISO 8601 and Unix ms."""

    id: int
    call_ref: str
    call_id: str
    account: str | None
    plan: str | None
    caller: str = Field(description="As received: untrusted text.")
    callee: str
    destination: str
    prefix: str
    origin: str
    route: str
    node: str = Field(description="The sidecar node whose Kamailio carried the call "
                                  "(\"\" before nodes were recorded).")
    disposition: Literal["answered", "failed", "rejected", "no-media"]
    sip_code: int | None
    ended_by: str
    end_reason: str
    signalled_ms: int | None = Field(description="200 OK to the end: the duration the "
                                                 "signalling shows, whatever was billed; "
                                                 "null if unanswered.")
    duration_ms: int = Field(description="Billable duration.")
    billed_seconds: int
    charged: Money
    written_off: Money
    credited: Money
    fas_verdict: str
    fas_reasons: str
    buy_cost: Money | None = Field(description="Least-cost routing: what the carrier that "
                                               "took the call charges for it (its buy deck, "
                                               "from its 200 OK to the end); null when the "
                                               "sidecar did not route the call.")
    margin: Money | None = Field(description="The rated price less any credit less "
                                             "buy_cost (negative: a loss); null when the "
                                             "sidecar did not route the call.")
    deck_currency: str | None = Field(description="A call of an account paying in another "
                                                  "currency than its plan rates in: the "
                                                  "plan's currency; null otherwise.")
    deck_cost: Money | None = Field(description="... the call's price in that currency "
                                                "(the CDR's amounts are in the account's).")
    fx_rate: str | None = Field(description="... the exchange rate used: account currency "
                                            "per plan currency, exact.")
    bundle: str | None = Field(description="The free-minute bundle the call drew on; null "
                                           "when none.")
    bundle_period: Time | None = Field(description="... the start of that bundle's period.")
    bundle_seconds: int = Field(description="Of billed_seconds, those the bundle gave (the "
                                            "rest were paid).")
    tiers: list[dict[str, object]] | None = Field(
        description="A call of an account below resellers: its price at each reseller "
                    "above, nearest first (account, plan, currency, rate, billed_seconds, "
                    "cost, charged, written_off, credited, margin: what the tier below "
                    "paid less this price); null when none.")
    media_evidence: Evidence = Field(description="What media supervision saw (a JSON "
                                                 "value); null when the call had none.")
    offered_ms: Ms | None
    offered: Time | None
    ringing_ms: Ms | None
    ringing: Time | None
    answered_ms: Ms | None
    answered: Time | None
    billable_ms: Ms | None
    billable: Time | None
    media_ms: Ms | None
    media: Time | None = Field(description="When media was first seen.")
    ended_ms: Ms | None
    ended: Time | None
    rating: Rating


class CdrPage(Out):
    cdrs: list[Cdr]
    next_after_id: int | None = Field(description="after_id for the next page; null on "
                                                  "the last.")


class Plan(Out):
    plan: str
    currency: str
    notice_days: int
    versions: int
    lines: int


class Plans(Out):
    plans: list[Plan]


class DeckVersion(Out):
    version: int
    imported: Time
    source: str = Field(description="The deck's file name.")
    sha256: str
    lines: int


class DeckLine(Out):
    destination: str
    prefix: str
    origin: str
    rate: Money
    increment: str
    connection_fee: Money
    minimum_charge: Money
    short_call_seconds: int
    short_call_surcharge: Money
    effective_from: Time
    version: int


class Deck(Out):
    """A plan's settings, its versions, and the lines in effect at ``at`` plus those
    scheduled after it."""

    plan: str
    currency: str
    notice_days: int
    second_rounding: Literal["ceil", "nearest", "floor"]
    chunk_seconds: int
    at: Time
    versions: list[DeckVersion]
    lines: list[DeckLine]


class DeckImport(Out):
    """A deck imported as the plan's next version."""

    plan: str
    version: int
    lines: int
    currency: str
    increases: int
    decreases: int
    new_prefixes: int


class Account(Out):
    code: str
    name: str
    plan: str
    currency: str
    kind: Literal["prepaid", "postpaid"]
    balance: Money
    held: Money = Field(description="Reserved by calls running now.")
    available: Money = Field(description="What new reservations may still take.")
    credit_limit: Money
    daily_cap: Money | None
    monthly_cap: Money | None
    day_spend: Money
    month_spend: Money
    chunk_seconds: int | None = Field(description="Reservation chunk; null: the plan's.")
    max_call_seconds: int
    low_balance: Money | None = Field(description="Alert when the balance falls below it.")
    recharge_below: Money | None
    recharge_amount: Money | None
    suspended: bool
    suspend_reason: str
    blocked: str = Field(description="Why a fraud rule refuses the account's new calls "
                                     "(\"\" when it does not).")
    parent: str | None = Field(description="The account above this one (limits are "
                                           "inherited).")
    limits: LimitSet  # type: ignore[valid-type]
    reseller: bool = Field(description="The calls of the accounts below it are charged to "
                                       "it too, at its own plan's price.")


class Accounts(Out):
    accounts: list[Account]


class Topup(Out):
    """The account after a top-up; ``replayed``: the idempotency key had been used, so
    nothing was credited this time."""

    replayed: bool
    account: Account


class LiveCall(Out):
    call_ref: str
    account: str
    node: str
    number: str
    destination: str
    prefix: str
    rate: Money
    increment: str
    answered: Time
    answered_ms: Ms
    elapsed_ms: int
    cost: Money = Field(description="Cost so far (fees and minimums included).")
    reserved: Money
    paid_seconds: int
    remaining_ms: int = Field(description="Paid time left.")
    bundle: str | None = Field(description="The free-minute bundle the call draws on; null "
                                           "when none.")
    bundle_held: int = Field(description="Bundle seconds held for it (its paid_seconds "
                                         "count them too).")


class LiveCalls(Out):
    calls: list[LiveCall]
    accounts: dict[str, Money] = Field(description="Each account's running total.")


class InvoiceSummary(Out):
    number: str
    kind: Literal["invoice", "credit_note"]
    account: str
    period: str = Field(examples=["2026-11"])
    issued_ms: Ms
    issued: Time
    refers_to: str | None
    currency: str
    net: Money
    tax: Money
    total: Money
    calls: int
    sha256: str


class Invoices(Out):
    invoices: list[InvoiceSummary]


def _mirror(tp: Any, models: dict[type, type[BaseModel]]) -> Any:
    """The response type of a field of the invoice model (frozen dataclasses): Decimal
    as :data:`Money`, a dataclass as a model of its own, a tuple as a list."""
    if tp is Decimal:
        return Money
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if tp not in models:
            hints = typing.get_type_hints(tp)
            fields: dict[str, Any] = {f.name: (_mirror(hints[f.name], models), ...)
                                      for f in dataclasses.fields(tp)}
            name = "InvoiceDocument" if tp is Invoice else f"Invoice{tp.__name__}"
            models[tp] = create_model(name, __base__=Out, __doc__=tp.__doc__, **fields)
        return models[tp]
    if typing.get_origin(tp) is tuple:
        return list[_mirror(typing.get_args(tp)[0], models)]  # type: ignore[misc]
    return tp


#: The frozen invoice or credit note, field for field the invoice model
#: (:class:`sidecar.invoices.model.Invoice`), with money as API money.
InvoiceDocument: type[BaseModel] = _mirror(Invoice, {})


class IssuedInvoice(Out):
    """An issued document exactly as frozen, with the SHA-256 its stored data is checked
    against."""

    sha256: str
    invoice: InvoiceDocument  # type: ignore[valid-type]


class ReconLine(Out):
    kind: str
    label: str
    calls: int
    exact: Money
    rounded: Money
    invoiced: Money | None
    ok: bool


class ReconCheck(Out):
    what: str
    expected: Figure
    actual: Figure
    ok: bool


class Reconciliation(Out):
    number: str | None = Field(description="The issued invoice, or null for a draft.")
    account: str
    period: str
    currency: str
    cdrs: int
    ok: bool
    rounding_difference: Money
    notes: list[str]
    lines: list[ReconLine]
    checks: list[ReconCheck]


class SpendRow(Out):
    key: str
    currency: str
    calls: int
    billed_seconds: int
    exact: Money
    amount: Money
    parent: str | None = Field(description="by=account: the account above it.")


class Spend(Out):
    by: Literal["destination", "day", "account", "customer", "route"]
    rows: list[SpendRow]


class MarginRow(Out):
    key: str = Field(description="The carrier, destination, account, customer or day.")
    currency: str
    calls: int = Field(description="Calls the sidecar routed (answered or not).")
    answered: int
    billed_seconds: int
    sell: Money = Field(description="What customers pay: the rated price less FAS credits.")
    buy: Money = Field(description="What the carriers charge.")
    margin: Money = Field(description="sell - buy (negative: a loss), the CDRs' margins "
                                      "summed exactly.")
    margin_percent: str | None = Field(description="margin / sell in percent, 2 places "
                                                   "half-up; null when sell is 0.")
    losses: int = Field(description="Calls that lost money.")


class Margins(Out):
    by: Literal["carrier", "destination", "account", "customer", "day"]
    rows: list[MarginRow]


class CarrierOut(Out):
    """A carrier calls are routed to (least-cost routing)."""

    name: str
    uri: str = Field(description="Its SIP destination.")
    buy_plan: str = Field(description="Its buy deck (a plan of kind buy).")
    currency: str
    max_calls: int | None = Field(description="Concurrent calls it takes (null: no limit).")
    max_cps: int | None = Field(description="Calls per second it takes (null: no limit).")
    enabled: bool
    disabled_by: str = Field(description="operator or health (route health pulled it); "
                                         "empty when enabled.")
    disabled_reason: str
    disabled_ms: Ms | None
    until_ms: Ms | None = Field(description="Pulled by route health: when its cool-down "
                                            "ends.")


class Carriers(Out):
    carriers: list[CarrierOut]


class RouteStats(Out):
    route: str
    attempts: int
    answered: int
    no_media: int
    asr: str | None = Field(description="answered / attempts (0..1)")
    acd_seconds: str | None = Field(description="mean billable duration of calls "
                                                "answered with media")
    pdd_mean_ms: int | None = Field(description="post-dial delay: first ringing (18x) - "
                                                "offer; null while no attempt rang")
    pdd_p95_ms: int | None
    answer_delay_mean_ms: int | None = Field(description="answer (200 OK) - offer of "
                                                         "answered calls")
    answer_delay_p95_ms: int | None


class Routes(Out):
    routes: list[RouteStats]


class FasRoute(Out):
    route: str
    attempts: int
    answered: int
    fas_calls: dict[str, int] = Field(description="Answered calls per FAS verdict.")
    instant_answers: int
    short_calls: int
    uniform_calls: int
    answer_delay_p10_ms: int | None
    answer_delay_p90_ms: int | None
    judged: bool = Field(description="Enough answered calls to judge.")
    score: int = Field(ge=0, le=100)
    reasons: list[str]


class FasRoutes(Out):
    routes: list[FasRoute]


class FraudEvent(Out):
    id: int
    time: Time
    ts_ms: Ms
    account: str
    rule: str
    action: Literal["alert", "block", "suspend"]
    reason: str
    evidence: Evidence = Field(description="What the rule saw (a JSON value).")
    node: str
    key: str
    open: bool = Field(description="A block or suspension not lifted yet.")
    lifted: Time | None
    lifted_ms: Ms | None
    lifted_by: str
    lift_note: str


class FraudEvents(Out):
    events: list[FraudEvent]


class Lift(Out):
    account: str
    lifted: int = Field(description="Fraud events marked lifted.")
    unblocked: str | None = Field(description="The block lifted.")
    resumed: str | None = Field(description="The fraud rule's suspension resumed.")
    still_suspended: str | None = Field(description="A suspension not by a fraud rule "
                                                    "(kept).")


# --- requests --------------------------------------------------------------------------


class In(BaseModel):
    """A request body: exactly these fields, of exactly these JSON types."""

    model_config = ConfigDict(extra="forbid", strict=True)


Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$",
                            description="1-64 printable characters.")]
Note = Annotated[str, Field(max_length=1000, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]*$")]
Currency = Literal[tuple(sorted(CURRENCY_MINOR_UNITS))]  # type: ignore[valid-type]


class AccountCreate(In):
    """A new account, as ``sidecar account add`` makes it."""

    code: Code
    plan: Code = Field(description="The rate plan it is rated on (its currency is the "
                                   "account's).")
    kind: Literal["prepaid", "postpaid"] = "prepaid"
    name: Note = ""
    balance: MoneyIn | None = Field(default=None, description="Initial top-up.")
    credit_limit: MoneyIn | None = Field(default=None, description="Postpaid: how far "
                                                                   "below zero it may go.")
    daily_cap: MoneyIn | None = Field(default=None, description="Postpaid: spend per UTC "
                                                                "day, then suspended.")
    monthly_cap: MoneyIn | None = None
    chunk_seconds: whole(1, 86_400) | None = Field(default=None,  # type: ignore[valid-type]
                                      description="Reservation chunk (else the plan's).")
    max_call_seconds: whole(1, 604_800) = 14_400  # type: ignore[valid-type]
    low_balance: MoneyIn | None = None
    recharge_below: MoneyIn | None = None
    recharge_amount: MoneyIn | None = None
    address: Note = ""
    tax_number: Note = ""
    tax_rate: Annotated[str, Field(pattern=r"^(0(\.[0-9]{1,8})?|1(\.0{1,8})?)$")] = \
        Field(default="0", description="Tax rate for invoices, 0..1 (0.19).")
    parent: Code | None = Field(default=None, description="Parent account (limits are "
                                                          "inherited from it).")


class TopupBody(In):
    amount: Annotated[str, Field(pattern=r"^[0-9]{1,12}(\.[0-9]{1,8})?$")] = Field(
        description="What is paid in: more than 0.", examples=["50", "12.5"])
    note: Note = Field(default="", description="Payment reference.")


class AdjustmentBody(In):
    amount: Annotated[str, Field(pattern=r"^-?[0-9]{1,12}(\.[0-9]{1,8})?$")] = Field(
        description="Added to the balance; negative to take away (a prepaid balance "
                    "never goes below zero).", examples=["-5", "2.5"])
    note: Note = ""


class SuspendBody(In):
    reason: Note = "suspended by operator"


class LiftBody(In):
    note: Note = ""


class BundleBody(In):
    """A free-minute bundle for the account (``rating/bundles.py`` has the split rule)."""

    name: Code
    seconds: whole(1, 10**9) = Field(  # type: ignore[valid-type]
        description="Seconds per period.")
    destinations: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default=[], max_length=1000, description="Breakout names it covers.")
    prefixes: list[Annotated[str, Field(pattern=r"^[0-9]{1,15}$")]] = Field(
        default=[], max_length=1000, description="Number prefixes it covers (neither: "
                                                 "every destination).")
    period: Literal["month", "day"] = "month"
    anchor_day: whole(1, 28) = Field(  # type: ignore[valid-type]
        default=1, description="A monthly period starts on this day (UTC).")


#: The actions a fraud rule may take (for the reader of this module).
FRAUD_ACTIONS = ACTIONS
