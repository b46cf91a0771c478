"""``sidecar fas``: False Answer Supervision per route and per call."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from ..invoices.analytics import route_calls
from ..invoices.records import query_cdrs
from ..supervision.media import FAS_VERDICTS
from ..supervision.routes import PatternConfig, score_routes
from .app import Context, cli, emit_json, parse_when, pass_ctx
from .cdrs import check_account_option


def _range(from_: str | None, to: str | None) -> tuple[int | None, int | None]:
    """``--from``/``--to`` as Unix ms (calls belong to the time they ended)."""
    return (int(parse_when(from_, "--from").timestamp() * 1000) if from_ else None,
            int(parse_when(to, "--to").timestamp() * 1000) if to else None)


@cli.group("fas")
def fas_group() -> None:
    """False Answer Supervision: route scores and the calls found FAS."""


@fas_group.command("routes")
@click.option("--from", "from_", default=None, help="Ended at or after (ISO 8601).")
@click.option("--to", default=None, help="Ended before (ISO 8601).")
@click.option("--account", default=None, help="Only this account's calls.")
@click.option("--min-calls", type=click.IntRange(min=1), default=20, show_default=True,
              help="Answered calls a route needs before it is judged.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def routes_cmd(ctx: Context, from_: str | None, to: str | None, account: str | None,
               min_calls: int, as_json: bool) -> None:
    """Score each route for FAS patterns (most suspicious first), with the evidence."""
    check_account_option(ctx, account)
    from_ms, to_ms = _range(from_, to)
    scores = score_routes(route_calls(ctx.conn, from_ms=from_ms, to_ms=to_ms, account=account),
                          PatternConfig(min_calls=min_calls))
    if as_json:
        emit_json([s.to_dict() for s in scores])
        return
    t = Table(title="FAS score per route")
    for col in ("route", "attempts", "answered", "FAS calls", "instant", "short", "score",
                "why"):
        t.add_column(col, overflow="fold")
    for s in scores:
        t.add_row(s.route or "(none)", str(s.attempts), str(s.answered),
                  str(sum(s.fas_calls.values())), str(s.instant_answers), str(s.short_calls),
                  str(s.score) if s.judged else f"- (< {min_calls} answered)",
                  "; ".join(s.reasons))
    Console().print(t)


@fas_group.command("calls")
@click.option("--from", "from_", default=None, help="Ended at or after (ISO 8601).")
@click.option("--to", default=None, help="Ended before (ISO 8601).")
@click.option("--account", default=None)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def calls_cmd(ctx: Context, from_: str | None, to: str | None, account: str | None,
              as_json: bool) -> None:
    """Calls with a FAS verdict: what was credited and why."""
    check_account_option(ctx, account)
    from_ms, to_ms = _range(from_, to)
    names = ("call_id", "account", "callee", "route", "disposition", "fas_verdict", "cost",
             "credited", "fas_reasons")
    rows = [{n: r[n] for n in names}
            for r in query_cdrs(ctx.conn, account=account, from_ms=from_ms, to_ms=to_ms)
            if r["fas_verdict"] in FAS_VERDICTS]
    if as_json:
        emit_json(rows)
        return
    t = Table(title=f"{len(rows)} calls with a FAS verdict")
    for n in names:
        t.add_column(n, overflow="fold")
    for r in rows:
        t.add_row(*(str(r[n]) for n in names))
    Console().print(t)
