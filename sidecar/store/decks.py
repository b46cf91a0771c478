"""Rate plans and their deck versions in SQLite."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from ..charging import PlanRates
from ..money import check_currency, fmt, to_text
from ..numbers import NumberPlan
from ..rating import DeckError, DeckProblem, Increment, RateLine, RateTable, SecondRounding
from ..rating.deck import ParsedDeck, parse_deck, parse_effective
from .db import transaction, utils


class PlanNotFound(LookupError):
    """The named rate plan does not exist."""


@dataclass(frozen=True)
class Plan:
    """A rate plan's settings."""

    name: str
    currency: str
    notice_days: int
    second_rounding: SecondRounding
    chunk_seconds: int
    number_plan: NumberPlan


@dataclass(frozen=True)
class ImportResult:
    plan: str
    version: int
    lines: int
    currency: str
    increases: int
    decreases: int
    new_prefixes: int


def get_plan(conn: sqlite3.Connection, name: str) -> Plan:
    """Load a plan's settings or raise :class:`PlanNotFound`."""
    row = conn.execute(
        "SELECT name, currency, notice_days, second_rounding, chunk_seconds, "
        "international_prefix, national_prefix, country_code, strip_prefixes "
        "FROM plans WHERE name = ?", (name,)).fetchone()
    if row is None:
        known = [r[0] for r in conn.execute("SELECT name FROM plans ORDER BY name")]
        hint = f" (plans: {', '.join(known)})" if known else " (no plans yet: import a deck)"
        raise PlanNotFound(f"rate plan '{name}' not found{hint}")
    strip = tuple(p for p in row[8].split(",") if p)
    return Plan(row[0], row[1], row[2], SecondRounding(row[3]), row[4],
                NumberPlan(row[5], row[6], row[7], strip))


def list_plans(conn: sqlite3.Connection) -> list[dict[str, object]]:
    """Every plan with its latest version and line count."""
    rows = conn.execute(
        "SELECT p.name, p.currency, p.notice_days, COALESCE(MAX(v.version), 0), "
        "COALESCE(SUM(v.lines), 0) FROM plans p LEFT JOIN deck_versions v ON v.plan = p.name "
        "GROUP BY p.name ORDER BY p.name").fetchall()
    return [dict(zip(("plan", "currency", "notice_days", "versions", "lines"), r, strict=True))
            for r in rows]


def set_plan(
    conn: sqlite3.Connection,
    name: str,
    *,
    notice_days: int | None = None,
    second_rounding: SecondRounding | None = None,
    chunk_seconds: int | None = None,
    national_prefix: str | None = None,
    country_code: str | None = None,
    international_prefix: str | None = None,
    strip_prefixes: tuple[str, ...] | None = None,
) -> Plan:
    """Change a plan's settings (only the ones given)."""
    get_plan(conn, name)
    changes: dict[str, object] = {}
    if notice_days is not None:
        changes["notice_days"] = notice_days
    if second_rounding is not None:
        changes["second_rounding"] = second_rounding.value
    if chunk_seconds is not None:
        if chunk_seconds < 1:
            raise ValueError("chunk_seconds must be at least 1")
        changes["chunk_seconds"] = chunk_seconds
    if national_prefix is not None:
        changes["national_prefix"] = national_prefix
    if country_code is not None:
        changes["country_code"] = country_code
    if international_prefix is not None:
        changes["international_prefix"] = international_prefix
    if strip_prefixes is not None:
        changes["strip_prefixes"] = ",".join(strip_prefixes)
    if changes:
        sets = ", ".join(f"{k} = ?" for k in changes)
        with transaction(conn):
            conn.execute(f"UPDATE plans SET {sets} WHERE name = ?", (*changes.values(), name))
    return get_plan(conn, name)


def _row_to_line(r: tuple[object, ...]) -> RateLine:
    (version, destination, prefix, origin, rate, increment, eff, fee, minimum, scs, sur,
     ccy) = r
    return RateLine(
        str(destination), str(prefix), Decimal(str(rate)), Increment.parse(str(increment)),
        parse_effective(str(eff)), str(ccy), Decimal(str(fee)), Decimal(str(minimum)),
        int(str(scs)), Decimal(str(sur)), str(origin), int(str(version)))


def load_lines(conn: sqlite3.Connection, plan: str) -> list[RateLine]:
    """Every line of every version of a plan."""
    rows = conn.execute(
        "SELECT version, destination, prefix, origin, rate, increment, effective_from, "
        "connection_fee, minimum_charge, short_call_seconds, short_call_surcharge, currency "
        "FROM rates WHERE plan = ? ORDER BY id", (plan,))
    return [_row_to_line(r) for r in rows]


def load_table(conn: sqlite3.Connection, plan: str) -> RateTable:
    """The plan's rate table, ready to rate calls."""
    p = get_plan(conn, plan)
    return RateTable(load_lines(conn, plan), p.currency, number_plan=p.number_plan,
                     rounding=p.second_rounding)


def _check_notice(
    parsed: ParsedDeck, current: RateTable, as_of: datetime, notice_days: int, source: str,
    line_numbers: dict[int, int],
) -> tuple[int, int, int]:
    """Refuse rate increases that start sooner than the plan's notice period.

    An increase is judged against what numbers under the same code would pay under the
    plan as it stands (longest-prefix match), at the new line's effective date.
    """
    problems: list[DeckProblem] = []
    deadline = as_of + timedelta(days=notice_days)
    increases = decreases = new = 0
    for i, line in enumerate(parsed.lines):
        at = max(line.effective_ts, int(as_of.timestamp()))
        old = current.lookup(line.prefix, at, line.origin)
        if old is None:
            new += 1
            continue
        dearer = line.rate > old.rate or line.connection_fee > old.connection_fee
        if line.rate < old.rate:
            decreases += 1
        if not dearer:
            continue
        increases += 1
        if line.effective_from < deadline:
            problems.append(DeckProblem(
                source, line_numbers[i], 0, "effective_from",
                f"increase for {line.prefix} ({line.destination}) from {fmt(old.rate)} to "
                f"{fmt(line.rate)}/min effective {line.effective_from.date().isoformat()} "
                f"gives less than the plan's {notice_days}-day notice (earliest allowed: "
                f"{deadline.date().isoformat()} {deadline.strftime('%H:%M')} UTC)"))
    if problems:
        raise DeckError(problems[:20], max(0, len(problems) - 20))
    return increases, decreases, new


def import_deck(
    conn: sqlite3.Connection,
    plan: str,
    path: str | Path,
    *,
    currency: str | None = None,
    as_of: datetime | None = None,
    notice_days: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Import a deck file as the next version of ``plan`` (created if new).

    All or nothing: a parse problem or a refused increase raises :class:`DeckError`
    and leaves the database unchanged.
    """
    p = Path(path)
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DeckError([DeckProblem(str(p), 0, 0, "", f"not UTF-8 text ({exc.reason} at "
                                     f"byte {exc.start})")]) from exc
    existing = conn.execute("SELECT currency FROM plans WHERE name = ?", (plan,)).fetchone()
    plan_ccy = existing[0] if existing else (check_currency(currency) if currency else None)
    parsed = parse_deck(io.StringIO(text), str(p), plan_ccy)
    if existing and parsed.currency != existing[0]:
        raise DeckError([DeckProblem(str(p), 1, 0, "", f"deck is in {parsed.currency} but plan "
                                     f"'{plan}' is in {existing[0]}")])
    now = as_of or datetime.now(UTC)
    # line numbers for messages: parse again cheaply? keep it simple: rows are in file order.
    line_numbers = _line_numbers(text, len(parsed.lines))
    increases = decreases = new = 0
    if existing:
        settings = get_plan(conn, plan)
        current = RateTable(load_lines(conn, plan), settings.currency)
        increases, decreases, new = _check_notice(
            parsed, current, now, notice_days if notice_days is not None
            else settings.notice_days, str(p), line_numbers)
    else:
        new = len(parsed.lines)
    now_ms = int(now.timestamp() * 1000)
    with transaction(conn):
        if not existing:
            conn.execute(
                "INSERT INTO plans (name, currency, notice_days, created_ms) VALUES (?, ?, ?, ?)",
                (plan, parsed.currency, 7 if notice_days is None else notice_days, now_ms))
        version = conn.execute(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM deck_versions WHERE plan = ?",
            (plan,)).fetchone()[0]
        conn.execute(
            "INSERT INTO deck_versions (plan, version, imported_ms, source, sha256, lines) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (plan, version, now_ms, p.name, hashlib.sha256(raw).hexdigest(), len(parsed.lines)))
        # sqlite-utils inserts in batches; inside our transaction it nests as a savepoint,
        # so the import stays all or nothing.
        table = utils(conn)["rates"]
        done = 0
        batch: list[dict[str, object]] = []
        for ln in parsed.lines:
            batch.append({
                "plan": plan, "version": version, "destination": ln.destination,
                "prefix": ln.prefix, "origin": ln.origin, "rate": to_text(ln.rate),
                "increment": str(ln.increment), "effective_from": ln.effective_from.isoformat(),
                "connection_fee": to_text(ln.connection_fee),
                "minimum_charge": to_text(ln.minimum_charge),
                "short_call_seconds": ln.short_call_seconds,
                "short_call_surcharge": to_text(ln.short_call_surcharge),
                "currency": ln.currency})
            if len(batch) >= 10_000:
                table.insert_all(batch, batch_size=10_000)  # type: ignore[union-attr]
                done += len(batch)
                batch.clear()
                if progress:
                    progress(done)
        if batch:
            table.insert_all(batch, batch_size=10_000)  # type: ignore[union-attr]
        if progress:
            progress(done + len(batch))
    return ImportResult(plan, version, len(parsed.lines), parsed.currency, increases,
                        decreases, new)


def _line_numbers(text: str, count: int) -> dict[int, int]:
    """File line number of the i-th data row (rows are non-blank lines after the header).

    Quoted fields with embedded newlines are not used by any deck format we accept, so
    counting non-blank physical lines is exact."""
    out: dict[int, int] = {}
    i = 0
    header_seen = False
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if not header_seen:
            header_seen = True
            continue
        out[i] = n
        i += 1
        if i >= count:
            break
    return out


def deck_versions(conn: sqlite3.Connection, plan: str) -> list[dict[str, object]]:
    """The import history of a plan, oldest first."""
    get_plan(conn, plan)
    rows = conn.execute(
        "SELECT version, imported_ms, source, sha256, lines FROM deck_versions WHERE plan = ? "
        "ORDER BY version", (plan,)).fetchall()
    return [
        {"version": v, "imported": datetime.fromtimestamp(ms / 1000, UTC).isoformat(
            timespec="seconds"), "source": s, "sha256": h, "lines": n}
        for v, ms, s, h, n in rows]


class PlanCache:
    """Rate plans loaded once and reloaded when a new deck version is imported."""

    def __init__(self, conn: sqlite3.Connection, check_every: float = 1.0) -> None:
        self.conn = conn
        self.check_every = check_every
        self._plans: dict[str, PlanRates] = {}
        self._stamp: object = None
        self._checked = 0.0

    def __call__(self, name: str) -> PlanRates:
        now = time.monotonic()
        if now - self._checked > self.check_every:
            self._checked = now
            stamp = self.conn.execute("SELECT MAX(id) FROM deck_versions").fetchone()[0]
            if stamp != self._stamp:
                self._plans.clear()
                self._stamp = stamp
        rates = self._plans.get(name)
        if rates is None:
            rates = PlanRates(load_table(self.conn, name), get_plan(self.conn, name).chunk_seconds)
            self._plans[name] = rates
        return rates
