"""Billing increments ``X/Y`` and the rule that turns milliseconds into billed seconds."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class IncrementError(ValueError):
    """An increment that is not of the form ``X/Y`` with whole seconds >= 1."""


class SecondRounding(StrEnum):
    """How a measured duration in milliseconds becomes whole seconds.

    ``ceil`` (the default) bills every started second: 7,001 ms is 8 s. ``nearest``
    rounds half-up (7,499 ms is 7 s, 7,500 ms is 8 s). ``floor`` drops the fraction.
    A plan chooses one; it is applied before the increment rule.
    """

    CEIL = "ceil"
    NEAREST = "nearest"
    FLOOR = "floor"


def duration_seconds(duration_ms: int, rounding: SecondRounding = SecondRounding.CEIL) -> int:
    """Whole seconds of a duration measured in milliseconds, by the plan's rule."""
    if duration_ms < 0:
        raise ValueError("duration cannot be negative")
    if rounding is SecondRounding.CEIL:
        return -(-duration_ms // 1000)
    if rounding is SecondRounding.NEAREST:
        return (duration_ms + 500) // 1000
    return duration_ms // 1000


@dataclass(frozen=True, slots=True)
class Increment:
    """A wholesale increment: the first ``first`` seconds are billed as a block, then
    each started block of ``next`` seconds.

    billed(d) = 0 if unanswered; ``first`` if d <= first; else
    ``first + ceil((d - first) / next) * next``.
    """

    first: int
    next: int

    @classmethod
    def parse(cls, text: str) -> Increment:
        """Parse ``"30/6"``; refuse ``0/6``, ``6/``, ``6``, ``a/b``."""
        parts = text.strip().split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise IncrementError(f"'{text}' is not an increment like 60/60 or 30/6")
        first, nxt = int(parts[0]), int(parts[1])
        if first < 1 or nxt < 1:
            raise IncrementError(f"'{text}': both parts of an increment must be at least 1 s")
        return cls(first, nxt)

    def billed(self, seconds: int) -> int:
        """Billed seconds of an answered call lasting ``seconds`` (0 bills nothing)."""
        if seconds <= 0:
            return 0
        if seconds <= self.first:
            return self.first
        return self.first + -(-(seconds - self.first) // self.next) * self.next

    def floor_grid(self, seconds: int) -> int:
        """The longest billable duration on this increment's grid that is <= ``seconds``
        (0 when even the first block does not fit)."""
        if seconds < self.first:
            return 0
        return self.first + (seconds - self.first) // self.next * self.next

    def __str__(self) -> str:
        return f"{self.first}/{self.next}"
