"""``sidecar route NUMBER --account CODE``: the route list a call would get (what-if).

The customer's sell line comes from the account's rate plan, each carrier's buy line
from its buy deck, the quality figures (ASR, ACD, PDD, FAS score) from the CDRs of the
last ``--stats-hours`` whose route is the carrier's name. Live load is not known here:
every carrier counts as having capacity left.
"""

from __future__ import annotations

import sys
from decimal import Decimal

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..invoices.analytics import route_calls, route_stats
from ..money import MoneyError, fmt, parse_amount
from ..numbers import InvalidNumber
from ..rating import NoRate
from ..routing.select import (
    Margin,
    Order,
    Quality,
    RouteList,
    RoutingError,
    RoutingPolicy,
    quality_score,
    select_routes,
)
from ..store.accounts import AccountNotFound, get_account
from ..store.carriers import load_carrier_decks
from ..store.decks import PlanNotFound, load_table
from ..supervision.routes import score_routes
from .app import Context, cli, emit_json, fail, parse_when, pass_ctx


def _amount(text: str, option: str) -> Decimal:
    try:
        return parse_amount(text)
    except MoneyError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc


def carrier_quality(ctx: Context, names: list[str], from_ms: int,
                    to_ms: int) -> dict[str, Quality]:
    """Each carrier's figures over ``[from_ms, to_ms)`` from the CDRs (route = name)."""
    wanted = set(names)
    stats = {s.route: s for s in route_stats(ctx.conn, from_ms=from_ms, to_ms=to_ms)
             if s.route in wanted}
    scores = {s.route: s for s in score_routes(
        c for c in route_calls(ctx.conn, from_ms=from_ms, to_ms=to_ms) if c.route in wanted)}
    out = {}
    for name in names:
        s = stats.get(name)
        f = scores.get(name)
        out[name] = Quality(None if s is None else s.asr, None if s is None else s.acd_seconds,
                            None if s is None else s.pdd_mean_ms,
                            f.score if f is not None and f.judged else None)
    return out


def route_json(res: RouteList, account: str, plan: str,
               figures: dict[str, Quality]) -> dict[str, object]:
    """A route list as ``--json`` prints it (amounts as exact strings)."""
    s = res.sell_line
    return {
        "number": res.number, "account": account, "plan": plan, "currency": s.currency,
        "reference_seconds": res.reference_seconds,
        "sell": {"destination": s.destination, "prefix": s.prefix, "rate": str(s.rate),
                 "increment": str(s.increment), "connection_fee": str(s.connection_fee),
                 "cost": str(res.sell)},
        "routes": [{"carrier": r.carrier, "uri": r.uri, "destination": r.line.destination,
                    "prefix": r.line.prefix, "rate": str(r.line.rate),
                    "increment": str(r.line.increment),
                    "connection_fee": str(r.line.connection_fee), "buy": str(r.buy),
                    "sell": str(r.sell), "margin": str(r.margin),
                    "margin_per_minute": str(r.margin_per_minute),
                    "margin_percent": None if r.margin_percent is None
                    else str(r.margin_percent),
                    "quality": None if r.quality is None else str(r.quality),
                    "stats": _stats(figures.get(r.carrier))} for r in res.routes],
        "excluded": [{"carrier": e.carrier, "why": e.why.value, "detail": e.detail,
                      "buy": None if e.buy is None else str(e.buy),
                      "margin": None if e.margin is None else str(e.margin)}
                     for e in res.excluded],
        "reason": res.reason,
    }


def _stats(q: Quality | None) -> dict[str, object] | None:
    if q is None:
        return None
    return {"asr": None if q.asr is None else str(q.asr),
            "acd_seconds": None if q.acd_seconds is None else str(q.acd_seconds),
            "pdd_ms": q.pdd_ms, "fas_score": q.fas_score}


@cli.command("route")
@click.argument("number")
@click.option("--account", required=True, help="The customer whose call it is.")
@click.option("--cli", "cli_number", default=None, help="Caller's number (origin pricing).")
@click.option("--at", default=None, help="The call's time, ISO 8601 (default: now).")
@click.option("--order", type=click.Choice([o.value for o in Order]), default="cost",
              show_default=True, help="Cheapest first, or quality-weighted.")
@click.option("--min-margin", default="0", show_default=True,
              help="Minimum margin per minute, in the sell currency.")
@click.option("--min-margin-percent", default="0", show_default=True,
              help="Minimum margin as a percentage of the sell price.")
@click.option("--reference-seconds", type=click.IntRange(min=1), default=60,
              show_default=True, help="Length of the call buy and sell are compared on.")
@click.option("--stats-hours", type=click.IntRange(min=1), default=24, show_default=True,
              help="Quality figures from the CDRs of this many hours.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def route_cmd(ctx: Context, number: str, account: str, cli_number: str | None,
              at: str | None, order: str, min_margin: str, min_margin_percent: str,
              reference_seconds: int, stats_hours: int, as_json: bool) -> None:
    """The carriers a call to NUMBER from an account would be routed to, in order, with
    buy, sell and margin for each, and every carrier left out with why. Exit 1 when no
    route is left."""
    try:
        policy = RoutingPolicy(
            Margin(_amount(min_margin, "--min-margin"),
                   _amount(min_margin_percent, "--min-margin-percent")),
            Order(order), reference_seconds)
    except RoutingError as exc:
        fail(str(exc), 2)
        return
    when = parse_when(at)
    now_ms = int(when.timestamp() * 1000)
    try:
        acc = get_account(ctx.conn, account)
        table = load_table(ctx.conn, acc.plan)
    except (AccountNotFound, PlanNotFound) as exc:
        fail(str(exc))
        return
    try:
        rated = table.rate(number, reference_seconds * 1000, now_ms // 1000, cli_number)
    except (NoRate, InvalidNumber) as exc:
        fail(f"account {account} (plan {acc.plan}): {exc}: no route without a sell price")
        return
    decks = load_carrier_decks(ctx.conn)
    names = [d.carrier.name for d in decks]
    figures = carrier_quality(ctx, names, now_ms - stats_hours * 3_600_000, now_ms)
    scores = {n: quality_score(q, policy) for n, q in figures.items()}
    res = select_routes(rated.number, now_ms, rated.line, decks, policy,
                        origin=rated.origin, quality=scores)
    if as_json:
        emit_json(route_json(res, account, acc.plan, figures))
        if not res.routes:
            sys.exit(1)
        return
    console = Console()
    s = res.sell_line
    console.print(f"{res.number} for account {escape(account)} (plan {escape(acc.plan)}): "
                  f"{escape(s.destination)} (prefix {s.prefix}), sold at {fmt(s.rate)}/min "
                  f"{s.increment}, fee {fmt(s.connection_fee)}: a {res.reference_seconds} s "
                  f"call sells for {fmt(res.sell)} {s.currency}")
    if acc.suspended or acc.blocked:
        console.print(f"[yellow]account {escape(account)} is "
                      f"{'suspended' if acc.suspended else 'blocked'}: its calls are "
                      "refused before routing[/]")
    if res.routes:
        # The sell price is the same for every route: it is in the line above.
        t = Table("#", "carrier", "prefix", "buy line", f"buy {res.reference_seconds}s",
                  "margin/min", "margin %",
                  *(["quality"] if policy.order is Order.QUALITY else []),
                  title=f"Routes ({policy.order.value} order)", box=box.SIMPLE_HEAD)
        for i, r in enumerate(res.routes, 1):
            ln = r.line
            t.add_row(str(i), escape(r.carrier), ln.prefix,
                      f"{fmt(ln.rate)}/min {ln.increment}"
                      + (f" +{fmt(ln.connection_fee)}" if ln.connection_fee else ""),
                      fmt(r.buy), fmt(r.margin_per_minute),
                      "-" if r.margin_percent is None else f"{r.margin_percent}",
                      *([f"{r.quality:.3f}"] if r.quality is not None else []))
        console.print(t)
    if res.excluded:
        t = Table("carrier", "why", f"buy {res.reference_seconds}s", "margin", "detail",
                  title="Left out", box=box.SIMPLE_HEAD)
        for e in res.excluded:
            t.add_row(escape(e.carrier), e.why.value, "" if e.buy is None else fmt(e.buy),
                      "" if e.margin is None else fmt(e.margin), escape(e.detail))
        console.print(t)
    if not res.routes:
        fail(res.reason)
