"""Replay a capture through the production core: the CDRs and verdicts live would give.

    pcap ─read_capture─► payloads ─┬─ RTP (UDP, 0x80..0xBF) ─► CallControl.on_packet
                                   └─ SIP ─► SipTracker ─► events ─► CallControl.on_event
    packet timestamps are the clock: CallControl.tick runs at every deadline on the way

Calls still up when the capture ends are ended at its last timestamp. Kamailio is not
there to obey an EndCall (credit exhausted, no media): such decisions are reported, and
the CDR is what the live sidecar would have written had Kamailio ended the call then.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from ..charging import Action, Cdr, CdrWritten, EndCall
from ..kamailio.events import Answer, Dialog, Early, End, Event, Failed, Offer
from ..media.frames import KeyedDatagram, udp4_fields
from ..media.pcap import CapturedPayload, CaptureReader, CaptureStats, PayloadFields
from ..money import fmt
from ..supervision.calls import CallControl
from ..supervision.media import MediaVerdict
from .signalling import SipStats, SipTracker


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

    def run(self, payloads: Iterable[CapturedPayload],
            progress: Callable[[], None] | None = None, every: int = 65536) -> ReplayResult:
        """Replay every payload; a reader's ``stats`` (read after the loop) are reported."""
        control = self.control
        on_packet = control.on_packet
        media = control.media
        # UDP/IPv4 datagrams of a capture file come with their addressing as on the wire
        # (CaptureReader.datagrams): a packet of a known media flow goes to the supervisor
        # by those bytes, and only what it matched to an answer awaiting media, or to
        # several dialogs, goes on to the call control (what on_packet does).
        datagram_key = media.datagram_key if media is not None else None
        matched = control.matched
        awaiting = control.awaiting_media()
        tracker = self.tracker
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

    # --- internals -----------------------------------------------------------------
    def _tick(self, now_ms: int) -> None:
        control = self.control
        while True:
            d = control.next_deadline()
            if d is None or d > now_ms:
                return
            self._actions(control.tick(d))

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
