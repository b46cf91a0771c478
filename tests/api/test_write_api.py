"""The write API (admin token): accounts, top-ups (once per idempotency key),
adjustments, suspension, deck imports (all or nothing, the CLI's error list), on SQLite
and PostgreSQL. Every answer is checked against the generated OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.api import make_app
from sidecar.store.accounts import get_account, list_accounts, verify_ledger
from sidecar.store.conn import Db
from sidecar.store.decks import import_deck, list_plans
from tests.api.conform import check
from tests.api.test_api import AUTH, TOKEN, serve
from tests.api.test_limits_api import ADMIN, ADMIN_TOKEN
from tests.conftest import target_of
from tests.store.pgdb import RETAIL_DECK

BAD_DECK = """destination;code;rate_usd;increment;effective_from
Germany;4930;0,95;1/1;2026-06-01
France;33;1e-3;1/1;2026-06-01
UK;44;0.1;x;2026-06-01
Spain;34;0.1;1/1;yesterday
"""
GOOD_DECK = """destination;code;rate_eur;increment;effective_from;connection_fee
Germany Fixed;4930;0.0095;1/1;2026-06-01;0
France;33;0.12;30/6;2026-06-01;0.01
"""


@pytest.fixture
def db(store: Db, tmp_path: Path) -> Db:
    deck = tmp_path / "retail.csv"
    deck.write_text(RETAIL_DECK)
    import_deck(store, "retail", deck, as_of=datetime(2026, 11, 1, tzinfo=UTC))
    return store


def with_server(db: Db, test: Callable[[aiohttp.ClientSession, str], Awaitable[None]]
                ) -> None:
    async def main() -> None:
        async with serve(make_app(db, TOKEN, admin_token=ADMIN_TOKEN)) as base, \
                aiohttp.ClientSession() as http:
            await test(http, base)
    asyncio.run(main())


async def call(http: aiohttp.ClientSession, method: str, base: str, template: str,
               status: int, *, path: dict[str, str] | None = None, query: str = "",
               body: object = None, headers: dict[str, str] | None = None,
               text: str | None = None) -> Any:
    """One request; asserts its status, checks it against the document, returns JSON."""
    url = base + template.format(**(path or {})) + query
    data = text if text is not None else None if body is None else json.dumps(body)
    async with http.request(method, url, data=data,
                            headers={**ADMIN, **(headers or {})}) as r:
        got = await r.json()
        assert r.status == status, (method, url, r.status, got)
        check(method, template, r.status, r.content_type, got)
        return got


def test_accounts_are_created_topped_up_adjusted_and_suspended(db: Db) -> None:
    acct = "/v1/accounts"

    async def test(http: aiohttp.ClientSession, base: str) -> None:
        new = {"code": "ACME", "plan": "retail", "balance": "25.50", "name": "ACME GmbH",
               "low_balance": "5", "chunk_seconds": 30, "tax_rate": "0.19"}
        err = await call(http, "POST", base, acct, 403, body=new, headers=AUTH)
        assert "admin token" in err["error"]
        acc = await call(http, "POST", base, acct, 201, body=new)
        assert (acc["code"], acc["balance"], acc["low_balance"], acc["chunk_seconds"],
                acc["max_call_seconds"], acc["kind"]) == ("ACME", "25.5", "5", 30, 14400,
                                                          "prepaid")
        assert get_account(db, "ACME").balance == Decimal("25.5")
        err = await call(http, "POST", base, acct, 409, body=new)
        assert err["error"] == "account 'ACME' already exists"
        for bad, status, says in (
                ({**new, "code": "X", "plan": "nope"}, 422, "rate plan 'nope' not found"),
                ({**new, "code": "X", "parent": "NOPE"}, 422, "parent account 'NOPE'"),
                ({**new, "code": "X", "balance": "1e3"}, 400, "account.balance"),
                ({**new, "code": "X", "chunk_seconds": "30"}, 400, "account.chunk_seconds"),
                ({"code": "X"}, 400, "account.plan: Field required"),
                ({**new, "code": "X", "colour": "red"}, 400, "account.colour: unknown field"),
                ([new], 400, "must be a JSON object")):
            err = await call(http, "POST", base, acct, status, body=bad)
            assert says in err["error"], err
        assert [a.code for a in list_accounts(db)] == ["ACME"]  # nothing else made
        dept = await call(http, "POST", base, acct, 201, body={
            "code": "DEPT", "plan": "retail", "parent": "ACME", "kind": "postpaid",
            "credit_limit": "100"})
        assert (dept["parent"], dept["kind"], dept["credit_limit"], dept["balance"]) == \
            ("ACME", "postpaid", "100", "0")

        # Top-ups: once per idempotency key, however often the request is sent.
        topup = "/v1/accounts/{code}/topups"
        pay = {"amount": "10.00", "note": "bank transfer 4711"}
        key = {"Idempotency-Key": "pay-4711"}
        first = await call(http, "POST", base, topup, 201, path={"code": "ACME"}, body=pay,
                           headers=key)
        assert (first["replayed"], first["account"]["balance"]) == (False, "35.5")
        again = await asyncio.gather(*(
            call(http, "POST", base, topup, 200, path={"code": "ACME"}, body=pay,
                 headers=key) for _ in range(5)))
        assert {(a["replayed"], a["account"]["balance"]) for a in again} == {(True, "35.5")}
        other = await call(http, "POST", base, topup, 201, path={"code": "ACME"}, body=pay,
                           headers={"Idempotency-Key": "pay-4712"})
        assert other["account"]["balance"] == "45.5"
        err = await call(http, "POST", base, topup, 400, path={"code": "ACME"}, body=pay)
        assert "Idempotency-Key" in err["error"]
        await call(http, "POST", base, topup, 422, path={"code": "ACME"},
                   body={"amount": "0"}, headers={"Idempotency-Key": "zero"})
        await call(http, "POST", base, topup, 400, path={"code": "ACME"},
                   body={"amount": "-5"}, headers={"Idempotency-Key": "neg"})
        await call(http, "POST", base, topup, 404, path={"code": "NOPE"}, body=pay,
                   headers={"Idempotency-Key": "nope"})

        # Adjustments: either way, never a prepaid balance below zero.
        adjust = "/v1/accounts/{code}/adjustments"
        acc = await call(http, "POST", base, adjust, 201, path={"code": "ACME"},
                         body={"amount": "-5.5", "note": "duplicate payment"})
        assert acc["balance"] == "40"
        err = await call(http, "POST", base, adjust, 409, path={"code": "ACME"},
                         body={"amount": "-40.01"})
        assert "below zero" in err["error"]
        assert get_account(db, "ACME").balance == 40

        # Suspend and resume.
        acc = await call(http, "POST", base, "/v1/accounts/{code}/suspend", 200,
                         path={"code": "ACME"}, body={"reason": "unpaid invoice"})
        assert (acc["suspended"], acc["suspend_reason"]) == (True, "unpaid invoice")
        acc = await call(http, "POST", base, "/v1/accounts/{code}/resume", 200,
                         path={"code": "ACME"})
        assert (acc["suspended"], acc["suspend_reason"]) == (False, "")
        acc = await call(http, "POST", base, "/v1/accounts/{code}/suspend", 200,
                         path={"code": "DEPT"})
        assert acc["suspend_reason"] == "suspended by operator"
        await call(http, "POST", base, "/v1/accounts/{code}/resume", 404,
                   path={"code": "NOPE"})
        # A method a path does not take: 405, even for a read token.
        async with http.delete(base + "/v1/accounts/ACME", headers=AUTH) as r:
            assert r.status == 405 and "GET" in r.headers["Allow"]
    with_server(db, test)
    rows = db.execute("SELECT kind, amount, note FROM ledger WHERE account = 'ACME' "
                      "ORDER BY id").fetchall()
    assert [(k, Decimal(str(a)), n) for k, a, n in rows] == [
        ("topup", Decimal("25.5"), "initial balance"),
        ("topup", Decimal("10"), "bank transfer 4711"),
        ("topup", Decimal("10"), "bank transfer 4711"),
        ("adjustment", Decimal("-5.5"), "duplicate payment")]
    assert all(not c.problems for c in verify_ledger(db))


def test_a_deck_is_imported_all_or_nothing_with_the_clis_error_list(
        db: Db, tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text(BAD_DECK)
    env = {**os.environ, "SIDECAR_DB": str(target_of(db))}
    cli = subprocess.run(["sidecar", "deck", "import", "bad.csv", "--plan", "wholesale",
                          "--currency", "EUR"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 2
    printed = [ln.strip() for ln in cli.stderr.splitlines()[1:]]
    decks = "/v1/plans/{plan}/decks"

    async def test(http: aiohttp.ClientSession, base: str) -> None:
        err = await call(http, "POST", base, decks, 422, path={"plan": "wholesale"},
                         query="?filename=bad.csv&currency=EUR", text=BAD_DECK)
        assert err["errors"] == printed and len(printed) == 4
        assert err["error"] == "deck refused, nothing imported: 4 problems"
        assert "bad.csv:2:3 (rate_usd): '0,95' is not a decimal number" in err["errors"][0]
        await call(http, "GET", base, "/v1/decks/{plan}", 404, path={"plan": "wholesale"})
        await call(http, "POST", base, decks, 403, path={"plan": "wholesale"},
                   text=GOOD_DECK, headers=AUTH)
        await call(http, "POST", base, decks, 400, path={"plan": "wholesale"},
                   query="?filename=../etc/passwd", text=GOOD_DECK)
        await call(http, "POST", base, decks, 400, path={"plan": "wholesale"},
                   query="?currency=EURO", text=GOOD_DECK)
        done = await call(http, "POST", base, decks, 201, path={"plan": "wholesale"},
                          query="?filename=wholesale-2026-06.csv", text=GOOD_DECK)
        assert (done["plan"], done["version"], done["lines"], done["currency"],
                done["new_prefixes"]) == ("wholesale", 1, 2, "EUR", 2)
        deck = await call(http, "GET", base, "/v1/decks/{plan}", 200,
                          path={"plan": "wholesale"})
        assert deck["versions"][0]["source"] == "wholesale-2026-06.csv"
        assert {(ln["prefix"], ln["rate"], ln["connection_fee"]) for ln in deck["lines"]} \
            == {("4930", "0.0095", "0"), ("33", "0.12", "0.01")}
        # The retail plan is in USD: a deck in EUR is refused, as on the command line.
        err = await call(http, "POST", base, decks, 422, path={"plan": "retail"},
                         text=GOOD_DECK)
        assert "deck is in EUR but plan 'retail' is in USD" in err["errors"][0]
    with_server(db, test)
    assert [p["plan"] for p in list_plans(db)] == ["retail", "wholesale"]
    assert db.execute("SELECT COUNT(*) FROM rates WHERE plan = 'wholesale'").fetchone()[0] \
        == 2
