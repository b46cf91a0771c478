"""``sidecar api``: serve the HTTP API (loopback by default, bearer token required; the
write endpoints need a separate admin token)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..config import ConfigError, load_config
from ..invoices import InvoiceError, InvoiceSettings
from .app import Context, cli, fail, pass_ctx

if TYPE_CHECKING:
    from aiohttp import web


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
    from ..api import make_app
    from ..api.app import given_tokens

    try:
        cfg = load_config(config_path)  # None: the defaults and $SIDECAR_TABLE__KEY
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
    def tokens_again() -> dict[str, tuple[str, str]]:  # SIGHUP: token files replaced
        again = load_config(config_path)
        return given_tokens(read_token(token_file or again.api_token_file or None),
                            read_token(admin_token_file, "SIDECAR_API_ADMIN_TOKEN",
                                       "--admin-token-file"))

    click.echo(f"sidecar API on http://{host}:{port} (OpenAPI: /openapi.json)", err=True)
    try:
        asyncio.run(_serve(app, host, port, tokens_again))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}")


async def _serve(app: web.Application, host: str, port: int,
                 tokens_again: Callable[[], dict[str, tuple[str, str]]]) -> None:
    """Serve ``app`` until SIGTERM or SIGINT; tell systemd (Type=notify) READY=1 once
    listening and STOPPING=1 at the end. SIGHUP re-reads the token files (``--token-file``,
    ``[api] token_file``, ``--admin-token-file``): a replaced token takes effect without a
    restart; an unreadable or too short one changes nothing."""
    from aiohttp import web

    from ..api.app import TOKENS
    from ..live.systemd import SystemdNotifier

    systemd = SystemdNotifier.from_environment()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def reload() -> None:
        systemd.reloading()
        try:
            given = await asyncio.to_thread(tokens_again)
            tokens = app[TOKENS]
            if not given and not tokens.stored:
                raise ValueError("no token left: 'sidecar token create NAME', or a token file")
            tokens.given = given
            click.echo(f"SIGHUP: API tokens re-read ({len(given)} given, "
                       f"{len(tokens.stored)} in the store)", err=True)
        except (ConfigError, click.ClickException, ValueError) as exc:
            message = exc.format_message() if isinstance(exc, click.ClickException) else exc
            click.echo(f"SIGHUP: tokens not reloaded, nothing changed: {message}", err=True)
        finally:
            systemd.ready(f"serving the API on {host}:{port}")

    reloads: set[asyncio.Task[None]] = set()

    def hangup() -> None:
        task = loop.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        systemd.ready(f"serving the API on {host}:{port}")
        await stop.wait()
        systemd.stopping()
    finally:
        await runner.cleanup()
        systemd.close()
