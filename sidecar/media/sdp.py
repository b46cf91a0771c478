"""SDP (RFC 8866, formerly 4566) bodies reduced to what billing needs about media.

For each ``m=`` line: where media is expected (connection address and port), which RTP
payload types may carry it and which codecs they are, and whether the author will send
or receive (direction attributes). Offer and answer SDP tell the sidecar which RTP
flows belong to a dialog and which codec to decode when it looks for ringback or silence.

Tolerant where a mistake cannot mislead: CRLF or LF line ends, blank lines, lines that
are not ``x=value``, unknown or malformed attributes are skipped (their line numbers are
kept in :attr:`SessionDescription.ignored_lines`). Strict where it could: a malformed
``v=``, ``c=`` or ``m=`` line, or an enabled audio stream with no connection address,
raises :class:`SdpError` naming the line.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

from sidecar.media.g711 import Codec

__all__ = [
    "STATIC_PAYLOAD_TYPES",
    "Direction",
    "MediaDescription",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "parse_sdp",
]


class SdpError(ValueError):
    """An SDP body the sidecar cannot use; the message names the line and the fault."""


class Direction(enum.StrEnum):
    """Direction attribute, from the point of view of the SDP's author (RFC 3264)."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        """The author will send media."""
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        """The author is willing to receive media."""
        return self in (Direction.SENDRECV, Direction.RECVONLY)


@dataclass(frozen=True, slots=True)
class RtpMap:
    """One payload type's encoding: from ``a=rtpmap`` or the RFC 3551 static table."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None


def _static(pt: int, encoding: str, rate: int, channels: int | None = None) -> RtpMap:
    return RtpMap(pt, encoding, rate, channels)


#: RFC 3551 static payload types (used when an SDP has no rtpmap for them).
STATIC_PAYLOAD_TYPES: dict[int, RtpMap] = {
    m.payload_type: m
    for m in (
        _static(0, "PCMU", 8000, 1),
        _static(3, "GSM", 8000, 1),
        _static(4, "G723", 8000, 1),
        _static(5, "DVI4", 8000, 1),
        _static(6, "DVI4", 16000, 1),
        _static(7, "LPC", 8000, 1),
        _static(8, "PCMA", 8000, 1),
        _static(9, "G722", 8000, 1),
        _static(10, "L16", 44100, 2),
        _static(11, "L16", 44100, 1),
        _static(12, "QCELP", 8000, 1),
        _static(13, "CN", 8000, 1),
        _static(14, "MPA", 90000),
        _static(15, "G728", 8000, 1),
        _static(16, "DVI4", 11025, 1),
        _static(17, "DVI4", 22050, 1),
        _static(18, "G729", 8000, 1),
        _static(25, "CelB", 90000),
        _static(26, "JPEG", 90000),
        _static(28, "nv", 90000),
        _static(31, "H261", 90000),
        _static(32, "MPV", 90000),
        _static(33, "MP2T", 90000),
        _static(34, "H263", 90000),
    )
}

# Encoding names are case-insensitive (RFC 4855); these spellings are the usual ones.
_CANONICAL_NAMES = {
    name.casefold(): name
    for name in ["telephone-event", "opus", "speex", "iLBC", "AMR", "AMR-WB", "G7221", "red"]
    + [m.encoding for m in STATIC_PAYLOAD_TYPES.values()]
}

_LINE = re.compile(r"([a-zA-Z])=(.*)")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_UNSPECIFIED = frozenset({"0.0.0.0", "::"})


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """One ``m=`` line with the session-level defaults it inherits already applied."""

    media: str  # "audio", "video", "image", ...
    port: int  # 0: the stream is disabled (rejected or removed)
    port_count: int
    protocol: str  # "RTP/AVP", "RTP/SAVP", "udptl", ...
    formats: tuple[str, ...]  # as written on the m= line
    payload_types: tuple[int, ...]  # the formats, for an RTP protocol
    rtpmaps: tuple[RtpMap, ...]  # one per payload type that has a known encoding
    connection_address: str | None  # media-level c=, else session-level c=
    address_type: str | None  # "IP4" or "IP6"
    direction: Direction  # media-level attribute, else session-level, else sendrecv
    rtcp_port: int | None  # a=rtcp (RFC 3605); None means port + 1
    ptime_ms: int | None
    line: int  # line number of the m= line (1-based)

    @property
    def enabled(self) -> bool:
        """False for port 0: the stream is rejected or removed (RFC 3264)."""
        return self.port != 0

    @property
    def on_hold(self) -> bool:
        """Address 0.0.0.0 / ``::``: the old (RFC 2543) way to put a stream on hold."""
        return self.connection_address in _UNSPECIFIED

    @property
    def expects_media(self) -> bool:
        """The author says it will send RTP on this stream (enabled, not on hold, sends)."""
        return self.enabled and not self.on_hold and self.direction.sends

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        """Encoding of a payload type offered on this stream, or ``None``."""
        for mapping in self.rtpmaps:
            if mapping.payload_type == payload_type:
                return mapping
        return None

    @property
    def codecs(self) -> tuple[str, ...]:
        """Encoding names in the order of the m= line (unknown payload types omitted)."""
        return tuple(m.encoding for m in self.rtpmaps)

    @property
    def telephone_event_payload_type(self) -> int | None:
        """Payload type of RFC 4733 DTMF events, if offered."""
        for mapping in self.rtpmaps:
            if mapping.encoding == "telephone-event":
                return mapping.payload_type
        return None

    def g711_codec(self, payload_type: int) -> Codec | None:
        """The G.711 law carried by ``payload_type`` on this stream, if it is G.711."""
        mapping = self.rtpmap(payload_type)
        if mapping is None or mapping.clock_rate != 8000:
            return None
        if mapping.encoding == "PCMU":
            return Codec.PCMU
        if mapping.encoding == "PCMA":
            return Codec.PCMA
        return None


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A parsed SDP body."""

    origin: str | None  # the o= value as written
    connection_address: str | None  # session-level c=
    address_type: str | None
    direction: Direction  # session-level default for every m= line
    media: tuple[MediaDescription, ...]
    ignored_lines: tuple[int, ...]  # line numbers skipped as junk or unusable attributes

    @property
    def audio(self) -> tuple[MediaDescription, ...]:
        """The ``m=audio`` streams, enabled or not, in order."""
        return tuple(m for m in self.media if m.media == "audio")

    @property
    def active_audio(self) -> tuple[MediaDescription, ...]:
        """The ``m=audio`` streams with a non-zero port."""
        return tuple(m for m in self.media if m.media == "audio" and m.enabled)


def _connection(value: str, number: int) -> tuple[str, str]:
    """Address and address type of a ``c=`` value; SdpError if unusable."""
    fields = value.split()
    if len(fields) != 3:
        raise SdpError(
            f"line {number}: c= needs 3 fields '<nettype> <addrtype> <address>', got {value!r}"
        )
    nettype, address_type, address = fields
    if nettype.upper() != "IN":
        raise SdpError(f"line {number}: c= network type {nettype!r} is not IN")
    address_type = address_type.upper()
    # Multicast addresses carry "/ttl[/count]" (IP4) or "/count" (IP6).
    address = address.split("/", 1)[0]
    parser: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
    if address_type == "IP4":
        parser = ipaddress.IPv4Address
    elif address_type == "IP6":
        parser = ipaddress.IPv6Address
    else:
        raise SdpError(f"line {number}: c= address type {address_type!r} is not IP4 or IP6")
    try:
        # Normalised text (compressed IPv6), the form the capture reader produces.
        return str(parser(address)), address_type
    except ValueError:
        pass
    if _HOSTNAME.fullmatch(address) and not address.replace(".", "").isdigit():
        return address, address_type  # RFC 8866 allows a domain name here
    raise SdpError(f"line {number}: c= address {address!r} is not a valid {address_type} address")


def _port(text: str, number: int) -> tuple[int, int]:
    port_text, _, count_text = text.partition("/")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise SdpError(f"line {number}: m= port {text!r} is not a port number (0-65535)")
    if count_text and (not count_text.isdigit() or int(count_text) == 0):
        raise SdpError(f"line {number}: m= port count {count_text!r} is not a positive number")
    return int(port_text), int(count_text) if count_text else 1


def _rtpmap(value: str) -> RtpMap | None:
    """``<pt> <name>/<rate>[/<channels>]``; ``None`` if malformed."""
    pt_text, _, encoding = value.partition(" ")
    parts = encoding.strip().split("/")
    if not pt_text.isdigit() or int(pt_text) > 127 or len(parts) not in (2, 3):
        return None
    if not parts[0] or not parts[1].isdigit() or (len(parts) == 3 and not parts[2].isdigit()):
        return None
    name = _CANONICAL_NAMES.get(parts[0].casefold(), parts[0])
    return RtpMap(int(pt_text), name, int(parts[1]), int(parts[2]) if len(parts) == 3 else None)


class _MediaBuilder:
    """Collects one m= section's lines until the next m= line or the end."""

    def __init__(
        self,
        number: int,
        media: str,
        port: int,
        count: int,
        protocol: str,
        formats: tuple[str, ...],
        payload_types: tuple[int, ...],
    ) -> None:
        self.number = number
        self.media = media
        self.port = port
        self.port_count = count
        self.protocol = protocol
        self.formats = formats
        self.payload_types = payload_types
        self.connection: tuple[str, str] | None = None
        self.direction: Direction | None = None
        self.rtpmaps: dict[int, RtpMap] = {}
        self.rtcp_port: int | None = None
        self.ptime_ms: int | None = None

    def build(
        self, session_connection: tuple[str, str] | None, session_direction: Direction
    ) -> MediaDescription:
        connection = self.connection or session_connection
        if connection is None and self.media == "audio" and self.port != 0:
            raise SdpError(
                f"line {self.number}: m=audio has no connection address "
                "(no c= line at session or media level)"
            )
        rtpmaps = []
        for pt in self.payload_types:
            mapping = self.rtpmaps.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
            if mapping is not None:
                rtpmaps.append(mapping)
        return MediaDescription(
            media=self.media,
            port=self.port,
            port_count=self.port_count,
            protocol=self.protocol,
            formats=self.formats,
            payload_types=self.payload_types,
            rtpmaps=tuple(rtpmaps),
            connection_address=connection[0] if connection else None,
            address_type=connection[1] if connection else None,
            direction=self.direction or session_direction,
            rtcp_port=self.rtcp_port,
            ptime_ms=self.ptime_ms,
            line=self.number,
        )


def _media_line(value: str, number: int) -> _MediaBuilder:
    fields = value.split()
    if len(fields) < 3:
        raise SdpError(f"line {number}: m= needs '<media> <port> <proto> <fmt> ...', got {value!r}")
    media, port_text, protocol, *formats = fields
    port, count = _port(port_text, number)
    payload_types: tuple[int, ...] = ()
    if "RTP" in protocol.upper():
        for fmt in formats:
            if not fmt.isdigit() or int(fmt) > 127:
                raise SdpError(
                    f"line {number}: m= format {fmt!r} is not an RTP payload type (0-127)"
                )
        payload_types = tuple(int(fmt) for fmt in formats)
    return _MediaBuilder(
        number, media.lower(), port, count, protocol, tuple(formats), payload_types
    )


def parse_sdp(body: str) -> SessionDescription:
    """Parse an SDP body; raise :class:`SdpError` if it is unusable.

    Unusable means: empty, no ``v=`` and no ``m=`` line (not SDP), ``v=`` other than 0, a
    ``c=`` or ``m=`` line that does not parse, or an enabled ``m=audio`` stream with no
    connection address. A body with no media lines is valid and has ``media == ()``.
    """
    if not body.strip():
        raise SdpError("empty SDP body")
    ignored: list[int] = []
    origin: str | None = None
    session_connection: tuple[str, str] | None = None
    session_direction: Direction | None = None
    seen_version = False
    current: _MediaBuilder | None = None
    sections: list[_MediaBuilder] = []
    for number, raw in enumerate(body.split("\n"), start=1):
        line = raw.rstrip("\r\t ")
        if not line:
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            ignored.append(number)
            continue
        kind, value = match.group(1), match.group(2)
        if kind == "v":
            if value.strip() != "0":
                raise SdpError(f"line {number}: v={value!r}: only SDP version 0 exists")
            seen_version = True
        elif kind == "o":
            origin = value
        elif kind == "m":
            current = _media_line(value, number)
            sections.append(current)
        elif kind == "c":
            connection = _connection(value, number)
            if current is None:
                session_connection = connection
            elif current.connection is None:
                # Further c= lines in one section are layered multicast; the first is
                # the base address.
                current.connection = connection
        elif kind == "a":
            name, _, attribute_value = value.partition(":")
            name = name.strip().lower()
            if name in Direction.__members__.values():
                if current is None:
                    session_direction = Direction(name)
                else:
                    current.direction = Direction(name)
            elif current is None:
                pass  # other session-level attributes do not concern media
            elif name == "rtpmap":
                mapping = _rtpmap(attribute_value.strip())
                if mapping is None:
                    ignored.append(number)
                else:
                    current.rtpmaps[mapping.payload_type] = mapping
            elif name == "rtcp":
                port_text = attribute_value.split()[0] if attribute_value.split() else ""
                if port_text.isdigit() and 0 < int(port_text) <= 65535:
                    current.rtcp_port = int(port_text)
                else:
                    ignored.append(number)
            elif name == "ptime":
                ptime_text = attribute_value.strip()
                if ptime_text.isdigit() and int(ptime_text) > 0:
                    current.ptime_ms = int(ptime_text)
                else:
                    ignored.append(number)
    if not seen_version and not sections:
        raise SdpError("not an SDP body: no v= line and no m= line")
    direction = session_direction or Direction.SENDRECV
    media = tuple(s.build(session_connection, direction) for s in sections)
    return SessionDescription(
        origin=origin,
        connection_address=session_connection[0] if session_connection else None,
        address_type=session_connection[1] if session_connection else None,
        direction=direction,
        media=media,
        ignored_lines=tuple(ignored),
    )
