"""The HTTP API on a real server bound to an ephemeral loopback port."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pypdf import PdfReader

from sidecar.api import ROUTES, make_app
from sidecar.invoices import issue_invoice
from sidecar.money import fmt
from tests.charging.harness import Sim
from tests.invoices.helpers import (
    AFTER,
    NUMBERS,
    PERIOD,
    SETTINGS,
    add_customer,
    call,
    failed_call,
    new_sim,
)

TOKEN = "s3cret-token-for-tests-" + "r" * 16
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1 with a port the OS picks; yields the base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def with_server(sim: Sim, test: Callable[[aiohttp.ClientSession, str], Awaitable[None]]
                ) -> None:
    async def main() -> None:
        async with serve(make_app(sim.conn, TOKEN, settings=SETTINGS)) as base, \
                aiohttp.ClientSession() as http:
            await test(http, base)
    asyncio.run(main())


async def get_json(http: aiohttp.ClientSession, url: str, status: int = 200) -> Any:
    async with http.get(url, headers=AUTH) as r:
        assert r.status == status, await r.text()
        return await r.json()


def seeded_sim(db: Path | None = None) -> Sim:
    """Account ACME with four answered calls and a busy one on route carrier-a, the
    month's invoice issued, and a call still running (on SQLite file ``db``)."""
    s = new_sim(db)
    add_customer(s)
    for i, (number, ms) in enumerate([(NUMBERS[2], 61_000), (NUMBERS[1], 45_000),
                                      (NUMBERS[0], 30_000), (NUMBERS[3], 5_000)]):
        call(s, f"c{i}", number, ms, caller="+4915112345678", route="carrier-a")
    failed_call(s, "busy", NUMBERS[0], route="carrier-a")
    issue_invoice(s.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER)
    # A call still running: answered, not ended.
    s.charger.authorize("live-1", number=NUMBERS[2], now_ms=s.now, account_code="ACME")
    s.answer("live-1")
    return s


@pytest.fixture
def sim() -> Sim:
    return seeded_sim()


def _sample_path(path: str) -> str:
    return path.format(call_ref="c0", plan="retail", code="ACME", number="INV-000001")


def test_every_endpoint_but_health_needs_the_token(sim: Sim) -> None:
    async def test(http: aiohttp.ClientSession, base: str) -> None:
        async with http.get(base + "/health") as r:
            assert r.status == 200 and (await r.json()) == {"status": "ok"}
        for path, _handler in ROUTES:
            if path == "/health":
                continue
            url = base + _sample_path(path) + ("?account=ACME&period=2026-11"
                                               if path == "/v1/reconcile" else "")
            for headers in ({}, {"Authorization": "Bearer wrong"},
                            {"Authorization": f"Basic {TOKEN}"}):
                async with http.get(url, headers=headers) as r:
                    assert r.status == 401, path
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.get(url, headers=AUTH) as r:
                assert r.status == 200, (path, await r.text())
    with_server(sim, test)


def test_openapi_describes_every_route_and_nothing_else(sim: Sim) -> None:
    """The document is generated from the route table and the models: every route the
    API serves is in it (the dashboard's HTML pages and event stream are not part of the
    JSON API), with its methods, path parameters and success status; every object it
    describes declares its required fields."""
    async def test(http: aiohttp.ClientSession, base: str) -> None:
        doc = await get_json(http, base + "/openapi.json")
        assert doc["openapi"].startswith("3.1")
        app = make_app(sim.conn, TOKEN)
        methods: dict[str, set[str]] = {}
        for route in app.router.routes():
            path = route.resource.canonical if route.resource else ""
            if route.method != "HEAD" and not path.startswith("/dashboard"):
                methods.setdefault(path, set()).add(route.method.lower())
        assert set(methods) == set(doc["paths"])
        for path, item in doc["paths"].items():
            assert set(item) == methods[path], path
            for op in item.values():
                declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
                assert declared == set(re.findall(r"{(\w+)}", path)), path
                assert {"200", "201"} & set(op["responses"]), path
                assert path == "/health" or "401" in op["responses"], path
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        for name, schema in doc["components"]["schemas"].items():
            if name in ("LimitSet", "LimitsBody") or name.endswith("Body") or \
                    name == "AccountCreate":
                continue  # a limit set names the keys set; a request's fields have defaults
            assert schema.get("additionalProperties") is False, name
            assert set(schema["required"]) == set(schema["properties"]), name
    with_server(sim, test)


def test_cdrs_carry_their_rating_as_exact_strings_and_page_by_id(sim: Sim) -> None:
    stored = {r["call_ref"]: r for r in sim.cdrs("ACME")}

    async def test(http: aiohttp.ClientSession, base: str) -> None:
        seen: list[dict[str, Any]] = []
        url = base + "/v1/cdrs?account=ACME&limit=2"
        page = await get_json(http, url)
        while True:
            seen += page["cdrs"]
            if page["next_after_id"] is None:
                break
            page = await get_json(http, f"{url}&after_id={page['next_after_id']}")
        assert [c["call_ref"] for c in seen] == ["c0", "c1", "c2", "c3", "busy"]
        for c in seen:
            db = stored[c["call_ref"]]
            rating = c["rating"]
            # Exact, in plain digits with no trailing zeros: "0.6" for the stored 0.60000000.
            assert Decimal(rating["cost"]) == Decimal(db["cost"])
            assert Decimal(c["charged"]) == Decimal(db["charged"])
            assert rating["cost"] == fmt(Decimal(db["cost"]))
            assert isinstance(c["charged"], str) and isinstance(rating["rate"], str)
            assert Decimal(rating["usage"]) + Decimal(rating["connection_fee"]) + \
                Decimal(rating["surcharge"]) + Decimal(rating["minimum_uplift"]) == \
                Decimal(rating["cost"])
        one = await get_json(http, base + "/v1/cdrs/c3")
        assert one["destination"] == "Malta" and one["rating"]["surcharge"] == "0.02"
        assert (await get_json(http, base + "/v1/cdrs/nope", 404))["error"] == \
            "CDR 'nope' not found"
        later = await get_json(http, base + "/v1/cdrs?from=" + seen[2]["ended"])
        assert [c["call_ref"] for c in later["cdrs"]] == ["c2", "c3", "busy"]
        bad = await get_json(http, base + "/v1/cdrs?from=yesterday", 400)
        assert "ISO 8601" in bad["error"]
        assert "between 1 and 10000" in (await get_json(http, base + "/v1/cdrs?limit=0",
                                                        400))["error"]
        assert (await get_json(http, base + "/v1/cdrs?account=NOPE", 404))["error"] == \
            "account 'NOPE' not found"
        assert (await get_json(http, base + "/v1/cdrs?from=2026-12-01&to=2026-11-01",
                               422))["error"] == "to must be after from"
    with_server(sim, test)


def test_balances_decks_live_calls_and_stats(sim: Sim) -> None:
    async def test(http: aiohttp.ClientSession, base: str) -> None:
        acc = await get_json(http, base + "/v1/accounts/ACME")
        assert Decimal(acc["balance"]) == sim.balance("ACME") and Decimal(acc["held"]) > 0
        assert [a["code"] for a in (await get_json(http, base + "/v1/accounts"))["accounts"]] \
            == ["ACME"]
        assert (await get_json(http, base + "/v1/accounts/NOPE", 404))["error"] == \
            "account 'NOPE' not found"
        plans = await get_json(http, base + "/v1/decks")
        assert plans["plans"][0]["plan"] == "retail"
        deck = await get_json(http, base + "/v1/decks/retail?at=2026-11-21")
        france = next(ln for ln in deck["lines"] if ln["destination"] == "France")
        assert (france["rate"], france["connection_fee"], france["increment"]) == \
            ("0.12", "0.01", "30/6")
        assert (await get_json(http, base + "/v1/decks/nope", 404))["error"].startswith(
            "rate plan 'nope' not found")
        live = (await get_json(http, base + "/v1/live-calls"))["calls"]
        assert [(c["call_ref"], c["account"]) for c in live] == [("live-1", "ACME")]
        assert Decimal(live[0]["reserved"]) == Decimal(acc["held"])
        spend = await get_json(http, base + "/v1/stats/spend?by=destination")
        assert {r["key"] for r in spend["rows"]} == {"UK Mobile", "France", "Germany Fixed",
                                                      "Malta"}
        routes = (await get_json(http, base + "/v1/stats/routes"))["routes"]
        assert (routes[0]["route"], routes[0]["attempts"], routes[0]["asr"]) == \
            ("carrier-a", 5, "0.8000")
        assert "by must be one of" in (await get_json(
            http, base + "/v1/stats/spend?by=planet", 400))["error"]
        assert (await get_json(http, base + "/v1/stats/routes?account=NOPE", 404))["error"] \
            == "account 'NOPE' not found"
        assert routes[0]["answer_delay_mean_ms"] == 2000 and routes[0]["pdd_mean_ms"] is None
        fas = (await get_json(http, base + "/v1/fas/routes?min_calls=1"))["routes"]
        carrier = next(r for r in fas if r["route"] == "carrier-a")
        assert carrier["judged"] and carrier["answered"] == 4 and carrier["attempts"] == 5
        assert isinstance(carrier["score"], int) and isinstance(carrier["reasons"], list)
        unjudged = (await get_json(http, base + "/v1/fas/routes"))["routes"]
        assert all(not r["judged"] and r["score"] == 0 for r in unjudged)
        assert "min_calls" in (await get_json(http, base + "/v1/fas/routes?min_calls=0",
                                               400))["error"]
    with_server(sim, test)


def test_invoices_and_reconciliation(sim: Sim) -> None:
    async def test(http: aiohttp.ClientSession, base: str) -> None:
        listed = (await get_json(http, base + "/v1/invoices?account=ACME"))["invoices"]
        assert [i["number"] for i in listed] == ["INV-000001"]
        doc = await get_json(http, base + "/v1/invoices/INV-000001")
        inv = doc["invoice"]
        assert inv["total"] == listed[0]["total"] and doc["sha256"] == listed[0]["sha256"]
        assert [ln["kind"] for ln in inv["lines"]][:4] == ["usage"] * 4
        async with http.get(base + "/v1/invoices/INV-000001/pdf", headers=AUTH) as r:
            assert r.status == 200 and r.content_type == "application/pdf"
            pdf = await r.read()
        text = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
        assert "INV-000001" in text and inv["total"] in text
        async with http.get(base + "/v1/invoices/INV-000001/html", headers=AUTH) as r:
            assert r.content_type == "text/html" and "INV-000001" in await r.text()
        async with http.get(base + "/v1/invoices/INV-000001/calls.csv", headers=AUTH) as r:
            rows = list(csv.DictReader(io.StringIO(await r.text())))
        assert sorted(r["call_ref"] for r in rows) == ["c0", "c1", "c2", "c3"]
        rec = await get_json(http, base + "/v1/reconcile?account=ACME&period=2026-11")
        assert rec["ok"] is True and rec["number"] == "INV-000001"
        assert all(c["ok"] for c in rec["checks"])
        assert (await get_json(http, base + "/v1/invoices/INV-999999", 404))["error"] == \
            "invoice 'INV-999999' not found"
        assert "not a month" in (await get_json(
            http, base + "/v1/reconcile?account=ACME&period=11-2026", 400))["error"]
        assert (await get_json(http, base + "/v1/reconcile?account=NOPE&period=2026-11",
                               404))["error"] == "account 'NOPE' not found"
    with_server(sim, test)


def test_bad_parameters_get_a_json_400_or_404_never_a_500(sim: Sim) -> None:
    async def test(http: aiohttp.ClientSession, base: str) -> None:
        for url, status, words in (
                ("/v1/decks/retail?at=0001-01-01T00:00:00%2B01:00", 422, "outside 1970"),
                ("/v1/decks/retail?at=9999-12-31T23:59:59-01:00", 422, "outside 1970"),
                ("/v1/decks/retail?at=2026-02-30", 422, "not a date and time that exists"),
                ("/v1/fraud-events?open=yes", 400, "open must be true or false"),
                ("/v1/cdrs?limit=1_0", 400, "limit must be an integer"),
                ("/v1/reconcile?account=ACME&period=0000-12", 422, "not a month"),
                ("/v1/reconcile?account=ACME&period=2026-13", 400, "not a month"),
                ("/v1/nowhere", 404, "no such path"),
                ("/v1/cdrs/c0/x", 404, "no such path"),
                ("/v1/cdrs?to=", 400, "to: '' is not an ISO 8601"),
                ("/v1/cdrs?account=", 400, "account: empty"),
                ("/v1/invoices?account=NOPE", 404, "account 'NOPE' not found"),
                ("/v1/fraud-events?account=NOPE", 404, "account 'NOPE' not found"),
                ("/v1/stats/spend?by=day&from=2026-12-01&to=2026-11-01", 422, "after from")):
            async with http.get(base + url, headers=AUTH) as r:
                assert r.status == status, (url, r.status, await r.text())
                assert r.content_type == "application/json", url
                assert words in (await r.json())["error"], url
        # The first instant the API knows is a time like any other, not "now".
        epoch = await get_json(http, base + "/v1/decks/retail?at=1970-01-01T00:00:00Z")
        assert epoch["at"] == "1970-01-01T00:00:00.000Z"
    with_server(sim, test)


def test_an_api_without_a_token_is_refused() -> None:
    with pytest.raises(ValueError, match="token"):
        make_app(new_sim().conn, "  ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_api_command_needs_a_token_and_serves_on_loopback(tmp_path: Path) -> None:
    db = tmp_path / "api.db"
    sim = new_sim(db)
    add_customer(sim)
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_API_TOKEN"}
    env["SIDECAR_DB"] = str(db)
    refused = subprocess.run(["sidecar", "api"], capture_output=True, text=True, env=env,
                             timeout=60)
    assert refused.returncode == 2 and "the API needs a token" in refused.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = _free_port()
    proc = subprocess.Popen(["sidecar", "api", "--listen", f"127.0.0.1:{port}",
                             "--token-file", str(token_file)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        async def probe() -> tuple[int, int, Any]:
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/health") as r:
                            health = r.status
                        break
                    except aiohttp.ClientConnectionError:
                        assert proc.poll() is None, proc.communicate()
                        assert time.monotonic() < deadline, "API did not start"
                        await asyncio.sleep(0.1)
                async with http.get(f"http://127.0.0.1:{port}/v1/accounts") as r:
                    anonymous = r.status
                async with http.get(f"http://127.0.0.1:{port}/v1/accounts/ACME",
                                    headers=AUTH) as r:
                    return health, anonymous, await r.json()
        health, anonymous, acc = asyncio.run(probe())
        assert (health, anonymous) == (200, 401)
        assert acc["code"] == "ACME" and Decimal(acc["balance"]) == sim.balance("ACME")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_a_slow_store_never_stalls_the_api_event_loop() -> None:
    """A query the database keeps waiting (another session holds a lock on the CDRs) is
    answered when the lock goes; meanwhile the API still answers at once."""
    import psycopg

    from sidecar.store.conn import open_db
    from tests.store.pgdb import as_url, fresh_database

    with fresh_database() as conninfo:
        conn = open_db(as_url(conninfo))
        blocker = psycopg.connect(conninfo, autocommit=True)

        async def main() -> None:
            async with serve(make_app(conn, TOKEN, settings=SETTINGS)) as base, \
                    aiohttp.ClientSession() as http:
                blocker.execute("BEGIN")
                blocker.execute("LOCK TABLE cdrs IN ACCESS EXCLUSIVE MODE")
                slow = asyncio.create_task(get_json(http, f"{base}/v1/cdrs"))
                await asyncio.sleep(0.3)
                assert not slow.done()  # the database holds it...
                t0 = time.monotonic()
                async with http.get(f"{base}/health") as r:
                    assert r.status == 200
                assert time.monotonic() - t0 < 0.2  # ...not the event loop
                blocker.execute("COMMIT")
                assert (await asyncio.wait_for(slow, 10)) == {"cdrs": [],
                                                             "next_after_id": None}
        try:
            asyncio.run(main())
        finally:
            blocker.close()
            conn.close()
