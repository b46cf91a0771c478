"""Carriers in the store (SQLite and PostgreSQL alike): who calls can be sent to, their
buy decks, and what happened to them.

A carrier's buy deck is a rate plan of kind ``buy`` named ``carrier:NAME``
(:func:`buy_plan`), created with the carrier: it is imported, versioned, checked for
notice and read by the code that does so for sell plans (:mod:`.decks`, with
``kind=BUY``), and never listed, loaded or rated as a sell plan. Every change of a
carrier's state is also an event (``carrier_events``): added, disabled and enabled by an
operator, pulled and restored by route health (with its evidence).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..charging.commands import CarrierHealth
from ..money import check_currency
from ..rating import RateTable
from ..routing.carriers import (
    HEALTH,
    OPERATOR,
    Carrier,
    CarrierError,
    check_capacity,
    check_carrier_name,
    check_uri,
)
from ..routing.health import EventKind, HealthEvent
from ..routing.select import CarrierBook, CarrierDeck
from .conn import Db
from .db import transaction
from .decks import (
    BUY,
    ImportResult,
    PlanLoader,
    PlanNotFound,
    deck_versions,
    import_deck,
    load_table,
)

_COLUMNS = ("name, uri, plan, max_calls, max_cps, enabled, disabled_reason, disabled_ms, "
            "disabled_by, until_ms")


class CarrierNotFound(LookupError):
    """No carrier has this name."""


class CarrierExists(ValueError):
    """A carrier (or a plan) of this name exists already."""


def buy_plan(name: str) -> str:
    """The name of a carrier's buy deck (a plan of kind ``buy``)."""
    return f"carrier:{name}"


def _row(r: Any) -> Carrier:
    (name, uri, plan, max_calls, max_cps, enabled, reason, disabled_ms, by, until_ms) = r
    return Carrier(str(name), str(uri), str(plan),
                   None if max_calls is None else int(max_calls),
                   None if max_cps is None else int(max_cps), bool(enabled), str(reason),
                   None if disabled_ms is None else int(disabled_ms), str(by),
                   None if until_ms is None else int(until_ms))


def _event(conn: Db, key: str, ts_ms: int, carrier: str, kind: str, actor: str, reason: str,
           evidence: dict[str, object] | None = None) -> bool:
    """Record an event once (by ``key``); True when it was new."""
    if conn.execute("SELECT 1 FROM carrier_events WHERE key = ?", (key,)).fetchone():
        return False
    conn.execute("INSERT INTO carrier_events (key, ts_ms, carrier, kind, actor, reason, "
                 "evidence) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (key, ts_ms, carrier, kind, actor, reason,
                  json.dumps(evidence or {}, sort_keys=True, default=str)))
    return True


def add_carrier(
    conn: Db, name: str, uri: str, *, currency: str, max_calls: int | None = None,
    max_cps: int | None = None, notice_days: int = 7, now_ms: int,
) -> Carrier:
    """Add a carrier (enabled) with an empty buy deck in ``currency``. Raises
    :class:`CarrierError` for a bad name, destination or capacity, :class:`CarrierExists`
    when the name (or its buy deck's plan name) is taken; nothing is written then."""
    check_carrier_name(name)
    clean_uri = check_uri(uri)
    check_capacity(max_calls, "max calls")
    check_capacity(max_cps, "max cps")
    ccy = check_currency(currency)
    if notice_days < 0:
        raise CarrierError("notice days cannot be negative")
    plan = buy_plan(name)
    with transaction(conn):
        if conn.execute("SELECT 1 FROM carriers WHERE name = ?", (name,)).fetchone():
            raise CarrierExists(f"carrier '{name}' exists already")
        if conn.execute("SELECT 1 FROM plans WHERE name = ?", (plan,)).fetchone():
            raise CarrierExists(f"a rate plan named '{plan}' exists already: the buy deck of "
                                f"carrier '{name}' would take that name")
        conn.execute("INSERT INTO plans (name, currency, notice_days, created_ms, kind) "
                     "VALUES (?, ?, ?, ?, ?)", (plan, ccy, notice_days, now_ms, BUY))
        conn.execute("INSERT INTO carriers (name, uri, plan, max_calls, max_cps, created_ms) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (name, clean_uri, plan, max_calls, max_cps, now_ms))
        _event(conn, uuid.uuid4().hex, now_ms, name, "added", OPERATOR,
               f"added: {clean_uri}, buy deck in {ccy}",
               {"uri": clean_uri, "max_calls": max_calls, "max_cps": max_cps})
    return get_carrier(conn, name)


def get_carrier(conn: Db, name: str) -> Carrier:
    """A carrier, or :class:`CarrierNotFound` naming the carriers there are."""
    r = conn.execute(f"SELECT {_COLUMNS} FROM carriers WHERE name = ?", (name,)).fetchone()
    if r is None:
        known = [str(k[0]) for k in conn.execute("SELECT name FROM carriers ORDER BY name")]
        hint = f" (carriers: {', '.join(known)})" if known else \
            " (no carriers yet: sidecar carrier add)"
        raise CarrierNotFound(f"carrier '{name}' not found{hint}")
    return _row(r)


def list_carriers(conn: Db) -> list[Carrier]:
    """Every carrier, by name."""
    return [_row(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM carriers ORDER BY name")]


def set_enabled(conn: Db, name: str, enabled: bool, *, reason: str = "", now_ms: int,
                actor: str = OPERATOR) -> Carrier:
    """An operator enables or disables a carrier (with ``reason``), recorded as an event.
    Disabling a disabled carrier keeps its since-when and takes the new reason; enabling
    an enabled one changes nothing."""
    with transaction(conn):
        c = get_carrier(conn, name)
        if enabled:
            if c.enabled:
                return c
            conn.execute("UPDATE carriers SET enabled = 1, disabled_reason = '', "
                         "disabled_ms = NULL, disabled_by = '', until_ms = NULL "
                         "WHERE name = ?", (name,))
        else:
            conn.execute("UPDATE carriers SET enabled = 0, disabled_reason = ?, "
                         "disabled_ms = ?, disabled_by = ?, until_ms = NULL WHERE name = ?",
                         (reason, c.disabled_ms if not c.enabled else now_ms, actor, name))
        _event(conn, uuid.uuid4().hex, now_ms, name, "enabled" if enabled else "disabled",
               actor, reason)
    return get_carrier(conn, name)


def record_health_event(conn: Db, event: HealthEvent) -> bool:
    """Store a route health event once (a journal may replay it) and apply it: a carrier
    pulled is disabled by health until its cool-down ends; a restore enables it again
    unless an operator disabled it meanwhile. True when the event was new."""
    with transaction(conn):
        get_carrier(conn, event.carrier)  # CarrierNotFound names the carriers there are
        return _apply_health(conn.execute, event.carrier, event.kind.value, event.at_ms,
                             event.actor, event.reason,
                             json.dumps({**event.evidence, "until_ms": event.until_ms},
                                        sort_keys=True, default=str), event.until_ms)


def apply_health_event(conn: Any, dialect: Any, cmd: CarrierHealth) -> bool:
    """:func:`record_health_event` for the live sidecar's store batches (inside the
    batch's transaction, through its dialect). A carrier removed meanwhile: nothing."""

    def execute(q: str, params: tuple[object, ...]) -> Any:
        return dialect.execute(conn, q, params)

    if execute("SELECT 1 FROM carriers WHERE name = ?", (cmd.carrier,)).fetchone() is None:
        return False
    return _apply_health(execute, cmd.carrier, cmd.kind, cmd.now_ms, cmd.actor, cmd.reason,
                         cmd.evidence or "{}", cmd.until_ms)


def _apply_health(execute: Callable[..., Any], carrier: str, kind: str, at_ms: int,
                  actor: str, reason: str, evidence: str, until_ms: int | None) -> bool:
    key = f"{carrier}:{kind}:{at_ms}"
    if execute("SELECT 1 FROM carrier_events WHERE key = ?", (key,)).fetchone():
        return False
    execute("INSERT INTO carrier_events (key, ts_ms, carrier, kind, actor, reason, "
            "evidence) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, at_ms, carrier, kind, actor, reason, evidence))
    row = execute("SELECT enabled, disabled_by FROM carriers WHERE name = ?",
                  (carrier,)).fetchone()
    enabled, by = bool(row[0]), str(row[1])
    if kind == EventKind.PULLED.value:
        if enabled or by == HEALTH:
            execute("UPDATE carriers SET enabled = 0, disabled_reason = ?, disabled_ms = ?, "
                    "disabled_by = ?, until_ms = ? WHERE name = ?",
                    (reason, at_ms, HEALTH, until_ms, carrier))
    elif not enabled and by == HEALTH:
        execute("UPDATE carriers SET enabled = 1, disabled_reason = '', disabled_ms = NULL, "
                "disabled_by = '', until_ms = NULL WHERE name = ?", (carrier,))
    return True


def carrier_events(conn: Db, name: str | None = None,
                   limit: int = 100) -> list[dict[str, object]]:
    """The latest events (of one carrier, or all), newest first."""
    where, args = ("WHERE carrier = ?", [name]) if name is not None else ("", [])
    rows = conn.execute(
        f"SELECT ts_ms, carrier, kind, actor, reason, evidence FROM carrier_events {where} "
        "ORDER BY ts_ms DESC, key LIMIT ?", (*args, limit)).fetchall()
    return [{"ts_ms": int(ts), "carrier": str(c), "kind": str(k), "actor": str(a),
             "reason": str(r), "evidence": json.loads(str(e) or "{}")}
            for ts, c, k, a, r, e in rows]


def import_carrier_deck(
    conn: Db, name: str, path: str | Path, *, as_of: datetime | None = None,
    notice_days: int | None = None, progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Import a deck file as the next version of the carrier's buy deck: the sell decks'
    import (:func:`~.decks.import_deck`, same format, checks, notice and versions)."""
    c = get_carrier(conn, name)
    currency = conn.execute("SELECT currency FROM plans WHERE name = ?",
                            (c.plan,)).fetchone()[0]
    return import_deck(conn, c.plan, path, currency=str(currency), as_of=as_of,
                       notice_days=notice_days, progress=progress, kind=BUY)


def deck_info(conn: Db, carrier: Carrier) -> dict[str, object]:
    """A carrier's buy deck: currency, notice days, versions (none before the first
    import)."""
    row = conn.execute("SELECT currency, notice_days FROM plans WHERE name = ?",
                       (carrier.plan,)).fetchone()
    try:
        versions = deck_versions(conn, carrier.plan, kind=BUY)
    except PlanNotFound:
        versions = []
    return {"plan": carrier.plan, "currency": str(row[0]), "notice_days": int(row[1]),
            "versions": versions}


def carrier_rows(conn: Db) -> list[dict[str, object]]:
    """Every carrier as the API and the dashboard show it: destination, buy deck and its
    currency, capacity, and state (enabled, disabled by whom, pulled until when)."""
    return [{"name": c.name, "uri": c.uri, "buy_plan": c.plan,
             "currency": str(deck_info(conn, c)["currency"]), "max_calls": c.max_calls,
             "max_cps": c.max_cps, "enabled": c.enabled, "disabled_by": c.disabled_by,
             "disabled_reason": c.disabled_reason, "disabled_ms": c.disabled_ms,
             "until_ms": c.until_ms} for c in list_carriers(conn)]


def load_carrier_decks(conn: Db) -> list[CarrierDeck]:
    """Every carrier with its buy deck loaded (an empty table before its first import:
    it has no rate for any number)."""
    out = []
    for c in list_carriers(conn):
        try:
            table = load_table(conn, c.plan, kind=BUY)
        except PlanNotFound:
            ccy = conn.execute("SELECT currency FROM plans WHERE name = ?",
                               (c.plan,)).fetchone()[0]
            table = RateTable([], str(ccy))
        out.append(CarrierDeck(c, table))
    return out


@dataclass(frozen=True)
class CarrierJob:
    """What a :class:`~sidecar.routing.select.CarrierBook` is built from: the carriers in
    order, each one's buy deck (loaded), and when an operator last enabled each."""

    carriers: tuple[Carrier, ...]
    tables: tuple[RateTable, ...]
    enabled_ms: dict[str, int]


class CarrierLoader:
    """The carriers and their buy decks kept loaded for the live sidecar.

    :meth:`load` (the store thread: it reads the database) gives a :class:`CarrierJob`
    when something changed since the last call, else None; :meth:`build` turns a job into
    a book, at no cost when only carriers' states changed (enabled, pulled, capacity,
    destination: the last book's index is reused) and otherwise by indexing every deck
    (seconds for millions of lines: ``sidecar run`` does it in a thread of its own, so
    the store thread goes on committing). The decks' lines are read through a
    :class:`~.decks.PlanLoader`, which reads only what is new."""

    def __init__(self) -> None:
        self.plans = PlanLoader(kind=BUY)
        self.book: CarrierBook | None = None
        self._rows: list[Carrier] | None = None
        self._enabled: dict[str, int] = {}

    def load(self, conn: Db) -> CarrierJob | None:
        rows = list_carriers(conn)
        # When an operator last enabled each carrier: a carrier pulled by route health
        # and enabled again reads the same as before the pull.
        enabled = {str(c): int(ts) for c, ts in conn.execute(
            "SELECT carrier, MAX(ts_ms) FROM carrier_events WHERE kind = 'enabled' "
            "GROUP BY carrier")}
        changed = self.plans.refresh(conn) if self._rows is not None \
            else self.plans.load_all(conn)
        if rows == self._rows and not changed and enabled == self._enabled:
            return None
        self._rows, self._enabled = rows, enabled
        tables = []
        for c in rows:
            rates = self.plans.get(c.plan)
            tables.append(rates.table if rates is not None else RateTable([], ""))
        return CarrierJob(tuple(rows), tuple(tables), enabled)

    def build(self, job: CarrierJob) -> CarrierBook:
        """The book of ``job`` (one thread at a time)."""
        book = self.book
        if (book is not None and len(book.decks) == len(job.tables)
                and all(d.carrier.name == c.name and d.table is t
                        for d, c, t in zip(book.decks, job.carriers, job.tables,
                                           strict=True))):
            book = book.with_carriers(job.carriers, job.enabled_ms)
        else:
            book = CarrierBook([CarrierDeck(c, t) for c, t in zip(job.carriers, job.tables,
                                                                   strict=True)],
                               job.enabled_ms)
        self.book = book
        return book
