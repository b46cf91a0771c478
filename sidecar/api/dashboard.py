"""The operator's live dashboard, served by the HTTP API (``sidecar api``).

``GET /dashboard`` is one page with its script and style sheet beside it
(``/dashboard/dashboard.js``, ``/dashboard/dashboard.css``): public, holding no data, and
loading nothing from anywhere else. The page asks for an API token once (kept in the
tab's ``sessionStorage``) and fetches everything with ``Authorization: Bearer``, so the
API's token check guards every figure; no cookie is ever set (no CSRF to defend).

- ``GET /dashboard/live``: a ``text/event-stream`` of ``live`` events, one every
  ``interval`` (0.5 s): the calls up now with their running cost and paid time left, each
  account's running total, and the last CDRs written. One store read per tick, in the
  store's thread, whatever the number of clients; no client, no reads.
- ``GET /dashboard/summary``: balances and holds, alerts (low balance, 80% of a spend
  cap, suspended, blocked, fraud blocks not lifted), spend by destination, day and
  department (the last ``days``), FAS route verdicts, fraud events and issued invoices
  (downloaded through the API's invoice endpoints).

A token scoped to a reseller (``sidecar token create NAME --account RES``) gets the same
page for its subtree only: its accounts' calls, running totals and CDRs, alerts, balances,
spend, fraud events and invoices; no FAS route verdicts, carriers or margins (the
operator's). The live stream's one read per tick is shared with it too: each scoped
client's event is cut from the shared snapshot by its subtree (looked up once, when it
connects), encoded once per subtree per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from importlib import resources
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel

from .. import __version__
from ..invoices import list_invoices
from ..invoices.analytics import margins, margins_json, route_calls, spend, spend_json
from ..invoices.records import iso
from ..money import fmt
from ..store.accounts import list_accounts
from ..store.carriers import carrier_rows
from ..store.conn import Db
from ..store.fraud import fraud_events
from ..store.live import live_calls_view
from ..supervision.routes import PatternConfig, score_routes
from . import models as m
from .app import CONN, SCOPE_ACCOUNT, STORE, BadRequest, _subtree

log = logging.getLogger("sidecar.api.dashboard")

PAGE = "/dashboard"
ASSETS = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}
#: The paths anyone may fetch: the page and its two assets, none of them with data.
PUBLIC_PATHS = frozenset({PAGE, *(f"{PAGE}/{name}" for name in ASSETS)})
#: How often the live stream pushes (seconds): at least once a second, with margin.
INTERVAL_S = 0.5
#: CDRs shown under "just ended".
RECENT = 15
#: With scoped clients listening, each tick reads this many of the last CDRs (still one
#: read), and a reseller's "just ended" takes its own from them: more than this many calls
#: ending in one tick store-wide is what could make one of its CDRs miss its list.
RECENT_WINDOW = 500
#: A spend cap counts as an alert from this share on (the charger's budget alert).
BUDGET_WARN = Decimal("0.8")
DAY_MS = 86_400_000

_CALL_FIELDS = ("call_ref", "account", "node", "number", "destination", "rate", "increment",
                "answered_ms", "elapsed_ms", "cost", "reserved", "paid_seconds",
                "remaining_ms")
_CDR_COLUMNS = ("id", "call_ref", "account", "callee", "destination", "disposition",
                "sip_code", "ended_by", "end_reason", "ended_ms", "duration_ms",
                "billed_seconds", "charged", "currency", "fas_verdict")


def recent_cdrs(conn: Db, limit: int = RECENT, accounts: frozenset[str] | None = None
                ) -> list[dict[str, object]]:
    """The last ``limit`` CDRs, newest first (of ``accounts`` only, if given), as the page
    shows them."""
    where, args = "", []
    if accounts is not None:
        if not accounts:
            return []
        where = f"WHERE account IN ({', '.join('?' * len(accounts))}) "
        args = sorted(accounts)
    rows = conn.execute(f"SELECT {', '.join(_CDR_COLUMNS)} FROM cdrs {where}"
                        "ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    cdrs = []
    for r in rows:
        d = dict(zip(_CDR_COLUMNS, r, strict=True))
        d["ended"] = iso(int(str(d["ended_ms"]))) if d["ended_ms"] is not None else None
        d["charged"] = fmt(Decimal(str(d["charged"])))  # stored 8-place text, or NUMERIC
        cdrs.append(d)
    return cdrs


def live_snapshot(conn: Db, now_ms: int, recent: int = RECENT) -> dict[str, object]:
    """What one tick of the live stream carries (money as exact strings): the calls up
    (rows of ``call_fields``), each account's running total, the last CDRs."""
    calls, totals = live_calls_view(conn, now_ms)
    cdrs = recent_cdrs(conn, recent)
    return {"now_ms": now_ms, "now": iso(now_ms),
            # Each call as a row of values in the order of ``call_fields`` (half the JSON
            # of an object per call, and half the time to encode it).
            "call_fields": _CALL_FIELDS, "calls": [[c[k] for k in _CALL_FIELDS] for c in calls],
            "accounts": {k: fmt(v) for k, v in sorted(totals.items())},
            "recent": cdrs}


_ACCOUNT_AT = _CALL_FIELDS.index("account")


def scoped_snapshot(snap: Mapping[str, Any], accounts: frozenset[str],
                    kept: Sequence[dict[str, object]] = ()) -> dict[str, object]:
    """One tick as a token scoped to ``accounts`` (a reseller's subtree) sees it, cut from
    the shared snapshot: its accounts' calls and running totals only, and its last
    ``RECENT`` CDRs: those of the snapshot's in its subtree merged with the ones it had
    (``kept``: a quiet reseller keeps its list while others' calls end). The CDR rows
    carry no tier prices, so no price of a reseller above it is in them."""
    mine = {int(str(d["id"])): d for d in kept}
    mine.update((int(str(d["id"])), d) for d in snap["recent"] if d["account"] in accounts)
    return {**snap,
            "calls": [r for r in snap["calls"] if r[_ACCOUNT_AT] in accounts],
            "accounts": {k: v for k, v in snap["accounts"].items() if k in accounts},
            "recent": [mine[i] for i in sorted(mine, reverse=True)[:RECENT]]}


#: Whose view a client of the live stream has: None, the operator's; else the accounts
#: of a scoped token's subtree.
Scope = frozenset[str] | None


def _encode(snap: Mapping[str, object], seq: int) -> bytes:
    data = json.dumps({**snap, "seq": seq}, separators=(",", ":"), default=_json_default)
    return f"event: live\nid: {seq}\ndata: {data}\n\n".encode()


def _live_events(conn: Db, now_ms: int, seq: int, operator: bool,
                 kept: Mapping[frozenset[str], Sequence[dict[str, object]]]
                 ) -> dict[Scope, tuple[bytes, list[dict[str, object]]]]:
    """One tick as server-sent events, encoded, from one read of the store: the operator's
    (if one listens) and one per scoped subtree listening (with its new "just ended" list).
    Run in the store's thread: a thousand calls make a few hundred kB of JSON, kept off
    the event loop."""
    snap = live_snapshot(conn, now_ms, RECENT_WINDOW if kept else RECENT)
    out: dict[Scope, tuple[bytes, list[dict[str, object]]]] = {}
    if operator:
        assert isinstance(snap["recent"], list)
        out[None] = (_encode({**snap, "recent": snap["recent"][:RECENT]}, seq), [])
    for sub, before in kept.items():
        view = scoped_snapshot(snap, sub, before)
        assert isinstance(view["recent"], list)
        out[sub] = (_encode(view, seq), view["recent"])
    return out


def _json_default(value: object) -> str:
    """Amounts through ``money.fmt`` (never ``str(Decimal)``, which can print ``1E-8``),
    anything else as its text."""
    return fmt(value) if isinstance(value, Decimal) else str(value)


def _as(model: type[BaseModel], rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows as the API serialises them (its response models): money as ``money.fmt``
    prints it, times as ISO 8601 UTC with milliseconds and ``Z``."""
    return [model.model_validate(r).model_dump(mode="json") for r in rows]


def alerts(accounts: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]] = ()
           ) -> list[dict[str, str]]:
    """What an operator should look at: fraud blocks and suspensions not lifted yet
    (``events``), and from the accounts' state suspended or blocked accounts, balances
    below their low-balance mark, spend at 80% of a cap or more."""
    out: list[dict[str, str]] = [
        {"account": str(e["account"]), "kind": "fraud",
         "message": f"{e['action']} by fraud rule {e['rule']}: {e['reason']}"}
        for e in events if e["open"]]
    for a in accounts:
        code, ccy = str(a["code"]), str(a["currency"])
        if a["suspended"]:
            out.append({"account": code, "kind": "suspended",
                        "message": f"suspended: {a['suspend_reason'] or 'no reason given'}"})
        if a["blocked"]:
            out.append({"account": code, "kind": "blocked",
                        "message": f"new calls refused: {a['blocked']}"})
        if a["low_balance"] is not None and Decimal(a["balance"]) < Decimal(a["low_balance"]):
            out.append({"account": code, "kind": "low_balance",
                        "message": f"balance {a['balance']} {ccy} below {a['low_balance']}"})
        for cap_key, spent_key, what in (("daily_cap", "day_spend", "daily"),
                                         ("monthly_cap", "month_spend", "monthly")):
            if a[cap_key] is None:
                continue
            cap, spent = Decimal(a[cap_key]), Decimal(a[spent_key])
            if cap > 0 and spent >= cap * BUDGET_WARN:
                share = (spent * 100 / cap).quantize(Decimal(1))
                out.append({"account": code, "kind": "budget",
                            "message": f"{share}% of its {what} cap used ({a[spent_key]} "
                                       f"of {a[cap_key]} {ccy})"})
    return out


def summary(conn: Db, now_ms: int, days: int = 30, min_calls: int = 20,
            scope: str | None = None, accounts_in: frozenset[str] | None = None
            ) -> dict[str, object]:
    """Everything on the page but the live calls, read in one go; each part as the API
    answers it (its models: one money and one time format on the page and in the API).

    ``scope``: the account a token is scoped to, ``accounts_in`` its subtree: that
    subtree's part only, without the operator's parts (FAS routes, carriers, margins)."""
    if scope is not None:
        return _scoped_summary(conn, now_ms, days, scope, accounts_in or frozenset())
    start = now_ms - days * DAY_MS
    accounts = [a.to_dict() for a in list_accounts(conn, now_ms)]
    events = _events(conn, start)
    scores = score_routes(route_calls(conn, from_ms=start), PatternConfig(min_calls=min_calls))
    return {
        "now": iso(now_ms), "days": days, "accounts": accounts, "alerts": alerts(accounts, events),
        "spend": {by: _as(m.SpendRow, ({"parent": None, **r} for r in
                                        spend_json(spend(conn, by, from_ms=start))))
                  for by in ("destination", "day", "account")},
        "fas_routes": _as(m.FasRoute, (r.to_dict() for r in scores)),
        # Least-cost routing: the carriers' state, and the period's margin by carrier.
        "carriers": _as(m.CarrierOut, carrier_rows(conn)),
        "margins": _as(m.MarginRow, margins_json(margins(conn, "carrier", from_ms=start))),
        "fraud_events": _as(m.FraudEvent, sorted(events, key=lambda e: -int(e["ts_ms"]))),
        "invoices": _as(m.InvoiceSummary, list_invoices(conn)[:100]),
    }


def _events(conn: Db, start: int, accounts: frozenset[str] | None = None
            ) -> list[dict[str, Any]]:
    """Every block or suspension still in force, however old; the rest of the period's
    last 50 (of ``accounts`` only, if given)."""
    def mine(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return rows if accounts is None else [e for e in rows if e["account"] in accounts]
    still = mine(fraud_events(conn, open_only=True))
    seen = {e["id"] for e in still}
    return still + [e for e in mine(fraud_events(conn, from_ms=start))
                    if e["id"] not in seen][-50:]


def _scoped_summary(conn: Db, now_ms: int, days: int, scope: str,
                    sub: frozenset[str]) -> dict[str, object]:
    """The summary as a reseller's token sees it: its subtree's accounts, alerts, spend,
    fraud events and invoices (those of its accounts, as ``GET /v1/invoices`` gives them:
    its own and those it issued to its customers). The parent above ``scope`` is left
    out, as are the operator's parts. ``view`` says whose view it is."""
    start = now_ms - days * DAY_MS
    accounts = [a.to_dict() for a in list_accounts(conn, now_ms) if a.code in sub]
    for a in accounts:
        if a["code"] == scope:
            a["parent"] = None  # the tier above it is not its to see
    events = _events(conn, start, sub)
    spend_rows = {}
    for by in ("destination", "day", "account"):
        rows = [{"parent": None, **r} for r in
                spend_json(spend(conn, by, account=scope, from_ms=start))]
        if by == "account":
            for r in rows:
                if r["key"] == scope:
                    r["parent"] = None
        spend_rows[by] = _as(m.SpendRow, rows)
    return {
        "now": iso(now_ms), "days": days,
        "view": {"account": scope, "below": len(sub - {scope})},
        "accounts": accounts, "alerts": alerts(accounts, events), "spend": spend_rows,
        "fraud_events": _as(m.FraudEvent, sorted(events, key=lambda e: -int(e["ts_ms"]))),
        "invoices": _as(m.InvoiceSummary,
                        [i for i in list_invoices(conn) if i["account"] in sub][:100]),
    }


class LiveFeed:
    """The live stream's ticks, shared by every connected client: one task reads the
    store once per tick (in the store's thread) while at least one client listens, and
    hands each client the same encoded event. A client that falls behind gets the latest
    tick only (its queue holds one).

    A scoped client (a reseller's token) gets the same tick cut to its subtree, given
    when it subscribes; the clients of one subtree share its encoded event and its last
    CDRs (read once when the first of them connects, then kept up from the ticks)."""

    def __init__(self, app: web.Application, interval_s: float = INTERVAL_S) -> None:
        self.app = app
        self.interval_s = interval_s
        self.clients: dict[asyncio.Queue[bytes | None], Scope] = {}
        #: Each listening subtree's "just ended" list, kept from tick to tick.
        self.recent_of: dict[frozenset[str], list[dict[str, object]]] = {}
        self.task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.last_error = ""

    async def subscribe(self, scope: Scope = None) -> asyncio.Queue[bytes | None]:
        if scope is not None and scope not in self.recent_of:
            got = await asyncio.get_running_loop().run_in_executor(
                self.app[STORE], recent_cdrs, self.app[CONN], RECENT, scope)
            self.recent_of.setdefault(scope, got)
        q: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        self.clients[q] = scope
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())
        return q

    def unsubscribe(self, q: asyncio.Queue[bytes | None]) -> None:
        scope = self.clients.pop(q, None)
        if scope is not None and scope not in self.clients.values():
            self.recent_of.pop(scope, None)

    @staticmethod
    def _put(q: asyncio.Queue[bytes | None], item: bytes | None) -> None:
        if q.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                q.get_nowait()
        q.put_nowait(item)

    def _publish(self, item: bytes | None) -> None:
        for q in list(self.clients):
            self._put(q, item)

    def _publish_each(self, events: Mapping[Scope, tuple[bytes, list[dict[str, object]]]]
                      ) -> None:
        for scope, (_, recent) in events.items():
            if scope is not None and scope in self.recent_of:
                self.recent_of[scope] = recent
        for q, scope in list(self.clients.items()):
            if scope in events:  # (a client that came during the read: the next tick)
                self._put(q, events[scope][0])

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        conn: Db = self.app[CONN]
        next_at = loop.time()
        while self.clients:
            scopes = set(self.clients.values())
            kept = {s: self.recent_of.get(s, []) for s in scopes if s is not None}
            try:
                events = await loop.run_in_executor(
                    self.app[STORE], _live_events, conn, int(time.time() * 1000),
                    self.ticks, None in scopes, kept)
                self.last_error = ""
                self._publish_each(events)
            except Exception as exc:  # the store is away: say so, keep trying
                if str(exc) != self.last_error:
                    log.warning("dashboard: could not read the live calls: %s", exc)
                self.last_error = str(exc)
                self._publish(f"event: error\ndata: {json.dumps({'error': str(exc)})}\n\n"
                              .encode())
            self.ticks += 1
            next_at += self.interval_s
            delay = next_at - loop.time()
            if delay < 0:  # the read took longer than a tick: start again from now
                next_at, delay = loop.time(), 0.0
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Ends every client's stream (the server is shutting down)."""
        self._publish(None)
        self.clients.clear()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


FEED = web.AppKey("dashboard_feed", LiveFeed)
PAGE_HTML = web.AppKey("dashboard_page", str)
STATIC = web.AppKey("dashboard_static", dict[str, bytes])


async def page(request: web.Request) -> web.Response:
    return web.Response(text=request.app[PAGE_HTML], content_type="text/html", headers={
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
        # Nothing from anywhere else: no CDN, no inline script, no framing.
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                   "frame-ancestors 'none'; base-uri 'none'; "
                                   "form-action 'none'"})


def _asset(request: web.Request, name: str) -> web.Response:
    return web.Response(body=request.app[STATIC][name], content_type=ASSETS[name],
                        headers={"Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff"})


async def script(request: web.Request) -> web.Response:
    return _asset(request, "dashboard.js")


async def style(request: web.Request) -> web.Response:
    return _asset(request, "dashboard.css")


async def live(request: web.Request) -> web.StreamResponse:
    """The live calls as server-sent events (read with fetch(): the token goes in the
    Authorization header, which EventSource cannot send)."""
    feed = request.app[FEED]
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no"})
    # A scoped token's subtree, looked up once for this client (by the token check).
    q = await feed.subscribe(_subtree(request))
    try:
        await resp.prepare(request)
        await resp.write(f"retry: 2000\n: interval {feed.interval_s}s\n\n".encode())
        while (item := await q.get()) is not None:
            await resp.write(item)
    except ConnectionResetError:  # the client went away
        pass
    finally:
        feed.unsubscribe(q)
    return resp


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter; ValueError naming it when it is not one in range."""
    text = request.query.get(name)
    if text is None:
        return default
    if not text.strip().isdigit() or not lo <= int(text) <= hi:
        raise ValueError(f"{name} must be an integer between {lo} and {hi}")
    return int(text)


async def summary_handler(request: web.Request) -> web.Response:
    try:
        days = _int_query(request, "days", 30, 1, 3660)
        min_calls = _int_query(request, "min_calls", 20, 1, 1_000_000)
    except ValueError as exc:  # the API's error shape: {"error": ..., "errors": []}
        raise BadRequest(str(exc)) from exc
    scope, sub = request.get(SCOPE_ACCOUNT), _subtree(request)
    doc = await asyncio.get_running_loop().run_in_executor(
        request.app[STORE], lambda: summary(request.app[CONN], int(time.time() * 1000),
                                            days, min_calls, scope, sub))
    return web.json_response(doc, dumps=lambda o: json.dumps(o, default=_json_default))


#: The dashboard's routes (all GET): path -> handler.
ROUTES = (
    (PAGE, page),
    (PAGE + "/dashboard.js", script),
    (PAGE + "/dashboard.css", style),
    (PAGE + "/live", live),
    (PAGE + "/summary", summary_handler),
)


def setup_dashboard(app: web.Application, interval_s: float = INTERVAL_S) -> None:
    """Registers the dashboard's routes on the API application (``make_app``)."""
    env = Environment(loader=PackageLoader("sidecar", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    app[PAGE_HTML] = env.get_template("dashboard.html.j2").render(version=__version__,
                                                                   interval=interval_s)
    # Read once here: serving them never touches the disk from the event loop.
    app[STATIC] = {name: resources.files("sidecar").joinpath("static", name).read_bytes()
                   for name in ASSETS}
    app[FEED] = LiveFeed(app, interval_s)

    async def close_feed(app: web.Application) -> None:
        await app[FEED].close()
    app.on_shutdown.append(close_feed)
    for path, handler in ROUTES:
        app.router.add_get(path, handler)

