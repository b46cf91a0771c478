"""The SIP in a capture as Kamailio's events: what a replay feeds the core instead of evapi.

Live, Kamailio tells the sidecar about a call with JSON events (docs/evapi-events.md);
a replay has only the packets. :class:`SipTracker` reads the SIP messages of a capture
and emits the same typed events (:mod:`sidecar.kamailio.events`), filled the way
``kamailio/kamailio.cfg`` fills them and timed by the capture's clock. It is sans-IO:
payloads in, events out, no files and no wall clock.

Copies and retransmissions
    A capture on the proxy host holds each message twice (customer -> proxy, then
    proxy -> carrier), and UDP retransmissions on top. Each event is emitted once, for
    the first copy, with that copy's timestamp: the moment Kamailio itself saw it. The
    keys that recognise a copy are built from what a proxy does not change: Call-ID,
    CSeq, From and To tags, status code (and, for provisional replies, RSeq and body).

Parsing: dpkt.sip, wrapped
    ``dpkt.sip.Request`` / ``Response`` parse the start line and the headers (names
    lowercased, repeated headers as lists). What dpkt gets wrong for SIP is handled here:

    * it drops the body of every 1xx reply (an HTTP rule; a SIP 183 carries SDP) and
      knows neither compact ``l:`` nor a missing Content-Length on UDP: message framing
      and the body are taken here, dpkt's ``body`` is never used;
    * compact header names (``i:``, ``f:``, ``t:``, ``v:``, ``l:``, ``c:``, ...) are kept
      as is: they are mapped to the full names after parsing;
    * folded (continuation) header lines become bogus headers or an error: they are
      unfolded before parsing;
    * it decodes header lines as ASCII and silently deletes other bytes (a UTF-8 display
      name "Jürgen" would become "Jrgen"): a head that is not ASCII is percent-escaped
      before parsing and unescaped after (non-UTF-8 bytes become U+FFFD, counted);
    * ``Via : x`` (legal whitespace before the colon) gives the key ``"via "``: keys are
      stripped; a bad Content-Length raises ``ValueError`` (or ``TypeError`` when
      repeated), not ``UnpackError``: every exception from dpkt is a bad message.

Bad input never raises: it is counted in :attr:`SipTracker.stats` and skipped.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple
from urllib.parse import unquote

import dpkt

from sidecar.kamailio.events import (
    Answer,
    Dialog,
    Early,
    End,
    Event,
    Failed,
    MediaUpdate,
    Offer,
)
from sidecar.media.pcap import CapturedPayload

log = logging.getLogger("sidecar.replay")

# How long (capture seconds) a dialog is remembered after its End or Failed, to absorb
# late copies and retransmissions: 64*T1, the longest a SIP transaction retransmits.
LINGER_S: Final = 32.0
# An offered call with no final reply and no message for this long lost its reply in
# the capture (Kamailio would have ended it with 408 long before): it is forgotten.
UNANSWERED_IDLE_S: Final = 600.0
# SIP over TCP: bytes buffered per connection while a message is incomplete, how many
# connections are tracked, and how long an idle one is kept.
MAX_STREAM_BUFFER: Final = 64 * 1024
MAX_STREAMS: Final = 10_000
STREAM_IDLE_S: Final = 300.0
_SWEEP_EVERY_S: Final = 60.0

# Methods that change what the core is told; other requests are counted and skipped
# without being parsed (OPTIONS and REGISTER floods from scanners are common on 5060).
_TRACKED_METHODS: Final = frozenset({b"INVITE", b"ACK", b"BYE", b"CANCEL", b"UPDATE"})
_OTHER_METHODS: Final = frozenset(
    {b"OPTIONS", b"REGISTER", b"PRACK", b"SUBSCRIBE", b"NOTIFY", b"PUBLISH", b"INFO",
     b"REFER", b"MESSAGE"}
)
# The first three bytes of every SIP message: the cheap test of looks_like_sip().
_SIP_STARTS: Final = frozenset(m[:3] for m in _TRACKED_METHODS | _OTHER_METHODS) | {b"SIP"}

# RFC 3261 section 7.3.3 and the compact forms registered since.
_COMPACT: Final = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via", "o": "event", "r": "refer-to", "b": "referred-by", "u": "allow-events",
    "x": "session-expires", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition", "y": "identity", "n": "identity-info",
}

_START_LINE = rb"(?:[A-Z]{2,16} [^ \r\n]+ SIP/2\.0|SIP/2\.0 [1-6][0-9][0-9](?: [^\r\n]*)?)\r?\n"
_START_LINE_RE: Final = re.compile(_START_LINE)
# A start line at the beginning of any line: where a TCP stream resynchronises.
_START_LINE_ANYWHERE_RE: Final = re.compile(rb"(?m)^" + _START_LINE)
_CONTENT_LENGTH_RE: Final = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)")
_FOLDED_RE: Final = re.compile(rb"\r?\n[ \t]+")
_NOT_ASCII_RE: Final = re.compile(rb"[%\x80-\xff]")
_CSEQ_RE: Final = re.compile(r"\s*([0-9]{1,10})\s+([A-Za-z]+)\s*", re.ASCII)
_TAG_RE: Final = re.compile(r";\s*tag\s*=\s*([^;,\s>]+)", re.IGNORECASE)

# Call states.
_OFFERED: Final = 0
_ANSWERED: Final = 1
_ENDED: Final = 2
_FAILED: Final = 3


@dataclass
class SipStats:
    """What the tracker did with what it was fed.

    ``bad`` counts messages (or TCP bytes runs) skipped as malformed, by reason;
    ``ignored`` counts well-formed messages that change nothing (an OPTIONS, a BYE for a
    call never seen), by reason; ``duplicates`` counts proxy copies and retransmissions.
    """

    packets: int = 0
    messages: int = 0
    duplicates: int = 0
    dialogs: int = 0  # calls offered (one per Call-ID, whatever the auth retries)
    dialogs_forgotten: int = 0
    dialogs_abandoned: int = 0  # offered, then silent for UNANSWERED_IDLE_S: forgotten
    auth_retries: int = 0  # INVITEs re-sent with credentials after a 401/407
    non_utf8: int = 0  # messages with bytes that are not UTF-8 (replaced, still used)
    events: dict[str, int] = field(default_factory=dict)
    bad: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        """Count a malformed message under ``reason``."""
        self.bad[reason] = self.bad.get(reason, 0) + 1

    def ignore(self, reason: str) -> None:
        """Count a message that changes nothing under ``reason``."""
        self.ignored[reason] = self.ignored.get(reason, 0) + 1


class _Msg(NamedTuple):
    """One parsed SIP message: the fields the tracker reads."""

    request: bool
    method: str  # the request's method, or the CSeq method of a response
    uri: str
    status: int
    reason: str
    call_id: str
    cseq: int
    from_value: str
    from_tag: str
    to_value: str
    to_tag: str
    headers: dict[str, list[str]]
    sdp: str  # the body if it is application/sdp, else ""
    body_key: int  # hash of the body: tells two provisional replies apart
    vias: int


@dataclass(slots=True, eq=False)
class _Call:
    """What is remembered of one Call-ID: small, whatever the call's length."""

    call_id: str
    from_tag: str
    invite_cseq: int
    entry: str  # "ip:port" the customer sent the INVITE to: the proxy
    route: str
    route_vias: int
    proxy_out: str = ""  # "ip:port" the proxy relays from; "" until a relayed copy is seen
    state: int = _OFFERED
    answer_ms: int = 0
    answer_tag: str = ""
    last_ts: float = 0.0
    done_ts: float = 0.0
    challenge: tuple[int, str, float, str] | None = None  # code, reason, ts, route
    cancel_ts: float | None = None
    seen: set[int] = field(default_factory=set)  # keys of copies already used


@dataclass(slots=True, eq=False)
class _Stream:
    """One direction of a SIP-over-TCP connection."""

    buf: bytearray = field(default_factory=bytearray)
    last_ts: float = 0.0
    in_sync: bool = True


class _Skip(Exception):
    """A message is not used; ``bad`` tells whether it is malformed or just ignored."""

    def __init__(self, reason: str, *, bad: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.bad = bad


def _ts_us(ts: float) -> int:
    return round(ts * 1_000_000)


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _first(headers: Mapping[str, list[str]], name: str) -> str:
    values = headers.get(name)
    return values[0] if values else ""


def _content_length(head: bytes | bytearray, pos: int = 0, endpos: int | None = None) -> int | None:
    """The Content-Length (full or compact name) in a head, None if absent, -1 if bad."""
    m = _CONTENT_LENGTH_RE.search(head, pos, len(head) if endpos is None else endpos)
    if m is None:
        return None
    value = m.group(1).strip()
    if not value.isdigit() or len(value) > 9:
        return -1
    return int(value)


def _escape(head: bytes) -> bytes:
    # Percent-escape '%' and non-ASCII bytes so that dpkt's ASCII decoding keeps them.
    return _NOT_ASCII_RE.sub(lambda m: b"%%%02X" % m.group()[0], head)


def _unescape(text: str) -> str:
    return unquote(text, errors="replace")


def _split_first(value: str) -> str:
    """The first element of a comma-separated header value (commas in quotes or <> kept)."""
    quoted = False
    angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == "," and not angle:
            return value[:i]
        i += 1
    return value


def name_addr(value: str) -> tuple[str, str]:
    """The display name (quotes removed, like Kamailio's ``s.unquote``) and the URI of a
    From, To or P-Asserted-Identity value."""
    v = value.strip()
    if v.startswith('"'):
        i = 1
        n = len(v)
        while i < n:
            c = v[i]
            if c == "\\":
                i += 2
                continue
            if c == '"':
                break
            i += 1
        display, rest = v[1:i], v[i + 1 :]
        lt = rest.find("<")
        if lt < 0:
            return display, ""
        gt = rest.find(">", lt)
        return display, rest[lt + 1 : gt if gt >= 0 else None].strip()
    lt = v.find("<")
    if lt >= 0:
        gt = v.find(">", lt)
        return v[:lt].strip(), v[lt + 1 : gt if gt >= 0 else None].strip()
    # An addr-spec without brackets cannot hold ';' (RFC 3261 20.10): what follows one
    # are header parameters such as the tag.
    return "", v.split(";", 1)[0].strip()


def uri_user(uri: str) -> str:
    """The user part of a sip:, sips: or tel: URI, "" if it has none (Kamailio's ``$rU``,
    ``$fU``, ``{uri.user}``: user parameters of a sip: URI stay in it)."""
    scheme, sep, rest = uri.partition(":")
    if not sep:
        return ""
    if scheme.strip().lower() == "tel":
        return rest.split(";", 1)[0].strip()
    at = rest.find("@")
    if at < 0:
        return ""
    return rest[:at].split(":", 1)[0]


def uri_param(uri: str, name: str) -> str:
    """A URI parameter's value (after the host part), "" if absent or without a value."""
    _, sep, rest = uri.partition(":")
    if not sep:
        return ""
    rest = rest[rest.find("@") + 1 :].split("?", 1)[0]
    wanted = name.lower()
    for param in rest.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == wanted:
            return value.strip()
    return ""


class SipTracker:
    """Turn the SIP messages of a capture into Kamailio's events, one dialog per Call-ID.

    Feed it every payload that :meth:`looks_like_sip` accepts, in capture order, then
    call :meth:`finish` once. Events carry the capture timestamp of the message that
    caused them and ``h_entry`` = ``h_id`` = 0 (there is no Kamailio dialog). Calls
    still up at the end of the capture get no End: the replay driver decides.
    """

    def __init__(self, *, sip_ports: frozenset[int] = frozenset({5060})) -> None:
        self.sip_ports = frozenset(sip_ports)
        self.stats = SipStats()
        self._calls: dict[str, _Call] = {}
        # (due, sequence, call): when to look again at a call (expire it, forget it).
        self._timers: list[tuple[float, int, _Call]] = []
        self._timer_seq = itertools.count()
        self._streams: dict[tuple[str, int, str, int], _Stream] = {}
        self._next_sweep = float("-inf")

    @property
    def active_dialogs(self) -> int:
        """Calls currently remembered (including ended ones still absorbing copies)."""
        return len(self._calls)

    # --- the hot path ------------------------------------------------------------
    def looks_like_sip(self, packet: CapturedPayload) -> bool:
        """Cheap pre-check: could this payload be SIP worth :meth:`feed`?

        True for a payload starting like a SIP message (a method name or ``SIP/2.0``) on
        any port, and for every TCP segment to or from one of ``sip_ports`` (a segment
        may continue a message). RTP (first byte 0x80-0xBF) is rejected by the first test.
        """
        if packet.payload[:3] in _SIP_STARTS:
            return True
        return packet.transport == "tcp" and (
            packet.dst_port in self.sip_ports or packet.src_port in self.sip_ports
        )

    def feed(self, packet: CapturedPayload) -> list[Event]:
        """Read one captured payload; return the events it completes (usually 0 or 1).

        Events for calls whose 401/407 challenge went unanswered for ``LINGER_S`` come
        out here too, timed (earlier) by the challenge they report.
        """
        self.stats.packets += 1
        ts = packet.timestamp
        out: list[Event] = []
        if self._timers and self._timers[0][0] <= ts:
            self._run_timers(ts, out)
        if ts >= self._next_sweep:
            self._sweep_streams(ts)
        tcp = packet.transport == "tcp"
        messages = self._stream_messages(packet) if tcp else [packet.payload]
        for data in messages:
            try:
                self._handle(data, packet, out)
            except _Skip as skip:
                if skip.bad:
                    self.stats.skip(skip.reason)
                else:
                    self.stats.ignore(skip.reason)
            except Exception:
                # A bug must not stop a long replay: count it, log it, go on.
                self.stats.skip("internal_error")
                log.exception("replay: cannot handle a SIP message from %s:%s",
                              packet.src_ip, packet.src_port)
        self._count(out)
        return out

    def finish(self) -> list[Event]:
        """The capture ended: return what is still pending, in time order.

        A 401/407 challenge no retried INVITE followed becomes Failed; a call CANCELled
        whose 487 is not in the capture becomes Failed(487). Calls still up get nothing.
        """
        out: list[Event] = []
        for call in list(self._calls.values()):
            if call.state != _OFFERED:
                continue
            if call.challenge is not None:
                self._fail_challenged(call, out)
            elif call.cancel_ts is not None:
                call.state = _FAILED
                out.append(Failed(self._dialog(call, call.cancel_ts), 487,
                                  "Request Terminated", call.route))
        for stream in self._streams.values():
            if stream.buf.strip(b"\r\n"):
                self.stats.skip("tcp_incomplete")
        self._streams.clear()
        out.sort(key=lambda ev: ev.dialog.ts_us)
        self._count(out)
        return out

    def _count(self, events: list[Event]) -> None:
        counts = self.stats.events
        for ev in events:
            name = type(ev).__name__
            counts[name] = counts.get(name, 0) + 1

    # --- parsing -----------------------------------------------------------------
    def _parse(self, data: bytes) -> _Msg:
        """Parse one whole message (a UDP datagram, or one framed from a TCP stream)."""
        if data[:3] not in _SIP_STARTS:
            if not data.strip(b"\r\n\0 "):
                raise _Skip("keepalive", bad=False)
            raise _Skip("not_sip")
        response = data.startswith(b"SIP/2.0 ")
        if not response:
            token = data[: data.find(b" ", 0, 17)]
            if token not in _TRACKED_METHODS:
                if token in _OTHER_METHODS:
                    raise _Skip("method_" + token.decode("ascii").lower(), bad=False)
                raise _Skip("not_sip")
        sep = data.find(b"\r\n\r\n")
        sep_len = 4
        if sep < 0:
            # Bare LF line ends: not RFC 3261, but seen from broken UAs and dpkt reads them.
            sep = data.find(b"\n\n")
            sep_len = 2
        if sep < 0:
            raise _Skip("truncated")
        head = data[:sep]
        rest = data[sep + sep_len :]
        length = _content_length(head)
        if length is None:
            body = rest  # no Content-Length on UDP: the body is the rest of the datagram
        elif length < 0:
            raise _Skip("bad_content_length")
        elif length > len(rest):
            raise _Skip("truncated")
        else:
            body = rest[:length]
        if b"\n " in head or b"\n\t" in head:
            head = _FOLDED_RE.sub(b" ", head)
        escaped = not head.isascii()
        if escaped:
            try:
                head.decode("utf-8")
            except UnicodeDecodeError:
                self.stats.non_utf8 += 1
            head = _escape(head)
        try:
            parsed = (dpkt.sip.Response if response else dpkt.sip.Request)(
                head + b"\r\n\r\n" + body
            )
        except Exception as exc:  # dpkt raises UnpackError, ValueError, TypeError...
            raise _Skip("unparsable") from exc
        if response:
            status = int(parsed.status)
            if not 100 <= status <= 699:
                raise _Skip("bad_status")
            uri = ""
            reason = _unescape(parsed.reason) if escaped else parsed.reason
        else:
            if parsed.version != "2.0":
                raise _Skip("bad_version")
            status = 0
            uri = _unescape(parsed.uri) if escaped else parsed.uri
            reason = ""
        headers: dict[str, list[str]] = {}
        for key, value in parsed.headers.items():
            name = key.strip()
            name = _COMPACT.get(name, name)
            values = value if isinstance(value, list) else [value]
            if escaped:
                values = [_unescape(v) for v in values]
            if name in headers:
                headers[name].extend(values)
            else:
                headers[name] = list(values)
        call_id = _first(headers, "call-id").strip()
        if not call_id:
            raise _Skip("no_call_id")
        cseq = _CSEQ_RE.fullmatch(_first(headers, "cseq"))
        if cseq is None:
            raise _Skip("bad_cseq")
        method = cseq.group(2).upper() if response else parsed.method
        from_value = _first(headers, "from")
        to_value = _first(headers, "to")
        vias = sum(v.count(",") + 1 for v in headers.get("via", ()))
        sdp = ""
        content_type = _first(headers, "content-type")
        if body and content_type.split(";", 1)[0].strip().lower() == "application/sdp":
            try:
                sdp = body.decode("utf-8")
            except UnicodeDecodeError:
                if not escaped:
                    self.stats.non_utf8 += 1
                sdp = body.decode("utf-8", "replace")
        return _Msg(
            request=not response,
            method=method,
            uri=uri,
            status=status,
            reason=reason,
            call_id=call_id,
            cseq=int(cseq.group(1)),
            from_value=from_value,
            from_tag=_tag(from_value),
            to_value=to_value,
            to_tag=_tag(to_value),
            headers=headers,
            sdp=sdp,
            body_key=hash(body) if body else 0,
            vias=vias,
        )

    # --- SIP over TCP ------------------------------------------------------------
    def _stream_messages(self, packet: CapturedPayload) -> list[bytes]:
        """Append a TCP segment to its connection's buffer; return the whole messages."""
        key = (packet.src_ip, packet.src_port, packet.dst_ip, packet.dst_port)
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) >= MAX_STREAMS:
                del self._streams[next(iter(self._streams))]  # the oldest connection
                self.stats.skip("tcp_stream_evicted")
            stream = self._streams[key] = _Stream()
        stream.last_ts = packet.timestamp
        buf = stream.buf
        buf += packet.payload
        messages: list[bytes] = []
        while buf:
            if buf[0] in (13, 10):  # CRLF keep-alives between messages (RFC 5626)
                i = 1
                while i < len(buf) and buf[i] in (13, 10):
                    i += 1
                del buf[:i]
                continue
            start = _START_LINE_RE.match(buf)
            if start is None:
                if buf.find(b"\n") < 0 and len(buf) < 256 and 65 <= buf[0] <= 90:
                    break  # maybe a start line cut by the segment boundary: wait for more
                # Not at a message start (a lost or reordered segment): skip to the next
                # line that starts a SIP message.
                self._resync(stream)
                found = _START_LINE_ANYWHERE_RE.search(buf, 1)
                if found is None:
                    last_line = buf.rfind(b"\n") + 1
                    del buf[: last_line if len(buf) - last_line < 256 else len(buf)]
                    break
                del buf[: found.start()]
                continue
            # The CRLF ending the start line is half the blank line of a headerless message.
            end = buf.find(b"\r\n\r\n", start.end() - 2)
            if end < 0:
                break
            body_start = end + 4
            length = _content_length(buf, start.end(), end)
            if length is None:
                length = 0  # RFC 3261 18.3: mandatory on streams; absent means no body
            elif length < 0 or length > MAX_STREAM_BUFFER:
                self.stats.skip("bad_content_length")
                del buf[:body_start]
                continue
            total = body_start + length
            if len(buf) < total:
                break
            # A start line inside the body: a segment was lost and the body runs into
            # the next message. Drop the damaged one, resume at the start line.
            found = _START_LINE_ANYWHERE_RE.search(buf, body_start, total)
            if found is not None:
                self._resync(stream)
                del buf[: found.start()]
                continue
            messages.append(bytes(buf[:total]))
            del buf[:total]
            stream.in_sync = True
        if len(buf) > MAX_STREAM_BUFFER:
            self.stats.skip("tcp_overflow")
            buf.clear()
            stream.in_sync = False
        return messages

    def _resync(self, stream: _Stream) -> None:
        # Counted once per gap, not once per segment spent looking for the next message.
        if stream.in_sync:
            self.stats.skip("tcp_resync")
            stream.in_sync = False

    def _sweep_streams(self, now: float) -> None:
        self._next_sweep = now + _SWEEP_EVERY_S
        idle = [k for k, s in self._streams.items() if s.last_ts + STREAM_IDLE_S < now]
        for k in idle:
            del self._streams[k]

    # --- calls -------------------------------------------------------------------
    def _handle(self, data: bytes, packet: CapturedPayload, out: list[Event]) -> None:
        msg = self._parse(data)
        self.stats.messages += 1
        call = self._calls.get(msg.call_id)
        if call is not None:
            call.last_ts = packet.timestamp
        if msg.request:
            if msg.method == "INVITE" and not msg.to_tag:
                self._initial_invite(msg, call, packet, out)
            elif call is None:
                self.stats.ignore(msg.method.lower() + "_unknown_call")
            elif msg.method == "CANCEL":
                if call.state == _OFFERED and call.cancel_ts is None:
                    call.cancel_ts = packet.timestamp  # the 487 that follows ends the call
            else:
                self._in_dialog_request(msg, call, packet, out)
        elif call is None:
            self.stats.ignore("reply_unknown_call")
        elif msg.method == "INVITE" and msg.from_tag == call.from_tag \
                and msg.cseq <= call.invite_cseq:
            self._invite_reply(msg, call, packet, out)
        elif msg.method in ("INVITE", "UPDATE") and 200 <= msg.status < 300 and msg.sdp:
            self._offer_answered(msg, call, packet, out)

    def _dialog(self, call: _Call, ts: float) -> Dialog:
        return Dialog(call.call_id, 0, 0, _ts_us(ts))

    def _initial_invite(
        self, msg: _Msg, call: _Call | None, packet: CapturedPayload, out: list[Event]
    ) -> None:
        ts = packet.timestamp
        if call is None:
            entry = _hostport(packet.dst_ip, packet.dst_port)
            call = _Call(msg.call_id, msg.from_tag, msg.cseq, entry, entry, msg.vias,
                         last_ts=ts)
            self._calls[msg.call_id] = call
            self.stats.dialogs += 1
            self._schedule(call, ts + UNANSWERED_IDLE_S)
            out.append(self._offer(msg, packet))
            return
        if msg.from_tag != call.from_tag:
            raise _Skip("call_id_reused", bad=False)
        if msg.cseq <= call.invite_cseq:
            # The proxy's copy, or a retransmission: only its Via count matters (route).
            self.stats.duplicates += 1
            if msg.cseq == call.invite_cseq:
                self._route_copy(call, msg, packet)
            return
        # A higher CSeq: the INVITE re-sent with credentials after a 401/407 (whose reply
        # may be missing from the capture). The same call goes on: no new Offer.
        if call.state != _OFFERED:
            raise _Skip("invite_after_final", bad=False)
        call.invite_cseq = msg.cseq
        call.challenge = None
        self.stats.auth_retries += 1
        self._route_copy(call, msg, packet)

    def _offer(self, msg: _Msg, packet: CapturedPayload) -> Offer:
        h = msg.headers
        display, from_uri = name_addr(msg.from_value)
        pai = _first(h, "p-asserted-identity")
        pai_user = uri_user(name_addr(_split_first(pai))[1]) if pai else ""
        # As kamailio.cfg: the ";ac=" R-URI parameter, else the X-Account-Code header.
        account = uri_param(msg.uri, "ac") or _first(h, "x-account-code").strip()
        return Offer(
            dialog=Dialog(msg.call_id, 0, 0, _ts_us(packet.timestamp)),
            tindex=0,
            tlabel=0,
            from_user=uri_user(from_uri),
            from_display=display,
            pai_user=pai_user,
            to_user=uri_user(name_addr(msg.to_value)[1]),
            ruri=msg.uri,
            ruri_user=uri_user(msg.uri),
            account_code=account,
            src_ip=packet.src_ip,
            src_port=packet.src_port,
            sdp=msg.sdp,
        )

    def _route_copy(self, call: _Call, msg: _Msg, packet: CapturedPayload) -> None:
        # The proxy adds its Via to the copy it relays: the copy with the most Vias went
        # to the next hop, and was sent by the proxy.
        if msg.vias > call.route_vias:
            call.route_vias = msg.vias
            call.route = _hostport(packet.dst_ip, packet.dst_port)
            call.proxy_out = _hostport(packet.src_ip, packet.src_port)

    def _invite_reply(
        self, msg: _Msg, call: _Call, packet: CapturedPayload, out: list[Event]
    ) -> None:
        code = msg.status
        ts = packet.timestamp
        if msg.cseq < call.invite_cseq:
            self.stats.duplicates += 1  # a late copy of the reply to the challenged INVITE
            return
        if code < 200:
            if code == 100:
                return  # hop by hop, from the proxy itself: not an event
            key = hash((code, msg.to_tag, _first(msg.headers, "rseq"), msg.body_key))
            if call.state != _OFFERED or key in call.seen:
                self.stats.duplicates += 1
                return
            call.seen.add(key)
            out.append(Early(self._dialog(call, ts), code, msg.sdp))
        elif code < 300:
            if call.state != _OFFERED:
                if msg.to_tag and call.answer_tag and msg.to_tag != call.answer_tag:
                    self.stats.ignore("forked_answer")
                else:
                    self.stats.duplicates += 1
                return
            call.state = _ANSWERED
            call.answer_ms = _ts_us(ts) // 1000
            call.answer_tag = msg.to_tag
            call.challenge = None
            out.append(Answer(self._dialog(call, ts), msg.sdp, call.route))
        else:
            if call.state != _OFFERED:
                self.stats.duplicates += 1
                return
            if code in (401, 407):
                # Not a failure yet: the INVITE is normally re-sent with credentials.
                if call.challenge is None:
                    call.challenge = (code, msg.reason, ts, call.route)
                    self._schedule(call, ts + LINGER_S)
                else:
                    self.stats.duplicates += 1
                return
            call.state = _FAILED
            out.append(Failed(self._dialog(call, ts), code, msg.reason, call.route))
            self._done(call, ts)

    def _in_dialog_request(
        self, msg: _Msg, call: _Call, packet: CapturedPayload, out: list[Event]
    ) -> None:
        ts = packet.timestamp
        side = "caller" if msg.from_tag == call.from_tag else "callee"
        if msg.method == "BYE":
            if call.state in (_ENDED, _FAILED):
                self.stats.duplicates += 1
                return
            by, reason = side, "bye"
            src = _hostport(packet.src_ip, packet.src_port)
            if call.proxy_out and src in (call.entry, call.proxy_out):
                # The first copy comes from the proxy: Kamailio itself hung up
                # (dlg.end_dlg or the dialog timeout; the capture cannot tell which).
                by, reason = "proxy", "rpc"
            call.state = _ENDED
            out.append(End(self._dialog(call, ts), by, reason, call.answer_ms))
            self._done(call, ts)
            return
        # INVITE, UPDATE or ACK carrying SDP inside the dialog, early (an UPDATE while
        # ringing) or confirmed: kamailio.cfg's MEDIA_UPDATE sends `media` for the same.
        # An ACK with SDP answers a late offer (the initial INVITE's or a re-INVITE's).
        if not msg.sdp:
            return
        if call.state not in (_OFFERED, _ANSWERED):
            raise _Skip("sdp_after_end", bad=False)
        key = hash((msg.method, msg.from_tag, msg.cseq))
        if key in call.seen:
            self.stats.duplicates += 1
            return
        call.seen.add(key)
        out.append(MediaUpdate(self._dialog(call, ts), side, msg.sdp))

    def _offer_answered(
        self, msg: _Msg, call: _Call, packet: CapturedPayload, out: list[Event]
    ) -> None:
        # A 2xx with SDP to an in-dialog INVITE or UPDATE: the SDP is the other side's.
        if call.state not in (_OFFERED, _ANSWERED):
            return
        key = hash((msg.status, msg.method, msg.from_tag, msg.cseq, msg.to_tag))
        if key in call.seen:
            self.stats.duplicates += 1
            return
        call.seen.add(key)
        side = "callee" if msg.from_tag == call.from_tag else "caller"
        out.append(MediaUpdate(self._dialog(call, packet.timestamp), side, msg.sdp))

    # --- forgetting --------------------------------------------------------------
    def _schedule(self, call: _Call, due: float) -> None:
        heapq.heappush(self._timers, (due, next(self._timer_seq), call))

    def _done(self, call: _Call, ts: float) -> None:
        call.done_ts = ts
        self._schedule(call, ts + LINGER_S)

    def _forget(self, call: _Call) -> None:
        del self._calls[call.call_id]
        self.stats.dialogs_forgotten += 1

    def _fail_challenged(self, call: _Call, out: list[Event]) -> None:
        assert call.challenge is not None
        code, reason, ts, route = call.challenge
        call.state = _FAILED
        call.challenge = None
        out.append(Failed(self._dialog(call, ts), code, reason, route))

    def _run_timers(self, now: float, out: list[Event]) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, call = heapq.heappop(timers)
            if self._calls.get(call.call_id) is not call:
                continue  # already forgotten
            if call.state in (_ENDED, _FAILED):
                if call.done_ts + LINGER_S <= now:
                    self._forget(call)
            elif call.state == _OFFERED:
                if call.challenge is not None and call.challenge[2] + LINGER_S <= now:
                    # No INVITE with credentials followed: the challenge was the answer.
                    # The call has been quiet for LINGER_S already: forget it now.
                    self._fail_challenged(call, out)
                    self._forget(call)
                elif call.last_ts + UNANSWERED_IDLE_S <= now:
                    self._forget(call)
                    self.stats.dialogs_abandoned += 1
                else:
                    self._schedule(call, call.last_ts + UNANSWERED_IDLE_S)
            # Answered calls wait for their BYE, however long the call.


def _tag(value: str) -> str:
    """The ``tag`` parameter of a From or To value, "" if none."""
    gt = value.rfind(">")
    m = _TAG_RE.search(value, gt + 1 if gt >= 0 else 0)
    return m.group(1) if m else ""
