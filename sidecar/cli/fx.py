"""``sidecar fx``: exchange rates for accounts that pay in another currency than their
plan rates in (``set``, ``list``, ``convert``)."""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation

import click
from rich.console import Console
from rich.table import Table

from ..money import MoneyError, fmt
from ..rating.fx import FxError
from ..store.fx import FxInputError, list_rates, load_fx, set_rate
from .app import Context, cli, emit_json, fail, parse_when, pass_ctx


def _iso(text: object) -> str:
    return str(text).replace("+00:00", "Z")


@cli.group()
def fx() -> None:
    """Exchange rates: accounts paying in another currency than their plan rates in are
    charged at the rate in force when the call is rated (the CDR keeps both amounts and
    the rate)."""


@fx.command("set")
@click.argument("base")
@click.argument("quote")
@click.argument("rate")
@click.option("--from", "start", default=None,
              help="In force from this time (ISO 8601, UTC; default now).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def fx_set(ctx: Context, base: str, quote: str, rate: str, start: str | None,
           as_json: bool) -> None:
    """1 BASE = RATE QUOTE from --from on (e.g. ``sidecar fx set USD EUR 0.92``)."""
    try:
        r = set_rate(ctx.conn, base, quote, rate, parse_when(start, "--from"),
                     now_ms=int(time.time() * 1000))
    except FxInputError as exc:
        fail(str(exc), 2)
        return
    doc = {"base": r.base, "quote": r.quote, "rate": str(r.rate),
           "effective_from": _iso(r.effective_from.isoformat())}
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"1 {r.base} = {r.rate} {r.quote} from {doc['effective_from']}")


@fx.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def fx_list(ctx: Context, as_json: bool) -> None:
    """Every stored rate, by pair, oldest first."""
    rates = list_rates(ctx.conn)
    if as_json:
        emit_json([{"base": r.base, "quote": r.quote, "rate": str(r.rate),
                    "effective_from": _iso(r.effective_from.isoformat())} for r in rates])
        return
    table = Table("base", "quote", "rate", "in force from (UTC)", title="Exchange rates")
    for r in rates:
        table.add_row(r.base, r.quote, str(r.rate), _iso(r.effective_from.isoformat()))
    if not rates:
        table.caption = "none yet: sidecar fx set BASE QUOTE RATE"
    Console(markup=False, highlight=False).print(table)


@fx.command("convert")
@click.argument("amount")
@click.argument("base")
@click.argument("quote")
@click.option("--at", "at", default=None, help="At this time (ISO 8601, UTC; default now).")
@pass_ctx
def fx_convert(ctx: Context, amount: str, base: str, quote: str, at: str | None) -> None:
    """AMOUNT of BASE in QUOTE at the rate in force (rounded once, half up, to 8 places)."""
    try:
        value = Decimal(amount)
        c = load_fx(ctx.conn).convert(value, base, quote, parse_when(at))
    except (InvalidOperation, ValueError):
        fail(f"amount: '{amount}' is not a decimal number", 2)
        return
    except (FxError, MoneyError) as exc:
        fail(str(exc))
        return
    click.echo(f"{fmt(c.amount)} {c.base} = {fmt(c.converted)} {c.quote} (rate {c.rate}, "
               f"in force from {_iso(c.effective_from.isoformat())})")
