"""``sidecar db``: schema upgrades, and moving a node's store onto PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import click

from ..store.conn import is_url
from ..store.db import SchemaTooNew
from ..store.migrate import CopyError, copy_to_postgres, upgrade
from .app import Context, cli, emit_json, fail, pass_ctx


@cli.group("db")
def db_cmd() -> None:
    """The database itself: its schema version, upgrades, copies."""


@db_cmd.command("upgrade")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@pass_ctx
def upgrade_cmd(ctx: Context, as_json: bool) -> None:
    """Bring --db (a SQLite path or a postgresql:// URL) to this release's schema.
    A database written by a newer release is refused and left as it is."""
    import psycopg

    try:
        r = upgrade(ctx.target)
    except SchemaTooNew as exc:
        fail(str(exc))
        return
    except psycopg.Error as exc:
        fail(f"PostgreSQL: {exc}")  # the driver's message carries no password
        return
    if as_json:
        emit_json({"database": r.database, "before": r.before, "after": r.after})
        return
    if r.before == r.after:
        click.echo(f"{r.database}: schema version {r.after}, up to date")
    else:
        click.echo(f"{r.database}: schema version {r.before or 'none (new)'} -> {r.after}")


@db_cmd.command("copy")
@click.argument("sqlite_path", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("postgres_url")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
def copy_cmd(sqlite_path: Path, postgres_url: str, as_json: bool) -> None:
    """Copy a SQLite store's accounts, SIP mappings, ledger, live calls and CDRs into an
    empty PostgreSQL database, in one transaction, and prove nothing was lost (row counts,
    sums of money, ledger verify on both sides). Stop the sidecar first."""
    import psycopg

    if not is_url(postgres_url):
        fail(f"'{postgres_url}' is not a PostgreSQL URL (postgresql://...)")
    try:
        r = copy_to_postgres(sqlite_path, postgres_url)
    except (CopyError, SchemaTooNew) as exc:
        fail(str(exc))
        return
    except psycopg.Error as exc:
        fail(f"PostgreSQL: {exc}")
        return
    if as_json:
        emit_json({"source": r.source, "target": r.target, "rows": r.rows, "sums": r.sums,
                   "accounts_verified": r.accounts_verified, "not_copied": r.not_copied})
        return
    click.echo(f"copied {r.source} -> {r.target}:")
    for table, n in r.rows.items():
        click.echo(f"  {table:<13} {n:>9,} rows")
    click.echo(f"ledger verify clean on both sides ({r.accounts_verified} accounts); sums of "
               f"money equal ({len(r.sums)} columns)")
    if r.not_copied:
        click.echo(f"not copied (still SQLite-only: rate plans, decks, invoices): "
                   f"{', '.join(r.not_copied)}")
