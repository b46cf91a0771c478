"""A charging core on a real SQLite store, driven by a simulated clock."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sidecar.charging import Charger, ChargingConfig, PlanRates
from sidecar.charging.model import AccountKind, Action, EndCall
from sidecar.store.accounts import SqliteLedger, add_account
from sidecar.store.db import connect
from sidecar.store.decks import get_plan, import_deck, load_table

DECK = """destination;code;rate_usd;increment;effective_from;connection_fee
Germany Fixed;4930;0.06;1/1;2026-06-01;0
France;33;0.12;30/6;2026-06-01;0.01
UK Mobile;447;0.30;60/60;2026-06-01;0
"""
T0 = int(datetime(2026, 11, 21, 12, tzinfo=UTC).timestamp() * 1000)


class Sim:
    """Store + charger + a clock that only moves when the test says so."""

    def __init__(self, db: Path | str | None = None, config: ChargingConfig | None = None,
                 deck: str = DECK) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        if db is None:
            db = Path(self._tmp.name) / "sim.db"
        self.conn: sqlite3.Connection = connect(db)
        path = Path(self._tmp.name) / "deck.csv"
        path.write_text(deck)
        import_deck(self.conn, "retail", path, as_of=datetime(2026, 11, 1, tzinfo=UTC))
        self.table = load_table(self.conn, "retail")
        chunk = get_plan(self.conn, "retail").chunk_seconds
        self.ledger = SqliteLedger(self.conn)
        self.charger = Charger(self.ledger, lambda _name: PlanRates(self.table, chunk), config)
        self.now = T0
        self.ended: list[EndCall] = []
        self.actions: list[Action] = []

    def account(self, code: str, balance: str = "0", kind: AccountKind = AccountKind.PREPAID,
                **kw: object) -> None:
        add_account(self.conn, code, "retail", kind, now_ms=self.now, **kw)  # type: ignore[arg-type]
        if Decimal(balance):
            self.ledger.topup(code, Decimal(balance), self.now, "initial")

    def _take(self, actions: list[Action]) -> list[Action]:
        self.actions += actions
        self.ended += [a for a in actions if isinstance(a, EndCall)]
        return actions

    def advance_to(self, t: int) -> list[Action]:
        """Move the clock to ``t``, firing every timer due on the way at its own time."""
        out: list[Action] = []
        while True:
            d = self.charger.next_deadline()
            if d is None or d > t:
                break
            self.now = max(self.now, d)
            out += self._take(self.charger.tick(self.now))
        self.now = t
        return out

    def answer(self, ref: str) -> list[Action]:
        return self._take(self.charger.answer(ref, self.now))

    def end(self, ref: str, **kw: object) -> list[Action]:
        return self._take(self.charger.end(ref, self.now, **kw))  # type: ignore[arg-type]

    def balance(self, code: str) -> Decimal:
        row = self.conn.execute("SELECT balance FROM accounts WHERE code = ?", (code,)).fetchone()
        return Decimal(row[0])

    def cdrs(self, code: str | None = None) -> list[sqlite3.Row]:
        self.conn.row_factory = sqlite3.Row
        try:
            q = "SELECT * FROM cdrs" + (" WHERE account = ?" if code else "") + " ORDER BY id"
            return list(self.conn.execute(q, (code,) if code else ()))
        finally:
            self.conn.row_factory = None


Op = tuple[str, int, str]


def drive(sim: Sim, ch: Charger, ops: list[Op], account: str, *,
          flush: Callable[[], list[Action]] | None = None,
          other: Callable[[str, int], None] | None = None,
          number: Callable[[str], str] = lambda n: n,
          each: Callable[[], None] | None = None) -> tuple[set[str], Decimal]:
    """Feed a property test's operations to ``ch`` on ``account``: offers, answers, ends,
    failures, time moving on (with or without the timers firing), top-ups and the BYEs
    of ended calls delivered again; ``flush`` hands the store's late answers back (the
    live form), ``other`` takes the operations this driver does not know, ``each`` runs
    after every operation. At the end every call still up ends and every answer is in.
    Returns the authorized calls and the money topped up."""
    authorized: set[str] = set()
    ended: set[str] = set()
    topups = Decimal(0)

    def take(actions: list[Action]) -> None:
        ended.update(a.call_ref for a in actions if isinstance(a, EndCall))

    def advance(t: int) -> None:
        while (d := ch.next_deadline()) is not None and d <= t:
            sim.now = max(sim.now, d)
            take(ch.tick(sim.now))
        sim.now = t

    for kind, n, dialled in ops:
        ref = f"call-{n}"
        if kind == "auth":
            if ch.authorize(ref, number=number(dialled), account_code=account,
                            now_ms=sim.now).allow:
                authorized.add(ref)
        elif kind == "answer":
            take(ch.answer(ref, sim.now))
        elif kind == "end":
            take(ch.end(ref, sim.now, ended_by="caller"))
        elif kind == "fail":
            take(ch.fail(ref, sim.now, 487))
        elif kind == "advance":
            advance(sim.now + n)
        elif kind == "late":
            sim.now += n
        elif kind == "topup":
            sim.ledger.topup(account, Decimal(n) / 100, sim.now)
            topups += Decimal(n) / 100
        elif kind == "deliver_byes":
            sim.now += n
            for r in sorted(ended):
                take(ch.end(r, sim.now, ended_by="proxy"))
        elif kind == "flush" and flush is not None:
            take(flush())
        elif other is not None:
            other(kind, n)
        if each is not None:
            each()
    if flush is not None:
        take(flush())
    advance(sim.now + 1000)
    for ref in sorted(authorized):
        take(ch.end(ref, sim.now, ended_by="caller"))
    if flush is not None:
        for _ in range(100):  # until every command is answered
            take(flush())
            if not ch.inflight():
                break
    return authorized, topups
