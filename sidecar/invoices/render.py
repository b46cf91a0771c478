"""Rendering documents: Jinja2 templates to HTML, WeasyPrint to PDF, the call detail CSV.

Templates are looked up first in the operator's template directory (``[invoice]
template_dir``), then in the ones shipped in ``sidecar/templates``: an operator replaces
a whole document (``invoice.html.j2``) or just its style (``invoice.css``). Everything is
autoescaped: caller names come from the wire and are hostile input.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import jinja2
from markupsafe import Markup

from .build import InvoiceError
from .chart import daily_spend_svg
from .issue import Issued
from .model import Invoice
from .records import DETAIL_HEADER, CallRow, detail_csv_rows, write_csv

FORMATS = ("html", "pdf", "both")

# fontTools stamps each embedded font subset with the current time unless
# SOURCE_DATE_EPOCH is set (reproducible builds); PDF renders set it to the document's
# issue time so that re-rendering an issued invoice gives the same bytes. The variable is
# process-wide, hence the lock (WeasyPrint renders are CPU-bound anyway).
_PDF_LOCK = threading.Lock()


def fmt_money(value: Decimal | str, places: int = 2) -> str:
    """An amount as printed: half-up to ``places`` decimals with thousands separators."""
    v = Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"{v:,.{places}f}"


def fmt_exact(value: Decimal | str, places: int = 2) -> str:
    """An exact amount (a rate, a call's cost at the money scale): every significant
    decimal, but at least ``places``."""
    v = Decimal(value)
    s = format(v, "f")
    whole, _, frac = s.partition(".")
    frac = frac.rstrip("0").ljust(places, "0")
    return f"{whole}.{frac}" if frac else whole


FIGURE_SPACE = "\u2007"  # as wide as a digit: pads decimals so that points line up


def fmt_exact_column(value: Decimal | str, places: int = 2, width: int = 8) -> str:
    """An exact amount for a column of them (:func:`fmt_exact`), its decimals padded with
    figure spaces to ``width`` so that the decimal points line up when right-aligned."""
    s = fmt_exact(value, places)
    decimals = len(s.partition(".")[2])
    return s + FIGURE_SPACE * (max(width, places) - decimals)


def minor_unit_name(places: int) -> str:
    """How the document names the currency's minor unit, for the rounding notes."""
    return {2: "cent", 0: "whole unit", 3: "thousandth"}.get(places, "minor unit")


def fmt_date(ms: int) -> str:
    """A document date: ``21 Nov 2026``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%d %b %Y")


def fmt_time(ms: int | None) -> str:
    """A call event time in UTC: ``2026-11-21 12:00:03``."""
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_clock(ms: int | None, same_day_as: int | None = None) -> str:
    """A call event's time of day (``12:00:03``), with its date when it falls on another
    day than ``same_day_as`` (a call across midnight)."""
    if ms is None:
        return ""
    if same_day_as is not None and ms // 86_400_000 == same_day_as // 86_400_000:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")
    return fmt_time(ms)


def fmt_duration(ms: int) -> str:
    """A call's duration as ``m:ss.t`` (``h:mm:ss.t`` from an hour)."""
    tenths = (ms + 50) // 100
    s, t = divmod(tenths, 10)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}.{t}" if h else f"{m}:{s:02d}.{t}"


def fmt_minutes(seconds: int) -> str:
    """Billed seconds as minutes with two decimals (informative: amounts come from CDRs)."""
    return fmt_money(Decimal(seconds) / 60, 2)


def fmt_percent(rate: Decimal) -> str:
    """A tax rate as a percentage without trailing zeros: 0.19 -> ``19%``."""
    p = (Decimal(rate) * 100).normalize()
    return f"{p:f}%"


def is_nonzero(value: Decimal | str) -> bool:
    """Whether an amount (stored text or Decimal) is not zero."""
    return Decimal(value) != 0


def environment(template_dir: str | Path | None = None) -> jinja2.Environment:
    """The Jinja2 environment: operator templates first, shipped ones second, autoescaped,
    strict about undefined names (a typo in a template is an error, not a blank)."""
    loaders: list[jinja2.BaseLoader] = []
    if template_dir:
        if not Path(template_dir).is_dir():
            raise InvoiceError(f"template directory '{template_dir}' not found")
        loaders.append(jinja2.FileSystemLoader(str(template_dir)))
    loaders.append(jinja2.PackageLoader("sidecar", "templates"))
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters.update(money=fmt_money, exact=fmt_exact, exact_column=fmt_exact_column,
                       date=fmt_date, time=fmt_time,
                       clock=fmt_clock,
                       duration=fmt_duration, minutes=fmt_minutes, percent=fmt_percent,
                       nonzero=is_nonzero)
    env.tests["nonzero"] = is_nonzero
    return env


def file_stem(doc: Invoice) -> str:
    """The file name (without extension) of a document: its number, or for a draft
    ``draft-ACCOUNT-PERIOD`` with anything unsafe in a file name replaced."""
    stem = doc.number if not doc.draft else f"draft-{doc.account}-{doc.period}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem)


def detail_csv(detail: Sequence[CallRow]) -> str:
    """An invoice's call detail as CSV text (spreadsheet-safe)."""
    out = io.StringIO()
    write_csv(out, DETAIL_HEADER, detail_csv_rows(detail))
    return out.getvalue()


@dataclass
class Rendered:
    """What rendering a document produced (file contents, not yet written)."""

    stem: str
    html: str = ""
    pdf: bytes = b""
    csv: str = ""  # the call detail, when it is not in the document


class Renderer:
    """Renders documents through one template environment."""

    def __init__(self, template_dir: str | Path | None = None) -> None:
        self.env = environment(template_dir)

    def check(self) -> None:
        """Load (compile) every document template, so that a broken operator template is
        found before an invoice is issued rather than after."""
        for name in ("invoice.html.j2", "credit_note.html.j2"):
            try:
                self.env.get_template(name)
            except jinja2.TemplateSyntaxError as exc:
                raise InvoiceError(f"template {exc.filename or exc.name or name} line "
                                   f"{exc.lineno}: {exc.message}") from exc
            except jinja2.TemplateError as exc:
                raise InvoiceError(f"template {name}: {exc}") from exc

    def html(self, issued: Issued) -> str:
        """The document as a standalone HTML page (inline CSS and SVG, no scripts)."""
        doc = issued.invoice
        name = "credit_note.html.j2" if doc.is_credit_note else "invoice.html.j2"
        places = doc.minor_units
        try:
            template = self.env.get_template(name)
            return template.render(
                inv=doc, places=places, minor_unit=minor_unit_name(places),
                detail=issued.detail if doc.detail_in_document else [],
                csv_name=f"{file_stem(doc)}-calls.csv",
                chart=daily_spend_svg(doc.days, doc.currency, places) if doc.days
                else Markup(""))
        except jinja2.TemplateSyntaxError as exc:
            # An operator's template: say which file and line, not a traceback.
            raise InvoiceError(f"template {exc.filename or exc.name or name} line "
                               f"{exc.lineno}: {exc.message}") from exc
        except jinja2.TemplateError as exc:
            raise InvoiceError(f"template {name}: {exc}") from exc

    def pdf(self, html: str, attachments: Sequence[tuple[str, bytes]] = (),
            epoch_s: int = 0) -> bytes:
        """The HTML rendered to PDF by WeasyPrint, with files attached (the call-detail
        CSV of a large period). No URL is fetched: only ``data:`` resources load.
        ``epoch_s`` is the timestamp embedded fonts carry (same input, same bytes)."""
        import weasyprint  # slow to import; only PDF output needs it

        fetcher = weasyprint.urls.URLFetcher(allowed_protocols=["data"])
        stamp = datetime.fromtimestamp(epoch_s, UTC)
        files = [weasyprint.Attachment(string=data, name=name, description=name,
                                       created=stamp, modified=stamp)
                 for name, data in attachments]
        doc = weasyprint.HTML(string=html, url_fetcher=fetcher)
        with _PDF_LOCK:
            saved = os.environ.get("SOURCE_DATE_EPOCH")
            os.environ["SOURCE_DATE_EPOCH"] = str(epoch_s)
            try:
                return bytes(doc.write_pdf(attachments=files or None))
            finally:
                if saved is None:
                    del os.environ["SOURCE_DATE_EPOCH"]
                else:
                    os.environ["SOURCE_DATE_EPOCH"] = saved

    def render(self, issued: Issued, formats: str = "both") -> Rendered:
        """HTML and/or PDF (``formats``: html, pdf or both), plus the call-detail CSV when
        the period has more calls than go into the document."""
        if formats not in FORMATS:
            raise InvoiceError(f"format must be one of {', '.join(FORMATS)}")
        doc = issued.invoice
        out = Rendered(file_stem(doc))
        if not doc.detail_in_document:
            out.csv = detail_csv(issued.detail)
        html = self.html(issued)
        if formats in ("html", "both"):
            out.html = html
        if formats in ("pdf", "both"):
            attach = [(f"{out.stem}-calls.csv", out.csv.encode())] if out.csv else []
            out.pdf = self.pdf(html, attach, doc.issued_ms // 1000)
        return out


def write_rendered(r: Rendered, out_dir: str | Path) -> list[Path]:
    """Write what was rendered into ``out_dir`` (created if needed); returns the paths."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    if r.html:
        p = d / f"{r.stem}.html"
        p.write_text(r.html, encoding="utf-8")
        paths.append(p)
    if r.pdf:
        p = d / f"{r.stem}.pdf"
        p.write_bytes(r.pdf)
        paths.append(p)
    if r.csv:
        p = d / f"{r.stem}-calls.csv"
        p.write_text(r.csv, encoding="utf-8")
        paths.append(p)
    return paths
