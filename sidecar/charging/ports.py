"""What the charging core needs from its store (implemented by ``store.SqliteLedger``)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Protocol

from .model import Account, Cdr, Settlement


class Ledger(Protocol):
    """Accounts and money. Each method that moves money is atomic in the store."""

    def account(self, code: str, now_ms: int) -> Account | None: ...

    def resolve(self, account_code: str, sip_user: str, src_ip: str, now_ms: int
                ) -> tuple[Account | None, str]: ...

    def reserve(self, code: str, call_ref: str, want: tuple[Decimal, int],
                fit: Callable[[Decimal], tuple[Decimal, int]], now_ms: int,
                live: dict[str, object]) -> tuple[Decimal, int, Account]:
        """Atomically reserve ``want`` (amount, paid seconds) or ``fit(available)``;
        ``live["paid_seconds"]`` is the call's paid time before this reservation."""
        ...

    def settle(self, cdr: Cdr, now_ms: int) -> Settlement: ...
