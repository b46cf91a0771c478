"""What the charging core needs from its store edge."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .commands import BatchResult, StoreCommand


class StorePort(Protocol):
    """Where the core sends its commands (the live edge queues them to a writer)."""

    def submit(self, cmd: StoreCommand) -> None: ...


class StoreExecutor(Protocol):
    """A store that applies commands: all of one call in one transaction, in order.

    A failure to commit is reported in the result (``error``, outcomes not ``ok``),
    never raised."""

    def execute(self, cmds: Sequence[StoreCommand]) -> BatchResult: ...
