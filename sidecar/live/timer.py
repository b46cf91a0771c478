"""Fires the charging core's deadlines on an asyncio loop, to the millisecond.

The core says when it next needs the time (``next_deadline``); this task sleeps exactly
until then (or until poked because an event may have moved the deadline), ticks the
core with the wall clock, and hands the resulting actions to the edges. cnxcc checks
credit once a second; this wakes at the deadline itself.
"""

from __future__ import annotations

import asyncio
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
    """Drive the core's ``tick`` at each deadline.

    One timer handle on the loop, armed for the core's next deadline: :meth:`poke` after
    feeding the core an event re-arms it only when that deadline moved earlier (a later
    one is found when the armed handle fires), so events cost a comparison, not a task
    wake-up."""

    def __init__(self, charger: Ticking, on_actions: Callable[[list[Action]], None],
                 clock: Callable[[], int] = wall_ms) -> None:
        self.charger = charger
        self.on_actions = on_actions
        self.clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed: int | None = None  # the deadline the handle is set for (ms)

    def poke(self) -> None:
        """Call after feeding the core an event: the next deadline may have changed."""
        loop = self._loop
        if loop is None:
            return
        deadline = self.charger.next_deadline()
        if deadline is None or (self._armed is not None and self._armed <= deadline):
            return
        if self._handle is not None:
            self._handle.cancel()
        self._armed = deadline
        self._handle = loop.call_later(max(0.0, (deadline - self.clock()) / 1000), self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed = None
        now = self.clock()
        deadline = self.charger.next_deadline()
        if deadline is not None and deadline <= now:
            actions = self.charger.tick(now)
            if actions:
                self.on_actions(actions)
        self.poke()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.poke()

    async def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._armed = None
        self._loop = None
