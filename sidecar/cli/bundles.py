"""``sidecar bundle``: free-minute bundles (``add``, ``list``, ``remove``): so many seconds
per period, used before money by the calls they cover."""

from __future__ import annotations

import time

import click
from rich.console import Console
from rich.table import Table

from ..rating.bundles import PERIODS, Bundle, BundleError
from ..store.accounts import AccountNotFound, get_account
from ..store.bundles import BundleNotFound, add_bundle, bundle_status, list_bundles, remove_bundle
from .app import Context, cli, emit_json, fail, parse_when, pass_ctx


@cli.group()
def bundle() -> None:
    """Free-minute bundles: an account (or every account on a plan) gets so many seconds
    per period for some destinations; its calls use them before money, and a call that
    crosses the end of its bundle is split at the exact second."""


def _owner(account: str | None, plan: str | None) -> tuple[str, str]:
    if (account is None) == (plan is None):
        fail("give the bundle's owner: --account CODE or --plan NAME (one of them)", 2)
    return ("account", str(account)) if account is not None else ("plan", str(plan))


@bundle.command("add")
@click.argument("name")
@click.option("--account", default=None, help="The account the bundle is for.")
@click.option("--plan", default=None, help="Or: every account on this rate plan.")
@click.option("--minutes", type=click.IntRange(min=1), default=None)
@click.option("--seconds", type=click.IntRange(min=1), default=None)
@click.option("--destination", "destinations", multiple=True,
              help="A breakout name the bundle covers (repeat; with no --destination and no "
                   "--prefix: every destination).")
@click.option("--prefix", "prefixes", multiple=True,
              help="A number prefix the bundle covers (repeat).")
@click.option("--period", type=click.Choice(PERIODS), default="month", show_default=True)
@click.option("--anchor-day", type=int, default=1, show_default=True,
              help="A monthly period starts on this day of the month (1-28, UTC).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def bundle_add(ctx: Context, name: str, account: str | None, plan: str | None,
               minutes: int | None, seconds: int | None, destinations: tuple[str, ...],
               prefixes: tuple[str, ...], period: str, anchor_day: int,
               as_json: bool) -> None:
    """Give an account (or a plan's accounts) the bundle NAME."""
    kind, owner = _owner(account, plan)
    if (minutes is None) == (seconds is None):
        fail("give the bundle's size: --minutes N or --seconds N (one of them)", 2)
    total = seconds if seconds is not None else int(minutes or 0) * 60
    try:
        b = add_bundle(ctx.conn, kind, owner, Bundle(
            name, total, frozenset(destinations), tuple(prefixes), period, anchor_day),
            now_ms=int(time.time() * 1000))
    except BundleError as exc:
        fail(str(exc), 2)
        return
    doc = _doc(kind, owner, b)
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"bundle {b.name} for {kind} {owner}: {b.seconds} s per {b.period} "
                   f"({_covers(b)})")


@bundle.command("remove")
@click.argument("name")
@click.option("--account", default=None)
@click.option("--plan", default=None)
@pass_ctx
def bundle_remove(ctx: Context, name: str, account: str | None, plan: str | None) -> None:
    """Remove a bundle (what was used stays on the CDRs and in the usage)."""
    kind, owner = _owner(account, plan)
    try:
        remove_bundle(ctx.conn, kind, owner, name)
    except BundleNotFound as exc:
        fail(str(exc))
    click.echo(f"bundle {name} of {kind} {owner} removed")


@bundle.command("list")
@click.option("--account", default=None,
              help="An account's bundles in the current period: used, held, left.")
@click.option("--at", "at", default=None, help="The period holding this time (ISO 8601).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def bundle_list(ctx: Context, account: str | None, at: str | None, as_json: bool) -> None:
    """Every bundle; with --account, that account's with what is left of them."""
    if account is None:
        docs = [_doc(o.kind, o.owner, o.bundle) for o in list_bundles(ctx.conn)]
        if as_json:
            emit_json(docs)
            return
        t = Table("owner", "name", "seconds", "period", "covers")
        for d, o in zip(docs, list_bundles(ctx.conn), strict=True):
            t.add_row(f"{d['owner_kind']} {d['owner']}", o.bundle.name, str(o.bundle.seconds),
                      o.bundle.period, _covers(o.bundle))
        Console().print(t)
        return
    try:
        acc = get_account(ctx.conn, account)
    except AccountNotFound as exc:
        fail(str(exc))
        return
    rows = bundle_status(ctx.conn, acc.code, acc.plan, parse_when(at))
    if as_json:
        emit_json({"account": acc.code, "bundles": rows})
        return
    if not rows:
        click.echo(f"account {acc.code} has no bundle")
        return
    t = Table("name", "from", "period", "seconds", "used", "held", "left")
    for r in rows:
        t.add_row(str(r["name"]), str(r["owner"]),
                  f"{r['period_start']} .. {r['period_end']}", str(r["seconds"]),
                  str(r["used_seconds"]), str(r["held_seconds"]), str(r["left_seconds"]))
    Console().print(t)


def _doc(kind: str, owner: str, b: Bundle) -> dict[str, object]:
    return {"owner_kind": kind, "owner": owner, "name": b.name, "seconds": b.seconds,
            "period": b.period, "anchor_day": b.anchor_day,
            "destinations": sorted(b.destinations), "prefixes": list(b.prefixes)}


def _covers(b: Bundle) -> str:
    parts = sorted(b.destinations) + [f"{p}*" for p in b.prefixes]
    return ", ".join(parts) if parts else "every destination"
