"""The garbage collector's pauses, measured: a pause stops the event loop like any other
work, and a long one makes offers late (Kamailio then sheds calls).

:func:`watch` adds a :data:`gc.callbacks` hook that times every collection (in whatever
thread triggers it) into ``sidecar_gc_pause_seconds`` by generation and logs a pause
longer than ``warn_ms``, at most once a minute with how many such pauses there were.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

log = logging.getLogger("sidecar.gc")

PAUSE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)


class GcWatch:
    """Times the collections of this process; :meth:`close` removes the hook."""

    def __init__(self, registry: CollectorRegistry | None = None, *, warn_ms: float = 20.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.pauses = Histogram("sidecar_gc_pause_seconds", "Garbage collector pauses (the "
                                "event loop stands still meanwhile), by generation",
                                ["generation"], buckets=PAUSE_BUCKETS, registry=registry)
        self._children = [self.pauses.labels(str(g)) for g in range(3)]
        self.warn_s = warn_ms / 1000
        self.clock = clock
        self.longest_s = 0.0
        self.long_pauses = 0  # longer than warn_ms since the last log line
        self._logged_at = float("-inf")
        self._started = 0.0
        gc.callbacks.append(self._hook)

    def _hook(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self.clock()
            return
        now = self.clock()
        took = now - self._started
        generation = info.get("generation", 2)
        self._children[generation if 0 <= generation <= 2 else 2].observe(took)
        if took > self.longest_s:
            self.longest_s = took
        if took >= self.warn_s:
            self.long_pauses += 1
            if now - self._logged_at >= 60.0:
                log.warning("garbage collection paused the sidecar %.1f ms (generation %d; "
                            "%d pause(s) over %.0f ms since the last report)", took * 1000,
                            generation, self.long_pauses, self.warn_s * 1000)
                self._logged_at = now
                self.long_pauses = 0

    def close(self) -> None:
        if self._hook in gc.callbacks:
            gc.callbacks.remove(self._hook)
