"""Live capture throughput: LiveCapture (ring and recvmsg) under tcpreplay, rising rates.

Builds a pcap of 1,000 simultaneous G.711 calls (RTP, 20 ms packets, 172-byte UDP
payloads, both directions, a distinct port per call leg: 100,000 packets per second of
traffic), then for each capture mechanism and each rate replays it with Debian's
``tcpreplay`` on ``lo`` (``--pps``, bounded duration) while this process reads it with
:class:`~sidecar.media.capture.LiveCapture` and hands every payload to a consumer.

Per rate it prints what tcpreplay says it sent, the payloads the consumer saw, the
kernel's drops (and their share), and the CPU seconds of this process (the capture) and
of tcpreplay, then the first rate where drops exceed 0.1 %.

On ``lo`` the kernel sees every packet twice (sent and received); the capture's filter
drops the sent copy in the kernel, so all figures are unique packets. The frames are
addressed to a MAC that is not lo's, so the stack discards the received copy at once
instead of answering each with an ICMP port unreachable.

The consumer is pluggable: ``--consumer MODULE:FACTORY`` names a function that returns a
``Callable[[CapturedPayload], None]`` (called once per payload). The default counts
packets per flow in a dict. ``--consumer supervisor`` is the sidecar's own media path:
the 1,000 calls are offered and answered (SDP naming the capture's addresses) in a
``CallControl`` with a ``MediaSupervisor``, and every payload goes to
``CallControl.on_packet`` as the live sidecar sends it: flows, counters, silence
detection. The calls were answered a minute before (ringback is looked for only in the
first 10 s after a 200 OK, which at any moment is a small share of the calls running);
``supervisor-fresh`` answers them all at the start, so every callee packet is also
screened for ringback: the worst case.

Needs root. Usage:
    python benchmarks/bench_capture.py [--rates 25000,50000,100000,150000,200000]
        [--duration 10] [--mechanisms ring,recv] [--consumer MODULE:FACTORY] [--keep DIR]
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import os
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidecar.media.capture import LiveCapture, Mechanism, port_filter
from sidecar.media.pcap import CapturedPayload

Consumer = Callable[[CapturedPayload], None]

CALLS = 1000
PACKET_INTERVAL = 0.020
RTP_PAYLOAD = 160  # 20 ms of G.711 at 8 kHz; with the 12-byte RTP header, 172 bytes
CALLER_NET = ipaddress.IPv4Address("10.100.0.0")
CALLEE_NET = ipaddress.IPv4Address("10.200.0.0")
CALLER_PORT = 20000
CALLEE_PORT = 40000
# Not lo's all-zero address: the received copy becomes PACKET_OTHERHOST, dropped by IP.
DST_MAC = bytes.fromhex("020000000001")
SRC_MAC = bytes.fromhex("020000000002")
DROP_THRESHOLD = 0.001


def flow_counter() -> Consumer:
    """The default consumer: one dict update per packet, keyed by the destination."""
    counts: dict[tuple[str, int], int] = {}

    def consume(payload: CapturedPayload) -> None:
        key = (payload.dst_ip, payload.dst_port)
        counts[key] = counts.get(key, 0) + 1

    return consume


def _ipv4_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack("!10H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ident: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0xB8, 20 + len(udp), ident & 0xFFFF, 0x4000, 64, 17, 0, src, dst
    )
    header = header[:10] + struct.pack("!H", _ipv4_checksum(header)) + header[12:]
    return DST_MAC + SRC_MAC + b"\x08\x00" + header + udp


def build_capture(path: Path) -> tuple[int, list[int]]:
    """One second of 1,000 calls (both legs, 20 ms packets); packets and RTP ports."""
    legs = []
    for call in range(CALLS):
        caller = (CALLER_NET + 1 + call).packed
        callee = (CALLEE_NET + 1 + call).packed
        legs.append((caller, callee, CALLER_PORT + 2 * call, CALLEE_PORT + 2 * call))
        legs.append((callee, caller, CALLEE_PORT + 2 * call, CALLER_PORT + 2 * call))
    ticks = round(1 / PACKET_INTERVAL)
    count = 0
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for tick in range(ticks):
            for leg, (src, dst, sport, dport) in enumerate(legs):
                # Spread the legs over the 20 ms so the file replays evenly at any rate.
                at = tick * PACKET_INTERVAL + leg * PACKET_INTERVAL / len(legs)
                rtp = struct.pack("!BBHII", 0x80, 8, tick, tick * 160, 0x1000 + leg)
                frame = _frame(src, dst, sport, dport, rtp + bytes(RTP_PAYLOAD), count)
                seconds = int(at)
                f.write(
                    struct.pack(
                        "<IIII", seconds, round((at - seconds) * 1e6), len(frame), len(frame)
                    )
                )
                f.write(frame)
                count += 1
    return count, sorted(
        {CALLER_PORT + 2 * c for c in range(CALLS)} | {CALLEE_PORT + 2 * c for c in range(CALLS)}
    )


@dataclass
class Run:
    mechanism: str
    rate: int
    sent: int
    tcpreplay_rate: float
    seen: int
    received: int
    dropped: int
    capture_cpu: float
    tcpreplay_cpu: float
    wall: float

    @property
    def drop_fraction(self) -> float:
        return self.dropped / self.received if self.received else 0.0

    @property
    def cores(self) -> float:
        """Capture CPU per second of replay, at the rate tcpreplay really reached."""
        seconds = self.sent / self.tcpreplay_rate if self.tcpreplay_rate else self.wall
        return self.capture_cpu / seconds if seconds else 0.0

    @property
    def microseconds_per_packet(self) -> float:
        return 1e6 * self.capture_cpu / self.seen if self.seen else 0.0


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def replay(
    pcap: Path,
    interface: str,
    ports: list[int],
    mechanism: Mechanism,
    rate: int,
    duration: float,
    consumer: Consumer,
) -> Run:
    """Replay ``pcap`` at ``rate`` packets/s for ``duration`` s while capturing it."""
    limit = int(rate * duration)
    command = [
        "tcpreplay",
        f"--intf1={interface}",
        f"--pps={rate}",
        f"--limit={limit}",
        "--loop=0",
        "--preload-pcap",
        "--no-flow-stats",
        str(pcap),
    ]
    with LiveCapture(interface, filter=port_filter(ports), mechanism=mechanism) as cap:
        children_before = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN))
        self_before = _cpu(resource.getrusage(resource.RUSAGE_SELF))
        start = time.monotonic()
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        seen = 0
        finished_at: float | None = None
        read = cap.read
        poll = select.poll()
        poll.register(cap.fileno(), select.POLLIN)
        deadline = start + duration * 3 + 30
        try:
            while True:
                poll.poll(50)
                payloads = read()
                for payload in payloads:
                    consumer(payload)
                seen += len(payloads)
                if finished_at is None:
                    if proc.poll() is not None:
                        finished_at = time.monotonic()
                    elif time.monotonic() > deadline:
                        raise RuntimeError(
                            f"tcpreplay did not finish within {deadline - start:.0f} s"
                        )
                elif time.monotonic() - finished_at > 0.3 and not payloads:
                    break  # tcpreplay is done and the ring has handed over its last block
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # our own child, by pid
            output = proc.communicate(timeout=30)[0]
        wall = time.monotonic() - start
        capture_cpu = _cpu(resource.getrusage(resource.RUSAGE_SELF)) - self_before
        tcpreplay_cpu = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - children_before
        stats = cap.kernel_stats()
    if proc.returncode:
        raise RuntimeError(f"tcpreplay failed ({proc.returncode}):\n{output}")
    match = re.search(r"Actual: (\d+) packets .* sent in ([\d.]+) seconds", output)
    rated = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", output)
    failed = re.search(r"Failed packets:\s+(\d+)", output)
    if match is None:
        raise RuntimeError(f"cannot read tcpreplay's report:\n{output}")
    sent = int(match.group(1)) - (int(failed.group(1)) if failed else 0)
    return Run(
        mechanism,
        rate,
        sent,
        float(rated.group(1)) if rated else 0.0,
        seen,
        stats.received,
        stats.dropped,
        capture_cpu,
        tcpreplay_cpu,
        wall,
    )


def _sdp(ip: ipaddress.IPv4Address, port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")


def supervisor(answered_ago_ms: int = 60_000) -> Consumer:
    """The sidecar's media path with the benchmark's 1,000 calls answered."""
    from sidecar.charging import Charger
    from sidecar.kamailio.events import Answer, Dialog, Offer
    from sidecar.store.accounts import SqliteLedger
    from sidecar.store.db import connect
    from sidecar.store.decks import PlanCache
    from sidecar.supervision.calls import CallControl, ControlConfig
    from sidecar.supervision.media import MediaSupervisor

    conn = connect(":memory:")
    control = CallControl(Charger(SqliteLedger(conn), PlanCache(conn)), MediaSupervisor(),
                          ControlConfig(supervise_rejected=True))
    now = int(time.time() * 1000) - answered_ago_ms
    for call in range(CALLS):
        ref = f"bench-{call}"
        caller, callee = CALLER_NET + 1 + call, CALLEE_NET + 1 + call
        offer = Offer(Dialog(ref, 0, 0, now * 1000), 0, 0, "a", "", "", "b", "sip:b", "b", "",
                      str(caller), 5060, _sdp(caller, CALLER_PORT + 2 * call))
        control.on_event(offer, now)
        control.on_event(Answer(Dialog(ref, 0, 0, now * 1000),
                                _sdp(callee, CALLEE_PORT + 2 * call)), now + 100)
    on_packet = control.on_packet

    def consume(p: CapturedPayload) -> None:
        on_packet(int(p.timestamp * 1000), p.src_ip, p.src_port, p.dst_ip, p.dst_port,
                  p.payload)

    return consume


def load_consumer(spec: str | None) -> Consumer:
    """``MODULE:FACTORY`` -> ``FACTORY()``; the default flow counter when ``None``."""
    if spec is None:
        return flow_counter()
    if spec == "supervisor":
        return supervisor()
    if spec == "supervisor-fresh":
        return supervisor(answered_ago_ms=0)
    module_name, _, attribute = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), attribute or "consumer")
    consumer: Consumer = factory()
    return consumer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="25000,50000,100000,150000,200000")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--mechanisms", default="ring,recv")
    parser.add_argument("--interface", default="lo")
    parser.add_argument("--consumer", help="MODULE:FACTORY returning a per-payload callable")
    parser.add_argument("--keep", type=Path, help="keep the generated pcap in this directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_capture: needs root (AF_PACKET capture, tcpreplay)", file=sys.stderr)
        return 2
    if shutil.which("tcpreplay") is None:
        print("bench_capture: tcpreplay not installed (Debian package tcpreplay)", file=sys.stderr)
        return 2
    rates = [int(r) for r in args.rates.split(",")]
    mechanisms: list[Mechanism] = []
    for name in args.mechanisms.split(","):
        if name not in ("ring", "recv"):
            parser.error(f"unknown mechanism {name!r}")
        mechanisms.append("ring" if name == "ring" else "recv")

    directory = args.keep or Path(tempfile.mkdtemp(prefix="bench-capture-"))
    directory.mkdir(parents=True, exist_ok=True)
    pcap = directory / "g711-1000-calls.pcap"
    try:
        packets, ports = build_capture(pcap)
        print(
            f"{pcap}: {packets:,} packets = 1 s of {CALLS:,} G.711 calls, both directions, "
            f"{os.path.getsize(pcap) / 1e6:.1f} MB; filter {port_filter(ports)!r}",
            flush=True,
        )
        print(f"{os.cpu_count()} CPUs; {args.duration:g} s per rate on {args.interface}\n")
        header = (
            f"{'mechanism':<9} {'rate/s':>8} {'sent':>10} {'actual/s':>9} {'seen':>10} "
            f"{'drops':>8} {'drop %':>7} {'cap CPU s':>9} {'cap core':>8} {'us/pkt':>6} "
            f"{'replay CPU s':>12}"
        )
        print(header)
        print("-" * len(header), flush=True)
        runs: list[Run] = []
        for mechanism in mechanisms:
            for rate in rates:
                run = replay(
                    pcap,
                    args.interface,
                    ports,
                    mechanism,
                    rate,
                    args.duration,
                    load_consumer(args.consumer),
                )
                runs.append(run)
                print(
                    f"{run.mechanism:<9} {run.rate:>8,} {run.sent:>10,} "
                    f"{run.tcpreplay_rate:>9,.0f} {run.seen:>10,} {run.dropped:>8,} "
                    f"{100 * run.drop_fraction:>7.3f} {run.capture_cpu:>9.2f} {run.cores:>8.2f} "
                    f"{run.microseconds_per_packet:>6.2f} {run.tcpreplay_cpu:>12.2f}",
                    flush=True,
                )
        print()
        for mechanism in mechanisms:
            over = [
                r
                for r in runs
                if r.mechanism == mechanism
                and (r.drop_fraction > DROP_THRESHOLD or r.seen < r.sent * (1 - DROP_THRESHOLD))
            ]
            clean = [r.rate for r in runs if r.mechanism == mechanism and r not in over]
            if over:
                print(
                    f"{mechanism}: drops first exceed 0.1 % at {over[0].rate:,} packets/s "
                    f"(clean up to {max(clean, default=0):,})"
                )
            else:
                print(f"{mechanism}: no rate tried exceeded 0.1 % drops (up to {max(rates):,}/s)")
        print(
            "\n'actual/s' is the rate tcpreplay reached; 'cap core' is capture CPU seconds per "
            "second of replay at that rate, 'us/pkt' capture CPU per payload seen.\n'seen' "
            "counts payloads handed to the consumer: 'sent' minus drops, plus any other UDP "
            "traffic on the interface in the filter's port range."
        )
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
