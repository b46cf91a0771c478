"""Prometheus metrics and health of ``sidecar run``: the exposition, readiness, the HTTP
endpoints and the ``[metrics] listen`` key (no Kamailio: the sidecar is fed directly)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from sidecar.charging import Alert, CdrWritten
from sidecar.charging.model import Account, AccountKind, Cdr, Disposition
from sidecar.config import Config, ConfigError, listen_address, load_config
from sidecar.live.http import MetricsServer
from sidecar.live.metrics import Metrics
from sidecar.live.service import Sidecar


def samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    if isinstance(text, bytes):
        text = text.decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(text: bytes, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def offer(sidecar: Sidecar, i: int, waited_ms: float = 1.0, account: str = "NOBODY",
          ts: float | None = None) -> None:
    """An offer that waited ``waited_ms`` since Kamailio's timestamp (or sent at ``ts``)."""
    sidecar.on_message(json.dumps({
        "event": "offer", "call_id": f"c{i}", "h_entry": 1, "h_id": i,
        "ts": time.time() - waited_ms / 1000 if ts is None else ts, "tindex": i,
        "tlabel": i, "ruri_user": "4930123", "account_code": account}).encode())


def late_offers(sidecar: Sidecar, ids: range, *, waited_ms: float = 300,
                spacing_ms: float = 5) -> None:
    """Sustained lateness: offers Kamailio sent ``spacing_ms`` apart (at 200/s), each
    waiting ``waited_ms`` or more when the sidecar reads it."""
    first = time.time() - (waited_ms + len(ids) * spacing_ms) / 1000
    for k, i in enumerate(ids):
        offer(sidecar, i, ts=first + k * spacing_ms / 1000)


@pytest.fixture
def sidecar(tmp_path: Path) -> Sidecar:
    s = Sidecar(Config(shed_after_ms=40), tmp_path / "s.db")
    s.evapi.send = lambda m: True  # type: ignore[method-assign]
    return s


def test_offers_latency_and_cdrs_reach_the_exposition(sidecar: Sidecar) -> None:
    for i in range(3):  # unknown account: 403, decided (sent before the late ones)
        offer(sidecar, i, ts=time.time() - 2)
    late_offers(sidecar, range(3, 80))  # sustained lateness: some are shed (busy)
    busy = sidecar.counters["shed"]
    assert busy > 0
    m = sidecar.metrics
    m.offered(True, 200, 1500, 300)
    m.cdr("answered", "")
    m.cdr("no-media", "ringback", "carrier-b")
    text = m.exposition()
    assert value(text, "sidecar_offers_total", decision="reject", code="403") == 80 - busy
    assert value(text, "sidecar_offers_total", decision="busy", code="503") == busy
    assert value(text, "sidecar_offers_total", decision="allow", code="200") == 1
    assert value(text, "sidecar_auth_latency_seconds_count") == 80 - busy + 1
    assert value(text, "sidecar_auth_latency_seconds_bucket", le="+Inf") == 80 - busy + 1
    assert 0 < value(text, "sidecar_auth_sidecar_seconds_total") \
        < value(text, "sidecar_auth_latency_seconds_sum")
    assert value(text, "sidecar_cdrs_total", disposition="answered") == 1
    assert value(text, "sidecar_fas_verdicts_total", verdict="ringback",
                 route="carrier-b") == 1
    # The sidecar's own registry, not prometheus_client's global one.
    assert REGISTRY.get_sample_value("sidecar_offers_total",
                                     {"decision": "busy", "code": "503"}) is None


def test_actions_count_cdrs_fas_verdicts_fraud_and_cut_off_lag(sidecar: Sidecar) -> None:
    cdr = Cdr("r1", "r1", Disposition.NO_MEDIA, account="A", fas_verdict="silence",
              route="gw1", callee="4930777888")

    async def act() -> None:  # an alert is sent by a task of the loop (no webhook here)
        sidecar.on_actions([CdrWritten(cdr), CdrWritten(Cdr("r2", "r2", Disposition.ANSWERED)),
                            Alert("fraud", "A", "x", 0, {"rule": "spend_per_hour",
                                                         "action": "block"})])
        await asyncio.sleep(0)

    asyncio.run(act())
    sidecar.metrics.cut_off(120)
    sidecar.metrics.cut_off(-5)  # ended before its deadline (store failure): lag 0
    text = sidecar.metrics.exposition()
    assert value(text, "sidecar_cdrs_total", disposition="no-media") == 1
    assert value(text, "sidecar_cdrs_total", disposition="answered") == 1
    assert value(text, "sidecar_fas_verdicts_total", verdict="silence", route="gw1") == 1
    assert value(text, "sidecar_fraud_events_total", rule="spend_per_hour",
                 action="block", account="A") == 1
    assert value(text, "sidecar_cutoff_lag_seconds_count") == 2
    assert value(text, "sidecar_cutoff_lag_seconds_sum") == pytest.approx(0.12)
    assert value(text, "sidecar_cutoff_lag_seconds_bucket", le="0.005") == 1
    # No call or number in any label.
    assert b"r1" not in text and b"4930777888" not in text


def test_state_is_read_at_scrape_time(sidecar: Sidecar) -> None:
    book = sidecar.book
    book.load([Account("A", "retail", "USD", AccountKind.PREPAID, Decimal(5), Decimal("1.5")),
               Account("B", "retail", "USD", AccountKind.PREPAID, Decimal(5), Decimal("0.25")),
               Account("C", "retail", "EUR", AccountKind.PREPAID, Decimal(5))], {})
    sidecar.charger.sessions.update({  # type: ignore[dict-item]
        "x": SimpleNamespace(answered_ms=None), "y": SimpleNamespace(answered_ms=1),
        "z": SimpleNamespace(answered_ms=2)})
    sidecar.counters.update({"refused_concurrent_calls": 2, "refused_blocked": 1,
                             "rpc_errors": 3, "rpc_retries": 3, "ended_by_rpc": 4})
    sidecar.writer.failed_batches, sidecar.writer.batches = 1, 10
    sidecar.writer.journal_depth = 7
    sidecar.evapi.connects = 3
    text = sidecar.metrics.exposition()
    assert value(text, "sidecar_live_calls") == 3
    assert value(text, "sidecar_live_answered_calls") == 2
    assert value(text, "sidecar_reserved_credit", currency="USD") == 1.75
    assert value(text, "sidecar_reserved_credit", currency="EUR") == 0
    assert value(text, "sidecar_refusals_total", limit="concurrent_calls") == 2
    assert value(text, "sidecar_refusals_total", limit="blocked") == 1
    assert value(text, "sidecar_end_call_failures_total") == 3
    assert value(text, "sidecar_end_call_retries_total") == 3
    assert value(text, "sidecar_end_calls_total") == 4
    assert value(text, "sidecar_store_batches_committed_total") == 9
    assert value(text, "sidecar_store_commit_failures_total") == 1
    assert value(text, "sidecar_store_journal_depth") == 7
    assert value(text, "sidecar_store_down") == 0
    assert value(text, "sidecar_evapi_connected") == 0
    assert value(text, "sidecar_evapi_reconnects_total") == 2
    assert value(text, "sidecar_leader") == 1
    assert ("sidecar_capture_drops_total", ()) not in samples(text)  # no capture configured
    sidecar.charger.sessions.clear()
    assert value(sidecar.metrics.exposition(), "sidecar_live_calls") == 0


def test_readiness_names_what_is_not_ready(sidecar: Sidecar) -> None:
    standby = Metrics()
    assert standby.readiness() == (False, {"ready": False, "leader": False, "evapi": False,
                                           "store": False,
                                           "not_ready": ["leader", "store", "evapi"]})
    assert value(standby.exposition(), "sidecar_leader") == 0
    m = sidecar.metrics
    assert m.readiness()[1]["not_ready"] == ["store", "evapi"]  # store not loaded yet
    sidecar._ready.set()
    assert m.readiness()[1]["not_ready"] == ["evapi"]
    sidecar.evapi.connected.set()
    assert m.readiness() == (True, {"ready": True, "leader": True, "evapi": True,
                                    "store": True})
    assert value(m.exposition(), "sidecar_ready") == 1
    sidecar.writer.down, sidecar.writer.error = True, "OperationalError: disk is full"
    ready, doc = m.readiness()
    assert not ready and doc["not_ready"] == ["store"]
    assert doc["store_error"] == "OperationalError: disk is full"
    assert value(m.exposition(), "sidecar_store_down") == 1
    m.attach(None)  # the sidecar stopped serving (shutdown, leadership lost)
    assert m.readiness()[1]["not_ready"] == ["leader", "store", "evapi"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_endpoints_and_a_taken_port_retried(sidecar: Sidecar) -> None:
    async def scenario() -> None:
        port = _free_port()
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()  # another sidecar of this node (the active one) has the port
        server = MetricsServer(sidecar.metrics, "127.0.0.1", port, retry_s=0.05)
        try:
            await server.start()
            assert not server.serving
            holder.close()
            for _ in range(100):
                if server.serving:
                    break
                await asyncio.sleep(0.02)
            assert server.serving
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/health/live") as r:
                    assert (r.status, await r.json()) == (200, {"live": True})
                async with http.get(base + "/health/ready") as r:
                    assert r.status == 503
                    assert (await r.json())["not_ready"] == ["store", "evapi"]
                sidecar._ready.set()
                sidecar.evapi.connected.set()
                async with http.get(base + "/health/ready") as r:
                    assert (r.status, await r.json()) == (200, {
                        "ready": True, "leader": True, "evapi": True, "store": True})
                async with http.get(base + "/metrics") as r:
                    assert r.status == 200
                    assert r.headers["Content-Type"].startswith("text/plain")
                    text = await r.read()
                assert value(text, "sidecar_evapi_connected") == 1
                assert value(text, "sidecar_ready") == 1
        finally:
            holder.close()
            await server.stop()

    asyncio.run(scenario())


def test_metrics_listen_key(tmp_path: Path) -> None:
    assert Config().metrics_listen == "127.0.0.1:9464"
    cfg = tmp_path / "s.toml"
    for text, expected in (('""', ""), ('"0.0.0.0:9100"', "0.0.0.0:9100"),
                           ('"[::1]:9464"', "[::1]:9464")):
        cfg.write_text(f"[metrics]\nlisten = {text}\n")
        assert load_config(cfg).metrics_listen == expected
    assert listen_address("[::1]:9464") == ("::1", 9464)
    assert listen_address("localhost:80") == ("localhost", 80)
    for bad in ('"9464"', '"127.0.0.1:"', '"127.0.0.1:70000"', '"::1:9464"', '":9464"',
                '"host:port"'):
        cfg.write_text(f"[metrics]\nlisten = {bad}\n")
        with pytest.raises(ConfigError, match=r"metrics\.listen: must be \"HOST:PORT\""):
            load_config(cfg)
    cfg.write_text("[metrics]\nlisten = 9464\n")
    with pytest.raises(ConfigError, match=r"metrics\.listen: must be str, not int"):
        load_config(cfg)
    cfg.write_text("[metrics]\nport = 9464\n")
    with pytest.raises(ConfigError, match=r"metrics\.port: unknown key"):
        load_config(cfg)
