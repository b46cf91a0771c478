"""The event loop's lateness is timed into a metric, and a late loop is logged with why."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from sidecar.live.loopwatch import LoopWatch, cause
from sidecar.live.metrics import Metrics


def test_a_late_interval_is_told_apart_by_who_used_the_cpu() -> None:
    # 200 ms late interval: the loop's thread ran 180 ms of it -> work on the loop.
    assert cause(0.2, 0.18, 0.19) == "busy"
    # The loop's thread ran 5 ms, the process 170 ms: another thread held the interpreter.
    assert cause(0.2, 0.005, 0.17) == "other threads"
    # Neither ran: the CPU went elsewhere.
    assert cause(0.2, 0.005, 0.01) == "starved"


def _lag_count(registry: CollectorRegistry, le: str) -> float:
    return registry.get_sample_value("sidecar_event_loop_lag_seconds_bucket",
                                     {"le": le}) or 0.0


def _run_with_watch(blocker: object, caplog: pytest.LogCaptureFixture
                    ) -> tuple[LoopWatch, CollectorRegistry]:
    registry = CollectorRegistry()

    async def main() -> LoopWatch:
        watch = LoopWatch(registry, interval_s=0.02, warn_ms=100.0)
        watch.start()
        try:
            await asyncio.sleep(0.1)  # a few ticks on time
            assert callable(blocker)
            blocker()
            await asyncio.sleep(0.1)  # the tick after the block reports it
        finally:
            watch.close()
        return watch

    with caplog.at_level(logging.WARNING, logger="sidecar.loop"):
        watch = asyncio.run(main())
    return watch, registry


def test_a_callback_that_blocks_the_loop_is_measured_and_logged_as_busy(
        caplog: pytest.LogCaptureFixture) -> None:
    def spin() -> None:  # 250 ms of CPU on the loop's thread
        end = time.thread_time() + 0.25
        while time.thread_time() < end:
            pass

    watch, registry = _run_with_watch(spin, caplog)
    assert watch.longest_s >= 0.2
    assert _lag_count(registry, "0.1") < _lag_count(registry, "+Inf")  # one over 100 ms
    messages = [r.getMessage() for r in caplog.records]
    assert any("the event loop ran" in m and "(busy:" in m for m in messages), messages


def test_a_loop_held_up_by_another_thread_is_logged_so(
        caplog: pytest.LogCaptureFixture) -> None:
    def hold() -> None:  # the loop waits (no CPU) while another thread computes
        done = threading.Event()

        def work() -> None:
            end = time.thread_time() + 0.25
            while time.thread_time() < end:
                pass
            done.set()

        threading.Thread(target=work).start()
        done.wait()

    watch, _registry = _run_with_watch(hold, caplog)
    assert watch.longest_s >= 0.2
    messages = [r.getMessage() for r in caplog.records]
    assert any("(other threads:" in m for m in messages), messages


def test_a_loop_on_time_logs_nothing_and_the_metrics_carry_the_lag(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> bytes:
        metrics = Metrics()
        watch = metrics.watch_loop()
        try:
            assert metrics.watch_loop() is watch
            await asyncio.sleep(0.3)
            return metrics.exposition()
        finally:
            watch.close()

    with caplog.at_level(logging.WARNING, logger="sidecar.loop"):
        text = asyncio.run(main())
    assert b"sidecar_event_loop_lag_seconds_count" in text
    count = next(float(line.split()[-1]) for line in text.decode().splitlines()
                 if line.startswith("sidecar_event_loop_lag_seconds_count"))
    assert count >= 3  # ticks every 50 ms
    assert not [r for r in caplog.records if r.name == "sidecar.loop"]
