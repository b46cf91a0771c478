"""The calls running now, as the store records them, with their running cost: one
computation for ``sidecar calls --live`` and ``GET /v1/live-calls``."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal

from ..invoices.records import iso
from ..money import ZERO, fmt
from ..rating import RateLine, price
from ..rating.bundles import split
from ..rating.increments import Increment, duration_seconds
from .accounts import ledger_for
from .conn import Db
from .decks import PlanNotFound, get_plan, lines_for

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def live_calls_view(conn: Db, now_ms: int) -> tuple[list[dict[str, object]],
                                                     dict[str, Decimal]]:
    """Every answered call the store holds a reservation for: elapsed time, running cost
    (the deck line's fees and minimums included, the plan's second rounding), credit
    reserved and paid time left; and each account's running total. Money as exact text."""
    rows = ledger_for(conn).live_calls()
    plans = {str(code): str(plan) for code, plan in conn.execute(
        "SELECT code, plan FROM accounts")}
    by_plan: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        by_plan[plans.get(str(r["account"]), "")].add(str(r["prefix"]))
    lines: dict[tuple[str, str], list[RateLine]] = defaultdict(list)
    rounding = {}
    for plan, prefixes in by_plan.items():
        try:
            rounding[plan] = get_plan(conn, plan).second_rounding
        except PlanNotFound:
            continue
        for line in lines_for(conn, plan, prefixes):
            lines[(plan, line.prefix)].append(line)
    out: list[dict[str, object]] = []
    totals: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for r in rows:
        account, plan = str(r["account"]), plans.get(str(r["account"]), "")
        answered = int(str(r["answered_ms"]))
        line = _line(r, lines.get((plan, str(r["prefix"])), []), answered)
        elapsed = max(0, now_ms - answered)
        secs = (duration_seconds(elapsed, rounding[plan]) if plan in rounding
                else duration_seconds(elapsed))
        bundle_held = int(str(r.get("bundle_held") or 0))
        # A call on a bundle: its held bundle seconds first, the rest paid.
        cost = (split(line, secs, bundle_held).cost if r.get("bundle") else
                price(line, secs).cost)
        totals[account] += cost
        paid_until = answered + int(str(r["paid_seconds"])) * 1000
        out.append({
            "call_ref": r["call_ref"], "account": account, "node": r["node"],
            "number": r["number"], "destination": r["destination"], "prefix": r["prefix"],
            "rate": fmt(Decimal(str(r["rate"]))), "increment": r["increment"],
            "answered": iso(answered), "answered_ms": answered, "elapsed_ms": elapsed,
            "cost": fmt(cost), "reserved": fmt(Decimal(str(r["reserved"]))),
            "paid_seconds": int(str(r["paid_seconds"])),
            "remaining_ms": max(0, paid_until - now_ms),
            "bundle": str(r.get("bundle") or "") or None, "bundle_held": bundle_held})
    return out, dict(totals)


def _line(row: dict[str, object], candidates: list[RateLine], answered_ms: int) -> RateLine:
    """The deck line the call was rated on: its prefix, rate and increment, in effect at
    its answer (latest first); else one made from the record (no fees known)."""
    rate, inc = Decimal(str(row["rate"])), str(row["increment"])
    at = answered_ms // 1000
    best: RateLine | None = None
    for line in candidates:
        if line.rate == rate and str(line.increment) == inc and line.effective_ts <= at and (
                best is None or line.effective_ts > best.effective_ts):
            best = line
    if best is not None:
        return best
    return RateLine(str(row["destination"]), str(row["prefix"]), rate, Increment.parse(inc),
                    _EPOCH, "")

