"""Cost analytics from the CDRs: spend by destination, day, account, customer or route, and
route quality (ASR, ACD, PDD, answer delay), and the margins of routed calls (buy cost,
sell price, margin by carrier, destination, account, customer or day).

Spend is what the ledger took (``charged``), exact at the money scale, rounded to the
currency's minor unit only in ``amount``. Calls belong to the time they ended.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ..money import ZERO, check_currency, fmt, round_money
from ..rating.fx import FxTable
from ..store.conn import Db, filters
from ..supervision.routes import RouteCall
from .model import present

SPEND_BY = ("destination", "day", "account", "customer", "route")


@dataclass(frozen=True)
class SpendRow:
    """Spend of one group (a destination, a day, an account ...) in one currency."""

    key: str
    currency: str
    calls: int  # answered calls
    billed_seconds: int
    exact: Decimal
    amount: Decimal
    parent: str = ""  # by account: the account's parent (department of a customer)


@dataclass(frozen=True)
class RouteStats:
    """Quality of one route.

    * ASR = answered / attempts (calls we rejected never reached a route: not attempts).
    * ACD = mean billable duration of the calls answered with media.
    * PDD (post-dial delay, RFC 6076 SRD) = first ringing (18x) - offer, over every attempt
      that rang (``cdrs.ringing_ms``); ``None`` when no call of the route rang.
    * Answer delay = answer (200 OK) - offer of the answered calls: PDD plus the time the
      callee took to pick up. A route whose answer delay is near zero for many calls
      answers instantly, one of the signatures of false answer supervision.
    """

    route: str
    attempts: int  # calls offered to the route (rejected-by-us calls never left)
    answered: int  # answered in signalling (200 OK), with or without media
    no_media: int  # of which answered without media (false answer supervision)
    asr: Decimal | None  # 0..1, 4 places
    acd_seconds: Decimal | None
    pdd_mean_ms: int | None
    pdd_p95_ms: int | None
    answer_delay_mean_ms: int | None = None
    answer_delay_p95_ms: int | None = None


def account_tree(conn: Db) -> dict[str, str | None]:
    """Every account's parent (None for a top-level account)."""
    return {str(c): (None if p is None or p == "" else str(p))
            for c, p in conn.execute("SELECT code, parent FROM accounts")}


def descendants(tree: dict[str, str | None], code: str) -> set[str]:
    """An account and every account below it (departments, sub-accounts)."""
    children: dict[str, list[str]] = defaultdict(list)
    for c, p in tree.items():
        if p is not None:
            children[p].append(c)
    out, todo = {code}, [code]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:  # a cycle in the parent links must not loop forever
                out.add(child)
                todo.append(child)
    return out


def root_of(tree: dict[str, str | None], code: str) -> str:
    """The top-level account (the customer) an account belongs to."""
    seen = {code}
    while (p := tree.get(code)) is not None and p not in seen:
        seen.add(p)
        code = p
    return code


def _where(conn: Db, account: str | None, from_ms: int | None,
           to_ms: int | None, subaccounts: bool) -> tuple[str, list[object]]:
    where, args = filters(("ended_ms >= ?", from_ms), ("ended_ms < ?", to_ms))
    if account is not None:
        codes = sorted(descendants(account_tree(conn), account)) if subaccounts else [account]
        where += f" AND account IN ({', '.join('?' for _ in codes)})"
        args += codes
    return where, args


def spend(conn: Db, by: str, *, account: str | None = None,
          from_ms: int | None = None, to_ms: int | None = None,
          subaccounts: bool = True, currency: str | None = None,
          fx: FxTable | None = None) -> list[SpendRow]:
    """Spend grouped ``by`` destination, day (UTC), account, customer (top-level account,
    departments rolled up) or route. ``account`` limits it to that account and, with
    ``subaccounts``, the accounts below it. Largest first; by day in date order.

    ``currency``: every amount in that reporting currency, each call converted exactly at
    the exchange rate in force when it ended (``fx``, the store's by default) and each
    row's sum rounded once to the money scale; :class:`~sidecar.rating.fx.FxError` names
    a pair with no rate in force."""
    if by not in SPEND_BY:
        raise ValueError(f"spend by must be one of {', '.join(SPEND_BY)}")
    where, args = _where(conn, account, from_ms, to_ms, subaccounts)
    tree = account_tree(conn)
    calls: dict[tuple[str, str], int] = defaultdict(int)
    seconds: dict[tuple[str, str], int] = defaultdict(int)
    exact: dict[tuple[str, str], Decimal] = defaultdict(lambda: ZERO)
    if currency is not None:
        currency = check_currency(currency)
        if fx is None:
            from ..store.fx import load_fx  # the store's rates

            fx = load_fx(conn)
    for acc, dest, route, ended, ccy, billed, charged, disp in conn.execute(
            "SELECT account, destination, route, ended_ms, currency, billed_seconds, charged, "
            f"disposition FROM cdrs WHERE {where}", args):
        c = Decimal(charged)
        if disp != "answered" and not c:
            continue
        if currency is not None and ccy != currency and c:
            assert fx is not None
            c *= fx.rate(str(ccy), currency,
                         datetime.fromtimestamp(int(ended) / 1000, UTC))[0]
        if currency is not None:
            ccy = currency
        if by == "destination":
            key = str(dest)
        elif by == "day":
            key = datetime.fromtimestamp(int(ended) / 1000, UTC).strftime("%Y-%m-%d")
        elif by == "account":
            key = str(acc)
        elif by == "customer":
            key = root_of(tree, str(acc))
        else:
            key = str(route)
        k = (key, str(ccy))
        calls[k] += disp == "answered"
        seconds[k] += int(billed)
        exact[k] += c
    if currency is not None:  # converted amounts: each row's exact sum rounded once
        exact = defaultdict(lambda: ZERO, {k: round_money(v) for k, v in exact.items()})
    rows = [SpendRow(key, ccy, calls[(key, ccy)], seconds[(key, ccy)], exact[(key, ccy)],
                     present(exact[(key, ccy)], ccy) if ccy else exact[(key, ccy)],
                     (tree.get(key) or "") if by == "account" else "")
            for key, ccy in list(exact)]
    if by == "day":
        rows.sort(key=lambda r: (r.key, r.currency))
    else:
        rows.sort(key=lambda r: (-r.exact, r.key, r.currency))
    return rows


#: How ``sidecar stats margin`` groups routed calls.
MARGIN_BY = ("carrier", "destination", "account", "customer", "day")


@dataclass(frozen=True)
class MarginRow:
    """Routed calls of one group: what customers pay for them (``sell``: the rated price
    less FAS credits, as each CDR's margin counts it), what the carriers charge (``buy``)
    and the difference (``margin``, exact: the CDRs' margins summed). Amounts a prepaid
    account could not cover (written off) are a matter of collection, not of margin."""

    key: str
    currency: str
    calls: int  # routed calls (answered or not)
    answered: int
    billed_seconds: int
    sell: Decimal
    buy: Decimal
    margin: Decimal
    losses: int  # calls that lost money (margin below 0)

    @property
    def percent(self) -> Decimal | None:
        """The margin as a percentage of the sell price (2 places, half-up)."""
        if not self.sell:
            return None
        return (self.margin * 100 / self.sell).quantize(Decimal("0.01"), ROUND_HALF_UP)


def margins(conn: Db, by: str, *, account: str | None = None,
            from_ms: int | None = None, to_ms: int | None = None) -> list[MarginRow]:
    """Buy cost, sell price and margin of the calls the sidecar routed (least-cost
    routing: their CDRs carry ``buy_cost``), grouped ``by`` carrier, destination,
    account, customer (departments rolled up) or day (UTC, by the call's end). Summed
    exactly; the largest margin first, by day in date order."""
    if by not in MARGIN_BY:
        raise ValueError(f"margin by must be one of {', '.join(MARGIN_BY)}")
    where, args = _where(conn, account, from_ms, to_ms, True)
    tree = account_tree(conn)
    groups: dict[tuple[str, str], list[Any]] = {}
    for acc, dest, route, ended, ccy, billed, buy, margin, disp in \
            conn.execute(
                "SELECT account, destination, route, ended_ms, currency, billed_seconds, "
                "buy_cost, margin, disposition FROM cdrs "
                f"WHERE {where} AND buy_cost IS NOT NULL", args):
        if by == "carrier":
            key = str(route)
        elif by == "destination":
            key = str(dest)
        elif by == "account":
            key = str(acc)
        elif by == "customer":
            key = root_of(tree, str(acc))
        else:
            key = datetime.fromtimestamp(int(ended) / 1000, UTC).strftime("%Y-%m-%d")
        g = groups.setdefault((key, str(ccy)), [0, 0, 0, ZERO, ZERO, ZERO, 0])
        m = Decimal(str(margin))
        b = Decimal(str(buy))
        g[0] += 1
        g[1] += disp in ("answered", "no-media")
        g[2] += int(billed)
        g[3] += m + b  # the sell price the CDR's margin was worked out from
        g[4] += b
        g[5] += m
        g[6] += m < 0
    rows = [MarginRow(key, ccy, *g) for (key, ccy), g in groups.items()]
    if by == "day":
        rows.sort(key=lambda r: (r.key, r.currency))
    else:
        rows.sort(key=lambda r: (-r.margin, r.key, r.currency))
    return rows


def margins_json(rows: list[MarginRow]) -> list[dict[str, object]]:
    """Margin rows for JSON output (money as exact strings, without trailing zeros)."""
    return [{"key": r.key, "currency": r.currency, "calls": r.calls, "answered": r.answered,
             "billed_seconds": r.billed_seconds, "sell": fmt(r.sell), "buy": fmt(r.buy),
             "margin": fmt(r.margin),
             "margin_percent": None if r.percent is None else str(r.percent),
             "losses": r.losses} for r in rows]


def _mean_p95(values: list[int]) -> tuple[int | None, int | None]:
    """The mean (rounded to the ms) and the 95th percentile (nearest rank) of ``values``."""
    if not values:
        return None, None
    ordered = sorted(values)
    return round(sum(ordered) / len(ordered)), ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def route_calls(conn: Db, *, account: str | None = None,
                from_ms: int | None = None, to_ms: int | None = None) -> list[RouteCall]:
    """The calls that reached a route (not rejected by us), as the FAS route patterns of
    :mod:`sidecar.supervision.routes` read them; same selection as :func:`route_stats`."""
    where, args = _where(conn, account, from_ms, to_ms, True)
    rows = conn.execute(
        "SELECT route, offered_ms, ringing_ms, answered_ms, ended_ms, fas_verdict FROM cdrs "
        f"WHERE {where} AND disposition != 'rejected' AND offered_ms IS NOT NULL "
        "ORDER BY offered_ms", args)
    return [RouteCall(str(r[0] or ""), int(r[1]), r[2], r[3], int(r[4] or r[1]), str(r[5] or ""))
            for r in rows]


def route_stats(conn: Db, *, account: str | None = None,
                from_ms: int | None = None, to_ms: int | None = None) -> list[RouteStats]:
    """ASR, ACD, PDD and answer delay per route (``cdrs.route``; '' when not known)."""
    where, args = _where(conn, account, from_ms, to_ms, True)
    attempts: dict[str, int] = defaultdict(int)
    answered: dict[str, int] = defaultdict(int)
    no_media: dict[str, int] = defaultdict(int)
    talk: dict[str, list[int]] = defaultdict(list)
    pdd: dict[str, list[int]] = defaultdict(list)
    answer_delay: dict[str, list[int]] = defaultdict(list)
    for route, disp, offered, ringing_ms, answered_ms, duration in conn.execute(
            "SELECT route, disposition, offered_ms, ringing_ms, answered_ms, duration_ms "
            f"FROM cdrs WHERE {where} AND disposition != 'rejected'", args):
        r = str(route)
        attempts[r] += 1
        if offered is not None and ringing_ms is not None:
            pdd[r].append(int(ringing_ms) - int(offered))
        if answered_ms is None:
            continue
        answered[r] += 1
        if disp == "no-media":
            no_media[r] += 1
        if disp == "answered":
            talk[r].append(int(duration))
        if offered is not None:
            answer_delay[r].append(int(answered_ms) - int(offered))
    out = []
    for r in sorted(attempts):
        n, a = attempts[r], answered[r]
        durations = talk[r]
        pdd_mean, pdd_p95 = _mean_p95(pdd[r])
        delay_mean, delay_p95 = _mean_p95(answer_delay[r])
        out.append(RouteStats(
            r, n, a, no_media[r],
            (Decimal(a) / n).quantize(Decimal("0.0001"), ROUND_HALF_UP) if n else None,
            (Decimal(sum(durations)) / len(durations) / 1000).quantize(
                Decimal("0.1"), ROUND_HALF_UP) if durations else None,
            pdd_mean, pdd_p95, delay_mean, delay_p95))
    return out


def spend_json(rows: list[SpendRow]) -> list[dict[str, object]]:
    """Spend rows for JSON output (money as strings)."""
    return [{"key": r.key, "currency": r.currency, "calls": r.calls,
             "billed_seconds": r.billed_seconds, "exact": str(r.exact), "amount": str(r.amount),
             **({"parent": r.parent} if r.parent else {})} for r in rows]


def route_stats_json(rows: list[RouteStats]) -> list[dict[str, object]]:
    """Route statistics for JSON output (ratios and durations as strings, exact)."""
    return [{"route": r.route, "attempts": r.attempts, "answered": r.answered,
             "no_media": r.no_media, "asr": None if r.asr is None else str(r.asr),
             "acd_seconds": None if r.acd_seconds is None else str(r.acd_seconds),
             "pdd_mean_ms": r.pdd_mean_ms, "pdd_p95_ms": r.pdd_p95_ms,
             "answer_delay_mean_ms": r.answer_delay_mean_ms,
             "answer_delay_p95_ms": r.answer_delay_p95_ms} for r in rows]
