"""``sidecar token create|list|revoke``: the HTTP API's bearer tokens (long, random,
shown once, stored as their SHA-256, scoped read or admin)."""

from __future__ import annotations

import time

import click

from ..invoices.records import iso
from ..store.tokens import SCOPES, TokenError, create_token, list_tokens, revoke_token
from .app import Context, cli, emit_json, fail, pass_ctx


@cli.group()
def token() -> None:
    """The HTTP API's bearer tokens (a running 'sidecar api' picks changes up within a
    few seconds)."""


@token.command("create")
@click.argument("name")
@click.option("--scope", type=click.Choice(SCOPES), default="read", show_default=True,
              help="read: every GET; admin: the write endpoints too.")
@click.option("--account", default=None,
              help="Read only this account and the accounts below it (a reseller's view).")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@pass_ctx
def token_create(ctx: Context, name: str, scope: str, account: str | None,
                 as_json: bool) -> None:
    """Make a token NAME and print it: this is the only time it is shown (the store
    keeps its hash)."""
    try:
        value = create_token(ctx.conn, name, scope, int(time.time() * 1000), account)
    except TokenError as exc:
        fail(str(exc), 2)
        return
    if as_json:
        emit_json({"name": name, "scope": scope, "account": account, "token": value})
        return
    click.echo(value)
    click.echo(f"token '{name}' ({scope}) made: keep it now, it is not shown again",
               err=True)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@pass_ctx
def token_list(ctx: Context, as_json: bool) -> None:
    """Every token's name, scope and dates (never the token)."""
    rows = list_tokens(ctx.conn)
    if as_json:
        emit_json([{"name": t.name, "scope": t.scope, "account": t.account,
                    "created": iso(t.created_ms), "revoked": iso(t.revoked_ms) or None}
                   for t in rows])
        return
    for t in rows:
        state = f"revoked {iso(t.revoked_ms)}" if t.revoked_ms is not None else "active"
        where = f" account {t.account}+" if t.account else ""
        click.echo(f"{t.name:<24} {t.scope:<6}{where} made {iso(t.created_ms)}  {state}")


@token.command("revoke")
@click.argument("name")
@pass_ctx
def token_revoke(ctx: Context, name: str) -> None:
    """Stop accepting token NAME (kept for the record)."""
    try:
        revoke_token(ctx.conn, name, int(time.time() * 1000))
    except TokenError as exc:
        fail(str(exc))
        return
    click.echo(f"token '{name}' revoked")
