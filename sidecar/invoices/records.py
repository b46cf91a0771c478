"""Call records: reading CDRs from SQLite, their JSON form, and spreadsheet-safe CSV.

A call belongs to the time it **ended** (``ended_ms``): that is when it was settled and
the ledger charged it, so filters on CDRs, invoice periods, daily spend and the ledger
all agree on which day and month a call falls into.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import IO, NamedTuple

from ..money import fmt
from ..store.conn import Db, filters

# Every column of the cdrs table, in table order (the API and CSV export show them all).
CDR_COLUMNS = (
    "id", "call_ref", "call_id", "account", "plan", "caller", "callee", "destination",
    "prefix", "origin", "rate", "increment", "currency", "offered_ms", "ringing_ms",
    "answered_ms", "billable_ms", "media_ms", "ended_ms", "duration_ms", "billed_seconds",
    "usage", "connection_fee", "surcharge", "minimum_uplift", "cost", "charged", "written_off",
    "credited", "disposition", "sip_code", "ended_by", "end_reason", "fas_verdict",
    "fas_reasons", "route", "media", "node", "signalled_ms", "buy_cost", "margin",
    "deck_currency", "deck_cost", "fx_rate", "bundle", "bundle_period", "bundle_seconds",
)
MONEY_COLUMNS = frozenset({"rate", "usage", "connection_fee", "surcharge", "minimum_uplift",
                           "cost", "charged", "written_off", "credited"})
TIME_COLUMNS = ("offered_ms", "ringing_ms", "answered_ms", "billable_ms", "media_ms",
                "ended_ms")

# OWASP CSV injection: a cell a spreadsheet would read as a formula (or DDE) starts with
# one of these. Caller names and numbers come from the wire and are attacker-controlled.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Some spreadsheets skip leading blanks before looking for a formula: look past them too.
_BLANKS = " \t\r\n\x0b\x0c\u00a0\u3000"


class UnknownAccount(LookupError):
    """An account code that neither the accounts table nor any CDR knows."""


def check_account(conn: Db, code: str) -> None:
    """Raise :class:`UnknownAccount` unless ``code`` is an account (or a CDR names it), so a
    typo in ``--account`` is an error rather than an empty report."""
    if conn.execute("SELECT 1 FROM accounts WHERE code = ?", (code,)).fetchone() is None and \
            conn.execute("SELECT 1 FROM cdrs WHERE account = ? LIMIT 1",
                         (code,)).fetchone() is None:
        raise UnknownAccount(f"account '{code}' not found")


def safe_cell(value: object) -> object:
    """A CSV cell that no spreadsheet evaluates: text starting (after any blanks) with
    ``= + - @``, tab or CR gets a leading single quote. Numbers we formatted ourselves
    (int, Decimal) are left alone: a plain number is never a formula. A Decimal is
    written with its scale and never in exponent notation (``0.00000000``, not ``0E-8``)."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value)
    if text.startswith(_FORMULA_START) or text.lstrip(_BLANKS).startswith(_FORMULA_START):
        return "'" + text
    return text


def write_csv(out: IO[str], header: Sequence[str], rows: Iterable[Sequence[object]]) -> int:
    """Write a header and rows with every cell made safe; returns the number of rows."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow([safe_cell(h) for h in header])
    n = 0
    for row in rows:
        w.writerow([safe_cell(v) for v in row])
        n += 1
    return n


@functools.lru_cache(maxsize=4096)
def _date_prefix(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%dT")


def iso(ms: int | None) -> str:
    """Unix ms as ISO 8601 UTC with milliseconds (``2026-11-21T12:00:00.000Z``); '' for None."""
    if ms is None:
        return ""
    # Integer arithmetic for the time of day and a cached date: the call-detail CSV of a
    # large invoice formats hundreds of thousands of these.
    day, rest = divmod(ms, 86_400_000)
    seconds, milli = divmod(rest, 1000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{_date_prefix(day)}{hours:02d}:{minutes:02d}:{seconds:02d}.{milli:03d}Z"


def query_cdrs(
    conn: Db,
    *,
    account: str | None = None,
    from_ms: int | None = None,
    to_ms: int | None = None,
    after_id: int = 0,
    limit: int | None = None,
    call_ref: str | None = None,
    accounts: Collection[str] | None = None,
) -> Iterator[dict[str, object]]:
    """CDRs as dicts of their stored values (money as the stored exact text), oldest id
    first; ``from_ms`` inclusive and ``to_ms`` exclusive on the call's end time;
    ``accounts``: only theirs."""
    where, args = filters(("id > ?", after_id), ("account = ?", account),
                          ("call_ref = ?", call_ref), ("ended_ms >= ?", from_ms),
                          ("ended_ms < ?", to_ms))
    if accounts is not None:
        where += f" AND account IN ({', '.join('?' for _ in accounts) or 'NULL'})"
        args += sorted(accounts)
    sql = f"SELECT {', '.join(CDR_COLUMNS)} FROM cdrs WHERE {where} ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    page: list[dict[str, object]] = []
    for row in conn.execute(sql, args):
        page.append(dict(zip(CDR_COLUMNS, row, strict=True)))
        if len(page) >= 500:
            yield from _with_tiers(conn, page)
            page = []
    yield from _with_tiers(conn, page)


TIER_COLUMNS = ("tier", "account", "plan", "currency", "destination", "prefix", "rate",
                "increment", "billed_seconds", "usage", "connection_fee", "surcharge",
                "minimum_uplift", "cost", "charged", "written_off", "credited", "margin")
_TIER_MONEY = frozenset({"rate", "usage", "connection_fee", "surcharge", "minimum_uplift",
                         "cost", "charged", "written_off", "credited", "margin"})


def _with_tiers(conn: Db, rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """CDRs with their resellers' prices (``tiers``: a list, nearest reseller first; []
    when there is none), read from cdr_tiers in one query per page."""
    if not rows:
        return rows
    refs = [str(r["call_ref"]) for r in rows]
    found: dict[str, list[dict[str, object]]] = {}
    q = (f"SELECT call_ref, {', '.join(TIER_COLUMNS)} FROM cdr_tiers WHERE call_ref IN "
         f"({', '.join('?' for _ in refs)}) ORDER BY call_ref, tier")
    for t in conn.execute(q, refs):
        found.setdefault(str(t[0]), []).append(dict(zip(TIER_COLUMNS, t[1:], strict=True)))
    for r in rows:
        r["tiers"] = found.get(str(r["call_ref"]), [])
    return rows


#: A reseller's rows for the calls of the accounts below it (``cdr_tiers``), with the
#: columns of a CDR an invoice and its reconciliation read: the tier's price, the call's
#: times, numbers and outcome.
RESOLD_COLUMNS = (
    "call_ref", "offered_ms", "answered_ms", "ended_ms", "duration_ms", "billed_seconds",
    "caller", "callee", "destination", "origin", "rate", "increment", "usage",
    "connection_fee", "surcharge", "minimum_uplift", "cost", "charged", "written_off",
    "credited", "disposition", "fas_verdict", "fas_reasons", "bundle", "bundle_seconds")
RESOLD_SQL = (
    "SELECT t.call_ref, c.offered_ms, c.answered_ms, t.ended_ms, c.duration_ms, "
    "t.billed_seconds, c.caller, c.callee, t.destination, '', t.rate, t.increment, t.usage, "
    "t.connection_fee, t.surcharge, t.minimum_uplift, t.cost, t.charged, t.written_off, "
    "t.credited, c.disposition, c.fas_verdict, c.fas_reasons, '', 0 FROM cdr_tiers t "
    "JOIN cdrs c ON c.call_ref = t.call_ref WHERE t.account = ? AND t.ended_ms >= ? AND "
    "t.ended_ms < ? ORDER BY t.ended_ms, t.call_ref")


def resold_calls(conn: Db, account: str, from_ms: int, to_ms: int
                 ) -> Iterator[dict[str, object]]:
    """The calls of the accounts below reseller ``account`` that ended in the period, at
    its own price (``RESOLD_COLUMNS``)."""
    for row in conn.execute(RESOLD_SQL, (account, from_ms, to_ms)):
        yield dict(zip(RESOLD_COLUMNS, row, strict=True))


def cdr_json(row: dict[str, object]) -> dict[str, object]:
    """A CDR for JSON output: times both as ISO 8601 and Unix ms, money as exact strings,
    and the per-call rating grouped under ``rating``."""
    out: dict[str, object] = {k: row[k] for k in (
        "id", "call_ref", "call_id", "account", "plan", "caller", "callee", "destination",
        "prefix", "origin", "route", "node", "disposition", "sip_code", "ended_by",
        "end_reason", "signalled_ms", "duration_ms", "billed_seconds", "charged",
        "written_off", "credited", "fas_verdict", "fas_reasons")}
    # Media supervision's evidence (JSON text as stored); null when the call had none.
    out["media_evidence"] = row["media"] or None
    for col in TIME_COLUMNS:
        v = row[col]
        out[col] = v
        out[col[:-3]] = iso(v) if isinstance(v, int) else None
    rating: dict[str, object] = {k: row[k] for k in (
        "rate", "increment", "currency", "usage", "connection_fee", "surcharge",
        "minimum_uplift", "cost")}
    out["rating"] = rating
    for k in ("charged", "written_off", "credited"):
        out[k] = fmt(Decimal(str(row[k])))
    # Least-cost routing: what the carrier charges for the call and what it leaves
    # (null for a call the sidecar did not route).
    for k in ("buy_cost", "margin"):
        out[k] = None if row[k] is None else fmt(Decimal(str(row[k])))
    # Rated on a deck in another currency: the deck's price and the rate used (null else).
    out["deck_currency"] = row["deck_currency"] or None
    out["deck_cost"] = None if row["deck_cost"] is None else fmt(Decimal(str(row["deck_cost"])))
    out["fx_rate"] = row["fx_rate"]
    # A call on a free-minute bundle: which, its period, and the billed seconds it gave.
    out["bundle"] = row["bundle"] or None
    out["bundle_period"] = iso(row["bundle_period"]) if isinstance(
        row["bundle_period"], int) else None
    out["bundle_seconds"] = row["bundle_seconds"]
    tiers = row.get("tiers")
    out["tiers"] = [{k: fmt(Decimal(str(v))) if k in _TIER_MONEY and v is not None else v
                     for k, v in t.items()} for t in tiers  # type: ignore[attr-defined]
                    ] if tiers else None
    for k in ("rate", "usage", "connection_fee", "surcharge", "minimum_uplift", "cost"):
        rating[k] = fmt(Decimal(str(row[k])))
    return out


def cdr_csv_rows(rows: Iterable[dict[str, object]]) -> Iterator[list[object]]:
    """CSV rows for :data:`CSV_HEADER`: times as ISO 8601, money as exact numbers."""
    for r in rows:
        out: list[object] = []
        for col in CSV_HEADER:
            if col in _CSV_TIME:
                v = r[_CSV_TIME[col]]
                out.append(iso(v) if isinstance(v, int) else "")
            elif col in MONEY_COLUMNS:
                out.append(Decimal(str(r[col])))
            elif col in _OPTIONAL_MONEY:
                out.append("" if r[col] is None else Decimal(str(r[col])))
            else:
                out.append(r[col])
        yield out


_CSV_TIME = {"start": "offered_ms", "ringing": "ringing_ms", "answer": "answered_ms",
             "media_start": "media_ms", "billing_start": "billable_ms", "end": "ended_ms"}
CSV_HEADER = (
    "id", "call_ref", "account", "caller", "callee", "destination", "prefix", "origin",
    "route", "disposition", "sip_code", "start", "ringing", "answer", "media_start",
    "billing_start", "end",
    "signalled_ms", "duration_ms", "billed_seconds", "rate", "increment", "currency", "usage",
    "connection_fee", "surcharge", "minimum_uplift", "cost", "charged", "written_off",
    "credited", "fas_verdict", "fas_reasons", "ended_by", "end_reason", "node",
    "buy_cost", "margin", "deck_currency", "deck_cost", "fx_rate", "bundle",
    "bundle_seconds",
)
#: Amounts only some calls have (empty in the CSV otherwise): a routed call's buy cost
#: and margin, a converted call's price in its deck's currency.
_OPTIONAL_MONEY = frozenset({"buy_cost", "margin", "deck_cost"})


class CallRow(NamedTuple):
    """One call of an invoice's call detail (money as exact text, as stored)."""

    call_ref: str
    offered_ms: int | None
    answered_ms: int | None
    ended_ms: int | None
    duration_ms: int
    billed_seconds: int
    caller: str
    number: str
    destination: str
    origin: str
    rate: str
    increment: str
    cost: str
    charged: str
    written_off: str
    credited: str
    fas_verdict: str
    bundle_seconds: int = 0  # of billed_seconds, those a free-minute bundle gave


DETAIL_HEADER = (
    "call_ref", "start", "answer", "end", "duration_s", "billed_seconds", "caller", "number",
    "destination", "origin", "rate_per_minute", "increment", "cost", "charged", "written_off",
    "credited", "fas_verdict", "bundle_seconds",
)


def detail_csv_rows(rows: Iterable[CallRow]) -> Iterator[list[object]]:
    """An invoice's call detail as CSV rows for :data:`DETAIL_HEADER` (money as stored:
    plain non-negative decimals, which no spreadsheet reads as a formula)."""
    for r in rows:
        d = r.duration_ms
        yield [r.call_ref, iso(r.offered_ms), iso(r.answered_ms), iso(r.ended_ms),
               f"{d // 1000}.{d % 1000:03d}", r.billed_seconds, r.caller, r.number,
               r.destination, r.origin, r.rate, r.increment, r.cost, r.charged,
               r.written_off, r.credited, r.fas_verdict, r.bundle_seconds]
