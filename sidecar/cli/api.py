"""``sidecar api``: serve the HTTP API (loopback by default, bearer token required; the
write endpoints need a separate admin token)."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import click

from ..config import Config, ConfigError, load_config
from ..invoices import InvoiceError, InvoiceSettings
from .app import Context, cli, fail, pass_ctx


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"'{text}' is not HOST:PORT", param_hint="--listen")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | None, env: str = "SIDECAR_API_TOKEN",
               option: str = "--token-file") -> str:
    """The bearer token: the first line of ``token_file``, else ``$SIDECAR_API_TOKEN``
    (``env``); '' when neither gives one."""
    if token_file:
        p = Path(token_file)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read token file {p}: {exc.strerror}",
                                     param_hint=option) from exc
        if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            click.echo(f"warning: token file {p} is readable by other users "
                       f"(chmod 600 it)", err=True)
        return text.strip().splitlines()[0].strip() if text.strip() else ""
    return os.environ.get(env, "").strip()


@cli.command("api")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Address to serve on (default: [api] listen, else 127.0.0.1:8480).")
@click.option("--token-file", default=None, metavar="FILE",
              help="File holding a read token, at least 32 characters (else [api] "
                   "token_file, else $SIDECAR_API_TOKEN), besides the store's tokens "
                   "('sidecar token create'). The API refuses to start with no token.")
@click.option("--admin-token-file", default=None, metavar="FILE",
              help="File holding an admin token (else $SIDECAR_API_ADMIN_TOKEN), at least "
                   "32 characters, besides the store's admin tokens: the write endpoints "
                   "(limits, fraud lift) accept only admin tokens.")
@click.option("--config", "config_path", default=None, metavar="FILE",
              help="TOML config ([api] and [invoice] sections).")
@pass_ctx
def api(ctx: Context, listen: str | None, token_file: str | None,
        admin_token_file: str | None, config_path: str | None) -> None:
    """Serve the HTTP API: CDRs, decks, balances, live calls, invoices, limits, fraud
    events (reads), and with the admin token an account's limits and fraud lifts.

    The OpenAPI document is at /openapi.json; every endpoint but /health needs
    'Authorization: Bearer TOKEN'."""
    from aiohttp import web

    from ..api import make_app

    try:
        cfg = load_config(config_path) if config_path else Config()
    except ConfigError as exc:
        fail(str(exc), 2)
        return
    token = read_token(token_file or cfg.api_token_file or None)
    admin = read_token(admin_token_file, "SIDECAR_API_ADMIN_TOKEN", "--admin-token-file")
    host, port = parse_listen(listen or cfg.api_listen)
    if not _is_loopback(host):
        click.echo(f"warning: serving on {host}, not loopback: put TLS in front of it",
                   err=True)
    try:
        app = make_app(ctx.conn, token, settings=InvoiceSettings.from_config(cfg),
                       admin_token=admin)
    except (InvoiceError, ValueError) as exc:  # a bad token, no template directory
        fail(str(exc), 2)
        return
    click.echo(f"sidecar API on http://{host}:{port} (OpenAPI: /openapi.json)", err=True)
    try:
        web.run_app(app, host=host, port=port, print=None)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}")
