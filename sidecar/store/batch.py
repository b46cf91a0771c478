"""Applying a batch of the charging core's commands inside one transaction.

Group commit, done so the cost per command stays small: each account and each live call
is read once per batch (in bulk), changed in memory by the same rules the core used
(``charging/settle.py``), and written once at the end with ``executemany``: the ledger
rows, the accounts' running balances, the live calls, the CDRs.

The same code runs on SQLite and on PostgreSQL: its SQL goes through a
:class:`~sidecar.store.dialect.Dialect` (placeholders, row locks, money parameters, account
rows). The accounts are read first, locked where the database locks rows (PostgreSQL:
``FOR UPDATE``, in code order so that two batches never deadlock), so that what is read
after them (the calls' holds, their CDRs, applied top-up keys) is what the last
transaction on those accounts left, across processes and hosts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import operator
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from enum import Enum
from typing import Any

from ..charging.commands import (
    CarrierHealth,
    Flag,
    FloatHold,
    Outcome,
    Reserve,
    Settle,
    StoreCommand,
    TierPrice,
    Topup,
    UsageKey,
)
from ..charging.model import Account, AccountKind, Cdr, Settlement
from ..charging.settle import Effect, evolve, grant, rolled, settle_amounts
from ..charging.tiers import grant_chain
from ..money import ZERO, to_text
from .dialect import ACCOUNT_COLUMNS, SQLITE, Bulk, Connection, Dialect

log = logging.getLogger("sidecar.store")

__all__ = ["ACCOUNT_COLUMNS", "CDR_FIELDS", "CDR_INSERT", "Batch", "UnknownAccount",
           "cdr_row"]

CDR_FIELDS = tuple(f.name for f in dataclasses.fields(Cdr))
# A CDR's columns: the Cdr's fields, then the node whose Kamailio carried the call.
_CDR_COLUMNS = ", ".join((*CDR_FIELDS, "node"))
CDR_INSERT = (f"INSERT INTO cdrs ({_CDR_COLUMNS}) "
              f"VALUES ({', '.join('?' for _ in CDR_FIELDS)}, ?)")
_CDRS = Bulk(CDR_INSERT, copy=f"COPY cdrs ({_CDR_COLUMNS}) FROM STDIN")
# A call's reservation belongs to the node that made it first; every reservation renews
# its lease.
_LIVE_COLUMNS = ("call_ref, account, number, destination, prefix, rate, increment, "
                 "answered_ms, paid_seconds, reserved, updated_ms, node, lease_ms, bundle, "
                 "bundle_period, bundle_held, tier_holds, tier_draws")
_LIVE_CONFLICT = ("ON CONFLICT (call_ref) DO UPDATE SET paid_seconds = excluded.paid_seconds, "
                  "reserved = excluded.reserved, updated_ms = excluded.updated_ms, "
                  "lease_ms = excluded.lease_ms, bundle = excluded.bundle, "
                  "bundle_period = excluded.bundle_period, bundle_held = excluded.bundle_held, "
                  "tier_holds = excluded.tier_holds, tier_draws = excluded.tier_draws")
_LIVE = Bulk(
    f"INSERT INTO live_calls ({_LIVE_COLUMNS}) VALUES "
    f"(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) " + _LIVE_CONFLICT,
    unnest=f"INSERT INTO live_calls ({_LIVE_COLUMNS}) SELECT * FROM {{rows}} "
           + _LIVE_CONFLICT,
    types=("text", "text", "text", "text", "text", "numeric", "text", "bigint", "integer",
           "numeric", "bigint", "text", "bigint", "text", "bigint", "integer", "text",
           "text"))
_TIER_COLUMNS = ("call_ref, tier, account, plan, currency, destination, prefix, rate, "
                 "increment, billed_seconds, usage, connection_fee, surcharge, "
                 "minimum_uplift, cost, charged, written_off, credited, margin, ended_ms")
_TIERS = Bulk(f"INSERT INTO cdr_tiers ({_TIER_COLUMNS}) VALUES "
              f"({', '.join('?' for _ in _TIER_COLUMNS.split(', '))})",
              copy=f"COPY cdr_tiers ({_TIER_COLUMNS}) FROM STDIN")
_FLOATS = Bulk("INSERT INTO reseller_floats (node, account, held, drawn, lease_ms) VALUES "
               "(?, ?, ?, ?, ?) ON CONFLICT (node, account) DO UPDATE SET held = excluded.held, "
               "drawn = excluded.drawn, lease_ms = excluded.lease_ms")
_USAGE = Bulk("INSERT INTO bundle_usage (account, bundle, period_start, used_seconds, "
              "held_seconds) VALUES (?, ?, ?, ?, ?) ON CONFLICT (account, bundle, "
              "period_start) DO UPDATE SET used_seconds = excluded.used_seconds, "
              "held_seconds = excluded.held_seconds")
_LEDGER = Bulk("INSERT INTO ledger (ts_ms, account, kind, amount, call_ref, note) "
               "VALUES (?, ?, ?, ?, ?, ?)",
               copy="COPY ledger (ts_ms, account, kind, amount, call_ref, note) FROM STDIN")
_ACCOUNT_SET = ("balance", "held", "day_key", "day_spend", "month_key", "month_spend",
                "suspended", "suspend_reason", "blocked")
_ACCOUNTS = Bulk(
    f"UPDATE accounts SET {', '.join(f'{c} = ?' for c in _ACCOUNT_SET)} WHERE code = ?",
    unnest=f"UPDATE accounts AS a SET {', '.join(f'{c} = u.{c}' for c in _ACCOUNT_SET)} "
           f"FROM {{rows}} AS u({', '.join(_ACCOUNT_SET)}, code) WHERE a.code = u.code",
    types=("numeric", "numeric", "text", "numeric", "text", "numeric", "integer", "text",
           "text", "text"))
_GONE = Bulk("DELETE FROM live_calls WHERE call_ref = ?",
             unnest="DELETE FROM live_calls WHERE call_ref IN (SELECT * FROM {rows})",
             types=("text",))
_KEYS = Bulk("INSERT INTO applied_keys (key, applied_ms) VALUES (?, ?)",
             copy="COPY applied_keys (key, applied_ms) FROM STDIN")
_FRAUD_COLUMNS = "ts_ms, account, rule, action, reason, evidence, node, key"
_FRAUD = Bulk(f"INSERT INTO fraud_events ({_FRAUD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
              copy=f"COPY fraud_events ({_FRAUD_COLUMNS}) FROM STDIN")


_PREPAID = AccountKind.PREPAID


class UnknownAccount(LookupError):
    """A command names an account the store does not have."""


class _Usage:
    """A bundle's usage row in one period, as this batch changes it; ``allowance``: the
    bundle's seconds (0 when the bundle is gone: nothing more can be drawn)."""

    __slots__ = ("allowance", "held", "used")

    def __init__(self, allowance: int, used: int, held: int) -> None:
        self.allowance, self.used, self.held = allowance, used, held

    def left(self) -> int:
        return max(self.allowance - self.used - self.held, 0)


_MONEY_AT = tuple(i for i, f in enumerate(dataclasses.fields(Cdr))
                  if f.type in ("Decimal", Decimal))
#: Amounts that may be absent (NULL): a routed call's buy cost and margin.
_OPT_MONEY_AT = tuple(i for i, f in enumerate(dataclasses.fields(Cdr))
                      if f.type in ("Decimal | None",))
_ENUM_AT = tuple(i for i, f in enumerate(dataclasses.fields(Cdr)) if f.name == "disposition")
_CDR_VALUES = operator.itemgetter(*CDR_FIELDS)  # of a Cdr's __dict__: its columns
_ZERO_TEXT = to_text(ZERO)
#: What a duplicate settlement (or one left to another node) did: nothing.
_NOTHING = Settlement(ZERO, ZERO, True, None, None)


def cdr_row(cdr: Cdr, money_as_text: bool = True) -> list[object]:
    """A CDR's column values for ``CDR_INSERT`` (money as exact text, or as Decimals)."""
    out: list[object] = list(_CDR_VALUES(cdr.__dict__))
    if money_as_text:
        for i in _MONEY_AT:
            v = out[i]
            # Most of a CDR's amounts are the shared ZERO (no fee, nothing credited).
            out[i] = _ZERO_TEXT if v is ZERO else to_text(v)  # type: ignore[arg-type]
        for i in _OPT_MONEY_AT:
            v = out[i]
            if v is not None:
                out[i] = to_text(v)  # type: ignore[arg-type]
    for i in _ENUM_AT:
        v = out[i]
        if isinstance(v, Enum):
            out[i] = v.value
    return out


class Batch:
    """One transaction's worth of commands; :meth:`flush` writes what they did.

    ``node``: the sidecar node applying them (its calls' reservations carry it), and
    ``lease_ms``: until when the node vouches for the calls it reserves for."""

    def __init__(self, conn: Connection, cmds: Sequence[StoreCommand],
                 dialect: Dialect = SQLITE, *, node: str = "", lease_ms: int = 0) -> None:
        self.conn = conn
        self.dialect = dialect
        self.node = node
        self.lease_ms = lease_ms
        self._owner: dict[str, tuple[str, int]] = {}  # stored live call -> (node, lease)
        self._mine = (node, 0)  # the owner of a call not stored yet: this node
        self._m = dialect.money
        self.accounts: dict[str, Account] = {}
        self._dirty: set[str] = set()
        self._ledger: list[tuple[object, ...]] = []
        self._held: dict[str, Decimal] = {}  # call_ref -> what the store holds for it
        # Live-call rows to write, without their holds (``_held``, added at the end).
        self._live: dict[str, tuple[object, ...]] = {}
        self._gone: set[str] = set()  # stored live calls settled in this batch
        self._cdrs: list[list[object]] = []
        self._stored: set[str] = set()  # calls with a live_calls row before this batch
        self._settled: set[str] = set()
        self._keys: list[tuple[str, int]] = []
        self._fraud: list[tuple[object, ...]] = []
        self._flagged: set[str] = set()  # fraud event keys stored in this batch
        #: Bundles: the usage rows read (and changed) in this batch, and per call the
        #: usage row it draws on and the bundle seconds held for it.
        self._usage: dict[UsageKey, _Usage] = {}
        self._bcall: dict[str, tuple[UsageKey, int]] = {}
        #: Resellers: per call, what is held on each reseller above its account; the
        #: cdr_tiers rows to write.
        self._tholds: dict[str, dict[str, Decimal]] = {}
        self._tiers: list[tuple[object, ...]] = []
        #: Resellers' floats: per call, what it drew from them (``Reserve.float_draws``);
        #: (node, reseller) -> what the float holds, as this batch leaves it.
        self._tdraws: dict[str, dict[str, Decimal]] = {}
        self._floats: dict[tuple[str, str], list[Decimal]] = {}  # [held, drawn]
        self._floats_dirty: set[tuple[str, str]] = set()
        #: Prepaid resellers' settlements added up, in one UTC day: [balance, held, spend,
        #: last ms, first ms, calls] (their charges go to ``_resold`` when folded).
        self._tdelta: dict[str, list[Any]] = {}
        #: Resellers' charges for their customers' calls: (account, UTC day) -> (first
        #: time, sum, calls): one ledger row each.
        self._resold: dict[tuple[str, int], tuple[int, Decimal, int]] = {}
        self._texts: dict[int, tuple[Decimal, object]] = {}
        self._tprices: dict[int, tuple[TierPrice, tuple[object, ...], object]] = {}
        self._trows: dict[int, tuple[TierPrice, tuple[object, ...]]] = {}
        self._zero = self._m(ZERO)
        self._prefetch(cmds)

    # --- reads, in bulk --------------------------------------------------------------
    def _prefetch(self, cmds: Sequence[StoreCommand]) -> None:
        codes: dict[str, int] = {}
        refs: set[str] = set()  # calls reserved or settled: their holds and their CDRs
        for c in cmds:
            if isinstance(c, Settle):
                if c.cdr.account:
                    codes.setdefault(c.cdr.account, c.now_ms)
                refs.add(c.cdr.call_ref)
                for t in c.tiers:  # its resellers: locked in order too
                    codes.setdefault(t.account, c.now_ms)
            else:
                codes.setdefault(c.account, c.now_ms)
                if isinstance(c, Reserve):
                    refs.add(c.call_ref)  # (a call settled already gets no more)
                    for p in c.chain:
                        codes.setdefault(p.account, c.now_ms)
                    for code, _a in c.float_draws:  # (in case the call settles here)
                        codes.setdefault(code, c.now_ms)
        d = self.dialect
        # Accounts first, in code order: where rows are locked, every batch takes the
        # locks in the same order, and what is read next is what the last transaction on
        # these accounts committed.
        n = d.keys_per_lookup
        for part in _chunks(sorted(codes), n):
            where, args = d.any_of("code", part)
            for r in d.execute(self.conn, f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE "
                               f"{where}{d.lock}", args):
                code = str(r[0])
                self.accounts[code] = d.to_account(r, codes[code])
        for part in _chunks(refs, n):
            where, args = d.any_of("call_ref", part)
            for ref, reserved, node, lease, account, bundle, period, bheld, th, td in \
                    d.execute(self.conn, "SELECT call_ref, reserved, node, lease_ms, account, "
                              "bundle, bundle_period, bundle_held, tier_holds, tier_draws "
                              f"FROM live_calls WHERE {where}", args):
                if th:
                    self._tholds[str(ref)] = {str(a): Decimal(str(v))
                                              for a, v in json.loads(str(th)).items()}
                if td:
                    self._tdraws[str(ref)] = {str(a): Decimal(str(v))
                                              for a, v in json.loads(str(td)).items()}
                self._held[str(ref)] = Decimal(str(reserved))
                self._stored.add(str(ref))
                self._owner[str(ref)] = (str(node), int(lease))
                if bundle:
                    self._bcall[str(ref)] = ((str(account), str(bundle), int(period)),
                                             int(bheld))
        for part in _chunks(refs, n):  # each call once, however many of its commands
            where, args = d.any_of("call_ref", part)
            self._settled.update(str(r[0]) for r in d.execute(
                self.conn, f"SELECT call_ref FROM cdrs WHERE {where}", args))
        keys = {k for k, _h in self._bcall.values()}
        for c in cmds:
            if isinstance(c, Reserve) and c.bundle is not None:
                keys.add(c.bundle.key)
            elif isinstance(c, Settle) and c.cdr.bundle and c.cdr.account \
                    and c.cdr.bundle_period is not None:
                keys.add((c.cdr.account, c.cdr.bundle, c.cdr.bundle_period))
        if keys:
            self._prefetch_bundles(keys)
        floats = {code for c in cmds if isinstance(c, FloatHold) for code in (c.account,)}
        floats.update(code for c in cmds if isinstance(c, Reserve) for code, _a in c.float_draws)
        for draws in self._tdraws.values():
            floats.update(draws)
        for part in _chunks(sorted(floats), n):  # (their accounts are locked already)
            where, args = d.any_of("account", part)
            for node, code, held, drawn in d.execute(
                    self.conn, "SELECT node, account, held, drawn FROM reseller_floats WHERE "
                    f"{where}", args):
                self._floats[(str(node), str(code))] = [Decimal(str(held)),
                                                        Decimal(str(drawn))]

    def _prefetch_bundles(self, keys: set[UsageKey]) -> None:
        """The usage rows (and the bundles' allowances) this batch will draw on, read in
        bulk after the accounts' rows (whose locks cover them)."""
        d, n = self.dialect, self.dialect.keys_per_lookup
        accounts = sorted({k[0] for k in keys})
        names = sorted({k[1] for k in keys})
        found: dict[UsageKey, tuple[int, int]] = {}
        for part in _chunks(accounts, n):
            where, args = d.any_of("account", part)
            for a, b, p, used, held in d.execute(
                    self.conn, "SELECT account, bundle, period_start, used_seconds, "
                    f"held_seconds FROM bundle_usage WHERE {where}", args):
                key = (str(a), str(b), int(p))
                if key in keys:
                    found[key] = (int(used), int(held))
        defs: dict[tuple[str, str, str], int] = {}
        for part in _chunks(names, n):
            where, args = d.any_of("name", part)
            for kind, owner, name, seconds in d.execute(
                    self.conn, "SELECT owner_kind, owner, name, seconds FROM bundles WHERE "
                    f"{where}", args):
                defs[(str(kind), str(owner), str(name))] = int(seconds)
        for key in keys:
            account, name, _p = key
            acc = self.accounts.get(account)
            allowance = defs.get(("account", account, name)) or defs.get(
                ("plan", acc.plan if acc else "", name), 0)
            used, held = found.get(key, (0, 0))
            self._usage[key] = _Usage(allowance, used, held)

    def _account(self, code: str, now_ms: int) -> Account:
        if code in self._tdelta:
            self._fold(code)
        acc = self.accounts.get(code)
        if acc is None:
            raise UnknownAccount(f"account '{code}' not found")
        return rolled(acc, now_ms)

    def _fold(self, code: str) -> None:
        """Apply the settlements added up for a prepaid reseller (``_settle_tiers``):
        balance, holds and spend, on the day of the last of them."""
        dbal, dheld, dspend, ts, first, n = self._tdelta.pop(code)
        self._set(Effect(dbal, dheld, dspend).apply(rolled(self.accounts[code], ts)))
        if dspend:
            self._resell(code, first, dspend, n)

    def _resell(self, code: str, ts: int, charged: Decimal, calls: int) -> None:
        """Count a reseller's charges for its customers' calls into its ledger row of
        that UTC day (``flush``)."""
        day = (code, ts // 86_400_000)
        got = self._resold.get(day)
        self._resold[day] = (ts, charged, calls) if got is None else (
            min(got[0], ts), got[1] + charged, got[2] + calls)

    def _set(self, acc: Account) -> None:
        self.accounts[acc.code] = acc
        self._dirty.add(acc.code)

    def _bundle(self, key: UsageKey) -> _Usage:
        """A bundle's usage row (read once per batch, after its account's row: the
        account's lock covers it) with the bundle's allowance: the account's own bundle
        of that name, else its plan's."""
        row = self._usage.get(key)
        if row is not None:
            return row
        account, name, period = key
        d = self.dialect
        acc = self.accounts.get(account)
        allowance = 0
        for (seconds,) in d.execute(
                self.conn, "SELECT seconds FROM bundles WHERE name = ? AND ((owner_kind = "
                "'account' AND owner = ?) OR (owner_kind = 'plan' AND owner = ?)) "
                "ORDER BY owner_kind", (name, account, acc.plan if acc else "")):
            allowance = int(seconds)  # 'account' sorts first: the account's own
            break
        got = d.execute(self.conn, "SELECT used_seconds, held_seconds FROM bundle_usage "
                        "WHERE account = ? AND bundle = ? AND period_start = ?",
                        (account, name, period)).fetchone()
        row = _Usage(allowance, int(got[0]), int(got[1])) if got else _Usage(allowance, 0, 0)
        self._usage[key] = row
        return row

    def _bundle_release(self, ref: str) -> int:
        """Give a call's held bundle seconds back to its bundle; returns them."""
        hit = self._bcall.pop(ref, None)
        if hit is None:
            return 0
        key, held = hit
        if held:
            self._bundle(key).held -= held
        return held

    # --- commands --------------------------------------------------------------------
    def apply(self, cmd: StoreCommand) -> Outcome:
        """One command; one that names an unknown account fails alone."""
        try:
            if isinstance(cmd, Reserve):
                return self.reserve(cmd)
            if isinstance(cmd, Settle):
                return Outcome(cmd.seq, True, settlement=self.settle(
                    cmd.cdr, cmd.now_ms, cmd.lease_ended_by, cmd.reprice, cmd.tiers))
            if isinstance(cmd, Flag):
                return Outcome(cmd.seq, True, settlement=self.flag(cmd))
            if isinstance(cmd, CarrierHealth):
                self.carrier_health(cmd)
                return Outcome(cmd.seq, True)
            if isinstance(cmd, FloatHold):
                return Outcome(cmd.seq, True, self.float_hold(cmd))
            return Outcome(cmd.seq, True, settlement=self.topup(cmd))
        except UnknownAccount as exc:
            return Outcome(cmd.seq, False, error=str(exc))

    def reserve(self, cmd: Reserve) -> Outcome:
        """Hold what the core asked for, or what the account can still cover; record the
        live call (its paid time and holds) for a restart to adopt."""
        (seq, code, ref, amount, want_seconds, paid_before, fit, live, now_ms, draw, chain,
         cost_to, float_draws) = cmd
        acc = self._account(code, now_ms)
        if ref in self._settled:  # settled already (by a node that took over): no more
            return Outcome(seq, True, ZERO, paid_before, settled_elsewhere=True)
        if float_draws and not self._draw(ref, float_draws):
            # A float has less free than the core thought (a top-up granted less, or
            # failed): nothing more for the call, which ends at its paid time.
            return Outcome(seq, True, ZERO, paid_before)
        taken = 0
        if draw is not None:  # bundle seconds first, as many as the bundle has left
            row = self._bundle(draw.key)
            taken = min(draw.seconds, row.left())
            if taken < draw.seconds:  # fewer than the core thought: money for the rest
                amount, fit, cost_to = draw.redo(taken)
            if taken:
                row.held += taken
                prev = self._bcall.get(ref)
                self._bcall[ref] = (draw.key, (prev[1] if prev else 0) + taken)
        got: tuple[Decimal, ...] = ()
        if chain:  # every tier covers the same seconds, each its own price
            assert cost_to is not None
            ups = [self._account(p.account, now_ms) for p in chain]
            seconds, amounts = grant_chain(
                (acc, amount, fit, cost_to),
                [(up.available(), p.amount, p.line, p.base)
                 for up, p in zip(ups, chain, strict=True)],
                want_seconds, paid_before)
            granted, got = amounts[0], tuple(amounts[1:])
            holds = self._tholds.setdefault(ref, {})
            for up, g in zip(ups, got, strict=True):
                if g:
                    self._set(evolve(up, {"balance": up.balance - g, "held": up.held + g}))
                    holds[up.code] = holds.get(up.code, ZERO) + g
        else:
            granted, seconds = grant(acc, amount, want_seconds, fit, paid_before)
        if granted > 0:  # a hold moves no money: live_calls records it, not the ledger
            self.accounts[code] = evolve(acc, {"balance": acc.balance - granted,
                                               "held": acc.held + granted})
            self._dirty.add(code)
        held = self._held
        held[ref] = held.get(ref, ZERO) + granted
        get = live.get
        self._live[ref] = (ref, code, get("number"), get("destination"), get("prefix"),
                           get("rate"), get("increment"), get("answered_ms"), seconds,
                           now_ms, self._owner.get(ref, self._mine)[0])
        return Outcome(seq, True, granted, seconds, bundle_seconds=taken,
                       chain_granted=got or (tuple(a for _c, a in float_draws)
                                             if float_draws else ()))

    def _draw(self, ref: str, draws: tuple[tuple[str, Decimal], ...]) -> bool:
        """A chunk's draws on this node's floats, when every float has them free."""
        floats = self._floats
        node = self._owner.get(ref, self._mine)[0]
        rows = []
        for code, a in draws:
            row = floats.get((node, code))
            if row is None or row[0] - row[1] < a:
                return False
            rows.append(row)
        drew = self._tdraws.setdefault(ref, {})
        dirty = self._floats_dirty
        for (code, a), row in zip(draws, rows, strict=True):
            row[1] += a
            drew[code] = drew.get(code, ZERO) + a
            dirty.add((node, code))
        return True

    def settle(self, cdr: Cdr, now_ms: int, lease_ended_by: int | None = None,
               reprice: Callable[[int], None] | None = None,
               tiers: tuple[TierPrice, ...] = ()) -> Settlement:
        """Write the CDR once; for a billed call release its holds and charge its cost (a
        prepaid account never below zero: what it cannot cover is written off).

        A call settled already is a duplicate: nothing is charged, and a hold left on it
        (a reservation that raced the first settlement) is given back. With
        ``lease_ended_by``, the call is another node's, settled only if its reservation
        is still there with a lease that ended before that time (else nothing happens)."""
        ref = cdr.call_ref
        if lease_ended_by is not None and (
                ref in self._settled or self._owner.get(ref, ("", lease_ended_by))[1]
                >= lease_ended_by):
            return _NOTHING
        if ref in self._settled:
            self._release_left(ref, cdr.account, now_ms)
            return _NOTHING
        self._settled.add(ref)
        held_b = self._bundle_release(ref)
        if cdr.bundle and cdr.account and cdr.bundle_period is not None:
            self._bundle_use(cdr, held_b, reprice)
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
                self._ledger.append((now_ms, code, "charge", self._m(-amounts.charged), ref,
                                     ""))
            if amounts.credited:  # a false answer (FAS): given back, with the reason
                note = f"FAS {cdr.fas_verdict}: {cdr.fas_reasons}".rstrip(": ")
                self._ledger.append((now_ms, code, "credit", self._m(amounts.credited), ref,
                                     note[:500]))
            after = amounts.effect.apply(before)
            self._set(after)
            suspended = bool(amounts.effect.suspend_reason)
        if tiers or ref in self._tholds or ref in self._tdraws:
            self._settle_tiers(cdr, tiers, now_ms)
        self._live.pop(ref, None)
        if ref in self._stored:
            self._gone.add(ref)
        row = cdr_row(cdr, self.dialect.money_as_text)
        row.append(self._owner.get(ref, self._mine)[0] or self.node)
        self._cdrs.append(row)
        return Settlement(cdr.charged, cdr.written_off, False, before, after, suspended)

    def _settle_tiers(self, cdr: Cdr, tiers: tuple[TierPrice, ...], now_ms: int) -> None:
        """Charge every reseller above the call's account its own price (releasing what
        was held on it for the call): the same rule as the account's (never below zero
        for a prepaid reseller: the rest written off), and a cdr_tiers row each with
        what it was charged. A reseller's ledger gets one charge row per UTC day and
        transaction for its customers' calls (their detail is in cdr_tiers): a busy
        reseller does not write a ledger row per call."""
        ref = cdr.call_ref
        holds = self._tholds.pop(ref, {})
        drew = self._tdraws.pop(ref, None)
        owner = self._owner.get(ref, self._mine)[0]
        m = self._m
        tdelta = self._tdelta
        day_now = now_ms // 86_400_000
        ended = cdr.ended_ms
        for t in tiers:
            code = t.account
            held = holds.pop(code, ZERO) if holds else ZERO
            if drew:  # what it drew from the float is held for it: settled alike
                held += self._from_float(owner, code, drew.pop(code, ZERO))
            base = self.accounts.get(code)
            if base is None:
                continue
            cost = t.cost
            if held >= cost and not t.credited and base.kind is _PREPAID and \
                    base.balance >= ZERO:
                # settle_prepaid's case of a hold that covers the price (by far the most
                # common), added up per reseller and day and applied once (:meth:`_fold`),
                # its charge with it.
                d = tdelta.get(code)
                if d is not None and d[3] // 86_400_000 != day_now:
                    self._fold(code)  # a new UTC day: the spend so far is the last day's
                    d = None
                if d is None:
                    tdelta[code] = [held - cost, -held, cost, now_ms, now_ms, 1 if cost else 0]
                else:
                    d[0] += held - cost
                    d[1] -= held
                    d[2] += cost
                    d[3] = now_ms
                    if cost:
                        d[5] += 1
                self._tiers.append((ref, t.tier, code, *self._tier_row(t), ended))
                continue
            up = self._account(code, now_ms)
            amounts = settle_amounts(up, held, cost, t.credited)
            charged, written_off, credited = (amounts.charged, amounts.written_off,
                                              amounts.credited)
            self._set(amounts.effect.apply(up))
            if charged:  # posted per account and day (flush): each call in cdr_tiers
                self._resell(code, now_ms, charged, 1)
            if credited:
                self._ledger.append((now_ms, code, "credit", m(credited), ref,
                                     f"FAS {cdr.fas_verdict}: resold call of {cdr.account} "
                                     f"(tier {t.tier})"[:500]))
            price, margin = self._tier_price(t)
            mm = self._money_text
            self._tiers.append((
                ref, t.tier, code, *price, mm(charged), mm(written_off), mm(credited), margin,
                ended))
        for code, held in holds.items():  # held for a call no tier was charged for
            self._release(code, held, now_ms)
        for code, a in (drew or {}).items():
            self._release(code, self._from_float(owner, code, a), now_ms)

    def _from_float(self, node: str, code: str, drawn: Decimal) -> Decimal:
        """Take a settled call's draw out of its node's float on ``code``: it becomes a
        hold of the call's (released or charged by the settlement). Never more than the
        float holds (a float given back meanwhile: the settlement charges the balance)."""
        row = self._floats.get((node, code))
        if row is None:
            return ZERO
        take = drawn if drawn <= row[0] else row[0]
        if take > ZERO:
            row[0] -= take
            row[1] = row[1] - drawn if row[1] > drawn else ZERO
            self._floats_dirty.add((node, code))
        return take

    def float_hold(self, cmd: FloatHold) -> Decimal:
        """Hold credit of a reseller's in a node's float, or give it back to its balance;
        returns what was held (< 0: given back)."""
        key = (self.node if cmd.node is None else cmd.node, cmd.account)
        acc = self._account(cmd.account, cmd.now_ms)
        row = self._floats.setdefault(key, [ZERO, ZERO])
        if cmd.amount > ZERO:
            avail = acc.available()
            got = cmd.amount if cmd.amount <= avail else avail
            if got <= ZERO:
                return ZERO
            self._set(evolve(acc, {"balance": acc.balance - got, "held": acc.held + got}))
            row[0] += got
        else:  # what no live call drew, at most
            free = row[0] - row[1]
            got = -cmd.amount if -cmd.amount <= free else free
            if got <= ZERO:
                return ZERO
            self._set(evolve(acc, {"balance": acc.balance + got, "held": acc.held - got}))
            row[0] -= got
            got = -got
        self._floats_dirty.add(key)
        return got


    def _tier_price(self, t: TierPrice) -> tuple[tuple[object, ...], object]:
        """A tier's price as ``cdr_tiers`` columns (plan .. cost) and its margin, once per
        price in the batch: the core hands the same TierPrice to every call of one length
        on one line and tier."""
        memo = self._tprices
        hit = memo.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1], hit[2]
        mm = self._money_text
        cols = (t.plan, t.currency, t.destination, t.prefix, mm(t.rate), t.increment,
                t.billed_seconds, mm(t.usage), mm(t.connection_fee), mm(t.surcharge),
                mm(t.minimum_uplift), mm(t.cost))
        margin = None if t.margin is None else mm(t.margin)
        memo[id(t)] = (t, cols, margin)
        return cols, margin

    def _tier_row(self, t: TierPrice) -> tuple[object, ...]:
        """A ``cdr_tiers`` row's columns plan .. margin for a tier charged its price in
        full (nothing written off or credited), once per price in the batch."""
        memo = self._trows
        hit = memo.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        price, margin = self._tier_price(t)
        z = self._zero
        row = (*price, price[-1], z, z, margin)  # charged: its cost
        memo[id(t)] = (t, row)
        return row

    def _money_text(self, v: Decimal) -> object:
        """A money parameter, remembered for the batch (the resellers' rows repeat a few
        rates and prices: a call's price at a tier is converted once)."""
        if v is ZERO:
            return self._zero
        memo = self._texts
        hit = memo.get(id(v))  # by identity: hashing a Decimal costs more than converting
        if hit is not None and hit[0] is v:
            return hit[1]
        got = self._m(v)
        memo[id(v)] = (v, got)
        return got

    def _release(self, code: str, held: Decimal, now_ms: int) -> None:
        if held and code in self.accounts:
            acc = self._account(code, now_ms)
            self._set(evolve(acc, {"balance": acc.balance + held, "held": acc.held - held}))

    def _bundle_use(self, cdr: Cdr, held: int, reprice: Callable[[int], None] | None
                    ) -> None:
        """A settled call's bundle seconds become used. It never uses more than were held
        for it and are still left: a CDR that counted more is rated again for what the
        bundle gives (``reprice``; a journaled settlement, which has none, is left as
        rated and logged)."""
        assert cdr.account is not None and cdr.bundle_period is not None
        row = self._bundle((cdr.account, cdr.bundle, cdr.bundle_period))
        use = cdr.bundle_seconds
        if use > held:  # (its ``held`` went back to the row already: not left for more)
            use = held + min(use - held, max(row.left() - held, 0))
            if use < cdr.bundle_seconds:
                if reprice is not None:
                    reprice(use)
                    use = min(cdr.bundle_seconds, use)
                else:
                    log.error("call %s: its CDR counts %d bundle seconds, the bundle %s gives "
                              "%d", cdr.call_ref, cdr.bundle_seconds, cdr.bundle, use)
        row.used += use

    def _release_left(self, ref: str, account: str | None, now_ms: int) -> None:
        """Give back a hold still recorded for a call that has its CDR already."""
        self._bundle_release(ref)
        for code, h in self._tholds.pop(ref, {}).items():
            self._release(code, h, now_ms)
        owner = self._owner.get(ref, self._mine)[0]
        for code, a in self._tdraws.pop(ref, {}).items():
            self._release(code, self._from_float(owner, code, a), now_ms)
        held = self._held.pop(ref, ZERO)
        self._live.pop(ref, None)
        if ref not in self._stored:
            return
        self._gone.add(ref)
        if held and account and account in self.accounts:
            acc = self._account(account, now_ms)
            self._set(evolve(acc, {"balance": acc.balance + held, "held": acc.held - held}))

    def topup(self, cmd: Topup) -> Settlement:
        """A recharge, applied once per ``key`` (a replayed journal applies it again)."""
        if any(k == cmd.key for k, _ in self._keys) or self.dialect.execute(
                self.conn, "SELECT 1 FROM applied_keys WHERE key = ?", (cmd.key,)).fetchone():
            return _NOTHING
        self._keys.append((cmd.key, cmd.now_ms))
        before = self._account(cmd.account, cmd.now_ms)
        self._ledger.append((cmd.now_ms, cmd.account, "topup", self._m(cmd.amount), None,
                             cmd.note))
        after = Effect(balance=cmd.amount).apply(before)
        self._set(after)
        return Settlement(ZERO, ZERO, False, before, after)

    def flag(self, cmd: Flag) -> Settlement:
        """A fraud rule tripped: store the event with its evidence and apply its action
        (``block``: new calls refused; ``suspend``: the account suspended; ``alert``:
        nothing more), once per ``key`` (a replayed journal flags again)."""
        if cmd.key in self._flagged or self.dialect.execute(
                self.conn, "SELECT 1 FROM fraud_events WHERE key = ?", (cmd.key,)).fetchone():
            return _NOTHING
        before = self._account(cmd.account, cmd.now_ms)
        self._flagged.add(cmd.key)
        self._fraud.append((cmd.now_ms, cmd.account, cmd.rule, cmd.action, cmd.reason,
                            cmd.evidence or "{}", self.node, cmd.key))
        after = before
        if cmd.action == "suspend":
            after = Effect(suspend_reason=cmd.reason).apply(before)
        elif cmd.action == "block":
            after = Effect(block_reason=cmd.reason).apply(before)
        if after is not before:
            self._set(after)
        return Settlement(ZERO, ZERO, False, before, after)

    def carrier_health(self, cmd: CarrierHealth) -> None:
        """Route health pulled or restored a carrier: the event stored once (by carrier,
        kind and time) and applied to the carrier (``store.carriers``)."""
        from .carriers import apply_health_event  # the carriers' rules, in one place

        apply_health_event(self.conn, self.dialect, cmd)

    # --- writes, in bulk -------------------------------------------------------------
    def flush(self) -> dict[str, Account]:
        """Write everything; returns the touched accounts as they now stand."""
        c = self.conn
        write = self.dialect.write
        m = self._m
        for code in list(self._tdelta):
            self._fold(code)
        for (code, _day), (ts, total, n) in sorted(self._resold.items()):
            self._ledger.append((ts, code, "charge", m(-total), None,
                                 f"resold calls: {n} (detail: cdr_tiers)"))
        write(c, _LEDGER, self._ledger)
        if self._dirty:
            rows = []
            for code in sorted(self._dirty):
                a = self.accounts[code]
                rows.append((m(a.balance), m(a.held), a.day_key, m(a.day_spend),
                             a.day_key[:7], m(a.month_spend), int(a.suspended),
                             a.suspend_reason, a.blocked, code))
            write(c, _ACCOUNTS, rows)
        if self._live:
            held, lease, bcall = self._held, self.lease_ms, self._bcall
            rows = []
            tholds, tdraws = self._tholds, self._tdraws
            for ref, r in self._live.items():
                b = bcall.get(ref)
                th = tholds.get(ref)
                td = tdraws.get(ref)
                rows.append((*r[:9], m(held[ref]), *r[9:], lease,
                             *((b[0][1], b[0][2], b[1]) if b else ("", None, 0)),
                             json.dumps({a: to_text(v) for a, v in th.items()}) if th
                             else "",
                             json.dumps({a: to_text(v) for a, v in td.items()}) if td
                             else ""))
            write(c, _LIVE, rows)
        if self._floats_dirty:
            # Another node's float is touched only once its lease ran out: it stays out.
            floats = self._floats
            write(c, _FLOATS, [(node, code, m(floats[(node, code)][0]),
                                m(floats[(node, code)][1]),
                                self.lease_ms if node == self.node else 0)
                               for node, code in sorted(self._floats_dirty)])
        if self._usage:
            write(c, _USAGE, [(*key, u.used, u.held) for key, u in self._usage.items()])
        write(c, _GONE, [(r,) for r in sorted(self._gone)])
        write(c, _CDRS, self._cdrs)
        write(c, _TIERS, self._tiers)
        write(c, _KEYS, self._keys)
        write(c, _FRAUD, self._fraud)
        return {code: self.accounts[code] for code in self._touched()}

    def _touched(self) -> set[str]:
        return set(self.accounts)

    def bundles(self) -> dict[UsageKey, int]:
        """The bundle usage rows this batch read or changed: seconds used + held."""
        return {key: u.used + u.held for key, u in self._usage.items()}


def _chunks(keys: Iterable[str], size: int) -> Iterable[list[str]]:
    """Keys in groups a bulk read can take."""
    part: list[str] = []
    for key in keys:
        part.append(key)
        if len(part) >= size:
            yield part
            part = []
    if part:
        yield part
