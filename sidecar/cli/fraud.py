"""``sidecar limits set|show`` (usage and fraud limits of accounts and plans) and
``sidecar fraud events|lift`` (what the fraud rules did, and the operator's lift)."""

from __future__ import annotations

import getpass
import time

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..charging.limits import KEYS, LimitsError, parse_assignments
from ..store.accounts import AccountNotFound, get_account
from ..store.decks import PlanNotFound
from ..store.fraud import (
    fraud_events,
    lift,
    limits_json,
    update_account_limits,
    update_plan_limits,
)
from .app import Context, cli, emit_json, fail, parse_when, pass_ctx


def _now_ms() -> int:
    return int(time.time() * 1000)


def _target(account: str | None, plan: str | None) -> None:
    if (account is None) == (plan is None):
        fail("name one account (--account CODE) or one plan (--plan NAME)", 2)


def show_value(value: object) -> str:
    """A limit's value for people: ``none`` for "no limit", prefixes comma-separated."""
    if value is None:
        return "none (no limit)"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(empty)"
    return str(value)


@cli.group()
def limits() -> None:
    """Usage and fraud limits of accounts and plans (inherited: account, its parents,
    its plan)."""


@limits.command("set")
@click.option("--account", default=None, metavar="CODE", help="The account's own limits.")
@click.option("--plan", default=None, metavar="NAME", help="The plan's default limits.")
@click.argument("assignments", nargs=-1, metavar="KEY=VALUE...")
@click.option("--unset", "unset", multiple=True, metavar="KEY",
              help="Inherit KEY again (from the parent account or the plan).")
@pass_ctx
def limits_set(ctx: Context, account: str | None, plan: str | None,
               assignments: tuple[str, ...], unset: tuple[str, ...]) -> None:
    """Set limits: KEY=VALUE ... (VALUE 'none' = no limit, which stops inheritance;
    allow/deny take comma-separated prefixes). Keys: """
    _target(account, plan)
    if not assignments and not unset:
        fail("give KEY=VALUE ... and/or --unset KEY", 2)
    try:
        changes = parse_assignments(assignments)
        unset_keys = [k.strip().replace("-", "_") for k in unset]
        if account is not None:
            new = update_account_limits(ctx.conn, account, changes, unset_keys)
        else:
            assert plan is not None
            new = update_plan_limits(ctx.conn, plan, changes, unset_keys)
    except LimitsError as exc:
        fail(str(exc), 2)
        return
    except (AccountNotFound, PlanNotFound) as exc:
        fail(str(exc))
        return
    own = new.to_dict()
    what = f"account {account}" if account is not None else f"plan {plan}"
    if not own:
        click.echo(f"{what}: no limits of its own (all inherited)")
        return
    click.echo(f"{what} limits: " + ", ".join(f"{k}={show_value(v)}" for k, v in own.items()))


limits_set.help = (limits_set.help or "") + ", ".join(KEYS) + "."


@limits.command("show")
@click.option("--account", default=None, metavar="CODE")
@click.option("--plan", default=None, metavar="NAME")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def limits_show(ctx: Context, account: str | None, plan: str | None, as_json: bool) -> None:
    """The limits that apply (to an account: its own, else its parents', else its
    plan's) and where each comes from."""
    _target(account, plan)
    try:
        doc = limits_json(ctx.conn, account=account, plan=plan)
    except (AccountNotFound, PlanNotFound) as exc:
        fail(str(exc))
        return
    if as_json:
        emit_json(doc)
        return
    print_limits(doc)


def print_limits(doc: dict[str, object], console: Console | None = None) -> None:
    """The effective limits as a table: key, value, where it comes from."""
    console = console or Console()
    what = f"account {doc['account']}" if "account" in doc else f"plan {doc['plan']}"
    eff = doc["effective"]
    source = doc["source"]
    own = doc["own"]
    assert isinstance(eff, dict) and isinstance(source, dict) and isinstance(own, dict)
    if not source:
        console.print(f"{escape(what)}: no limits set"
                      f"{' (here, on its parents or its plan)' if 'account' in doc else ''}")
        return
    t = Table("limit", "value", "from", title=f"limits of {escape(what)}")
    for key in KEYS:
        if key in source:
            t.add_row(key, escape(show_value(eff.get(key))), escape(str(source[key])))
    console.print(t)
    if "account" in doc:
        console.print("own limits: " + (escape(", ".join(
            f"{k}={show_value(v)}" for k, v in own.items())) if own else "none (all inherited)"))


@cli.group()
def fraud() -> None:
    """Fraud events (what the fraud rules saw and did) and lifting them."""


@fraud.command("events")
@click.option("--account", default=None, metavar="CODE")
@click.option("--from", "start", default=None, metavar="ISO", help="Events at or after.")
@click.option("--to", "end", default=None, metavar="ISO", help="Events before.")
@click.option("--open", "open_only", is_flag=True,
              help="Only blocks and suspensions not lifted yet.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def fraud_events_cmd(ctx: Context, account: str | None, start: str | None, end: str | None,
                     open_only: bool, as_json: bool) -> None:
    """Fraud events, oldest first: when, which account, rule and action, why, and
    whether an operator lifted it."""
    from_ms = int(parse_when(start, "--from").timestamp() * 1000) if start else None
    to_ms = int(parse_when(end, "--to").timestamp() * 1000) if end else None
    if from_ms is not None and to_ms is not None and to_ms <= from_ms:
        fail("--to must be after --from", 2)
    if account is not None:
        try:
            get_account(ctx.conn, account)
        except AccountNotFound as exc:
            fail(str(exc))
    events = fraud_events(ctx.conn, account, from_ms, to_ms, open_only)
    if as_json:
        emit_json(events)
        return
    if not events:
        click.echo("no fraud events")
        return
    for e in events:
        if e["lifted"]:
            state = f"lifted {e['lifted']} by {e['lifted_by']}" + (
                f": {e['lift_note']}" if e["lift_note"] else "")
        else:
            state = "open" if e["open"] else "-"
        click.echo(f"{e['time']}  {e['account']}  {e['rule']}  {e['action']}  "
                   f"{e['reason']}  [{state}]")


@fraud.command("lift")
@click.argument("code")
@click.option("--note", default="", help="Why (kept with the events).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def fraud_lift(ctx: Context, code: str, note: str, as_json: bool) -> None:
    """Lift what fraud rules did to account CODE: accept its calls again (a suspension
    by a fraud rule is resumed) and mark its blocks and suspensions lifted."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "operator"
    try:
        done = lift(ctx.conn, code, f"cli:{user}", note, _now_ms())
    except AccountNotFound as exc:
        fail(str(exc))
        return
    if as_json:
        emit_json(done)
        return
    parts = [f"{done['lifted']} fraud event(s) lifted"]
    if done["unblocked"]:
        parts.append(f"unblocked (was: {done['unblocked']})")
    if done["resumed"]:
        parts.append(f"resumed (was suspended: {done['resumed']})")
    if done["still_suspended"]:
        parts.append(f"still suspended, not by a fraud rule: {done['still_suspended']} "
                     f"(sidecar account resume {code})")
    if len(parts) == 1 and not done["lifted"]:
        parts = ["nothing to lift"]
    click.echo(f"account {code}: " + "; ".join(parts))
