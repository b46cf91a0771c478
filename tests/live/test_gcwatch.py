"""The garbage collector's pauses are timed into a metric, and long ones are logged."""

from __future__ import annotations

import gc
import logging

import pytest
from prometheus_client import CollectorRegistry

from sidecar.live.gcwatch import GcWatch
from sidecar.live.metrics import Metrics


def _count(registry: CollectorRegistry, generation: str) -> float:
    value = registry.get_sample_value("sidecar_gc_pause_seconds_count",
                                      {"generation": generation})
    return value or 0.0


def test_every_collection_is_timed_by_generation_and_a_long_one_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    ticks = iter(range(0, 10**6, 30))  # each collection "takes" 30 ms on this clock
    watch = GcWatch(registry, warn_ms=20.0, clock=lambda: next(ticks) / 1000)
    try:
        before = _count(registry, "2")
        with caplog.at_level(logging.WARNING, logger="sidecar.gc"):
            gc.collect()
        assert _count(registry, "2") == before + 1
        assert watch.longest_s == pytest.approx(0.030)
        assert any("garbage collection paused the sidecar 30.0 ms"
                   in r.getMessage() for r in caplog.records)
    finally:
        watch.close()
    gc.collect()  # no longer timed once closed
    assert _count(registry, "2") == before + 1


def test_the_metrics_of_a_running_sidecar_carry_the_pauses() -> None:
    metrics = Metrics()
    watch = metrics.watch_gc()
    try:
        assert metrics.watch_gc() is watch  # one hook per process
        gc.collect()
        assert b'sidecar_gc_pause_seconds_count{generation="2"}' in metrics.exposition()
    finally:
        watch.close()


def test_the_metrics_say_how_much_memory_sqlite_and_the_interpreter_hold() -> None:
    import sqlite3

    from sidecar.live.memory import sqlite_memory_bytes

    before = sqlite_memory_bytes()
    assert before is not None
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 100,)] * 20_000)
    grown = sqlite_memory_bytes()
    assert grown is not None and grown >= before + 2_000_000  # 2 MB of rows at least
    text = Metrics().exposition().decode()
    line = next(x for x in text.splitlines() if x.startswith("sidecar_sqlite_memory_bytes "))
    assert float(line.split()[1]) >= 2_000_000
    assert any(x.startswith("sidecar_python_allocated_blocks ") for x in text.splitlines())
    conn.close()
