"""Free-minute bundles as an operator and a customer see them (issue 14): ``sidecar bundle
add|list|remove``, ``GET /v1/accounts/{code}/bundles``, the CDR's bundle columns and the
invoice's bundle lines, on SQLite and on PostgreSQL, after calls charged by the core on
that store."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

from sidecar.api import make_app
from sidecar.charging import Charger, PlanRates
from sidecar.invoices import InvoiceSettings, Period, Renderer, draft_invoice
from sidecar.store.accounts import ledger_for
from sidecar.store.bundles import bundle_book
from sidecar.store.conn import Db
from sidecar.store.decks import load_table
from tests.api.test_api import AUTH, TOKEN, serve
from tests.cli.test_rating_cli import DECK, run
from tests.conftest import target_of, write

NOV = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000)
T = int(datetime(2026, 11, 21, 12, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def shop(store: Db, tmp_path: Path) -> tuple[Db, Path, str]:
    target = target_of(store)

    def sc(*args: str, ok: bool = True) -> str:
        p = run(tmp_path, "--db", target, *args, ok=ok)
        return p.stdout if ok else p.stderr

    sc("deck", "import", str(write(tmp_path / "carrier.csv", DECK)), "--plan", "carrier",
       "--as-of", "2026-11-01")
    sc("account", "add", "ACME", "--plan", "carrier")
    sc("account", "topup", "ACME", "5")
    return store, tmp_path, target


def _calls(store: Db) -> None:
    """Two calls to Germany on the bundle (600 s): 300 s inside it, then 400 s crossing
    its end (300 free, 100 paid at 0.0095/min); one to Malta, not covered."""
    table = load_table(store, "carrier")
    ch = Charger(ledger_for(store), lambda _p: PlanRates(table, 60))
    ch.bundles = bundle_book(store)
    now = T
    for ref, number, ms in (("de-1", "4930111", 300_000), ("de-2", "4930222", 399_500),
                            ("mt-1", "35699123", 30_000)):
        assert ch.authorize(ref, number=number, account_code="ACME", now_ms=now).allow
        ch.answer(ref, now)
        end = now + ms
        while (d := ch.next_deadline()) is not None and d <= end:
            ch.tick(d)
        ch.end(ref, end, ended_by="caller")
        now = end + 1000


def test_bundles_are_added_listed_used_and_invoiced(shop: tuple[Db, Path, str]) -> None:
    store, tmp, target = shop

    def sc(*args: str, ok: bool = True) -> str:
        p = run(tmp, "--db", target, *args, ok=ok)
        return p.stdout if ok else p.stderr

    out = sc("bundle", "add", "germany", "--account", "ACME", "--minutes", "10",
             "--prefix", "49")
    assert "bundle germany for account ACME: 600 s per month (49*)" in out
    # Bad input: a clear error, nothing stored.
    assert "account 'NOPE' not found" in sc("bundle", "add", "x", "--account", "NOPE",
                                            "--seconds", "5", ok=False)
    assert "has a bundle 'germany' already" in sc("bundle", "add", "germany", "--account",
                                                   "ACME", "--seconds", "5", ok=False)
    assert "'4x' is not a digit prefix" in sc("bundle", "add", "y", "--account", "ACME",
                                              "--seconds", "5", "--prefix", "4x", ok=False)
    assert "--minutes N or --seconds N" in sc("bundle", "add", "z", "--plan", "carrier",
                                              ok=False)
    assert [b["name"] for b in json.loads(sc("bundle", "list", "--json"))] == ["germany"]

    _calls(store)

    doc = json.loads(sc("bundle", "list", "--account", "ACME", "--at", "2026-11-25",
                        "--json"))
    (b,) = doc["bundles"]
    assert (b["used_seconds"], b["held_seconds"], b["left_seconds"]) == (600, 0, 0)
    assert (b["period_start"], b["period_end"]) == ("2026-11-01T00:00:00Z",
                                                    "2026-12-01T00:00:00Z")
    table = sc("bundle", "list", "--account", "ACME", "--at", "2026-11-25")
    assert "germany" in table and "600" in table

    cdrs = {c["call_ref"]: c for c in json.loads(sc("cdrs", "--account", "ACME", "--format",
                                                    "json"))}
    assert (cdrs["de-1"]["bundle"], cdrs["de-1"]["bundle_seconds"],
            cdrs["de-1"]["rating"]["cost"]) == ("germany", 300, "0")
    # 400 s: 300 from the bundle, 100 paid: 0.0095 * 100 / 60 = 0.01583333 (8 places, half up)
    assert (cdrs["de-2"]["bundle_seconds"], cdrs["de-2"]["billed_seconds"],
            cdrs["de-2"]["rating"]["cost"]) == (300, 400, "0.01583333")
    assert cdrs["de-2"]["bundle_period"] == "2026-11-01T00:00:00.000Z"
    assert (cdrs["mt-1"]["bundle"], cdrs["mt-1"]["bundle_seconds"]) == (None, 0)
    rows = list(csv.DictReader(io.StringIO(sc("cdrs", "--account", "ACME", "--format", "csv"))))
    assert {r["call_ref"]: r["bundle_seconds"] for r in rows} == {
        "de-1": "300", "de-2": "300", "mt-1": "0"}

    # The API: the same figures, with the read token.
    async def api() -> dict[str, object]:
        async with serve(make_app(store, TOKEN)) as base, aiohttp.ClientSession() as http:
            async with http.get(f"{base}/v1/accounts/ACME/bundles?at=2026-11-25T00:00:00Z",
                                headers=AUTH) as r:
                assert r.status == 200, await r.text()
                got: dict[str, object] = await r.json()
            async with http.get(f"{base}/v1/accounts/NOPE/bundles", headers=AUTH) as r:
                assert r.status == 404
            async with http.get(f"{base}/v1/cdrs/de-2", headers=AUTH) as r:
                cdr = await r.json()
                assert (cdr["bundle"], cdr["bundle_seconds"]) == ("germany", 300)
            return got
    got = asyncio.run(api())
    assert got["account"] == "ACME"
    (ab,) = got["bundles"]  # type: ignore[misc]
    assert (ab["name"], ab["owner"], ab["used_seconds"], ab["left_seconds"]) == (
        "germany", "account", 600, 0)
    assert ab["period_start"] == "2026-11-01T00:00:00.000Z"

    # The invoice: the Germany line billed 700 s, 600 of them from the bundle, charged
    # only the paid 100 s; a bundle line with what was used and left.
    issued = draft_invoice(store, "ACME", Period(2026, 11), InvoiceSettings(),
                           now_ms=T + 3_600_000)
    inv = issued.invoice
    (de,) = [ln for ln in inv.lines_of("usage") if ln.destination == "Germany Fixed"]
    assert (de.calls, de.billed_seconds, de.bundle_seconds) == (2, 700, 600)
    assert de.exact == Decimal("0.01583333")
    (bu,) = inv.bundles
    assert (bu.name, bu.calls, bu.seconds, bu.allowance, bu.left) == ("germany", 2, 600, 600, 0)
    html = Renderer().html(issued)
    assert "Free-minute bundles" in html and "From bundles" in html

    assert "removed" in sc("bundle", "remove", "germany", "--account", "ACME")
    assert "has no bundle 'germany'" in sc("bundle", "remove", "germany", "--account", "ACME",
                                           ok=False)
    assert json.loads(sc("bundle", "list", "--json")) == []
