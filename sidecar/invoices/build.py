"""Build an invoice model from SQLite: CDRs, ledger rows and the account.

Decimal math only; the rounding rule is in :mod:`sidecar.invoices.model`. Nothing here
writes: issuing (numbering, freezing) is :mod:`sidecar.invoices.issue`.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal

from ..config import Config
from ..money import CURRENCY_MINOR_UNITS, ZERO
from ..store.bundles import bundle_status
from ..store.conn import Db
from .model import (
    BundleUse,
    Credit,
    Day,
    Invoice,
    Line,
    LineKind,
    Movement,
    Party,
    Period,
    Statement,
    present,
    totals,
)
from .records import RESOLD_SQL, CallRow

DAY_MS = 86_400_000


class InvoiceError(ValueError):
    """An invoice that cannot be built, issued or found; the message says why."""


class InvoiceNotFound(InvoiceError):
    """The account or the issued document named does not exist."""


_D = Config  # the defaults: the configuration schema's, never written twice


@dataclass(frozen=True)
class InvoiceSettings:
    """The operator's invoice settings: ``[invoice]`` of the configuration, whose schema
    (:class:`sidecar.config.Config`, ``invoice_*``) gives their meaning and defaults."""

    provider_name: str = _D.invoice_provider_name
    provider_address: str = _D.invoice_provider_address
    provider_tax_number: str = _D.invoice_provider_tax_number
    provider_email: str = _D.invoice_provider_email
    payment_details: str = _D.invoice_payment_details
    tax_label: str = _D.invoice_tax_label
    template_dir: str = _D.invoice_template_dir
    due_days: int = _D.invoice_due_days
    detail_csv_over: int = _D.invoice_detail_csv_over

    @classmethod
    def from_config(cls, cfg: Config) -> InvoiceSettings:
        """The invoice settings of a loaded configuration (``invoice.KEY`` is ``KEY``)."""
        return cls(**{f.name: getattr(cfg, f"invoice_{f.name}") for f in fields(cls)})


_CDR_SQL = (
    "SELECT call_ref, offered_ms, answered_ms, ended_ms, duration_ms, billed_seconds, caller, "
    "callee, destination, origin, rate, increment, usage, connection_fee, surcharge, "
    "minimum_uplift, cost, charged, written_off, credited, disposition, fas_verdict, "
    "fas_reasons, bundle, bundle_seconds FROM cdrs WHERE account = ? AND ended_ms >= ? AND "
    "ended_ms < ? "
    "ORDER BY ended_ms, id")


class _Acc:
    """A line being summed: calls, billed seconds and the exact amount."""

    __slots__ = ("bundle", "calls", "exact", "seconds")

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0
        self.exact = ZERO
        self.bundle = 0  # seconds of them that bundles gave


def issuer(conn: Db, code: str) -> Party | None:
    """Who invoices account ``code``: the nearest reseller above it, with its own
    details; None: the operator (the invoice settings' provider)."""
    parent = conn.execute("SELECT parent FROM accounts WHERE code = ?", (code,)).fetchone()
    seen = {code}
    up = parent[0] if parent else None
    while up and up not in seen:
        seen.add(str(up))
        r = conn.execute("SELECT name, address, tax_number, reseller, parent FROM accounts "
                         "WHERE code = ?", (up,)).fetchone()
        if r is None:
            return None
        if r[3]:
            return Party(str(r[0]) or str(up), str(r[1]), str(r[2]), "", str(up))
        up = r[4]
    return None


def _customer(conn: Db, code: str) -> tuple[Party, str, str, Decimal]:
    row = conn.execute("SELECT name, address, tax_number, currency, kind, tax_rate "
                       "FROM accounts WHERE code = ?", (code,)).fetchone()
    if row is None:
        raise InvoiceNotFound(f"account '{code}' not found")
    name, address, tax_number, currency, kind, tax_rate = row
    party = Party(str(name) or code, str(address), str(tax_number), "", code)
    return party, str(currency), str(kind), Decimal(str(tax_rate))


def build_invoice(
    conn: Db,
    account: str,
    period: Period,
    settings: InvoiceSettings,
    *,
    issued_ms: int,
    number: str = "",
    draft: bool = False,
) -> tuple[Invoice, list[CallRow]]:
    """The invoice of ``account`` for ``period`` as it stands now, and its call detail
    (answered calls, oldest first). Calls belong to the month in which they ended."""
    customer, currency, account_kind, tax_rate = _customer(conn, account)
    start, end = period.start_ms, period.end_ms
    ndays = (end - start) // DAY_MS

    # Keyed by the price as a number: '0.3' and '0.30000000' are one rate, as in reconcile.
    usage: dict[tuple[str, str, Decimal, str], _Acc] = defaultdict(_Acc)
    fees: dict[tuple[str, str, Decimal], _Acc] = defaultdict(_Acc)
    prices: dict[str, Decimal] = {}  # stored text -> its value (few distinct prices)

    def num(text: str) -> Decimal:
        v = prices.get(text)
        if v is None:
            v = prices[text] = Decimal(text).normalize()
        return v

    surcharges: dict[tuple[str, str], _Acc] = defaultdict(_Acc)
    bundled: dict[str, _Acc] = defaultdict(_Acc)  # per free-minute bundle
    minimums: dict[tuple[str, str], _Acc] = defaultdict(_Acc)
    written_off = _Acc()
    day_calls = [0] * ndays
    day_spend = [ZERO] * ndays
    detail: list[CallRow] = []
    cdr_credits: list[tuple[int, str, str, Decimal, str, str]] = []
    attempts = answered = no_media = 0
    exact_charged = ZERO

    for (ref, offered, answered_ms, ended, duration, billed, caller, callee, dest, origin,
         rate, inc, u, fee, sur, upl, cost, charged, wo, cred, disp, verdict,
         reasons, bundle, bundle_s) in itertools.chain(
            conn.execute(_CDR_SQL, (account, start, end)),
            # A reseller: its customers' calls, at its own price.
            conn.execute(RESOLD_SQL, (account, start, end))):
        attempts += 1
        if disp == "no-media":
            no_media += 1
        # An answered call is billed; any other CDR only if it carries a price anyway.
        billable = disp == "answered" or (cost not in ("0", "") and Decimal(cost) != 0)
        if billable:
            answered += 1
            a = usage[(dest, origin, num(rate), inc)]
            a.calls += 1
            a.seconds += billed
            a.exact += Decimal(u)
            if bundle_s:
                a.bundle += bundle_s
                ba = bundled[bundle]
                ba.calls += 1
                ba.seconds += bundle_s
            if fee != "0" and (f := Decimal(fee)):
                fa = fees[(dest, origin, num(fee))]
                fa.calls += 1
                fa.exact += f
            if sur != "0" and (s := Decimal(sur)):
                sa = surcharges[(dest, origin)]
                sa.calls += 1
                sa.exact += s
            if upl != "0" and (m := Decimal(upl)):
                ma = minimums[(dest, origin)]
                ma.calls += 1
                ma.exact += m
            if wo != "0" and (w := Decimal(wo)):
                written_off.calls += 1
                written_off.exact += w
        c = Decimal(charged)
        exact_charged += c
        if c:
            d = (ended - start) // DAY_MS
            day_calls[d] += 1
            day_spend[d] += c
        if cred != "0" and (cr := Decimal(cred)):
            cdr_credits.append((ended, ref, callee, cr, verdict, reasons))
        if billable or answered_ms is not None:
            detail.append(CallRow(ref, offered, answered_ms, ended, duration, billed, caller,
                                  callee, dest, origin, rate, inc, cost, charged, wo, cred,
                                  verdict, bundle_s or 0))

    def line(kind: LineKind, dest: str, origin: str, acc: _Acc, rate: Decimal = ZERO,
             inc: str = "", sign: int = 1) -> Line:
        exact = acc.exact * sign
        return Line(kind, dest, origin, rate, inc, acc.calls, acc.seconds, exact,
                    present(exact, currency), acc.bundle if kind == "usage" else 0)

    lines: list[Line] = []
    for (dest, origin, rate_v, inc), a in sorted(usage.items(), key=lambda kv: kv[0]):
        lines.append(line("usage", dest, origin, a, rate_v, inc))
    for (dest, origin, fee_v), a in sorted(fees.items(), key=lambda kv: kv[0]):
        lines.append(line("connection_fee", dest, origin, a, fee_v))
    for (dest, origin), a in sorted(surcharges.items()):
        lines.append(line("surcharge", dest, origin, a))
    for (dest, origin), a in sorted(minimums.items()):
        lines.append(line("minimum", dest, origin, a))
    if written_off.calls:
        lines.append(line("written_off", "Not collected: prepaid credit ran out", "",
                          written_off, sign=-1))

    credits = _credits(conn, account, start, end, cdr_credits, currency)
    movements, statement = _ledger(conn, account, start, end, currency)
    charges, credits_total, net, tax, total = totals(lines, credits, tax_rate, currency)
    days = tuple(
        Day(datetime.fromtimestamp((start + i * DAY_MS) / 1000, UTC).strftime("%Y-%m-%d"),
            day_calls[i], day_spend[i], present(day_spend[i], currency))
        for i in range(ndays))
    detail.sort(key=lambda r: (r.offered_ms or r.answered_ms or r.ended_ms or 0, r.call_ref))
    provider = issuer(conn, account) or Party(
        settings.provider_name, settings.provider_address, settings.provider_tax_number,
        settings.provider_email)
    invoice = Invoice(
        kind="invoice", number=number, account=account, period=str(period),
        period_start_ms=start, period_end_ms=end, issued_ms=issued_ms,
        due_ms=issued_ms + settings.due_days * DAY_MS, currency=currency,
        minor_units=CURRENCY_MINOR_UNITS[currency], provider=provider, customer=customer,
        account_kind=account_kind, tax_label=settings.tax_label, tax_rate=tax_rate,
        lines=tuple(lines), credits=tuple(credits), movements=tuple(movements),
        statement=statement, days=days, bundles=_bundles(conn, account, start, bundled),
        charges=charges, credits_total=credits_total,
        net=net, tax=tax, total=total, exact_charged=exact_charged, attempts=attempts,
        answered=answered, no_media=no_media, calls=len(detail),
        detail_in_document=len(detail) <= settings.detail_csv_over,
        payment_details=settings.payment_details, draft=draft)
    return invoice, detail


def _bundles(conn: Db, account: str, start: int, used: dict[str, _Acc]
             ) -> tuple[BundleUse, ...]:
    """The account's bundles on the invoice: each defined one (used or not) and any other
    its calls in the period drew on, with the seconds they used; allowance and what is
    left as of now, for the bundle's period holding the invoice period's start."""
    r = conn.execute("SELECT plan FROM accounts WHERE code = ?", (account,)).fetchone()
    status = bundle_status(conn, account, str(r[0]), datetime.fromtimestamp(
        start / 1000, UTC)) if r else []
    out: list[BundleUse] = []
    for st in status:
        name = str(st["name"])
        a = used.get(name) or _Acc()
        out.append(BundleUse(name, a.calls, a.seconds, int(str(st["seconds"])),
                             int(str(st["left_seconds"])), _ms(str(st["period_start"]))))
    known = {b.name for b in out}
    out += [BundleUse(name, a.calls, a.seconds) for name, a in sorted(used.items())
            if name not in known]
    return tuple(out)


def _ms(iso_z: str) -> int:
    return int(datetime.fromisoformat(iso_z.replace("Z", "+00:00")).timestamp() * 1000)


def _credits(conn: Db, account: str, start: int, end: int,
             cdr_credits: list[tuple[int, str, str, Decimal, str, str]],
             currency: str) -> list[Credit]:
    """Credits in the period: every ``credit`` ledger row (a FAS credit when it names a
    call), plus credits recorded on a CDR of the period that no ledger row carries (so
    each credit shows once, in the period its money moved, else its call ended)."""
    out: list[Credit] = []
    for ts, amount, ref, note, callee, verdict, reasons in conn.execute(
            "SELECT l.ts_ms, l.amount, COALESCE(l.call_ref, ''), l.note, "
            "COALESCE(c.callee, ''), COALESCE(c.fas_verdict, ''), COALESCE(c.fas_reasons, '') "
            "FROM ledger l LEFT JOIN cdrs c ON c.call_ref = l.call_ref "
            "WHERE l.account = ? AND l.kind = 'credit' AND l.ts_ms >= ? AND l.ts_ms < ? "
            "ORDER BY l.ts_ms, l.id", (account, start, end)):
        exact = Decimal(amount)
        # A call's FAS credit reads as what was found (the verdict and its evidence); the
        # row's note is for any other credit (goodwill, or a call credited by hand).
        fas = bool(ref) and verdict not in ("", "clean")
        reason = _fas_reason(verdict, reasons) if fas else (note or "Credit")
        out.append(Credit(ts, ref, callee, reason, verdict, "ledger", exact,
                          present(exact, currency)))
    if cdr_credits:
        in_ledger = {r[0] for r in conn.execute(
            "SELECT DISTINCT call_ref FROM ledger WHERE account = ? AND kind = 'credit' "
            "AND call_ref IS NOT NULL", (account,))}
        for ended, ref, callee, amount, verdict, reasons in cdr_credits:
            if ref not in in_ledger:
                out.append(Credit(ended, ref, callee, _fas_reason(verdict, reasons), verdict,
                                  "cdr", amount, present(amount, currency)))
    out.sort(key=lambda c: c.ts_ms)  # stable: ledger rows keep their order among equals
    return out


def _fas_reason(verdict: str, reasons: str) -> str:
    """How a FAS credit reads on the invoice: ``False answer supervision (ringback): ...``."""
    if not verdict and not reasons:
        return "Credit"
    head = "False answer supervision" + (f" ({verdict})" if verdict else "")
    return f"{head}: {reasons}" if reasons else head


def _ledger(conn: Db, account: str, start: int, end: int,
            currency: str) -> tuple[list[Movement], Statement]:
    """Top-ups and adjustments in the period, and the settled-balance statement.

    Reservations and their releases are left out: every hold is released when its call
    settles, so the settled balance is what the customer's money really did."""
    opening = topups = adjustments = credits = charges = closing = ZERO
    movements: list[Movement] = []
    for ts, kind, amount, note in conn.execute(
            "SELECT ts_ms, kind, amount, note FROM ledger WHERE account = ? AND ts_ms < ? "
            "AND kind NOT IN ('reserve', 'release') ORDER BY ts_ms, id", (account, end)):
        a = Decimal(amount)
        closing += a  # summed on its own, so the statement's identity is a real check
        if ts < start:
            opening += a
        elif kind == "topup":
            topups += a
            movements.append(Movement(ts, kind, note, a, present(a, currency)))
        elif kind == "adjustment":
            adjustments += a
            movements.append(Movement(ts, kind, note, a, present(a, currency)))
        elif kind == "credit":
            credits += a
        elif kind == "charge":
            charges -= a
    return movements, Statement(opening, topups, adjustments, credits, charges, closing)
