"""Rate plans and their deck versions in SQLite.

A deck is imported as the next version of its plan in steps that never hold the
database's write lock for long, so that a running sidecar keeps writing meanwhile:

1. the whole deck is checked first (parse, currency, notice period); nothing is written
   if any of it is refused;
2. a short transaction records the version as ``staged``: every reader here ignores
   staged versions (and a plan whose only version is staged);
3. the rates are written in batches, each in its own short transaction;
4. one short transaction makes the version ``active``: all of it at once.

A failure after step 2 removes what was written; an import that died leaves a staged
version nobody sees, which a later import removes (:func:`remove_abandoned_imports`).
Versions become active in the order of their numbers: an import whose plan gained a
version while it ran is refused with :class:`ImportConflict` (its notice check was made
against a plan that no longer stands).

A plan is of one kind: ``sell`` (a customer's rate plan, the default everywhere here) or
``buy`` (a carrier's buy deck, :mod:`.carriers`). Both are imported, versioned and read by
the same code; each reader takes the kind it wants, so a carrier's deck is never listed,
loaded or rated as a sell plan, nor an account put on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..charging import PlanRates
from ..charging.limits import NO_LIMITS, Limits
from ..money import check_currency, fmt, to_text
from ..numbers import NumberPlan
from ..rating import DeckError, DeckProblem, Increment, RateLine, RateTable, SecondRounding
from ..rating.deck import ParsedDeck, parse_deck, parse_effective
from .conn import Db
from .db import transaction
from .dialect import dialect_of, stored_limits

#: Rates written per transaction by :func:`import_deck`: other writers wait at most for
#: one batch (tens of milliseconds).
IMPORT_BATCH_ROWS = 5_000
#: A staged version whose import made no progress for this long is abandoned.
ABANDONED_AFTER_MS = 10 * 60 * 1000

ACTIVE = "active"
STAGED = "staged"
DROPPING = "dropping"

#: Plan kinds: a customer's rate plan, a carrier's buy deck.
SELL = "sell"
BUY = "buy"
PLAN_KINDS = (SELL, BUY)

# A plan is visible once one of its versions is active.
_VISIBLE = ("EXISTS (SELECT 1 FROM deck_versions v WHERE v.plan = plans.name "
            "AND v.state = 'active')")
_PLAN_COLUMNS = ("name, currency, notice_days, second_rounding, chunk_seconds, "
                 "international_prefix, national_prefix, country_code, strip_prefixes, "
                 "revision, limits")
_KIND_NAMES = {SELL: "rate plan", BUY: "buy deck"}
_RATE_COLUMNS = ("version, destination, prefix, origin, rate, increment, effective_from, "
                 "connection_fee, minimum_charge, short_call_seconds, short_call_surcharge, "
                 "currency")
_INSERT_RATE = (
    "INSERT INTO rates (plan, version, destination, prefix, origin, rate, increment, "
    "effective_from, connection_fee, minimum_charge, short_call_seconds, "
    "short_call_surcharge, currency) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


class PlanNotFound(LookupError):
    """The named rate plan does not exist."""


class ImportConflict(DeckError):
    """Another import of the same plan got in the way; nothing was imported.

    Raised when the plan gained an active version while this deck was being imported,
    or when this import's staged version was removed as abandoned. Importing the deck
    again is safe.
    """

    def __init__(self, source: str, message: str) -> None:
        super().__init__([DeckProblem(source, 0, 0, "", message)])


@dataclass(frozen=True)
class Plan:
    """A rate plan's settings."""

    name: str
    currency: str
    notice_days: int
    second_rounding: SecondRounding
    chunk_seconds: int
    number_plan: NumberPlan
    limits: Limits = NO_LIMITS  # the plan's default limits (its accounts inherit them)


@dataclass(frozen=True)
class ImportResult:
    plan: str
    version: int
    lines: int
    currency: str
    increases: int
    decreases: int
    new_prefixes: int


def _plan_row(conn: Db, name: str, kind: str = SELL) -> tuple[Plan, int] | None:
    """A visible plan's settings and their revision, read together."""
    row = conn.execute(f"SELECT {_PLAN_COLUMNS} FROM plans WHERE name = ? AND kind = ? "
                       f"AND {_VISIBLE}", (name, kind)).fetchone()
    if row is None:
        return None
    strip = tuple(p for p in row[8].split(",") if p)
    return (Plan(row[0], row[1], row[2], SecondRounding(row[3]), row[4],
                 NumberPlan(row[5], row[6], row[7], strip),
                 stored_limits(row[10], f"plan {row[0]} limits")), int(row[9]))


def _require_plan(conn: Db, name: str, kind: str = SELL) -> tuple[Plan, int]:
    found = _plan_row(conn, name, kind)
    if found is None:
        known = [r[0] for r in conn.execute(
            f"SELECT name FROM plans WHERE kind = ? AND {_VISIBLE} ORDER BY name", (kind,))]
        hint = f" (plans: {', '.join(known)})" if known else " (no plans yet: import a deck)"
        raise PlanNotFound(f"{_KIND_NAMES.get(kind, kind)} '{name}' not found"
                           f"{hint if kind == SELL else ''}")
    return found


def get_plan(conn: Db, name: str, *, kind: str = SELL) -> Plan:
    """Load a plan's settings or raise :class:`PlanNotFound` (also for a plan of the
    other kind: a carrier's buy deck is not a rate plan)."""
    return _require_plan(conn, name, kind)[0]


def list_plans(conn: Db, *, kind: str = SELL) -> list[dict[str, object]]:
    """Every plan of ``kind`` with its latest version and line count."""
    rows = conn.execute(
        "SELECT p.name, p.currency, p.notice_days, MAX(v.version), SUM(v.lines) "
        "FROM plans p JOIN deck_versions v ON v.plan = p.name WHERE v.state = 'active' "
        "AND p.kind = ? GROUP BY p.name ORDER BY p.name", (kind,)).fetchall()
    return [dict(zip(("plan", "currency", "notice_days", "versions", "lines"), r, strict=True))
            for r in rows]


def plan_revisions(conn: Db, kind: str = SELL) -> dict[str, tuple[int, int]]:
    """Every plan's (latest active deck version, settings revision), in one small query.

    A live process compares this with what it loaded to see what changed: a new version
    (``sidecar deck import``) or new settings (``sidecar plan``).
    """
    rows = conn.execute(
        "SELECT p.name, MAX(v.version), p.revision FROM plans p "
        "JOIN deck_versions v ON v.plan = p.name WHERE v.state = 'active' AND p.kind = ? "
        "GROUP BY p.name", (kind,))
    return {name: (int(version), int(revision)) for name, version, revision in rows}


def set_plan(
    conn: Db,
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
    """Change a plan's settings (only the ones given). A change bumps the plan's
    revision (:func:`plan_revisions`), which tells live processes to pick it up."""
    current = get_plan(conn, name)
    if chunk_seconds is not None and chunk_seconds < 1:
        raise ValueError("chunk_seconds must be at least 1")
    np = current.number_plan
    wanted: dict[str, tuple[object, object]] = {  # column: (given, current)
        "notice_days": (notice_days, current.notice_days),
        "second_rounding": (second_rounding.value if second_rounding is not None else None,
                            current.second_rounding.value),
        "chunk_seconds": (chunk_seconds, current.chunk_seconds),
        "national_prefix": (national_prefix, np.national_prefix),
        "country_code": (country_code, np.country_code),
        "international_prefix": (international_prefix, np.international_prefix),
        "strip_prefixes": (",".join(strip_prefixes) if strip_prefixes is not None else None,
                           ",".join(np.strip_prefixes)),
    }
    changes = {k: given for k, (given, now) in wanted.items()
               if given is not None and given != now}
    if changes:
        sets = ", ".join(f"{k} = ?" for k in changes)
        with transaction(conn):
            conn.execute(f"UPDATE plans SET {sets}, revision = revision + 1 WHERE name = ?",
                         (*changes.values(), name))
    return get_plan(conn, name)


def set_plan_limits(conn: Db, name: str, limits: Limits) -> Plan:
    """Replace a plan's default limits (the accounts on it inherit what they and their
    parents do not set). Bumps the plan's revision, so live processes pick it up."""
    get_plan(conn, name)
    with transaction(conn):
        conn.execute("UPDATE plans SET limits = ?, revision = revision + 1 WHERE name = ?",
                     (limits.to_json() if limits.explicit else "", name))
    return get_plan(conn, name)


class _Memo(dict[Any, Any]):
    """key -> convert(key), each distinct key converted once."""

    def __init__(self, convert: Callable[[Any], Any]) -> None:
        super().__init__()
        self.convert = convert

    def __missing__(self, key: Any) -> Any:
        value = self[key] = self.convert(key)
        return value


def _lines_from_rows(rows: Iterable[Any]) -> list[RateLine]:
    """Rate lines from ``rates`` rows (columns as in ``_RATE_COLUMNS``).

    Decks repeat their increments, dates and amounts a lot: each distinct text is parsed
    once (the values are immutable, so lines share them).
    """
    increments = _Memo(Increment.parse)
    dates = _Memo(parse_effective)
    amounts = _Memo(Decimal)
    return [
        RateLine(destination, prefix, amounts[rate], increments[increment], dates[eff], ccy,
                 amounts[fee], amounts[minimum], int(scs), amounts[sur], origin, int(version))
        for (version, destination, prefix, origin, rate, increment, eff, fee, minimum, scs,
             sur, ccy) in rows]


def _active_versions(
    conn: Db, plan: str, after: int = 0, upto: int | None = None
) -> list[int]:
    """The plan's active version numbers in (after, upto], ascending."""
    sql = ("SELECT version FROM deck_versions WHERE plan = ? AND state = 'active' "
           "AND version > ?")
    args: tuple[object, ...] = (plan, after)
    if upto is not None:
        sql += " AND version <= ?"
        args += (upto,)
    return [int(r[0]) for r in conn.execute(sql + " ORDER BY version", args)]


def load_version_lines(conn: Db, plan: str, version: int) -> list[RateLine]:
    """The lines of one active deck version of a plan (none if it is not active)."""
    rows = conn.execute(
        f"SELECT {_RATE_COLUMNS} FROM rates WHERE plan = ? AND version = ? AND EXISTS "
        "(SELECT 1 FROM deck_versions WHERE plan = ? AND version = ? AND state = 'active') "
        "ORDER BY id", (plan, version, plan, version))
    return _lines_from_rows(rows)


def _lines_of(conn: Db, plan: str, versions: Iterable[int]) -> list[RateLine]:
    lines: list[RateLine] = []
    for v in versions:
        lines.extend(load_version_lines(conn, plan, v))
    return lines


def load_lines(conn: Db, plan: str) -> list[RateLine]:
    """Every line of every active version of a plan."""
    return _lines_of(conn, plan, _active_versions(conn, plan))


def load_table(conn: Db, plan: str, *, kind: str = SELL) -> RateTable:
    """The plan's rate table, ready to rate calls (or, ``kind=BUY``, a carrier's buy
    deck ready to price the calls sent to it)."""
    p = get_plan(conn, plan, kind=kind)
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
    conn: Db,
    plan: str,
    path: str | Path,
    *,
    currency: str | None = None,
    as_of: datetime | None = None,
    notice_days: int | None = None,
    progress: Callable[[int], None] | None = None,
    batch_rows: int = IMPORT_BATCH_ROWS,
    kind: str = SELL,
) -> ImportResult:
    """Import a deck file as the next version of ``plan`` (created if new).

    All or nothing: a parse problem or a refused increase raises :class:`DeckError`
    before anything is written; a failure while writing removes what was written and
    re-raises; readers see the new version (and a new plan) only once all of it is in.
    :class:`ImportConflict` (a :class:`DeckError`) when another import of the plan got
    in the way. ``progress(rows_written)`` is called after each batch of ``batch_rows``
    rows is committed, outside any transaction; if it raises, the import is undone.
    ``kind``: a sell plan (the default) or a carrier's buy deck (:data:`BUY`); a deck of
    one kind is refused for a plan of the other.
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    if kind not in PLAN_KINDS:
        raise ValueError(f"plan kind must be one of {', '.join(PLAN_KINDS)}")
    p = Path(path)
    source = str(p)
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DeckError([DeckProblem(source, 0, 0, "", f"not UTF-8 text ({exc.reason} at "
                                     f"byte {exc.start})")]) from exc
    _check_kind(conn, plan, kind, source)
    found = _plan_row(conn, plan, kind)
    settings = found[0] if found else None
    plan_ccy = settings.currency if settings else (check_currency(currency) if currency
                                                   else None)
    parsed = parse_deck(io.StringIO(text), source, plan_ccy)
    if settings and parsed.currency != settings.currency:
        raise DeckError([DeckProblem(source, 1, 0, "", f"deck is in {parsed.currency} but "
                                     f"plan '{plan}' is in {settings.currency}")])
    now = as_of or datetime.now(UTC)
    known = 0  # the plan's latest active version, as the deck was checked against it
    increases = decreases = new = 0
    if settings:
        versions = _active_versions(conn, plan)
        known = versions[-1] if versions else 0
        current = RateTable(_lines_of(conn, plan, versions), settings.currency)
        increases, decreases, new = _check_notice(
            parsed, current, now, notice_days if notice_days is not None
            else settings.notice_days, source, _line_numbers(text, len(parsed.lines)))
    else:
        new = len(parsed.lines)
    now_ms = int(now.timestamp() * 1000)

    remove_abandoned_imports(conn)
    version_id, version = _stage(conn, plan, parsed.currency, source, p.name,
                                 hashlib.sha256(raw).hexdigest(), len(parsed.lines), known,
                                 now_ms, notice_days, kind)
    try:
        done = 0
        lines = parsed.lines
        # Equal dates and increments are stored as equal text: convert each once.
        date_text = _Memo(datetime.isoformat)
        inc_text = _Memo(str)
        for start in range(0, len(lines), batch_rows):
            # Rows are prepared before the transaction: the lock is held for the writes only.
            rows = [(plan, version, ln.destination, ln.prefix, ln.origin, to_text(ln.rate),
                     inc_text[ln.increment], date_text[ln.effective_from],
                     to_text(ln.connection_fee), to_text(ln.minimum_charge),
                     ln.short_call_seconds, to_text(ln.short_call_surcharge), ln.currency)
                    for ln in lines[start:start + batch_rows]]
            with transaction(conn):
                _still_staged(conn, version_id, plan, version, source)
                conn.executemany(_INSERT_RATE, rows)
                conn.execute("UPDATE deck_versions SET started_ms = ? WHERE id = ?",
                             (_wall_ms(), version_id))
            done += len(rows)
            if progress:
                progress(done)
        with transaction(conn):
            dialect_of(conn).serialize(conn, plan)  # one activation of a plan at a time
            _still_staged(conn, version_id, plan, version, source)
            _same_active(conn, plan, known, source)
            if not known:  # the plan's first version: the plan appears with it
                conn.execute("UPDATE plans SET notice_days = ?, created_ms = ? WHERE name = ?",
                             (7 if notice_days is None else notice_days, now_ms, plan))
            conn.execute("UPDATE deck_versions SET state = 'active' WHERE id = ?",
                         (version_id,))
    except BaseException:
        with contextlib.suppress(Exception):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            _drop_version(conn, version_id)
        raise
    return ImportResult(plan, version, len(parsed.lines), parsed.currency, increases,
                        decreases, new)


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _importer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _max_active(conn: Db, plan: str) -> int:
    return int(conn.execute(
        "SELECT COALESCE(MAX(version), 0) FROM deck_versions WHERE plan = ? AND "
        "state = 'active'", (plan,)).fetchone()[0])


def _same_active(conn: Db, plan: str, known: int, source: str) -> None:
    """Refuse to go on if the plan gained an active version since the deck was checked."""
    active = _max_active(conn, plan)
    if active != known:
        raise ImportConflict(source, f"plan '{plan}' gained version {active} (another "
                             "import) while this deck was being imported; nothing imported: "
                             "import the deck again")


def _still_staged(
    conn: Db, version_id: int, plan: str, version: int, source: str
) -> None:
    row = conn.execute("SELECT state FROM deck_versions WHERE id = ?"
                       + dialect_of(conn).for_update, (version_id,)).fetchone()
    if row is None or row[0] != STAGED:
        raise ImportConflict(source, f"staged version {version} of plan '{plan}' was removed "
                             "by another import, which judged it abandoned; nothing "
                             "imported: import the deck again")


def _check_kind(conn: Db, plan: str, kind: str, source: str) -> None:
    """Refuse a deck of one kind for a plan of the other (a sell deck for a carrier's buy
    deck, or the reverse)."""
    row = conn.execute("SELECT kind FROM plans WHERE name = ?", (plan,)).fetchone()
    if row is not None and row[0] != kind:
        raise DeckError([DeckProblem(
            source, 0, 0, "", f"'{plan}' is a {_KIND_NAMES.get(str(row[0]), str(row[0]))}, "
            f"not a {_KIND_NAMES[kind]}: nothing imported"
            + (" (a carrier's deck is imported with 'sidecar carrier deck import')"
               if row[0] == BUY else ""))])


def _stage(
    conn: Db, plan: str, currency: str, source: str, name: str, sha256: str,
    lines: int, known: int, now_ms: int, notice_days: int | None, kind: str = SELL,
) -> tuple[int, int]:
    """Record the next version of ``plan`` as staged; returns (row id, version number)."""
    with transaction(conn):
        dialect_of(conn).serialize(conn, plan)
        _same_active(conn, plan, known, source)
        _check_kind(conn, plan, kind, source)
        row = conn.execute("SELECT currency FROM plans WHERE name = ?", (plan,)).fetchone()
        if row is None:
            # A staged version needs its plan row; the plan stays invisible until activation.
            conn.execute(
                "INSERT INTO plans (name, currency, notice_days, created_ms, kind) "
                "VALUES (?, ?, ?, ?, ?)",
                (plan, currency, 7 if notice_days is None else notice_days, now_ms, kind))
        elif row[0] != currency:
            # Only a plan not visible yet can differ: another import's first version is
            # staged, or a row left over (with no version at all) by a failed one.
            if kind == BUY:  # a carrier's deck is in the currency the carrier was given
                raise DeckError([DeckProblem(source, 1, 0, "", f"deck is in {currency} but "
                                             f"buy deck '{plan}' is in {row[0]}")])
            if conn.execute("SELECT 1 FROM deck_versions WHERE plan = ?",
                            (plan,)).fetchone() is not None:
                raise ImportConflict(source, f"another import of plan '{plan}' in {row[0]} is "
                                     f"in progress; this deck is in {currency}")
            conn.execute("UPDATE plans SET currency = ? WHERE name = ?", (currency, plan))
        # Numbers of staged and dropping versions are taken too: their rates exist.
        version = int(conn.execute(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM deck_versions WHERE plan = ?",
            (plan,)).fetchone()[0])
        cur = conn.execute(
            "INSERT INTO deck_versions (plan, version, imported_ms, source, sha256, lines, "
            "state, started_ms, importer) VALUES (?, ?, ?, ?, ?, ?, 'staged', ?, ?) "
            "RETURNING id",
            (plan, version, now_ms, name, sha256, lines, _wall_ms(), _importer()))
        ((version_id,),) = cur.fetchall()
        return int(version_id), version


def _drop_version(conn: Db, version_id: int,
                  batch_rows: int = IMPORT_BATCH_ROWS) -> None:
    """Delete a version that is not active, with its rates, in short transactions.

    The version row is marked ``dropping`` first (its import, if still running, stops at
    its next batch) and deleted last, so its number is not handed out again while rates
    carrying it remain. A plan left with no version at all (it never became visible) goes
    too. Several processes may drop the same version at once.
    """
    with transaction(conn):
        row = conn.execute("SELECT plan, version, state FROM deck_versions WHERE id = ?"
                           + dialect_of(conn).for_update, (version_id,)).fetchone()
        if row is None or row[2] == ACTIVE:
            return
        plan, version = row[0], row[1]
        conn.execute("UPDATE deck_versions SET state = 'dropping' WHERE id = ?", (version_id,))
    while True:
        with transaction(conn):
            if conn.execute("SELECT 1 FROM deck_versions WHERE id = ?",
                            (version_id,)).fetchone() is None:
                return  # dropped by another process meanwhile
            deleted = conn.execute(
                "DELETE FROM rates WHERE id IN (SELECT id FROM rates WHERE plan = ? AND "
                "version = ? LIMIT ?)", (plan, version, batch_rows)).rowcount
        if deleted < batch_rows:
            break
    with transaction(conn):
        conn.execute("DELETE FROM deck_versions WHERE id = ? AND state = 'dropping'",
                     (version_id,))
        conn.execute(
            "DELETE FROM plans WHERE name = ? AND NOT EXISTS (SELECT 1 FROM deck_versions "
            "WHERE plan = ?) AND NOT EXISTS (SELECT 1 FROM accounts WHERE plan = ?) "
            "AND NOT EXISTS (SELECT 1 FROM carriers WHERE plan = ?)",
            (plan, plan, plan, plan))


def _process_gone(importer: str | None) -> bool:
    """True when ``importer`` (host:pid) names a process of this host that has ended."""
    host, _, pid = (importer or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists but is not ours to signal
        return False
    return False


def remove_abandoned_imports(conn: Db, *, now_ms: int | None = None) -> int:
    """Remove the staged versions of imports that died (of any plan); returns how many.

    A staged version is abandoned when its importing process, on this host, has ended,
    or when its import made no progress for :data:`ABANDONED_AFTER_MS`. Versions left
    half-dropped are finished off. :func:`import_deck` calls this before staging.
    """
    now = _wall_ms() if now_ms is None else now_ms
    rows = conn.execute("SELECT id, state, started_ms, importer FROM deck_versions "
                        "WHERE state != 'active'").fetchall()
    removed = 0
    for version_id, state, started_ms, importer in rows:
        if (state == DROPPING or started_ms is None or now - started_ms > ABANDONED_AFTER_MS
                or _process_gone(importer)):
            _drop_version(conn, version_id)
            removed += 1
    return removed


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


def deck_versions(conn: Db, plan: str, *, kind: str = SELL) -> list[dict[str, object]]:
    """The import history of a plan (active versions), oldest first."""
    get_plan(conn, plan, kind=kind)
    rows = conn.execute(
        "SELECT version, imported_ms, source, sha256, lines FROM deck_versions WHERE plan = ? "
        "AND state = 'active' ORDER BY version", (plan,)).fetchall()
    return [
        {"version": v, "imported": datetime.fromtimestamp(ms / 1000, UTC).isoformat(
            timespec="seconds"), "source": s, "sha256": h, "lines": n}
        for v, ms, s, h, n in rows]


@dataclass(frozen=True)
class _Loaded:
    rates: PlanRates
    version: int  # latest active deck version in the table
    revision: int  # settings revision the table and chunk were built with


class PlanLoader:
    """Rate plans kept loaded and brought up to date at little cost.

    For a long-running process: :meth:`load_all` once, then :meth:`refresh` every second
    or so, from a background thread with its own connection, handing the plans it
    returns to the thread that rates calls. When nothing changed a refresh is one small
    query (:func:`plan_revisions`). A new deck version costs reading that version's lines
    and extending the plan's table (:meth:`RateTable.extended`); new settings (``sidecar
    plan``) cost a new table sharing the old one's index, with no lines read at all.
    Tables already handed out are never changed, so calls being rated on them are not
    disturbed. One thread at a time may use a loader.

    ``follow_new_plans=False``: :meth:`refresh` only follows plans already loaded (with
    :meth:`load` or :meth:`load_all`) and ignores new ones. ``kind``: the sell plans (the
    default) or the carriers' buy decks (:data:`BUY`).
    """

    def __init__(self, *, follow_new_plans: bool = True, kind: str = SELL) -> None:
        self.follow_new_plans = follow_new_plans
        self.kind = kind
        self._loaded: dict[str, _Loaded] = {}

    @property
    def plans(self) -> dict[str, PlanRates]:
        """Every plan loaded, as last loaded or refreshed (a new dict)."""
        return {name: st.rates for name, st in self._loaded.items()}

    def get(self, name: str) -> PlanRates | None:
        """A loaded plan, or None."""
        st = self._loaded.get(name)
        return None if st is None else st.rates

    def load_all(self, conn: Db) -> dict[str, PlanRates]:
        """Load every plan afresh (forgetting what was loaded) and return them all."""
        self._loaded.clear()
        for name in plan_revisions(conn, self.kind):
            with contextlib.suppress(PlanNotFound):
                self._load(conn, name)
        return self.plans

    def warm(self, conn: Db) -> dict[str, PlanRates]:
        """Every plan: loaded afresh when none is yet, else brought up to date (a loader
        kept warm by a standby sidecar)."""
        if not self._loaded:
            return self.load_all(conn)
        self.refresh(conn)
        return self.plans

    def load(self, conn: Db, name: str) -> PlanRates:
        """Load one plan afresh and follow it from now on (:class:`PlanNotFound`)."""
        return self._load(conn, name).rates

    def refresh(self, conn: Db) -> dict[str, PlanRates]:
        """Bring the loaded plans up to date; return only those that changed since the
        last call (and, when following new plans, plans not loaded before)."""
        changed: dict[str, PlanRates] = {}
        current = plan_revisions(conn, self.kind)
        for name in [n for n in self._loaded if n not in current]:
            del self._loaded[name]
        for name, (version, revision) in current.items():
            st = self._loaded.get(name)
            if st is None:
                if self.follow_new_plans:
                    with contextlib.suppress(PlanNotFound):
                        changed[name] = self._load(conn, name).rates
                continue
            if (version, revision) == (st.version, st.revision):
                continue
            if version < st.version:  # not how versions evolve: start again
                with contextlib.suppress(PlanNotFound):
                    changed[name] = self._load(conn, name).rates
                continue
            updated = self._update(conn, name, st, version, revision)
            if updated is not None:
                changed[name] = updated.rates
        return changed

    def _load(self, conn: Db, name: str) -> _Loaded:
        try:
            plan, revision = _require_plan(conn, name, self.kind)
        except PlanNotFound:
            self._loaded.pop(name, None)
            raise
        versions = _active_versions(conn, name)
        table = RateTable(_lines_of(conn, name, versions), plan.currency,
                          number_plan=plan.number_plan, rounding=plan.second_rounding)
        st = _Loaded(PlanRates(table, plan.chunk_seconds, plan.limits),
                     versions[-1] if versions else 0, revision)
        self._loaded[name] = st
        return st

    def _update(self, conn: Db, name: str, st: _Loaded, version: int,
                revision: int) -> _Loaded | None:
        """Extend a loaded plan with its new versions and settings."""
        # Versions are activated in the order of their numbers: the new ones are above.
        lines = _lines_of(conn, name, _active_versions(conn, name, st.version, version))
        table = st.rates.table
        chunk = st.rates.chunk_seconds
        limits = st.rates.limits
        number_plan: NumberPlan | None = None
        rounding: SecondRounding | None = None
        if revision != st.revision:
            found = _plan_row(conn, name, self.kind)
            if found is None:
                return None
            plan, revision = found  # the settings and the revision they belong to
            chunk = plan.chunk_seconds
            limits = plan.limits
            if plan.number_plan != table.number_plan:
                number_plan = plan.number_plan
            if plan.second_rounding != table.rounding:
                rounding = plan.second_rounding
        if lines or number_plan is not None or rounding is not None:
            table = table.extended(lines, number_plan=number_plan, rounding=rounding)
        new = _Loaded(PlanRates(table, chunk, limits), version, revision)
        self._loaded[name] = new
        return new


class PlanCache:
    """Rate plans loaded on first use and kept up to date (:class:`PlanLoader`), with
    the database checked at most every ``check_every`` seconds: ``cache(name)`` is the
    plan look-up a :class:`~sidecar.charging.Charger` takes."""

    def __init__(self, conn: Db, check_every: float = 1.0) -> None:
        self.conn = conn
        self.check_every = check_every
        self.loader = PlanLoader(follow_new_plans=False)
        self._checked = 0.0

    def __call__(self, name: str) -> PlanRates:
        now = time.monotonic()
        if now - self._checked > self.check_every:
            self._checked = now
            self.loader.refresh(self.conn)
        rates = self.loader.get(name)
        if rates is None:
            rates = self.loader.load(self.conn, name)
        return rates


def lines_for(conn: Db, plan: str, prefixes: Iterable[str]) -> list[RateLine]:
    """The lines of the plan's active versions for these ``prefixes`` (every date and
    origin): what rating a few known calls needs, without loading the whole deck."""
    wanted = sorted(set(prefixes))
    versions = _active_versions(conn, plan)
    if not wanted or not versions:
        return []
    lines: list[RateLine] = []
    for i in range(0, len(wanted), 500):
        part = wanted[i:i + 500]
        rows = conn.execute(
            f"SELECT {_RATE_COLUMNS} FROM rates WHERE plan = ? AND version IN "
            f"({', '.join('?' for _ in versions)}) AND prefix IN "
            f"({', '.join('?' for _ in part)}) ORDER BY id", (plan, *versions, *part))
        lines += _lines_from_rows(rows)
    return lines
