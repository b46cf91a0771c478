"""Every command on both stores: the same user session (a deck, accounts, calls replayed
from captures, an invoice and its credit note, the checks) run once against a SQLite file
and once against a PostgreSQL database by URL prints the same figures."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sidecar.lab import free_port
from tests.conftest import write
from tests.store.pgdb import as_url, fresh_database

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
DECK = """destination;code;rate_usd;increment;effective_from;connection_fee
Germany Fixed;4930;0.06;1/1;2026-06-01;0
France;33;0.12;30/6;2026-06-01;0.01
UK Mobile;447;0.30;60/60;2026-06-01;0
"""
CAPTURES = ("normal.pcap", "ringback_after_answer.pcap", "late_media.pcap", "no_media.pcap")


def sidecar(tmp: Path, db: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_DB"}
    p = subprocess.run(["sidecar", "--db", db, *args], capture_output=True, text=True,
                       env=env, timeout=120, cwd=tmp)
    if ok:
        assert p.returncode == 0, f"sidecar {' '.join(args)}: {p.stderr}"
    return p


def doc(tmp: Path, db: str, *args: str) -> Any:
    return json.loads(sidecar(tmp, db, *args, "--json").stdout)


def session(tmp: Path, db: str) -> dict[str, Any]:
    """What a user does with a fresh store, and what the commands answer."""
    out: dict[str, Any] = {}
    deck = write(tmp / "retail.csv", DECK)
    sidecar(tmp, db, "deck", "import", str(deck), "--plan", "retail", "--as-of", "2026-06-01")
    sidecar(tmp, db, "plan", "retail", "--chunk-seconds", "30")
    sidecar(tmp, db, "account", "add", "acme", "--plan", "retail", "--balance", "5",
            "--name", "Acme & Sons <ltd>")
    sidecar(tmp, db, "account", "add", "corp", "--plan", "retail", "--kind", "postpaid",
            "--credit-limit", "100")
    sidecar(tmp, db, "account", "map-sip", "acme", "--user", "15551230001")
    sidecar(tmp, db, "account", "topup", "acme", "2.5", "--note", "card 1234")
    for capture in CAPTURES:
        sidecar(tmp, db, "replay", str(PCAPS / capture), "--db", db)
    out["what_if"] = doc(tmp, db, "replay", str(PCAPS / "late_media.pcap"), "--plan", "retail")
    out["rate"] = doc(tmp, db, "rate", "--plan", "retail", "--number", "+33 1 23 45 67 89",
                      "--duration", "61", "--at", "2026-11-21T12:00:00")
    out["cdrs"] = json.loads(sidecar(tmp, db, "cdrs", "--format", "json").stdout)
    ended = max(int(c["ended_ms"]) for c in out["cdrs"] if c.get("ended_ms"))
    period = datetime.fromtimestamp(ended / 1000, UTC).strftime("%Y-%m")
    year, month = map(int, period.split("-"))
    after = f"{year + month // 12}-{month % 12 + 1:02d}-02"
    out["account"] = doc(tmp, db, "account", "show", "acme")
    out["verify"] = doc(tmp, db, "ledger", "verify")
    out["spend"] = doc(tmp, db, "stats", "spend", "--by", "destination")
    out["plans"] = sidecar(tmp, db, "deck", "plans").stdout
    out["deck"] = sidecar(tmp, db, "deck", "export", "--plan", "retail").stdout
    inv = doc(tmp, db, "invoice", "--account", "acme", "--period", period, "--format", "html",
              "--out", str(tmp / "out"), "--date", after)
    out["invoice"] = inv
    number = inv["number"]
    out["html"] = (tmp / "out" / f"{number}.html").read_text()
    out["reconcile"] = doc(tmp, db, "reconcile", "--number", number)
    out["credit"] = doc(tmp, db, "credit-note", number, "--reason", "goodwill", "--amount",
                        "0.01", "--format", "html", "--out", str(tmp / "out"), "--date", after)
    out["invoices"] = doc(tmp, db, "invoices")
    out["verify_after"] = doc(tmp, db, "ledger", "verify")
    out["api"] = api_answers(tmp, db, number, period)
    out["period"] = period
    return out


API_TOKEN = "t" * 48


def api_answers(tmp: Path, db: str, number: str, period: str) -> dict[str, Any]:
    """``sidecar api`` on the store: what its endpoints answer."""
    port = free_port("tcp", "127.0.0.1")
    env = {**{k: v for k, v in os.environ.items() if k != "SIDECAR_DB"},
           "SIDECAR_API_TOKEN": API_TOKEN}
    log = (tmp / "api.log").open("wb")
    proc = subprocess.Popen(["sidecar", "--db", db, "api", "--listen", f"127.0.0.1:{port}"],
                            stdout=log, stderr=log, env=env, cwd=tmp)
    base = f"http://127.0.0.1:{port}"

    def get(path: str, token: str = API_TOKEN) -> tuple[int, Any]:
        req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, None

    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if get("/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp / "api.log").read_text()
            time.sleep(0.1)
        paths = ("/v1/cdrs", "/v1/accounts/acme", "/v1/accounts",
                 "/v1/decks/retail?at=2026-11-21T12:00:00Z",
                 "/v1/invoices", f"/v1/invoices/{number}",
                 f"/v1/reconcile?account=acme&period={period}", "/v1/stats/spend",
                 "/v1/stats/routes", "/v1/live-calls")
        out: dict[str, Any] = {}
        for path in paths:
            status, body = get(path)
            assert status == 200, (path, status)
            out[path] = body
        assert get("/v1/cdrs", token="wrong")[0] == 401
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    lite = tmp_path_factory.mktemp("sqlite")
    pg = tmp_path_factory.mktemp("postgresql")
    with fresh_database() as conninfo:
        yield {"sqlite": session(lite, str(lite / "store.db")),
               "postgresql": session(pg, as_url(conninfo))}


#: What differs from one run to the next: when a command ran (a top-up's time), the hash of
#: a document that prints it, and where files were written.
_VOLATILE = {"ts", "ts_ms", "sha256", "files"}


def same(a: Any, b: Any, where: str = "") -> None:
    """``a`` and ``b`` equal, but for what differs from one run to the next."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for k in a.keys() - _VOLATILE:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.timeout(600)
def test_the_same_session_gives_the_same_figures_on_both_stores(
        sessions: dict[str, dict[str, Any]]) -> None:
    lite, pg = sessions["sqlite"], sessions["postgresql"]
    assert lite.keys() == pg.keys()
    for key in lite.keys() - {"html"}:
        same(lite[key], pg[key], key)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_session_on_each_store(sessions: dict[str, dict[str, Any]], store: str) -> None:
    s = sessions[store]
    cdrs = s["cdrs"]
    assert sorted(c["fas_verdict"] for c in cdrs) == ["", "late-media", "no-media", "ringback"]
    charged = sum((Decimal(c["charged"]) - Decimal(c["credited"]) for c in cdrs), Decimal(0))
    assert charged == Decimal("0.009")  # 5 s + 4 s (from the media) at 0.001/s
    # 5 opening + 2.5 top-up, less what the calls cost: exact, printed plainly.
    assert s["account"]["balance"] == "7.491" and s["account"]["held"] == "0"
    assert s["verify"] == s["verify_after"] == {"accounts": 2, "ok": True, "problems": {}}
    assert s["reconcile"]["ok"] is True and s["reconcile"]["cdrs"] == 4
    assert s["rate"]["cost"] == "0.14200000"  # 0.01 + 66 s (30/6) at 0.12/min
    assert s["what_if"]["calls"][0]["cost"] == "0.004"
    assert "Acme &amp; Sons &lt;ltd&gt;" in s["html"]  # autoescaped
    assert [(d["number"], d["total"]) for d in s["invoices"]] == [
        ("INV-000001", "0.01"), ("CN-000001", "-0.01")]
    assert "retail" in s["plans"] and "France;33;0.12;30/6" in s["deck"]
    api = s["api"]
    assert [c["call_ref"] for c in api["/v1/cdrs"]["cdrs"]] == [c["call_ref"] for c in cdrs]
    assert api["/v1/accounts/acme"]["balance"] == "7.491"
    assert api["/v1/invoices/INV-000001"]["invoice"]["number"] == "INV-000001"
    assert api["/v1/reconcile?account=acme&period=" + s["period"]]["ok"] is True
    assert api["/v1/live-calls"] == {"calls": [], "accounts": {}}
