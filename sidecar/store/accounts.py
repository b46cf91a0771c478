"""Accounts, SIP account mapping, and the ledger in SQLite.

Every balance change is a ledger row written in the same transaction as the account's
running ``balance`` (and ``held``) columns, so ``balance`` always equals the sum of the
account's ledger rows; :func:`verify_ledger` proves it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from ..charging.commands import BatchResult, Outcome, Settle, StoreCommand
from ..charging.model import Account, AccountKind, Cdr, Settlement
from ..charging.settle import day_key
from ..money import ZERO, check_currency, to_text
from .batch import ACCOUNT_COLUMNS, Batch
from .db import transaction
from .decks import get_plan

_ACCOUNT_COLUMNS = ACCOUNT_COLUMNS


class AccountNotFound(LookupError):
    """No account has this code."""


class AccountExists(ValueError):
    """An account with this code already exists."""


def _d(v: object) -> Decimal | None:
    return None if v is None or v == "" else Decimal(str(v))


_KINDS = {k.value: k for k in AccountKind}


def _row_to_account(r: tuple[object, ...], now_ms: int | None = None) -> Account:
    (code, plan, ccy, kind, bal, held, limit, dcap, mcap, dkey, dspend, mkey, mspend, chunk,
     maxs, low, rbelow, ramount, susp, sreason, name) = r
    today = day_key(now_ms) if now_ms is not None else str(dkey)
    k = _KINDS.get(kind) if isinstance(kind, str) else None
    # Built as ``Account(...)`` would build it, without the cost of its frozen __init__
    # (the store converts every account it touches in a batch).
    acc = object.__new__(Account)
    acc.__dict__.update(
        code=str(code), plan=str(plan), currency=str(ccy),
        kind=k if k is not None else AccountKind(str(kind)),
        balance=Decimal(str(bal)), held=Decimal(str(held)), credit_limit=Decimal(str(limit)),
        daily_cap=_d(dcap), monthly_cap=_d(mcap),
        day_spend=Decimal(str(dspend)) if dkey == today else ZERO,
        month_spend=Decimal(str(mspend)) if mkey == today[:7] else ZERO, day_key=today,
        chunk_seconds=int(str(chunk)) if chunk is not None else None,
        max_call_seconds=int(str(maxs)), low_balance=_d(low), recharge_below=_d(rbelow),
        recharge_amount=_d(ramount), suspended=bool(susp), suspend_reason=str(sreason),
        name=str(name))
    return acc


def add_account(
    conn: sqlite3.Connection,
    code: str,
    plan: str,
    kind: AccountKind,
    *,
    now_ms: int,
    name: str = "",
    currency: str | None = None,
    credit_limit: Decimal = ZERO,
    daily_cap: Decimal | None = None,
    monthly_cap: Decimal | None = None,
    chunk_seconds: int | None = None,
    max_call_seconds: int = 14_400,
    low_balance: Decimal | None = None,
    recharge_below: Decimal | None = None,
    recharge_amount: Decimal | None = None,
    address: str = "",
    tax_number: str = "",
    tax_rate: Decimal = ZERO,
    parent: str | None = None,
) -> Account:
    """Create an account on a plan (whose currency it takes unless one is given)."""
    if not code or not code.isprintable() or len(code) > 64:
        raise ValueError(f"account code '{code}' must be 1-64 printable characters")
    p = get_plan(conn, plan)
    ccy = check_currency(currency) if currency else p.currency
    if ccy != p.currency:
        raise ValueError(f"account currency {ccy} differs from plan '{plan}' ({p.currency})")
    if chunk_seconds is not None and chunk_seconds < 1:
        raise ValueError("chunk seconds must be at least 1")
    with transaction(conn):
        if conn.execute("SELECT 1 FROM accounts WHERE code = ?", (code,)).fetchone():
            raise AccountExists(f"account '{code}' already exists")
        conn.execute(
            "INSERT INTO accounts (code, name, plan, currency, kind, credit_limit, daily_cap, "
            "monthly_cap, chunk_seconds, max_call_seconds, low_balance, recharge_below, "
            "recharge_amount, address, tax_number, tax_rate, parent, created_ms) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (code, name, plan, ccy, kind.value, to_text(credit_limit), _s(daily_cap),
             _s(monthly_cap), chunk_seconds, max_call_seconds, _s(low_balance),
             _s(recharge_below), _s(recharge_amount), address, tax_number, to_text(tax_rate),
             parent, now_ms))
    return get_account(conn, code, now_ms)


def _s(v: Decimal | None) -> str | None:
    return None if v is None else to_text(v)


def get_account(conn: sqlite3.Connection, code: str, now_ms: int | None = None) -> Account:
    """Load an account or raise :class:`AccountNotFound`."""
    r = conn.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE code = ?",
                     (code,)).fetchone()
    if r is None:
        raise AccountNotFound(f"account '{code}' not found")
    return _row_to_account(r, now_ms)


def list_accounts(conn: sqlite3.Connection, now_ms: int | None = None) -> list[Account]:
    return [_row_to_account(r, now_ms) for r in
            conn.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY code")]


def set_suspended(conn: sqlite3.Connection, code: str, suspended: bool, reason: str = "") -> None:
    """Suspend (refuse new calls) or resume an account."""
    with transaction(conn):
        n = conn.execute("UPDATE accounts SET suspended = ?, suspend_reason = ? WHERE code = ?",
                         (int(suspended), reason if suspended else "", code)).rowcount
    if n == 0:
        raise AccountNotFound(f"account '{code}' not found")


def map_sip(conn: sqlite3.Connection, kind: str, value: str, code: str) -> None:
    """Map a SIP username (``user``) or a source IP (``ip``) to an account."""
    if kind not in ("user", "ip"):
        raise ValueError("kind must be 'user' or 'ip'")
    get_account(conn, code)
    with transaction(conn):
        conn.execute("INSERT INTO sip_accounts (kind, value, account) VALUES (?, ?, ?) "
                     "ON CONFLICT (kind, value) DO UPDATE SET account = excluded.account",
                     (kind, value, code))


def sip_mappings(conn: sqlite3.Connection, code: str | None = None) -> list[tuple[str, str, str]]:
    q = "SELECT kind, value, account FROM sip_accounts"
    rows = conn.execute(q + " WHERE account = ? ORDER BY kind, value", (code,)) if code else \
        conn.execute(q + " ORDER BY account, kind, value")
    return [(str(a), str(b), str(c)) for a, b, c in rows]


class SqliteLedger:
    """The charging core's store: accounts and their ledger.

    :meth:`execute` applies a batch of the core's commands in one ``BEGIN IMMEDIATE``
    transaction (the live writer thread sends many, synchronous use one at a time): the
    read of a balance and the rows that change it are one atomic step, across processes
    too.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # --- reads -------------------------------------------------------------------
    def account(self, code: str, now_ms: int) -> Account | None:
        r = self.conn.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE code = ?",
                              (code,)).fetchone()
        return None if r is None else _row_to_account(r, now_ms)

    def resolve(self, account_code: str, sip_user: str, src_ip: str, now_ms: int
                ) -> tuple[Account | None, str]:
        """The account of a call: its account code, else its SIP user's, else its source
        IP's. Returns (account or None, how it was found or why not)."""
        if account_code:
            acc = self.account(account_code, now_ms)
            return acc, "account code" if acc else f"unknown account code '{account_code}'"
        for kind, value in (("user", sip_user), ("ip", src_ip)):
            if not value:
                continue
            r = self.conn.execute("SELECT account FROM sip_accounts WHERE kind = ? AND value = ?",
                                  (kind, value)).fetchone()
            if r:
                return self.account(str(r[0]), now_ms), f"SIP {kind} {value}"
        return None, f"no account for SIP user '{sip_user}' or source IP '{src_ip}'"

    # --- writes ------------------------------------------------------------------
    def _load_for_update(self, code: str, now_ms: int) -> Account:
        r = self.conn.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE code = ?",
                              (code,)).fetchone()
        if r is None:
            raise AccountNotFound(f"account '{code}' not found")
        return _row_to_account(r, now_ms)

    def _ledger(self, now_ms: int, code: str, kind: str, amount: Decimal, call_ref: str | None,
                note: str = "") -> None:
        self.conn.execute(
            "INSERT INTO ledger (ts_ms, account, kind, amount, call_ref, note) "
            "VALUES (?, ?, ?, ?, ?, ?)", (now_ms, code, kind, to_text(amount), call_ref, note))

    def execute(self, cmds: Sequence[StoreCommand]) -> BatchResult:
        """Apply commands in order in ONE transaction (group commit) and answer each.

        A failure to commit (disk full, locked, gone) rolls the whole batch back and is
        reported in the result, never raised: the caller decides what happens to it."""
        try:
            with transaction(self.conn):
                batch = Batch(self.conn, cmds, _row_to_account)
                outcomes = [batch.apply(c) for c in cmds]
                accounts = batch.flush()
        except sqlite3.Error as exc:
            err = f"{type(exc).__name__}: {exc}"
            return BatchResult([Outcome(c.seq, False, error=err) for c in cmds], {}, err)
        return BatchResult(outcomes, accounts)

    def settle(self, cdr: Cdr, now_ms: int) -> Settlement:
        """Write the CDR and, for a billed call, release its holds and charge its cost —
        once, in its own transaction. A second settle of the same call changes nothing
        (``duplicate``)."""
        with transaction(self.conn):
            batch = Batch(self.conn, [Settle(0, cdr, now_ms)], _row_to_account)
            res = batch.settle(cdr, now_ms)
            batch.flush()
        return res

    def topup(self, code: str, amount: Decimal, now_ms: int, note: str = "",
              kind: str = "topup") -> Account:
        """Add (or, for an ``adjustment``, add or remove) money. Prepaid balances stay >= 0."""
        if kind not in ("topup", "credit", "adjustment"):
            raise ValueError(f"ledger kind '{kind}' is not a top-up")
        if kind != "adjustment" and amount <= 0:
            raise ValueError("a top-up must be positive")
        with transaction(self.conn):
            acc = self._load_for_update(code, now_ms)
            new = acc.balance + amount
            if acc.kind is AccountKind.PREPAID and new < 0:
                raise ValueError(f"adjustment would take prepaid account '{code}' below zero "
                                 f"(balance {acc.balance})")
            self._ledger(now_ms, code, kind, amount, None, note)
            self.conn.execute("UPDATE accounts SET balance = ? WHERE code = ?",
                              (to_text(new), code))
            return self._load_for_update(code, now_ms)

    def live_calls(self) -> list[dict[str, object]]:
        cur = self.conn.execute(
            "SELECT call_ref, account, number, destination, prefix, rate, increment, "
            "answered_ms, paid_seconds, reserved, updated_ms FROM live_calls ORDER BY answered_ms")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur]


@dataclass(frozen=True)
class LedgerCheck:
    account: str
    balance: Decimal
    ledger_sum: Decimal
    held: Decimal
    open_holds: Decimal
    charges: Decimal
    cdr_charges: Decimal
    problems: tuple[str, ...]


def verify_ledger(conn: sqlite3.Connection) -> list[LedgerCheck]:
    """Check every account: balance + held = the sum of its ledger's money rows; held =
    its open holds; charges in the ledger = charges on its CDRs; no prepaid balance below
    zero. (Holds are not money movements: they live in ``live_calls``. Rows of kind
    ``reserve``/``release`` written by older releases cancel out and are skipped.)"""
    out = []
    for acc in list_accounts(conn):
        rows = conn.execute("SELECT kind, call_ref, amount FROM ledger WHERE account = ?",
                            (acc.code,))
        total = ZERO
        charges = ZERO
        credits = ZERO
        for kind, call_ref, amount in rows:
            if kind in ("reserve", "release"):
                continue
            a = Decimal(str(amount))
            total += a
            if kind == "charge":
                charges -= a
            elif kind == "credit" and call_ref is not None:
                credits += a
        holds = sum((Decimal(str(r[0])) for r in conn.execute(
            "SELECT reserved FROM live_calls WHERE account = ?", (acc.code,))), ZERO)
        cdr_charges = cdr_credits = ZERO
        for charged, credited in conn.execute(
                "SELECT charged, credited FROM cdrs WHERE account = ?", (acc.code,)):
            cdr_charges += Decimal(str(charged))
            cdr_credits += Decimal(str(credited))
        problems = []
        if total != acc.balance + acc.held:
            problems.append(f"balance {acc.balance} + held {acc.held} != ledger sum {total}")
        if holds != acc.held:
            problems.append(f"held {acc.held} != open reservations {holds}")
        if charges != cdr_charges:
            problems.append(f"ledger charges {charges} != CDR charges {cdr_charges}")
        if credits != cdr_credits:
            problems.append(f"ledger call credits {credits} != CDR credits {cdr_credits}")
        if acc.kind is AccountKind.PREPAID and acc.balance < 0:
            problems.append(f"prepaid balance below zero: {acc.balance}")
        out.append(LedgerCheck(acc.code, acc.balance, total, acc.held, holds, charges,
                               cdr_charges, tuple(problems)))
    return out
