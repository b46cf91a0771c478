"""Exchange rates in the store (SQLite and PostgreSQL alike): ``sidecar fx set`` writes
them, ``sidecar run`` keeps them loaded (its store thread) to rate calls of accounts whose
currency differs from their deck's (:mod:`sidecar.rating.fx` is the arithmetic)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from ..money import MoneyError
from ..rating.fx import FxRate, FxTable
from .conn import Db
from .db import transaction
from .dialect import dialect_of


class FxInputError(ValueError):
    """A rate that cannot be stored as given (names what is wrong)."""


def set_rate(conn: Db, base: str, quote: str, rate: str, effective: datetime, *,
             now_ms: int) -> FxRate:
    """Store ``1 base = rate quote`` from ``effective`` on (a rate of the same pair and
    instant is replaced). Raises :class:`FxInputError` naming the problem; nothing is
    written then."""
    try:
        value = Decimal(rate)
    except (InvalidOperation, ValueError):
        raise FxInputError(f"rate: '{rate}' is not a decimal number") from None
    try:
        fx = FxRate(base, quote, value, effective)
    except MoneyError as exc:
        raise FxInputError(str(exc)) from None
    eff_ms = int(fx.effective_from.timestamp() * 1000)
    with transaction(conn):
        conn.execute("DELETE FROM fx_rates WHERE base = ? AND quote = ? AND effective_ms = ?",
                     (fx.base, fx.quote, eff_ms))
        conn.execute("INSERT INTO fx_rates (base, quote, rate, effective_ms, created_ms) "
                     "VALUES (?, ?, ?, ?, ?)", (fx.base, fx.quote,
                                                dialect_of(conn).money(fx.rate), eff_ms,
                                                now_ms))
    return fx


def list_rates(conn: Db) -> list[FxRate]:
    """Every stored rate, by pair, oldest first."""
    return [FxRate(str(b), str(q), Decimal(str(r)),
                   datetime.fromtimestamp(int(ms) / 1000, UTC))
            for b, q, r, ms in conn.execute(
                "SELECT base, quote, rate, effective_ms FROM fx_rates "
                "ORDER BY base, quote, effective_ms")]


def load_fx(conn: Db) -> FxTable:
    """The rates as the charging core uses them."""
    return FxTable(list_rates(conn))
