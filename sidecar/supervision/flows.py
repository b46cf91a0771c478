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

An address can also be *shared*: the two legs of a B2BUA (or a hairpinned call) whose
media goes directly between the two endpoints both name the same endpoint addresses (in
their offer and answer, or after a re-INVITE moved the media). An SDP registered with a
``share`` predicate keeps the dialog that held the address as a second owner when the
predicate says that dialog is still live (:class:`~.media.MediaSupervisor`: offered and
not ended); :meth:`FlowTable.sharers` gives the other dialogs a packet is evidence for.
An address of a dialog that is over, or one learnt by latching, is a reused port: the
new dialog takes it over.
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
        self._also: dict[Address, list[Owner]] = {}  # further owners of shared addresses
        self._by_call: dict[str, set[Address]] = {}
        self._latched: dict[tuple[str, Party], int] = {}
        self.version = 0  # bumped when the set of SDP addresses changes (capture filters)
        # Called with each address whose owner is set, replaced or removed (latching
        # included): a cache of classify() results for (src, dst) stays right until it is
        # called with src or dst. The media supervisor keeps such a cache.
        self.on_change: Callable[[Address], None] | None = None

    def __len__(self) -> int:
        return len(self._owners)

    def register(self, call_ref: str, party: Party, addresses: list[Address],
                 share: Callable[[str], bool] | None = None) -> None:
        """``party`` of ``call_ref`` receives media at ``addresses`` (its latest SDP:
        replaces what its earlier SDP said). An address another dialog holds is taken
        over, unless ``share`` says that dialog is to keep it beside this one."""
        mine = self._by_call.setdefault(call_ref, set())
        me = Owner(call_ref, party, False)
        for addr in [a for a in mine
                     if self._owners.get(a) == me or me in self._also.get(a, ())]:
            if addr not in addresses:
                self._drop(addr, call_ref)
                mine.discard(addr)
        for addr in addresses:
            previous = self._owners.get(addr)
            also = self._also.get(addr)
            if also is not None:  # this dialog is primary now, never also a sharer
                also[:] = [o for o in also if o.call_ref != call_ref]
            if previous is not None and previous.call_ref != call_ref:
                if share is not None and not previous.latched and share(previous.call_ref):
                    also = self._also.setdefault(addr, [])
                    also.insert(0, previous)
                else:  # a reused port: every earlier owner loses it
                    for o in [previous, *self._also.pop(addr, ())]:
                        other = self._by_call.get(o.call_ref)
                        if other is not None:
                            other.discard(addr)
            if not self._also.get(addr, True):
                del self._also[addr]
            self._owners[addr] = me
            mine.add(addr)
            self._changes(addr)
        self.version += 1

    def _drop(self, addr: Address, call_ref: str) -> None:
        """``call_ref`` no longer owns ``addr``: a dialog sharing it becomes its owner."""
        owner = self._owners.get(addr)
        also = self._also.get(addr)
        if owner is not None and owner.call_ref == call_ref:
            if also:
                self._owners[addr] = also.pop(0)
            else:
                del self._owners[addr]
        elif also:
            also[:] = [o for o in also if o.call_ref != call_ref]
        else:
            return
        if also is not None and not also:
            del self._also[addr]
        self._changes(addr)

    def sharers(self, src: Address, dst: Address) -> list[tuple[str, Party]]:
        """The dialogs, besides the one :meth:`classify` gives, that a packet is evidence
        for (shared addresses), with the sending party in each."""
        if not self._also:
            return []
        if dst in self._owners:
            return [(o.call_ref, o.party.other) for o in self._also.get(dst, ())]
        return [(o.call_ref, o.party) for o in self._also.get(src, ())]

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

    def peek(self, src: Address, dst: Address) -> str | None:
        """The dialog :meth:`classify` would give a packet, without learning anything."""
        owner = self._owners.get(dst) or self._owners.get(src)
        return None if owner is None else owner.call_ref

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
        """The dialog ended: drop its addresses (those no newer dialog took over; one it
        shared stays with the other dialog)."""
        for addr in self._by_call.pop(call_ref, ()):
            self._drop(addr, call_ref)
        for party in Party:
            self._latched.pop((call_ref, party), None)
        self.version += 1

    def _changes(self, addr: Address) -> None:
        if self.on_change is not None:
            self.on_change(addr)

    def addresses(self, call_ref: str) -> dict[Address, Owner]:
        """The addresses currently mapped to a dialog (for diagnostics and tests)."""
        out = {a: self._owners[a] for a in self._by_call.get(call_ref, ())
               if a in self._owners and self._owners[a].call_ref == call_ref}
        for a in self._by_call.get(call_ref, ()):
            for o in self._also.get(a, ()):
                if o.call_ref == call_ref:
                    out[a] = o
        return out

    def ports(self) -> set[int]:
        """UDP ports of every SDP-registered address (what a capture filter must pass)."""
        return {addr[1] for addr, owner in self._owners.items() if not owner.latched}
