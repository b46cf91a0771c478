"""Reconciliation: prove an invoice line by line against the CDRs and the ledger.

Every line is rebuilt from the raw CDR rows (a separate pass from the one that built the
invoice), rounded under the documented rule and compared with the invoice; then the
sums: charges = sum of lines, net = charges - credits, tax = round(net x rate),
total = net + tax, the lines' exact sum = the CDRs' ``charged`` = the ledger's charges,
and the account statement adds up.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from ..money import ZERO
from ..store.conn import Db
from .model import Invoice, Period, present
from .records import query_cdrs, resold_calls

LineKey = tuple[str, str, str, Decimal, str]


@dataclass(frozen=True)
class LineCheck:
    """One invoice line against its rebuild from the CDRs."""

    kind: str
    label: str
    calls: int  # rebuilt
    exact: Decimal  # rebuilt: exact sum of the CDR amounts
    rounded: Decimal  # rebuilt: exact rounded half-up to the minor unit
    invoiced: Decimal | None  # the invoice's amount (None: the invoice lacks the line)
    ok: bool


@dataclass(frozen=True)
class Check:
    """One identity the invoice must satisfy."""

    what: str
    expected: str
    actual: str
    ok: bool


@dataclass
class Reconciliation:
    """The proof (or the refutation) of one invoice."""

    number: str
    account: str
    period: str
    currency: str
    cdrs: int = 0
    lines: list[LineCheck] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    rounding_difference: Decimal = ZERO  # sum of rounded lines - their exact sum
    notes: list[str] = field(default_factory=list)  # worth knowing, not a mismatch

    @property
    def ok(self) -> bool:
        return all(ln.ok for ln in self.lines) and all(c.ok for c in self.checks)

    def check(self, what: str, expected: object, actual: object) -> None:
        """Record that ``actual`` (on the invoice) must equal ``expected`` (rebuilt)."""
        self.checks.append(Check(what, str(expected), str(actual), expected == actual))


def _key(kind: str, dest: str, origin: str, rate: Decimal, inc: str) -> LineKey:
    return (kind, dest, origin, rate.normalize(), inc)


def reconcile(conn: Db, inv: Invoice) -> Reconciliation:
    """Reconcile an invoice (issued or draft) with the CDRs and ledger as they are now."""
    period = Period.parse(inv.period)
    ccy = inv.currency
    rec = Reconciliation(inv.number, inv.account, inv.period, ccy)
    if inv.is_credit_note:
        raise ValueError(f"{inv.number} is a credit note: reconcile the invoice it corrects")
    calls_of: dict[LineKey, int] = defaultdict(int)
    exact_of: dict[LineKey, Decimal] = defaultdict(lambda: ZERO)
    label_of: dict[LineKey, str] = {}
    charged_total = ZERO
    bad_cdrs: list[str] = []
    n = 0

    def add(key: LineKey, label: str, amount: Decimal) -> None:
        calls_of[key] += 1
        exact_of[key] += amount
        label_of[key] = label

    for r in itertools.chain(
            query_cdrs(conn, account=inv.account, from_ms=period.start_ms,
                       to_ms=period.end_ms),
            # A reseller: its customers' calls at its own price.
            resold_calls(conn, inv.account, period.start_ms, period.end_ms)):
        n += 1
        usage, fee, sur, upl, cost, charged, wo = (
            Decimal(str(r[k])) for k in ("usage", "connection_fee", "surcharge",
                                         "minimum_uplift", "cost", "charged", "written_off"))
        charged_total += charged
        if usage + fee + sur + upl != cost or charged + wo != cost:
            bad_cdrs.append(str(r["call_ref"]))
        if r["disposition"] != "answered" and cost == 0:
            continue
        dest, origin = str(r["destination"]), str(r["origin"])
        label = f"{dest} ({origin} callers)" if origin else dest
        add(_key("usage", dest, origin, Decimal(str(r["rate"])), str(r["increment"])),
            label, usage)
        if fee:
            add(_key("connection_fee", dest, origin, fee, ""), label, fee)
        if sur:
            add(_key("surcharge", dest, origin, ZERO, ""), label, sur)
        if upl:
            add(_key("minimum", dest, origin, ZERO, ""), label, upl)
        if wo:
            add(("written_off", "", "", ZERO, ""), "written off", -wo)
    rec.cdrs = n

    invoiced: dict[LineKey, tuple[int, Decimal, Decimal]] = {}
    for ln in inv.lines:
        key = ("written_off", "", "", ZERO, "") if ln.kind == "written_off" else \
            _key(ln.kind, ln.destination, ln.origin, ln.rate if ln.kind in (
                "usage", "connection_fee") else ZERO, ln.increment)
        invoiced[key] = (ln.calls, ln.exact, ln.amount)
    exact_lines = ZERO
    for key in sorted(set(calls_of) | set(invoiced), key=str):
        calls, exact = calls_of.get(key, 0), exact_of.get(key, ZERO)
        rounded = present(exact, ccy)
        inv_calls, inv_exact, inv_amount = invoiced.get(key, (-1, None, None))
        ok = inv_amount is not None and inv_amount == rounded and inv_exact == exact \
            and inv_calls == calls
        rec.lines.append(LineCheck(key[0], label_of.get(key, key[1]), calls, exact, rounded,
                                   inv_amount, ok))
        exact_lines += exact

    line_sum = sum((ln.amount for ln in inv.lines), ZERO)
    rec.rounding_difference = line_sum - exact_lines
    rec.check("CDRs where cost = usage + fee + surcharge + minimum = charged + written off",
              "all", "all" if not bad_cdrs else "not " + ", ".join(bad_cdrs[:5]))
    rec.check("charges = sum of rounded lines", line_sum, inv.charges)
    rec.check("exact sum of lines = CDRs charged (8 places)", charged_total, exact_lines)
    rec.check("CDRs charged = invoice's exact charged", charged_total, inv.exact_charged)
    ledger_charges = -sum((Decimal(a) for (a,) in conn.execute(
        "SELECT amount FROM ledger WHERE account = ? AND kind = 'charge' AND ts_ms >= ? "
        "AND ts_ms < ?", (inv.account, period.start_ms, period.end_ms))), ZERO)
    rec.check("ledger charges in the period = CDRs charged", charged_total, ledger_charges)
    ledger_credits = sum((Decimal(a) for (a,) in conn.execute(
        "SELECT amount FROM ledger WHERE account = ? AND kind = 'credit' AND ts_ms >= ? "
        "AND ts_ms < ?", (inv.account, period.start_ms, period.end_ms))), ZERO)
    rec.check("ledger credits in the period = credits from the ledger", ledger_credits,
              sum((c.exact for c in inv.credits if c.source == "ledger"), ZERO))
    rec.check("each credit rounded half-up", [present(c.exact, ccy) for c in inv.credits],
              [c.amount for c in inv.credits])
    st = inv.statement
    rec.check("closing = opening + top-ups + adjustments + credits - charges",
              st.opening + st.topups + st.adjustments + st.credits - st.charges, st.closing)
    rec.check("statement charges = ledger charges", ledger_charges, st.charges)
    for c in inv.credits:
        if c.source == "cdr":
            rec.notes.append(f"credit {c.exact} on call {c.call_ref} is on its CDR only: no "
                             f"ledger row gave it back to the balance")
    credits = sum((c.amount for c in inv.credits), ZERO)
    rec.check("credits = sum of rounded credits", credits, inv.credits_total)
    rec.check("net = charges - credits", inv.charges - inv.credits_total, inv.net)
    rec.check(f"tax = round_half_up(net x {inv.tax_rate})", present(inv.net * inv.tax_rate, ccy),
              inv.tax)
    rec.check("total = net + tax", inv.net + inv.tax, inv.total)
    # Each line's rounding moves it by at most half a minor unit.
    half = Decimal(1).scaleb(-inv.minor_units) / 2
    bound = half * len(inv.lines)
    rec.check(f"|rounding difference| <= half a minor unit per line ({bound})", True,
              abs(rec.rounding_difference) <= bound)
    return rec


def reconciliation_json(rec: Reconciliation) -> dict[str, object]:
    """A reconciliation for JSON output (money as strings)."""
    return {
        "number": rec.number, "account": rec.account, "period": rec.period,
        "currency": rec.currency, "cdrs": rec.cdrs, "ok": rec.ok,
        "rounding_difference": str(rec.rounding_difference), "notes": rec.notes,
        "lines": [{"kind": ln.kind, "label": ln.label, "calls": ln.calls, "exact": str(ln.exact),
                   "rounded": str(ln.rounded),
                   "invoiced": None if ln.invoiced is None else str(ln.invoiced), "ok": ln.ok}
                  for ln in rec.lines],
        "checks": [{"what": c.what, "expected": c.expected, "actual": c.actual, "ok": c.ok}
                   for c in rec.checks],
    }
