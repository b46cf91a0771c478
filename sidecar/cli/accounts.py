"""``sidecar account ...``, ``sidecar ledger verify`` and ``sidecar calls --live``."""

from __future__ import annotations

import time
from decimal import Decimal

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..charging.model import AccountKind
from ..invoices.records import iso
from ..money import MoneyError, fmt, parse_amount
from ..store.accounts import (
    AccountExists,
    AccountNotFound,
    account_floats,
    add_account,
    get_account,
    ledger_for,
    list_accounts,
    map_sip,
    set_parent,
    set_reseller,
    set_suspended,
    sip_mappings,
    verify_ledger,
)
from ..store.decks import PlanNotFound
from ..store.fraud import limits_json
from ..store.live import live_calls_view
from .app import Context, cli, emit_json, fail, pass_ctx
from .fraud import print_limits


def _now_ms() -> int:
    return int(time.time() * 1000)


def _amount(text: str | None, option: str, negative: bool = False) -> Decimal | None:
    if text is None:
        return None
    try:
        return parse_amount(text, allow_negative=negative)
    except MoneyError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc


@cli.group()
def account() -> None:
    """Billing accounts: prepaid balances, postpaid limits, SIP mappings."""


@account.command("add")
@click.argument("code")
@click.option("--plan", required=True, help="Rate plan the account is rated on.")
@click.option("--kind", type=click.Choice(["prepaid", "postpaid"]), default="prepaid",
              show_default=True)
@click.option("--name", default="")
@click.option("--currency", default=None,
              help="What the account pays in (default: its plan's; another one needs an "
                   "exchange rate: sidecar fx set).")
@click.option("--balance", default=None, help="Initial top-up (prepaid).")
@click.option("--credit-limit", default=None, help="Postpaid: how far below zero it may go.")
@click.option("--daily-cap", default=None, help="Postpaid: spend per UTC day, then suspend.")
@click.option("--monthly-cap", default=None, help="Postpaid: spend per month, then suspend.")
@click.option("--chunk-seconds", type=int, default=None, help="Reservation chunk (else plan's).")
@click.option("--max-call-seconds", type=int, default=14_400, show_default=True)
@click.option("--low-balance", default=None, help="Alert when the balance falls below this.")
@click.option("--recharge-below", default=None, help="Auto-recharge under this balance ...")
@click.option("--recharge-amount", default=None, help="... by this amount.")
@click.option("--address", default="", help="Postal address for invoices.")
@click.option("--tax-number", default="")
@click.option("--tax-rate", default="0", help="Tax rate for invoices, e.g. 0.19.")
@click.option("--parent", default=None, help="Parent account (departments, or the reseller "
              "it buys from); limits are inherited from it.")
@click.option("--reseller", is_flag=True, help="A reseller: the calls of every account "
              "below it are charged to it too, at its own plan's price.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def account_add(ctx: Context, code: str, plan: str, kind: str, name: str,
                currency: str | None, balance: str | None,
                credit_limit: str | None, daily_cap: str | None, monthly_cap: str | None,
                chunk_seconds: int | None, max_call_seconds: int, low_balance: str | None,
                recharge_below: str | None, recharge_amount: str | None, address: str,
                tax_number: str, tax_rate: str, parent: str | None, reseller: bool,
                as_json: bool) -> None:
    """Create account CODE."""
    now = _now_ms()
    try:
        acc = add_account(
            ctx.conn, code, plan, AccountKind(kind), now_ms=now, name=name, currency=currency,
            credit_limit=_amount(credit_limit, "--credit-limit") or Decimal(0),
            daily_cap=_amount(daily_cap, "--daily-cap"),
            monthly_cap=_amount(monthly_cap, "--monthly-cap"), chunk_seconds=chunk_seconds,
            max_call_seconds=max_call_seconds, low_balance=_amount(low_balance, "--low-balance"),
            recharge_below=_amount(recharge_below, "--recharge-below"),
            recharge_amount=_amount(recharge_amount, "--recharge-amount"), address=address,
            tax_number=tax_number, tax_rate=_amount(tax_rate, "--tax-rate") or Decimal(0),
            parent=parent, reseller=reseller)
        initial = _amount(balance, "--balance")
        if initial:
            acc = ledger_for(ctx.conn).topup(code, initial, now, "initial balance")
    except (AccountExists, AccountNotFound, PlanNotFound, ValueError) as exc:
        fail(str(exc))
        return
    if as_json:
        emit_json(acc.to_dict())
    else:
        click.echo(f"account {acc.code} ({acc.kind.value}, plan {acc.plan}) created, "
                   f"balance {fmt(acc.balance)} {acc.currency}")


@account.command("show")
@click.argument("code")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def account_show(ctx: Context, code: str, as_json: bool) -> None:
    """Show an account, its SIP mappings and its latest ledger rows."""
    try:
        acc = get_account(ctx.conn, code, _now_ms())
    except AccountNotFound as exc:
        fail(str(exc))
        return
    maps = sip_mappings(ctx.conn, code)
    lims = limits_json(ctx.conn, account=code)
    rows = ctx.conn.execute("SELECT ts_ms, kind, amount, call_ref, note FROM ledger WHERE "
                            "account = ? ORDER BY id DESC LIMIT 20", (code,)).fetchall()
    # A reseller's credit the nodes hold for its customers' chunks (part of ``held``).
    floats = account_floats(ctx.conn, code).get(code, [])
    if as_json:
        emit_json({**acc.to_dict(), "effective_limits": lims["effective"],
                   "floats": [{"node": n, "held": str(h), "drawn": str(d)}
                              for n, h, d in floats],
                   "limits_source": lims["source"],
                   "sip": [{"kind": k, "value": v} for k, v, _ in maps],
                   "ledger": [{"ts": iso(r[0]), "kind": r[1], "amount": _money(r[2]),
                               "call_ref": r[3], "note": r[4]} for r in rows]})
        return
    console = Console()
    state = (f"[red]suspended: {escape(acc.suspend_reason)}[/]" if acc.suspended
             else "[green]active[/]")
    console.print(f"[bold]{escape(acc.code)}[/] {escape(acc.name)} — {acc.kind.value}, plan "
                  f"{escape(acc.plan)}, {state}")
    if acc.blocked:
        console.print(f"[red]blocked: {escape(acc.blocked)}[/] (new calls refused; "
                      f"sidecar fraud lift {escape(acc.code)})")
    if acc.parent:
        console.print(f"parent: {escape(acc.parent)}")
    if acc.reseller:
        console.print("reseller: the calls of the accounts below it are charged to it too")
    console.print(f"balance {fmt(acc.balance)} {acc.currency} (held {fmt(acc.held)}, "
                  f"available {fmt(acc.available())})")
    for node, held, drawn in floats:
        console.print(f"float of node {escape(node or '(default)')}: {fmt(held)} held for "
                      f"its customers' calls, {fmt(drawn)} of it drawn by live calls")
    if acc.kind is AccountKind.POSTPAID:
        console.print(f"credit limit {fmt(acc.credit_limit)}; today {fmt(acc.day_spend)}"
                      f"{f' of {fmt(acc.daily_cap)}' if acc.daily_cap is not None else ''}; "
                      f"this month {fmt(acc.month_spend)}"
                      f"{f' of {fmt(acc.monthly_cap)}' if acc.monthly_cap is not None else ''}")
    if maps:
        console.print("SIP: " + ", ".join(f"{k} {v}" for k, v, _ in maps))
    print_limits(lims, console)
    t = Table("time", "kind", "amount", "call", "note", title="Latest ledger rows")
    for r in rows:
        t.add_row(iso(r[0]), r[1], _money(r[2]), r[3] or "", r[4])
    console.print(t)


def _money(stored: object) -> str:
    """A stored amount (8-place text, or a PostgreSQL NUMERIC) as people read it."""
    return fmt(Decimal(str(stored)))


@account.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def account_list(ctx: Context, as_json: bool) -> None:
    """List accounts."""
    accs = list_accounts(ctx.conn, _now_ms())
    if as_json:
        emit_json([a.to_dict() for a in accs])
        return
    t = Table("code", "name", "kind", "plan", "balance", "held", "available", "state")
    for a in accs:
        t.add_row(a.code, a.name, a.kind.value, a.plan, f"{fmt(a.balance)} {a.currency}",
                  fmt(a.held), fmt(a.available()),
                  "suspended" if a.suspended else "blocked" if a.blocked else "active")
    Console().print(t)


@account.command("topup")
@click.argument("code")
@click.argument("amount")
@click.option("--note", default="", help="Payment reference.")
@click.option("--adjust", is_flag=True, help="An adjustment (may be negative) not a top-up.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def account_topup(ctx: Context, code: str, amount: str, note: str, adjust: bool,
                  as_json: bool) -> None:
    """Add AMOUNT to an account's balance (a ledger row)."""
    value = _amount(amount, "AMOUNT", negative=adjust)
    assert value is not None
    try:
        acc = ledger_for(ctx.conn).topup(code, value, _now_ms(), note,
                                           "adjustment" if adjust else "topup")
    except (AccountNotFound, ValueError) as exc:
        fail(str(exc))
        return
    if as_json:
        emit_json(acc.to_dict())
    else:
        click.echo(f"account {code}: balance {fmt(acc.balance)} {acc.currency}")


@account.command("suspend")
@click.argument("code")
@click.option("--reason", default="suspended by operator")
@pass_ctx
def account_suspend(ctx: Context, code: str, reason: str) -> None:
    """Refuse new calls from an account (403)."""
    try:
        set_suspended(ctx.conn, code, True, reason)
    except AccountNotFound as exc:
        fail(str(exc))
    click.echo(f"account {code} suspended: {reason}")


@account.command("resume")
@click.argument("code")
@pass_ctx
def account_resume(ctx: Context, code: str) -> None:
    """Accept calls from a suspended account again."""
    try:
        set_suspended(ctx.conn, code, False)
    except AccountNotFound as exc:
        fail(str(exc))
    click.echo(f"account {code} active")


@account.command("parent")
@click.argument("code")
@click.argument("parent", required=False)
@click.option("--none", "top", is_flag=True, help="No parent: a top-level account.")
@pass_ctx
def account_parent(ctx: Context, code: str, parent: str | None, top: bool) -> None:
    """Put account CODE under PARENT (it inherits the limits it does not set), or at the
    top with --none. Cycles and trees deeper than 4 accounts are refused."""
    if (parent is None) == (not top):
        fail("give PARENT or --none", 2)
    try:
        set_parent(ctx.conn, code, None if top else parent)
    except (AccountNotFound, ValueError) as exc:
        fail(str(exc))
    click.echo(f"account {code}: " + (f"parent {parent}" if parent else "no parent"))


@account.command("reseller")
@click.argument("code")
@click.option("--on/--off", "on", default=True, show_default=True)
@pass_ctx
def account_reseller(ctx: Context, code: str, on: bool) -> None:
    """Make CODE a reseller (--on: its descendants' calls are charged to it too, at its
    own plan's price, reserved with theirs) or not (--off)."""
    try:
        set_reseller(ctx.conn, code, on)
    except AccountNotFound as exc:
        fail(str(exc))
    click.echo(f"account {code}: {'reseller' if on else 'not a reseller'}")


@account.command("map-sip")
@click.argument("code")
@click.option("--user", "users", multiple=True, help="SIP username (From user) of the account.")
@click.option("--ip", "ips", multiple=True, help="Source IP of the account's calls.")
@pass_ctx
def account_map_sip(ctx: Context, code: str, users: tuple[str, ...], ips: tuple[str, ...]) -> None:
    """Map SIP usernames and/or source IPs to an account."""
    if not users and not ips:
        fail("give --user and/or --ip", 2)
    try:
        for u in users:
            map_sip(ctx.conn, "user", u, code)
        for ip in ips:
            map_sip(ctx.conn, "ip", ip, code)
    except (AccountNotFound, ValueError) as exc:
        fail(str(exc))
    click.echo(f"account {code}: " + ", ".join(
        f"{k} {v}" for k, v, _ in sip_mappings(ctx.conn, code)))


@cli.group()
def ledger() -> None:
    """The append-only ledger."""


@ledger.command("verify")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def ledger_verify(ctx: Context, as_json: bool) -> None:
    """Prove every balance (plus what calls hold) is the sum of its ledger (exit 1 on any
    mismatch)."""
    checks = verify_ledger(ctx.conn)
    bad = [c for c in checks if c.problems]
    if as_json:
        emit_json({"accounts": len(checks), "ok": not bad,
                   "problems": {c.account: list(c.problems) for c in bad}})
    else:
        for c in checks:
            mark = "ok " if not c.problems else "BAD"
            click.echo(f"{mark} {c.account}: balance {fmt(c.balance)} + held {fmt(c.held)} "
                       f"= ledger {fmt(c.ledger_sum)}; charges {fmt(c.charges)} = CDRs "
                       f"{fmt(c.cdr_charges)}")
            for p in c.problems:
                click.echo(f"    {p}")
        click.echo(f"{len(checks)} accounts, {len(bad)} with problems")
    if bad:
        raise SystemExit(1)


@cli.command("calls")
@click.option("--live", is_flag=True, required=True, help="Calls running now.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def calls_live(ctx: Context, live: bool, as_json: bool) -> None:
    """Running calls: cost so far, reserved credit, remaining paid time, account totals."""
    calls, totals = live_calls_view(ctx.conn, _now_ms())
    if as_json:
        emit_json({"calls": calls, "accounts": {k: fmt(v) for k, v in totals.items()}})
        return
    t = Table("call", "account", "number", "destination", "elapsed", "cost so far", "reserved",
              "paid time left", title=f"{len(calls)} live calls")
    for c in calls:
        t.add_row(str(c["call_ref"]), str(c["account"]), str(c["number"]),
                  str(c["destination"]), f"{int(str(c['elapsed_ms'])) // 1000} s",
                  fmt(Decimal(str(c["cost"]))), fmt(Decimal(str(c["reserved"]))),
                  f"{int(str(c['remaining_ms'])) // 1000} s")
    Console().print(t)
    for acc, total in sorted(totals.items()):
        click.echo(f"{acc}: running total {fmt(total)}")
