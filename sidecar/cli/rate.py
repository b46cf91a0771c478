"""``sidecar rate``: price one call, or a CSV batch of calls."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from pathlib import Path
from typing import TextIO

import click
from rich.progress import Progress

from ..numbers import InvalidNumber
from ..rating import NoRate, RateTable
from ..store.decks import PlanNotFound, load_table
from .app import Context, cli, emit_json, fail, parse_when, pass_ctx


def duration_ms(text: str) -> int:
    """Seconds as text (``61`` or ``7.25``) to milliseconds; a sub-millisecond rest
    counts as a started millisecond."""
    s = text.strip()
    if s.isdigit():
        return int(s) * 1000
    try:
        value = Decimal(s)
    except InvalidOperation as exc:
        raise ValueError(f"'{text}' is not a duration in seconds") from exc
    if not value.is_finite() or value < 0:
        raise ValueError(f"'{text}' is not a duration in seconds")
    return int((value * 1000).to_integral_value(rounding=ROUND_CEILING))


@cli.command("rate")
@click.option("--plan", required=True)
@click.option("--number", default=None, help="Dialled number (E.164, +E.164, 00..., national).")
@click.option("--duration", default=None, help="Answered duration in seconds (0: unanswered).")
@click.option("--cli", "cli_number", default=None, help="Caller's number, for origin pricing.")
@click.option("--at", default=None, help="Answer time, ISO 8601 (default: now).")
@click.option("--calls", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="CSV of calls: number,duration[,cli][,at]. Output: CSV.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@pass_ctx
def rate_cmd(ctx: Context, plan: str, number: str | None, duration: str | None,
             cli_number: str | None, at: str | None, calls: Path | None, as_json: bool) -> None:
    """Rate a call (--number/--duration) or a batch (--calls)."""
    try:
        table = load_table(ctx.conn, plan)
    except PlanNotFound as exc:
        fail(str(exc))
        return
    when = int(parse_when(at).timestamp())
    if calls is not None:
        rate_batch(table, calls, sys.stdout, when, progress=sys.stderr.isatty())
        return
    if number is None or duration is None:
        fail("give --number and --duration, or --calls FILE", 2)
        return
    try:
        r = table.rate(number, duration_ms(duration), when, cli_number)
    except (NoRate, InvalidNumber, ValueError) as exc:
        if as_json:
            emit_json({"error": "no_rate" if isinstance(exc, NoRate) else "invalid",
                       "message": str(exc)})
            sys.exit(1)
        fail(str(exc))
        return
    ln = r.line
    if as_json:
        emit_json({
            "destination": ln.destination, "prefix": ln.prefix, "increment": str(ln.increment),
            "billed_seconds": r.billed_seconds, "cost": str(r.cost), "currency": ln.currency,
            "number": r.number, "origin": r.origin, "rate": str(ln.rate),
            "connection_fee": str(r.price.connection_fee), "surcharge": str(r.price.surcharge),
            "effective_from": ln.effective_from.isoformat(), "version": ln.version,
        })
        return
    click.echo(f"destination     {ln.destination}")
    click.echo(f"matched prefix  {ln.prefix}" + (f" ({r.origin} origin)" if r.origin else ""))
    click.echo(f"rate            {ln.rate} {ln.currency}/min, increment {ln.increment}")
    click.echo(f"billed seconds  {r.billed_seconds}")
    click.echo(f"cost            {r.cost} {ln.currency}")


_OUT_HEADER = ["number", "duration", "cli", "at", "destination", "prefix", "increment",
               "billed_seconds", "cost", "currency", "error"]


def _rows(fh: TextIO) -> Iterator[list[str]]:
    reader = csv.reader(fh)
    first = next(reader, None)
    if first is None:
        return
    # A header row is recognised by a duration field that is not a number.
    if len(first) >= 2 and first[1].strip().replace(".", "", 1).isdigit():
        yield first
    yield from reader


def rate_batch(table: RateTable, path: Path, out: TextIO, default_at: int,
               progress: bool = False) -> tuple[int, int]:
    """Rate every call of a CSV file, writing one CSV row per call. Returns
    (rated, failed). A row that cannot be rated carries its reason in ``error``."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(_OUT_HEADER)
    at_cache: dict[str, int] = {}
    rated = failed = 0
    total = 0
    if progress:
        with path.open("rb") as fb:
            total = sum(chunk.count(b"\n") for chunk in iter(lambda: fb.read(1 << 20), b""))
    with path.open(encoding="utf-8", newline="") as fh, Progress(
            disable=not progress, transient=True) as bar:
        task = bar.add_task("rating", total=total or None)
        for n, row in enumerate(_rows(fh), start=1):
            if progress and n % 10_000 == 0:
                bar.update(task, completed=n)
            number = row[0] if row else ""
            dur = row[1] if len(row) > 1 else ""
            cli_no = row[2] if len(row) > 2 else ""
            at_txt = row[3] if len(row) > 3 else ""
            try:
                when = default_at
                if at_txt:
                    when = at_cache.get(at_txt) or at_cache.setdefault(
                        at_txt, int(parse_when(at_txt).timestamp()))
                r = table.rate(number, duration_ms(dur), when, cli_no or None)
            except (NoRate, InvalidNumber, ValueError, click.BadParameter) as exc:
                failed += 1
                w.writerow([number, dur, cli_no, at_txt, "", "", "", "", "", "",
                            str(getattr(exc, "message", exc))])
                continue
            rated += 1
            ln = r.line
            w.writerow([number, dur, cli_no, at_txt, ln.destination, ln.prefix, ln.increment,
                        r.price.billed_seconds, r.price.cost, ln.currency, ""])
    return rated, failed
