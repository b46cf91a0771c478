"""``sidecar deck ...`` and ``sidecar plan ...``: rate plans and their decks."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..money import fmt
from ..rating import DeckError, SecondRounding
from ..rating.deck import write_deck
from ..store.decks import (
    PlanNotFound,
    deck_versions,
    get_plan,
    import_deck,
    list_plans,
    load_table,
    set_plan,
)
from .app import Context, cli, emit_json, fail, parse_when, pass_ctx


@cli.group()
def deck() -> None:
    """Import, export and show rate decks."""


@deck.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--plan", required=True, help="Rate plan the deck is a new version of.")
@click.option("--currency", default=None, help="Currency when the deck does not name one.")
@click.option("--as-of", default=None, help="Import as if now were this time (ISO 8601).")
@click.option("--notice-days", type=int, default=None,
              help="Notice period for increases (new plan default 7; else the plan's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def deck_import(ctx: Context, file: Path, plan: str, currency: str | None, as_of: str | None,
                notice_days: int | None, as_json: bool) -> None:
    """Import FILE as the next version of a plan. A bad deck imports nothing.

    The import runs at a lower CPU priority (nice 10): a sidecar on the same machine
    keeps answering offers on time while it runs."""
    with contextlib.suppress(OSError):
        os.nice(10)
    try:
        res = import_deck(ctx.conn, plan, file, currency=currency,
                          as_of=parse_when(as_of, "--as-of"), notice_days=notice_days)
    except DeckError as exc:
        fail(str(exc), 2)
        return
    if as_json:
        emit_json(res.__dict__)
    else:
        click.echo(f"plan {res.plan}: version {res.version} imported, {res.lines} lines "
                   f"({res.currency}; {res.new_prefixes} new, {res.increases} increases, "
                   f"{res.decreases} decreases)")


@deck.command("export")
@click.option("--plan", required=True)
@click.option("--at", default=None, help="Lines in effect at this time, plus scheduled ones.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of stdout.")
@pass_ctx
def deck_export(ctx: Context, plan: str, at: str | None, out: Path | None) -> None:
    """Export a plan as a deck (what the customer is sent)."""
    try:
        table = load_table(ctx.conn, plan)
    except PlanNotFound as exc:
        fail(str(exc))
        return
    lines = table.lines_in_effect(int(parse_when(at).timestamp()))
    if out is None:
        write_deck(lines, sys.stdout, table.currency)
    else:
        with out.open("w", encoding="utf-8", newline="") as fh:
            n = write_deck(lines, fh, table.currency)
        click.echo(f"{n} lines written to {out}", err=True)


@deck.command("show")
@click.option("--plan", required=True)
@click.option("--at", default=None, help="Show the lines in effect at this time.")
@click.option("--limit", type=int, default=50, show_default=True, help="Lines to list (0: all).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def deck_show(ctx: Context, plan: str, at: str | None, limit: int, as_json: bool) -> None:
    """Show a plan: settings, import history and its lines."""
    try:
        p = get_plan(ctx.conn, plan)
        versions = deck_versions(ctx.conn, plan)
        table = load_table(ctx.conn, plan)
    except PlanNotFound as exc:
        fail(str(exc))
        return
    lines = table.lines_in_effect(int(parse_when(at).timestamp()))
    shown = lines if limit == 0 else lines[:limit]
    if as_json:
        emit_json({
            "plan": p.name, "currency": p.currency, "notice_days": p.notice_days,
            "second_rounding": p.second_rounding.value, "chunk_seconds": p.chunk_seconds,
            "versions": versions,
            "lines": [{"destination": ln.destination, "prefix": ln.prefix, "origin": ln.origin,
                       "rate": str(ln.rate), "increment": str(ln.increment),
                       "connection_fee": str(ln.connection_fee),
                       "effective_from": ln.effective_from.isoformat(),
                       "version": ln.version} for ln in shown],
        })
        return
    console = Console()
    console.print(f"[bold]{p.name}[/] currency {p.currency}, notice {p.notice_days} days, "
                  f"seconds rounded {p.second_rounding.value}, chunk {p.chunk_seconds} s")
    hist = Table("version", "imported", "source", "lines", title="Deck versions")
    for v in versions:
        hist.add_row(str(v["version"]), str(v["imported"]), str(v["source"]), str(v["lines"]))
    console.print(hist)
    t = Table("destination", "prefix", "origin", "rate/min", "increment", "fee",
              "effective from", "v", title=f"Lines ({len(lines)} in effect or scheduled)")
    for ln in shown:
        t.add_row(ln.destination, ln.prefix, ln.origin, fmt(ln.rate), str(ln.increment),
                  fmt(ln.connection_fee), ln.effective_from.date().isoformat(), str(ln.version))
    console.print(t)
    if len(shown) < len(lines):
        console.print(f"... {len(lines) - len(shown)} more (use --limit 0)")


@deck.command("plans")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def deck_plans(ctx: Context, as_json: bool) -> None:
    """List rate plans."""
    plans = list_plans(ctx.conn)
    if as_json:
        emit_json(plans)
        return
    t = Table("plan", "currency", "notice days", "versions", "lines")
    for p in plans:
        t.add_row(*(str(p[k]) for k in ("plan", "currency", "notice_days", "versions", "lines")))
    Console().print(t)


@cli.command("plan")
@click.argument("name")
@click.option("--notice-days", type=int, default=None)
@click.option("--second-rounding", type=click.Choice([r.value for r in SecondRounding]),
              default=None, help="How milliseconds become whole seconds.")
@click.option("--chunk-seconds", type=int, default=None, help="Credit reservation chunk.")
@click.option("--national-prefix", default=None, help="Trunk prefix, e.g. 0.")
@click.option("--country-code", default=None, help="Country code for national numbers.")
@click.option("--international-prefix", default=None, help="Default 00.")
@click.option("--strip-prefix", "strip_prefixes", multiple=True,
              help="Technical prefix removed before rating (repeatable).")
@pass_ctx
def plan_set(ctx: Context, name: str, notice_days: int | None, second_rounding: str | None,
             chunk_seconds: int | None, national_prefix: str | None, country_code: str | None,
             international_prefix: str | None, strip_prefixes: tuple[str, ...]) -> None:
    """Show or change a plan's settings."""
    try:
        p = set_plan(ctx.conn, name, notice_days=notice_days,
                     second_rounding=SecondRounding(second_rounding) if second_rounding else None,
                     chunk_seconds=chunk_seconds, national_prefix=national_prefix,
                     country_code=country_code, international_prefix=international_prefix,
                     strip_prefixes=strip_prefixes or None)
    except (PlanNotFound, ValueError) as exc:
        fail(str(exc))
        return
    emit_json({"plan": p.name, "currency": p.currency, "notice_days": p.notice_days,
               "second_rounding": p.second_rounding.value, "chunk_seconds": p.chunk_seconds,
               "international_prefix": p.number_plan.international_prefix,
               "national_prefix": p.number_plan.national_prefix,
               "country_code": p.number_plan.country_code,
               "strip_prefixes": list(p.number_plan.strip_prefixes)})
