"""Replay a capture through the production core: the CDRs and verdicts live would give.

    pcap ─read_capture─► payloads ─┬─ RTP (UDP, 0x80..0xBF) ─► CallControl.on_packet
                                   └─ SIP ─► SipTracker ─► events ─► CallControl.on_event
    packet timestamps are the clock: CallControl.tick runs at every deadline on the way

A capture file is read in blocks (:meth:`CaptureReader.blocks`) and the RTP of each
known flow is held back and handed to the media supervisor in runs (:class:`_Held`,
:meth:`MediaSupervisor.flow_run`), before anything could see or change its dialog: the
same facts as packet by packet, at a fraction of the cost per packet.

Calls still up when the capture ends are ended at its last timestamp. Kamailio is not
there to obey an EndCall (credit exhausted, no media): such decisions are reported, and
the CDR is what the live sidecar would have written had Kamailio ended the call then.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from ..charging import Action, Cdr, CdrWritten, EndCall
from ..kamailio.events import Answer, Dialog, Early, End, Event, Failed, Offer
from ..media.frames import KeyedDatagram, udp4_fields
from ..media.pcap import (
    CapturedPayload,
    CaptureReader,
    CaptureStats,
    PacketBlock,
    PayloadFields,
)
from ..money import fmt
from ..supervision.calls import CallControl
from ..supervision.media import MediaSupervisor, MediaVerdict, PacketRun, _Flow, rtp_columns
from .signalling import SipStats, SipTracker

_WINDOW = 256  # items looked at at once for the next one to handle alone
_WINDOW_MAX = 1 << 16
#: Once more than _ALONE_MIN items of a block, and more than this share of those read,
#: were handled alone, the rest of the block and this many blocks more are replayed one
#: item after the other (then holding back is tried again).
_ALONE_SHARE = 0.25
_ALONE_MIN = 2048
_ALONE_BLOCKS = 16


@dataclass
class CallReport:
    """One call of a replayed capture, as ``sidecar replay`` prints it."""

    call_id: str
    caller: str = ""
    callee: str = ""
    invite_ms: int | None = None
    ringing_ms: int | None = None
    answer_ms: int | None = None
    final_code: int | None = None
    ended_ms: int | None = None
    caller_media_ms: int | None = None  # first packet from the caller
    callee_media_ms: int | None = None  # first packet from the callee (early media too)
    billable_ms: int | None = None
    billable_seconds: int = 0
    cost: Decimal | None = None
    currency: str = ""
    disposition: str = ""
    verdict: str = ""
    reasons: str = ""
    route: str = ""
    would_end: str = ""  # an EndCall the live sidecar would have sent
    auth: str = ""  # why the charger refused the call ("" if it allowed it)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def signalled_ms(self) -> int | None:
        """200 OK -> end: how long the call was up as signalled, whatever is billed."""
        if self.answer_ms is None or self.ended_ms is None:
            return None
        return max(0, self.ended_ms - self.answer_ms)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "evidence"}
        d["signalled_ms"] = self.signalled_ms
        d["cost"] = None if self.cost is None else fmt(self.cost)
        d["evidence"] = self.evidence
        return d


@dataclass
class ReplayResult:
    calls: list[CallReport]
    cdrs: list[Cdr]
    capture: CaptureStats
    sip: SipStats
    packets: int
    rtp_packets: int
    first_ts: float | None
    last_ts: float | None


class _Held:
    """The RTP datagrams of one block of a capture file held back per flow.

    A datagram of a known flow that :meth:`MediaSupervisor.flow_deferrable` allows is not
    handed over when it is read: each flow's datagrams since the last hand-over go to
    :meth:`MediaSupervisor.flow_run` together, before anything could see or change the
    flow's dialog (an event of the dialog, a datagram handled one by one that touches it,
    a tick of media deadlines), when the flow changes (its cached entry dropped or
    replaced), and at the end of the block. So the supervisor sees every stream's
    datagrams in order and before whatever came after them, as one by one.

    Flows are numbered by their wire key (``ids``: per item, ``len(keys)`` for the items
    that are not RTP datagrams of the fast path). ``lazy[f]``: datagrams of flow ``f``
    are held back, from item ``start[f]`` on, for ``flow[f]``. Flows feeding one stream
    are always handed over together, merged in capture order. Datagrams of no dialog
    (``stray[f]``, see :meth:`MediaSupervisor.stray_deferrable`) are held back too, and
    only counted, until an owner of either of their addresses changes."""

    def __init__(self, block: PacketBlock, media: MediaSupervisor,
                 ids: npt.NDArray[np.int64], keys: list[bytes],
                 members: npt.NDArray[np.int64], bounds: list[int]) -> None:
        self.block = block
        self.media = media
        self.keys = keys
        self.fid_of_key = {k: i for i, k in enumerate(keys)}
        count = len(keys)
        # The flows' datagrams one flow after the other (``bounds``), each flow's in
        # capture order: what is handed over for a flow is a slice of these columns.
        self.members = members
        self.bounds = bounds
        self.ts_ms = block.ts_ms[members]
        self.pstart = block.pstart[members]
        self.pend = block.pend[members]
        new_flow = np.zeros(len(members), dtype=np.bool_)
        new_flow[bounds[:-1]] = True
        (self.chained, self.payload_type, self.seq, self.rtp_ts,
         self.ssrc) = rtp_columns(block.gather(self.pstart, 12), self.pend - self.pstart,
                                  new_flow)
        self.lazy = np.zeros(count + 1, dtype=np.bool_)
        self.flow: list[_Flow | None] = [None] * count
        self.start = [0] * count
        self.by_ref: dict[str, set[int]] = {}  # held flows by dialog
        self.by_stream: dict[int, set[int]] = {}  # ... and by (the id of) their stream
        # Flows of no dialog held back (only counted), and by their two addresses.
        self.stray = [False] * count
        self.strays: set[int] = set()
        self.by_address: dict[tuple[str, int], set[int]] = {}
        self.pos = 0  # the item being handled: everything before it is read
        self.touched: set[str] = set()  # dialogs the item's events were for
        for f in range(count):
            self.refresh(f, 0)

    def flush(self, f: int, upto: int) -> None:
        """Hand over the datagrams held back before item ``upto`` of flow ``f`` and of
        every other flow feeding the same stream (a party sending from two ports, or
        audio and video: one stream), merged in capture order."""
        flow = self.flow[f]
        members, bounds, start = self.members, self.bounds, self.start
        if flow is None:
            if self.stray[f] and start[f] < upto:  # of no dialog: only counted
                first = bounds[f]
                i0, i1 = members[first : bounds[f + 1]].searchsorted([start[f], upto])
                start[f] = upto
                self.media.count_stray(int(i1 - i0))
            return
        ranges: list[tuple[int, int]] = []
        for g in self.by_stream[id(flow.stream)]:
            lo = start[g]
            if lo >= upto:
                continue
            start[g] = upto
            first = bounds[g]
            i0, i1 = members[first : bounds[g + 1]].searchsorted([lo, upto]).tolist()
            if i0 < i1:
                ranges.append((first + i0, first + i1))
        if not ranges:
            return
        b = self.block
        if len(ranges) == 1:
            i0, i1 = ranges[0]
            run = PacketRun(self.ts_ms[i0:i1], self.pstart[i0:i1], self.pend[i0:i1],
                            self.chained[i0:i1], self.payload_type[i0:i1], self.seq[i0:i1],
                            self.rtp_ts[i0:i1], self.ssrc[i0:i1], b.data, b.view)
        else:
            idx = np.concatenate([np.arange(i0, i1) for i0, i1 in ranges])
            idx = idx[np.argsort(members[idx], kind="stable")]
            # Not chained: the flows' datagrams interleave, counted one by one.
            run = PacketRun(self.ts_ms[idx], self.pstart[idx], self.pend[idx],
                            np.zeros(len(idx), dtype=np.bool_), self.payload_type[idx],
                            self.seq[idx], self.rtp_ts[idx], self.ssrc[idx], b.data, b.view)
        self.media.flow_run(flow, run)

    def flush_ref(self, ref: str) -> None:
        """Hand over the held datagrams of the dialog ``ref`` (about to be touched)."""
        for f in self.by_ref.get(ref, ()):
            self.flush(f, self.pos)

    def flush_all(self, upto: int) -> None:
        for fs in self.by_ref.values():
            for f in fs:
                self.flush(f, upto)
        for f in self.strays:
            self.flush(f, upto)

    def refresh(self, f: int, upto: int) -> None:
        """Flow ``f`` after item ``upto - 1``: held back from ``upto`` on if it may be,
        what was held for a flow that changed handed over first."""
        media = self.media
        flow = media.flow_for_key(self.keys[f])
        ok = flow is not None and media.flow_deferrable(flow)
        fields = udp4_fields(self.keys[f])
        stray = flow is None and media.stray_deferrable(*fields)
        old = self.flow[f]
        if old is not None:
            if ok and flow is old:
                return
            self.flush(f, upto)
            _discard(self.by_ref, old.call_ref, f)
            _discard(self.by_stream, id(old.stream), f)
            self.flow[f] = None
        elif self.stray[f]:
            if stray:
                return
            self.flush(f, upto)
            self.stray[f] = False
            self.strays.discard(f)
            for addr in ((fields[0], fields[1]), (fields[2], fields[3])):
                _discard(self.by_address, addr, f)
        if ok and flow is not None:
            self.flow[f] = flow
            self.start[f] = upto
            self.by_ref.setdefault(flow.call_ref, set()).add(f)
            self.by_stream.setdefault(id(flow.stream), set()).add(f)
        elif stray:
            self.stray[f] = True
            self.strays.add(f)
            self.start[f] = upto
            for addr in ((fields[0], fields[1]), (fields[2], fields[3])):
                self.by_address.setdefault(addr, set()).add(f)
        self.lazy[f] = ok or stray

    def after(self, p: int, own: int, changed: list[bytes],
              addresses: list[tuple[str, int]]) -> None:
        """Item ``p`` was handled (a datagram of flow ``own``, or ``-1``): flows it may
        have changed are looked at again (``changed``: wire keys of flows dropped;
        ``addresses``: addresses whose owner changed)."""
        check: set[int] = set()
        for addr in addresses:
            check.update(self.by_address.get(addr, ()))
        addresses.clear()
        if own >= 0:
            check.add(own)
        for ref in self.touched:
            check.update(self.by_ref.get(ref, ()))
        self.touched.clear()
        fid_of_key = self.fid_of_key
        for key in changed:
            f = fid_of_key.get(key)
            if f is not None:
                check.add(f)
        changed.clear()
        for f in check:
            self.refresh(f, p + 1)


def _discard(index: dict[Any, set[int]], key: object, f: int) -> None:
    fs = index[key]
    fs.discard(f)
    if not fs:
        del index[key]


class Replay:
    """Drive a :class:`CallControl` from captured payloads."""

    def __init__(self, control: CallControl, tracker: SipTracker | None = None, *,
                 account_override: str = "") -> None:
        self.control = control
        control.keep_verdicts = True
        self.tracker = tracker or SipTracker()
        self.account_override = account_override
        self.reports: dict[str, CallReport] = {}
        self.cdrs: list[Cdr] = []
        self.packets = 0
        self.rtp_packets = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self._held: _Held | None = None

    def run(self, payloads: Iterable[CapturedPayload],
            progress: Callable[[], None] | None = None, every: int = 65536) -> ReplayResult:
        """Replay every payload; a reader's ``stats`` (read after the loop) are reported."""
        control = self.control
        media = control.media
        if media is not None and isinstance(payloads, CaptureReader):
            count, rtp, last_ms = self._run_blocks(payloads.blocks(), media, progress)
            return self._finish(payloads, count, rtp, last_ms)
        on_packet = control.on_packet
        # UDP/IPv4 datagrams of a capture file come with their addressing as on the wire
        # (CaptureReader.datagrams): a packet of a known media flow goes to the supervisor
        # by those bytes, and only what it matched to an answer awaiting media, or to
        # several dialogs, goes on to the call control (what on_packet does).
        datagram_key = media.datagram_key if media is not None else None
        matched = control.matched
        awaiting = control.awaiting_media()
        deadline = control.next_deadline()
        count = rtp = 0
        last_ms = 0
        first_ts = self.first_ts
        # A capture file's own iterator of plain tuples: no NamedTuple per packet.
        source: Iterable[PayloadFields | KeyedDatagram] = (
            payloads.datagrams() if isinstance(payloads, CaptureReader) else payloads)
        for p in source:
            timestamp = p[0]
            count += 1
            if first_ts is None:
                first_ts = self.first_ts = timestamp
            ts_ms = int(timestamp * 1000)
            if deadline is not None and ts_ms >= deadline:
                self._tick(ts_ms)
                deadline = control.next_deadline()
            last_ms = ts_ms
            if len(p) == 3:  # a UDP/IPv4 datagram by its addressing (KeyedDatagram)
                _, key, payload = p
                if payload and 0x80 <= payload[0] <= 0xBF:
                    rtp += 1
                    if datagram_key is not None and media is not None:
                        ref = datagram_key(ts_ms, key, payload)
                        if media.shared_hits or ref in awaiting:
                            actions = matched(ref, ts_ms)
                            if actions:
                                self._actions(actions)
                                deadline = control.next_deadline()
                    if progress is not None and not count % every:
                        progress()
                    continue
                src_ip, src_port, dst_ip, dst_port = udp4_fields(key)
                if self._sip(CapturedPayload(timestamp, src_ip, src_port, dst_ip, dst_port,
                                             "udp", payload)):
                    deadline = control.next_deadline()
                if progress is not None and not count % every:
                    progress()
                continue
            _, src_ip, src_port, dst_ip, dst_port, transport, payload = p
            if payload and 0x80 <= payload[0] <= 0xBF and transport == "udp":
                rtp += 1
                actions = on_packet(ts_ms, src_ip, src_port, dst_ip, dst_port, payload)
                if actions:
                    self._actions(actions)
                    deadline = control.next_deadline()
            else:
                if self._sip(p if isinstance(p, CapturedPayload) else CapturedPayload(*p)):
                    deadline = control.next_deadline()
            if progress is not None and not count % every:
                progress()
        return self._finish(payloads, count, rtp, last_ms)

    def _finish(self, payloads: Iterable[CapturedPayload], count: int, rtp: int,
                last_ms: int) -> ReplayResult:
        tracker = self.tracker
        if count:
            self.last_ts = last_ms / 1000
        for ev in tracker.finish():
            self._event(ev)
        # Calls still up at the end of the capture end there.
        for ref in list(self.reports):
            r = self.reports[ref]
            if r.ended_ms is None:  # answered and still up, or still ringing
                self._event(End(Dialog(ref, 0, 0, last_ms * 1000), "", "capture ended",
                                r.answer_ms or 0))
        self.packets, self.rtp_packets = count, rtp
        capture_stats = getattr(payloads, "stats", None)
        if not isinstance(capture_stats, CaptureStats):
            capture_stats = CaptureStats()
        return ReplayResult(list(self.reports.values()), self.cdrs, capture_stats,
                            tracker.stats, count, rtp, self.first_ts, self.last_ts)

    def _run_blocks(self, blocks: Iterator[PacketBlock], media: MediaSupervisor,
                    progress: Callable[[], None] | None) -> tuple[int, int, int]:
        """:meth:`run` over a capture file's blocks: RTP datagrams of known flows are
        held back per flow and handed over in runs (:class:`_Held`); every other item is
        handled as :meth:`run` handles it, in order. Returns items, RTP items and the
        last item's time (ms)."""
        control = self.control
        matched = control.matched
        awaiting = control.awaiting_media()
        deadline = control.next_deadline()
        count = rtp = last_ms = 0
        alone_blocks = 0  # blocks still to replay one item after the other
        changed: list[bytes] = []
        addresses: list[tuple[str, int]] = []
        media.key_log = changed
        media.address_log = addresses
        try:
            for block in blocks:
                n = block.n
                if not n:
                    continue
                if self.first_ts is None:
                    self.first_ts = float(block.ts[0])
                count += n
                ts_ms = block.ts_ms
                pstart = block.pstart
                first = block.view[np.minimum(pstart, len(block.data) - 1)]
                rtpish = block.fast & (block.pend > pstart) & (first >= 0x80) & (first <= 0xBF)
                rtp += int(np.count_nonzero(rtpish))
                if alone_blocks:
                    alone_blocks -= 1
                    deadline, slow_rtp = self._one_by_one(block, rtpish, deadline)
                    rtp += slow_rtp
                    last_ms = int(ts_ms[-1])
                    if progress is not None:
                        progress()
                    continue
                ids, keys, members, bounds = block.flow_ids(rtpish)
                changed.clear()
                addresses.clear()
                held = self._held = _Held(block, media, ids, keys, members, bounds)
                stops = 0
                nkeys = len(keys)
                alone = ~rtpish  # items handled one by one whatever their flow
                lazy = held.lazy
                cur = 0
                window = _WINDOW
                while cur < n:
                    end = min(n, cur + window)
                    stop = alone[cur:end] | ~lazy[ids[cur:end]]
                    if deadline is not None:
                        stop |= ts_ms[cur:end] >= deadline
                    i = int(stop.argmax())
                    if not stop[i]:
                        cur = end
                        window = min(window * 2, _WINDOW_MAX)
                        continue
                    window = _WINDOW
                    stops += 1
                    p = held.pos = cur + i
                    ts = int(ts_ms[p])
                    if deadline is not None and ts >= deadline:
                        self._tick(ts)  # then item p as usual
                        deadline = control.next_deadline()
                        cur = p
                        continue
                    f = int(ids[p])
                    if f < nkeys:  # a datagram of a flow not held back now
                        key = keys[f]
                        refs = media.dialogs_of(*udp4_fields(key))
                        for r in refs:
                            held.flush_ref(r)
                        held.touched.update(refs)
                        ref = media.datagram_key(ts, key, block.payload(p))
                        if media.shared_hits or ref in awaiting:
                            actions = matched(ref, ts)
                            if actions:
                                self._actions(actions)
                                deadline = control.next_deadline()
                    elif block.fast[p]:
                        src_ip, src_port, dst_ip, dst_port = udp4_fields(block.key(p))
                        if self._sip(CapturedPayload(float(block.ts[p]), src_ip, src_port,
                                                     dst_ip, dst_port, "udp",
                                                     block.payload(p))):
                            deadline = control.next_deadline()
                        f = -1
                    else:
                        f = -1
                        was_rtp, moved = self._decoded(ts, block.slow[p], held)
                        rtp += was_rtp
                        if moved:
                            deadline = control.next_deadline()
                    held.after(p, f, changed, addresses)
                    cur = p + 1
                    if stops > _ALONE_MIN and stops > cur * _ALONE_SHARE:
                        # Mostly handled alone (flows shared by B2BUA legs, say): holding
                        # back costs more than it saves. The rest one by one, and the
                        # next blocks too.
                        held.flush_all(cur)
                        self._held = None
                        deadline, slow_rtp = self._one_by_one(block, rtpish, deadline, cur)
                        rtp += slow_rtp
                        alone_blocks = _ALONE_BLOCKS
                        break
                else:
                    held.flush_all(n)
                self._held = None
                last_ms = int(ts_ms[-1])
                if progress is not None:
                    progress()
        finally:
            media.key_log = media.address_log = None
            self._held = None
        return count, rtp, last_ms

    def _one_by_one(self, block: PacketBlock, rtpish: npt.NDArray[np.bool_],
                    deadline: int | None, start: int = 0) -> tuple[int | None, int]:
        """A block's items from ``start`` on replayed one after the other, as :meth:`run`
        replays payloads (nothing held back). Returns the next deadline and how many of
        them the frame decoder gave were RTP."""
        control = self.control
        media = control.media
        assert media is not None
        matched = control.matched
        awaiting = control.awaiting_media()
        datagram_key = media.datagram_key
        data, slow = block.data, block.slow
        slow_rtp = 0
        for p, (ts, is_rtp, fast, k, a, b) in enumerate(zip(
                block.ts_ms[start:].tolist(), rtpish[start:].tolist(),
                block.fast[start:].tolist(), block.kstart[start:].tolist(),
                block.pstart[start:].tolist(), block.pend[start:].tolist(), strict=True),
                start):
            if deadline is not None and ts >= deadline:
                self._tick(ts)
                deadline = control.next_deadline()
            if is_rtp:
                ref = datagram_key(ts, data[k : k + 12], data[a:b])
                if media.shared_hits or ref in awaiting:
                    actions = matched(ref, ts)
                    if actions:
                        self._actions(actions)
                        deadline = control.next_deadline()
            elif fast:
                src_ip, src_port, dst_ip, dst_port = udp4_fields(data[k : k + 12])
                if self._sip(CapturedPayload(float(block.ts[p]), src_ip, src_port, dst_ip,
                                             dst_port, "udp", data[a:b])):
                    deadline = control.next_deadline()
            else:
                was_rtp, moved = self._decoded(ts, slow[p], None)
                slow_rtp += was_rtp
                if moved:
                    deadline = control.next_deadline()
        return deadline, slow_rtp

    # --- internals -----------------------------------------------------------------
    def _tick(self, now_ms: int) -> None:
        control = self.control
        held = self._held
        if held is not None and control.media is not None:
            due = control.media.next_deadline()
            if due is not None and due <= now_ms:  # media deadlines read its dialogs
                held.flush_all(held.pos)
        while True:
            d = control.next_deadline()
            if d is None or d > now_ms:
                return
            self._actions(control.tick(d))

    def _decoded(self, ts: int, item: Any, held: _Held | None) -> tuple[bool, bool]:
        """A packet the frame decoder handled, on its own: RTP to media supervision (with
        ``held``, after the held-back runs of the calls it belongs to), anything else to
        the signalling. Returns (it was RTP, the next deadline may have moved)."""
        _, src_ip, src_port, dst_ip, dst_port, transport, payload = item
        if payload and 0x80 <= payload[0] <= 0xBF and transport == "udp":
            control = self.control
            if held is not None:
                assert control.media is not None
                refs = control.media.dialogs_of(src_ip, src_port, dst_ip, dst_port)
                for r in refs:
                    held.flush_ref(r)
                held.touched.update(refs)
            actions = control.on_packet(ts, src_ip, src_port, dst_ip, dst_port, payload)
            if actions:
                self._actions(actions)
                return True, True
            return True, False
        return False, self._sip(item if isinstance(item, CapturedPayload)
                                else CapturedPayload(*item))

    def _sip(self, captured: CapturedPayload) -> bool:
        """Feed a payload that looks like SIP to the signalling tracker and handle the
        events it completes; False when it is not SIP."""
        if not self.tracker.looks_like_sip(captured):
            return False
        for ev in self.tracker.feed(captured):
            self._event(ev)
        return True

    def _event(self, ev: Event) -> None:
        now = ev.dialog.ts_ms
        held = self._held
        if held is not None:  # the dialog's held datagrams came before the event
            held.flush_ref(ev.dialog.call_id)
            held.touched.add(ev.dialog.call_id)
        self._tick(now)
        ref = ev.dialog.call_id
        r = self.reports.get(ref)
        if isinstance(ev, Offer):
            if r is not None:
                return
            r = self.reports[ref] = CallReport(ref, ev.pai_user or ev.from_user, ev.ruri_user,
                                               invite_ms=now)
            if self.account_override:
                ev = replace(ev, account_code=self.account_override)
        elif r is None:
            return
        elif isinstance(ev, Early):
            if r.ringing_ms is None:
                r.ringing_ms = now
        elif isinstance(ev, Answer):
            if r.answer_ms is None:
                r.answer_ms, r.final_code, r.route = now, 200, ev.route or r.route
        elif isinstance(ev, End):
            if r.ended_ms is None:
                r.ended_ms = now
        elif isinstance(ev, Failed) and r.final_code is None:
            r.final_code, r.ended_ms, r.route = ev.code, now, ev.route or r.route
        decision, actions = self.control.on_event(ev, now)
        if decision is not None and not decision.allow:
            r.auth = f"{decision.code} {decision.reason}"
        self._actions(actions)
        if isinstance(ev, End | Failed):
            v = self.control.verdicts.pop(ref, None)
            if v is not None:
                self._verdict(r, v)

    def _verdict(self, r: CallReport, v: MediaVerdict) -> None:
        ev = v.evidence
        r.caller_media_ms = ev["caller"]["first_ms"]
        r.callee_media_ms = ev["callee"]["first_ms"]
        r.verdict, r.reasons, r.evidence = v.verdict.value, v.reason_text, ev
        if r.billable_ms is None:  # no CDR came with a charged start
            r.billable_ms = v.billable_ms
            if v.billable_ms is not None and r.ended_ms is not None:
                r.billable_seconds = math.ceil(max(0, r.ended_ms - v.billable_ms) / 1000)
        if not r.disposition:
            r.disposition = ("no-media" if v.answered and v.billable_ms is None
                             else "answered" if v.answered else "failed")

    def _actions(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, CdrWritten):
                c = a.cdr
                self.cdrs.append(c)
                r = self.reports.get(c.call_ref)
                if r is None:
                    continue
                r.disposition = c.disposition.value
                if c.cost or c.billed_seconds or c.disposition.value == "answered":
                    r.cost, r.currency = c.cost, c.currency
                    r.billable_ms, r.billable_seconds = c.billable_ms, c.billed_seconds
                r.route = r.route or c.route
            elif isinstance(a, EndCall):
                r = self.reports.get(a.call_ref)
                if r is not None and not r.would_end:
                    r.would_end = f"{a.reason} at {a.at_ms}"
