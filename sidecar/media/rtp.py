"""RTP fixed-header parsing (RFC 3550) from a UDP payload.

Built for a capture loop that sees every datagram: one ``struct.unpack_from`` for the
fixed header, no object decode, ``None`` (not an exception) for anything that is not RTP,
because most of what a sidecar capture sees that is not RTP is ordinary traffic, not error.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["RTP_VERSION", "RtpHeader", "is_rtcp", "parse_rtp"]

RTP_VERSION = 2

_FIXED = struct.Struct("!BBHII")
_unpack_fixed = _FIXED.unpack_from
_unpack_u16 = struct.Struct("!H").unpack_from
_new = tuple.__new__  # RtpHeader(...) runs a Python-level __new__; this is the C one

# RFC 5761 section 4: with RTP and RTCP on one port, an RTCP packet type (192..223: SR 200,
# RR 201, SDES 202, BYE 203, APP 204, RTPFB 205, PSFB 206, XR 207, ...) reads as an RTP
# marker bit plus payload type 64..95. Those payload types are never assigned to RTP.
_RTCP_FIRST = 192
_RTCP_LAST = 223


class RtpHeader(NamedTuple):
    """The fields of an RTP header the sidecar uses, and where the payload lies.

    ``data[payload_offset:payload_end]`` is the media payload (CSRCs, header extension
    and padding excluded).
    """

    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload_offset: int
    payload_end: int

    @property
    def payload_length(self) -> int:
        """Number of media payload bytes."""
        return self.payload_end - self.payload_offset


def parse_rtp(data: bytes) -> RtpHeader | None:
    """Parse the RTP header of a UDP payload; ``None`` if it is not an RTP packet.

    Rejected: shorter than 12 bytes, version other than 2, RTCP (second byte 192..223),
    CSRC list or header extension running past the end, padding count of 0 or larger than
    what is left. A zero-length payload (e.g. a keep-alive) is accepted.
    """
    size = len(data)
    if size < 12:
        return None
    b0, b1, sequence, timestamp, ssrc = _unpack_fixed(data)
    if _RTCP_FIRST <= b1 <= _RTCP_LAST:
        return None
    if b0 == 0x80:  # no CSRC, extension or padding: the usual case
        return _new(RtpHeader, (b1 & 0x7F, b1 > 0x7F, sequence, timestamp, ssrc, 12, size))
    if b0 & 0xC0 != 0x80:
        return None
    offset = 12 + ((b0 & 0x0F) << 2)
    if b0 & 0x10:
        # Extension: 16-bit profile-defined id, 16-bit length in 32-bit words, then data.
        if offset + 4 > size:
            return None
        offset += 4 + (_unpack_u16(data, offset + 2)[0] << 2)
    end = size
    if b0 & 0x20:
        padding = data[-1]
        if padding == 0:
            return None
        end -= padding
    if offset > end:
        return None
    return _new(RtpHeader, (b1 & 0x7F, b1 > 0x7F, sequence, timestamp, ssrc, offset, end))


def is_rtcp(data: bytes) -> bool:
    """True if the datagram starts like an RTCP packet (version 2, type 192..223)."""
    return len(data) >= 8 and data[0] & 0xC0 == 0x80 and _RTCP_FIRST <= data[1] <= _RTCP_LAST
