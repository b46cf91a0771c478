"""API tokens scoped to an account (issue 14, resellers): a reseller's token reads its own
account and the accounts below it, nothing else, and never the prices of the tiers above
it; it writes nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from sidecar.api import make_app
from sidecar.charging.model import AccountKind
from sidecar.store.accounts import add_account
from sidecar.store.tokens import TokenError, create_token, list_tokens
from tests.api.test_api import TOKEN, serve
from tests.charging.harness import T0, Sim
from tests.charging.test_resellers import chain_sim


def with_other(sim: Sim, mine: str, theirs: str) -> None:
    """OTHER beside RES under DIST (as much money as CUST), and one ended minute-long call
    each of CUST (``mine``) and OTHER (``theirs``)."""
    add_account(sim.conn, "OTHER", "retail", AccountKind.PREPAID, now_ms=T0, parent="DIST")
    sim.ledger.topup("OTHER", sim.balance("CUST"), T0, "initial")
    for ref, code in ((mine, "CUST"), (theirs, "OTHER")):
        assert sim.charger.authorize(ref, number="4930123", account_code=code,
                                     now_ms=sim.now).allow
        sim.answer(ref)
        sim.advance_to(sim.now + 60_000)
        sim.end(ref, ended_by="caller")


def test_a_resellers_token_reads_only_its_subtree() -> None:
    sim = chain_sim()
    with_other(sim, "mine", "theirs")
    assert sim.charger.authorize("live", number="4930123", account_code="OTHER",
                                 now_ms=sim.now).allow
    sim.answer("live")
    with pytest.raises(TokenError, match="reads only"):
        create_token(sim.conn, "res-admin", "admin", T0, account="RES")
    with pytest.raises(TokenError, match="account 'NOPE' not found"):
        create_token(sim.conn, "nope", "read", T0, account="NOPE")
    scoped = create_token(sim.conn, "res-portal", "read", T0, account="RES")
    assert [(t.name, t.account) for t in list_tokens(sim.conn)] == [("res-portal", "RES")]
    auth = {"Authorization": f"Bearer {scoped}"}

    async def main() -> None:
        async with serve(make_app(sim.conn, TOKEN)) as base, aiohttp.ClientSession() as http:
            async def get(path: str, status: int = 200) -> Any:
                async with http.get(base + path, headers=auth) as r:
                    assert r.status == status, (path, r.status, await r.text())
                    return await r.json() if r.content_type == "application/json" else None

            (cdr,) = (await get("/v1/cdrs"))["cdrs"]
            assert cdr["call_ref"] == "mine"
            # Its own price and margin only: DIST's price to RES is not RES's to see.
            assert [(t["account"], t["cost"], t["margin"]) for t in cdr["tiers"]] == [
                ("RES", "0.04", "0.02")]
            assert (await get("/v1/cdrs/mine"))["call_ref"] == "mine"
            await get("/v1/cdrs/theirs", 404)
            await get("/v1/cdrs?account=OTHER", 404)
            assert [c["call_ref"] for c in (await get("/v1/cdrs?account=CUST"))["cdrs"]] == [
                "mine"]
            assert sorted(a["code"] for a in (await get("/v1/accounts"))["accounts"]) == [
                "CUST", "RES"]
            assert (await get("/v1/accounts/CUST"))["balance"] == "9.94"
            await get("/v1/accounts/DIST", 404)
            await get("/v1/accounts/OTHER/bundles", 404)
            assert (await get("/v1/live-calls"))["calls"] == []  # OTHER's live call hidden
            await get("/v1/stats/spend", 400)
            assert (await get("/v1/stats/spend?account=CUST"))["rows"]
            for path in ("/v1/decks", "/v1/carriers", "/v1/stats/margin",
                         "/v1/stats/routes", "/v1/fas/routes"):
                await get(path, 403)
            async with http.post(base + "/v1/accounts", headers=auth,
                                 data=json.dumps({"code": "X", "plan": "retail"})) as r:
                assert r.status == 403
            # The operator's token sees everything.
            async with http.get(base + "/v1/cdrs", headers={
                    "Authorization": f"Bearer {TOKEN}"}) as r:
                every = (await r.json())["cdrs"]
                assert sorted(c["call_ref"] for c in every) == ["mine", "theirs"]
                mine = next(c for c in every if c["call_ref"] == "mine")
                assert [t["account"] for t in mine["tiers"]] == ["RES", "DIST"]
    asyncio.run(main())
