"""``sidecar replay``: a capture in, the CDRs and FAS verdicts the live path would give."""

from __future__ import annotations

import sqlite3
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

from ..charging import Charger, ChargingConfig
from ..charging.model import AccountKind
from ..media.pcap import CaptureError, read_capture
from ..money import round_currency, to_text
from ..replay.run import Replay, ReplayResult
from ..replay.signalling import SipTracker
from ..store.accounts import add_account, ledger_for
from ..store.bundles import bundle_book
from ..store.conn import Db, describe, is_url, open_db
from ..store.db import connect
from ..store.decks import PlanCache, PlanNotFound
from ..store.fraud import countries_called
from ..store.fx import load_fx
from ..supervision.calls import CallControl, ControlConfig
from ..supervision.media import MediaConfig, MediaSupervisor
from .app import Context, cli, emit_json, fail, pass_ctx

REPLAY_ACCOUNT = "replay"
# A what-if account that can always pay: rating, not credit control, is the point.
_UNLIMITED = Decimal("1000000000")


def _what_if_db(source: str | Path, plan: str) -> sqlite3.Connection:
    """An in-memory database holding one plan of ``source`` (a SQLite file, read only
    and as it is, or a PostgreSQL URL) and an unlimited account."""
    if is_url(source):
        src: Any = open_db(source)
    else:
        if not Path(source).exists():
            raise click.UsageError(f"database {source} does not exist (needed for --plan)")
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    mem = connect(":memory:")
    try:
        # The source may predate columns this version has: copy the columns both have.
        cols = {t: [c for c in _columns(mem, t) if c in _columns(src, t)]
                for t in ("plans", "deck_versions", "rates")}
        # Only active deck versions count (an import may be writing a staged one).
        active = "AND state = 'active'" if "state" in cols["deck_versions"] else ""
        versions = [r[0] for r in src.execute(
            f"SELECT version FROM deck_versions WHERE plan = ? {active}", (plan,))]
        if not versions:
            raise PlanNotFound(f"no plan '{plan}' in {describe(source)}")
        for table, where, args in (
                ("plans", "name = ?", (plan,)),
                ("deck_versions", f"plan = ? {active}", (plan,)),
                ("rates", f"plan = ? AND version IN ({', '.join('?' * len(versions))})",
                 (plan, *versions))):
            names = ", ".join(cols[table])
            rows = [tuple(to_text(v) if isinstance(v, Decimal) else v for v in r)
                    for r in src.execute(f"SELECT {names} FROM {table} WHERE {where}", args)]
            mem.executemany(f"INSERT INTO {table} ({names}) VALUES "
                            f"({', '.join('?' * len(cols[table]))})", rows)
    finally:
        src.close()
    add_account(mem, REPLAY_ACCOUNT, plan, AccountKind.POSTPAID, credit_limit=_UNLIMITED,
                now_ms=0)
    return mem


def _columns(conn: Any, table: str) -> list[str]:
    """A table's columns (an empty list where it does not exist)."""
    if isinstance(conn, sqlite3.Connection):
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    return [r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
        "AND table_schema = current_schema() ORDER BY ordinal_position", (table,))]


def _rel(ms: int | None, base: int | None) -> str:
    if ms is None or base is None:
        return "-"
    return f"+{(ms - base) / 1000:.3f} s"


def _print_calls(result: ReplayResult, show_auth: bool) -> None:
    """One block per call: readable in any terminal width, and greppable."""
    for r in result.calls:
        base = r.invite_ms
        when = "-" if base is None else datetime.fromtimestamp(base / 1000, UTC).strftime(
            "%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
        click.echo(f"call {r.call_id}  {r.caller or '?'} -> {r.callee or '?'}"
                   + (f"  route {r.route}" if r.route else ""))
        end = "ended" if r.answer_ms is not None else f"final {r.final_code or '-'}"
        click.echo(f"  INVITE {when}  ringing {_rel(r.ringing_ms, base)}  200 OK "
                   f"{_rel(r.answer_ms, base)}  {end} {_rel(r.ended_ms, base)}")
        click.echo(f"  first media: caller {_rel(r.caller_media_ms, base)}, callee "
                   f"{_rel(r.callee_media_ms, base)}")
        if r.billable_ms is not None:
            cost = "" if r.cost is None else \
                f"  cost {r.currency} {round_currency(r.cost, r.currency or 'USD')}"
            click.echo(f"  billable from {_rel(r.billable_ms, base)}: {r.billable_seconds} s"
                       + cost)
        else:
            up = r.signalled_ms
            click.echo(f"  not billed ({r.disposition})"
                       + (f", up {up / 1000:.1f} s after the 200 OK" if up is not None else ""))
        verdict = r.verdict or "ok"
        click.echo(f"  FAS verdict: {verdict}" + (f" - {r.reasons}" if r.reasons else ""))
        if show_auth and r.auth:
            click.echo(f"  not charged: {r.auth}")
        if r.would_end:
            click.echo(f"  the live sidecar would have ended it: {r.would_end}")


def _summary(result: ReplayResult) -> dict[str, object]:
    cap = result.capture
    return {"packets": result.packets, "rtp_packets": result.rtp_packets,
            "frames_read": cap.packets_read, "frames_skipped": dict(cap.skipped),
            "truncated_file": cap.truncated_file, "sip": {
                "messages": result.sip.messages, "duplicates": result.sip.duplicates,
                "dialogs": result.sip.dialogs, "bad": dict(result.sip.bad)},
            "cdrs_written": len(result.cdrs),
            "media_not_captured": sum(r.verdict == "media-not-captured"
                                      for r in result.calls)}


def replay_file(path: Path, control: CallControl, *, account_override: str = "",
                sip_ports: frozenset[int] = frozenset({5060}), show_progress: bool = False
                ) -> ReplayResult:
    """Replay one capture through ``control`` (raises CaptureError for a bad file)."""
    reader = read_capture(path)
    replay = Replay(control, SipTracker(sip_ports=sip_ports), account_override=account_override)
    if not show_progress:
        return replay.run(reader)
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"replaying {path.name}", total=reader.size)
        result = replay.run(reader,
                            progress=lambda: bar.update(task, completed=reader.position))
    return result


@cli.command("replay")
@click.argument("capture", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--plan", default=None,
              help="Price every call with this plan (read from the database); nothing is "
                   "written: a what-if.")
@click.option("--db", "write_db", default=None, metavar="PATH|URL",
              help="Write the CDRs the live sidecar would, to this store (accounts "
                   "resolved as live). With --plan: only where the plan is read from.")
@click.option("--grace-ms", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Callee media this soon after the 200 OK confirms the answer.")
@click.option("--sip-port", "sip_ports", type=click.IntRange(1, 65535), multiple=True,
              help="Port(s) carrying SIP over TCP (default 5060); UDP SIP is found anywhere.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: calls and counters.")
@pass_ctx
def replay_cmd(ctx: Context, capture: Path, plan: str | None, write_db: str | None,
               grace_ms: int, sip_ports: tuple[int, ...], as_json: bool) -> None:
    """Replay a pcap/pcapng CAPTURE: per call its signalling and media times, billable
    start and seconds, cost and False Answer Supervision verdict, from the same code the
    live sidecar runs."""
    account_override = ""
    try:
        if plan is not None:
            conn: Db = _what_if_db(write_db or ctx.target, plan)
            account_override = REPLAY_ACCOUNT
        elif write_db is not None:
            conn = open_db(write_db)
        else:
            conn = connect(":memory:")  # verdicts only: no plan, no accounts
    except PlanNotFound as exc:
        fail(str(exc))
        return
    charger = Charger(ledger_for(conn), PlanCache(conn), ChargingConfig())
    charger.fx = load_fx(conn)  # accounts paying in another currency than their plan
    charger.bundles = bundle_book(conn)  # free-minute bundles, drawn on as live
    if write_db is not None:  # the new-country rule starts from the store's history
        for (account, country), last_ms in countries_called(conn, 0).items():
            charger.guard.seed(account, country, last_ms)
    control = CallControl(charger, MediaSupervisor(MediaConfig(grace_ms=grace_ms)),
                          ControlConfig(supervise_rejected=True))
    try:
        result = replay_file(capture, control, account_override=account_override,
                             sip_ports=frozenset(sip_ports or (5060,)),
                             show_progress=not as_json and sys.stderr.isatty())
    except CaptureError as exc:
        fail(str(exc))
        return
    # Resellers' floats the replay opened go back to the resellers, as when a sidecar stops.
    charger.release_floats(int((result.last_ts or 0) * 1000))
    if as_json:
        emit_json({"file": str(capture), "calls": [r.to_dict() for r in result.calls],
                   "summary": _summary(result)})
        return
    _print_calls(result, show_auth=plan is not None or write_db is not None)
    s = _summary(result)
    skipped = sum(result.capture.skipped.values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(result.capture.skipped.items()))
    click.echo(f"{len(result.calls)} calls, {s['packets']} payloads ({s['rtp_packets']} RTP), "
               f"{skipped} frames skipped" + (f" ({reasons})" if reasons else "")
               + f", {result.sip.messages} SIP messages, "
                  f"{len(result.cdrs)} CDRs" + (f" written to {write_db}"
                                                 if write_db and not plan else ""))
    if s["media_not_captured"]:
        click.echo(f"warning: {s['media_not_captured']} answered call(s) billed from the "
                   "200 OK with no FAS verdict: the capture holds no RTP of their address "
                   "family (signalling only, or not the media's interface)", err=True)

