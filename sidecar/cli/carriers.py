"""``sidecar carrier ...``: the carriers calls are routed to, and their buy decks."""

from __future__ import annotations

import contextlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..money import MoneyError
from ..rating import DeckError
from ..routing.carriers import Carrier, CarrierError
from ..store.carriers import (
    CarrierExists,
    CarrierNotFound,
    add_carrier,
    carrier_events,
    deck_info,
    get_carrier,
    import_carrier_deck,
    list_carriers,
    set_enabled,
)
from .app import Context, cli, emit_json, fail, parse_when, pass_ctx


def _now_ms() -> int:
    return int(time.time() * 1000)


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def carrier_json(c: Carrier) -> dict[str, object]:
    """A carrier as ``--json`` prints it."""
    return {"name": c.name, "uri": c.uri, "buy_plan": c.plan, "max_calls": c.max_calls,
            "max_cps": c.max_cps, "enabled": c.enabled,
            "disabled_reason": c.disabled_reason, "disabled_since": _when(c.disabled_ms),
            "disabled_by": c.disabled_by, "until": _when(c.until_ms)}


def _state(c: Carrier) -> str:
    if c.enabled:
        return "enabled"
    out = f"disabled since {_when(c.disabled_ms)} by {c.disabled_by}"
    if c.until_ms is not None:
        out += f" until {_when(c.until_ms)}"
    return out + (f": {c.disabled_reason}" if c.disabled_reason else "")


def _limit(value: int | None) -> str:
    return "no limit" if value is None else str(value)


@cli.group()
def carrier() -> None:
    """Carriers calls are routed to (least-cost routing): destinations, capacity, buy
    decks."""


@carrier.command("add")
@click.argument("name")
@click.option("--uri", required=True, help="SIP destination, e.g. sip:gw1.carrier.example:5060.")
@click.option("--currency", required=True, help="Currency of the carrier's buy deck.")
@click.option("--max-calls", type=int, default=None, help="Concurrent calls it takes.")
@click.option("--max-cps", type=int, default=None, help="Calls per second it takes.")
@click.option("--notice-days", type=int, default=7, show_default=True,
              help="Notice period for increases in its buy deck.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def carrier_add(ctx: Context, name: str, uri: str, currency: str, max_calls: int | None,
                max_cps: int | None, notice_days: int, as_json: bool) -> None:
    """Add a carrier (enabled, with an empty buy deck: import one next)."""
    try:
        c = add_carrier(ctx.conn, name, uri, currency=currency, max_calls=max_calls,
                        max_cps=max_cps, notice_days=notice_days, now_ms=_now_ms())
    except (CarrierError, MoneyError) as exc:
        fail(str(exc), 2)
        return
    except CarrierExists as exc:
        fail(str(exc))
        return
    if as_json:
        emit_json(carrier_json(c))
    else:
        click.echo(f"carrier {c.name} added: {c.uri} (max calls {_limit(c.max_calls)}, "
                   f"max cps {_limit(c.max_cps)}); import its buy deck with "
                   f"'sidecar carrier deck import {c.name} FILE'")


@carrier.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def carrier_list(ctx: Context, as_json: bool) -> None:
    """List the carriers."""
    rows = [(c, deck_info(ctx.conn, c)) for c in list_carriers(ctx.conn)]
    if as_json:
        emit_json([{**carrier_json(c), "currency": d["currency"],
                    "deck_versions": len(d["versions"])}  # type: ignore[arg-type]
                   for c, d in rows])
        return
    t = Table("carrier", "SIP destination", "max calls", "max cps", "deck", "state")
    for c, d in rows:
        versions = d["versions"]
        assert isinstance(versions, list)
        deck = (f"{d['currency']}, v{versions[-1]['version']} ({versions[-1]['lines']} lines)"
                if versions else f"{d['currency']}, none imported")
        t.add_row(c.name, c.uri, _limit(c.max_calls), _limit(c.max_cps), deck,
                  escape(_state(c)))
    Console().print(t)


@carrier.command("show")
@click.argument("name")
@click.option("--events", type=int, default=20, show_default=True, help="Latest events shown.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def carrier_show(ctx: Context, name: str, events: int, as_json: bool) -> None:
    """Show a carrier: destination, capacity, state, buy deck versions, latest events."""
    try:
        c = get_carrier(ctx.conn, name)
    except CarrierNotFound as exc:
        fail(str(exc))
        return
    deck = deck_info(ctx.conn, c)
    history = carrier_events(ctx.conn, name, events)
    if as_json:
        emit_json({**carrier_json(c), "deck": deck, "events": [
            {**e, "ts": _when(int(str(e["ts_ms"])))} for e in history]})
        return
    console = Console()
    console.print(f"[bold]{escape(c.name)}[/] {escape(c.uri)}: max calls "
                  f"{_limit(c.max_calls)}, max cps {_limit(c.max_cps)}; {escape(_state(c))}")
    console.print(f"buy deck {escape(str(deck['plan']))} in {deck['currency']}, notice "
                  f"{deck['notice_days']} days")
    versions = deck["versions"]
    assert isinstance(versions, list)
    if versions:
        t = Table("version", "imported", "source", "lines", title="Buy deck versions")
        for v in versions:
            t.add_row(str(v["version"]), str(v["imported"]), escape(str(v["source"])),
                      str(v["lines"]))
        console.print(t)
    else:
        console.print("no buy deck imported yet: sidecar carrier deck import "
                      f"{escape(c.name)} FILE")
    t = Table("when", "event", "by", "reason", title="Events")
    for e in history:
        t.add_row(_when(int(str(e["ts_ms"]))), str(e["kind"]), str(e["actor"]),
                  escape(str(e["reason"])))
    console.print(t)


@carrier.command("disable")
@click.argument("name")
@click.option("--reason", required=True, help="Why (shown in route lists and events).")
@pass_ctx
def carrier_disable(ctx: Context, name: str, reason: str) -> None:
    """Take a carrier out of every route list until it is enabled again."""
    try:
        c = set_enabled(ctx.conn, name, False, reason=reason, now_ms=_now_ms())
    except CarrierNotFound as exc:
        fail(str(exc))
        return
    click.echo(f"carrier {c.name} {_state(c)}")


@carrier.command("enable")
@click.argument("name")
@click.option("--note", default="", help="Why (kept with the event).")
@pass_ctx
def carrier_enable(ctx: Context, name: str, note: str) -> None:
    """Put a carrier back into the route lists (also one pulled by route health)."""
    try:
        before = get_carrier(ctx.conn, name)
        c = set_enabled(ctx.conn, name, True, reason=note, now_ms=_now_ms())
    except CarrierNotFound as exc:
        fail(str(exc))
        return
    click.echo(f"carrier {c.name} {'was already enabled' if before.enabled else 'enabled'}")


@carrier.group("deck")
def carrier_deck() -> None:
    """A carrier's buy deck (the sell decks' format, versions and notice rules)."""


@carrier_deck.command("import")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--as-of", default=None, help="Import as if now were this time (ISO 8601).")
@click.option("--notice-days", type=int, default=None,
              help="Notice period for increases (default: the carrier's).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def carrier_deck_import(ctx: Context, name: str, file: Path, as_of: str | None,
                        notice_days: int | None, as_json: bool) -> None:
    """Import FILE as the next version of the carrier's buy deck. A bad deck imports
    nothing (the errors name file, line and column)."""
    with contextlib.suppress(OSError):
        os.nice(10)
    try:
        res = import_carrier_deck(ctx.conn, name, file, as_of=parse_when(as_of, "--as-of"),
                                  notice_days=notice_days)
    except CarrierNotFound as exc:
        fail(str(exc))
        return
    except DeckError as exc:
        fail(str(exc), 2)
        return
    if as_json:
        emit_json({**res.__dict__, "carrier": name})
    else:
        click.echo(f"carrier {name}: buy deck version {res.version} imported, {res.lines} "
                   f"lines ({res.currency}; {res.new_prefixes} new, {res.increases} "
                   f"increases, {res.decreases} decreases)")
