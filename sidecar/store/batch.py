"""Applying a batch of the charging core's commands inside one SQLite transaction.

Group commit, done so the cost per command stays small: each account and each live call
is read once per batch (in bulk), changed in memory by the same rules the core used
(``charging/settle.py``), and written once at the end with ``executemany``: the ledger
rows, the accounts' running balances, the live calls, the CDRs.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from enum import Enum

from ..charging.commands import Outcome, Reserve, Settle, StoreCommand, Topup
from ..charging.model import Account, Cdr, Settlement
from ..charging.settle import Effect, evolve, grant, rolled, settle_amounts
from ..money import ZERO, to_text

ACCOUNT_COLUMNS = (
    "code, plan, currency, kind, balance, held, credit_limit, daily_cap, monthly_cap, "
    "day_key, day_spend, month_key, month_spend, chunk_seconds, max_call_seconds, "
    "low_balance, recharge_below, recharge_amount, suspended, suspend_reason, name")

CDR_FIELDS = tuple(f.name for f in dataclasses.fields(Cdr))
CDR_INSERT = (f"INSERT INTO cdrs ({', '.join(CDR_FIELDS)}) "
              f"VALUES ({', '.join('?' for _ in CDR_FIELDS)})")
_LIVE_UPSERT = (
    "INSERT INTO live_calls (call_ref, account, number, destination, prefix, rate, "
    "increment, answered_ms, paid_seconds, reserved, updated_ms) "
    "VALUES (:call_ref, :account, :number, :destination, :prefix, :rate, :increment, "
    ":answered_ms, :paid_seconds, :reserved, :updated_ms) "
    "ON CONFLICT (call_ref) DO UPDATE SET paid_seconds = excluded.paid_seconds, "
    "reserved = excluded.reserved, updated_ms = excluded.updated_ms")
_CHUNK = 500  # SQLite host parameters per bulk read


class UnknownAccount(LookupError):
    """A command names an account the store does not have."""


_MONEY_AT = tuple(i for i, f in enumerate(dataclasses.fields(Cdr))
                  if f.type in ("Decimal", Decimal))
_ENUM_AT = tuple(i for i, f in enumerate(dataclasses.fields(Cdr)) if f.name == "disposition")


def cdr_row(cdr: Cdr) -> list[object]:
    """A CDR's column values for ``CDR_INSERT`` (money as exact text)."""
    out: list[object] = list(map(cdr.__dict__.__getitem__, CDR_FIELDS))
    for i in _MONEY_AT:
        out[i] = format(out[i], "f")  # money.to_text
    for i in _ENUM_AT:
        v = out[i]
        if isinstance(v, Enum):
            out[i] = v.value
    return out


class Batch:
    """One transaction's worth of commands; :meth:`flush` writes what they did."""

    def __init__(self, conn: sqlite3.Connection, cmds: Sequence[StoreCommand],
                 to_account: Callable[[tuple[object, ...], int], Account]) -> None:
        self.conn = conn
        self._to_account = to_account
        self.accounts: dict[str, Account] = {}
        self._dirty: set[str] = set()
        self._ledger: list[tuple[object, ...]] = []
        self._held: dict[str, Decimal] = {}  # call_ref -> what the store holds for it
        self._live: dict[str, dict[str, object]] = {}  # live-call rows to write
        self._gone: set[str] = set()  # stored live calls settled in this batch
        self._cdrs: list[list[object]] = []
        self._stored: set[str] = set()  # calls with a live_calls row before this batch
        self._settled: set[str] = set()
        self._keys: list[tuple[str, int]] = []
        self._prefetch(cmds)

    # --- reads, in bulk --------------------------------------------------------------
    def _prefetch(self, cmds: Sequence[StoreCommand]) -> None:
        codes: dict[str, int] = {}
        refs: set[str] = set()
        settles: list[str] = []
        for c in cmds:
            if isinstance(c, Settle):
                if c.cdr.account:
                    codes.setdefault(c.cdr.account, c.now_ms)
                refs.add(c.cdr.call_ref)
                settles.append(c.cdr.call_ref)
            else:
                codes.setdefault(c.account, c.now_ms)
                if isinstance(c, Reserve):
                    refs.add(c.call_ref)
        for part, now in _chunks(codes.items()):
            rows = self.conn.execute(
                f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE code IN ({_marks(part)})", part)
            for r in rows:
                self.accounts[str(r[0])] = self._to_account(r, now)
        for part, _ in _chunks((r, 0) for r in refs):
            for ref, reserved in self.conn.execute(
                    f"SELECT call_ref, reserved FROM live_calls WHERE call_ref IN "
                    f"({_marks(part)})", part):
                self._held[str(ref)] = Decimal(str(reserved))
                self._stored.add(str(ref))
        for part, _ in _chunks((r, 0) for r in settles):
            self._settled.update(str(r[0]) for r in self.conn.execute(
                f"SELECT call_ref FROM cdrs WHERE call_ref IN ({_marks(part)})", part))

    def _account(self, code: str, now_ms: int) -> Account:
        acc = self.accounts.get(code)
        if acc is None:
            raise UnknownAccount(f"account '{code}' not found")
        return rolled(acc, now_ms)

    def _set(self, acc: Account) -> None:
        self.accounts[acc.code] = acc
        self._dirty.add(acc.code)

    # --- commands --------------------------------------------------------------------
    def apply(self, cmd: StoreCommand) -> Outcome:
        """One command; one that names an unknown account fails alone."""
        try:
            if isinstance(cmd, Reserve):
                return self.reserve(cmd)
            if isinstance(cmd, Settle):
                return Outcome(cmd.seq, True, settlement=self.settle(cmd.cdr, cmd.now_ms))
            return Outcome(cmd.seq, True, settlement=self.topup(cmd))
        except UnknownAccount as exc:
            return Outcome(cmd.seq, False, error=str(exc))

    def reserve(self, cmd: Reserve) -> Outcome:
        """Hold what the core asked for, or what the account can still cover; record the
        live call (its paid time and holds) for a restart to adopt."""
        acc = self._account(cmd.account, cmd.now_ms)
        granted, seconds = grant(acc, cmd.amount, cmd.seconds, cmd.fit, cmd.paid_before)
        ref = cmd.call_ref
        if granted > 0:  # a hold moves no money: live_calls records it, not the ledger
            self._set(evolve(acc, {"balance": acc.balance - granted,
                                   "held": acc.held + granted}))
        held = self._held.get(ref, ZERO) + granted
        self._held[ref] = held
        self._live[ref] = {**cmd.live, "account": cmd.account, "call_ref": ref,
                           "paid_seconds": seconds, "reserved": to_text(held),
                           "updated_ms": cmd.now_ms}
        return Outcome(cmd.seq, True, granted, seconds)

    def settle(self, cdr: Cdr, now_ms: int) -> Settlement:
        """Write the CDR once; for a billed call release its holds and charge its cost (a
        prepaid account never below zero: what it cannot cover is written off)."""
        ref = cdr.call_ref
        if ref in self._settled:
            return Settlement(ZERO, ZERO, True, None, None)
        self._settled.add(ref)
        before = after = None
        suspended = False
        if cdr.account and cdr.account in self.accounts:
            before = self._account(cdr.account, now_ms)
            code = before.code
            held = self._held.pop(ref, ZERO)
            amounts = settle_amounts(before, held, cdr.cost, cdr.credited)
            cdr.charged = amounts.charged
            cdr.written_off = amounts.written_off
            cdr.credited = amounts.credited
            if amounts.charged:
                self._ledger.append((now_ms, code, "charge", to_text(-amounts.charged), ref,
                                     ""))
            if amounts.credited:  # a false answer (FAS): given back, with the reason
                note = f"FAS {cdr.fas_verdict}: {cdr.fas_reasons}".rstrip(": ")
                self._ledger.append((now_ms, code, "credit", to_text(amounts.credited), ref,
                                     note[:500]))
            after = amounts.effect.apply(before)
            self._set(after)
            suspended = bool(amounts.effect.suspend_reason)
        self._live.pop(ref, None)
        if ref in self._stored:
            self._gone.add(ref)
        self._cdrs.append(cdr_row(cdr))
        return Settlement(cdr.charged, cdr.written_off, False, before, after, suspended)

    def topup(self, cmd: Topup) -> Settlement:
        """A recharge, applied once per ``key`` (a replayed journal applies it again)."""
        if self.conn.execute("SELECT 1 FROM applied_keys WHERE key = ?",
                             (cmd.key,)).fetchone() or any(k == cmd.key for k, _ in self._keys):
            return Settlement(ZERO, ZERO, True, None, None)
        self._keys.append((cmd.key, cmd.now_ms))
        before = self._account(cmd.account, cmd.now_ms)
        self._ledger.append((cmd.now_ms, cmd.account, "topup", to_text(cmd.amount), None,
                             cmd.note))
        after = Effect(balance=cmd.amount).apply(before)
        self._set(after)
        return Settlement(ZERO, ZERO, False, before, after)

    # --- writes, in bulk -------------------------------------------------------------
    def flush(self) -> dict[str, Account]:
        """Write everything; returns the touched accounts as they now stand."""
        c = self.conn
        if self._ledger:
            c.executemany("INSERT INTO ledger (ts_ms, account, kind, amount, call_ref, note) "
                          "VALUES (?, ?, ?, ?, ?, ?)", self._ledger)
        if self._dirty:
            rows = []
            for code in self._dirty:
                a = self.accounts[code]
                rows.append((to_text(a.balance), to_text(a.held), a.day_key,
                             to_text(a.day_spend), a.day_key[:7], to_text(a.month_spend),
                             int(a.suspended), a.suspend_reason, code))
            c.executemany("UPDATE accounts SET balance = ?, held = ?, day_key = ?, "
                          "day_spend = ?, month_key = ?, month_spend = ?, suspended = ?, "
                          "suspend_reason = ? WHERE code = ?", rows)
        if self._live:
            c.executemany(_LIVE_UPSERT, list(self._live.values()))
        if self._gone:
            c.executemany("DELETE FROM live_calls WHERE call_ref = ?",
                          [(r,) for r in self._gone])
        if self._cdrs:
            c.executemany(CDR_INSERT, self._cdrs)
        if self._keys:
            c.executemany("INSERT INTO applied_keys (key, applied_ms) VALUES (?, ?)",
                          self._keys)
        return {code: self.accounts[code] for code in self._touched()}

    def _touched(self) -> set[str]:
        return set(self.accounts)


def _marks(part: Sequence[object]) -> str:
    return ",".join("?" * len(part))


def _chunks(items: Iterable[tuple[str, int]]) -> Iterable[tuple[list[str], int]]:
    """Keys in groups a bulk read can take, each with the first time that came with it."""
    part: list[str] = []
    first = 0
    for key, now in items:
        if not part:
            first = now
        part.append(key)
        if len(part) >= _CHUNK:
            yield part, first
            part = []
    if part:
        yield part, first


