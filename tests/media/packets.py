"""Builders for test frames and audio: hand-made bytes, so each test controls every field.

dpkt writes the capture files (``dpkt.pcap.Writer``, ``dpkt.pcapng.Writer``); the frames
inside are built here with ``struct`` because dpkt leaves IPv6 and UDP lengths at zero
unless told, and tests of a parser want to say exactly what is on the wire.
"""

from __future__ import annotations

import ipaddress
import math
import random
import struct
from collections.abc import Iterable, Sequence

from sidecar.media.g711 import Codec, encode

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = 0x8100
ETH_QINQ = 0x88A8
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def _raw(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header (checksum 0: not computed, allowed over IPv4) and payload."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, payload: bytes, flags: int = 0x18, options: bytes = b"") -> bytes:
    """A TCP header (PSH+ACK by default) with optional options, and payload."""
    assert len(options) % 4 == 0
    offset = (20 + len(options)) // 4
    return (
        struct.pack("!HHIIBBHHH", sport, dport, 1, 1, offset << 4, flags, 65535, 0, 0)
        + options
        + payload
    )


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    ident: int = 1,
    more_fragments: bool = False,
    fragment_offset: int = 0,
    dont_fragment: bool = False,
    options: bytes = b"",
    total_length: int | None = None,
) -> bytes:
    """An IPv4 header with a valid checksum, and payload. Offsets are in bytes."""
    assert fragment_offset % 8 == 0 and len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    flags = (0x4000 if dont_fragment else 0) | (0x2000 if more_fragments else 0)
    length = 4 * ihl + len(payload) if total_length is None else total_length
    header = (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            0,
            length,
            ident,
            flags | fragment_offset // 8,
            64,
            proto,
            0,
            _raw(src),
            _raw(dst),
        )
        + options
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    """An IPv6 header and payload (extension headers go in the payload)."""
    return (
        struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64, _raw(src), _raw(dst))
        + payload
    )


def ipv6_fragment_header(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    """An IPv6 Fragment extension header (offset in bytes, a multiple of 8)."""
    return struct.pack("!BBHI", next_header, 0, offset | int(more), ident)


def ipv6_options_header(next_header: int, padding_units: int = 0) -> bytes:
    """A hop-by-hop / destination options header padded with PadN, 8 * (1 + units) bytes."""
    size = 8 * (1 + padding_units)
    return struct.pack("!BBBB", next_header, padding_units, 1, size - 4) + b"\0" * (size - 4)


def ethernet(
    payload: bytes, ethertype: int = ETH_IPV4, vlans: Sequence[tuple[int, int]] = ()
) -> bytes:
    """An Ethernet II frame; ``vlans`` is a list of (tag type, VLAN id), outermost first."""
    tags = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in vlans)
    return MAC_B + MAC_A + tags + struct.pack("!H", ethertype) + payload


def sll(payload: bytes, protocol: int = ETH_IPV4) -> bytes:
    """Linux cooked capture v1 header (16 bytes): incoming packet, Ethernet hardware."""
    return struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", protocol) + payload


def sll2(payload: bytes, protocol: int = ETH_IPV4) -> bytes:
    """Linux cooked capture v2 header (20 bytes)."""
    return struct.pack("!HHIHBB8s", protocol, 0, 1, 1, 0, 6, MAC_A + b"\0\0") + payload


def rtp(
    payload: bytes,
    *,
    payload_type: int = 8,
    sequence: int = 1,
    timestamp: int = 0,
    ssrc: int = 0x11223344,
    marker: bool = False,
    csrcs: Sequence[int] = (),
    extension: bytes | None = None,
    padding: int = 0,
) -> bytes:
    """An RTP packet; ``extension`` is the extension data (a multiple of 4 bytes)."""
    b0 = 0x80 | len(csrcs) | (0x10 if extension is not None else 0) | (0x20 if padding else 0)
    b1 = payload_type | (0x80 if marker else 0)
    out = struct.pack("!BBHII", b0, b1, sequence, timestamp, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if extension is not None:
        assert len(extension) % 4 == 0
        out += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    out += payload
    if padding:
        out += b"\0" * (padding - 1) + bytes([padding])
    return out


# --- Audio ---------------------------------------------------------------------------

SAMPLE_RATE = 8000
# Peak of a 0 dBm0 sine on the 16-bit scale of sidecar.media.g711 (G.711's maximum,
# 32124 for mu-law, is +3.17 dBm0).
PEAK_0DBM0 = 22300.0


def level(dbm0: float) -> float:
    """Peak amplitude of a sine at ``dbm0``."""
    return PEAK_0DBM0 * 10 ** (dbm0 / 20)


def tone(
    frequencies: Iterable[float], dbm0: float, seconds: float, start: float = 0.0
) -> list[float]:
    """Sum of sines, each at ``dbm0``; ``start`` (s) sets the phase continuity point."""
    amplitude = level(dbm0)
    freqs = list(frequencies)
    first = round(start * SAMPLE_RATE)
    return [
        sum(amplitude * math.sin(2 * math.pi * f * n / SAMPLE_RATE) for f in freqs)
        for n in range(first, first + round(seconds * SAMPLE_RATE))
    ]


def silence(seconds: float) -> list[float]:
    return [0.0] * round(seconds * SAMPLE_RATE)


def cadence(
    frequencies: Sequence[float], dbm0: float, pattern: Sequence[float], seconds: float
) -> list[float]:
    """A ringback cadence: ``pattern`` alternates on/off durations (s), repeated."""
    out: list[float] = []
    on = True
    i = 0
    while len(out) < seconds * SAMPLE_RATE:
        duration = pattern[i % len(pattern)]
        out += (
            tone(frequencies, dbm0, duration, start=len(out) / SAMPLE_RATE)
            if on
            else silence(duration)
        )
        on = not on
        i += 1
    return out[: round(seconds * SAMPLE_RATE)]


def white_noise(rms: float, seconds: float, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0.0, rms) for _ in range(round(seconds * SAMPLE_RATE))]


def speech_like(seconds: float, seed: int = 3) -> list[float]:
    """Voiced-speech stand-in: a gliding 100-250 Hz fundamental with formant-weighted
    harmonics up to 3.4 kHz, a 4 Hz syllabic envelope and some breath noise."""
    rng = random.Random(seed)
    out = []
    phase = 0.0
    formants = (500.0, 1500.0, 2500.0)
    for n in range(round(seconds * SAMPLE_RATE)):
        t = n / SAMPLE_RATE
        f0 = 175 + 75 * math.sin(2 * math.pi * 0.7 * t)
        phase += 2 * math.pi * f0 / SAMPLE_RATE
        envelope = 0.5 + 0.5 * math.sin(2 * math.pi * 4 * t) ** 2
        value = 0.0
        for k in range(1, int(3400 / f0)):
            fk = k * f0
            weight = sum(1 / (1 + ((fk - f) / 150) ** 2) for f in formants)
            value += weight * math.sin(k * phase)
        out.append(3000 * envelope * value + rng.gauss(0, 200))
    return out


def multitone(seconds: float) -> list[float]:
    """Several non-ringback tones with slowly varying amplitudes."""
    out = []
    for n in range(round(seconds * SAMPLE_RATE)):
        t = n / SAMPLE_RATE
        out.append(
            sum(
                level(-20)
                * (0.6 + 0.4 * math.sin(2 * math.pi * r * t))
                * math.sin(2 * math.pi * f * t)
                for f, r in ((300, 0.5), (700, 1.3), (1100, 0.9), (1700, 2.1), (2300, 0.3))
            )
        )
    return out


def packetize(samples: Sequence[float], codec: Codec, samples_per_packet: int = 160) -> list[bytes]:
    """Encode to G.711 and cut into RTP payloads (160 samples = 20 ms)."""
    data = encode(samples, codec)
    return [data[i : i + samples_per_packet] for i in range(0, len(data), samples_per_packet)]
