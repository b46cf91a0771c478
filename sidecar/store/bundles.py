"""Free-minute bundles in the store (SQLite and PostgreSQL alike): ``sidecar bundle``
defines them, ``sidecar run`` keeps them and their usage loaded (its store thread), and
every reservation and settlement draws on them inside the account's transaction
(``store.batch``). :mod:`sidecar.rating.bundles` has the split rule,
:mod:`sidecar.charging.bundles` how the core picks and draws.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..charging.bundles import BundleBook, OwnedBundle, period_key
from ..charging.commands import UsageKey
from ..rating.bundles import Bundle, BundleError
from .conn import Db
from .db import transaction

KINDS = ("account", "plan")
#: How far back usage rows are loaded into a running sidecar: the longest period (a
#: month) and a day more.
_RECENT_MS = 32 * 86_400_000


class BundleNotFound(LookupError):
    """No such bundle."""


def add_bundle(conn: Db, kind: str, owner: str, bundle: Bundle, *, now_ms: int) -> Bundle:
    """Give ``owner`` (an account, or every account on a plan) a bundle. Refused
    (:class:`BundleError`) when the owner does not exist or already has a bundle of that
    name; nothing is written then."""
    if kind not in KINDS:
        raise BundleError(f"a bundle belongs to an account or a plan, not a {kind!r}")
    table, column = ("accounts", "code") if kind == "account" else ("plans", "name")
    with transaction(conn):
        extra = " AND kind = 'sell'" if kind == "plan" else ""
        if conn.execute(f"SELECT 1 FROM {table} WHERE {column} = ?{extra}",
                        (owner,)).fetchone() is None:
            raise BundleError(f"{kind} '{owner}' not found")
        if conn.execute("SELECT 1 FROM bundles WHERE owner_kind = ? AND owner = ? AND "
                        "name = ?", (kind, owner, bundle.name)).fetchone() is not None:
            raise BundleError(f"{kind} '{owner}' has a bundle '{bundle.name}' already "
                              f"(remove it first)")
        conn.execute(
            "INSERT INTO bundles (owner_kind, owner, name, seconds, destinations, prefixes, "
            "period, anchor_day, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, owner, bundle.name, bundle.seconds,
             json.dumps(sorted(bundle.destinations)), json.dumps(list(bundle.prefixes)),
             bundle.period, bundle.anchor_day, now_ms))
    return bundle


def remove_bundle(conn: Db, kind: str, owner: str, name: str) -> None:
    """Remove a bundle: calls draw on it no more (those drawing now keep what they hold;
    what was used stays in its usage rows and on the CDRs)."""
    with transaction(conn):
        n = conn.execute("DELETE FROM bundles WHERE owner_kind = ? AND owner = ? AND name = ?",
                         (kind, owner, name)).rowcount
    if not n:
        raise BundleNotFound(f"{kind} '{owner}' has no bundle '{name}'")


def list_bundles(conn: Db) -> list[OwnedBundle]:
    """Every bundle, by owner and name."""
    return [_owned(r) for r in conn.execute(
        "SELECT owner_kind, owner, name, seconds, destinations, prefixes, period, anchor_day "
        "FROM bundles ORDER BY owner_kind, owner, name")]


def bundles_of(conn: Db, account: str, plan: str) -> list[OwnedBundle]:
    """An account's own bundles and its plan's."""
    return [_owned(r) for r in conn.execute(
        "SELECT owner_kind, owner, name, seconds, destinations, prefixes, period, anchor_day "
        "FROM bundles WHERE (owner_kind = 'account' AND owner = ?) OR "
        "(owner_kind = 'plan' AND owner = ?) ORDER BY owner_kind, name", (account, plan))]


def _owned(r: Any) -> OwnedBundle:
    return OwnedBundle(str(r[0]), str(r[1]), Bundle(
        str(r[2]), int(r[3]), frozenset(json.loads(str(r[4]))), tuple(json.loads(str(r[5]))),
        str(r[6]), int(r[7])))


def bundle_used(conn: Db, key: UsageKey) -> int:
    """Seconds used and held in one bundle's period."""
    r = conn.execute("SELECT used_seconds + held_seconds FROM bundle_usage WHERE account = ? "
                     "AND bundle = ? AND period_start = ?", key).fetchone()
    return int(r[0]) if r else 0


def recent_usage(conn: Db, now_ms: int) -> dict[UsageKey, int]:
    """Usage rows of the periods running now (and just before): what a running sidecar
    keeps in memory."""
    return {(str(a), str(b), int(p)): int(u) + int(h) for a, b, p, u, h in conn.execute(
        "SELECT account, bundle, period_start, used_seconds, held_seconds FROM bundle_usage "
        "WHERE period_start >= ?", (now_ms - _RECENT_MS,))}


def bundle_status(conn: Db, account: str, plan: str, at: datetime) -> list[dict[str, object]]:
    """An account's bundles in the period holding ``at``: allowance, used (settled calls),
    held (live calls), left; in the order calls draw on them."""
    book = BundleBook()
    book.load(bundles_of(conn, account, plan), {})
    out: list[dict[str, object]] = []
    owners = {(o.kind, o.bundle.name) for o in bundles_of(conn, account, plan)}
    for b in book.of(account, plan):
        start, end = b.period_of(at)
        key = (account, b.name, period_key(b, at))
        r = conn.execute("SELECT used_seconds, held_seconds FROM bundle_usage WHERE "
                         "account = ? AND bundle = ? AND period_start = ?", key).fetchone()
        used, held = (int(r[0]), int(r[1])) if r else (0, 0)
        out.append({
            "name": b.name, "owner": "account" if ("account", b.name) in owners else "plan",
            "seconds": b.seconds, "period": b.period, "anchor_day": b.anchor_day,
            "period_start": _iso(start), "period_end": _iso(end),
            "destinations": sorted(b.destinations), "prefixes": list(b.prefixes),
            "used_seconds": used, "held_seconds": held,
            "left_seconds": max(b.seconds - used - held, 0)})
    return out


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def bundle_book(conn: Db) -> BundleBook:
    """The bundles for a synchronous charger (replay, the demo, tests): read through from
    the store when any bundle is defined; an empty book (no look-ups) when none is."""
    if conn.execute("SELECT 1 FROM bundles LIMIT 1").fetchone() is None:
        return BundleBook()
    return BundleBook(source=_Source(conn))


class _Source:
    def __init__(self, conn: Db) -> None:
        self.conn = conn

    def bundles_of(self, account: str, plan: str) -> list[OwnedBundle]:
        return bundles_of(self.conn, account, plan)

    def bundle_used(self, key: UsageKey) -> int:
        return bundle_used(self.conn, key)
