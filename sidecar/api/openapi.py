"""The API's OpenAPI 3.1 document, written by hand next to the routes it describes.

``tests/api`` checks that every route of the application is described here and that
nothing is described that the application does not serve.
"""

from __future__ import annotations

import copy
from typing import Any

from .. import __version__
from ..charging.limits import KEYS, describe

_MONEY = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$",
          "description": "An exact decimal amount as a string (never a float).",
          "examples": ["0.0095", "12.50"]}
_TIME = {"type": ["string", "null"], "format": "date-time",
         "description": "ISO 8601 UTC with milliseconds."}
_MS = {"type": ["integer", "null"], "description": "Unix time in milliseconds."}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _q(name: str, description: str, schema: dict[str, Any] | None = None,
       required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema or {"type": "string"}}


def _p(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERR = {"401": {"$ref": "#/components/responses/Unauthorized"}}
_ERR404 = {**_ERR, "404": {"$ref": "#/components/responses/NotFound"}}
_ERR400 = {**_ERR, "400": {"$ref": "#/components/responses/BadRequest"}}
# A stored document whose data no longer matches its SHA-256 is refused, never served.
_ERR_DOC = {**_ERR404, "409": {"$ref": "#/components/responses/Conflict"}}
# The writes: the admin token only (403 for the read token, or with none configured).
_ERR_ADMIN = {**_ERR404, "403": {"$ref": "#/components/responses/Forbidden"}}

_ACCOUNT_Q = _q("account", "Only this account.")
_FROM_Q = _q("from", "Calls that ended at or after this time (ISO 8601; naive means UTC).",
             {"type": "string", "format": "date-time"})
_TO_Q = _q("to", "Calls that ended before this time (ISO 8601; naive means UTC).",
           {"type": "string", "format": "date-time"})

_SCHEMAS: dict[str, Any] = {
    "Money": _MONEY,
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}}},
    "Rating": {
        "type": "object", "description": "How the call was priced (money scale: 8 places).",
        "properties": {"rate": _ref("Money"), "increment": {"type": "string"},
                       "currency": {"type": "string"}, "usage": _ref("Money"),
                       "connection_fee": _ref("Money"), "surcharge": _ref("Money"),
                       "minimum_uplift": _ref("Money"), "cost": _ref("Money")}},
    "Cdr": {
        "type": "object", "description": "A call detail record; written once per call.",
        "properties": {
            "id": {"type": "integer"}, "call_ref": {"type": "string"},
            "call_id": {"type": "string"}, "account": {"type": ["string", "null"]},
            "plan": {"type": ["string", "null"]},
            "caller": {"type": "string", "description": "As received: untrusted text."},
            "callee": {"type": "string"}, "destination": {"type": "string"},
            "prefix": {"type": "string"}, "origin": {"type": "string"},
            "route": {"type": "string"},
            "node": {"type": "string", "description": "The sidecar node whose Kamailio "
                     "carried the call (\"\" before nodes were recorded)."},
            "disposition": {"enum": ["answered", "failed", "rejected", "no-media"]},
            "sip_code": {"type": ["integer", "null"]}, "ended_by": {"type": "string"},
            "end_reason": {"type": "string"},
            "offered": _TIME, "answered": _TIME, "billable": _TIME, "ended": _TIME,
            "offered_ms": _MS, "answered_ms": _MS, "billable_ms": _MS, "ended_ms": _MS,
            "duration_ms": {"type": "integer", "description": "Billable duration."},
            "billed_seconds": {"type": "integer"}, "rating": _ref("Rating"),
            "charged": _ref("Money"), "written_off": _ref("Money"), "credited": _ref("Money"),
            "fas_verdict": {"type": "string"}, "fas_reasons": {"type": "string"}}},
    "Account": {
        "type": "object",
        "properties": {
            "code": {"type": "string"}, "name": {"type": "string"}, "plan": {"type": "string"},
            "currency": {"type": "string"}, "kind": {"enum": ["prepaid", "postpaid"]},
            "balance": _ref("Money"), "held": _ref("Money"), "available": _ref("Money"),
            "credit_limit": _ref("Money"), "daily_cap": {"type": ["string", "null"]},
            "monthly_cap": {"type": ["string", "null"]}, "day_spend": _ref("Money"),
            "month_spend": _ref("Money"), "suspended": {"type": "boolean"},
            "suspend_reason": {"type": "string"},
            "blocked": {"type": "string", "description": "Why a fraud rule refuses the "
                        "account's new calls (\"\" when it does not)."},
            "parent": {"type": ["string", "null"],
                       "description": "The account above this one (limits are inherited)."},
            "limits": _ref("LimitSet")}},
    "LimitSet": {
        "type": "object", "additionalProperties": False,
        "description": "Usage and fraud limits: only the keys set. null = explicitly no "
                       "limit (stops inheritance); a key absent is inherited (the account, "
                       "its parents, its plan). Money as strings; allow/deny as lists of "
                       "digit prefixes; *_action one of alert, block, suspend.",
        "properties": {k: {"description": describe(k)} for k in KEYS}},
    "Limits": {
        "type": "object", "description": "The limits of an account: its own set, what "
                                         "applies, and where each key comes from.",
        "properties": {
            "account": {"type": "string"}, "own": _ref("LimitSet"),
            "effective": _ref("LimitSet"),
            "source": {"type": "object", "additionalProperties": {"type": "string"},
                       "description": "key -> \"account CODE\" or \"plan NAME\"."}}},
    "FraudEvent": {"type": "object", "properties": {
        "id": {"type": "integer"}, "time": _TIME, "ts_ms": {"type": "integer"},
        "account": {"type": "string"}, "rule": {"type": "string"},
        "action": {"enum": ["alert", "block", "suspend"]}, "reason": {"type": "string"},
        "evidence": {"description": "What the rule saw (a JSON object)."},
        "node": {"type": "string"}, "key": {"type": "string"},
        "open": {"type": "boolean", "description": "A block or suspension not lifted yet."},
        "lifted": _TIME, "lifted_ms": _MS, "lifted_by": {"type": "string"},
        "lift_note": {"type": "string"}}},
    "Lift": {"type": "object", "properties": {
        "account": {"type": "string"},
        "lifted": {"type": "integer", "description": "Fraud events marked lifted."},
        "unblocked": {"type": ["string", "null"], "description": "The block lifted."},
        "resumed": {"type": ["string", "null"],
                    "description": "The fraud rule's suspension resumed."},
        "still_suspended": {"type": ["string", "null"],
                            "description": "A suspension not by a fraud rule (kept)."}}},
    "Plan": {"type": "object", "properties": {
        "plan": {"type": "string"}, "currency": {"type": "string"},
        "notice_days": {"type": "integer"}, "versions": {"type": "integer"},
        "lines": {"type": "integer"}}},
    "DeckLine": {"type": "object", "properties": {
        "destination": {"type": "string"}, "prefix": {"type": "string"},
        "origin": {"type": "string"}, "rate": _ref("Money"), "increment": {"type": "string"},
        "connection_fee": _ref("Money"), "minimum_charge": _ref("Money"),
        "short_call_seconds": {"type": "integer"}, "short_call_surcharge": _ref("Money"),
        "effective_from": {"type": "string", "format": "date-time"},
        "version": {"type": "integer"}}},
    "Deck": {"type": "object", "properties": {
        "plan": {"type": "string"}, "currency": {"type": "string"},
        "notice_days": {"type": "integer"}, "second_rounding": {"type": "string"},
        "chunk_seconds": {"type": "integer"}, "at": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "object"}},
        "lines": {"type": "array", "items": _ref("DeckLine")}}},
    "LiveCall": {"type": "object", "properties": {
        "call_ref": {"type": "string"}, "account": {"type": "string"},
        "number": {"type": "string"}, "destination": {"type": "string"},
        "prefix": {"type": "string"}, "rate": _ref("Money"), "increment": {"type": "string"},
        "answered_ms": {"type": "integer"}, "answered": _TIME,
        "paid_seconds": {"type": "integer"}, "reserved": _ref("Money"),
        "node": {"type": "string"}, "cost": _ref("Money"),
        "elapsed_ms": {"type": "integer"}, "remaining_ms": {"type": "integer"}}},
    "InvoiceSummary": {"type": "object", "properties": {
        "number": {"type": "string"}, "kind": {"enum": ["invoice", "credit_note"]},
        "account": {"type": "string"}, "period": {"type": "string", "examples": ["2026-11"]},
        "issued_ms": {"type": "integer"}, "issued": {"type": "string"},
        "refers_to": {"type": ["string", "null"]}, "currency": {"type": "string"},
        "net": _ref("Money"), "tax": _ref("Money"), "total": _ref("Money"),
        "calls": {"type": "integer"}, "sha256": {"type": "string"}}},
    "Invoice": {
        "type": "object",
        "description": "The frozen document exactly as issued. Line amounts are the exact "
                       "CDR sums rounded half-up to the minor unit; net = charges - "
                       "credits_total; tax = round_half_up(net x tax_rate); total = net + tax.",
        "properties": {
            "kind": {"enum": ["invoice", "credit_note"]}, "number": {"type": "string"},
            "account": {"type": "string"}, "period": {"type": "string"},
            "currency": {"type": "string"}, "tax_rate": _ref("Money"),
            "lines": {"type": "array", "items": {"type": "object"}},
            "credits": {"type": "array", "items": {"type": "object"}},
            "movements": {"type": "array", "items": {"type": "object"}},
            "statement": {"type": "object"}, "days": {"type": "array"},
            "charges": _ref("Money"), "credits_total": _ref("Money"), "net": _ref("Money"),
            "tax": _ref("Money"), "total": _ref("Money"), "exact_charged": _ref("Money"),
            "calls": {"type": "integer"}, "refers_to": {"type": "string"},
            "reason": {"type": "string"}}},
    "Reconciliation": {"type": "object", "properties": {
        "number": {"type": "string"}, "account": {"type": "string"},
        "period": {"type": "string"}, "currency": {"type": "string"},
        "cdrs": {"type": "integer"}, "ok": {"type": "boolean"},
        "rounding_difference": _ref("Money"), "notes": {"type": "array"},
        "lines": {"type": "array", "items": {"type": "object", "properties": {
            "kind": {"type": "string"}, "label": {"type": "string"},
            "calls": {"type": "integer"}, "exact": _ref("Money"), "rounded": _ref("Money"),
            "invoiced": {"type": ["string", "null"]}, "ok": {"type": "boolean"}}}},
        "checks": {"type": "array", "items": {"type": "object", "properties": {
            "what": {"type": "string"}, "expected": {"type": "string"},
            "actual": {"type": "string"}, "ok": {"type": "boolean"}}}}}},
    "SpendRow": {"type": "object", "properties": {
        "key": {"type": "string"}, "currency": {"type": "string"}, "calls": {"type": "integer"},
        "billed_seconds": {"type": "integer"}, "exact": _ref("Money"), "amount": _ref("Money"),
        "parent": {"type": "string"}}},
    "FasRoute": {"type": "object", "properties": {
        "route": {"type": "string"}, "attempts": {"type": "integer"},
        "answered": {"type": "integer"},
        "fas_calls": {"type": "object", "additionalProperties": {"type": "integer"},
                      "description": "Answered calls per FAS verdict."},
        "instant_answers": {"type": "integer"}, "short_calls": {"type": "integer"},
        "uniform_calls": {"type": "integer"},
        "answer_delay_p10_ms": {"type": ["integer", "null"]},
        "answer_delay_p90_ms": {"type": ["integer", "null"]},
        "judged": {"type": "boolean", "description": "Enough answered calls to judge."},
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "reasons": {"type": "array", "items": {"type": "string"}}}},
    "RouteStats": {"type": "object", "properties": {
        "route": {"type": "string"}, "attempts": {"type": "integer"},
        "answered": {"type": "integer"}, "no_media": {"type": "integer"},
        "asr": {"type": ["string", "null"], "description": "answered / attempts (0..1)"},
        "acd_seconds": {"type": ["string", "null"],
                        "description": "mean billable duration of calls answered with media"},
        "pdd_mean_ms": {"type": ["integer", "null"],
                        "description": "post-dial delay: first ringing (18x) - offer; null "
                                       "while CDRs carry no ringing time"},
        "pdd_p95_ms": {"type": ["integer", "null"]},
        "answer_delay_mean_ms": {"type": ["integer", "null"],
                                 "description": "answer (200 OK) - offer of answered calls"},
        "answer_delay_p95_ms": {"type": ["integer", "null"]}}},
}

_PATHS: dict[str, Any] = {
    "/health": {"get": {
        "summary": "Liveness (no token needed).", "security": [],
        "responses": {"200": _json({"type": "object", "properties": {
            "status": {"const": "ok"}}})}}},
    "/openapi.json": {"get": {
        "summary": "This document.", "responses": {"200": _json({"type": "object"}), **_ERR}}},
    "/v1/cdrs": {"get": {
        "summary": "CDRs with their per-call rating, oldest first, paged by id.",
        "parameters": [_ACCOUNT_Q, _FROM_Q, _TO_Q,
                       _q("after_id", "Return CDRs after this id (the previous page's "
                          "next_after_id).", {"type": "integer", "minimum": 0}),
                       _q("limit", "Page size (default 1000).",
                          {"type": "integer", "minimum": 1, "maximum": 10000})],
        "responses": {"200": _json({"type": "object", "properties": {
            "cdrs": {"type": "array", "items": _ref("Cdr")},
            "next_after_id": {"type": ["integer", "null"]}}}), **_ERR400, **_ERR404}}},
    "/v1/cdrs/{call_ref}": {"get": {
        "summary": "One CDR by call reference.",
        "parameters": [_p("call_ref", "The call's reference.")],
        "responses": {"200": _json(_ref("Cdr")), **_ERR404}}},
    "/v1/decks": {"get": {
        "summary": "Rate plans.", "responses": {"200": _json({"type": "object", "properties": {
            "plans": {"type": "array", "items": _ref("Plan")}}}), **_ERR}}},
    "/v1/decks/{plan}": {"get": {
        "summary": "A plan's deck: lines in effect at a time, plus scheduled ones.",
        "parameters": [_p("plan", "Plan name."),
                       _q("at", "Time (ISO 8601), default now.", {"type": "string",
                                                                   "format": "date-time"})],
        "responses": {"200": _json(_ref("Deck")), **_ERR404, **_ERR400}}},
    "/v1/accounts": {"get": {
        "summary": "Balances of every account.",
        "responses": {"200": _json({"type": "object", "properties": {
            "accounts": {"type": "array", "items": _ref("Account")}}}), **_ERR}}},
    "/v1/accounts/{code}": {"get": {
        "summary": "One account's balance.", "parameters": [_p("code", "Account code.")],
        "responses": {"200": _json(_ref("Account")), **_ERR404}}},
    "/v1/live-calls": {"get": {
        "summary": "Answered calls running now: running cost (fees included), reserved "
                   "credit, paid time left; and each account's running total.",
        "responses": {"200": _json({"type": "object", "properties": {
            "calls": {"type": "array", "items": _ref("LiveCall")},
            "accounts": {"type": "object", "additionalProperties": _ref("Money")}}}),
            **_ERR}}},
    "/v1/invoices": {"get": {
        "summary": "Issued invoices and credit notes, newest first.",
        "parameters": [_ACCOUNT_Q],
        "responses": {"200": _json({"type": "object", "properties": {
            "invoices": {"type": "array", "items": _ref("InvoiceSummary")}}}), **_ERR}}},
    "/v1/invoices/{number}": {"get": {
        "summary": "An issued document's frozen data and SHA-256.",
        "parameters": [_p("number", "Invoice or credit note number.")],
        "responses": {"200": _json({"type": "object", "properties": {
            "sha256": {"type": "string"}, "invoice": _ref("Invoice")}}), **_ERR_DOC}}},
    "/v1/invoices/{number}/html": {"get": {
        "summary": "The document as HTML.", "parameters": [_p("number", "Document number.")],
        "responses": {"200": {"description": "OK", "content": {"text/html": {}}},
                      **_ERR_DOC}}},
    "/v1/invoices/{number}/pdf": {"get": {
        "summary": "The document as PDF (large call detail attached as CSV).",
        "parameters": [_p("number", "Document number.")],
        "responses": {"200": {"description": "OK", "content": {"application/pdf": {}}},
                      **_ERR_DOC}}},
    "/v1/invoices/{number}/calls.csv": {"get": {
        "summary": "The document's call detail as CSV (spreadsheet-safe).",
        "parameters": [_p("number", "Document number.")],
        "responses": {"200": {"description": "OK", "content": {"text/csv": {}}},
                      **_ERR_DOC}}},
    "/v1/reconcile": {"get": {
        "summary": "Prove the invoice of an account and month against CDRs and ledger "
                   "(the issued one, else a draft).",
        "parameters": [_q("account", "Account code.", required=True),
                       _q("period", "Month, e.g. 2026-11.", required=True)],
        "responses": {"200": _json(_ref("Reconciliation")), **_ERR_DOC, **_ERR400}}},
    "/v1/stats/spend": {"get": {
        "summary": "Spend (what the ledger charged) grouped by destination, day, account, "
                   "customer (departments rolled up) or route.",
        "parameters": [_q("by", "Grouping.", {"enum": ["destination", "day", "account",
                                                       "customer", "route"]}),
                       _q("account", "Only this account and the accounts below it."),
                       _FROM_Q, _TO_Q],
        "responses": {"200": _json({"type": "object", "properties": {
            "by": {"type": "string"},
            "rows": {"type": "array", "items": _ref("SpendRow")}}}), **_ERR400, **_ERR404}}},
    "/v1/stats/routes": {"get": {
        "summary": "ASR, ACD, PDD and answer delay per route.",
        "parameters": [_ACCOUNT_Q, _FROM_Q, _TO_Q],
        "responses": {"200": _json({"type": "object", "properties": {
            "routes": {"type": "array", "items": _ref("RouteStats")}}}),
            **_ERR400, **_ERR404}}},
    "/v1/fas/routes": {"get": {
        "summary": "False Answer Supervision score per route (most suspicious first): FAS "
                   "verdicts, instant answers, short calls, uniform durations, machine-like "
                   "answer delays, each with its evidence.",
        "parameters": [_ACCOUNT_Q, _FROM_Q, _TO_Q,
                       _q("min_calls", "Answered calls a route needs to be judged (20).",
                          {"type": "integer", "minimum": 1})],
        "responses": {"200": _json({"type": "object", "properties": {
            "routes": {"type": "array", "items": _ref("FasRoute")}}}),
            **_ERR400, **_ERR404}}},
    "/v1/accounts/{code}/limits": {
        "get": {
            "summary": "The limits that apply to an account, where each comes from (the "
                       "account, a parent account, its plan), and its own set.",
            "parameters": [_p("code", "Account code.")],
            "responses": {"200": _json(_ref("Limits")), **_ERR404}},
        "put": {
            "summary": "Replace the account's own limits (admin token).",
            "parameters": [_p("code", "Account code.")],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("LimitSet")}}},
            "responses": {"200": _json(_ref("Limits")), **_ERR400, **_ERR_ADMIN}}},
    "/v1/accounts/{code}/fraud/lift": {"post": {
        "summary": "Lift what fraud rules did to the account (admin token): its new calls "
                   "are accepted again, a suspension by a fraud rule is resumed, and its "
                   "blocks and suspensions are marked lifted.",
        "parameters": [_p("code", "Account code.")],
        "requestBody": {"required": False, "content": {"application/json": {
            "schema": {"type": "object", "properties": {"note": {"type": "string"}}}}}},
        "responses": {"200": _json(_ref("Lift")), **_ERR400, **_ERR_ADMIN}}},
    "/v1/fraud-events": {"get": {
        "summary": "Fraud events, oldest first, with their evidence.",
        "parameters": [_ACCOUNT_Q,
                       _q("from", "Events at or after this time (ISO 8601).",
                          {"type": "string", "format": "date-time"}),
                       _q("to", "Events before this time (ISO 8601).",
                          {"type": "string", "format": "date-time"}),
                       _q("open", "true: only blocks and suspensions not lifted yet.",
                          {"type": "boolean"})],
        "responses": {"200": _json({"type": "object", "properties": {
            "events": {"type": "array", "items": _ref("FraudEvent")}}}),
            **_ERR400, **_ERR404}}},
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Kamailio billing sidecar API",
        "version": __version__,
        "description": "Read access to CDRs with their rating, rate decks, balances, "
                       "live calls, invoices, reconciliation, limits and fraud events; "
                       "writes (limits, lifting fraud blocks) with the admin token only. "
                       "Money is exact decimal strings; times are UTC.",
    },
    "servers": [{"url": "http://127.0.0.1:8480"}],
    "security": [{"bearer": []}],
    "paths": _PATHS,
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": _SCHEMAS,
        "responses": {
            "Unauthorized": _json(_ref("Error"), "Missing or wrong bearer token."),
            "NotFound": _json(_ref("Error"), "No such thing."),
            "BadRequest": _json(_ref("Error"), "A parameter is wrong; the message says which."),
            "Forbidden": _json(_ref("Error"), "A write with the read token, or with no "
                                              "admin token configured."),
            "Conflict": _json(_ref("Error"), "The stored document does not match its SHA-256 "
                                             "(it was altered): refused."),
        },
    },
}


def openapi_document() -> dict[str, Any]:
    """A copy of the OpenAPI document (callers may not change the shared one)."""
    return copy.deepcopy(_DOCUMENT)
