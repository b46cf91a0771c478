"""Least-cost routing in the HTTP API: the carriers and their state, routed CDRs with buy
cost and margin, and margins by carrier (a real server on a loopback port)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import aiohttp

from sidecar.charging.model import MediaOutcome
from sidecar.store.carriers import set_enabled
from tests.api.conform import check
from tests.api.test_api import get_json, with_server
from tests.charging.harness import Sim
from tests.charging.test_routing import carriers, offer, routed

D = Decimal


def test_carriers_routed_cdrs_and_margins(tmp_path: Path) -> None:
    sim = Sim()
    sim.account("acme", "10")
    carriers(sim, tmp_path, {"cheap": "Germany Fixed;4930;0.0200;1/1;2026-06-01;0\n",
                             "solid": "Germany Fixed;4930;0.0350;6/6;2026-06-01;0.0010\n"})
    routed(sim)
    offer(sim, "c1")
    sim.charger.attempt("c1", sim.now, 503, "cheap")
    sim.charger.answer("c1", sim.now + 1_000, route="solid")
    sim.now += 62_400
    sim.end("c1", ended_by="caller", reason="bye", route="solid")
    offer(sim, "c2")
    sim.charger.answer("c2", sim.now, route="cheap")
    sim.now += 10_000
    sim.end("c2", ended_by="caller", reason="bye", route="cheap",
            media=MediaOutcome(None, "no-media", "no callee media"))
    set_enabled(sim.conn, "cheap", False, reason="answers without media", now_ms=sim.now)

    async def test(http: aiohttp.ClientSession, base: str) -> None:
        doc = await get_json(http, f"{base}/v1/carriers")
        check("GET", "/v1/carriers", 200, "application/json", doc)
        state = {c["name"]: (c["enabled"], c["disabled_by"], c["currency"])
                 for c in doc["carriers"]}
        assert state == {"cheap": (False, "operator", "USD"), "solid": (True, "", "USD")}
        cdrs = {c["call_ref"]: c for c in (await get_json(
            http, f"{base}/v1/cdrs?account=acme"))["cdrs"]}
        # c1: sold 62 s at 0.06/min; bought 66 s at 0.035/min + 0.001.
        assert (cdrs["c1"]["buy_cost"], cdrs["c1"]["margin"]) == ("0.0395", "0.0225")
        # c2: a false answer: the customer pays nothing, the carrier's 10 s are a loss.
        assert (cdrs["c2"]["buy_cost"], cdrs["c2"]["margin"]) == ("0.00333333",
                                                                   "-0.00333333")
        doc = await get_json(http, f"{base}/v1/stats/margin?by=carrier")
        check("GET", "/v1/stats/margin", 200, "application/json", doc)
        rows = {r["key"]: r for r in doc["rows"]}
        assert (rows["solid"]["sell"], rows["solid"]["buy"], rows["solid"]["margin"],
                rows["solid"]["margin_percent"]) == ("0.062", "0.0395", "0.0225", "36.29")
        assert (rows["cheap"]["sell"], rows["cheap"]["losses"]) == ("0", 1)
        assert [r["key"] for r in doc["rows"]] == ["solid", "cheap"]  # largest margin first
        bad = await get_json(http, f"{base}/v1/stats/margin?by=planet", status=400)
        assert "by must be one of carrier" in bad["error"]
        # The dashboard's carriers card: the same carriers and margins as the API's.
        summary = await get_json(http, f"{base}/dashboard/summary?days=3660")
        carriers = await get_json(http, f"{base}/v1/carriers")
        assert summary["carriers"] == carriers["carriers"]
        assert summary["margins"] == doc["rows"]

    with_server(sim, test)
