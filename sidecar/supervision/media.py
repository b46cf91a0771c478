"""Media supervision of dialogs: answer confirmed by RTP, and False Answer Supervision.

:class:`MediaSupervisor` is told about each dialog's signalling (offer, provisional
replies, answer, SDP updates, end) and about every captured UDP packet, with times as
arguments. At the end of a dialog it gives a :class:`MediaVerdict`:

* **billable start**: the 200 OK, once the callee's media is seen within the grace
  window (default 2 s) after it; the first callee packet if media starts later; none
  (not billed) if the callee sent no media after the 200 OK. Early media before the
  200 OK is never billed.
* **FAS verdict** with reasons: ``no-media``, ``late-media``, ``ringback`` (a ringing
  tone in the callee's G.711 stream in the first 10 s after the 200 OK), ``silence``
  (the callee's stream silent for the whole call or most of it). ``""`` is a clean call.
* **Capture coverage**: a call without any media can only be judged ``no-media`` if the
  capture could have seen its media. Until the capture has carried RTP of the call's
  address family (from any call) and while the call itself showed none, its verdict is
  ``media-not-captured``: billed from the 200 OK, never a FAS verdict, with a warning (a
  capture of the signalling alone, a capture on an interface the media does not cross).

An instant answer (200 OK within a few hundred ms, no ringing) is recorded as evidence
but is not a verdict on its own: an IVR answers that way and plays a real prompt. Route
statistics (:mod:`.routes`) judge instant answers over many calls.

Live, :meth:`MediaSupervisor.tick` also reports answered calls that have had no callee
media for a configured time, so the sidecar can end them.
"""

from __future__ import annotations

import heapq
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt

from ..media.frames import udp4_fields
from ..media.g711 import Codec, codec_for_payload_type
from ..media.rtp import parse_rtp
from ..media.sdp import SdpError, SessionDescription, parse_sdp
from ..media.tones import SAMPLE_RATE, RingbackDetector, SilenceDetector
from .flows import Address, FlowTable, Party

log = logging.getLogger("sidecar.supervision")

_unpack_rtp = struct.Struct("!BBHII").unpack_from  # the RTP fixed header (see media.rtp)
#: More cached flows than this (a sender hopping ports) and the cache starts afresh.
_FLOW_CACHE_LIMIT = 8192
_FlowKey = tuple[str, int, str, int]  # src ip, src port, dst ip, dst port
_SIP_PORTS = frozenset({5060, 5061})
#: The callee's audio is given to the FAS detectors this many packets at a time (about
#: 1.3 s of 20 ms packets: a few KB per call).
_AUDIO_BATCH = 64
#: Fewer packets than this in a run (flow_run) are counted one by one.
_RUN_MIN = 8
_RTP_MEDIA = frozenset({"audio", "video"})  # m= lines whose RTP shows the party is there


class Verdict(StrEnum):
    CLEAN = ""
    NO_MEDIA = "no-media"
    LATE_MEDIA = "late-media"
    RINGBACK = "ringback"
    SILENCE = "silence"
    #: Not a FAS verdict: the capture carried no RTP that could be this call's, so its
    #: absence proves nothing; billed from the 200 OK.
    NOT_CAPTURED = "media-not-captured"


#: The False Answer Supervision verdicts (what route statistics and `sidecar fas` count).
FAS_VERDICTS = frozenset({Verdict.NO_MEDIA, Verdict.LATE_MEDIA, Verdict.RINGBACK,
                          Verdict.SILENCE})
#: Verdicts whose charge is credited: the answer was false, whatever the duration.
CREDITED_VERDICTS = frozenset({Verdict.RINGBACK, Verdict.SILENCE})


@dataclass(frozen=True)
class MediaConfig:
    """Tunables of media supervision (``[media]`` in the configuration)."""

    grace_ms: int = 2_000  # callee media this soon after the 200 OK confirms the answer
    ringback_window_ms: int = 10_000  # look for ringing tone this long after the 200 OK
    silence_share: float = 0.95  # silent frames / all frames at or above this: silence
    silence_min_ms: int = 3_000  # judge silence only on at least this much callee audio
    instant_answer_ms: int = 300  # 200 OK this soon after the INVITE, with no 18x
    end_without_media_ms: int = 0  # live: end answered calls with no callee media (0: never)


@dataclass(slots=True)
class Stream:
    """One direction of a dialog's media."""

    packets: int = 0
    octets: int = 0  # RTP payload bytes
    first_ms: int | None = None
    last_ms: int | None = None
    first_after_answer_ms: int | None = None
    before_answer: int = 0  # packets before the 200 OK (early media)
    max_gap_ms: int = 0  # longest silence between packets after the first
    lost: int = 0  # sequence numbers skipped
    ssrcs: int = 0  # distinct SSRCs seen in a row (changes + 1)
    last_ssrc: int | None = None
    next_seq: int | None = None
    next_ts: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"packets": self.packets, "octets": self.octets, "first_ms": self.first_ms,
                "last_ms": self.last_ms, "first_after_answer_ms": self.first_after_answer_ms,
                "before_answer": self.before_answer, "max_gap_ms": self.max_gap_ms,
                "lost": self.lost, "ssrcs": self.ssrcs}


@dataclass
class DialogMedia:
    """What is known of one dialog's signalling and media."""

    call_ref: str
    invite_ms: int
    ringing_ms: int | None = None  # first 18x
    early_sdp_ms: int | None = None  # first 18x with SDP
    answer_ms: int | None = None
    ended_ms: int | None = None
    codecs: dict[Party, dict[int, Codec]] = field(default_factory=dict)
    origins: dict[Party, str] = field(default_factory=dict)
    streams: dict[Party, Stream] = field(
        default_factory=lambda: {Party.CALLER: Stream(), Party.CALLEE: Stream()})
    ringback: RingbackDetector | None = None
    ringback_base_ms: int | None = None  # arrival time of the first sample fed to it
    ringback_at_ms: int | None = None  # when the ringing run started (ms since the 200 OK)
    ringback_tone: str = ""
    silence: SilenceDetector | None = None
    ended_for_no_media: bool = False
    families: set[int] = field(default_factory=set)  # IP versions of its SDP addresses
    flowed: bool = False  # some datagram (RTP, RTCP, anything) seen on its media flows
    #: Where its media facts came from besides the capture ("rtpengine": a relay's
    #: counters, see MediaSupervisor.media_seen), and per party the relay's last count
    #: (when, packets and bytes in all).
    source: str = ""
    counted: dict[Party, tuple[int, int, int]] = field(default_factory=dict)
    # RTP payload type -> codec (None: not G.711), looked up from ``codecs`` when first
    # seen; cleared whenever an SDP of the dialog is read.
    payload_codecs: dict[int, Codec | None] = field(default_factory=dict, repr=False,
                                                    compare=False)
    # The callee's G.711 audio after the 200 OK not yet given to the FAS detectors, in
    # order: payloads, and the samples lost between them (int), all of ``audio_codec``.
    # Fed in batches (feed_audio): one call of each detector per batch.
    audio: list[bytes | int] = field(default_factory=list, repr=False, compare=False)
    audio_codec: Codec | None = field(default=None, repr=False, compare=False)
    audio_gaps: bool = field(default=False, repr=False, compare=False)  # ints in audio

    @property
    def callee(self) -> Stream:
        return self.streams[Party.CALLEE]

    def feed_audio(self) -> None:
        """Feed the callee's queued audio (:attr:`audio`) to the ringback and silence
        detectors: each run of payloads joined into one call, the samples lost between
        runs as discontinuities; a ringing tone found sets :attr:`ringback_at_ms`. What a
        detector finds in a stream does not depend on how the stream is cut into calls."""
        items, codec = self.audio, self.audio_codec
        if not items or codec is None:
            return
        ring, silence = self.ringback, self.silence
        if not self.audio_gaps:  # one run, the usual case
            batch: list[bytes | int] = [b"".join(cast("list[bytes]", items)), 0]
        else:
            batch = [*items, 0]
            self.audio_gaps = False
        items.clear()
        run: list[bytes] = []
        for item in batch:
            if isinstance(item, bytes):
                run.append(item)
                continue
            if run:
                audio = run[0] if len(run) == 1 else b"".join(run)
                run = []
                if ring is not None and not ring.finished:
                    found = ring.feed(audio, codec)
                    if found is not None and self.ringback_base_ms is not None \
                            and self.answer_ms is not None:
                        self.ringback_at_ms = (self.ringback_base_ms + round(found.start_ms)
                                               - self.answer_ms)
                        self.ringback_tone = found.tone.name
                if silence is not None:
                    silence.feed(audio, codec)
            if item:  # samples lost before the next payload
                if ring is not None and not ring.finished:
                    ring.discontinuity(item)
                if silence is not None:
                    silence.discontinuity(item)

    @property
    def caller(self) -> Stream:
        return self.streams[Party.CALLER]


@dataclass(frozen=True)
class MediaVerdict:
    """The outcome of a dialog's media supervision."""

    call_ref: str
    answered: bool
    billable_ms: int | None  # None: not billed (not answered, or no callee media)
    verdict: Verdict
    reasons: tuple[str, ...]
    evidence: dict[str, Any]

    @property
    def credited(self) -> bool:
        """True if the call's charge is to be credited back (a false answer)."""
        return self.verdict in CREDITED_VERDICTS

    @property
    def reason_text(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class NoMedia:
    """An answered call has had no callee media for ``for_ms``: end it (live only)."""

    call_ref: str
    for_ms: int
    at_ms: int


class _Flow:
    """A (source, destination) pair known to carry one party's media in one dialog.

    Cached by :class:`MediaSupervisor` so a packet of a known flow skips the flow table
    and the dialog lookup. An entry is dropped as soon as the owner of its source or its
    destination address changes in the flow table (:attr:`FlowTable.on_change`): a new
    SDP, a latched address, a port taken over by another dialog, or the dialog's end.
    """

    __slots__ = ("also", "call_ref", "callee", "dialog", "key", "stream")

    def __init__(self, call_ref: str, dialog: DialogMedia, sender: Party) -> None:
        self.call_ref = call_ref
        self.dialog = dialog
        self.stream = dialog.streams[sender]
        self.callee = sender is Party.CALLEE
        #: The same packets' flows in the other dialogs sharing the address (B2BUA legs).
        self.also: tuple[_Flow, ...] = ()
        #: Its addressing as on the wire, once a packet came by that (datagram_key).
        self.key: bytes | None = None


class PacketRun(NamedTuple):
    """Datagrams of one flow in capture order (:meth:`MediaSupervisor.flow_run`), as
    columns: capture time (ms), where each payload lies in ``data`` (``view``: the same
    bytes as a NumPy array), and what :func:`rtp_columns` reads of their RTP headers."""

    ts_ms: npt.NDArray[np.int64]
    start: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    chained: npt.NDArray[np.bool_]
    payload_type: npt.NDArray[np.int64]
    seq: npt.NDArray[np.int64]
    timestamp: npt.NDArray[np.int64]
    ssrc: npt.NDArray[np.int64]
    data: bytes
    view: npt.NDArray[np.uint8]


class RtpColumns(NamedTuple):
    """What :func:`rtp_columns` reads (see there)."""

    chained: npt.NDArray[np.bool_]
    payload_type: npt.NDArray[np.int64]
    seq: npt.NDArray[np.int64]
    timestamp: npt.NDArray[np.int64]
    ssrc: npt.NDArray[np.int64]


def rtp_columns(header: npt.NDArray[np.uint8], size: npt.NDArray[np.int64],
                new_flow: npt.NDArray[np.bool_]) -> RtpColumns:
    """The RTP fields of datagrams grouped by flow (each flow's in capture order; a
    flow starts where ``new_flow`` is set), from the first 12 bytes of each payload
    (``header``: any bytes where ``size``, the payload's length, is under 12):
    ``chained`` (plain RTP, the first byte 0x80 and not RTCP, that continues the
    datagram before it unless it is its flow's first: same SSRC and payload type, the
    next sequence number), payload type, sequence number, timestamp and SSRC.
    :meth:`MediaSupervisor.flow_run` counts a run whose datagrams are all chained
    at once."""
    b1 = header[:, 1].astype(np.int64)
    plain = (header[:, 0] == 0x80) & ((b1 < 192) | (b1 > 223)) & (size >= 12)
    words = np.ascontiguousarray(header).view(">u2")
    seq = words[:, 1].astype(np.int64)
    longs = np.ascontiguousarray(header[:, 4:]).view(">u4")
    timestamp = longs[:, 0].astype(np.int64)
    ssrc = longs[:, 1].astype(np.int64)
    payload_type = b1 & 0x7F
    chained = plain.copy()
    follows = (plain[:-1] & (ssrc[1:] == ssrc[:-1]) & (payload_type[1:] == payload_type[:-1])
               & (seq[1:] == ((seq[:-1] + 1) & 0xFFFF)))
    chained[1:] &= follows | new_flow[1:]
    return RtpColumns(chained, payload_type, seq, timestamp, ssrc)


def _addresses(sdp: SessionDescription) -> tuple[list[Address], dict[int, Codec]]:
    """The RTP addresses of a party's audio and video streams (any codec: media presence
    counts, whatever is carried), and its G.711 payload types (the audio the ringback and
    silence detectors can decode)."""
    addrs: list[Address] = []
    codecs: dict[int, Codec] = {}
    for m in sdp.media:
        if (m.media not in _RTP_MEDIA or not m.enabled or m.connection_address is None
                or m.on_hold or "RTP/" not in m.protocol):
            continue
        addrs.append((m.connection_address, m.port))
        if m.media != "audio":
            continue
        for pt in m.payload_types:
            codec = m.g711_codec(pt)
            if codec is not None:
                codecs[pt] = codec
    return addrs, codecs


def _learn_codec(d: DialogMedia, payload_type: int) -> Codec | None:
    """The codec of an RTP payload type first seen in dialog ``d`` (the callee's SDP, else
    the caller's, else the static assignments), remembered for its next packets."""
    codec = d.codecs.get(Party.CALLEE, {}).get(payload_type) \
        or d.codecs.get(Party.CALLER, {}).get(payload_type) \
        or codec_for_payload_type(payload_type)
    d.payload_codecs[payload_type] = codec
    return codec


def _origin_key(origin: str | None) -> str:
    """The o= line without its version: stable for one party through a session."""
    if not origin:
        return ""
    parts = origin.split()
    return " ".join(parts[:2] + parts[3:]) if len(parts) >= 6 else origin


class MediaSupervisor:
    """Media facts and FAS verdicts for every supervised dialog."""

    def __init__(self, config: MediaConfig | None = None) -> None:
        self.config = config or MediaConfig()
        self.flows = FlowTable()
        self.dialogs: dict[str, DialogMedia] = {}
        self._deadlines: list[tuple[int, str]] = []
        self.packets_matched = 0
        self.packets_unmatched = 0
        self.packets_not_rtp = 0
        self.bad_sdp = 0
        #: IP versions (4, 6) in which the capture has carried RTP so far, of any call.
        self.rtp_families: set[int] = set()
        self.not_captured = 0  # answered calls judged media-not-captured
        #: Dialogs other than the one returned that the last packets were evidence for
        #: (shared addresses); the caller takes and empties it.
        self.shared_hits: list[str] = []
        # (src ip, src port, dst ip, dst port) -> its flow; and address -> the cached
        # flows it is part of, so a change of one address drops just those.
        self._flow_cache: dict[_FlowKey, _Flow] = {}
        self._flows_of: dict[Address, set[_FlowKey]] = {}
        # The same flows by their UDP/IPv4 addressing as on the wire (datagram_key): an
        # entry is dropped with the flow's entry in _flow_cache.
        self._key_cache: dict[bytes, _Flow] = {}
        #: When a list: every wire key dropped from that cache is appended to it (a
        #: consumer holding packets back per flow, see :meth:`flow_run`, learns which
        #: flows changed).
        self.key_log: list[bytes] | None = None
        # UDP/IPv4 wire keys of datagrams found of no dialog (neither address has an
        # owner), and address -> those keys: such a datagram is then counted in one
        # lookup, until an owner of either address changes (lingering RTP of ended calls).
        self._stray_keys: dict[bytes, tuple[Address, Address]] = {}
        self._strays_of: dict[Address, set[bytes]] = {}
        #: When a list: every address whose owner changed in the flow table is appended.
        self.address_log: list[Address] | None = None
        self.flows.on_change = self._forget_flows

    # --- signalling -------------------------------------------------------------
    def offer(self, call_ref: str, now_ms: int, sdp: str) -> None:
        """The INVITE: register the caller's media address at once (media can beat
        the answer event)."""
        if call_ref in self.dialogs:
            return  # a retransmission or a second copy
        self.dialogs[call_ref] = DialogMedia(call_ref, now_ms)
        self._sdp(call_ref, Party.CALLER, sdp, share=self._is_live)

    def provisional(self, call_ref: str, now_ms: int, code: int, sdp: str) -> None:
        """An 18x: ringing starts; with SDP, early media may flow from the callee."""
        d = self.dialogs.get(call_ref)
        if d is None or d.answer_ms is not None:
            return
        if d.ringing_ms is None and 180 <= code < 200:
            d.ringing_ms = now_ms
        if sdp:
            if d.early_sdp_ms is None:
                d.early_sdp_ms = now_ms
            self._sdp(call_ref, Party.CALLEE, sdp, share=self._is_live)

    def answer(self, call_ref: str, now_ms: int, sdp: str) -> None:
        """The 200 OK: the grace window for the callee's media starts."""
        d = self.dialogs.get(call_ref)
        if d is None or d.answer_ms is not None:
            return
        d.answer_ms = now_ms
        if sdp:
            self._sdp(call_ref, Party.CALLEE, sdp, share=self._is_live)
        d.ringback = RingbackDetector(
            window_samples=self.config.ringback_window_ms * SAMPLE_RATE // 1000)
        d.silence = SilenceDetector()
        d.silence.feed_pending = d.feed_audio  # its counts include the queued audio
        if self.config.end_without_media_ms > 0:
            heapq.heappush(self._deadlines,
                           (now_ms + self.config.end_without_media_ms, call_ref))

    def update(self, call_ref: str, now_ms: int, side: str, sdp: str) -> None:
        """New SDP in the dialog (re-INVITE, UPDATE, late-offer ACK). ``side`` may be ""
        when the sender is unknown: the SDP's origin line then tells whose it is."""
        d = self.dialogs.get(call_ref)
        if d is None or not sdp:
            return
        party: Party | None = Party(side) if side in ("caller", "callee") else None
        if party is None:
            try:
                key = _origin_key(parse_sdp(sdp).origin)
            except SdpError:
                self.bad_sdp += 1
                return
            party = next((p for p, o in d.origins.items() if o and o == key), None)
            if party is None:
                log.warning("%s: SDP update from an unknown party (origin %r) ignored",
                            call_ref, key)
                return
        # A re-INVITE naming an address another live dialog uses: the legs of a B2BUA
        # whose media went direct (often right at the answer); both keep it.
        self._sdp(call_ref, party, sdp, share=self._is_live)

    def _is_live(self, call_ref: str) -> bool:
        """Whether a dialog is offered and not ended: one whose address another dialog's
        SDP names shares it (the legs of a B2BUA with direct media, a hairpin: the second
        leg's offer names the first leg's caller, and the first leg's answer the second
        leg's callee). An address of a dialog that ended is a reused port: taken over."""
        d = self.dialogs.get(call_ref)
        return d is not None and d.ended_ms is None

    def _sdp(self, call_ref: str, party: Party, text: str,
             share: Callable[[str], bool] | None = None) -> None:
        if not text:
            return
        try:
            sdp = parse_sdp(text)
        except SdpError as exc:
            self.bad_sdp += 1
            log.warning("%s: unusable SDP from the %s: %s", call_ref, party, exc)
            return
        addrs, codecs = _addresses(sdp)
        d = self.dialogs[call_ref]
        d.payload_codecs.clear()
        d.codecs.setdefault(party, {}).update(codecs)
        d.origins[party] = _origin_key(sdp.origin)
        if addrs:
            d.families.update(6 if ":" in a[0] else 4 for a in addrs)
            self.flows.register(call_ref, party, addrs, share)

    # --- media --------------------------------------------------------------------
    def packet(self, ts_ms: int, src: Address, dst: Address, payload: bytes) -> str | None:
        """One captured UDP datagram; returns the call it belonged to, if any."""
        return self.datagram(ts_ms, src[0], src[1], dst[0], dst[1], payload)

    def datagram(self, ts_ms: int, src_ip: str, src_port: int, dst_ip: str, dst_port: int,
                 payload: bytes) -> str | None:
        """:meth:`packet` with the addresses as separate fields, as capture loops have them.

        The per-packet path of the sidecar (up to 10^5 packets/s live, 10^6 in replay): a
        known flow is found in one dict lookup, and the RTP header is read inline.
        """
        key = (src_ip, src_port, dst_ip, dst_port)
        flow = self._flow_cache.get(key)
        if flow is None:
            src, dst = (src_ip, src_port), (dst_ip, dst_port)
            hit = self.flows.classify(src, dst)
            if len(self.rtp_families) < 2:
                self._coverage(src_ip, src_port, dst_port, payload)
            if hit is None:
                self.packets_unmatched += 1
                return None
            call_ref, sender = hit
            d = self.dialogs.get(call_ref)
            if d is None:
                if parse_rtp(payload) is None:
                    self.packets_not_rtp += 1
                    return call_ref
                return None
            d.flowed = True
            if len(self._flow_cache) >= _FLOW_CACHE_LIMIT:
                if self.key_log is not None:
                    self.key_log.extend(self._key_cache)
                self._flow_cache.clear()
                self._flows_of.clear()
                self._key_cache.clear()
            flow = self._flow_cache[key] = _Flow(call_ref, d, sender)
            self._flows_of.setdefault(src, set()).add(key)
            self._flows_of.setdefault(dst, set()).add(key)
            flow.also = tuple(_Flow(ref, self.dialogs[ref], party)
                              for ref, party in self.flows.sharers(src, dst)
                              if ref in self.dialogs)
        if flow.also:  # evidence for the other legs too
            for extra in flow.also:
                self.datagram_key(ts_ms, b"", payload, extra)
                self.shared_hits.append(extra.call_ref)
        return self.datagram_key(ts_ms, b"", payload, flow)

    def datagram_key(self, ts_ms: int, key: bytes, payload: bytes,
                     _flow: _Flow | None = None) -> str | None:
        """:meth:`datagram` of a UDP/IPv4 datagram given by its addressing as on the wire:
        ``key`` is the 12 bytes of source and destination address, source and destination
        port (:meth:`CaptureReader.datagrams <sidecar.media.pcap.CaptureReader.datagrams>`).
        A packet of a known flow then costs one lookup of those bytes: no address text.

        (``_flow``: the flow :meth:`datagram` found, whose packet is counted here: the
        one per-packet body of both, in one call.)"""
        if _flow is None:
            flow = self._key_cache.get(key)
            if flow is None or flow.also:
                if flow is None and key in self._stray_keys:  # of no dialog, as before
                    self.packets_unmatched += 1
                    return None
                src_ip, src_port, dst_ip, dst_port = udp4_fields(key)
                unmatched = self.packets_unmatched
                ref = self.datagram(ts_ms, src_ip, src_port, dst_ip, dst_port, payload)
                if flow is None:
                    flow = self._flow_cache.get((src_ip, src_port, dst_ip, dst_port))
                    if flow is not None:
                        flow.key = key
                        self._key_cache[key] = flow
                    elif self.packets_unmatched != unmatched and 4 in self.rtp_families:
                        self._stray(key, (src_ip, src_port), (dst_ip, dst_port))
                return ref
        else:
            flow = _flow
        # One datagram of a known flow: its RTP counted, the callee's audio queued.
        call_ref = flow.call_ref
        d = flow.dialog
        # The RTP header, read here rather than by parse_rtp for the common case: version
        # 2, no padding, extension or CSRCs (first byte 0x80), not RTCP.
        end = len(payload)
        try:
            b0, b1, sequence, timestamp, ssrc = _unpack_rtp(payload)
        except struct.error:  # under 12 bytes
            b0 = b1 = 0
        if b0 == 0x80 and not 192 <= b1 <= 223:
            payload_type = b1 & 0x7F
            offset = 12
        else:
            rtp = parse_rtp(payload)
            if rtp is None:  # RTCP, STUN, keep-alives: not media
                self.packets_not_rtp += 1
                return call_ref
            payload_type, sequence, timestamp, ssrc = (rtp.payload_type, rtp.sequence,
                                                       rtp.timestamp, rtp.ssrc)
            offset, end = rtp.payload_offset, rtp.payload_end
        self.packets_matched += 1
        s = flow.stream
        size = end - offset
        s.packets += 1
        s.octets += size
        last_ms = s.last_ms
        if last_ms is None:  # the first packet (first_ms and last_ms are set together)
            s.first_ms = ts_ms
        elif ts_ms - last_ms > s.max_gap_ms:
            s.max_gap_ms = ts_ms - last_ms
        s.last_ms = ts_ms
        missing = 0
        next_seq = s.next_seq
        if ssrc != s.last_ssrc:
            s.ssrcs += 1
            s.last_ssrc = ssrc
        elif next_seq is not None and sequence != next_seq:
            skipped = (sequence - next_seq) & 0xFFFF
            if skipped < 0x8000:  # ahead: lost; behind: late or duplicate, ignored
                s.lost += skipped
                if s.next_ts is not None:
                    gap = (timestamp - s.next_ts) & 0xFFFFFFFF
                    missing = gap if gap < 10 * SAMPLE_RATE else 0
            else:
                return call_ref
        s.next_seq = (sequence + 1) & 0xFFFF
        s.next_ts = (timestamp + size) & 0xFFFFFFFF
        answer_ms = d.answer_ms
        if answer_ms is None or ts_ms < answer_ms:
            s.before_answer += 1
            return call_ref
        if s.first_after_answer_ms is None:
            s.first_after_answer_ms = ts_ms
        if flow.callee and size:
            codecs = d.payload_codecs
            codec = codecs.get(payload_type)
            if codec is None and payload_type not in codecs:
                codec = _learn_codec(d, payload_type)
            if codec is not None:
                # The callee's G.711 audio, queued for the FAS detectors (fed in batches:
                # this runs for half of all packets). The detectors read the audio as one
                # stream, so a batch gives them what packet by packet would.
                audio = d.audio
                if codec is not d.audio_codec:
                    if audio:
                        d.feed_audio()
                    d.audio_codec = codec
                if d.ringback_base_ms is None:  # arrival time of the first sample fed
                    ring = d.ringback
                    if ring is not None and not ring.finished:
                        d.ringback_base_ms = ts_ms
                if missing:
                    audio.append(missing)
                    d.audio_gaps = True
                audio.append(payload[offset:end])
                if len(audio) >= _AUDIO_BATCH:
                    d.feed_audio()
        return call_ref

    # --- packets held back per flow (replay of a capture file in blocks) -------------
    def flow_for_key(self, key: bytes) -> _Flow | None:
        """The known flow of a UDP/IPv4 wire key (see :meth:`datagram_key`), if any."""
        return self._key_cache.get(key)

    @staticmethod
    def flow_deferrable(flow: _Flow) -> bool:
        """Whether packets of ``flow`` may be held back and given to :meth:`flow_run`
        later (until an event of its dialog, or until the flow changes): true unless they
        are evidence for other dialogs too, or the flow is the callee's of an answered
        dialog whose callee media has not been seen yet (its next packet may confirm the
        answer: the call control must hear of it at once)."""
        if flow.also:
            return False
        return not (flow.callee and flow.dialog.answer_ms is not None
                    and flow.stream.first_after_answer_ms is None)

    def stray_deferrable(self, src_ip: str, src_port: int, dst_ip: str, dst_port: int
                         ) -> bool:
        """Whether datagrams with this addressing would now be counted as of no dialog
        and nothing else (so they may be held back and counted with
        :meth:`count_stray` later, until an owner of either address changes): no flow and
        no owner for them, and RTP of their address family already seen (so
        :attr:`rtp_families` has nothing to learn from them)."""
        if (src_ip, src_port, dst_ip, dst_port) in self._flow_cache:
            return False
        if (6 if ":" in src_ip else 4) not in self.rtp_families:
            return False
        return self.flows.peek((src_ip, src_port), (dst_ip, dst_port)) is None

    def count_stray(self, packets: int) -> None:
        """``packets`` datagrams :meth:`stray_deferrable` allowed to hold back."""
        self.packets_unmatched += packets

    def dialogs_of(self, src_ip: str, src_port: int, dst_ip: str, dst_port: int
                   ) -> list[str]:
        """The dialogs a datagram with this addressing would be evidence for now (what
        :meth:`datagram` would touch), without changing anything."""
        flow = self._flow_cache.get((src_ip, src_port, dst_ip, dst_port))
        if flow is not None:
            return [flow.call_ref, *(f.call_ref for f in flow.also)]
        src, dst = (src_ip, src_port), (dst_ip, dst_port)
        ref = self.flows.peek(src, dst)
        if ref is None:
            return []
        return [ref, *(r for r, _ in self.flows.sharers(src, dst))]

    def flow_run(self, flow: _Flow, run: PacketRun) -> None:
        """Packets of one known flow in capture order, all at once: the same counts,
        evidence and audio as :meth:`datagram_key` gives them one by one. For a flow
        :meth:`flow_deferrable` allows, with nothing of its dialog changed since the
        first of them. Plain RTP (first byte 0x80, one payload type, one SSRC, sequence
        numbers in a row) is counted with NumPy; anything else one packet at a time."""
        ts_ms = run.ts_ms
        n = len(ts_ms)
        if n < _RUN_MIN:
            self._run_each(flow, run)
            return
        s = flow.stream
        if not bool(run.chained.all()):
            self._run_each(flow, run)
            return
        seq, ssrc = run.seq, run.ssrc
        first_ssrc, first_seq = int(ssrc[0]), int(seq[0])
        if first_ssrc == s.last_ssrc and s.next_seq is not None and first_seq != s.next_seq:
            self._run_each(flow, run)  # packets lost or late before the run
            return
        sizes = run.end - run.start - 12
        self.packets_matched += n
        s.packets += n
        s.octets += int(sizes.sum())
        gap = int((ts_ms[1:] - ts_ms[:-1]).max(initial=0))
        if s.last_ms is None:
            s.first_ms = int(ts_ms[0])
        else:
            gap = max(gap, int(ts_ms[0]) - s.last_ms)
        if gap > s.max_gap_ms:
            s.max_gap_ms = gap
        s.last_ms = int(ts_ms[-1])
        if first_ssrc != s.last_ssrc:
            s.ssrcs += 1
            s.last_ssrc = first_ssrc
        s.next_seq = (int(seq[-1]) + 1) & 0xFFFF
        s.next_ts = (int(run.timestamp[-1]) + int(sizes[-1])) & 0xFFFFFFFF
        d = flow.dialog
        answer_ms = d.answer_ms
        if answer_ms is None:
            s.before_answer += n
            return
        if int(ts_ms.min()) >= answer_ms:  # all after the 200 OK, the usual case
            count, first = n, 0
            after = None
        else:
            after = ts_ms >= answer_ms
            count = int(np.count_nonzero(after))
            first = int(np.argmax(after))
        s.before_answer += n - count
        if not count:
            return
        if s.first_after_answer_ms is None:
            s.first_after_answer_ms = int(ts_ms[first])
        if not flow.callee:
            return
        if after is None and int(sizes.min()) > 0:
            heard = None
            start = first
        else:
            heard = (sizes > 0) if after is None else after & (sizes > 0)
            if not heard.any():
                return
            start = int(np.argmax(heard))
        payload_type = int(run.payload_type[0])
        codecs = d.payload_codecs
        codec = codecs.get(payload_type)
        if codec is None and payload_type not in codecs:
            codec = _learn_codec(d, payload_type)
        if codec is None:
            return
        audio = d.audio
        if codec is not d.audio_codec:
            if audio:
                d.feed_audio()
            d.audio_codec = codec
        if d.ringback_base_ms is None:
            ring = d.ringback
            if ring is not None and not ring.finished:
                d.ringback_base_ms = int(ts_ms[start])
        starts = run.start + 12
        lengths = sizes
        if heard is not None:
            starts, lengths = starts[heard], sizes[heard]
        size = int(lengths[0])
        if size <= len(run.view) and int(lengths.min()) == int(lengths.max()):
            # Equal payloads (one codec and packet time): one copy of the rows.
            rows = np.ndarray((len(run.view) - size + 1,), dtype=f"V{size}",
                              buffer=run.view, strides=(1,))
            audio.append(rows[starts].tobytes())
        else:
            data = run.data
            audio.append(b"".join([data[a : a + b] for a, b in
                                   zip(starts.tolist(), lengths.tolist(), strict=True)]))
        if len(audio) >= _AUDIO_BATCH or len(starts) >= _AUDIO_BATCH:
            d.feed_audio()

    def _run_each(self, flow: _Flow, run: PacketRun) -> None:
        data = run.data
        one = self.datagram_key
        for t, a, b in zip(run.ts_ms.tolist(), run.start.tolist(), run.end.tolist(),
                           strict=True):
            one(t, b"", data[a:b], flow)

    def media_seen(self, call_ref: str, party: Party, ts_ms: int, packets: int,
                   octets: int = 0, source: str = "rtpengine") -> bool:
        """A media relay's counters instead of captured packets, where the media cannot
        be sniffed: by ``ts_ms`` the relay had received ``packets`` RTP packets
        (``octets`` bytes, as the relay counts them) in all from ``party`` of the
        dialog. Returns True when this count is the first to show the callee's media
        after the 200 OK.

        The packets new since the previous count arrived in the window between the two
        counts (the first count's window opens at the INVITE) and are taken as seen at
        its end, ``ts_ms`` (the first media is billed at most one window late). Only a
        window that opens at or after the 200 OK shows media after it: packets counted
        in a window reaching back before it are early media (count once right after the
        200 OK to keep that window short). A count, zero included, shows that the
        dialog's media could be seen (no ``media-not-captured``): pass only counts the
        relay gave for this dialog. A total below the previous one (the relay started
        counting afresh) is all new. Ringback and silence need the audio: counters never
        give those verdicts."""
        d = self.dialogs.get(call_ref)
        if d is None:
            return False
        d.flowed = True
        d.source = source
        previous = d.counted.get(party)
        d.counted[party] = (ts_ms, packets, octets)
        if previous is None or packets < previous[1]:  # the first count, or afresh
            new, new_octets = packets, octets
        else:
            new, new_octets = packets - previous[1], max(0, octets - previous[2])
        if new <= 0:
            return False
        s = d.streams[party]
        s.octets += new_octets
        s.packets += new
        if s.first_ms is None:
            s.first_ms = ts_ms
        elif s.last_ms is not None and previous is not None:
            s.max_gap_ms = max(s.max_gap_ms, previous[0] - s.last_ms)
        s.last_ms = ts_ms
        after = (d.answer_ms is not None and previous is not None
                 and previous[0] >= d.answer_ms)
        if not after:
            s.before_answer += new
            return False
        if s.first_after_answer_ms is None:
            s.first_after_answer_ms = ts_ms
            return party is Party.CALLEE
        return False

    def _coverage(self, src_ip: str, src_port: int, dst_port: int, payload: bytes) -> None:
        """Note the IP version of a datagram that looks like RTP (version 2, not RTCP,
        between unprivileged ports other than SIP's), matched to a call or not: the
        capture can see media of that family."""
        if (len(payload) >= 12 and payload[0] & 0xC0 == 0x80
                and not 192 <= payload[1] <= 223 and src_port >= 1024 and dst_port >= 1024
                and src_port not in _SIP_PORTS and dst_port not in _SIP_PORTS):
            self.rtp_families.add(6 if ":" in src_ip else 4)

    def captured(self, d: DialogMedia) -> bool:
        """Whether the capture could have seen this dialog's media: some datagram on its
        media flows was seen, or RTP of its address family was (a dialog without SDP
        addresses: assumed)."""
        return bool(d.flowed or not d.families or d.families & self.rtp_families)

    def _stray(self, key: bytes, src: Address, dst: Address) -> None:
        if len(self._stray_keys) >= _FLOW_CACHE_LIMIT:
            self._stray_keys.clear()
            self._strays_of.clear()
        self._stray_keys[key] = (src, dst)
        self._strays_of.setdefault(src, set()).add(key)
        self._strays_of.setdefault(dst, set()).add(key)

    def _forget_flows(self, addr: Address) -> None:
        """The owner of ``addr`` changed in the flow table: drop the cached flows through
        it (FlowTable.on_change), and what was known to be of no dialog through it."""
        if self.address_log is not None:
            self.address_log.append(addr)
        strays = self._strays_of.pop(addr, None)
        if strays:
            for stray in strays:
                ends = self._stray_keys.pop(stray, None)
                if ends is not None:
                    far = ends[1] if ends[0] == addr else ends[0]
                    keys = self._strays_of.get(far)
                    if keys is not None:
                        keys.discard(stray)
                        if not keys:
                            del self._strays_of[far]
        cache = self._flow_cache
        flows_of = self._flows_of
        for key in flows_of.pop(addr, ()):
            wire = cache.pop(key).key
            if wire is not None:
                del self._key_cache[wire]
                if self.key_log is not None:
                    self.key_log.append(wire)
            # ... and from the index of its other address (a key is in the cache exactly
            # when it is in the sets of both its addresses).
            src, dst = (key[0], key[1]), (key[2], key[3])
            other_addr = dst if src == addr else src
            other = flows_of.get(other_addr)
            if other is not None:
                other.discard(key)
                if not other:
                    del flows_of[other_addr]

    # --- time and endings -----------------------------------------------------------
    def tick(self, now_ms: int) -> list[NoMedia]:
        """Answered calls still without callee media ``end_without_media_ms`` after the
        200 OK (only when that option is on)."""
        out: list[NoMedia] = []
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            _, ref = heapq.heappop(self._deadlines)
            d = self.dialogs.get(ref)
            if d is None or d.answer_ms is None or d.ended_for_no_media:
                continue
            if d.callee.first_after_answer_ms is None and self.captured(d):
                d.ended_for_no_media = True
                out.append(NoMedia(ref, now_ms - d.answer_ms, now_ms))
        return out

    def next_deadline(self) -> int | None:
        return self._deadlines[0][0] if self._deadlines else None

    def end(self, call_ref: str, now_ms: int) -> MediaVerdict | None:
        """The dialog ended (BYE or failure): its verdict. None if it was never offered."""
        d = self.dialogs.pop(call_ref, None)
        if d is None:
            return None
        self.flows.forget(call_ref)  # drops the dialog's cached flows with its addresses
        d.ended_ms = now_ms
        v = judge(d, self.config, self.captured(d))
        if d.silence is not None:
            d.silence.feed_pending = None  # all fed; and no reference cycle left
        if v.verdict is Verdict.NOT_CAPTURED:
            self.not_captured += 1
            if self.not_captured == 1:
                log.warning("%s: answered, but no media of its address family has been "
                            "seen: billed from the 200 OK (verdict %s; does the sidecar see "
                            "the media: the capture's interface, rtpengine?)", call_ref,
                            v.verdict)
        return v

    def peek(self, call_ref: str, now_ms: int) -> MediaVerdict | None:
        """The verdict so far of a dialog still in progress (for status views)."""
        d = self.dialogs.get(call_ref)
        if d is None:
            return None
        saved = d.ended_ms
        d.ended_ms = now_ms
        try:
            return judge(d, self.config, self.captured(d))
        finally:
            d.ended_ms = saved


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.2f} s"


def judge(d: DialogMedia, config: MediaConfig, captured: bool = True) -> MediaVerdict:
    """The verdict on one dialog from its recorded facts (pure). ``captured``: whether
    the capture could have seen its media (see :meth:`MediaSupervisor.captured`)."""
    d.feed_audio()  # the detectors' findings on all the audio so far
    callee, caller = d.callee, d.caller
    evidence: dict[str, Any] = {
        "invite_ms": d.invite_ms, "ringing_ms": d.ringing_ms, "early_sdp_ms": d.early_sdp_ms,
        "answer_ms": d.answer_ms, "ended_ms": d.ended_ms,
        "caller": caller.to_dict(), "callee": callee.to_dict(),
    }
    if d.source:  # counted by a relay, not captured: no audio judged
        evidence["source"] = d.source
    if d.answer_ms is None:
        return MediaVerdict(d.call_ref, False, None, Verdict.CLEAN, (), evidence)
    answer = d.answer_ms
    reasons: list[str] = []
    answer_delay = answer - d.invite_ms
    instant = d.ringing_ms is None and answer_delay <= config.instant_answer_ms
    evidence["answer_delay_ms"] = answer_delay
    evidence["instant_answer"] = instant
    first = callee.first_after_answer_ms
    if first is None and not captured:
        fams = " and ".join(f"IPv{f}" for f in sorted(d.families))
        evidence["media_captured"] = False
        reasons.append(f"media not captured: no RTP ({fams}) in the capture, so its absence "
                       "proves nothing; billed from the 200 OK")
        return MediaVerdict(d.call_ref, True, answer, Verdict.NOT_CAPTURED, tuple(reasons),
                            evidence)
    if first is None:
        what = (f"{caller.packets} packets from the caller" if caller.packets
                else "none from the caller either")
        reasons.append(f"no media from the callee after the 200 OK ({what})")
        if callee.before_answer:
            reasons.append(f"only early media before the 200 OK ({callee.before_answer} "
                           f"packets)")
        return MediaVerdict(d.call_ref, True, None, Verdict.NO_MEDIA, tuple(reasons), evidence)
    delay = first - answer
    evidence["media_delay_ms"] = delay
    verdict = Verdict.CLEAN
    billable = answer
    if delay > config.grace_ms:
        verdict = Verdict.LATE_MEDIA
        billable = first
        reasons.append(f"callee media started {_seconds(delay)} after the 200 OK (grace "
                       f"{_seconds(config.grace_ms)}): billed from the first media packet")
    if d.ringback_at_ms is not None:
        verdict = Verdict.RINGBACK
        tone = {"NORTH_AMERICA": "440+480 Hz", "UK": "400+450 Hz",
                "EUROPE": "425 Hz"}.get(d.ringback_tone, d.ringback_tone)
        evidence["ringback_tone"] = d.ringback_tone
        evidence["ringback_at_ms"] = d.ringback_at_ms
        reasons.insert(0, f"ringing tone ({tone}) in the callee's media "
                          f"{_seconds(max(0, d.ringback_at_ms))} after the 200 OK")
    silence = d.silence
    if silence is not None and silence.frames:
        frame_ms = 20
        heard_ms = silence.frames * frame_ms
        share = silence.silent_frames / silence.frames
        evidence["silent_frames"] = silence.silent_frames
        evidence["voiced_frames"] = silence.voiced_frames
        if heard_ms >= config.silence_min_ms and share >= config.silence_share and \
                verdict is not Verdict.RINGBACK:
            verdict = Verdict.SILENCE
            reasons.insert(0, f"callee's media silent in {share:.0%} of "
                              f"{silence.frames} frames ({_seconds(heard_ms)} heard)")
    if instant:
        evidence["note"] = f"answered {answer_delay} ms after the INVITE with no ringing"
    return MediaVerdict(d.call_ref, True, billable, verdict, tuple(reasons), evidence)
