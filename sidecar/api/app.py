"""The HTTP API: CDRs with their rating, decks, balances, live calls, invoices, analytics,
usage limits and fraud events; and, with an admin token, the writes: accounts, top-ups,
adjustments, suspension, limits, fraud lifts and deck imports.

Every endpoint but ``/health`` needs ``Authorization: Bearer <token>``; a read token
reads, only an admin token writes. Each route is declared once in :data:`ENDPOINTS`
(method, path, parameters, the request and response models of :mod:`.models`, the
errors it may answer), from which the router is built and the OpenAPI document
(``/openapi.json``) generated. Every response is its model serialised: money as plain
decimal strings, times as ISO 8601 UTC with milliseconds. A write runs the store
functions the command line runs, so it validates and behaves alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import re
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..charging.commands import Topup as TopupCommand
from ..charging.limits import Limits, LimitsError
from ..charging.model import AccountKind
from ..invoices import (
    InvoiceError,
    InvoiceNotFound,
    InvoiceSettings,
    Issued,
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
    MARGIN_BY,
    SPEND_BY,
    margins,
    margins_json,
    route_calls,
    route_stats,
    route_stats_json,
    spend,
    spend_json,
)
from ..invoices.model import to_json
from ..invoices.records import UnknownAccount, cdr_json, check_account, query_cdrs
from ..invoices.render import detail_csv, file_stem
from ..money import CURRENCY_MINOR_UNITS, ZERO, MoneyError
from ..rating import DeckError
from ..rating.bundles import Bundle, BundleError
from ..rating.fx import FxError
from ..store.accounts import (
    AccountExists,
    AccountNotFound,
    add_account,
    get_account,
    ledger_for,
    list_accounts,
    set_suspended,
    subtree,
)
from ..store.bundles import BundleNotFound, add_bundle, bundle_status, remove_bundle
from ..store.carriers import carrier_rows
from ..store.conn import Db
from ..store.decks import (
    ImportConflict,
    PlanNotFound,
    deck_versions,
    get_plan,
    import_deck,
    list_plans,
    load_table,
)
from ..store.fraud import fraud_events, lift, limits_json, set_account_limits
from ..store.live import live_calls_view
from ..store.tokens import MIN_TOKEN, active_tokens, token_hash
from ..supervision.routes import PatternConfig, score_routes
from . import models as m
from .openapi import Endpoint, Param, openapi_document

log = logging.getLogger("sidecar.api")

CONN: web.AppKey[Db] = web.AppKey("conn")

#: The shortest admin token accepted (it can change what the sidecar lets through).
WRITES = frozenset({"PUT", "POST", "PATCH", "DELETE"})
SETTINGS = web.AppKey("settings", InvoiceSettings)
RENDERER = web.AppKey("renderer", Renderer)

# The dashboard's page, script and style sheet hold no data (api/dashboard.py): public.
PUBLIC = frozenset({"/health", "/dashboard", "/dashboard/dashboard.js",
                    "/dashboard/dashboard.css"})
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
    """A request that does not match the OpenAPI document: a malformed parameter or
    body (answered 400 with the message)."""


class NotFound(LookupError):
    """The thing a path names does not exist (answered 404)."""


class Conflict(ValueError):
    """The request conflicts with what is stored (answered 409)."""


class Unprocessable(ValueError):
    """Well formed, but refused by a rule the document cannot state (answered 422);
    ``errors`` lists every problem (a refused deck's, as the command line prints them)."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


def _error(status: int, message: str, errors: list[str] | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    """An error as JSON (:class:`.models.Error`): the message, and every problem."""
    return web.json_response({"error": message, "errors": errors or []}, status=status,
                             headers=headers)


class TokenSet:
    """The tokens the API accepts, as their SHA-256 only: those given to ``sidecar api``
    (a file or the environment) and those in the store (``sidecar token create``),
    re-read every few seconds so a new or revoked token takes effect without a restart.
    A presented token is hashed and looked up: what the lookup's time could tell is
    about the hash, never the token."""

    def __init__(self, given: dict[str, tuple[str, str]],
                 stored: dict[str, tuple[str, str, str]]) -> None:
        self.given = given
        self.stored = stored

    def scope_of(self, presented: str) -> str | None:
        """``read`` or ``admin`` for a token accepted now, else None."""
        return self.lookup(presented)[0]

    def lookup(self, presented: str) -> tuple[str | None, str]:
        """(``read``/``admin``, or None when not accepted; the account the token is
        scoped to, "" for the whole store)."""
        h = token_hash(presented)
        hit = self.given.get(h)
        if hit is not None:
            return hit[1], ""
        got = self.stored.get(h)
        return (got[1], got[2]) if got is not None else (None, "")

    def has_admin(self) -> bool:
        return any(v[1] == "admin" for v in (*self.given.values(), *self.stored.values()))


TOKENS = web.AppKey("tokens", TokenSet)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer-token check on everything but the public paths: a read or an admin token
    reads; only an admin token writes."""
    if request.path not in PUBLIC:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        tokens = request.app[TOKENS]
        scope, account = tokens.lookup(given) if scheme.lower() == "bearer" and given else (
            None, "")
        if scope is None:
            return _error(401, "missing or wrong bearer token",
                          headers={"WWW-Authenticate": 'Bearer realm="sidecar"'})
        if account:
            refused = await _scoped(request, account)
            if refused is not None:
                return refused
        if request.method in WRITES and scope != "admin" and \
                request.match_info.http_exception is None:  # (no such route: 404/405)
            return _error(403, "this endpoint changes the store: it needs an admin token"
                          if tokens.has_admin() else "writes are disabled: the API has no "
                          "admin token (sidecar token create NAME --scope admin)")
    return await handler(request)


#: What a token scoped to an account may read (its subtree's records); anything else
#: (rate plans, carriers, margins, route reports) is the operator's.
SCOPED_PATHS = frozenset({
    "/v1/cdrs", "/v1/cdrs/{call_ref}", "/v1/accounts", "/v1/accounts/{code}",
    "/v1/accounts/{code}/limits", "/v1/accounts/{code}/bundles", "/v1/live-calls",
    "/v1/invoices", "/v1/invoices/{number}", "/v1/invoices/{number}/html",
    "/v1/invoices/{number}/pdf", "/v1/invoices/{number}/calls.csv", "/v1/stats/spend",
    "/v1/fraud-events", "/v1/reconcile",
    # The dashboard's data, filtered to the subtree (api/dashboard.py: no FAS, carriers).
    "/dashboard/live", "/dashboard/summary"})
#: Request key: the accounts a scoped token may read.
SUBTREE = web.RequestKey("subtree", frozenset)
#: Request key: the account a scoped token is scoped to (the top of its subtree).
SCOPE_ACCOUNT = web.RequestKey("scope_account", str)


async def _scoped(request: web.Request, account: str) -> web.StreamResponse | None:
    """A token scoped to ``account`` reads that account and those below it only: other
    paths are refused (403), another account is not found (404); lists are filtered by
    the handlers (``request[SUBTREE]``)."""
    route = request.match_info.route.resource
    template = route.canonical if route is not None else request.path
    if request.match_info.http_exception is not None:
        return None  # no such route: 404/405 as for anyone
    if template not in SCOPED_PATHS:
        return _error(403, f"a token scoped to account {account} reads only its accounts' "
                           f"records, not {template}")
    sub = await _in_store(request, subtree, request.app[CONN], account)
    request[SUBTREE] = sub
    request[SCOPE_ACCOUNT] = account
    for code in (request.match_info.get("code"), request.query.get("account")):
        if code and code not in sub:
            return _error(404, f"account '{code}' not found")
    return None


def _subtree(request: web.Request) -> frozenset[str] | None:
    """The accounts a scoped token may read; None: every account."""
    return request.get(SUBTREE)


def _visible(request: web.Request, row: dict[str, object]) -> dict[str, object]:
    """A CDR as a scoped token may see it: the prices of resellers above its subtree
    left out."""
    sub = _subtree(request)
    tiers = row.get("tiers")
    if sub is not None and isinstance(tiers, list):
        row["tiers"] = [t for t in tiers if t.get("account") in sub] or None
    return row


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors a client can act on, as JSON: 400 a malformed request, 404 not found, 405
    a method the path does not take, 409 a conflict with what is stored (e.g. a document
    that fails its hash check), 413 a body too large, 422 refused by a rule."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(400, str(exc))
    except (NotFound, AccountNotFound, PlanNotFound, InvoiceNotFound, UnknownAccount) as exc:
        return _error(404, str(exc))
    except (Conflict, InvoiceError) as exc:
        return _error(409, str(exc))
    except Unprocessable as exc:
        return _error(422, str(exc), exc.errors)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        what = {404: "no such path", 405: f"{request.path} does not take {request.method}",
                413: "the body is too large"}.get(exc.status, exc.reason)
        return _error(exc.status, what, headers=allow)


#: The times the API takes and gives: 1970-01-01 to 9999-12-31 UTC.
_LAST_MS = 253_402_300_799_999
#: A time parameter: an ISO 8601 date, or date and time (naive means UTC).
TIME_PARAM = (r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])([T ]([01][0-9]|2[0-3]):"
              r"[0-5][0-9](:[0-5][0-9](\.[0-9]{1,9})?)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?$")
_TIME_PARAM = re.compile(TIME_PARAM)
_INT = re.compile(r"^-?[0-9]{1,19}$")


def _time_param(request: web.Request, name: str) -> int | None:
    """An ISO 8601 date or date-time (naive means UTC) in Unix ms; None when absent. An
    empty or malformed value is a bad request (400); a date that does not exist, or one
    outside 1970-01-01 .. 9999-12-31 UTC, is refused (422)."""
    text = request.query.get(name)
    if text is None:
        return None
    if not _TIME_PARAM.search(text):
        raise BadRequest(f"{name}: '{text}' is not an ISO 8601 date or date-time "
                         "(leave the parameter out for no bound)")
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Unprocessable(f"{name}: '{text}' is not a date and time that exists") from exc
    if dt.tzinfo is None:  # naive means UTC, as on the command line
        dt = dt.replace(tzinfo=UTC)
    try:
        ms = int(dt.timestamp() * 1000)
    except (OverflowError, ValueError):
        ms = -1
    if not 0 <= ms <= _LAST_MS:
        raise Unprocessable(f"{name}: '{text}' is outside 1970-01-01 .. 9999-12-31 UTC")
    return ms


def _range(request: web.Request) -> tuple[int | None, int | None]:
    """The ``from`` / ``to`` window on the calls' end time (``to`` after ``from``)."""
    start, end = _time_param(request, "from"), _time_param(request, "to")
    if start is not None and end is not None and end <= start:
        raise Unprocessable("to must be after from")
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
    if not _INT.match(text):
        raise BadRequest(f"{name} must be an integer")
    value = int(text)
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return value


def _now_ms() -> int:
    return int(time.time() * 1000)


def _bool_param(request: web.Request, name: str) -> bool:
    text = request.query.get(name, "false")
    if text not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false")
    return text == "true"


M = TypeVar("M", bound=BaseModel)


async def _parse(request: web.Request, model: type[M], where: str, required: bool) -> M:
    """The request's JSON body validated against ``model`` (its defaults for an empty
    optional body); a body the model refuses is a 400 naming each field and why."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise BadRequest("the body must be a JSON object")
        raw = b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc, model, where) from None


def _invalid(exc: ValidationError, model: type[BaseModel], where: str) -> BadRequest:
    problems = []
    for e in exc.errors(include_url=False):
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == "json_invalid":
            return BadRequest(f"the body is not JSON: {e['msg']}")
        if not loc:
            return BadRequest("the body must be a JSON object")
        text = e["msg"]
        if e["type"] == "extra_forbidden":
            text = f"unknown field (known: {', '.join(model.model_fields)})"
        problems.append(f"{where}.{loc}: {text}")
    return BadRequest("; ".join(problems))


def _reply(model: type[BaseModel], data: object, status: int = 200) -> web.Response:
    """``data`` as ``model`` says: validated, then serialised (money, times, nulls)."""
    return web.Response(body=model.model_validate(data).model_dump_json(exclude_unset=True),
                        status=status, content_type="application/json")


def _amount(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


# --- handlers: reads --------------------------------------------------------------------

async def health(request: web.Request) -> web.Response:
    return _reply(m.Health, {"status": "ok"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


@in_store
def cdrs_list(request: web.Request) -> web.Response:
    """CDRs oldest first; page with ``after_id`` = the previous page's ``next_after_id``."""
    limit = _int_param(request, "limit", 1000, 1, MAX_LIMIT)
    after = _int_param(request, "after_id", 0, 0, 2**63 - 1)
    start, end = _range(request)
    rows = [_visible(request, cdr_json(r)) for r in query_cdrs(
        request.app[CONN], account=_account(request), from_ms=start, to_ms=end,
        after_id=after, limit=limit, accounts=_subtree(request))]
    nxt = rows[-1]["id"] if len(rows) == limit else None
    return _reply(m.CdrPage, {"cdrs": rows, "next_after_id": nxt})


@in_store
def cdr_one(request: web.Request) -> web.Response:
    ref = request.match_info["call_ref"]
    rows = list(query_cdrs(request.app[CONN], call_ref=ref, accounts=_subtree(request)))
    if not rows:
        raise NotFound(f"CDR '{ref}' not found")
    return _reply(m.Cdr, _visible(request, cdr_json(rows[0])))


@in_store
def decks_list(request: web.Request) -> web.Response:
    return _reply(m.Plans, {"plans": list_plans(request.app[CONN])})


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
    return _reply(m.Deck, {
        "plan": plan.name, "currency": plan.currency, "notice_days": plan.notice_days,
        "second_rounding": plan.second_rounding.value, "chunk_seconds": plan.chunk_seconds,
        "at": at, "versions": deck_versions(conn, name),
        "lines": [{"destination": ln.destination, "prefix": ln.prefix, "origin": ln.origin,
                   "rate": ln.rate, "increment": str(ln.increment),
                   "connection_fee": ln.connection_fee, "minimum_charge": ln.minimum_charge,
                   "short_call_seconds": ln.short_call_seconds,
                   "short_call_surcharge": ln.short_call_surcharge,
                   "effective_from": ln.effective_from, "version": ln.version}
                  for ln in lines]})


@in_store
def accounts_list(request: web.Request) -> web.Response:
    sub = _subtree(request)
    return _reply(m.Accounts, {"accounts": [
        a.to_dict() for a in list_accounts(request.app[CONN], _now_ms())
        if sub is None or a.code in sub]})


@in_store
def account_one(request: web.Request) -> web.Response:
    return _reply(m.Account, get_account(request.app[CONN], request.match_info["code"],
                                         _now_ms()).to_dict())


@in_store
def live_calls(request: web.Request) -> web.Response:
    """Answered calls running now: running cost, credit reserved, paid time left."""
    calls, totals = live_calls_view(request.app[CONN], _now_ms())
    sub = _subtree(request)
    if sub is not None:
        calls = [c for c in calls if c["account"] in sub]
        totals = {k: v for k, v in totals.items() if k in sub}
    return _reply(m.LiveCalls, {"calls": calls, "accounts": totals})


@in_store
def invoices_list(request: web.Request) -> web.Response:
    sub = _subtree(request)
    return _reply(m.Invoices, {"invoices": [
        i for i in list_invoices(request.app[CONN], _account(request))
        if sub is None or i["account"] in sub]})


@in_store
def invoice_one(request: web.Request) -> web.Response:
    """The frozen document (the model as issued) with its SHA-256."""
    issued = _invoice(request)
    return _reply(m.IssuedInvoice, {"sha256": issued.sha256,
                                    "invoice": json.loads(to_json(issued.invoice))})


@in_store
def invoice_html(request: web.Request) -> web.Response:
    issued = _invoice(request)
    html = request.app[RENDERER].html(issued)
    return web.Response(text=html, content_type="text/html")


def _invoice(request: web.Request) -> Issued:
    """The invoice the path names, if the token may read it (else not found)."""
    number = request.match_info["number"]
    issued = load_invoice(request.app[CONN], number)
    sub = _subtree(request)
    if sub is not None and issued.invoice.account not in sub:
        raise NotFound(f"invoice '{number}' not found")
    return issued


async def invoice_pdf(request: web.Request) -> web.Response:
    issued = await _in_store(request, _invoice, request)
    # Rendering a PDF takes a second or more: off the event loop.
    rendered = await asyncio.to_thread(request.app[RENDERER].render, issued, "pdf")
    return web.Response(body=rendered.pdf, content_type="application/pdf", headers={
        "Content-Disposition": f'inline; filename="{rendered.stem}.pdf"'})


async def invoice_calls_csv(request: web.Request) -> web.Response:
    issued = await _in_store(request, _invoice, request)
    text = await asyncio.to_thread(detail_csv, issued.detail)
    return web.Response(text=text, content_type="text/csv", headers={
        "Content-Disposition":
            f'attachment; filename="{file_stem(issued.invoice)}-calls.csv"'})


_PERIOD = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")


@in_store
def reconcile_one(request: web.Request) -> web.Response:
    """Reconcile the issued invoice of ``account`` for ``period`` (else a draft of it)."""
    conn = request.app[CONN]
    account = request.query.get("account", "")
    if not account:
        raise BadRequest("account is required")
    text = request.query.get("period", "")
    try:
        if not _PERIOD.search(text):
            raise BadRequest(f"period '{text}' is not a month like 2026-11")
        period = Period.parse(text)
    except PeriodError as exc:
        raise Unprocessable(str(exc)) from exc
    number = find_invoice(conn, account, period)
    inv = load_invoice(conn, number).invoice if number else draft_invoice(
        conn, account, period, request.app[SETTINGS], now_ms=_now_ms()).invoice
    return _reply(m.Reconciliation, reconciliation_json(reconcile(conn, inv)))


@in_store
def stats_spend(request: web.Request) -> web.Response:
    if _subtree(request) is not None and not request.query.get("account"):
        raise BadRequest("a token scoped to an account reports on one account at a time: "
                         "give account")
    by = request.query.get("by", "destination")
    if by not in SPEND_BY:
        raise BadRequest(f"by must be one of {', '.join(SPEND_BY)}")
    start, end = _range(request)
    currency = request.query.get("currency")
    try:
        rows = spend(request.app[CONN], by, account=_account(request), from_ms=start,
                     to_ms=end, currency=currency)
    except MoneyError as exc:  # three letters, but no currency this API knows
        raise Unprocessable(f"currency: {exc}") from None
    except FxError as exc:
        raise Unprocessable(str(exc)) from None
    return _reply(m.Spend, {"by": by, "rows": [{"parent": None, **r}
                                               for r in spend_json(rows)]})


@in_store
def stats_routes(request: web.Request) -> web.Response:
    start, end = _range(request)
    rows = route_stats(request.app[CONN], account=_account(request), from_ms=start, to_ms=end)
    return _reply(m.Routes, {"routes": route_stats_json(rows)})


@in_store
def stats_margin(request: web.Request) -> web.Response:
    by = request.query.get("by", "carrier")
    if by not in MARGIN_BY:
        raise BadRequest(f"by must be one of {', '.join(MARGIN_BY)}")
    start, end = _range(request)
    rows = margins(request.app[CONN], by, account=_account(request), from_ms=start,
                   to_ms=end)
    return _reply(m.Margins, {"by": by, "rows": margins_json(rows)})


@in_store
def carriers_list(request: web.Request) -> web.Response:
    return _reply(m.Carriers, {"carriers": carrier_rows(request.app[CONN])})


@in_store
def fas_routes(request: web.Request) -> web.Response:
    start, end = _range(request)
    min_calls = _int_param(request, "min_calls", 20, 1, 1_000_000)
    calls = route_calls(request.app[CONN], from_ms=start, to_ms=end, account=_account(request))
    scores = score_routes(calls, PatternConfig(min_calls=min_calls))
    return _reply(m.FasRoutes, {"routes": [r.to_dict() for r in scores]})


@in_store
def account_limits(request: web.Request) -> web.Response:
    """The limits that apply to an account, where each comes from, and its own set."""
    return _reply(m.Limits, limits_json(request.app[CONN], account=request.match_info["code"]))


@in_store
def account_bundles(request: web.Request) -> web.Response:
    """An account's free-minute bundles in the period holding ``at`` (default now)."""
    conn = request.app[CONN]
    acc = get_account(conn, request.match_info["code"])
    at = _time_param(request, "at")
    if at is None:
        at = _now_ms()
    rows = bundle_status(conn, acc.code, acc.plan, datetime.fromtimestamp(at / 1000, UTC))
    return _reply(m.Bundles, {"account": acc.code, "at": at, "bundles": rows})


@in_store
def fraud_events_list(request: web.Request) -> web.Response:
    """Fraud events oldest first (``open``: blocks and suspensions not lifted yet)."""
    start, end = _range(request)
    code = _account(request)
    sub = _subtree(request)
    return _reply(m.FraudEvents, {"events": [
        e for e in fraud_events(request.app[CONN], code, start, end,
                                _bool_param(request, "open"))
        if sub is None or e["account"] in sub]})


# --- handlers: writes (admin) ------------------------------------------------------------

async def account_create(request: web.Request) -> web.Response:
    """Create an account as ``sidecar account add`` does (an initial ``balance`` is its
    first top-up). An account of that code already is a 409; a plan or parent that does
    not exist, or a tree too deep, a 422."""
    body = await _parse(request, m.AccountCreate, "account", required=True)

    def write() -> dict[str, object]:
        conn, now = request.app[CONN], _now_ms()
        try:
            acc = add_account(
                conn, body.code, body.plan, AccountKind(body.kind), now_ms=now,
                name=body.name, credit_limit=_amount(body.credit_limit) or ZERO,
                daily_cap=_amount(body.daily_cap), monthly_cap=_amount(body.monthly_cap),
                chunk_seconds=body.chunk_seconds, max_call_seconds=body.max_call_seconds,
                low_balance=_amount(body.low_balance),
                recharge_below=_amount(body.recharge_below),
                recharge_amount=_amount(body.recharge_amount), address=body.address,
                tax_number=body.tax_number, tax_rate=Decimal(body.tax_rate),
                parent=body.parent)
            initial = _amount(body.balance)
            if initial:
                acc = ledger_for(conn).topup(body.code, initial, now, "initial balance")
        except AccountExists as exc:
            raise Conflict(str(exc)) from exc
        except (AccountNotFound, PlanNotFound, ValueError) as exc:
            raise Unprocessable(str(exc)) from exc
        return acc.to_dict()
    return _reply(m.Account, await _in_store(request, write), 201)


IDEMPOTENCY = re.compile(r"^[!-~]{1,200}$")


async def account_topup(request: web.Request) -> web.Response:
    """Credit a payment. The ``Idempotency-Key`` names the payment: a request repeated
    with the same key (a retry after a lost answer) credits nothing more and answers
    ``replayed: true``. The key is kept by the store, like an automatic recharge's."""
    code = request.match_info["code"]
    key = request.headers.get("Idempotency-Key")
    if key is None or not IDEMPOTENCY.search(key):
        raise BadRequest("Idempotency-Key: a header of 1-200 visible ASCII characters is "
                         "required (the same key for a retry of the same payment)")
    body = await _parse(request, m.TopupBody, "topup", required=True)
    amount = Decimal(body.amount)
    if amount <= 0:
        raise Unprocessable("topup.amount: a top-up must be positive")

    def write() -> dict[str, object]:
        conn, now = request.app[CONN], _now_ms()
        get_account(conn, code)  # an unknown account is a 404
        res = ledger_for(conn).execute([TopupCommand(0, code, amount, body.note,
                                                     f"api-topup:{code}:{key}", now)])
        (out,) = res.outcomes
        if not out.ok or out.settlement is None:
            raise RuntimeError(f"the top-up was not stored: {out.error or res.error}")
        return {"replayed": out.settlement.duplicate,
                "account": get_account(conn, code, now).to_dict()}
    done = await _in_store(request, write)
    return _reply(m.Topup, done, 200 if done["replayed"] else 201)


async def account_adjust(request: web.Request) -> web.Response:
    """Add or take away money (``sidecar account topup --adjust``): a prepaid balance
    that would go below zero is a 409, and nothing changes."""
    code = request.match_info["code"]
    body = await _parse(request, m.AdjustmentBody, "adjustment", required=True)

    def write() -> dict[str, object]:
        try:
            return ledger_for(request.app[CONN]).topup(
                code, Decimal(body.amount), _now_ms(), body.note, "adjustment").to_dict()
        except ValueError as exc:
            raise Conflict(str(exc)) from exc
    return _reply(m.Account, await _in_store(request, write), 201)


async def account_suspend(request: web.Request) -> web.Response:
    """Refuse the account's new calls (403) until it is resumed."""
    code = request.match_info["code"]
    body = await _parse(request, m.SuspendBody, "suspend", required=False)

    def write() -> dict[str, object]:
        set_suspended(request.app[CONN], code, True, body.reason)
        return get_account(request.app[CONN], code, _now_ms()).to_dict()
    return _reply(m.Account, await _in_store(request, write))


async def account_resume(request: web.Request) -> web.Response:
    """Accept the account's calls again."""
    code = request.match_info["code"]

    def write() -> dict[str, object]:
        set_suspended(request.app[CONN], code, False)
        return get_account(request.app[CONN], code, _now_ms()).to_dict()
    return _reply(m.Account, await _in_store(request, write))


async def account_limits_put(request: web.Request) -> web.Response:
    """Replace an account's own limits: a JSON object of KEY: value or null."""
    code = request.match_info["code"]
    body = await _parse(request, m.LimitsBody, "limits", required=True)
    try:
        limits = Limits.parse(body.model_dump(exclude_unset=True), "limits")
    except LimitsError as exc:
        raise Unprocessable(str(exc)) from exc

    def write() -> dict[str, object]:
        set_account_limits(request.app[CONN], code, limits)
        return limits_json(request.app[CONN], account=code)
    return _reply(m.Limits, await _in_store(request, write))


async def account_bundle_add(request: web.Request) -> web.Response:
    """Give the account a free-minute bundle (201, with its bundles as they now stand)."""
    code = request.match_info["code"]
    body = await _parse(request, m.BundleBody, "bundle", required=True)
    try:
        bundle = Bundle(body.name, body.seconds, frozenset(body.destinations),
                        tuple(body.prefixes), body.period, body.anchor_day)
    except BundleError as exc:
        raise Unprocessable(f"bundle: {exc}") from exc

    def write() -> dict[str, object]:
        conn = request.app[CONN]
        acc = get_account(conn, code)  # an unknown account is a 404
        try:
            add_bundle(conn, "account", acc.code, bundle, now_ms=_now_ms())
        except BundleError as exc:
            raise Conflict(str(exc)) from exc
        return _bundles_now(conn, acc.code, acc.plan)
    return _reply(m.Bundles, await _in_store(request, write), status=201)


async def account_bundle_remove(request: web.Request) -> web.Response:
    """Remove one of the account's own bundles (its bundles as they now stand)."""
    code, name = request.match_info["code"], request.match_info["name"]

    def write() -> dict[str, object]:
        conn = request.app[CONN]
        acc = get_account(conn, code)
        try:
            remove_bundle(conn, "account", acc.code, name)
        except BundleNotFound as exc:
            raise NotFound(str(exc)) from exc
        return _bundles_now(conn, acc.code, acc.plan)
    return _reply(m.Bundles, await _in_store(request, write))


def _bundles_now(conn: Db, code: str, plan: str) -> dict[str, object]:
    now = _now_ms()
    return {"account": code, "at": now, "bundles": bundle_status(
        conn, code, plan, datetime.fromtimestamp(now / 1000, UTC))}


async def account_fraud_lift(request: web.Request) -> web.Response:
    """Lift what fraud rules did to an account; body optional ``{"note": ...}``."""
    code = request.match_info["code"]
    body = await _parse(request, m.LiftBody, "lift", required=False)
    return _reply(m.Lift, await _in_store(request, lift, request.app[CONN], code, "api",
                                          body.note, _now_ms()))


FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


async def deck_import(request: web.Request) -> web.Response:
    """Import the CSV body as the plan's next deck version (the plan is made if new), as
    ``sidecar deck import`` does: all or nothing. A deck with any problem imports no
    row and answers 422 with every problem (file:line:column) as the command line
    prints them, the file named by ``filename``."""
    plan = request.match_info["plan"]
    if not 1 <= len(plan) <= 64:
        raise BadRequest("plan: 1-64 characters")
    filename = request.query.get("filename", "deck.csv")
    if not FILENAME.search(filename):
        raise BadRequest(f"filename: '{filename}' is not a file name (letters, digits, "
                         ". _ -; at most 128)")
    currency = request.query.get("currency")
    if currency is not None and currency not in CURRENCY_MINOR_UNITS:
        raise BadRequest(f"currency: '{currency}' is not an ISO 4217 code such as USD")
    notice = request.query.get("notice_days")
    notice_days = None if notice is None else _int_param(request, "notice_days", 0, 0, 3650)
    raw = await request.read()

    def write() -> dict[str, object]:
        with tempfile.TemporaryDirectory(prefix="sidecar-deck-") as tmp:
            path = Path(tmp) / filename
            path.write_bytes(raw)
            try:
                res = import_deck(request.app[CONN], plan, path, currency=currency,
                                  notice_days=notice_days)
            except ImportConflict as exc:
                raise Conflict(_problems(exc, str(path), filename)[0]) from exc
            except DeckError as exc:
                problems = _problems(exc, str(path), filename)
                raise Unprocessable(f"deck refused, nothing imported: {len(exc.problems)}"
                                    f"{'+' if exc.more else ''} problems",
                                    problems) from exc
        return dataclasses.asdict(res)
    return _reply(m.DeckImport, await _in_store(request, write), 201)


def _problems(exc: DeckError, path: str, name: str) -> list[str]:
    """A refused deck's problems as the command line prints them, the file named as the
    client named it (not the temporary file it was written to)."""
    out = [str(dataclasses.replace(p, source=name if p.source == path else p.source))
           for p in exc.problems]
    if exc.more:
        out.append(f"... and {exc.more} more problems")
    return out


# --- the route table ----------------------------------------------------------------------

_TIME = {"type": "string", "pattern": TIME_PARAM,
         "examples": ["2026-11-01", "2026-11-21T12:00:00Z"]}
_CODE = Param("code", "path", "Account code.", {"type": "string", "minLength": 1})
_ACCOUNT_Q = Param("account", "query", "Only this account (404 when no account or CDR has "
                   "it).", {"type": "string", "minLength": 1})
_FROM = Param("from", "query", "Calls that ended at or after this time (ISO 8601; naive "
              "means UTC).", _TIME)
_TO = Param("to", "query", "Calls that ended before this time (after from).", _TIME)
_NUMBER = Param("number", "path", "Invoice or credit note number.")
_DOC = (409,)  # a stored document whose data no longer matches its SHA-256 is refused

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/health", health, "Liveness (no token needed).", m.Health,
             public=True),
    Endpoint("GET", "/openapi.json", openapi, "This document.", "application/json"),
    Endpoint("GET", "/v1/cdrs", cdrs_list,
             "CDRs with their per-call rating, oldest first, paged by id.", m.CdrPage,
             params=(_ACCOUNT_Q, _FROM, _TO,
                     Param("after_id", "query", "CDRs after this id (the previous page's "
                           "next_after_id).", {"type": "integer", "minimum": 0,
                                               "maximum": 2**63 - 1}),
                     Param("limit", "query", "Page size (default 1000).",
                           {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT})),
             errors=(400, 404, 422)),
    Endpoint("GET", "/v1/cdrs/{call_ref}", cdr_one, "One CDR by call reference.", m.Cdr,
             params=(Param("call_ref", "path", "The call's reference."),)),
    Endpoint("GET", "/v1/decks", decks_list, "Rate plans.", m.Plans),
    Endpoint("GET", "/v1/decks/{plan}", deck_one,
             "A plan's deck: lines in effect at a time, plus scheduled ones.", m.Deck,
             params=(Param("plan", "path", "Plan name."),
                     Param("at", "query", "Time (ISO 8601), default now.", _TIME)),
             errors=(400, 422)),
    Endpoint("GET", "/v1/accounts", accounts_list, "Balances of every account.",
             m.Accounts),
    Endpoint("GET", "/v1/accounts/{code}", account_one, "One account: balance, holds, "
             "limits.", m.Account, params=(_CODE,)),
    Endpoint("GET", "/v1/live-calls", live_calls, "Answered calls running now: running "
             "cost (fees included), reserved credit, paid time left; each account's "
             "running total.", m.LiveCalls),
    Endpoint("GET", "/v1/invoices", invoices_list,
             "Issued invoices and credit notes, newest first.", m.Invoices,
             params=(_ACCOUNT_Q,), errors=(400, 404)),
    Endpoint("GET", "/v1/invoices/{number}", invoice_one,
             "An issued document's frozen data and SHA-256.", m.IssuedInvoice,
             params=(_NUMBER,), errors=_DOC),
    Endpoint("GET", "/v1/invoices/{number}/html", invoice_html, "The document as HTML.",
             "text/html", params=(_NUMBER,), errors=_DOC),
    Endpoint("GET", "/v1/invoices/{number}/pdf", invoice_pdf, "The document as PDF (a "
             "large call detail attached as CSV).", "application/pdf", params=(_NUMBER,),
             errors=_DOC),
    Endpoint("GET", "/v1/invoices/{number}/calls.csv", invoice_calls_csv,
             "The document's call detail as CSV (spreadsheet-safe).", "text/csv",
             params=(_NUMBER,), errors=_DOC),
    Endpoint("GET", "/v1/reconcile", reconcile_one,
             "Prove the invoice of an account and month against CDRs and ledger (the "
             "issued one, else a draft).", m.Reconciliation,
             params=(Param("account", "query", "Account code.",
                           {"type": "string", "minLength": 1}, required=True),
                     Param("period", "query", "Month, e.g. 2026-11.",
                           {"type": "string", "pattern": _PERIOD.pattern}, required=True)),
             errors=(400, 404, 409, 422)),
    Endpoint("GET", "/v1/stats/spend", stats_spend,
             "Spend (what the ledger charged) grouped by destination, day, account, "
             "customer (departments rolled up) or route.", m.Spend,
             params=(Param("by", "query", "Grouping (default destination).",
                           {"type": "string", "enum": list(SPEND_BY)}),
                     Param("account", "query", "Only this account and those below it.",
                           {"type": "string", "minLength": 1}), _FROM, _TO,
                     Param("currency", "query", "Every amount in this reporting currency "
                           "(each call converted at the rate in force when it ended; 422 "
                           "for an unknown currency or when no rate is in force).",
                           {"type": "string", "pattern": "^[A-Za-z]{3}$"})),
             errors=(400, 404, 422)),
    Endpoint("GET", "/v1/stats/routes", stats_routes,
             "ASR, ACD, PDD and answer delay per route.", m.Routes,
             params=(_ACCOUNT_Q, _FROM, _TO), errors=(400, 404, 422)),
    Endpoint("GET", "/v1/stats/margin", stats_margin,
             "Least-cost routing: buy cost, sell price and margin of the calls the sidecar "
             "routed, by carrier, destination, account, customer or day.", m.Margins,
             params=(Param("by", "query", "Grouping (default carrier).",
                           {"type": "string", "enum": list(MARGIN_BY)}),
                     Param("account", "query", "Only this account and those below it.",
                           {"type": "string", "minLength": 1}), _FROM, _TO),
             errors=(400, 404, 422)),
    Endpoint("GET", "/v1/carriers", carriers_list,
             "The carriers calls are routed to, with their state (enabled, disabled by an "
             "operator, pulled by route health until when).", m.Carriers),
    Endpoint("GET", "/v1/fas/routes", fas_routes,
             "False Answer Supervision score per route (most suspicious first), each "
             "with its evidence.", m.FasRoutes,
             params=(_ACCOUNT_Q, _FROM, _TO,
                     Param("min_calls", "query", "Answered calls a route needs to be "
                           "judged (default 20).",
                           {"type": "integer", "minimum": 1, "maximum": 1_000_000})),
             errors=(400, 404, 422)),
    Endpoint("GET", "/v1/accounts/{code}/limits", account_limits,
             "The limits that apply to an account, where each comes from (the account, "
             "a parent account, its plan), and its own set.", m.Limits, params=(_CODE,)),
    Endpoint("GET", "/v1/accounts/{code}/bundles", account_bundles,
             "An account's free-minute bundles (its own and its plan's) in the period "
             "holding `at` (default now): seconds, used, held by live calls, left.",
             m.Bundles, params=(_CODE, Param("at", "query", "A time in the period.", _TIME)),
             errors=(400, 404)),
    Endpoint("GET", "/v1/fraud-events", fraud_events_list,
             "Fraud events, oldest first, with their evidence.", m.FraudEvents,
             params=(_ACCOUNT_Q,
                     Param("from", "query", "Events at or after this time.", _TIME),
                     Param("to", "query", "Events before this time.", _TIME),
                     Param("open", "query", "true: only blocks and suspensions not "
                           "lifted yet.", {"type": "boolean"})),
             errors=(400, 404, 422)),
    # The writes: an admin token only.
    Endpoint("POST", "/v1/accounts", account_create, "Create an account.", m.Account,
             status=201, body=m.AccountCreate, errors=(409, 422)),
    Endpoint("POST", "/v1/accounts/{code}/topups", account_topup,
             "Credit a payment, once per Idempotency-Key.", m.Topup, status=201,
             also=((200, "A retry: the key was used already, nothing more credited."),),
             params=(_CODE, Param("Idempotency-Key", "header", "Names the payment: a "
                                  "retry with the same key credits nothing more (200, "
                                  "replayed).", {"type": "string", "pattern": IDEMPOTENCY.pattern},
                                  required=True)),
             body=m.TopupBody, errors=(422,)),
    Endpoint("POST", "/v1/accounts/{code}/adjustments", account_adjust,
             "Adjust a balance (a correction, may be negative).", m.Account, status=201,
             params=(_CODE,), body=m.AdjustmentBody, errors=(409,)),
    Endpoint("POST", "/v1/accounts/{code}/suspend", account_suspend,
             "Suspend an account: its new calls are refused.", m.Account, params=(_CODE,),
             body=m.SuspendBody, body_required=False),
    Endpoint("POST", "/v1/accounts/{code}/resume", account_resume,
             "Resume a suspended account.", m.Account, params=(_CODE,)),
    Endpoint("PUT", "/v1/accounts/{code}/limits", account_limits_put,
             "Replace the account's own limits.", m.Limits, params=(_CODE,),
             body=m.LimitsBody, errors=(422,)),
    Endpoint("POST", "/v1/accounts/{code}/bundles", account_bundle_add,
             "Give the account a free-minute bundle: seconds per period for the "
             "destinations or prefixes it names (none: every destination), used before "
             "money.", m.Bundles, status=201, params=(_CODE,), body=m.BundleBody,
             errors=(404, 409, 422)),
    Endpoint("DELETE", "/v1/accounts/{code}/bundles/{name}", account_bundle_remove,
             "Remove one of the account's own bundles (what was used stays on the CDRs).",
             m.Bundles, params=(_CODE, Param("name", "path", "Bundle name.",
                                             {"type": "string", "minLength": 1})),
             errors=(404,)),
    Endpoint("POST", "/v1/accounts/{code}/fraud/lift", account_fraud_lift,
             "Lift what fraud rules did to the account: its new calls are accepted "
             "again, a suspension by a fraud rule is resumed, its blocks and suspensions "
             "are marked lifted.", m.Lift, params=(_CODE,), body=m.LiftBody,
             body_required=False),
    Endpoint("POST", "/v1/plans/{plan}/decks", deck_import,
             "Import a deck (CSV) as the plan's next version: all or nothing.",
             m.DeckImport, status=201,
             params=(Param("plan", "path", "Plan name (made with its first deck).",
                           {"type": "string", "minLength": 1, "maxLength": 64}),
                     Param("filename", "query", "The deck's file name, as errors and the "
                           "version history name it (default deck.csv).",
                           {"type": "string", "pattern": FILENAME.pattern}),
                     Param("currency", "query", "A new plan's currency when the deck "
                           "does not name one.",
                           {"type": "string", "enum": sorted(CURRENCY_MINOR_UNITS)}),
                     Param("notice_days", "query", "Notice period for increases (a new "
                           "plan: 7; else the plan's).",
                           {"type": "integer", "minimum": 0, "maximum": 3650})),
             body={"type": "string", "description": "The deck: CSV as `sidecar deck "
                   "import` reads it."}, body_media="text/csv", errors=(409, 413, 422)),
)
#: Read routes (path, handler) and writes (method, path, handler), from the table.
ROUTES: tuple[tuple[str, Handler], ...] = tuple(
    (ep.path, ep.handler) for ep in ENDPOINTS if ep.method == "GET")
WRITE_ROUTES: tuple[tuple[str, str, Handler], ...] = tuple(
    (ep.method, ep.path, ep.handler) for ep in ENDPOINTS if ep.method != "GET")
#: The largest body taken (a deck of a few hundred thousand lines).
MAX_BODY = 256 * 1024 * 1024


def given_tokens(token: str, admin_token: str) -> dict[str, tuple[str, str]]:
    """The tokens given to ``sidecar api`` (a file or the environment) as hash ->
    (option, scope). Refuses (ValueError) one shorter than ``MIN_TOKEN`` characters and
    the same token for both scopes."""
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
    return given


def make_app(conn: Db, token: str = "", *, settings: InvoiceSettings | None = None,
             admin_token: str = "", refresh_s: float = 2.0) -> web.Application:
    """The API application on a database connection. It answers holders of ``token``
    (read) and ``admin_token`` (the writes too), given here, and of the store's tokens
    (``sidecar token create``), re-read every ``refresh_s``; it keeps only their
    hashes. Refuses (ValueError) a given token shorter than ``MIN_TOKEN`` characters,
    the same token for both, and having no token at all."""
    given = given_tokens(token, admin_token)
    tokens = TokenSet(given, active_tokens(conn))
    if not given and not tokens.stored:
        raise ValueError("the API needs a token: 'sidecar token create NAME', or "
                         "--token-file FILE / $SIDECAR_API_TOKEN")
    settings = settings or InvoiceSettings()
    app = web.Application(middlewares=[_errors, _auth], client_max_size=MAX_BODY)
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
    from .dashboard import setup_dashboard  # (it imports this module's app keys)
    setup_dashboard(app)
    return app
