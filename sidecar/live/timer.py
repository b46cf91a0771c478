"""Fires the charging core's deadlines on an asyncio loop, to the millisecond.

The core says when it next needs the time (``next_deadline``); this task sleeps exactly
until then (or until poked because an event may have moved the deadline), ticks the
core with the wall clock, and hands the resulting actions to the edges. cnxcc checks
credit once a second; this wakes at the deadline itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

from ..charging import Action


class Ticking(Protocol):
    """A core with deadlines: the charger, or the call control around it."""

    def next_deadline(self) -> int | None: ...

    def tick(self, now_ms: int) -> list[Action]: ...


def wall_ms() -> int:
    """The wall clock in Unix milliseconds (the only clock live operation reads)."""
    return time.time_ns() // 1_000_000


class CreditTimer:
    """Drive the core's ``tick`` at each deadline."""

    def __init__(self, charger: Ticking, on_actions: Callable[[list[Action]], None],
                 clock: Callable[[], int] = wall_ms) -> None:
        self.charger = charger
        self.on_actions = on_actions
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def poke(self) -> None:
        """Call after feeding the core an event: the next deadline may have changed."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="credit-timer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        while True:
            deadline = self.charger.next_deadline()
            self._wake.clear()
            if deadline is None:
                await self._wake.wait()
                continue
            delay = (deadline - self.clock()) / 1000
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            actions = self.charger.tick(self.clock())
            if actions:
                self.on_actions(actions)
