"""G.711 (PCMU / PCMA) decoding to 16-bit linear samples.

Decoding is a lookup in one of two 256-entry tables built at import from the bit layout
in ITU-T G.711. ``audioop`` is not used: it is deprecated and removed in Python 3.13.

Scale: the tables give the 16-bit left-justified values that G.711 implementations
conventionally produce (mu-law 14-bit magnitudes times 4, A-law 13-bit magnitudes times 8),
so mu-law spans -32124..32124 and A-law -32256..32256. The silence threshold (mean absolute
sample 512) in :mod:`sidecar.media.tones` is stated on this scale.

The encoders here are for synthesising test and lab audio, not for a hot path.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = [
    "ALAW_TO_LINEAR",
    "ULAW_TO_LINEAR",
    "Codec",
    "codec_for_payload_type",
    "decode",
    "decode_alaw",
    "decode_ulaw",
    "encode",
    "encode_alaw",
    "encode_ulaw",
]


def _ulaw_byte_to_linear(code: int) -> int:
    # G.711 mu-law: the byte is transmitted inverted; sign bit 1 means negative after
    # inversion; the magnitude is a biased segment/mantissa pair (bias 0x84 = 132).
    u = ~code & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -magnitude if u & 0x80 else magnitude


def _alaw_byte_to_linear(code: int) -> int:
    # G.711 A-law: even bits are inverted on the line (XOR 0x55); sign bit 1 is positive.
    a = code ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = (mantissa << 4) + 8 if exponent == 0 else (mantissa << 4) + 264 << exponent - 1
    return magnitude if a & 0x80 else -magnitude


#: Linear value of each mu-law byte (index = byte).
ULAW_TO_LINEAR: tuple[int, ...] = tuple(_ulaw_byte_to_linear(b) for b in range(256))
#: Linear value of each A-law byte (index = byte).
ALAW_TO_LINEAR: tuple[int, ...] = tuple(_alaw_byte_to_linear(b) for b in range(256))


class Codec(enum.Enum):
    """The two G.711 laws, valued by their static RTP payload type (RFC 3551)."""

    PCMU = 0
    PCMA = 8

    @property
    def table(self) -> tuple[int, ...]:
        """The 256-entry byte -> linear sample table of this law."""
        return ULAW_TO_LINEAR if self is Codec.PCMU else ALAW_TO_LINEAR


def codec_for_payload_type(payload_type: int) -> Codec | None:
    """Return the G.711 codec of a static RTP payload type (0, 8), else ``None``.

    Dynamic payload types need the SDP rtpmap; see :mod:`sidecar.media.sdp`.
    """
    if payload_type == 0:
        return Codec.PCMU
    if payload_type == 8:
        return Codec.PCMA
    return None


def decode_ulaw(data: bytes) -> list[int]:
    """Decode mu-law bytes to 16-bit linear samples."""
    return list(map(ULAW_TO_LINEAR.__getitem__, data))


def decode_alaw(data: bytes) -> list[int]:
    """Decode A-law bytes to 16-bit linear samples."""
    return list(map(ALAW_TO_LINEAR.__getitem__, data))


def decode(data: bytes, codec: Codec) -> list[int]:
    """Decode G.711 bytes of the given law to 16-bit linear samples."""
    return list(map(codec.table.__getitem__, data))


def _linear16(sample: float) -> int:
    value = round(sample)
    return -32768 if value < -32768 else 32767 if value > 32767 else value


def _ulaw_from_linear(sample: int) -> int:
    # Inverse of _ulaw_byte_to_linear: clip so the biased magnitude fits 15 bits, take the
    # segment from the highest set bit, the next four bits as mantissa (truncating, which
    # lands on the level whose interval holds the sample), invert for the line.
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = magnitude.bit_length() - 8
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | exponent << 4 | mantissa) & 0xFF


def _alaw_from_linear(sample: int) -> int:
    # Inverse of _alaw_byte_to_linear on the 13-bit value; A-law takes the one's
    # complement of negative values, and segment 0 shares segment 1's step.
    pcm = sample >> 3
    if pcm >= 0:
        line_mask = 0xD5  # sign bit 1 (positive), then the even-bit inversion 0x55
    else:
        line_mask = 0x55
        pcm = ~pcm
    pcm = min(pcm, 0x0FFF)
    segment = max(0, pcm.bit_length() - 5)
    mantissa = (pcm >> (segment or 1)) & 0x0F
    return (segment << 4 | mantissa) ^ line_mask


def encode_ulaw(samples: Iterable[float]) -> bytes:
    """Encode linear samples (16-bit scale; rounded, clipped) to mu-law bytes per G.711."""
    return bytes(_ulaw_from_linear(_linear16(s)) for s in samples)


def encode_alaw(samples: Iterable[float]) -> bytes:
    """Encode linear samples (16-bit scale; rounded, clipped) to A-law bytes per G.711."""
    return bytes(_alaw_from_linear(_linear16(s)) for s in samples)


def encode(samples: Iterable[float], codec: Codec) -> bytes:
    """Encode linear samples to G.711 bytes of the given law."""
    if codec is Codec.PCMU:
        return encode_ulaw(samples)
    return encode_alaw(samples)
