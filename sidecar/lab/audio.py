"""Audio for the lab's SIPp scenarios: small RTP captures for ``play_pcap_audio``.

SIPp 3.6.1 plays a capture by sending the UDP payload of each packet (the whole RTP
packet: header, payload type, SSRC, sequence numbers and timestamps as they are in the
file) from the call's own media port to the far side's SDP address, paced by the
capture's timestamps. So a file here decides the codec on the wire: the scenario's SDP
must announce the payload type the file carries (8 for PCMA, 0 for PCMU).

The files are made by :func:`build_all` (``python -m sidecar.lab.audio``) into
``kamailio/sipp/audio/``, with the project's own G.711 encoder
(:mod:`sidecar.media.g711`) and dpkt's pcap writer: 20 ms packets (160 samples), an
SSRC of their own per file (never the one of ``g711a.pcap``, which both sides of the
stock scenarios already share), sequence numbers and timestamps advancing by 1 and 160,
the marker bit on the first packet. Everything is deterministic (fixed seeds and capture
times), so rebuilding gives byte-identical files.

Scenarios refer to them relative to the scenario file (``audio/NAME.pcap``): SIPp 3.6.1
looks for a ``play_pcap_audio`` file next to the scenario first.

Speech comes from ``/usr/share/sip-tester/g711a.pcap`` (shipped with SIPp, A-law, 30 ms
packets): cut to 20 ms packets for the PCMA announcement, transcoded to mu-law for the
PCMU caller.
"""

from __future__ import annotations

import argparse
import math
import random
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dpkt

from sidecar.media.g711 import Codec, decode, encode
from sidecar.media.pcap import read_capture
from sidecar.media.rtp import parse_rtp

from . import KAMAILIO_DIR

__all__ = [
    "AUDIO_DIR",
    "AUDIO_FILES",
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "SIPP_SPEECH",
    "AudioFile",
    "build_all",
    "cadenced_tone",
    "low_noise",
    "main",
    "speech_samples",
    "tone",
    "write_rtp_pcap",
]

#: Where the scenarios of ``kamailio/sipp/`` find their generated audio.
AUDIO_DIR = KAMAILIO_DIR / "sipp" / "audio"
#: The speech capture that SIPp ships (PCMA, 30 ms packets, about 7 s).
SIPP_SPEECH = Path("/usr/share/sip-tester/g711a.pcap")

SAMPLE_RATE = 8000
FRAME_SAMPLES = 160  # 20 ms
_FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
# Capture time of the first packet of every file: fixed, so rebuilds are identical.
_EPOCH = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
# Addresses and port written into the files; SIPp replaces the ports with the call's
# media ports (it keeps the difference to the lowest destination port, here 0) and sends
# from its own media address, so these only need to be well formed.
_FILE_IP = bytes([127, 0, 0, 1])
_FILE_PORT = 6000

# Levels on the 16-bit scale of sidecar.media.g711. A 0 dBm0 sine peaks near 22,700;
# ringback is sent at about -16..-19 dBm0 per frequency.
_RINGBACK_PEAK = 4000.0


def tone(frequencies: Sequence[float], seconds: float, peak: float) -> list[float]:
    """A sum of equal-amplitude sines, each with the given peak, phase 0 at sample 0."""
    count = round(seconds * SAMPLE_RATE)
    steps = [2.0 * math.pi * f / SAMPLE_RATE for f in frequencies]
    return [peak * sum(math.sin(w * n) for w in steps) for n in range(count)]


def cadenced_tone(
    frequencies: Sequence[float], on_s: float, off_s: float, seconds: float, peak: float
) -> list[float]:
    """A tone switched on for ``on_s`` and off (digital zero) for ``off_s``, repeated.

    The tone keeps one phase clock across bursts, as a tone generator gated on and off.
    """
    steps = [2.0 * math.pi * f / SAMPLE_RATE for f in frequencies]
    period = round((on_s + off_s) * SAMPLE_RATE)
    on = round(on_s * SAMPLE_RATE)
    return [
        peak * sum(math.sin(w * n) for w in steps) if n % period < on else 0.0
        for n in range(round(seconds * SAMPLE_RATE))
    ]


def low_noise(seconds: float, rms: float, seed: int) -> list[float]:
    """Gaussian noise of the given RMS: the hiss of an idle line, far under speech."""
    rng = random.Random(seed)
    return [rng.gauss(0.0, rms) for _ in range(round(seconds * SAMPLE_RATE))]


def speech_samples(
    source: Path = SIPP_SPEECH, start_s: float = 0.0, seconds: float | None = None
) -> list[int]:
    """Linear samples of an RTP G.711 capture (SIPp's ``g711a.pcap`` by default).

    Payloads are joined in capture order, every codec by its payload type; ``start_s``
    and ``seconds`` cut a window out of the result.
    """
    samples: list[int] = []
    for packet in read_capture(source):
        header = parse_rtp(packet.payload)
        if header is None or header.payload_type not in (0, 8):
            continue
        payload = packet.payload[header.payload_offset : header.payload_end]
        samples += decode(payload, Codec(header.payload_type))
    if not samples:
        raise ValueError(f"{source}: no G.711 RTP packets")
    first = round(start_s * SAMPLE_RATE)
    last = None if seconds is None else first + round(seconds * SAMPLE_RATE)
    return samples[first:last]


def _ssrc(name: str) -> int:
    # A stable SSRC per file name, never 0.
    return zlib.crc32(name.encode()) or 1


def write_rtp_pcap(path: Path, samples: Sequence[float], codec: Codec) -> int:
    """Write ``samples`` as 20 ms RTP packets of ``codec`` to a pcap; return the count.

    A trailing partial frame is dropped. SSRC, first sequence number and first RTP
    timestamp derive from the file name, so two files never share an SSRC.
    """
    payload_bytes = encode(samples, codec)
    frames = len(payload_bytes) // FRAME_SAMPLES
    ssrc = _ssrc(path.name)
    first_seq = ssrc & 0x7FFF
    first_ts = (ssrc >> 3) & 0x0FFFFFFF
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        writer = dpkt.pcap.Writer(fh, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        for i in range(frames):
            rtp = (
                struct.pack(
                    "!BBHII",
                    0x80,  # version 2, no padding, no extension, no CSRC
                    (0x80 if i == 0 else 0) | codec.value,  # marker on the first packet
                    (first_seq + i) & 0xFFFF,
                    (first_ts + i * FRAME_SAMPLES) & 0xFFFFFFFF,
                    ssrc,
                )
                + payload_bytes[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
            )
            udp = dpkt.udp.UDP(sport=_FILE_PORT, dport=_FILE_PORT, data=rtp)
            udp.ulen = len(udp)
            ip = dpkt.ip.IP(src=_FILE_IP, dst=_FILE_IP, p=dpkt.ip.IP_PROTO_UDP, ttl=64, data=udp)
            ip.len = len(ip)
            frame = dpkt.ethernet.Ethernet(
                src=b"\0" * 6, dst=b"\0" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip
            )
            writer.writepkt(bytes(frame), ts=_EPOCH + i * _FRAME_S)
    tmp.replace(path)
    return frames


@dataclass(frozen=True)
class AudioFile:
    """One generated file: its name under :data:`AUDIO_DIR`, codec, content and recipe."""

    name: str
    codec: Codec
    description: str
    samples: Callable[[], list[float]]


def _floats(values: list[int]) -> list[float]:
    return [float(v) for v in values]


#: Every file the scenarios use, by name.
AUDIO_FILES: dict[str, AudioFile] = {
    f.name: f
    for f in (
        AudioFile(
            "ringback_eu_pcma.pcap",
            Codec.PCMA,
            "European ringback: 425 Hz, 1 s on / 4 s off, 7 s (two bursts)",
            lambda: cadenced_tone((425,), 1.0, 4.0, 7.0, _RINGBACK_PEAK),
        ),
        AudioFile(
            "ringback_eu_early_pcma.pcap",
            Codec.PCMA,
            "European ringback as early media: 425 Hz continuous, 1.8 s",
            lambda: tone((425,), 1.8, _RINGBACK_PEAK),
        ),
        AudioFile(
            "ringback_us_pcmu.pcap",
            Codec.PCMU,
            "North American ringback: 440+480 Hz, 2 s on / 4 s off, 7 s (two bursts)",
            lambda: cadenced_tone((440, 480), 2.0, 4.0, 7.0, _RINGBACK_PEAK * 0.7),
        ),
        AudioFile(
            "silence_pcma.pcap",
            Codec.PCMA,
            "idle line: Gaussian noise of RMS 40 (mean |sample| about 35), 7 s",
            lambda: low_noise(7.0, 40.0, seed=20260101),
        ),
        AudioFile(
            "announcement_pcma.pcap",
            Codec.PCMA,
            "an announcement: 2 s of SIPp's g711a.pcap speech (from 1.6 s), 20 ms packets",
            lambda: _floats(speech_samples(start_s=1.6, seconds=2.0)),
        ),
        AudioFile(
            "speech_pcmu.pcap",
            Codec.PCMU,
            "SIPp's g711a.pcap speech (about 7 s) transcoded to mu-law, 20 ms packets",
            lambda: _floats(speech_samples()),
        ),
    )
}


def build_all(out_dir: Path = AUDIO_DIR, names: Sequence[str] | None = None) -> list[Path]:
    """(Re)build the audio files (all, or the named ones) into ``out_dir``."""
    written: list[Path] = []
    for name in names or list(AUDIO_FILES):
        try:
            spec = AUDIO_FILES[name]
        except KeyError:
            raise ValueError(
                f"unknown audio file {name!r}; known: {', '.join(AUDIO_FILES)}"
            ) from None
        path = out_dir / spec.name
        count = write_rtp_pcap(path, spec.samples(), spec.codec)
        print(f"{path}: {count} packets of {spec.codec.name}, {path.stat().st_size} bytes")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sidecar.lab.audio [--out DIR] [NAME ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.lab.audio",
        description="Build the RTP captures the lab's SIPp scenarios play.",
    )
    parser.add_argument("--out", type=Path, default=AUDIO_DIR, help="output directory")
    parser.add_argument("names", nargs="*", metavar="NAME", help="files to build (default: all)")
    args = parser.parse_args(argv)
    build_all(args.out, args.names or None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
