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
from bisect import bisect_left
from collections.abc import Iterable, Sequence

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


def _build_encoder(table: tuple[int, ...]) -> tuple[list[int], list[int]]:
    # Sorted distinct output levels and, for each, the byte that produces it. When two
    # bytes decode to the same level (mu-law +0 and -0) keep the positive-zero byte 0xFF,
    # the one a G.711 encoder emits for 0.
    best: dict[int, int] = {}
    for code, level in enumerate(table):
        if level not in best or code == 0xFF:
            best[level] = code
    levels = sorted(best)
    return levels, [best[level] for level in levels]


_ULAW_LEVELS, _ULAW_CODES = _build_encoder(ULAW_TO_LINEAR)
_ALAW_LEVELS, _ALAW_CODES = _build_encoder(ALAW_TO_LINEAR)


def _encode(samples: Iterable[float], levels: Sequence[int], codes: Sequence[int]) -> bytes:
    # G.711 places each decision threshold midway between two output levels, so encoding
    # is "nearest output level"; ties go to the level nearer zero.
    out = bytearray()
    last = len(levels) - 1
    for sample in samples:
        i = bisect_left(levels, sample)
        if i > last:
            i = last
        elif i > 0:
            below, above = levels[i - 1], levels[i]
            if sample - below < above - sample or (
                sample - below == above - sample and abs(below) < abs(above)
            ):
                i -= 1
        out.append(codes[i])
    return bytes(out)


def encode_ulaw(samples: Iterable[float]) -> bytes:
    """Encode linear samples (16-bit scale, clipped) to mu-law bytes, nearest level."""
    return _encode(samples, _ULAW_LEVELS, _ULAW_CODES)


def encode_alaw(samples: Iterable[float]) -> bytes:
    """Encode linear samples (16-bit scale, clipped) to A-law bytes, nearest level."""
    return _encode(samples, _ALAW_LEVELS, _ALAW_CODES)


def encode(samples: Iterable[float], codec: Codec) -> bytes:
    """Encode linear samples to G.711 bytes of the given law."""
    if codec is Codec.PCMU:
        return encode_ulaw(samples)
    return encode_alaw(samples)
