"""Ringback and silence detection speed: seconds of audio analysed per second of CPU.

FAS detection looks at the first 10 s of the callee's stream of every answered call.
For several kinds of callee audio this feeds 10 s of G.711 in 20 ms packets to
``RingbackDetector`` and ``SilenceDetector`` (separately and together) and prints the
rate as "x real time" and as answered calls per second one core can screen.

Usage: python benchmarks/bench_tones.py [--calls N]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidecar.media.g711 import Codec, encode
from sidecar.media.tones import RingbackDetector, SilenceDetector

RATE = 8000
SECONDS = 10.0
PACKET = 160  # 20 ms
PEAK_0DBM0 = 22300.0


def _tone(freqs: tuple[float, ...], dbm0: float, n: int, start: int = 0) -> list[float]:
    a = PEAK_0DBM0 * 10 ** (dbm0 / 20)
    return [
        sum(a * math.sin(2 * math.pi * f * i / RATE) for f in freqs)
        for i in range(start, start + n)
    ]


def ringback_north_america() -> list[float]:
    """2 s of 440+480 Hz, 4 s off: detection ends the analysis after 176 ms."""
    on = _tone((440, 480), -19, 2 * RATE)
    return (on + [0.0] * 4 * RATE + on)[: int(SECONDS * RATE)]


def speech_like() -> list[float]:
    """Harmonics of a gliding 100-250 Hz voice with a syllable envelope: no detection."""
    rng = random.Random(3)
    out = []
    phase = 0.0
    for n in range(int(SECONDS * RATE)):
        t = n / RATE
        f0 = 175 + 75 * math.sin(2 * math.pi * 0.7 * t)
        phase += 2 * math.pi * f0 / RATE
        envelope = 0.5 + 0.5 * math.sin(2 * math.pi * 4 * t) ** 2
        value = sum(math.sin(k * phase) / k for k in range(1, 12))
        out.append(4000 * envelope * value + rng.gauss(0, 200))
    return out


def loud_noise() -> list[float]:
    """Worst case: every block is loud enough to be analysed, none rings."""
    rng = random.Random(1)
    return [rng.gauss(0, 3000) for _ in range(int(SECONDS * RATE))]


def silence() -> list[float]:
    """Dead air: blocks fall under the level floor and skip the filters."""
    return [0.0] * int(SECONDS * RATE)


def run(
    packets: list[bytes], codec: Codec, calls: int, ringback: bool, silence_frames: bool
) -> float:
    """CPU seconds to screen ``calls`` streams of these packets."""
    start = time.process_time()
    for _ in range(calls):
        ring = RingbackDetector() if ringback else None
        quiet = SilenceDetector() if silence_frames else None
        for payload in packets:
            if ring is not None and not ring.finished:
                ring.feed(payload, codec)
            if quiet is not None:
                quiet.feed(payload, codec)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="streams per measurement")
    args = parser.parse_args()
    signals: dict[str, Callable[[], list[float]]] = {
        "ringback (NA, found at 176 ms)": ringback_north_america,
        "speech-like": speech_like,
        "loud white noise (worst case)": loud_noise,
        "digital silence": silence,
    }
    print(
        f"{SECONDS:.0f} s callee streams, 20 ms packets, {args.calls} streams each; "
        "rate = s of audio per CPU s (calls/s/core = rate / 10)"
    )
    print(f"{'audio':34} {'codec':5} {'ringback':>10} {'silence':>10} {'both':>10}")
    for name, make in signals.items():
        samples = make()
        for codec in Codec:
            data = encode(samples, codec)
            packets = [data[i : i + PACKET] for i in range(0, len(data), PACKET)]
            audio = args.calls * SECONDS
            rates = [
                audio / run(packets, codec, args.calls, ring, quiet)
                for ring, quiet in ((True, False), (False, True), (True, True))
            ]
            print(f"{name:34} {codec.name:5} " + " ".join(f"{r:9,.0f}x" for r in rates))


if __name__ == "__main__":
    main()
