"""The HTTP API: CDRs with their rating, decks, balances, live calls, invoices, analytics,
usage limits and fraud events.

Reading, so a billing system can pull and reconcile automatically. Every endpoint but
``/health`` needs ``Authorization: Bearer <token>``; money is JSON strings (exact);
times are ISO 8601 UTC plus Unix ms. The few writes (an account's limits, lifting what
fraud rules did) need the admin token, a second token of at least 32 characters: without
one configured they answer 403, and so they do to the read token. The OpenAPI document is served at
``/openapi.json`` and a test keeps it in step with the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

from aiohttp import web

from ..charging.limits import Limits, LimitsError
from ..invoices import (
    InvoiceError,
    InvoiceNotFound,
    InvoiceSettings,
    Period,
    PeriodError,
    Renderer,
    draft_invoice,
    find_invoice,
    list_invoices,
    load_invoice,
    reconcile,
    reconciliation_json,
)
from ..invoices.analytics import (
    SPEND_BY,
    route_calls,
    route_stats,
    route_stats_json,
    spend,
    spend_json,
)
from ..invoices.model import to_json
from ..invoices.records import UnknownAccount, cdr_json, check_account, iso, query_cdrs
from ..invoices.render import detail_csv, file_stem
from ..money import to_text
from ..store.accounts import AccountNotFound, get_account, list_accounts
from ..store.conn import Db
from ..store.decks import PlanNotFound, deck_versions, get_plan, list_plans, load_table
from ..store.fraud import fraud_events, lift, limits_json, set_account_limits
from ..store.live import live_calls_view
from ..store.tokens import MIN_TOKEN, active_tokens, token_hash
from ..supervision.routes import PatternConfig, score_routes
from .openapi import openapi_document

log = logging.getLogger("sidecar.api")

CONN: web.AppKey[Db] = web.AppKey("conn")

#: The shortest admin token accepted (it can change what the sidecar lets through).
WRITES = frozenset({"PUT", "POST", "PATCH", "DELETE"})
SETTINGS = web.AppKey("settings", InvoiceSettings)
RENDERER = web.AppKey("renderer", Renderer)

PUBLIC = frozenset({"/health"})
MAX_LIMIT = 10_000
T = TypeVar("T")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STORE = web.AppKey("store", ThreadPoolExecutor)


def in_store(fn: Callable[[web.Request], web.StreamResponse]) -> Handler:
    """A handler that reads the store, run on the store's own thread: the event loop
    never waits on the database (a PostgreSQL server far away, a SQLite file another
    process writes), and the one connection is used by one thread at a time."""
    @functools.wraps(fn)
    async def handler(request: web.Request) -> web.StreamResponse:
        return await asyncio.get_running_loop().run_in_executor(request.app[STORE], fn,
                                                                request)
    return handler


async def _in_store(request: web.Request, fn: Callable[..., T], *args: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(
        request.app[STORE], functools.partial(fn, *args))


class BadRequest(ValueError):
    """A query parameter the client must fix (answered 400 with the message)."""


class NotFound(LookupError):
    """The thing a path names does not exist (answered 404)."""


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class TokenSet:
    """The tokens the API accepts, as their SHA-256 only: those given to ``sidecar api``
    (a file or the environment) and those in the store (``sidecar token create``),
    re-read every few seconds so a new or revoked token takes effect without a restart.
    A presented token is hashed and looked up: what the lookup's time could tell is
    about the hash, never the token."""

    def __init__(self, given: dict[str, tuple[str, str]],
                 stored: dict[str, tuple[str, str]]) -> None:
        self.given = given
        self.stored = stored

    def scope_of(self, presented: str) -> str | None:
        """``read`` or ``admin`` for a token accepted now, else None."""
        h = token_hash(presented)
        hit = self.given.get(h) or self.stored.get(h)
        return hit[1] if hit is not None else None

    def has_admin(self) -> bool:
        return any(scope == "admin" for _, scope in (*self.given.values(),
                                                      *self.stored.values()))


TOKENS = web.AppKey("tokens", TokenSet)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer-token check on everything but the public paths: a read or an admin token
    reads; only an admin token writes."""
    if request.path not in PUBLIC:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        tokens = request.app[TOKENS]
        scope = tokens.scope_of(given) if scheme.lower() == "bearer" and given else None
        if scope is None:
            return _error(401, "missing or wrong bearer token",
                          **{"WWW-Authenticate": 'Bearer realm="sidecar"'})
        if request.method in WRITES and scope != "admin":
            return _error(403, "this endpoint changes the store: it needs an admin token"
                          if tokens.has_admin() else "writes are disabled: the API has no "
                          "admin token (sidecar token create NAME --scope admin)")
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors a client can act on, as JSON: 400 bad parameter, 404 not found, 409 a
    stored document that fails its hash check."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(400, str(exc))
    except (NotFound, AccountNotFound, PlanNotFound, InvoiceNotFound, UnknownAccount) as exc:
        return _error(404, str(exc))
    except InvoiceError as exc:  # e.g. a stored document that fails its hash check
        return _error(409, str(exc))


#: The times the API takes and gives: 1970-01-01 to 9999-12-31 UTC.
_LAST_MS = 253_402_300_799_999


def _time_param(request: web.Request, name: str) -> int | None:
    """An ISO 8601 date or date-time (naive means UTC) in Unix ms; None when absent. An
    empty value, or one outside 1970-01-01 .. 9999-12-31 UTC, is a bad request."""
    text = request.query.get(name)
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"{name}: '{text}' is not an ISO 8601 date or date-time "
                         "(leave the parameter out for no bound)") from exc
    if dt.tzinfo is None:  # naive means UTC, as on the command line
        dt = dt.replace(tzinfo=UTC)
    try:
        ms = int(dt.timestamp() * 1000)
    except (OverflowError, ValueError):
        ms = -1
    if not 0 <= ms <= _LAST_MS:
        raise BadRequest(f"{name}: '{text}' is outside 1970-01-01 .. 9999-12-31 UTC")
    return ms


def _range(request: web.Request) -> tuple[int | None, int | None]:
    """The ``from`` / ``to`` window on the calls' end time (``to`` after ``from``)."""
    start, end = _time_param(request, "from"), _time_param(request, "to")
    if start is not None and end is not None and end <= start:
        raise BadRequest("to must be after from")
    return start, end


def _account(request: web.Request) -> str | None:
    """The ``account`` filter; a code no account or CDR has is 404, not an empty list."""
    code = request.query.get("account")
    if code == "":
        raise BadRequest("account: empty (leave the parameter out for every account)")
    if code is not None:
        check_account(request.app[CONN], code)
    return code


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an integer") from exc
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return value


def _now_ms() -> int:
    return int(time.time() * 1000)


def _bool_param(request: web.Request, name: str) -> bool:
    text = request.query.get(name, "").strip().lower()
    if text in ("", "false", "0", "no"):
        return False
    if text in ("true", "1", "yes"):
        return True
    raise BadRequest(f"{name} must be true or false")


async def _body(request: web.Request, required: bool) -> dict[str, object]:
    """The request's JSON object (``{}`` for an empty optional body)."""
    text = await request.text()
    if not text.strip():
        if required:
            raise BadRequest("the body must be a JSON object")
        return {}
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    return doc


# --- handlers ---------------------------------------------------------------------------

async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


@in_store
def cdrs_list(request: web.Request) -> web.Response:
    """CDRs oldest first; page with ``after_id`` = the previous page's ``next_after_id``."""
    limit = _int_param(request, "limit", 1000, 1, MAX_LIMIT)
    after = _int_param(request, "after_id", 0, 0, 2**63 - 1)
    start, end = _range(request)
    rows = [cdr_json(r) for r in query_cdrs(
        request.app[CONN], account=_account(request), from_ms=start, to_ms=end,
        after_id=after, limit=limit)]
    nxt = rows[-1]["id"] if len(rows) == limit else None
    return web.json_response({"cdrs": rows, "next_after_id": nxt})


@in_store
def cdr_one(request: web.Request) -> web.Response:
    ref = request.match_info["call_ref"]
    rows = list(query_cdrs(request.app[CONN], call_ref=ref))
    if not rows:
        raise NotFound(f"CDR '{ref}' not found")
    return web.json_response(cdr_json(rows[0]))


@in_store
def decks_list(request: web.Request) -> web.Response:
    return web.json_response({"plans": list_plans(request.app[CONN])})


@in_store
def deck_one(request: web.Request) -> web.Response:
    """A plan's settings, versions and the lines in effect (``at``, default now)."""
    conn = request.app[CONN]
    name = request.match_info["plan"]
    plan = get_plan(conn, name)
    at = _time_param(request, "at")
    if at is None:
        at = _now_ms()
    lines = load_table(conn, name).lines_in_effect(at // 1000)
    return web.json_response({
        "plan": plan.name, "currency": plan.currency, "notice_days": plan.notice_days,
        "second_rounding": plan.second_rounding.value, "chunk_seconds": plan.chunk_seconds,
        "at": iso(at), "versions": deck_versions(conn, name),
        "lines": [{"destination": ln.destination, "prefix": ln.prefix, "origin": ln.origin,
                   "rate": str(ln.rate), "increment": str(ln.increment),
                   "connection_fee": str(ln.connection_fee),
                   "minimum_charge": str(ln.minimum_charge),
                   "short_call_seconds": ln.short_call_seconds,
                   "short_call_surcharge": str(ln.short_call_surcharge),
                   "effective_from": ln.effective_from.isoformat(), "version": ln.version}
                  for ln in lines]})


@in_store
def accounts_list(request: web.Request) -> web.Response:
    return web.json_response(
        {"accounts": [a.to_dict() for a in list_accounts(request.app[CONN], _now_ms())]})


@in_store
def account_one(request: web.Request) -> web.Response:
    return web.json_response(
        get_account(request.app[CONN], request.match_info["code"], _now_ms()).to_dict())


@in_store
def live_calls(request: web.Request) -> web.Response:
    """Answered calls running now: running cost, credit reserved, paid time left."""
    calls, totals = live_calls_view(request.app[CONN], _now_ms())
    return web.json_response({"calls": calls,
                              "accounts": {k: to_text(v) for k, v in totals.items()}})


@in_store
def invoices_list(request: web.Request) -> web.Response:
    return web.json_response({"invoices": list_invoices(request.app[CONN], _account(request))})


@in_store
def invoice_one(request: web.Request) -> web.Response:
    """The frozen document (the model as issued) with its SHA-256."""
    issued = load_invoice(request.app[CONN], request.match_info["number"])
    body = f'{{"sha256":"{issued.sha256}","invoice":{to_json(issued.invoice)}}}'
    return web.Response(text=body, content_type="application/json")


@in_store
def invoice_html(request: web.Request) -> web.Response:
    issued = load_invoice(request.app[CONN], request.match_info["number"])
    html = request.app[RENDERER].html(issued)
    return web.Response(text=html, content_type="text/html")


async def invoice_pdf(request: web.Request) -> web.Response:
    issued = await _in_store(request, load_invoice, request.app[CONN],
                             request.match_info["number"])
    # Rendering a PDF takes a second or more: off the event loop.
    rendered = await asyncio.to_thread(request.app[RENDERER].render, issued, "pdf")
    return web.Response(body=rendered.pdf, content_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="{rendered.stem}.pdf"'})


async def invoice_calls_csv(request: web.Request) -> web.Response:
    issued = await _in_store(request, load_invoice, request.app[CONN],
                             request.match_info["number"])
    text = await asyncio.to_thread(detail_csv, issued.detail)
    return web.Response(text=text, content_type="text/csv", headers={
        "Content-Disposition":
            f'attachment; filename="{file_stem(issued.invoice)}-calls.csv"'})


@in_store
def reconcile_one(request: web.Request) -> web.Response:
    """Reconcile the issued invoice of ``account`` for ``period`` (else a draft of it)."""
    conn = request.app[CONN]
    account = request.query.get("account", "")
    if not account:
        raise BadRequest("account is required")
    try:
        period = Period.parse(request.query.get("period", ""))
    except PeriodError as exc:
        raise BadRequest(str(exc)) from exc
    number = find_invoice(conn, account, period)
    inv = load_invoice(conn, number).invoice if number else draft_invoice(
        conn, account, period, request.app[SETTINGS], now_ms=_now_ms()).invoice
    return web.json_response(reconciliation_json(reconcile(conn, inv)))


@in_store
def stats_spend(request: web.Request) -> web.Response:
    by = request.query.get("by", "destination")
    if by not in SPEND_BY:
        raise BadRequest(f"by must be one of {', '.join(SPEND_BY)}")
    start, end = _range(request)
    rows = spend(request.app[CONN], by, account=_account(request), from_ms=start, to_ms=end)
    return web.json_response({"by": by, "rows": spend_json(rows)})


@in_store
def stats_routes(request: web.Request) -> web.Response:
    start, end = _range(request)
    rows = route_stats(request.app[CONN], account=_account(request), from_ms=start, to_ms=end)
    return web.json_response({"routes": route_stats_json(rows)})


@in_store
def fas_routes(request: web.Request) -> web.Response:
    start, end = _range(request)
    min_calls = _int_param(request, "min_calls", 20, 1, 1_000_000)
    calls = route_calls(request.app[CONN], from_ms=start, to_ms=end, account=_account(request))
    scores = score_routes(calls, PatternConfig(min_calls=min_calls))
    return web.json_response({"routes": [r.to_dict() for r in scores]})


@in_store
def account_limits(request: web.Request) -> web.Response:
    """The limits that apply to an account, where each comes from, and its own set."""
    return web.json_response(limits_json(request.app[CONN],
                                         account=request.match_info["code"]))


@in_store
def fraud_events_list(request: web.Request) -> web.Response:
    """Fraud events oldest first (``open``: blocks and suspensions not lifted yet)."""
    start, end = _range(request)
    code = _account(request)
    return web.json_response({"events": fraud_events(
        request.app[CONN], code, start, end, _bool_param(request, "open"))})


async def account_limits_put(request: web.Request) -> web.Response:
    """Replace an account's own limits (admin): a JSON object of KEY: value or null."""
    code = request.match_info["code"]
    doc = await _body(request, required=True)
    try:
        limits = Limits.parse(doc, "limits")
    except LimitsError as exc:
        raise BadRequest(str(exc)) from exc

    def write() -> dict[str, object]:
        set_account_limits(request.app[CONN], code, limits)
        return limits_json(request.app[CONN], account=code)
    return web.json_response(await _in_store(request, write))


async def account_fraud_lift(request: web.Request) -> web.Response:
    """Lift what fraud rules did to an account (admin); body optional ``{"note": ...}``."""
    code = request.match_info["code"]
    doc = await _body(request, required=False)
    note = doc.get("note", "")
    if not isinstance(note, str):
        raise BadRequest("note must be a string")
    return web.json_response(await _in_store(request, lift, request.app[CONN], code, "api",
                                             note, _now_ms()))


ROUTES: tuple[tuple[str, Handler], ...] = (
    ("/health", health),
    ("/openapi.json", openapi),
    ("/v1/cdrs", cdrs_list),
    ("/v1/cdrs/{call_ref}", cdr_one),
    ("/v1/decks", decks_list),
    ("/v1/decks/{plan}", deck_one),
    ("/v1/accounts", accounts_list),
    ("/v1/accounts/{code}", account_one),
    ("/v1/live-calls", live_calls),
    ("/v1/invoices", invoices_list),
    ("/v1/invoices/{number}", invoice_one),
    ("/v1/invoices/{number}/html", invoice_html),
    ("/v1/invoices/{number}/pdf", invoice_pdf),
    ("/v1/invoices/{number}/calls.csv", invoice_calls_csv),
    ("/v1/reconcile", reconcile_one),
    ("/v1/stats/spend", stats_spend),
    ("/v1/stats/routes", stats_routes),
    ("/v1/fas/routes", fas_routes),
    ("/v1/accounts/{code}/limits", account_limits),
    ("/v1/fraud-events", fraud_events_list),
)
#: The endpoints that change the store (the admin token only): (method, path, handler).
WRITE_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("PUT", "/v1/accounts/{code}/limits", account_limits_put),
    ("POST", "/v1/accounts/{code}/fraud/lift", account_fraud_lift),
)


def make_app(conn: Db, token: str = "", *, settings: InvoiceSettings | None = None,
             admin_token: str = "", refresh_s: float = 2.0) -> web.Application:
    """The API application on a database connection. It answers holders of ``token``
    (read) and ``admin_token`` (the writes too), given here, and of the store's tokens
    (``sidecar token create``), re-read every ``refresh_s``; it keeps only their
    hashes. Refuses (ValueError) a given token shorter than ``MIN_TOKEN`` characters,
    the same token for both, and having no token at all."""
    given: dict[str, tuple[str, str]] = {}
    for name, scope, value in (("--token-file", "read", token),
                               ("--admin-token-file", "admin", admin_token)):
        value = value.strip()
        if not value:
            continue
        if len(value) < MIN_TOKEN:
            raise ValueError(f"the {scope} token must be at least {MIN_TOKEN} characters "
                             f"(it has {len(value)}): make one with 'sidecar token create'")
        if token_hash(value) in given:
            raise ValueError("the admin token must differ from the read token")
        given[token_hash(value)] = (name, scope)
    tokens = TokenSet(given, active_tokens(conn))
    if not given and not tokens.stored:
        raise ValueError("the API needs a token: 'sidecar token create NAME', or "
                         "--token-file FILE / $SIDECAR_API_TOKEN")
    settings = settings or InvoiceSettings()
    app = web.Application(middlewares=[_errors, _auth])
    app[CONN] = conn
    app[TOKENS] = tokens
    app[SETTINGS] = settings
    app[RENDERER] = Renderer(settings.template_dir or None)
    app[STORE] = ThreadPoolExecutor(1, thread_name_prefix="api-store")

    async def refresh_tokens(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(refresh_s)
                try:
                    tokens.stored = await asyncio.get_running_loop().run_in_executor(
                        app[STORE], active_tokens, conn)
                except Exception as exc:  # the store is away: keep the last word
                    log.warning("could not re-read the API tokens: %s", exc)
        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close_store(app: web.Application) -> None:
        app[STORE].shutdown(wait=True)
    app.cleanup_ctx.append(refresh_tokens)
    app.on_cleanup.append(close_store)
    for path, handler in ROUTES:
        app.router.add_get(path, handler)  # GET also answers HEAD
    for method, path, handler in WRITE_ROUTES:
        app.router.add_route(method, path, handler)
    return app
