"""The dashboard's server side on a real aiohttp server (loopback, ephemeral port): the
public page holds no data, every figure needs the token, and the live stream pushes at
least once a second, reading the store once per tick whatever the number of clients."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.api import app as api_app
from sidecar.api import dashboard, make_app
from sidecar.api.dashboard import PUBLIC_PATHS, alerts
from sidecar.api.models import TIME_PATTERN
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

pytestmark = pytest.mark.timeout(60)

TOKEN = "dashboard-api-test-token-" + "x" * 20
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TIME = re.compile(TIME_PATTERN)


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
def sim(tmp_path: Path) -> Sim:
    s = new_sim(tmp_path / "sidecar.db")
    add_customer(s)
    call(s, "c0", NUMBERS[0], 30_000, route="carrier-a")
    s.charger.authorize("live-1", number=NUMBERS[2], now_ms=s.now, account_code="ACME")
    s.answer("live-1")
    return s


async def read_events(resp: aiohttp.ClientResponse, n: int) -> list[tuple[str, Any, float]]:
    """The next ``n`` events of an SSE stream: (type, data, arrival time.monotonic())."""
    out: list[tuple[str, Any, float]] = []
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            kind, data = "message", []
            for line in block.decode().split("\n"):
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
            if data:
                out.append((kind, json.loads("\n".join(data)), time.monotonic()))
                if len(out) == n:
                    return out
    raise AssertionError(f"the stream ended after {len(out)} events")


def test_the_page_and_its_assets_are_public_and_hold_no_data(sim: Sim) -> None:
    assert PUBLIC_PATHS <= api_app.PUBLIC  # the API's token check lets exactly these pass

    async def main() -> None:
        async with serve(make_app(sim.conn, TOKEN, settings=SETTINGS)) as base, \
                aiohttp.ClientSession() as http:
            for path in sorted(PUBLIC_PATHS):
                async with http.get(base + path) as r:
                    assert r.status == 200, path
                    body = await r.text()
                    assert "ACME" not in body and "live-1" not in body, path
            async with http.get(base + "/dashboard") as r:
                csp = r.headers["Content-Security-Policy"]
                page = await r.text()
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
            # Nothing from the internet: no absolute URL is loaded by the page or script.
            async with http.get(base + "/dashboard/dashboard.js") as r:
                script = await r.text()
                assert r.content_type == "application/javascript"
            async with http.get(base + "/dashboard/dashboard.css") as r:
                style = await r.text()
                assert r.content_type == "text/css" and "url(" not in style
            for text in (page, script, style):
                assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
                assert "https://" not in text and "//cdn" not in text
            for path in ("/dashboard/live", "/dashboard/summary"):
                for headers in ({}, {"Authorization": "Bearer wrong"}):
                    async with http.get(base + path, headers=headers) as r:
                        assert r.status == 401, path
            async with http.get(base + "/dashboard/other.js") as r:
                assert r.status == 401  # not public: no path around the token check
    asyncio.run(main())


def test_the_summary_has_balances_alerts_spend_fas_fraud_and_invoices(sim: Sim) -> None:
    async def main() -> None:
        async with serve(make_app(sim.conn, TOKEN, settings=SETTINGS)) as base, \
                aiohttp.ClientSession() as http:
            async with http.get(base + "/dashboard/summary?days=3660", headers=AUTH) as r:
                assert r.status == 200
                doc = await r.json()
            async with http.get(base + "/dashboard/summary?days=0", headers=AUTH) as r:
                assert r.status == 400
                assert await r.json() == {
                    "error": "days must be an integer between 1 and 3660", "errors": []}
        (acme,) = doc["accounts"]
        assert acme["balance"] == fmt(sim.balance("ACME")) and Decimal(acme["held"]) > 0
        (dest,) = doc["spend"]["destination"]
        assert dest["key"] == "Germany Fixed" and dest["calls"] == 1
        assert [r["route"] for r in doc["fas_routes"]] == ["carrier-a"]
        assert doc["invoices"] == [] and doc["fraud_events"] == [] and doc["alerts"] == []
    asyncio.run(main())


#: A string that looks like an amount but is not in the one money format (an exponent,
#: or zeros trailing after the point), and a time that is not ISO 8601 UTC ms + "Z".
NOT_MONEY = re.compile(r"^-?[0-9.]+E[-+]?[0-9]+$|^-?[0-9]+\.[0-9]*0$")
A_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T")


def _strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, dict):
        for v in doc.values():
            yield from _strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _strings(v)
    elif isinstance(doc, str):
        yield doc


def test_money_and_times_are_shown_as_the_api_gives_them(sim: Sim) -> None:
    """One money format (``money.fmt``: no exponent, no trailing zeros) and one time format
    on the page as in the API: the charge of a call just ended (stored as 8-place text),
    spend, invoice totals and the times of fraud events and invoices. The summary's parts
    are what the API's endpoints answer, field for field."""
    failed_call(sim, "busy", NUMBERS[0])  # charged 0
    call(sim, "tiny", NUMBERS[0], 1_000)  # 0.00015833: str(Decimal) would not do
    issue_invoice(sim.conn, "ACME", PERIOD, SETTINGS, now_ms=AFTER)
    sim.conn.execute(
        "INSERT INTO fraud_events (ts_ms, account, rule, action, reason, evidence, key) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)", (sim.now, "ACME", "spend_per_hour", "alert",
                                         "spent 0.5", "{}", "f1"))
    sim.conn.commit()

    async def main() -> tuple[Any, ...]:
        async with serve(make_app(sim.conn, TOKEN, settings=SETTINGS)) as base, \
                aiohttp.ClientSession() as http:
            async def get(path: str) -> Any:
                async with http.get(base + path, headers=AUTH) as r:
                    assert r.status == 200, (path, await r.text())
                    return await r.json()
            summary = await get("/dashboard/summary?days=3660")
            async with http.get(base + "/dashboard/live", headers=AUTH) as r:
                ((_, live, _),) = await read_events(r, 1)
            return (summary, live, await get("/v1/invoices"), await get("/v1/fraud-events"),
                    await get("/v1/stats/spend?by=destination"),
                    await get("/v1/stats/spend?by=day"), await get("/v1/accounts"))
    summary, live, invoices, events, by_dest, by_day, accounts = asyncio.run(main())
    recent = {d["call_ref"]: d for d in live["recent"]}
    assert (recent["busy"]["charged"], recent["tiny"]["charged"]) == ("0", "0.00015833")
    assert recent["c0"]["charged"] == fmt(Decimal(recent["c0"]["charged"]))
    for doc in (summary, live):
        for text in _strings(doc):
            assert not NOT_MONEY.search(text), text
            if A_TIME.match(text):
                assert TIME.match(text), text
    assert summary["invoices"] == invoices["invoices"] != []
    assert summary["fraud_events"] == events["events"] != []
    assert summary["spend"]["destination"] == by_dest["rows"]
    assert summary["spend"]["day"] == by_day["rows"]
    assert summary["accounts"] == accounts["accounts"]


def test_alerts_name_low_balances_spend_caps_suspensions_blocks_and_open_fraud() -> None:
    base = {"currency": "EUR", "suspended": False, "suspend_reason": "", "blocked": "",
            "low_balance": None, "daily_cap": None, "monthly_cap": None,
            "day_spend": "0", "month_spend": "0", "balance": "10"}
    accounts = [
        {**base, "code": "OK", "low_balance": "9.99", "daily_cap": "100", "day_spend": "79.99"},
        {**base, "code": "LOW", "balance": "4.99", "low_balance": "5"},
        {**base, "code": "CAP", "monthly_cap": "200", "month_spend": "160"},
        {**base, "code": "SUS", "suspended": True, "suspend_reason": "unpaid"},
        {**base, "code": "BLK", "blocked": "too many calls"}]
    events = [{"account": "BLK", "action": "block", "rule": "max_calls", "reason": "31 > 30",
               "open": True},
              {"account": "OK", "action": "block", "rule": "x", "reason": "", "open": False}]
    got = [(a["account"], a["kind"], a["message"]) for a in alerts(accounts, events)]
    assert got == [
        ("BLK", "fraud", "block by fraud rule max_calls: 31 > 30"),
        ("LOW", "low_balance", "balance 4.99 EUR below 5"),
        ("CAP", "budget", "80% of its monthly cap used (160 of 200 EUR)"),
        ("SUS", "suspended", "suspended: unpaid"),
        ("BLK", "blocked", "new calls refused: too many calls")]


def test_the_live_stream_ticks_twice_a_second_with_one_store_read_for_all_clients(
        sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[float] = []
    real = dashboard.live_snapshot

    def counted(*args: Any, **kw: Any) -> dict[str, object]:
        reads.append(time.monotonic())
        return real(*args, **kw)
    monkeypatch.setattr(dashboard, "live_snapshot", counted)

    async def main() -> None:
        app = make_app(sim.conn, TOKEN, settings=SETTINGS)
        async with serve(app) as base, aiohttp.ClientSession() as http:
            async with http.get(base + "/dashboard/live", headers=AUTH) as a, \
                    http.get(base + "/dashboard/live", headers=AUTH) as b:
                assert a.status == 200 and a.content_type == "text/event-stream"
                got_a, got_b = await asyncio.gather(read_events(a, 7), read_events(b, 7))
            t0 = time.monotonic()
            await asyncio.sleep(1.2)
            idle_reads = [t for t in reads if t > t0]
        for got in (got_a, got_b):
            kinds = {k for k, _, _ in got}
            assert kinds == {"live"}
            gaps = [y[2] - x[2] for x, y in itertools.pairwise(got)]
            assert max(gaps) < 1.0, gaps  # at least once a second (0.5 s ticks)
            last = got[-1][1]
            calls = [dict(zip(last["call_fields"], row, strict=True)) for row in last["calls"]]
            assert [c["call_ref"] for c in calls] == ["live-1"]
            assert Decimal(calls[0]["cost"]) > 0 and calls[0]["account"] == "ACME"
            assert got[-1][1]["recent"][0]["call_ref"] == "c0"
        # Both clients were served from the same reads (one per tick, not one per client)
        seqs_a = {d["seq"] for _, d, _ in got_a}
        seqs_b = {d["seq"] for _, d, _ in got_b}
        assert len(seqs_a & seqs_b) >= 5
        assert len(reads) <= max(seqs_a | seqs_b) + 2
        assert idle_reads == [] or len(idle_reads) <= 1  # no client: no more reads
    asyncio.run(main())


def test_a_server_shutdown_ends_open_streams_at_once(sim: Sim) -> None:
    async def main() -> float:
        app = make_app(sim.conn, TOKEN, settings=SETTINGS)
        runner = web.AppRunner(app, shutdown_timeout=30)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://{host}:{port}/dashboard/live", headers=AUTH) as r:
            await read_events(r, 1)
            t0 = time.monotonic()
            await runner.cleanup()
            return time.monotonic() - t0
    assert asyncio.run(main()) < 5  # not the 30 s shutdown timeout


def test_the_dashboard_reads_a_postgresql_store_as_it_reads_sqlite(sim: Sim,
                                                                   tmp_path: Path) -> None:
    """Several nodes share a PostgreSQL store: the dashboard's reads give there what they
    give on the node's SQLite file (the same store copied with ``sidecar db copy``)."""
    from sidecar.store.conn import open_db
    from tests.store.pgdb import as_url, fresh_database

    now = sim.now + 5_000
    sim.conn.commit()
    with fresh_database() as conninfo:
        url = as_url(conninfo)
        copied = subprocess.run([sys.executable, "-m", "sidecar", "db", "copy",
                                 str(tmp_path / "sidecar.db"), url], capture_output=True,
                                text=True, timeout=60)
        assert copied.returncode == 0, copied.stdout + copied.stderr
        pg = open_db(url)
        try:
            on_pg = (dashboard.live_snapshot(pg, now), dashboard.summary(pg, now, 3660))
        finally:
            pg.close()
    on_sqlite = (dashboard.live_snapshot(sim.conn, now), dashboard.summary(sim.conn, now, 3660))
    assert json.dumps(on_pg, default=str, sort_keys=True) == \
        json.dumps(on_sqlite, default=str, sort_keys=True)
    assert on_pg[0]["calls"] and on_pg[0]["recent"] and on_pg[1]["spend"]["destination"]
