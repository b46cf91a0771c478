"""Accounts, SIP account mapping, and the ledger, on SQLite (and PostgreSQL: ``pg.py``).

Every balance change is a ledger row written in the same transaction as the account's
running ``balance`` (and ``held``) columns, so ``balance`` + ``held`` always equals the sum
of the account's ledger rows; :func:`verify_ledger` proves it.

The functions take the database's :class:`~sidecar.store.dialect.Dialect` (SQLite unless
told): the same rules and the same SQL run on both databases.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

from ..charging.commands import BatchResult, Outcome, Settle, StoreCommand
from ..charging.model import Account, AccountKind, Cdr, Settlement
from ..money import ZERO, check_currency, fmt
from ..rating.fx import FxError
from .batch import Batch
from .conn import Db
from .db import transaction
from .decks import get_plan
from .dialect import ACCOUNT_COLUMNS, SQLITE, Connection, Dialect, dialect_of


class AccountNotFound(LookupError):
    """No account has this code."""


class AccountExists(ValueError):
    """An account with this code already exists."""


#: How deep the account tree may be (a customer, its departments, their teams, ...):
#: limits are inherited down it.
MAX_TIERS = 4
_TREE = "(account tree)"  # the lock that changes of the tree take


class ParentError(ValueError):
    """A parent account that cannot be: a cycle, or a tree deeper than :data:`MAX_TIERS`."""


def _parents(conn: Connection, d: Dialect) -> dict[str, str | None]:
    return {str(c): None if p is None or p == "" else str(p)
            for c, p in d.execute(conn, "SELECT code, parent FROM accounts")}


def check_parent(parents: dict[str, str | None], code: str, parent: str) -> None:
    """Refuse ``parent`` as the parent of ``code`` (``parents``: every account's parent)
    when it is unknown, ``code`` itself or below it (a cycle), or when the tree would be
    deeper than :data:`MAX_TIERS`."""
    if parent not in parents:
        raise AccountNotFound(f"parent account '{parent}' not found")
    if parent == code:
        raise ParentError(f"account '{code}' cannot be its own parent")
    chain = [parent]
    up = parents.get(parent)
    while up is not None and up not in chain:
        chain.append(up)
        up = parents.get(up)
    if code in chain:
        path = " -> ".join(chain[:chain.index(code) + 1])
        raise ParentError(f"account '{code}' cannot have parent '{parent}': '{parent}' is "
                          f"below it ({path}), that would be a cycle")
    children: dict[str, list[str]] = {}
    for c, p in parents.items():
        if p is not None:
            children.setdefault(p, []).append(c)
    height, level, seen = 0, [code], {code}
    while level:
        height += 1
        level = [c for x in level for c in children.get(x, ()) if c not in seen]
        seen.update(level)
    tiers = len(chain) + height
    if tiers > MAX_TIERS:
        raise ParentError(f"account '{code}' under '{parent}' would make a tree {tiers} "
                          f"accounts deep ({' -> '.join(reversed(chain))} -> {code}"
                          f"{' -> ...' if height > 1 else ''}); at most {MAX_TIERS} tiers")


def add_account(
    conn: Connection,
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
    reseller: bool = False,
    dialect: Dialect | None = None,
) -> Account:
    """Create an account on a plan (whose currency it takes unless one is given). An
    account may pay in another currency than its plan rates in when an exchange rate
    between the two is stored (``sidecar fx set``): its calls are converted as rated."""
    if not code or not code.isprintable() or len(code) > 64:
        raise ValueError(f"account code '{code}' must be 1-64 printable characters")
    d = dialect or dialect_of(conn)
    p = get_plan(d.db(conn), plan)
    ccy = check_currency(currency) if currency else p.currency
    if ccy != p.currency:
        from .fx import load_fx  # exchange rates: a plan in another currency

        try:
            load_fx(d.db(conn)).rate(p.currency, ccy, datetime.fromtimestamp(now_ms / 1000,
                                                                            UTC))
        except FxError:
            raise ValueError(f"account currency {ccy} differs from plan '{plan}' "
                             f"({p.currency}) and no exchange rate {p.currency}/{ccy} is "
                             "in force: set one first (sidecar fx set "
                             f"{p.currency} {ccy} RATE)") from None
    if chunk_seconds is not None and chunk_seconds < 1:
        raise ValueError("chunk seconds must be at least 1")
    m = d.money

    def opt(v: Decimal | None) -> object:
        return None if v is None else m(v)

    with d.transaction(conn):
        if d.execute(conn, "SELECT 1 FROM accounts WHERE code = ?", (code,)).fetchone():
            raise AccountExists(f"account '{code}' already exists")
        if parent is not None:
            d.serialize(conn, _TREE)
            check_parent(_parents(conn, d), code, parent)
        d.execute(
            conn,
            "INSERT INTO accounts (code, name, plan, currency, kind, credit_limit, daily_cap, "
            "monthly_cap, chunk_seconds, max_call_seconds, low_balance, recharge_below, "
            "recharge_amount, address, tax_number, tax_rate, parent, created_ms, reseller) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (code, name, plan, ccy, kind.value, m(credit_limit), opt(daily_cap),
             opt(monthly_cap), chunk_seconds, max_call_seconds, opt(low_balance),
             opt(recharge_below), opt(recharge_amount), address, tax_number, m(tax_rate),
             parent, now_ms, int(reseller)))
    return get_account(conn, code, now_ms, d)


def get_account(conn: Connection, code: str, now_ms: int | None = None,
                dialect: Dialect | None = None) -> Account:
    """Load an account or raise :class:`AccountNotFound`."""
    d = dialect or dialect_of(conn)
    r = d.execute(conn, f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE code = ?",
                  (code,)).fetchone()
    if r is None:
        raise AccountNotFound(f"account '{code}' not found")
    return d.to_account(r, now_ms)


def list_accounts(conn: Connection, now_ms: int | None = None,
                  dialect: Dialect | None = None) -> list[Account]:
    d = dialect or dialect_of(conn)
    return [d.to_account(r, now_ms) for r in
            d.execute(conn, f"SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY code")]


def set_suspended(conn: Db, code: str, suspended: bool, reason: str = "") -> None:
    """Suspend (refuse new calls) or resume an account."""
    with transaction(conn):
        n = conn.execute("UPDATE accounts SET suspended = ?, suspend_reason = ? WHERE code = ?",
                         (int(suspended), reason if suspended else "", code)).rowcount
    if n == 0:
        raise AccountNotFound(f"account '{code}' not found")


def subtree(conn: Connection, code: str, dialect: Dialect | None = None) -> frozenset[str]:
    """``code`` and every account below it (empty if there is no such account)."""
    parents = _parents(conn, dialect or dialect_of(conn))
    if code not in parents:
        return frozenset()
    children: dict[str, list[str]] = {}
    for c, p in parents.items():
        if p is not None:
            children.setdefault(p, []).append(c)
    out, level = {code}, [code]
    while level:
        level = [c for x in level for c in children.get(x, ()) if c not in out]
        out.update(level)
    return frozenset(out)


def set_reseller(conn: Db, code: str, reseller: bool) -> None:
    """Make an account a reseller (the calls of every account below it are charged to it
    too, at its own plan's price) or not (from the next call on)."""
    with transaction(conn):
        n = conn.execute("UPDATE accounts SET reseller = ? WHERE code = ?",
                         (int(reseller), code)).rowcount
    if n == 0:
        raise AccountNotFound(f"account '{code}' not found")


def set_parent(conn: Connection, code: str, parent: str | None,
               dialect: Dialect | None = None) -> Account:
    """Put account ``code`` under ``parent`` (None: at the top). Refused
    (:class:`ParentError`) when it would make a cycle or a tree deeper than
    :data:`MAX_TIERS`; an unknown account or parent is :class:`AccountNotFound`."""
    d = dialect or dialect_of(conn)
    with d.transaction(conn):
        d.serialize(conn, _TREE)  # two changes of the tree at once cannot make a cycle
        parents = _parents(conn, d)
        if code not in parents:
            raise AccountNotFound(f"account '{code}' not found")
        if parent is not None:
            check_parent(parents, code, parent)
        d.execute(conn, "UPDATE accounts SET parent = ? WHERE code = ?", (parent, code))
    return get_account(conn, code, dialect=d)


def map_sip(conn: Connection, kind: str, value: str, code: str,
            dialect: Dialect | None = None) -> None:
    """Map a SIP username (``user``) or a source IP (``ip``) to an account."""
    if kind not in ("user", "ip"):
        raise ValueError("kind must be 'user' or 'ip'")
    d = dialect or dialect_of(conn)
    get_account(conn, code, dialect=d)
    with d.transaction(conn):
        d.execute(conn, "INSERT INTO sip_accounts (kind, value, account) VALUES (?, ?, ?) "
                  "ON CONFLICT (kind, value) DO UPDATE SET account = excluded.account",
                  (kind, value, code))


def sip_mappings(conn: Db, code: str | None = None) -> list[tuple[str, str, str]]:
    q = "SELECT kind, value, account FROM sip_accounts"
    rows = conn.execute(q + " WHERE account = ? ORDER BY kind, value", (code,)) if code else \
        conn.execute(q + " ORDER BY account, kind, value")
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def account_floats(conn: Db, code: str | None = None
                   ) -> dict[str, list[tuple[str, Decimal, Decimal]]]:
    """Resellers' credit that nodes hold in their floats for their customers' chunks
    (part of each reseller's ``held``), of one account or of all: account -> (node, held,
    drawn by live calls), non-empty floats only."""
    q = "SELECT account, node, held, drawn FROM reseller_floats"
    rows = (conn.execute(q + " WHERE account = ? ORDER BY node", (code,)) if code
            else conn.execute(q + " ORDER BY account, node")).fetchall()
    out: dict[str, list[tuple[str, Decimal, Decimal]]] = {}
    for a, n, h, d in rows:
        if Decimal(str(h)):
            out.setdefault(str(a), []).append((str(n), Decimal(str(h)), Decimal(str(d))))
    return out


class SqlLedger:
    """The charging core's store: accounts and their ledger, on the database its
    :attr:`dialect` speaks (:class:`SqliteLedger`, ``pg.PgLedger``).

    :meth:`execute` applies a batch of the core's commands in one transaction (the live
    writer thread sends many, synchronous use one at a time): the read of a balance and
    the rows that change it are one atomic step, across processes too.
    """

    dialect: ClassVar[Dialect] = SQLITE
    #: The sidecar node applying the commands (its calls' reservations carry it), and
    #: how long a reservation's lease lasts: the node renews it while it lives
    #: (:meth:`renew_leases`); once it has run out, another node may settle the call.
    node: str = ""
    lease_ms: int = 30_000

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def connection(self) -> contextlib.AbstractContextManager[Any]:
        """The connection to work on for one transaction (a pool's, in ``PgLedger``)."""
        return contextlib.nullcontext(self.conn)

    def close(self) -> None:
        """Release what the ledger opened itself (its owner closes the connection it
        was given)."""

    # --- reads -------------------------------------------------------------------
    def account(self, code: str, now_ms: int) -> Account | None:
        d = self.dialect
        with self.connection() as conn:
            r = d.execute(conn, f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE code = ?",
                          (code,)).fetchone()
        return None if r is None else d.to_account(r, now_ms)

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
            with self.connection() as conn:
                r = self.dialect.execute(
                    conn, "SELECT account FROM sip_accounts WHERE kind = ? AND value = ?",
                    (kind, value)).fetchone()
            if r:
                return self.account(str(r[0]), now_ms), f"SIP {kind} {value}"
        return None, f"no account for SIP user '{sip_user}' or source IP '{src_ip}'"

    _LIVE = ("SELECT call_ref, account, number, destination, prefix, rate, increment, "
             "answered_ms, paid_seconds, reserved, updated_ms, node, lease_ms, bundle, "
             "bundle_period, bundle_held, tier_holds, tier_draws FROM live_calls")

    def live_calls(self, node: str | None = None) -> list[dict[str, object]]:
        """The calls the store holds reservations for; with ``node``, that node's only
        (and those of no node: written before calls had one)."""
        where, args = (" WHERE node = ? OR node = ''", (node,)) if node is not None else ("", ())
        return self._live_rows(self._LIVE + where + " ORDER BY answered_ms", args)

    def expired_calls(self, now_ms: int) -> list[dict[str, object]]:
        """Other nodes' calls whose lease ran out before ``now_ms``: their node stopped
        renewing it (it is down, or cut off from the store)."""
        return self._live_rows(self._LIVE + " WHERE node <> ? AND node <> '' AND "
                               "lease_ms < ? ORDER BY lease_ms", (self.node, now_ms))

    def renew_leases(self, now_ms: int) -> int:
        """This node is alive: its calls' leases now run to ``now_ms`` + :attr:`lease_ms`.
        Returns how many calls it holds."""
        d = self.dialect
        with self.connection() as conn, d.transaction(conn):
            d.execute(conn, "UPDATE reseller_floats SET lease_ms = ? WHERE node = ?",
                      (now_ms + self.lease_ms, self.node))
            return int(d.execute(conn, "UPDATE live_calls SET lease_ms = ? WHERE node = ?",
                                 (now_ms + self.lease_ms, self.node)).rowcount)

    def floats(self, node: str | None = None) -> dict[str, Decimal]:
        """What ``node``'s floats (this node's by default) hold on each reseller."""
        with self.connection() as conn:
            got = {str(code): Decimal(str(held)) for code, held in self.dialect.execute(
                conn, "SELECT account, held FROM reseller_floats WHERE node = ?",
                (self.node if node is None else node,))}
        return {code: held for code, held in got.items() if held}

    def expired_floats(self, now_ms: int) -> list[tuple[str, str, Decimal]]:
        """Other nodes' floats whose lease ran out before ``now_ms`` and whose node has no
        live call left (its calls were settled: nothing will draw on them): (node,
        reseller, held), to give back to the resellers' balances."""
        d = self.dialect
        with self.connection() as conn:
            got = [(str(n), str(a), Decimal(str(h))) for n, a, h in d.execute(
                conn, "SELECT f.node, f.account, f.held FROM reseller_floats f WHERE "
                "f.node <> ? AND f.node <> '' AND f.lease_ms < ? AND NOT EXISTS (SELECT 1 "
                "FROM live_calls l WHERE l.node = f.node)", (self.node, now_ms))]
        return [f for f in got if f[2]]

    def _live_rows(self, q: str, args: Sequence[object]) -> list[dict[str, object]]:
        with self.connection() as conn:
            cur = self.dialect.execute(conn, q, args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur]

    def verify(self) -> list[LedgerCheck]:
        """:func:`verify_ledger` on this store."""
        with self.connection() as conn:
            return verify_ledger(conn, self.dialect)

    # --- writes ------------------------------------------------------------------
    def execute(self, cmds: Sequence[StoreCommand]) -> BatchResult:
        """Apply commands in order in ONE transaction (group commit) and answer each.

        A failure to commit (disk full, locked, server gone, connection lost) rolls the
        whole batch back and is reported in the result, never raised: the caller decides
        what happens to it."""
        d = self.dialect
        try:
            with self.connection() as conn, d.transaction(conn):
                batch = Batch(conn, cmds, d, node=self.node, lease_ms=self._lease_end())
                outcomes = [batch.apply(c) for c in cmds]
                accounts = batch.flush()
        except d.errors as exc:
            err = f"{type(exc).__name__}: {exc}".strip()
            return BatchResult([Outcome(c.seq, False, error=err) for c in cmds], {}, err)
        return BatchResult(outcomes, accounts, bundles=batch.bundles())

    def settle(self, cdr: Cdr, now_ms: int) -> Settlement:
        """Write the CDR and, for a billed call, release its holds and charge its cost —
        once, in its own transaction. A second settle of the same call changes nothing
        (``duplicate``)."""
        d = self.dialect
        with self.connection() as conn, d.transaction(conn):
            batch = Batch(conn, [Settle(0, cdr, now_ms)], d, node=self.node,
                          lease_ms=self._lease_end())
            res = batch.settle(cdr, now_ms)
            batch.flush()
        return res

    def _lease_end(self) -> int:
        return time.time_ns() // 1_000_000 + self.lease_ms

    def topup(self, code: str, amount: Decimal, now_ms: int, note: str = "",
              kind: str = "topup") -> Account:
        """Add (or, for an ``adjustment``, add or remove) money. Prepaid balances stay >= 0."""
        if kind not in ("topup", "credit", "adjustment"):
            raise ValueError(f"ledger kind '{kind}' is not a top-up")
        if kind != "adjustment" and amount <= 0:
            raise ValueError("a top-up must be positive")
        d = self.dialect
        with self.connection() as conn, d.transaction(conn):
            r = d.execute(conn, f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE code = ?"
                          f"{d.lock}", (code,)).fetchone()
            if r is None:
                raise AccountNotFound(f"account '{code}' not found")
            acc = d.to_account(r, now_ms)
            new = acc.balance + amount
            if acc.kind is AccountKind.PREPAID and new < 0:
                raise ValueError(f"adjustment would take prepaid account '{code}' below zero "
                                 f"(balance {fmt(acc.balance)})")
            d.execute(conn, "INSERT INTO ledger (ts_ms, account, kind, amount, call_ref, note) "
                      "VALUES (?, ?, ?, ?, ?, ?)", (now_ms, code, kind, d.money(amount), None,
                                                    note))
            d.execute(conn, "UPDATE accounts SET balance = ? WHERE code = ?",
                      (d.money(new), code))
            return get_account(conn, code, now_ms, d)


def ledger_for(conn: Db) -> SqlLedger:
    """The charging core's store on this connection's database."""
    if isinstance(conn, sqlite3.Connection):
        return SqliteLedger(conn)
    from .pg import PgLedger

    return PgLedger(conn.raw)


class SqliteLedger(SqlLedger):
    """The store on SQLite: ``execute`` runs in one ``BEGIN IMMEDIATE`` transaction."""

    conn: sqlite3.Connection

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn)


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


def verify_ledger(conn: Connection, dialect: Dialect | None = None) -> list[LedgerCheck]:
    """Check every account: balance + held = the sum of its ledger's money rows; held =
    its open holds; charges in the ledger = charges on its CDRs; no prepaid balance below
    zero. (Holds are not money movements: they live in ``live_calls``. Rows of kind
    ``reserve``/``release`` written by older releases cancel out and are skipped.)

    Everything is read from one state of the database (one read transaction), so a
    store in use is checked as it stood at one moment."""
    d = dialect or dialect_of(conn)
    with d.snapshot(conn):
        return _verify(conn, d)


def _verify(conn: Connection, d: Dialect) -> list[LedgerCheck]:
    out = []
    # Holds on resellers for their customers' live calls (each call's own, and the nodes'
    # floats its draws come from), and what the resellers' tier rows say they were charged.
    tier_holds: dict[str, Decimal] = {}
    for (th,) in d.execute(conn, "SELECT tier_holds FROM live_calls WHERE tier_holds <> ''"):
        for code, v in json.loads(str(th)).items():
            tier_holds[code] = tier_holds.get(code, ZERO) + Decimal(str(v))
    for code, held in d.execute(conn, "SELECT account, held FROM reseller_floats"):
        tier_holds[str(code)] = tier_holds.get(str(code), ZERO) + Decimal(str(held))
    tier_charged: dict[str, tuple[Decimal, Decimal]] = {}
    for code, charged, credited in d.execute(
            conn, "SELECT account, charged, credited FROM cdr_tiers"):
        a, b = tier_charged.get(str(code), (ZERO, ZERO))
        tier_charged[str(code)] = (a + Decimal(str(charged)), b + Decimal(str(credited)))
    for acc in list_accounts(conn, dialect=d):
        rows = d.execute(conn, "SELECT kind, call_ref, amount FROM ledger WHERE account = ?",
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
        holds = sum((Decimal(str(r[0])) for r in d.execute(
            conn, "SELECT reserved FROM live_calls WHERE account = ?", (acc.code,))),
            tier_holds.get(acc.code, ZERO))
        ended = [str(r[0]) for r in d.execute(
            conn, "SELECT l.call_ref FROM live_calls l JOIN cdrs c ON c.call_ref = l.call_ref "
            "WHERE l.account = ?", (acc.code,))]
        cdr_charges = cdr_credits = ZERO
        for charged, credited in d.execute(
                conn, "SELECT charged, credited FROM cdrs WHERE account = ?", (acc.code,)):
            cdr_charges += Decimal(str(charged))
            cdr_credits += Decimal(str(credited))
        resold = tier_charged.get(acc.code)
        if resold is not None:
            cdr_charges += resold[0]
            cdr_credits += resold[1]
        problems = []
        if total != acc.balance + acc.held:
            problems.append(f"balance {fmt(acc.balance)} + held {fmt(acc.held)} != ledger sum "
                            f"{fmt(total)}")
        if holds != acc.held:
            problems.append(f"held {fmt(acc.held)} != open reservations {fmt(holds)}")
        if charges != cdr_charges:
            problems.append(f"ledger charges {fmt(charges)} != CDR charges {fmt(cdr_charges)}")
        if credits != cdr_credits:
            problems.append(f"ledger call credits {fmt(credits)} != CDR credits "
                            f"{fmt(cdr_credits)}")
        if ended:
            problems.append(f"{len(ended)} reservation(s) left on calls settled already "
                            f"(e.g. {ended[0]})")
        if acc.kind is AccountKind.PREPAID and acc.balance < 0:
            problems.append(f"prepaid balance below zero: {fmt(acc.balance)}")
        out.append(LedgerCheck(acc.code, acc.balance, total, acc.held, holds, charges,
                               cdr_charges, tuple(problems)))
    return out
