"""Synthetic dialogs for the supervision tests: SDP bodies and RTP streams of G.711."""

from __future__ import annotations

import math
import random
import struct

from sidecar.media.g711 import Codec, encode

RATE = 8000
FRAME = 160  # 20 ms


def sdp(ip: str, port: int, codec: Codec = Codec.PCMA, origin: str = "user 1 1",
        direction: str = "sendrecv") -> str:
    pt = 8 if codec is Codec.PCMA else 0
    return (f"v=0\r\no={origin} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {pt} 101\r\na=rtpmap:{pt} {codec.name}/8000\r\n"
            f"a=rtpmap:101 telephone-event/8000\r\na={direction}\r\n")


def rtp(seq: int, ts: int, ssrc: int, pt: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def tone(freqs: tuple[int, ...], seconds: float, amplitude: float = 6000.0) -> list[float]:
    n = int(seconds * RATE)
    return [sum(amplitude * math.sin(2 * math.pi * f * i / RATE) for f in freqs)
            for i in range(n)]


def speech_like(seconds: float, seed: int = 1) -> list[float]:
    """Loud noise with a syllable-rate envelope: voiced, and no steady tone."""
    rnd = random.Random(seed)
    n = int(seconds * RATE)
    out = []
    for i in range(n):
        env = 0.55 + 0.45 * math.sin(2 * math.pi * 4 * i / RATE)
        out.append(rnd.gauss(0, 5000) * env)
    return out


def quiet(seconds: float, seed: int = 2) -> list[float]:
    rnd = random.Random(seed)
    return [rnd.gauss(0, 30) for _ in range(int(seconds * RATE))]


def packets(samples: list[float], start_ms: int, codec: Codec = Codec.PCMA,
            ssrc: int = 0x1234, seq0: int = 100) -> list[tuple[int, bytes]]:
    """(arrival ms, RTP datagram) every 20 ms from ``start_ms``."""
    data = encode(samples, codec)
    pt = 8 if codec is Codec.PCMA else 0
    out = []
    for k in range(len(data) // FRAME):
        out.append((start_ms + 20 * k,
                    rtp(seq0 + k, 1000 + k * FRAME, ssrc, pt, data[k * FRAME:(k + 1) * FRAME])))
    return out
