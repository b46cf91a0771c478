"""CDRs as route statistics read them (FAS patterns per route)."""

from __future__ import annotations

import sqlite3

from ..supervision.routes import RouteCall


def route_calls(conn: sqlite3.Connection, *, from_ms: int | None = None,
                to_ms: int | None = None, account: str | None = None) -> list[RouteCall]:
    """Calls that reached a route (not rejected by us), offered in [from_ms, to_ms)."""
    where = ["disposition != 'rejected'", "offered_ms IS NOT NULL"]
    args: list[object] = []
    if from_ms is not None:
        where.append("offered_ms >= ?")
        args.append(from_ms)
    if to_ms is not None:
        where.append("offered_ms < ?")
        args.append(to_ms)
    if account is not None:
        where.append("account = ?")
        args.append(account)
    rows = conn.execute(
        "SELECT route, offered_ms, ringing_ms, answered_ms, ended_ms, fas_verdict FROM cdrs "
        f"WHERE {' AND '.join(where)} ORDER BY offered_ms", args)
    return [RouteCall(str(r[0] or ""), int(r[1]), r[2], r[3], int(r[4] or r[1]), str(r[5] or ""))
            for r in rows]
