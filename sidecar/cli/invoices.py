"""``sidecar invoice``, ``sidecar invoices``, ``sidecar credit-note``, ``sidecar reconcile``."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..config import Config, ConfigError, load_config
from ..invoices import (
    InvoiceError,
    InvoiceSettings,
    Issued,
    Period,
    PeriodError,
    Reconciliation,
    Renderer,
    draft_invoice,
    find_invoice,
    issue_credit_note,
    issue_invoice,
    list_invoices,
    load_invoice,
    reconcile,
    reconciliation_json,
    write_rendered,
)
from ..money import MoneyError, parse_amount
from .app import Context, cli, emit_json, fail, parse_when, pass_ctx

_FORMAT = click.Choice(["html", "pdf", "both"])


def _config(path: str | None) -> Config:
    try:
        return load_config(path)  # None: the defaults and $SIDECAR_TABLE__KEY
    except ConfigError as exc:
        fail(str(exc), 2)
        raise  # unreachable: fail() exits


def _when_ms(text: str | None, option: str) -> int:
    if text is None:
        return int(time.time() * 1000)
    return int(parse_when(text, option).timestamp() * 1000)


def _summary(issued: Issued, paths: list[Path]) -> dict[str, object]:
    inv = issued.invoice
    return {"number": inv.number, "kind": inv.kind, "new": issued.new, "draft": inv.draft,
            "account": inv.account, "period": inv.period, "currency": inv.currency,
            "net": str(inv.net), "tax": str(inv.tax), "total": str(inv.total),
            "calls": inv.calls, "refers_to": inv.refers_to or None, "sha256": issued.sha256,
            "files": [str(p) for p in paths]}


def _renderer(cfg: Config) -> Renderer:
    """The renderer, its templates checked before anything is issued (exit 2 if broken)."""
    try:
        renderer = Renderer(cfg.invoice_template_dir or None)
        renderer.check()
    except InvoiceError as exc:
        fail(str(exc), 2)
        raise
    return renderer


def _render(issued: Issued, renderer: Renderer, fmt: str, out: Path) -> list[Path]:
    try:
        return write_rendered(renderer.render(issued, fmt), out)
    except InvoiceError as exc:
        fail(str(exc))
        raise
    except OSError as exc:
        fail(f"cannot write to {out}: {exc.strerror}")
        raise


@cli.command("invoice")
@click.option("--account", default=None, help="Account code.")
@click.option("--period", default=None, help="Billing month, e.g. 2026-11 (UTC).")
@click.option("--number", default=None, help="Re-render this issued invoice or credit note.")
@click.option("--format", "fmt", type=_FORMAT, default="both", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Directory the files are written to.")
@click.option("--config", "config_path", default=None, metavar="FILE",
              help="TOML config with the [invoice] section (provider, templates, due days).")
@click.option("--date", default=None, help="Invoice date (ISO 8601, default now).")
@click.option("--draft", is_flag=True, help="Render without issuing (no number, not stored).")
@click.option("--reissue", is_flag=True,
              help="Issue a new invoice for a period whose invoice was fully credited.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def invoice(ctx: Context, account: str | None, period: str | None, number: str | None,
            fmt: str, out: Path, config_path: str | None, date: str | None, draft: bool,
            reissue: bool, as_json: bool) -> None:
    """Issue (or re-render) the invoice of an account for a month, as HTML and/or PDF.

    An issued invoice is frozen: running this again renders the same document. Call
    detail goes into the document, or into NUMBER-calls.csv (attached to the PDF) when
    the period has more calls than [invoice] detail_csv_over."""
    cfg = _config(config_path)
    renderer = _renderer(cfg)
    try:
        if number:
            if account or period or draft or reissue:
                fail("--number re-renders an issued document: give it alone", 2)
            issued = load_invoice(ctx.conn, number)
        else:
            if not account or not period:
                fail("give --account and --period (or --number)", 2)
                return
            p = Period.parse(period)
            settings = InvoiceSettings.from_config(cfg)
            now = _when_ms(date, "--date")
            issued = draft_invoice(ctx.conn, account, p, settings, now_ms=now) if draft else \
                issue_invoice(ctx.conn, account, p, settings, now_ms=now, reissue=reissue)
    except (InvoiceError, PeriodError) as exc:
        fail(str(exc))
        return
    paths = _render(issued, renderer, fmt, out)
    if as_json:
        emit_json(_summary(issued, paths))
        return
    inv = issued.invoice
    what = "draft" if inv.draft else ("issued" if issued.new else "already issued, re-rendered")
    click.echo(f"{inv.number} {what}: {inv.account} {inv.period}, {inv.calls} calls, "
               f"net {inv.net} + {inv.tax_label} {inv.tax} = total {inv.total} "
               f"{inv.currency}")
    for path in paths:
        click.echo(f"  {path}")


@cli.command("invoices")
@click.option("--account", default=None, help="Only this account's documents.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def invoices(ctx: Context, account: str | None, as_json: bool) -> None:
    """List issued invoices and credit notes, newest first."""
    rows = list_invoices(ctx.conn, account)
    if as_json:
        emit_json(rows)
        return
    t = Table("number", "kind", "account", "period", "issued", "refers to", "net", "tax",
              "total", "calls")
    for r in rows:
        t.add_row(str(r["number"]), str(r["kind"]), str(r["account"]), str(r["period"]),
                  str(r["issued"])[:10], str(r["refers_to"] or ""),
                  f"{r['net']} {r['currency']}", str(r["tax"]), str(r["total"]), str(r["calls"]))
    Console().print(t)


@cli.command("credit-note")
@click.argument("number")
@click.option("--reason", required=True, help="Why the invoice is corrected (printed).")
@click.option("--amount", default=None,
              help="Net amount to credit (default: all of the invoice not yet credited).")
@click.option("--format", "fmt", type=_FORMAT, default="both", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True)
@click.option("--config", "config_path", default=None, metavar="FILE")
@click.option("--date", default=None, help="Credit note date (ISO 8601, default now).")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def credit_note(ctx: Context, number: str, reason: str, amount: str | None, fmt: str,
                out: Path, config_path: str | None, date: str | None, as_json: bool) -> None:
    """Correct issued invoice NUMBER with a credit note (the invoice never changes)."""
    cfg = _config(config_path)
    renderer = _renderer(cfg)
    try:
        value = None if amount is None else parse_amount(amount)
    except MoneyError as exc:
        raise click.BadParameter(str(exc), param_hint="--amount") from exc
    try:
        issued = issue_credit_note(ctx.conn, number, reason, now_ms=_when_ms(date, "--date"),
                                   amount=value)
    except InvoiceError as exc:
        fail(str(exc))
        return
    paths = _render(issued, renderer, fmt, out)
    if as_json:
        emit_json(_summary(issued, paths))
        return
    inv = issued.invoice
    click.echo(f"{inv.number} issued: credits {inv.refers_to} net {-inv.net} + "
               f"{inv.tax_label} {-inv.tax} = {-inv.total} {inv.currency}")
    for path in paths:
        click.echo(f"  {path}")


@cli.command("reconcile")
@click.option("--account", default=None, help="Account code.")
@click.option("--period", default=None, help="Billing month, e.g. 2026-11.")
@click.option("--number", default=None, help="An issued invoice (instead of account+period).")
@click.option("--config", "config_path", default=None, metavar="FILE",
              help="For a period not yet invoiced: the settings of the draft.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def reconcile_cmd(ctx: Context, account: str | None, period: str | None, number: str | None,
                  config_path: str | None, as_json: bool) -> None:
    """Prove an invoice line by line against the CDRs and the ledger (exit 1 if not).

    Uses the issued invoice of the account and period, else a draft built now."""
    try:
        if number is None:
            if not account or not period:
                fail("give --account and --period (or --number)", 2)
                return
            p = Period.parse(period)
            found = find_invoice(ctx.conn, account, p)
            if found:
                inv = load_invoice(ctx.conn, found).invoice
            else:
                settings = InvoiceSettings.from_config(_config(config_path))
                inv = draft_invoice(ctx.conn, account, p, settings,
                                    now_ms=_when_ms(None, "")).invoice
        else:
            inv = load_invoice(ctx.conn, number).invoice
        rec = reconcile(ctx.conn, inv)
    except (InvoiceError, PeriodError, ValueError) as exc:
        fail(str(exc))
        return
    if as_json:
        emit_json(reconciliation_json(rec))
    else:
        _print_reconciliation(rec)
    if not rec.ok:
        raise SystemExit(1)


def _print_reconciliation(rec: Reconciliation) -> None:
    console = Console()
    console.print(f"[bold]Reconciliation of {rec.number}[/] — account {rec.account}, period "
                  f"{rec.period}, {rec.currency}, {rec.cdrs} CDRs")
    t = Table("line", "destination", "calls", "exact (CDRs)", "rounded", "invoice", "",
              title="Lines rebuilt from the CDRs")
    for ln in rec.lines:
        t.add_row(ln.kind, ln.label, str(ln.calls), str(ln.exact), str(ln.rounded),
                  "missing" if ln.invoiced is None else str(ln.invoiced),
                  "[green]ok[/]" if ln.ok else "[red]MISMATCH[/]")
    console.print(t)
    c = Table("identity", "expected", "invoice", "", title="Sums")
    for ck in rec.checks:
        c.add_row(ck.what, ck.expected, ck.actual,
                  "[green]ok[/]" if ck.ok else "[red]MISMATCH[/]")
    console.print(c)
    console.print(f"rounding: sum of rounded lines - exact sum = {rec.rounding_difference}")
    for note in rec.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print("[green]reconciled to the cent[/]" if rec.ok else "[red]NOT reconciled[/]")

