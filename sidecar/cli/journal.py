"""``sidecar journal``: what the live sidecar kept on disk while its store failed."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..charging.commands import Flag, Settle, Topup
from ..money import fmt
from ..store.conn import is_url
from ..store.journal import Journal, default_journal
from .app import Context, cli, emit_json, fail


def _journal(ctx: Context, path: Path | None, node: str | None) -> Journal:
    if path is None and is_url(ctx.target) and not node:
        fail("on PostgreSQL each node keeps its own journal: give --journal PATH (the "
             "node's [database] journal) or --node NAME (./sidecar-NAME.journal)", 2)
    return Journal(path or default_journal(ctx.target, node or ""))


@cli.group("journal", invoke_without_command=True)
@click.option("--journal", "path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The journal file (default: the SQLite database path + "
                                 ".journal; on PostgreSQL ./sidecar-NODE.journal).")
@click.option("--node", default=None, metavar="NAME",
              help="The node whose journal it is (PostgreSQL: names the default file).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.pass_context
def journal_cmd(click_ctx: click.Context, path: Path | None, node: str | None,
                as_json: bool) -> None:
    """Settlements, top-ups and fraud events waiting for the store (applied by `sidecar
    run` as soon as the store takes writes again, or by `sidecar journal apply`)."""
    if click_ctx.invoked_subcommand is not None:
        click_ctx.meta["journal_path"] = path
        click_ctx.meta["journal_node"] = node
        return
    ctx: Context = click_ctx.obj
    j = _journal(ctx, path, node)
    rows = []
    for _run, cmd in j.entries():
        if isinstance(cmd, Settle):
            c = cmd.cdr
            rows.append({"kind": "settle", "call_ref": c.call_ref, "account": c.account,
                         "disposition": c.disposition.value, "cost": str(c.cost),
                         "at_ms": cmd.now_ms})
        elif isinstance(cmd, Topup):
            rows.append({"kind": "topup", "account": cmd.account, "amount": str(cmd.amount),
                         "note": cmd.note, "at_ms": cmd.now_ms})
        elif isinstance(cmd, Flag):
            rows.append({"kind": "flag", "account": cmd.account, "rule": cmd.rule,
                         "action": cmd.action, "reason": cmd.reason, "at_ms": cmd.now_ms})
    if as_json:
        emit_json({"journal": str(j.path), "pending": rows})
        return
    if not rows:
        click.echo(f"journal {j.path}: nothing pending")
        return
    table = Table(title=f"journal {j.path}: {len(rows)} pending")
    for col in ("kind", "call / account", "amount", "at (ms)"):
        table.add_column(col)
    for r in rows:
        what = (f"{r['call_ref']} ({r['account'] or '-'}, {r['disposition']})"
                if r["kind"] == "settle" else
                f"{r['account']} ({r['rule']}: {r['action']})" if r["kind"] == "flag"
                else str(r["account"]))
        amount = r.get("cost") or r.get("amount") or "0"
        table.add_row(str(r["kind"]), what, fmt(Decimal(str(amount))), str(r["at_ms"]))
    Console().print(table)


@journal_cmd.command("apply")
@click.pass_context
def journal_apply(click_ctx: click.Context) -> None:
    """Apply the journal to the store now (each entry at most once), then empty it."""
    ctx: Context = click_ctx.obj
    from ..store.accounts import ledger_for

    meta = click_ctx.parent.meta if click_ctx.parent else {}
    j = _journal(ctx, meta.get("journal_path"), meta.get("journal_node"))
    entries = j.entries()
    if not entries:
        click.echo(f"journal {j.path}: nothing to apply")
        return
    result = ledger_for(ctx.conn).execute([c for _run, c in entries])
    if result.error:
        fail(f"the store did not take the journal: {result.error}")
    j.clear()
    applied = sum(1 for o in result.outcomes if o.settlement and not o.settlement.duplicate)
    click.echo(f"journal {j.path}: {applied} applied, {len(entries) - applied} already in the "
               f"store")
