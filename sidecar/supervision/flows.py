"""Which dialog, and which party of it, an RTP packet belongs to.

Each party's SDP names the address where it wants to *receive* media. A packet sent to
the caller's address is the callee's media, and the other way round: keying on the
destination works whatever port the sender uses. Symmetric RTP (RFC 4961) means a party
also sends from its SDP address, so an unknown destination is tried as a source. When a
party's media comes from an address its SDP did not name (NAT, a media relay), that
address is learnt ("latched") for the dialog, so the other party's media sent back to it
is recognised too. SSRCs are never used: they change on re-INVITEs, transfers and
transcoders, and a FAS route can send anything in them.

Ports are reused: a new registration of an address replaces an older dialog's, and a
dialog forgets only the addresses that still point at it.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import NamedTuple

Address = tuple[str, int]


class Party(StrEnum):
    CALLER = "caller"
    CALLEE = "callee"

    @property
    def other(self) -> Party:
        return Party.CALLEE if self is Party.CALLER else Party.CALLER


class Owner(NamedTuple):
    """An address belongs to ``party`` of the dialog ``call_ref``."""

    call_ref: str
    party: Party
    latched: bool


class FlowTable:
    """Media addresses of live dialogs, from their SDP and from latching."""

    #: At most this many learnt addresses per party of a dialog (a misbehaving sender
    #: hopping ports must not grow the table without bound).
    MAX_LATCHED = 4

    def __init__(self) -> None:
        self._owners: dict[Address, Owner] = {}
        self._by_call: dict[str, set[Address]] = {}
        self._latched: dict[tuple[str, Party], int] = {}
        self.version = 0  # bumped when the set of SDP addresses changes (capture filters)
        # Called with each address whose owner is set, replaced or removed (latching
        # included): a cache of classify() results for (src, dst) stays right until it is
        # called with src or dst. The media supervisor keeps such a cache.
        self.on_change: Callable[[Address], None] | None = None

    def __len__(self) -> int:
        return len(self._owners)

    def register(self, call_ref: str, party: Party, addresses: list[Address]) -> None:
        """``party`` of ``call_ref`` receives media at ``addresses`` (its latest SDP:
        replaces what its earlier SDP said)."""
        mine = self._by_call.setdefault(call_ref, set())
        for addr in [a for a in mine if self._owners.get(a) == Owner(call_ref, party, False)]:
            if addr not in addresses:
                del self._owners[addr]
                mine.discard(addr)
                self._changes(addr)
        for addr in addresses:
            previous = self._owners.get(addr)
            if previous is not None and previous.call_ref != call_ref:
                other = self._by_call.get(previous.call_ref)
                if other is not None:
                    other.discard(addr)
            self._owners[addr] = Owner(call_ref, party, False)
            mine.add(addr)
            self._changes(addr)
        self.version += 1

    def classify(self, src: Address, dst: Address) -> tuple[str, Party] | None:
        """The dialog and the *sending* party of a packet, or None if it is not ours."""
        owners = self._owners
        owner = owners.get(dst)
        if owner is not None:
            sender = owner.party.other
            if src not in owners:
                self._latch(owner.call_ref, sender, src)
            return owner.call_ref, sender
        owner = owners.get(src)
        if owner is not None:
            return owner.call_ref, owner.party
        return None

    def _latch(self, call_ref: str, party: Party, addr: Address) -> None:
        key = (call_ref, party)
        count = self._latched.get(key, 0)
        if count >= self.MAX_LATCHED:
            return
        self._latched[key] = count + 1
        self._owners[addr] = Owner(call_ref, party, True)
        self._by_call.setdefault(call_ref, set()).add(addr)
        self._changes(addr)

    def forget(self, call_ref: str) -> None:
        """The dialog ended: drop its addresses (those no newer dialog took over)."""
        for addr in self._by_call.pop(call_ref, ()):
            owner = self._owners.get(addr)
            if owner is not None and owner.call_ref == call_ref:
                del self._owners[addr]
                self._changes(addr)
        for party in Party:
            self._latched.pop((call_ref, party), None)
        self.version += 1

    def _changes(self, addr: Address) -> None:
        if self.on_change is not None:
            self.on_change(addr)

    def addresses(self, call_ref: str) -> dict[Address, Owner]:
        """The addresses currently mapped to a dialog (for diagnostics and tests)."""
        return {a: self._owners[a] for a in self._by_call.get(call_ref, ())
                if a in self._owners and self._owners[a].call_ref == call_ref}

    def ports(self) -> set[int]:
        """UDP ports of every SDP-registered address (what a capture filter must pass)."""
        return {addr[1] for addr, owner in self._owners.items() if not owner.latched}
