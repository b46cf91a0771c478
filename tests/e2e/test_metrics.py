"""End to end: ``sidecar run``'s /metrics and /health/* with the real Kamailio and a real
SIPp call. Every process is stopped by PID, also on failure (the lab)."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.lab.live import LiveLab
from sidecar.store.db import connect
from sidecar.store.decks import import_deck
from tests.e2e.test_live_sidecar import DECK, DIALLED, account, cdrs, wait_for

pytestmark = pytest.mark.timeout(180)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(lab: LiveLab) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(lab.metrics_url + "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def ready(lab: LiveLab) -> tuple[int, dict[str, object]]:
    status, body = get(lab.metrics_url + "/health/ready")
    return status, json.loads(body)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(tmp_path / "sidecar.db")
    (tmp_path / "deck.csv").write_text(DECK)
    import_deck(conn, "retail", tmp_path / "deck.csv", as_of=datetime(2026, 1, 1, tzinfo=UTC))
    yield conn
    conn.close()


@pytest.fixture
def lab(tmp_path: Path, db: sqlite3.Connection) -> Iterator[LiveLab]:
    with LiveLab(tmp_path / "lab", tmp_path / "sidecar.db", metrics=True) as lab:
        yield lab


def test_metrics_and_health_follow_a_real_call_and_kamailio_going_away(
    lab: LiveLab, db: sqlite3.Connection
) -> None:
    # Connected to Kamailio, the store loaded: ready (and live, of course).
    wait_for(lambda: ready(lab)[0] == 200)
    assert ready(lab) == (200, {"ready": True, "leader": True, "evapi": True,
                                "store": True})
    assert get(lab.metrics_url + "/health/live") == (200, b'{"live": true}')

    account(db, "ACME", "10")
    uas = lab.uas("uas.xml")
    r = lab.uac(account_code="ACME", dialled=DIALLED, duration_ms=2000).wait()
    uas.wait()
    assert r.calls_ok, r.output_tail() + lab.log_tail()
    wait_for(lambda: len(cdrs(db, "ACME")) == 1)
    wait_for(lambda: scrape(lab).get(
        ("sidecar_cdrs_total", (("disposition", "answered"),))) == 1)
    m = scrape(lab)
    assert m[("sidecar_offers_total", (("code", "200"), ("decision", "allow")))] == 1
    assert m[("sidecar_auth_latency_seconds_count", ())] == 1
    assert 0 < m[("sidecar_auth_latency_seconds_sum", ())] < 2
    assert m[("sidecar_auth_latency_seconds_bucket", (("le", "+Inf"),))] == 1
    assert 0 < m[("sidecar_auth_sidecar_seconds_total", ())] \
        <= m[("sidecar_auth_latency_seconds_sum", ())]
    assert m[("sidecar_live_calls", ())] == 0
    assert m[("sidecar_live_answered_calls", ())] == 0
    assert m[("sidecar_evapi_connected", ())] == 1
    assert m[("sidecar_store_down", ())] == 0
    assert m[("sidecar_store_batches_committed_total", ())] >= 1
    wait_for(lambda: all(v == 0 for (name, _), v in scrape(lab).items()
                         if name == "sidecar_reserved_credit"))

    # Kamailio goes away: not ready, and /health/ready says why.
    lab.kam.stop()
    wait_for(lambda: ready(lab)[0] == 503)
    status, doc = ready(lab)
    assert status == 503 and doc["not_ready"] == ["evapi"], doc
    assert (doc["ready"], doc["evapi"], doc["store"], doc["leader"]) == (False, False, True,
                                                                         True)
    assert scrape(lab)[("sidecar_evapi_connected", ())] == 0
    assert get(lab.metrics_url + "/health/live")[0] == 200
