"""The accounts as the charging core sees them: the store's last word plus the core's own
commands that the store has not confirmed yet (pure).

    view(account) = base (as of the store's last commit the core heard of)
                    + effects of pending commands (sent, not yet answered)

Authorization and chunk sizing read views from memory, so a decision never waits on the
store. The store stays the authority: every command's outcome and a fresh copy of each
touched account come back with its batch, and whole snapshots arrive when something
else (the CLI, another process) changed the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, Protocol

from ..money import ZERO
from .model import Account, AccountKind
from .settle import Effect, rolled


class AccountSource(Protocol):
    """Reads accounts from a store (synchronous use: tests, replay, the CLI)."""

    def account(self, code: str, now_ms: int) -> Account | None: ...

    def resolve(self, account_code: str, sip_user: str, src_ip: str, now_ms: int
                ) -> tuple[Account | None, str]: ...


class AccountBook:
    """Accounts and SIP mappings in memory, coherent with the store.

    With a ``source``, every read goes to the store first (read-through: the synchronous
    mode, where each command is applied before the next decision). Without one, the book
    is fed by :meth:`load` and :meth:`committed` (the live sidecar)."""

    def __init__(self, source: AccountSource | None = None) -> None:
        self.source = source
        self._base: dict[str, Account] = {}
        self._view: dict[str, Account] = {}
        #: Per account, its commands not confirmed yet: seq -> the (balance, held, spend)
        #: of the command's effect. Plain tuples of amounts: the garbage collector stops
        #: tracking them, however many commands wait for the store.
        self._pending: dict[str, dict[int, tuple[Decimal, Decimal, Decimal]]] = {}
        #: Per account, the sum of its pending effects (:meth:`Effect.plus` of them all),
        #: kept as a list of the Effect's fields and changed in place: two commands per
        #: call add to it and leave it.
        self._totals: dict[str, list[Any]] = {}
        self._sip: dict[tuple[str, str], str] = {}
        #: Accounts whose view is out of date (commands applied without building it, a
        #: batch confirmed): rebuilt from base + pending when next read. A reseller's
        #: account takes a command per call of every customer below it; most are never
        #: read in between.
        self._stale: set[str] = set()
        #: Bumped whenever an account's parent or limits may have changed (a snapshot, or
        #: a fresh copy that differs): what is derived from the tree can be kept until then.
        self.tree_version = 0

    # --- reads -------------------------------------------------------------------
    def get(self, code: str, now_ms: int) -> Account | None:
        """The account as the core should see it now, or None if unknown."""
        if self.source is not None:
            acc = self.source.account(code, now_ms)
            if acc is None:
                return None
            self._set_base(acc)
        if code in self._stale:
            self._recompute(code)
        view = self._view.get(code)
        if view is None:
            return None
        r = rolled(view, now_ms)
        if r is not view:  # a new UTC day: spend restarts (the store does the same)
            self._base[code] = rolled(self._base[code], now_ms)
            self._view[code] = r
        return r

    def resolve(self, account_code: str, sip_user: str, src_ip: str, now_ms: int
                ) -> tuple[Account | None, str]:
        """The account of a call: its account code, else its SIP user's, else its source
        IP's. Returns (account or None, how it was found or why not)."""
        if self.source is not None:
            acc, how = self.source.resolve(account_code, sip_user, src_ip, now_ms)
            if acc is None:
                return None, how
            self._set_base(acc)  # just read: no second trip to the store
            return rolled(self._view[acc.code], now_ms), how
        if account_code:
            acc = self.get(account_code, now_ms)
            return acc, "account code" if acc else f"unknown account code '{account_code}'"
        for kind, value in (("user", sip_user), ("ip", src_ip)):
            if value:
                code = self._sip.get((kind, value))
                if code is not None:
                    return self.get(code, now_ms), f"SIP {kind} {value}"
        return None, f"no account for SIP user '{sip_user}' or source IP '{src_ip}'"

    def peek(self, code: str) -> Account | None:
        """The account as last seen, without rolling its day's spend over (for what does
        not depend on the day: its parent, limits, reseller flag, suspension). In the
        read-through mode, read from the store. Its money figures are not for use: an
        account whose view is out of date is not rebuilt for this, unless a command not
        yet confirmed suspends or blocks it."""
        if self.source is not None:
            return self.source.account(code, 0)  # (its spend figures are not for use)
        if code in self._stale:
            total = self._totals.get(code)
            if total is None or not (total[3] or total[4]):
                return self._base.get(code)  # flags, parent and limits as in the view
            self._recompute(code)
        return self._view.get(code)

    def available(self, code: str, now_ms: int) -> Decimal | None:
        """What new reservations may take from the account now (``get(code).available()``
        without building the view for a prepaid account: the chunks of a reseller's
        customers' calls ask this of it for every chunk), None if unknown."""
        bal = self.prepaid_balance(code)
        if bal is not None:
            return bal if bal >= ZERO else ZERO
        acc = self.get(code, now_ms)
        return None if acc is None else acc.available()

    def prepaid_balance(self, code: str) -> Decimal | None:
        """The balance in the view of a prepaid account (all that reserving on it and
        settling it depend on), without building the view; None for any other account
        (and in the read-through mode)."""
        if self.source is None:
            base = self._base.get(code)
            if base is not None and base.kind is AccountKind.PREPAID:
                total = self._totals.get(code)
                return base.balance if total is None else base.balance + total[0]
        return None

    def pending(self) -> int:
        """Commands sent to the store and not confirmed yet."""
        return sum(len(p) for p in self._pending.values())

    def __len__(self) -> int:
        return len(self._base)

    def held_by_currency(self) -> dict[str, Decimal]:
        """Credit reserved (``held``) over every account in the book, per currency (each
        currency of the book present, at zero when nothing is held)."""
        out: dict[str, Decimal] = {}
        for code in list(self._stale):
            self._recompute(code)
        for acc in self._view.values():
            held = acc.held
            if held:
                out[acc.currency] = out.get(acc.currency, ZERO) + held
            elif acc.currency not in out:
                out[acc.currency] = ZERO
        return out

    # --- the core's own commands -----------------------------------------------------
    def apply(self, seq: int, code: str, effect: Effect, *, view_after: bool = True
              ) -> Account | None:
        """Record a command's effect ahead of the store's answer; returns the new view
        (with ``view_after=False`` nothing: the view is built when next read)."""
        if code not in self._base:
            return None
        pending = self._pending.get(code)
        if pending is None:
            self._pending[code] = {seq: effect[:3]}
            self._totals[code] = list(effect)
        else:
            pending[seq] = effect[:3]
            total = self._totals[code]  # total.plus(effect), in place
            total[0] = total[0] + effect.balance
            total[1] = total[1] + effect.held
            total[2] = total[2] + effect.spend
            if effect.suspend_reason:
                total[3] = effect.suspend_reason
            if effect.block_reason:
                total[4] = effect.block_reason
        if not view_after:
            self._stale.add(code)
            return None
        if code in self._stale:
            self._recompute(code)  # (with this effect in its totals already)
            return self._view[code]
        view = effect.apply(self._view[code])
        self._view[code] = view
        return view

    # --- what the store says ---------------------------------------------------------
    def committed(self, done: Iterable[tuple[str, int]], accounts: Mapping[str, Account],
                  ) -> None:
        """A batch came back: ``done`` (account, seq) were applied or dropped for good;
        ``accounts`` are fresh copies of the touched accounts after the commit."""
        touched: set[str] = set()
        for code, seq in done:
            p = self._pending.get(code)
            if p is None:
                continue
            effect = p.pop(seq, None)
            if effect is not None:
                touched.add(code)
                if p:
                    total = self._totals[code]  # total.minus(effect), in place
                    total[0] = total[0] - effect[0]
                    total[1] = total[1] - effect[1]
                    total[2] = total[2] - effect[2]
                else:
                    del self._pending[code]
                    del self._totals[code]
        base = self._base
        for code, acc in accounts.items():
            old = base.get(code)
            if old is None or old.limits is not acc.limits or old.parent != acc.parent or \
                    old.reseller != acc.reseller:
                self.tree_version += 1
            base[code] = acc
            touched.add(code)
        self._stale |= touched  # views rebuilt when read

    def load(self, accounts: Iterable[Account], sip: Mapping[tuple[str, str], str] | None,
             *, complete: bool = True) -> None:
        """A snapshot of the store (every account when ``complete``): views become the
        snapshot plus whatever the store has not confirmed yet."""
        fresh = {a.code: a for a in accounts}
        self.tree_version += 1
        if complete:
            for code in list(self._base):
                if code not in fresh and code not in self._pending:
                    del self._base[code]
                    self._view.pop(code, None)
        self._base.update(fresh)
        for code in fresh:
            self._recompute(code)
        if sip is not None:
            self._sip = dict(sip)

    def _set_base(self, acc: Account) -> None:
        self._base[acc.code] = acc
        self._recompute(acc.code)

    def _recompute(self, code: str) -> None:
        self._stale.discard(code)
        view = self._base.get(code)
        if view is None:
            return
        total = self._totals.get(code)
        self._view[code] = view if total is None else Effect(*total).apply(view)
