"""The dashboard as a reseller's token sees it (issue 14): its live calls, running totals,
just-ended CDRs, balances, alerts, spend, fraud events and invoices are those of its
subtree only, without the operator's parts (FAS routes, carriers, margins); the operator's
view is what it was."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from sidecar.api import dashboard, make_app
from sidecar.invoices import issue_invoice
from sidecar.store.tokens import create_token
from tests.api.test_api import TOKEN, serve
from tests.api.test_scoped_tokens import with_other
from tests.charging.harness import T0, Sim
from tests.charging.test_resellers import chain_sim
from tests.invoices.helpers import AFTER, PERIOD, SETTINGS
from tests.web.test_dashboard_api import read_events

pytestmark = pytest.mark.timeout(60)
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}


def reseller_store(db: str | None = None) -> tuple[Sim, str]:
    """DIST -> RES -> CUST, and OTHER beside RES under DIST: an ended call, an open fraud
    block, an invoice and a call up now for each of CUST and OTHER; RES's read token."""
    sim = chain_sim(cust="20", res="50", db=db)
    with_other(sim, "cust-ended", "other-ended")
    for code in ("CUST", "OTHER"):
        issue_invoice(sim.conn, code, PERIOD, SETTINGS, now_ms=AFTER)
        sim.conn.execute(
            "INSERT INTO fraud_events (ts_ms, account, rule, action, reason, evidence, key) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", (sim.now, code, "max_calls_per_minute", "block",
                                             f"{code} too many calls", "{}", f"f-{code}"))
    sim.conn.commit()
    for ref, code in (("cust-live", "CUST"), ("other-live", "OTHER")):
        assert sim.charger.authorize(ref, number="4930123", account_code=code,
                                     now_ms=sim.now).allow
        sim.answer(ref)
    token = create_token(sim.conn, "res-portal", "read", T0, account="RES")
    sim.conn.commit()
    return sim, token


def _calls(live: dict[str, Any]) -> list[str]:
    fields = live["call_fields"]
    return sorted(dict(zip(fields, r, strict=True))["call_ref"] for r in live["calls"])


def _views(sim: Sim, *tokens: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(summary, first live event) for each token, the live streams open together."""
    async def main() -> list[tuple[dict[str, Any], dict[str, Any]]]:
        async with serve(make_app(sim.conn, TOKEN)) as base, aiohttp.ClientSession() as http:
            out = []
            for token in tokens:
                auth = {"Authorization": f"Bearer {token}"}
                async with http.get(base + "/dashboard/summary?days=3660", headers=auth) as r:
                    assert r.status == 200, await r.text()
                    summary = await r.json()
                async with http.get(base + "/dashboard/live", headers=auth) as r:
                    assert r.status == 200
                    ((kind, live, _),) = await read_events(r, 1)
                    assert kind == "live"
                out.append((summary, live))
            return out
    return asyncio.run(main())


def test_a_resellers_dashboard_shows_its_subtree_only() -> None:
    sim, res_token = reseller_store()
    ((summary, live),) = _views(sim, res_token)
    # Live: CUST's call and running total; OTHER's call, DIST's total are not there.
    assert _calls(live) == ["cust-live"]
    assert set(live["accounts"]) <= {"RES", "CUST"} and "CUST" in live["accounts"]
    assert [d["call_ref"] for d in live["recent"]] == ["cust-ended"]
    assert "tiers" not in live["recent"][0]  # no price of a tier above RES
    # The summary: whose view it is, its accounts (DIST not named as RES's parent).
    assert summary["view"] == {"account": "RES", "below": 1}
    assert sorted((a["code"], a["parent"]) for a in summary["accounts"]) == [
        ("CUST", "RES"), ("RES", None)]
    assert {a["account"] for a in summary["alerts"]} == {"CUST"}
    assert [(e["account"], e["reason"]) for e in summary["fraud_events"]] == [
        ("CUST", "CUST too many calls")]
    (inv,) = summary["invoices"]
    assert inv["account"] == "CUST" and inv["number"].startswith("RES-INV-")
    spend_accounts = {r["key"] for r in summary["spend"]["account"]}
    assert spend_accounts == {"CUST"}
    assert sum(r["calls"] for r in summary["spend"]["destination"]) == 1
    # Nothing of the operator's.
    for key in ("fas_routes", "carriers", "margins"):
        assert key not in summary


def test_the_operators_dashboard_is_unchanged_and_both_stream_at_once() -> None:
    sim, res_token = reseller_store()
    (op_summary, op_live), (res_summary, res_live) = _views(sim, TOKEN, res_token)
    assert _calls(op_live) == ["cust-live", "other-live"]
    assert {"CUST", "OTHER"} <= set(op_live["accounts"])
    assert [d["call_ref"] for d in op_live["recent"]] == ["other-ended", "cust-ended"]
    assert "view" not in op_summary
    assert sorted(a["code"] for a in op_summary["accounts"]) == ["CUST", "DIST", "OTHER",
                                                                  "RES"]
    assert {e["account"] for e in op_summary["fraud_events"]} == {"CUST", "OTHER"}
    assert sorted(i["account"] for i in op_summary["invoices"]) == ["CUST", "OTHER"]
    for key in ("fas_routes", "carriers", "margins"):
        assert key in op_summary
    assert _calls(res_live) == ["cust-live"] and res_summary["view"]["account"] == "RES"


def test_a_quiet_resellers_just_ended_list_survives_busier_accounts() -> None:
    """The shared read per tick takes the store's last CDRs; a reseller's list keeps its
    own (read when it connects) while other accounts' calls end."""
    sim, res_token = reseller_store()
    for i in range(20):  # OTHER's 20 calls end after CUST's: the operator's last 15
        ref = f"busy-{i}"
        assert sim.charger.authorize(ref, number="4930123", account_code="OTHER",
                                     now_ms=sim.now).allow
        sim.answer(ref)
        sim.advance_to(sim.now + 1_000)
        sim.end(ref, ended_by="caller")
    (_, op_live), (_, res_live) = _views(sim, TOKEN, res_token)
    assert "cust-ended" not in {d["call_ref"] for d in op_live["recent"]}
    assert [d["call_ref"] for d in res_live["recent"]] == ["cust-ended"]


def test_operator_and_reseller_streams_share_one_store_read_per_tick(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator and two clients of RES listen at once: one read of the live calls per
    tick serves all three, each getting its own view of the same tick."""
    sim, res_token = reseller_store()
    reads: list[int] = []
    real = dashboard.live_snapshot

    def counted(*args: Any, **kw: Any) -> dict[str, object]:
        reads.append(1)
        return real(*args, **kw)
    monkeypatch.setattr(dashboard, "live_snapshot", counted)

    async def main() -> list[list[tuple[str, Any, float]]]:
        async with serve(make_app(sim.conn, TOKEN)) as base, aiohttp.ClientSession() as http:
            res = {"Authorization": f"Bearer {res_token}"}
            async with http.get(base + "/dashboard/live", headers=OPERATOR) as a, \
                    http.get(base + "/dashboard/live", headers=res) as b, \
                    http.get(base + "/dashboard/live", headers=res) as c:
                return list(await asyncio.gather(*(read_events(r, 6) for r in (a, b, c))))
    op, res_b, res_c = asyncio.run(main())
    assert {_calls(d)[-1] for _, d, _ in op} == {"other-live"}
    for got in (res_b, res_c):
        assert all(_calls(d) == ["cust-live"] for _, d, _ in got)
    seqs = [{d["seq"] for _, d, _ in got} for got in (op, res_b, res_c)]
    assert len(seqs[0] & seqs[1] & seqs[2]) >= 4  # the same ticks
    assert len(reads) <= max(seqs[0] | seqs[1] | seqs[2]) + 2  # one read per tick
