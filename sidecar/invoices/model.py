"""The invoice model: what an invoice or credit note says, as plain frozen data.

An issued document is stored as this model in JSON (money as strings, exact), so it
re-renders identically whatever happens to the CDRs, the config or the accounts later.

Rounding (the invoice half of the project's one policy, see :mod:`sidecar.money`):

* CDR amounts are at the money scale (8 places). A line's ``exact`` amount is the exact
  sum of its CDRs' components; its ``amount`` is ``exact`` rounded **once**, half-up, to
  the currency's minor unit.
* ``charges`` = the sum of the rounded line amounts; ``credits_total`` = the sum of the
  rounded credits; ``net`` = ``charges`` - ``credits_total`` (no further rounding: these
  are sums of amounts already at the minor unit).
* ``tax`` = ``net`` x the account's tax rate, rounded once, half-up, to the minor unit.
* ``total`` = ``net`` + ``tax``.

So every figure printed adds up on paper, and ``sidecar reconcile`` can rebuild each line
from the CDRs and prove ``total`` = sum of lines - credits + tax exactly.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

from ..money import ZERO, round_currency

FORMAT_VERSION = 1  # layout of the frozen JSON; bump (and keep a reader) if it changes

LineKind = Literal["usage", "connection_fee", "surcharge", "minimum", "written_off", "credit"]
DocKind = Literal["invoice", "credit_note"]


_PERIOD = re.compile(r"([0-9]{4})-([0-9]{2})", re.ASCII)


class PeriodError(ValueError):
    """A billing period that is not ``YYYY-MM``."""


@dataclass(frozen=True)
class Period:
    """A calendar month in UTC: calls belong to the month in which they ended (settled)."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Period:
        """``2026-11`` -> Period(2026, 11); anything else is a :class:`PeriodError`."""
        m = _PERIOD.fullmatch(text)
        if m is None or not 1 <= int(m[2]) <= 12 or int(m[1]) < 1:
            raise PeriodError(f"period '{text}' is not a month like 2026-11")
        return cls(int(m[1]), int(m[2]))

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """The first instant after the period."""
        y, m = (self.year + 1, 1) if self.month == 12 else (self.year, self.month + 1)
        return datetime(y, m, 1, tzinfo=UTC)

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp()) * 1000

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp()) * 1000

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True)
class Party:
    """The provider or the customer as printed on the document."""

    name: str
    address: str = ""  # may span lines
    tax_number: str = ""
    email: str = ""
    code: str = ""  # the customer's account code


@dataclass(frozen=True)
class Line:
    """One charge line: a breakout's usage, its connection fees, surcharges, minimum-charge
    uplifts, what was written off, or (on a credit note) the credited amount."""

    kind: LineKind
    destination: str
    origin: str = ""
    rate: Decimal = ZERO  # usage: per minute; connection fee: per call
    increment: str = ""
    calls: int = 0
    billed_seconds: int = 0
    exact: Decimal = ZERO  # the exact sum of the CDR amounts (money scale), signed
    amount: Decimal = ZERO  # ``exact`` rounded half-up to the minor unit: what is shown
    bundle_seconds: int = 0  # usage: of ``billed_seconds``, those free-minute bundles gave

    @property
    def label(self) -> str:
        """The destination with its origin class when the price depends on the caller."""
        return f"{self.destination} ({self.origin} callers)" if self.origin else self.destination


@dataclass(frozen=True)
class BundleUse:
    """A free-minute bundle on the invoice: the seconds its calls ended in the period
    used, and (for the bundle's period holding the invoice period's start) its
    allowance and what was left of it when the document was made."""

    name: str
    calls: int = 0
    seconds: int = 0
    allowance: int = 0  # 0: the bundle is no longer defined
    left: int = 0
    period_start_ms: int = 0


@dataclass(frozen=True)
class Credit:
    """Money given back on the invoice: a FAS credit for a call, or a goodwill credit."""

    ts_ms: int
    call_ref: str
    number: str
    reason: str
    verdict: str = ""  # the FAS verdict of the call, when there is one
    source: str = "ledger"  # "ledger": a credit row moved the balance; "cdr": on the CDR only
    exact: Decimal = ZERO  # positive
    amount: Decimal = ZERO  # positive, rounded to the minor unit


@dataclass(frozen=True)
class Movement:
    """A top-up, payment or balance adjustment in the period (from the ledger)."""

    ts_ms: int
    kind: str  # topup | adjustment
    note: str
    exact: Decimal
    amount: Decimal


@dataclass(frozen=True)
class Statement:
    """The account's settled balance (ledger rows other than reservations) at the period's
    start and end, and what moved it in between; closing = opening + top-ups +
    adjustments + credits - charges, exactly."""

    opening: Decimal = ZERO
    topups: Decimal = ZERO
    adjustments: Decimal = ZERO
    credits: Decimal = ZERO
    charges: Decimal = ZERO  # positive: what the ledger took for calls ended in the period
    closing: Decimal = ZERO


@dataclass(frozen=True)
class Day:
    """Spend on one UTC day (calls that ended that day): the daily chart's bars."""

    date: str  # YYYY-MM-DD
    calls: int
    exact: Decimal
    amount: Decimal


@dataclass(frozen=True)
class Invoice:
    """An invoice or a credit note, frozen when issued."""

    kind: DocKind
    number: str
    account: str
    period: str  # YYYY-MM
    period_start_ms: int
    period_end_ms: int  # exclusive
    issued_ms: int
    due_ms: int
    currency: str
    minor_units: int
    provider: Party
    customer: Party
    account_kind: str = "prepaid"
    tax_label: str = "Tax"
    tax_rate: Decimal = ZERO
    lines: tuple[Line, ...] = ()
    credits: tuple[Credit, ...] = ()
    movements: tuple[Movement, ...] = ()
    statement: Statement = field(default_factory=Statement)
    days: tuple[Day, ...] = ()
    bundles: tuple[BundleUse, ...] = ()
    charges: Decimal = ZERO  # sum of the rounded line amounts
    credits_total: Decimal = ZERO  # sum of the rounded credits (positive)
    net: Decimal = ZERO  # charges - credits_total
    tax: Decimal = ZERO  # round(net x tax_rate)
    total: Decimal = ZERO  # net + tax
    exact_charged: Decimal = ZERO  # sum of the CDRs' ``charged`` (money scale)
    attempts: int = 0  # every CDR of the account in the period
    answered: int = 0  # calls billed on the lines
    no_media: int = 0  # answered without media (FAS): not billed
    calls: int = 0  # rows of the call detail
    detail_in_document: bool = True  # else the call detail is an attached CSV
    refers_to: str = ""  # credit note: the invoice it corrects
    reason: str = ""  # credit note: why
    payment_details: str = ""
    draft: bool = False
    format_version: int = FORMAT_VERSION

    @property
    def is_credit_note(self) -> bool:
        return self.kind == "credit_note"

    def lines_of(self, kind: LineKind) -> list[Line]:
        """The lines of one kind, in document order."""
        return [ln for ln in self.lines if ln.kind == kind]


def present(value: Decimal, currency: str) -> Decimal:
    """Round an amount for presentation: half-up to the currency's minor unit."""
    return round_currency(value, currency)


def totals(lines: typing.Iterable[Line], credits: typing.Iterable[Credit], tax_rate: Decimal,
           currency: str) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal]:
    """(charges, credits_total, net, tax, total) under the invoice rounding rule."""
    # Sums of amounts in minor units: present() only gives an empty sum the currency's
    # scale (0.00, not 0); it never rounds here.
    charges = present(sum((ln.amount for ln in lines), ZERO), currency)
    credited = present(sum((c.amount for c in credits), ZERO), currency)
    net = charges - credited
    tax = present(net * tax_rate, currency)
    return charges, credited, net, tax, net + tax


# --- JSON (the frozen form) ------------------------------------------------------------

def _encode(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    return value


def to_json(doc: Invoice) -> str:
    """The canonical JSON of a document: sorted keys, no spaces, money as exact strings."""
    return json.dumps(_encode(doc), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


T = TypeVar("T")


def _decode(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Decimal:
        return Decimal(value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _from_dict(tp, value)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        return tuple(_decode(inner, v) for v in value)
    if origin in (typing.Union, types.UnionType):
        return value
    return value


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: _decode(hints[f.name], data[f.name])
              for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if f.name in data}
    return cls(**kwargs)


def from_json(text: str) -> Invoice:
    """Read a frozen document back (the inverse of :func:`to_json`)."""
    data = json.loads(text)
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"invoice data format {data.get('format_version')} is not supported")
    return _from_dict(Invoice, data)
