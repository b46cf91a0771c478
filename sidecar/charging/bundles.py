"""Free-minute bundles as the charging core sees them (pure): which bundles an account
has, and how many seconds each has left in its current period, from memory.

    left(account, bundle, period) = allowance - (used + held, as the store last said)
                                    - seconds the core's unconfirmed commands took

The same pattern as the accounts' book (``book.py``): a reservation draws bundle seconds
in the view at once, ahead of the store's answer; the store applies the same draw
against its own usage row (locked with the account, ``store.batch``) and grants fewer
seconds when it has fewer, so two calls never use the same bundle second, on one node or
several. Each batch brings the touched usage rows back; snapshots bring them all.

A call draws on one bundle: the first of its account's own bundles (by name), then of its
plan's (a plan's bundle applies to every account on the plan, unless the account has one
of the same name), that covers the call's destination and has seconds left in the period
the call is answered in. It keeps drawing on that period's bundle to its end.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

from ..rating.bundles import Bundle
from ..rating.deck import RateLine
from .commands import UsageKey


class OwnedBundle(NamedTuple):
    """A bundle and whom it belongs to: an account (``kind`` "account") or every account
    on a plan ("plan")."""

    kind: str
    owner: str
    bundle: Bundle


class Pick(NamedTuple):
    """The bundle a call draws on, the period it draws in, and its seconds left then."""

    bundle: Bundle
    key: UsageKey
    left: int


class BundleSource(Protocol):
    """Reads bundles and their usage from a store (synchronous use)."""

    def bundles_of(self, account: str, plan: str) -> list[OwnedBundle]: ...

    def bundle_used(self, key: UsageKey) -> int: ...


class BundleBook:
    """Bundles and their usage in memory, coherent with the store.

    With a ``source``, definitions and usage are read through from the store at every
    look (the synchronous mode). Without one, :meth:`load` and :meth:`committed` feed it
    (the live sidecar)."""

    def __init__(self, source: BundleSource | None = None) -> None:
        self.source = source
        self._defs: dict[tuple[str, str], list[Bundle]] = {}  # (kind, owner) -> by name
        self._base: dict[UsageKey, int] = {}  # used + held, as the store last said
        self._pending: dict[int, tuple[UsageKey, int]] = {}  # seq -> (key, seconds)
        self._totals: dict[UsageKey, int] = {}
        self._periods: dict[tuple[str, int], tuple[int, int]] = {}  # kind -> [start, end)

    @property
    def active(self) -> bool:
        """Whether any bundle is defined (else calls skip every bundle look-up)."""
        return self.source is not None or bool(self._defs)

    # --- reads -------------------------------------------------------------------------
    def of(self, account: str, plan: str) -> list[Bundle]:
        """The account's bundles in the order a call picks them: its own, then its
        plan's that it does not override by name."""
        if self.source is not None:
            owned = self.source.bundles_of(account, plan)
            own = sorted((o.bundle for o in owned if o.kind == "account"),
                         key=lambda b: b.name)
            planned = sorted((o.bundle for o in owned if o.kind == "plan"),
                             key=lambda b: b.name)
        else:
            own = self._defs.get(("account", account), [])
            planned = self._defs.get(("plan", plan), [])
        if not planned:
            return own
        names = {b.name for b in own}
        return own + [b for b in planned if b.name not in names]

    def used(self, key: UsageKey) -> int:
        """Seconds used and held in the bundle's period, with the core's own draws."""
        if self.source is not None:
            self._base[key] = self.source.bundle_used(key)
        return self._base.get(key, 0) + self._totals.get(key, 0)

    def left(self, bundle: Bundle, key: UsageKey) -> int:
        return max(bundle.seconds - self.used(key), 0)

    def pick(self, account: str, plan: str, line: RateLine, number: str, now_ms: int
             ) -> Pick | None:
        """The bundle a call on ``line`` to ``number`` answered at ``now_ms`` draws on:
        the first that covers it with seconds left; None when none does."""
        for b in self.of(account, plan):
            if not b.covers(line, number):
                continue
            key = (account, b.name, self._period_start(b, now_ms))
            left = self.left(b, key)
            if left > 0:
                return Pick(b, key, left)
        return None

    def _period_start(self, bundle: Bundle, now_ms: int) -> int:
        """:func:`period_key` of ``now_ms``, remembered per kind of period until it ends
        (a month, or a day: the calls in it need no calendar arithmetic)."""
        kind = (bundle.period, bundle.anchor_day)
        hit = self._periods.get(kind)
        if hit is not None and hit[0] <= now_ms < hit[1]:
            return hit[0]
        start, end = bundle.period_of(datetime.fromtimestamp(now_ms / 1000, UTC))
        got = (int(start.timestamp() * 1000), int(end.timestamp() * 1000))
        self._periods[kind] = got
        return got[0]

    # --- the core's own draws ----------------------------------------------------------
    def apply(self, seq: int, key: UsageKey, seconds: int) -> None:
        """A command's draw (positive) or give-back (negative), ahead of the store."""
        if not seconds:
            return
        self._pending[seq] = (key, seconds)
        self._totals[key] = self._totals.get(key, 0) + seconds

    # --- what the store says -----------------------------------------------------------
    def committed(self, done: Iterable[int], usage: Mapping[UsageKey, int]) -> None:
        """A batch came back: the commands ``done`` were applied or dropped for good;
        ``usage``: the touched rows (used + held) after the commit."""
        if self._pending:
            for seq in done:
                hit = self._pending.pop(seq, None)
                if hit is not None:
                    key, seconds = hit
                    left = self._totals.get(key, 0) - seconds
                    if left:
                        self._totals[key] = left
                    else:
                        del self._totals[key]
        self._base.update(usage)

    def load(self, bundles: Iterable[OwnedBundle] | None,
             usage: Mapping[UsageKey, int] | None) -> None:
        """A snapshot: every bundle and every usage row of the current periods (None:
        as they were)."""
        if bundles is not None:
            defs: dict[tuple[str, str], list[Bundle]] = {}
            for o in bundles:
                defs.setdefault((o.kind, o.owner), []).append(o.bundle)
            for lst in defs.values():
                lst.sort(key=lambda b: b.name)
            self._defs = defs
        if usage is not None:
            self._base = dict(usage)


def period_key(bundle: Bundle, at: datetime) -> int:
    """The start (UTC ms) of the bundle's period holding ``at``."""
    return int(bundle.period_of(at)[0].timestamp() * 1000)
