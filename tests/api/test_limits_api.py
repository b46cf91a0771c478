"""The API's limits and fraud events: reads with the read token, writes with the admin
token only, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.api import make_app
from sidecar.charging.commands import Flag
from sidecar.charging.model import AccountKind
from sidecar.store.accounts import add_account, get_account, ledger_for
from sidecar.store.conn import Db
from sidecar.store.decks import import_deck
from sidecar.store.fraud import limits_json, update_account_limits, update_plan_limits
from tests.api.test_api import AUTH, TOKEN, serve
from tests.store.pgdb import RETAIL_DECK, T0

ADMIN_TOKEN = "admin-" + "x" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BLOCK = "fraud rule distinct_callees: 31 numbers in 10 minutes (limit 30)"
SUSPEND = "fraud rule spend_per_hour: 30.00 in the last hour (limit 20)"


@pytest.fixture
def db(store: Db, tmp_path: Path) -> Db:
    deck = tmp_path / "retail.csv"
    deck.write_text(RETAIL_DECK)
    import_deck(store, "retail", deck, as_of=datetime(2026, 11, 1, tzinfo=UTC))
    add_account(store, "ACME", "retail", AccountKind.PREPAID, now_ms=T0)
    add_account(store, "DEPT", "retail", AccountKind.PREPAID, now_ms=T0, parent="ACME")
    update_plan_limits(store, "retail", {"concurrent_calls": 20, "max_rate": "1"})
    update_account_limits(store, "ACME", {"concurrent_calls": 4})
    res = ledger_for(store).execute([
        Flag(1, "DEPT", "distinct_callees", "block", BLOCK, '{"numbers": 31}', "k1", T0),
        Flag(2, "ACME", "spend_per_hour", "suspend", SUSPEND, '{"spent": "30.00"}', "k2",
             T0 + 60_000),
        Flag(3, "ACME", "new_country", "alert", "fraud rule new_country: 882", "{}", "k3",
             T0 + 120_000)])
    assert all(o.ok for o in res.outcomes)
    return store


def with_server(db: Db, test: Callable[[aiohttp.ClientSession, str], Awaitable[None]],
                admin_token: str = ADMIN_TOKEN) -> None:
    async def main() -> None:
        async with serve(make_app(db, TOKEN, admin_token=admin_token)) as base, \
                aiohttp.ClientSession() as http:
            await test(http, base)
    asyncio.run(main())


async def call(http: aiohttp.ClientSession, method: str, url: str, status: int,
               headers: dict[str, str] | None = None, body: str | None = None) -> Any:
    async with http.request(method, url, headers=AUTH if headers is None else headers,
                            data=body) as r:
        assert r.status == status, (method, url, r.status, await r.text())
        return await r.json()


def test_limits_and_fraud_events_are_read_with_the_read_token(db: Db) -> None:
    async def test(http: aiohttp.ClientSession, base: str) -> None:
        doc = await call(http, "GET", base + "/v1/accounts/DEPT/limits", 200)
        assert doc == {"account": "DEPT", "own": {},
                       "effective": {"concurrent_calls": 4, "max_rate": "1"},
                       "source": {"concurrent_calls": "account ACME",
                                  "max_rate": "plan retail"}}
        assert doc == limits_json(db, account="DEPT")  # what `limits show --json` prints
        assert (await call(http, "GET", base + "/v1/accounts/NOPE/limits", 404))[
            "error"] == "account 'NOPE' not found"

        events = (await call(http, "GET", base + "/v1/fraud-events", 200))["events"]
        assert [(e["account"], e["action"], e["open"]) for e in events] == [
            ("DEPT", "block", True), ("ACME", "suspend", True), ("ACME", "alert", False)]
        assert events[0]["evidence"] == {"numbers": 31} and events[0]["reason"] == BLOCK
        got = await call(http, "GET", base + "/v1/fraud-events?account=ACME&open=true", 200)
        assert [e["key"] for e in got["events"]] == ["k2"]
        got = await call(http, "GET", base + "/v1/fraud-events?from=2026-11-21T12:00:30Z"
                         "&to=2026-11-21T12:05:00Z&open=false", 200)
        assert [e["key"] for e in got["events"]] == ["k2", "k3"]
        assert "open" in (await call(http, "GET", base + "/v1/fraud-events?open=maybe",
                                     400))["error"]
        assert "from" in (await call(http, "GET", base + "/v1/fraud-events?from=yesterday",
                                     400))["error"]
        await call(http, "GET", base + "/v1/fraud-events?account=NOPE", 404)
        acc = await call(http, "GET", base + "/v1/accounts/DEPT", 200)
        assert (acc["blocked"], acc["parent"], acc["limits"]) == (BLOCK, "ACME", {})
        # The admin token reads too.
        await call(http, "GET", base + "/v1/fraud-events", 200, ADMIN)
    with_server(db, test)


def test_writes_need_the_admin_token(db: Db) -> None:
    async def test(http: aiohttp.ClientSession, base: str) -> None:
        url = base + "/v1/accounts/DEPT/limits"
        body = json.dumps({"max_rate": "0.25", "deny": ["882", "+881"],
                           "concurrent_calls": None})
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            await call(http, "PUT", url, 401, headers, body)
            await call(http, "POST", base + "/v1/accounts/DEPT/fraud/lift", 401, headers)
        err = await call(http, "PUT", url, 403, AUTH, body)
        assert "admin token" in err["error"]
        await call(http, "POST", base + "/v1/accounts/DEPT/fraud/lift", 403, AUTH)
        assert get_account(db, "DEPT").limits.to_dict() == {}
        assert get_account(db, "DEPT").blocked == BLOCK

        doc = await call(http, "PUT", url, 200, ADMIN, body)
        assert doc["own"] == {"concurrent_calls": None, "max_rate": "0.25",
                              "deny": ["881", "882"]}
        assert doc["effective"]["concurrent_calls"] is None  # no limit, not ACME's 4
        assert doc["source"]["concurrent_calls"] == "account DEPT"
        assert get_account(db, "DEPT").limits.max_rate == 0.25

        # Bad input: 400 naming the key, nothing changed.
        for bad, says in (({"max_rate": "-1"}, "limits.max_rate"),
                          ({"max_rate": "1", "sometimes": 3}, "limits.sometimes"),
                          ({"spend_per_hour_action": "shout"}, "limits.spend_per_hour_action"),
                          (["max_rate"], "JSON object")):
            err = await call(http, "PUT", url, 400, ADMIN, json.dumps(bad))
            assert says in err["error"], err
        assert "not JSON" in (await call(http, "PUT", url, 400, ADMIN, "{max_rate"))["error"]
        assert (await call(http, "GET", url, 200))["own"]["max_rate"] == "0.25"
        await call(http, "PUT", base + "/v1/accounts/NOPE/limits", 404, ADMIN, "{}")

        lifted = await call(http, "POST", base + "/v1/accounts/DEPT/fraud/lift", 200, ADMIN,
                            json.dumps({"note": "false alarm"}))
        assert lifted == {"account": "DEPT", "lifted": 1, "unblocked": BLOCK, "resumed": None,
                          "still_suspended": None}
        lifted = await call(http, "POST", base + "/v1/accounts/ACME/fraud/lift", 200, ADMIN)
        assert (lifted["lifted"], lifted["resumed"]) == (1, SUSPEND)
        acme, dept = get_account(db, "ACME"), get_account(db, "DEPT")
        assert (acme.suspended, acme.blocked, dept.blocked) == (False, "", "")
        events = (await call(http, "GET", base + "/v1/fraud-events", 200))["events"]
        assert [(e["lifted_by"], e["lift_note"], e["open"]) for e in events[:2]] == [
            ("api", "false alarm", False), ("api", "", False)]
        await call(http, "POST", base + "/v1/accounts/NOPE/fraud/lift", 404, ADMIN)
        await call(http, "POST", base + "/v1/accounts/ACME/fraud/lift", 400, ADMIN,
                   json.dumps({"note": 5}))
    with_server(db, test)


def test_without_an_admin_token_writes_are_refused(db: Db) -> None:
    async def test(http: aiohttp.ClientSession, base: str) -> None:
        err = await call(http, "PUT", base + "/v1/accounts/DEPT/limits", 403, AUTH,
                         json.dumps({"max_rate": "5"}))
        assert "no admin token" in err["error"]
        await call(http, "POST", base + "/v1/accounts/DEPT/fraud/lift", 403, AUTH)
        await call(http, "POST", base + "/v1/accounts/DEPT/fraud/lift", 401, ADMIN)
        await call(http, "GET", base + "/v1/accounts/DEPT/limits", 200)
    with_server(db, test, admin_token="")
    assert get_account(db, "DEPT").blocked == BLOCK


def test_admin_tokens_must_be_long_and_not_the_read_token(db: Db) -> None:
    with pytest.raises(ValueError, match="admin token must be at least 32 characters"):
        make_app(db, TOKEN, admin_token="short-admin-token")
    with pytest.raises(ValueError, match="differ"):
        make_app(db, ADMIN_TOKEN, admin_token=ADMIN_TOKEN)


def test_api_command_refuses_a_short_admin_token(tmp_path: Path) -> None:
    env = {**os.environ, "SIDECAR_DB": str(tmp_path / "api.db"), "SIDECAR_API_TOKEN": TOKEN,
           "SIDECAR_API_ADMIN_TOKEN": "too-short"}
    p = subprocess.run(["sidecar", "api", "--listen", "127.0.0.1:0"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert p.returncode == 2 and "at least 32 characters (it has 9)" in p.stderr
    short = tmp_path / "admin-token"
    short.write_text("x" * 31 + "\n")
    short.chmod(0o600)
    env.pop("SIDECAR_API_ADMIN_TOKEN")
    p = subprocess.run(["sidecar", "api", "--admin-token-file", str(short)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and "at least 32 characters (it has 31)" in p.stderr
