"""Root command group, shared options and error handling."""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import click

from .. import __version__
from ..money import fmt
from ..store.conn import Db, describe, is_url, open_db
from ..store.db import SchemaTooNew, db_path


class Context:
    """What every subcommand shares: where the database is, opened on first use."""

    def __init__(self, db: str | None) -> None:
        #: What --db (or $SIDECAR_DB) named: a SQLite path or a PostgreSQL URL.
        self.target = db or str(db_path(None))
        self.path = db_path(db)
        self.explicit = db is not None  # --db or $SIDECAR_DB given
        self._conn: Db | None = None

    @property
    def conn(self) -> Db:
        """The store (SQLite or PostgreSQL), opened with its schema up to date."""
        if self._conn is None:
            where = describe(self.target)
            try:
                self._conn = open_db(self.target if is_url(self.target) else self.path)
            except SchemaTooNew as exc:
                fail(f"{where}: {exc}")
            except Exception as exc:  # sqlite3.Error, psycopg.Error: name the store
                if not _is_db_error(exc):
                    raise
                fail(f"{where}: cannot open the database: {exc}")
        assert self._conn is not None
        return self._conn


def _is_db_error(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        return True
    mod = type(exc).__module__
    return mod.startswith("psycopg")


pass_ctx = click.make_pass_decorator(Context)


def parse_when(text: str | None, option: str = "--at") -> datetime:
    """An ISO 8601 date or date-time (naive means UTC); ``None`` means now."""
    if text is None:
        return datetime.now(UTC)
    try:
        if len(text) == 10:
            dt = datetime.fromisoformat(text + "T00:00:00")
        else:
            dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"'{text}' is not an ISO 8601 date-time", param_hint=option
                                 ) from exc
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _json_default(value: Any) -> str:
    """Amounts as people read them (``money.fmt``: plain digits, no exponent, no trailing
    zeros, as the HTTP API prints them); anything else as its text."""
    if isinstance(value, Decimal):
        return fmt(value)
    return str(value)


def emit_json(obj: Any) -> None:
    """Print one JSON document to stdout."""
    click.echo(json.dumps(obj, indent=None, sort_keys=False, default=_json_default))


def fail(message: str, code: int = 1) -> None:
    """Print an error to stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", envvar="SIDECAR_DB", default=None, metavar="PATH|URL",
              help="The store: a SQLite database path, or a postgresql:// URL "
                   "(default: $SIDECAR_DB, else ./sidecar.db).")
@click.version_option(__version__, prog_name="sidecar")
@click.pass_context
def cli(click_ctx: click.Context, db: str | None) -> None:
    """Real-time billing sidecar for Kamailio: rate decks, rating, credit control."""
    click_ctx.obj = Context(db)


def main() -> None:
    """Console-script entry point."""
    from . import (  # noqa: F401  (registers the subcommands)
        accounts,
        api,
        bundles,
        carriers,
        cdrs,
        config,
        db,
        decks,
        fas,
        fraud,
        fx,
        invoices,
        journal,
        rate,
        replay,
        route,
        run,
        tokens,
    )

    cli()
