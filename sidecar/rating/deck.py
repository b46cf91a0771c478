"""Rate decks: the CSV format carriers publish, parsed into rate lines.

One row per destination breakout::

    destination;code;rate_usd;increment;effective_from
    Germany Fixed;4930;0.0095;1/1;2026-06-01

Semicolon- or comma-separated (decided from the header). Columns, by header name:

=====================  =========  ===================================================
column                 required   meaning
=====================  =========  ===================================================
destination            yes        breakout name (``name`` also accepted)
code                   yes        dialled prefix, E.164 digits (``prefix`` accepted)
rate / rate_<ccy>      yes        price per minute; ``rate_usd`` also names the currency
increment              yes        ``X/Y`` seconds
effective_from         yes        ``YYYY-MM-DD`` (00:00 UTC) or an ISO 8601 date-time
connection_fee         no         charged once per answered call
minimum_charge         no         an answered call costs at least this
short_call_seconds     no         calls shorter than this many seconds ...
short_call_surcharge   no         ... pay this surcharge on top
origin                 no         ``EEA`` / ``NON-EEA``: price for callers of that origin
currency               no         ISO 4217 code of the row (must agree with the rest)
=====================  =========  ===================================================

A deck is all or nothing: any problem refuses the whole file, and the error names the
file, line and column of every problem found.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TextIO, TypeVar

from ..money import ZERO, MoneyError, check_currency, parse_amount
from ..numbers import ORIGIN_CLASSES
from .increments import Increment, IncrementError

_T = TypeVar("_T")

MAX_REPORTED_PROBLEMS = 20

_ALIASES = {
    "destination": "destination",
    "name": "destination",
    "code": "code",
    "prefix": "code",
    "rate": "rate",
    "rate_per_minute": "rate",
    "increment": "increment",
    "effective_from": "effective_from",
    "effective_date": "effective_from",
    "connection_fee": "connection_fee",
    "minimum_charge": "minimum_charge",
    "short_call_seconds": "short_call_seconds",
    "short_call_surcharge": "short_call_surcharge",
    "origin": "origin",
    "currency": "currency",
}
_REQUIRED = ("destination", "code", "rate", "increment", "effective_from")


@dataclass(frozen=True, slots=True)
class RateLine:
    """One breakout of a deck: what calls to ``prefix`` cost from ``effective_from``."""

    destination: str
    prefix: str
    rate: Decimal  # per minute
    increment: Increment
    effective_from: datetime  # UTC
    currency: str
    connection_fee: Decimal = ZERO
    minimum_charge: Decimal = ZERO
    short_call_seconds: int = 0
    short_call_surcharge: Decimal = ZERO
    origin: str = ""  # "" applies to every caller
    version: int = 0  # deck version this line was imported with

    @property
    def effective_ts(self) -> int:
        """``effective_from`` as a Unix timestamp (seconds)."""
        return int(self.effective_from.timestamp())


@dataclass(frozen=True)
class DeckProblem:
    """One thing wrong with a deck, located by file, line and column."""

    source: str
    line: int
    column: int
    column_name: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}"
        if self.column:
            where += f":{self.column}"
        name = f" ({self.column_name})" if self.column_name else ""
        return f"{where}{name}: {self.message}"


class DeckError(ValueError):
    """A deck that was refused. ``problems`` lists every problem found (up to a limit)."""

    def __init__(self, problems: list[DeckProblem], more: int = 0) -> None:
        self.problems = problems
        self.more = more
        lines = [str(p) for p in problems]
        if more:
            lines.append(f"... and {more} more problems")
        super().__init__("deck refused, nothing imported:\n  " + "\n  ".join(lines))


@dataclass
class ParsedDeck:
    """The lines of a deck that passed every check, and the deck's currency."""

    lines: list[RateLine]
    currency: str
    columns: list[str] = field(default_factory=list)


def parse_effective(text: str) -> datetime:
    """Parse an effective date: ``YYYY-MM-DD`` means 00:00 UTC; naive date-times are UTC."""
    s = text.strip()
    if len(s) == 10:
        d = date.fromisoformat(s)
        return datetime(d.year, d.month, d.day, tzinfo=UTC)
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[DeckProblem] = []
        self.more = 0

    def add(self, line: int, column: int, name: str, message: str) -> None:
        if len(self.items) < MAX_REPORTED_PROBLEMS:
            self.items.append(DeckProblem(self.source, line, column, name, message))
        else:
            self.more += 1

    def raise_if_any(self) -> None:
        if self.items:
            raise DeckError(self.items, self.more)


def _sniff_delimiter(header: str) -> str:
    return ";" if header.count(";") >= header.count(",") and ";" in header else ","


def parse_deck(
    stream: TextIO | Iterable[str], source: str = "<deck>", currency: str | None = None
) -> ParsedDeck:
    """Parse and check a whole deck. Raise :class:`DeckError` naming every problem.

    ``currency`` is the plan's currency when the deck itself does not name one
    (no ``rate_<ccy>`` header and no ``currency`` column).
    """
    it: Iterator[str] = iter(stream)
    problems = _Problems(source)
    header_line = next(it, None)
    while header_line is not None and not header_line.strip():
        header_line = next(it, None)
    if header_line is None:
        problems.add(1, 0, "", "the deck is empty (a header line is expected)")
        problems.raise_if_any()
        raise AssertionError  # pragma: no cover
    header_line = header_line.lstrip("\ufeff")
    delimiter = _sniff_delimiter(header_line)
    header = next(csv.reader([header_line], delimiter=delimiter))
    columns: dict[str, int] = {}
    header_currency: str | None = None
    for i, raw in enumerate(header):
        name = raw.strip().lower()
        canon = _ALIASES.get(name)
        if canon is None and name.startswith("rate_") and len(name) == 8:
            canon = "rate"
            try:
                header_currency = check_currency(name[5:])
            except MoneyError as exc:
                problems.add(1, i + 1, raw.strip(), str(exc))
        if canon is None:
            problems.add(1, i + 1, raw.strip(), f"unknown column '{raw.strip()}'")
            continue
        if canon in columns:
            problems.add(1, i + 1, raw.strip(), f"column '{canon}' appears twice")
            continue
        columns[canon] = i
    for req in _REQUIRED:
        if req not in columns:
            problems.add(1, 0, "", f"missing column '{req}'")
    problems.raise_if_any()
    names = {idx: header[idx].strip() for idx in columns.values()}
    deck_currency = header_currency or (check_currency(currency) if currency else None)
    if deck_currency is None and "currency" not in columns:
        problems.add(1, 0, "", "the deck does not name its currency: use a rate_<ccy> column, "
                     "a currency column, or give the plan's currency")
        problems.raise_if_any()

    lines: list[RateLine] = []
    seen: dict[tuple[str, str, datetime], int] = {}
    width = len(header)
    col = columns
    opt_fee = col.get("connection_fee")
    opt_min = col.get("minimum_charge")
    opt_scs = col.get("short_call_seconds")
    opt_sur = col.get("short_call_surcharge")
    opt_origin = col.get("origin")
    opt_ccy = col.get("currency")
    i_dest, i_code, i_rate, i_inc, i_eff = (col[c] for c in _REQUIRED)

    # Decks repeat their amounts, increments and dates: each distinct text that parses
    # is parsed once (the values are immutable, so lines share them).
    amounts: dict[str, Decimal] = {}
    increments: dict[str, Increment] = {}
    dates: dict[str, datetime] = {}

    def parsed(cache: dict[str, _T], parse: Callable[[str], _T], error: type[ValueError],
               row: list[str], idx: int, lineno: int, message: str = "") -> _T | None:
        """A required field, parsed once per distinct text; None (and the problem
        recorded: ``message`` with ``{text}``, else the parser's own) if it is bad."""
        text = row[idx]
        value = cache.get(text)
        if value is None:
            try:
                value = cache[text] = parse(text)
            except error as exc:
                problems.add(lineno, idx + 1, names[idx],
                             message.format(text=text.strip()) if message else str(exc))
                return None
        return value

    def amount(row: list[str], idx: int | None, lineno: int) -> Decimal:
        if idx is None:
            return ZERO
        text = row[idx]
        value = amounts.get(text)
        if value is not None:
            return value
        if not text.strip():
            return ZERO
        try:
            value = amounts[text] = parse_amount(text)
        except MoneyError as exc:
            problems.add(lineno, idx + 1, names[idx], str(exc))
            return ZERO
        return value

    for lineno, row in enumerate(csv.reader(it, delimiter=delimiter), start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != width:
            problems.add(lineno, 0, "", f"{len(row)} fields where the header has {width}")
            continue
        ok = True
        dest = row[i_dest].strip()
        if not dest:
            problems.add(lineno, i_dest + 1, names[i_dest], "empty destination name")
            ok = False
        code = row[i_code].strip().lstrip("+")
        if not code.isdigit() or not code.isascii() or len(code) > 15:
            problems.add(lineno, i_code + 1, names[i_code],
                         f"'{row[i_code].strip()}' is not a prefix of 1 to 15 digits")
            ok = False
        rate = parsed(amounts, parse_amount, MoneyError, row, i_rate, lineno)
        inc = parsed(increments, Increment.parse, IncrementError, row, i_inc, lineno)
        eff = parsed(dates, parse_effective, ValueError, row, i_eff, lineno,
                     "'{text}' is not a date like 2026-06-01")
        if rate is None or inc is None or eff is None:
            ok = False
            rate = ZERO if rate is None else rate
            inc = Increment(1, 1) if inc is None else inc
            eff = datetime(1970, 1, 1, tzinfo=UTC) if eff is None else eff
        fee = amount(row, opt_fee, lineno)
        minimum = amount(row, opt_min, lineno)
        surcharge = amount(row, opt_sur, lineno)
        short_secs = 0
        if opt_scs is not None and row[opt_scs].strip():
            txt = row[opt_scs].strip()
            if txt.isdigit():
                short_secs = int(txt)
            else:
                problems.add(lineno, opt_scs + 1, names[opt_scs],
                             f"'{txt}' is not a whole number of seconds")
                ok = False
        origin = ""
        if opt_origin is not None:
            origin = row[opt_origin].strip().upper().replace("_", "-").replace("NONEEA", "NON-EEA")
            if origin and origin not in ORIGIN_CLASSES:
                problems.add(lineno, opt_origin + 1, names[opt_origin],
                             f"unknown origin class '{row[opt_origin].strip()}' "
                             f"(expected one of {', '.join(ORIGIN_CLASSES)} or empty)")
                ok = False
        line_ccy = deck_currency
        if opt_ccy is not None and row[opt_ccy].strip():
            try:
                line_ccy = check_currency(row[opt_ccy])
            except MoneyError as exc:
                problems.add(lineno, opt_ccy + 1, names[opt_ccy], str(exc))
                ok = False
            else:
                if deck_currency is None:
                    deck_currency = line_ccy
                elif line_ccy != deck_currency:
                    problems.add(lineno, opt_ccy + 1, names[opt_ccy],
                                 f"currency {line_ccy} differs from the deck's {deck_currency}")
                    ok = False
        if line_ccy is None:
            problems.add(lineno, (opt_ccy or 0) + 1, "currency", "no currency for this row")
            ok = False
        if not ok:
            continue
        key = (code, origin, eff)
        first = seen.get(key)
        if first is not None:
            problems.add(lineno, i_code + 1, names[i_code],
                         f"prefix {code} with effective_from {row[i_eff].strip()}"
                         f"{' for origin ' + origin if origin else ''} already on line {first}")
            continue
        seen[key] = lineno
        assert line_ccy is not None
        lines.append(RateLine(dest, code, rate, inc, eff, line_ccy, fee, minimum, short_secs,
                              surcharge, origin))
    if not lines and not problems.items:
        problems.add(2, 0, "", "the deck has a header but no rate lines")
    problems.raise_if_any()
    assert deck_currency is not None
    return ParsedDeck(lines, deck_currency, [header[i].strip() for i in range(width)])


def parse_deck_text(text: str, source: str = "<deck>", currency: str | None = None) -> ParsedDeck:
    """:func:`parse_deck` on a string."""
    return parse_deck(io.StringIO(text), source, currency)


def write_deck(lines: Iterable[RateLine], out: TextIO, currency: str) -> int:
    """Write lines in the carrier format (semicolons), adding optional columns only
    when some line uses them. Returns the number of lines written."""
    rows = list(lines)
    extra: list[str] = []
    if any(r.connection_fee for r in rows):
        extra.append("connection_fee")
    if any(r.minimum_charge for r in rows):
        extra.append("minimum_charge")
    if any(r.short_call_seconds or r.short_call_surcharge for r in rows):
        extra += ["short_call_seconds", "short_call_surcharge"]
    if any(r.origin for r in rows):
        extra.append("origin")
    w = csv.writer(out, delimiter=";", lineterminator="\n")
    w.writerow(["destination", "code", f"rate_{currency.lower()}", "increment",
                "effective_from", *extra])
    for r in rows:
        eff = r.effective_from
        eff_txt = eff.date().isoformat() if (eff.hour, eff.minute, eff.second) == (0, 0, 0) \
            else eff.isoformat()
        values = {
            "connection_fee": format(r.connection_fee, "f"),
            "minimum_charge": format(r.minimum_charge, "f"),
            "short_call_seconds": str(r.short_call_seconds),
            "short_call_surcharge": format(r.short_call_surcharge, "f"),
            "origin": r.origin,
        }
        # format(..., "f") keeps the deck's own scale: 0.0210 stays 0.0210.
        w.writerow([r.destination, r.prefix, format(r.rate, "f"), str(r.increment), eff_txt,
                    *(values[e] for e in extra)])
    return len(rows)
