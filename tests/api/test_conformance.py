"""Every real response validates against the generated OpenAPI document: each endpoint,
read and write, its successes and its errors, on a store with calls, an issued invoice,
a live call and fraud events. What the hand-written document used to miss is checked
by name."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from sidecar.api import make_app
from sidecar.charging.commands import Flag
from sidecar.rating.bundles import Bundle
from sidecar.store.accounts import ledger_for
from sidecar.store.bundles import add_bundle
from tests.api.conform import DOC, check
from tests.api.test_api import AUTH, TOKEN, seeded_sim, serve
from tests.api.test_limits_api import ADMIN, ADMIN_TOKEN
from tests.invoices.helpers import DECK, SETTINGS

R = "/v1/reconcile"
# (method, path template, path values, query, body, headers, expected status)
CASES: list[tuple[str, str, dict[str, str], str, Any, dict[str, str], int]] = [
    ("GET", "/health", {}, "", None, {}, 200),
    ("GET", "/openapi.json", {}, "", None, {}, 200),
    ("GET", "/v1/cdrs", {}, "", None, {}, 200),
    ("GET", "/v1/cdrs", {}, "?account=ACME&limit=2&after_id=1", None, {}, 200),
    ("GET", "/v1/cdrs", {}, "?from=yesterday", None, {}, 400),
    ("GET", "/v1/cdrs", {}, "?account=NOPE", None, {}, 404),
    ("GET", "/v1/cdrs", {}, "?from=2026-12-01&to=2026-11-01", None, {}, 422),
    ("GET", "/v1/cdrs/{call_ref}", {"call_ref": "c3"}, "", None, {}, 200),
    ("GET", "/v1/cdrs/{call_ref}", {"call_ref": "nope"}, "", None, {}, 404),
    ("GET", "/v1/decks", {}, "", None, {}, 200),
    ("GET", "/v1/decks/{plan}", {"plan": "retail"}, "?at=2026-11-21", None, {}, 200),
    ("GET", "/v1/decks/{plan}", {"plan": "nope"}, "", None, {}, 404),
    ("GET", "/v1/decks/{plan}", {"plan": "retail"}, "?at=1969-12-31", None, {}, 422),
    ("GET", "/v1/accounts", {}, "", None, {}, 200),
    ("GET", "/v1/accounts/{code}", {"code": "ACME"}, "", None, {}, 200),
    ("GET", "/v1/accounts/{code}", {"code": "NOPE"}, "", None, {}, 404),
    ("GET", "/v1/live-calls", {}, "", None, {}, 200),
    ("GET", "/v1/invoices", {}, "?account=ACME", None, {}, 200),
    ("GET", "/v1/invoices/{number}", {"number": "INV-000001"}, "", None, {}, 200),
    ("GET", "/v1/invoices/{number}", {"number": "INV-9"}, "", None, {}, 404),
    ("GET", "/v1/invoices/{number}/html", {"number": "INV-000001"}, "", None, {}, 200),
    ("GET", "/v1/invoices/{number}/pdf", {"number": "INV-000001"}, "", None, {}, 200),
    ("GET", "/v1/invoices/{number}/calls.csv", {"number": "INV-000001"}, "", None, {},
     200),
    ("GET", R, {}, "?account=ACME&period=2026-11", None, {}, 200),
    ("GET", R, {}, "?account=ACME&period=2026-10", None, {}, 200),  # a draft
    ("GET", R, {}, "?account=ACME&period=11-2026", None, {}, 400),
    ("GET", "/v1/stats/spend", {}, "?by=destination", None, {}, 200),
    ("GET", "/v1/stats/spend", {}, "?by=day", None, {}, 200),
    ("GET", "/v1/stats/spend", {}, "?by=account", None, {}, 200),
    ("GET", "/v1/stats/spend", {}, "?by=customer", None, {}, 200),
    ("GET", "/v1/stats/spend", {}, "?by=route&account=ACME", None, {}, 200),
    ("GET", "/v1/stats/spend", {}, "?by=planet", None, {}, 400),
    ("GET", "/v1/stats/routes", {}, "", None, {}, 200),
    ("GET", "/v1/fas/routes", {}, "?min_calls=1", None, {}, 200),
    ("GET", "/v1/accounts/{code}/limits", {"code": "DEPT"}, "", None, {}, 200),
    ("GET", "/v1/accounts/{code}/bundles", {"code": "ACME"}, "", None, {}, 200),
    ("GET", "/v1/accounts/{code}/bundles", {"code": "ACME"}, "?at=2026-11-02T00:00:00Z", None,
     {}, 200),
    ("GET", "/v1/accounts/{code}/bundles", {"code": "ACME"}, "?at=soon", None, {}, 400),
    ("GET", "/v1/accounts/{code}/bundles", {"code": "NOPE"}, "", None, {}, 404),
    ("GET", "/v1/fraud-events", {}, "", None, {}, 200),
    ("GET", "/v1/fraud-events", {}, "?open=true&account=ACME", None, {}, 200),
    ("GET", "/v1/stats/margin", {}, "?by=destination&account=ACME", None, {}, 200),
    ("GET", "/v1/stats/margin", {}, "?by=moon", None, {}, 400),
    ("GET", "/v1/carriers", {}, "", None, {}, 200),
    # writes
    ("POST", "/v1/accounts", {}, "", {"code": "NEW", "plan": "retail", "balance": "5"},
     {}, 201),
    ("POST", "/v1/accounts", {}, "", {"code": "NEW", "plan": "retail"}, {}, 409),
    ("POST", "/v1/accounts", {}, "", {"code": "NEW2", "plan": "none"}, {}, 422),
    ("POST", "/v1/accounts", {}, "", {"code": "NEW2"}, {}, 400),
    ("POST", "/v1/accounts", {}, "", {"code": "NEW2", "plan": "retail"}, AUTH, 403),
    ("POST", "/v1/accounts", {}, "", {"code": "NEW2", "plan": "retail"},
     {"Authorization": "Bearer nope"}, 401),
    ("POST", "/v1/accounts/{code}/topups", {"code": "NEW"}, "", {"amount": "10"},
     {"Idempotency-Key": "k1"}, 201),
    ("POST", "/v1/accounts/{code}/topups", {"code": "NEW"}, "", {"amount": "10"},
     {"Idempotency-Key": "k1"}, 200),
    ("POST", "/v1/accounts/{code}/topups", {"code": "NOPE"}, "", {"amount": "10"},
     {"Idempotency-Key": "k2"}, 404),
    ("POST", "/v1/accounts/{code}/topups", {"code": "NEW"}, "", {"amount": "0"},
     {"Idempotency-Key": "k3"}, 422),
    ("POST", "/v1/accounts/{code}/adjustments", {"code": "NEW"}, "", {"amount": "-1.5"},
     {}, 201),
    ("POST", "/v1/accounts/{code}/adjustments", {"code": "NEW"}, "", {"amount": "-99"},
     {}, 409),
    ("POST", "/v1/accounts/{code}/suspend", {"code": "NEW"}, "", {"reason": "test"}, {},
     200),
    ("POST", "/v1/accounts/{code}/resume", {"code": "NEW"}, "", None, {}, 200),
    ("PUT", "/v1/accounts/{code}/limits", {"code": "NEW"}, "",
     {"max_rate": "0.5", "deny": ["+882"], "spend_per_hour": None,
      "spend_per_hour_action": "block", "concurrent_calls": 3}, {}, 200),
    ("PUT", "/v1/accounts/{code}/limits", {"code": "NEW"}, "", {"max_rate": 0.5}, {}, 400),
    ("GET", "/v1/accounts/{code}/limits", {"code": "NEW"}, "", None, {}, 200),
    ("GET", "/v1/accounts/{code}", {"code": "NEW"}, "", None, {}, 200),
    ("POST", "/v1/accounts/{code}/fraud/lift", {"code": "ACME"}, "", {"note": "ok"}, {},
     200),
    ("POST", "/v1/accounts/{code}/fraud/lift", {"code": "NOPE"}, "", None, {}, 404),
    ("POST", "/v1/accounts/{code}/bundles", {"code": "NEW"}, "",
     {"name": "promo", "seconds": 600, "prefixes": ["4930"], "period": "day"}, {}, 201),
    ("POST", "/v1/accounts/{code}/bundles", {"code": "NEW"}, "",
     {"name": "promo", "seconds": 60}, {}, 409),
    ("POST", "/v1/accounts/{code}/bundles", {"code": "NEW"}, "",
     {"name": "   ", "seconds": 60}, {}, 422),
    ("POST", "/v1/accounts/{code}/bundles", {"code": "NEW"}, "",
     {"name": "x", "seconds": 0}, {}, 400),
    ("POST", "/v1/accounts/{code}/bundles", {"code": "NOPE"}, "",
     {"name": "x", "seconds": 60}, {}, 404),
    ("GET", "/v1/accounts/{code}/bundles", {"code": "NEW"}, "", None, {}, 200),
    ("DELETE", "/v1/accounts/{code}/bundles/{name}", {"code": "NEW", "name": "promo"}, "",
     None, {}, 200),
    ("DELETE", "/v1/accounts/{code}/bundles/{name}", {"code": "NEW", "name": "promo"}, "",
     None, {}, 404),
    ("GET", "/v1/fraud-events", {}, "", None, {}, 200),
    ("POST", "/v1/plans/{plan}/decks", {"plan": "other"}, "?currency=EUR", DECK, {}, 201),
    ("POST", "/v1/plans/{plan}/decks", {"plan": "other"}, "", "prefix;rate\n1;x\n", {},
     422),
    ("GET", "/v1/decks", {}, "", None, {}, 200),
]


def test_every_response_validates_against_the_generated_document() -> None:
    sim = seeded_sim()
    sim.account("DEPT", "0", parent="ACME")
    res = ledger_for(sim.conn).execute([
        Flag(1, "ACME", "spend_per_hour", "suspend", "fraud rule spend_per_hour: 30.00",
             json.dumps({"spent": "30", "window_ms": 3_600_000}), "k1",
             sim.now),
        Flag(2, "DEPT", "new_country", "alert", "fraud rule new_country: 882", "x", "k2",
             sim.now + 1)])
    assert all(o.ok for o in res.outcomes)
    add_bundle(sim.conn, "account", "ACME", Bundle("free", 600, prefixes=("49",)),
               now_ms=sim.now)
    answered: set[tuple[str, str, int]] = set()

    async def main() -> None:
        app = make_app(sim.conn, TOKEN, settings=SETTINGS, admin_token=ADMIN_TOKEN)
        async with serve(app) as base, aiohttp.ClientSession() as http:
            for method, template, path, query, body, headers, status in CASES:
                data = body if isinstance(body, str) or body is None else json.dumps(body)
                async with http.request(method, base + template.format(**path) + query,
                                        data=data, headers={**ADMIN, **headers}) as r:
                    got = await r.json() if r.content_type == "application/json" else None
                    assert r.status == status, (method, template, query, r.status, got)
                    check(method, template, r.status, r.content_type, got)
                    answered.add((method, template, r.status))
    asyncio.run(main())
    # Every operation of the document was answered with its success at least once.
    for template, item in DOC["paths"].items():
        for method, op in item.items():
            ok = {int(s) for s in op["responses"] if s.startswith("2")}
            assert any((method.upper(), template, s) in answered for s in ok), \
                (method, template)


def test_what_the_old_document_left_out_is_declared_and_required() -> None:
    schemas = DOC["components"]["schemas"]
    for model, fields in (
            ("Account", {"chunk_seconds", "max_call_seconds", "low_balance",
                         "recharge_below", "recharge_amount", "limits", "parent",
                         "blocked"}),
            ("Cdr", {"media_evidence", "ringing", "ringing_ms", "media", "media_ms",
                     "node"}),
            ("InvoiceDocument", {"account_kind", "answered", "attempts", "customer",
                                 "provider", "days", "detail_in_document", "draft",
                                 "due_ms", "format_version", "issued_ms", "minor_units",
                                 "no_media", "payment_details", "period_end_ms",
                                 "period_start_ms", "tax_label", "statement"}),
            ("InvoiceSummary", {"issued", "issued_ms", "sha256"})):
        assert fields <= set(schemas[model]["properties"]), model
        assert fields <= set(schemas[model]["required"]), model
    assert set(schemas["Error"]["required"]) == {"error", "errors"}
    # One money format, one time format, in the document too.
    money = schemas["Account"]["properties"]["balance"]
    assert money["type"] == "string" and "E" not in money["pattern"]
    assert schemas["Cdr"]["properties"]["ended"]["anyOf"][0]["pattern"].endswith(r"\.[0-9]{3}Z$")
