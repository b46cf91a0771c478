"""How late the event loop runs, and why: every offer waits for the loop, so a loop that
is late makes every answer late (Kamailio then sheds calls, or the sidecar answers busy).

:class:`LoopWatch` schedules a tick every ``interval_s`` on the loop and measures how much
later than asked it ran, into ``sidecar_event_loop_lag_seconds``. A tick later than
``warn_ms`` is logged (at most once a minute, with how many there were) with what the
process did meanwhile, from CPU clocks:

- ``busy``: the loop's own thread ran for most of the late interval: work on the loop
  (a long callback, a garbage collection);
- ``other threads``: the loop's thread hardly ran but the process's other threads (the
  store writer, the capture) did: they held the interpreter;
- ``starved``: neither ran: the machine's CPU went to other processes (or the process
  was stopped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram

log = logging.getLogger("sidecar.loop")

LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


def cause(wall_s: float, loop_cpu_s: float, process_cpu_s: float) -> str:
    """Why an interval of ``wall_s`` ran late, from the CPU time the loop's thread and
    the whole process used in it: ``busy``, ``other threads`` or ``starved``."""
    if wall_s <= 0:
        return "busy"
    if loop_cpu_s >= 0.5 * wall_s:
        return "busy"
    if process_cpu_s - loop_cpu_s >= 0.5 * wall_s:
        return "other threads"
    return "starved"


class LoopWatch:
    """Ticks on the running loop from :meth:`start` until :meth:`close`."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 interval_s: float = 0.05, warn_ms: float = 100.0,
                 thread_clock: Callable[[], float] = time.thread_time,
                 process_clock: Callable[[], float] = time.process_time) -> None:
        self.lag = Histogram("sidecar_event_loop_lag_seconds", "How much later than "
                             "scheduled the event loop ran a periodic tick (every offer "
                             "waits as long)", buckets=LAG_BUCKETS, registry=registry)
        self.interval_s = interval_s
        self.warn_s = warn_ms / 1000
        self.thread_clock = thread_clock
        self.process_clock = process_clock
        self.longest_s = 0.0
        self.late_ticks = 0  # later than warn_ms since the last log line
        self._logged_at = float("-inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._cpu = (0.0, 0.0)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._schedule(self._loop.time())

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval_s
        self._cpu = (self.thread_clock(), self.process_clock())
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.observe(now - self._due, now - self._due + self.interval_s,
                     self.thread_clock() - self._cpu[0], self.process_clock() - self._cpu[1],
                     now)
        self._schedule(now)

    def observe(self, late_s: float, wall_s: float, loop_cpu_s: float,
                process_cpu_s: float, now: float) -> None:
        """One tick ``late_s`` late, after an interval of ``wall_s`` in which the loop's
        thread used ``loop_cpu_s`` of CPU and the process ``process_cpu_s``."""
        late_s = max(0.0, late_s)
        self.lag.observe(late_s)
        self.longest_s = max(self.longest_s, late_s)
        if late_s < self.warn_s:
            return
        self.late_ticks += 1
        if now - self._logged_at < 60.0:
            return
        log.warning("the event loop ran %.0f ms late (%s: in those %.0f ms its thread used "
                    "%.0f ms of CPU, the process %.0f ms; %d late tick(s) over %.0f ms since "
                    "the last report)", late_s * 1000,
                    cause(wall_s, loop_cpu_s, process_cpu_s), wall_s * 1000,
                    loop_cpu_s * 1000, process_cpu_s * 1000, self.late_ticks,
                    self.warn_s * 1000)
        self._logged_at = now
        self.late_ticks = 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
