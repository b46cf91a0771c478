"""``sidecar cdrs`` (call records) and ``sidecar stats spend|routes|margin`` (cost analytics)."""

from __future__ import annotations

import sys
from decimal import Decimal

import click
from rich.console import Console
from rich.table import Table

from ..invoices.analytics import (
    MARGIN_BY,
    SPEND_BY,
    margins,
    margins_json,
    route_stats,
    route_stats_json,
    spend,
    spend_json,
)
from ..invoices.records import (
    CSV_HEADER,
    UnknownAccount,
    cdr_csv_rows,
    cdr_json,
    check_account,
    iso,
    query_cdrs,
    write_csv,
)
from ..money import MoneyError, fmt
from ..rating.fx import FxError
from .app import Context, cli, emit_json, fail, parse_when, pass_ctx

_FROM_HELP = "Calls that ended at or after this time (ISO 8601 date or date-time, UTC)."
_TO_HELP = "Calls that ended before this time (ISO 8601 date or date-time, UTC)."


def _range(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    f = None if start is None else int(parse_when(start, "--from").timestamp() * 1000)
    t = None if end is None else int(parse_when(end, "--to").timestamp() * 1000)
    if f is not None and t is not None and t <= f:
        raise click.BadParameter("--to must be after --from", param_hint="--to")
    return f, t


def check_account_option(ctx: Context, account: str | None) -> None:
    """A mistyped ``--account`` is an error (exit 1), not an empty report."""
    if account is None:
        return
    try:
        check_account(ctx.conn, account)
    except UnknownAccount as exc:
        fail(str(exc))


@cli.command("cdrs")
@click.option("--account", default=None, help="Only this account's calls.")
@click.option("--from", "start", default=None, help=_FROM_HELP)
@click.option("--to", "end", default=None, help=_TO_HELP)
@click.option("--format", "out_format", type=click.Choice(["table", "csv", "json"]),
              default="table", show_default=True)
@click.option("--limit", type=click.IntRange(min=0), default=0,
              help="At most this many records (0: all).")
@pass_ctx
def cdrs(ctx: Context, account: str | None, start: str | None, end: str | None,
         out_format: str, limit: int) -> None:
    """Call detail records with their rating, oldest first.

    CSV cells that a spreadsheet would run as a formula (starting with = + - @, tab or
    CR) are prefixed with a single quote: caller names come from the wire."""
    f, t = _range(start, end)
    check_account_option(ctx, account)
    rows = query_cdrs(ctx.conn, account=account, from_ms=f, to_ms=t, limit=limit or None)
    if out_format == "csv":
        write_csv(sys.stdout, CSV_HEADER, cdr_csv_rows(rows))
        return
    if out_format == "json":
        emit_json([cdr_json(r) for r in rows])
        return
    table = Table("end (UTC)", "account", "caller", "number", "destination", "result",
                  "duration", "billed", "rate", "charged", title="Call records")
    n = 0
    for r in rows:
        n += 1
        result = str(r["disposition"])
        if r["sip_code"] not in (None, 200):
            result += f" {r['sip_code']}"
        charged = fmt(Decimal(str(r["charged"])))
        if Decimal(str(r["written_off"])):
            charged += f" (+{fmt(Decimal(str(r['written_off'])))} written off)"
        table.add_row(iso(r["ended_ms"] if isinstance(r["ended_ms"], int) else None)[:19],
                      str(r["account"] or ""), str(r["caller"]), str(r["callee"]),
                      str(r["destination"]), result,
                      f"{int(str(r['duration_ms'])) / 1000:.1f} s", f"{r['billed_seconds']} s",
                      fmt(Decimal(str(r["rate"]))), f"{charged} {r['currency']}".strip())
    table.caption = f"{n} records"
    # Caller names are hostile input: print them as text, never as rich markup.
    Console(markup=False, highlight=False).print(table)


@cli.group()
def stats() -> None:
    """Cost analytics and route quality from the CDRs."""


@stats.command("spend")
@click.option("--by", "by", type=click.Choice(SPEND_BY), default="destination",
              show_default=True,
              help="customer: top-level accounts with their departments rolled up.")
@click.option("--account", default=None,
              help="Only this account and the accounts below it (departments).")
@click.option("--from", "start", default=None, help=_FROM_HELP)
@click.option("--to", "end", default=None, help=_TO_HELP)
@click.option("--currency", default=None,
              help="Every amount in this reporting currency: each call converted at the "
                   "exchange rate in force when it ended (sidecar fx).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def stats_spend(ctx: Context, by: str, account: str | None, start: str | None,
                end: str | None, currency: str | None, as_json: bool) -> None:
    """What the ledger charged, grouped by destination, day, account, customer or route."""
    f, t = _range(start, end)
    check_account_option(ctx, account)
    try:
        rows = spend(ctx.conn, by, account=account, from_ms=f, to_ms=t, currency=currency)
    except (FxError, MoneyError) as exc:
        fail(str(exc))
        return
    if as_json:
        emit_json(spend_json(rows))
        return
    headers = [by, "calls", "billed min", "spend", "currency"]
    if by == "account":
        headers.insert(1, "parent")
    table = Table(*headers, title=f"Spend by {by}")
    for r in rows:
        cells = [r.key or "(none)", str(r.calls), f"{r.billed_seconds / 60:,.2f}",
                 f"{r.amount:,}", r.currency]
        if by == "account":
            cells.insert(1, r.parent)
        table.add_row(*cells)
    Console(markup=False, highlight=False).print(table)


@stats.command("routes")
@click.option("--account", default=None, help="Only this account (and its departments).")
@click.option("--from", "start", default=None, help=_FROM_HELP)
@click.option("--to", "end", default=None, help=_TO_HELP)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def stats_routes(ctx: Context, account: str | None, start: str | None, end: str | None,
                 as_json: bool) -> None:
    """ASR (answered / attempts), ACD, PDD (first ringing - offer) and answer delay
    (200 OK - offer) per route. PDD is blank while the CDRs carry no ringing time."""
    f, t = _range(start, end)
    check_account_option(ctx, account)
    rows = route_stats(ctx.conn, account=account, from_ms=f, to_ms=t)
    if as_json:
        emit_json(route_stats_json(rows))
        return
    table = Table("route", "attempts", "answered", "no media (FAS)", "ASR", "ACD",
                  "PDD mean", "PDD p95", "answer delay mean", "answer delay p95",
                  title="Route quality")

    def ms(v: int | None) -> str:
        return "" if v is None else f"{v} ms"

    for r in rows:
        table.add_row(r.route or "(none)", str(r.attempts), str(r.answered), str(r.no_media),
                      "" if r.asr is None else f"{r.asr * 100:.1f}%",
                      "" if r.acd_seconds is None else f"{r.acd_seconds} s",
                      ms(r.pdd_mean_ms), ms(r.pdd_p95_ms), ms(r.answer_delay_mean_ms),
                      ms(r.answer_delay_p95_ms))
    Console(markup=False, highlight=False).print(table)


@stats.command("margin")
@click.option("--by", "by", type=click.Choice(MARGIN_BY), default="carrier", show_default=True,
              help="customer: top-level accounts with their departments rolled up.")
@click.option("--account", default=None, help="Only this account (and its departments).")
@click.option("--from", "start", default=None, help=_FROM_HELP)
@click.option("--to", "end", default=None, help=_TO_HELP)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def stats_margin(ctx: Context, by: str, account: str | None, start: str | None,
                 end: str | None, as_json: bool) -> None:
    """Margins of the calls the sidecar routed (least-cost routing): what customers were
    charged (sell: the rated price less FAS credits), what carriers charge (buy), and
    the margin, by carrier, destination, account, customer or day. Exact sums."""
    f, t = _range(start, end)
    check_account_option(ctx, account)
    rows = margins(ctx.conn, by, account=account, from_ms=f, to_ms=t)
    if as_json:
        emit_json({"by": by, "rows": margins_json(rows)})
        return
    table = Table(by, "calls", "answered", "sell", "buy", "margin", "%", "losing",
                  title=f"Margin by {by}")
    for r in rows:
        table.add_row(r.key or "(none)", str(r.calls), str(r.answered),
                      f"{fmt(r.sell)} {r.currency}", fmt(r.buy), fmt(r.margin),
                      "" if r.percent is None else str(r.percent), str(r.losses))
    if not rows:
        table.caption = "no routed calls (carriers: sidecar carrier add)"
    Console(markup=False, highlight=False).print(table)
