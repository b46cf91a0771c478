"""Replay speed: reading a capture, and the whole ``sidecar replay`` pipeline, vs tshark.

Builds a synthetic capture (default 500,000 packets: G.711 calls at 20 ms, both
directions, each call set up with a SIP INVITE / 200 OK carrying SDP so tshark knows the
RTP ports), then times:

* ``read_capture`` + ``parse_rtp`` over every payload, on one core (CPU time);
* the full replay, as ``sidecar replay --plan`` runs it (``replay_file`` of the CLI): SIP to
  events (SipTracker); every call charged by the charging core (rated from the sample deck,
  credit reserved in chunks, settled, a CDR written: in the store as ``--plan`` builds it);
  and media supervision of every RTP packet (flows, counters, ringback and silence
  detectors on the callee's audio);
* ``tshark -r FILE -Y 'sip || rtp'`` on the same file (wall and CPU time of tshark).

Calls last 10 s by default, so the ringback detector (which looks at the first 10 s after
the 200 OK) analyses every callee packet: a worst case. ``--call-seconds 60-120`` gives
each call a length drawn (seeded) from that range, closer to real traffic: most callee
packets are then past the ringback window and only the silence detector sees them.

The replay reads the file in blocks (``CaptureReader.blocks``: records cut and their
Ethernet/IPv4/UDP headers checked with NumPy) and holds each known RTP flow's
datagrams back until something could see or change its dialog, then counts them in one
run (``MediaSupervisor.flow_run``); ``tests/replay/test_blocks.py`` checks that this
gives what the one-by-one replay gives.

``--rounds N`` times the full replay and tshark N times each, alternating (the machine is
shared: a range, with the load average, says more than one figure).

``--pcapng`` writes the capture as pcapng (what dumpcap and Wireshark write) instead.

Usage: python benchmarks/bench_pcap.py [--packets N] [--call-seconds S|MIN-MAX]
                                       [--keep DIR] [--no-tshark] [--rounds N] [--pcapng]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dpkt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidecar.media.pcap import read_capture
from sidecar.media.rtp import parse_rtp

PAYLOAD_BYTES = 160  # 20 ms of PCMA
PACKETS_PER_SECOND = 50  # 20 ms packets
DEFAULT_CALL_SECONDS = (10.0, 10.0)  # 500 packets of media per direction


def _checksum(header: bytes) -> int:
    total: int = sum(struct.unpack("!10H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(src: str, dst: str, sport: int, dport: int, payload: bytes, ident: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0xB8,  # DSCP EF, as media usually is
        20 + len(udp),
        ident & 0xFFFF,
        0x4000,
        64,
        17,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + header + udp


def _sip(method_or_status: str, call: int, rtp_port: int) -> bytes:
    sdp = (
        f"v=0\r\no=- {call} 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    )
    number = f"4930{call:07d}"  # Germany Fixed in the sample deck: every call is rated
    start = (
        f"INVITE sip:{number}@10.0.0.2 SIP/2.0" if method_or_status == "INVITE"
        else "SIP/2.0 200 OK"
    )
    return (
        f"{start}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{call}\r\n"
        f"From: <sip:a@10.0.0.1>;tag={call}\r\nTo: <sip:{number}@10.0.0.2>\r\n"
        f"Call-ID: bench-{call}\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


def build_capture(path: Path, packets: int,
                  call_seconds: tuple[float, float] = DEFAULT_CALL_SECONDS,
                  pcapng: bool = False) -> int:
    """Write about ``packets`` packets; return how many were written."""
    rnd = random.Random(1)
    # Calls overlap: every call starts 0.2 s after the previous one.
    written = 0
    payload = b"\xd5" * PAYLOAD_BYTES
    records: list[tuple[float, bytes]] = []
    t0 = 1_793_577_600.0  # 2026-11-02 UTC: the sample deck is in effect
    call = 0
    while True:
        legs = round(rnd.uniform(*call_seconds) * PACKETS_PER_SECOND)
        if call and written + 2 + 2 * legs > packets:
            break  # only whole calls
        start = t0 + call * 0.2
        caller_port = 20000 + 4 * (call % 5000)
        callee_port = 40000 + 4 * (call % 5000)
        records.append(
            (
                start,
                _frame("10.0.0.1", "10.0.0.2", 5060, 5060, _sip("INVITE", call, caller_port), call),
            )
        )
        records.append(
            (
                start + 0.05,
                _frame("10.0.0.2", "10.0.0.1", 5060, 5060, _sip("200", call, callee_port), call),
            )
        )
        ssrc_a, ssrc_b = 0x10000000 + call, 0x20000000 + call
        for i in range(legs):
            ts = start + 0.06 + i * 0.02
            rtp_a = struct.pack("!BBHII", 0x80, 8, i, i * 160, ssrc_a) + payload
            rtp_b = struct.pack("!BBHII", 0x80, 8, i, i * 160, ssrc_b) + payload
            records.append((ts, _frame("10.0.0.1", "10.0.0.2", caller_port, callee_port, rtp_a, i)))
            records.append(
                (ts + 0.0001, _frame("10.0.0.2", "10.0.0.1", callee_port, caller_port, rtp_b, i))
            )
        written += 2 + 2 * legs
        call += 1
    records.sort(key=lambda r: r[0])
    with path.open("wb") as f:
        if pcapng:
            ng = dpkt.pcapng.Writer(f, snaplen=65535)
            for ts, frame in records:
                ng.writepkt(frame, ts=ts)
        else:
            dpkt.pcap.Writer(f, snaplen=65535).writepkts(records)
        written = len(records)
    return written


def time_reader(path: Path) -> tuple[float, float, int, int]:
    """CPU seconds, wall seconds, payloads read, RTP packets recognised."""
    reader = read_capture(path)
    cpu = time.process_time()
    wall = time.perf_counter()
    payloads = rtp = 0
    for captured in reader:
        payloads += 1
        if parse_rtp(captured.payload) is not None:
            rtp += 1
    return time.process_time() - cpu, time.perf_counter() - wall, payloads, rtp


def time_replay(path: Path) -> tuple[float, float, int, int, int]:
    """CPU s, wall s, calls reported, calls charged (a CDR with a cost) and RTP packets
    matched by the full replay, set up as ``sidecar replay --plan`` sets it up."""
    from sidecar.charging import Charger, ChargingConfig
    from sidecar.cli.replay import REPLAY_ACCOUNT, _what_if_db, replay_file
    from sidecar.store.accounts import ledger_for
    from sidecar.store.db import connect
    from sidecar.store.decks import PlanCache, import_deck
    from sidecar.supervision.calls import CallControl, ControlConfig
    from sidecar.supervision.media import MediaConfig, MediaSupervisor

    db = path.with_suffix(".db")
    db.unlink(missing_ok=True)
    source = connect(db)
    import_deck(source, "bench", Path(__file__).resolve().parent.parent / "sidecar" / "data"
                / "sample-deck.csv")
    source.close()
    conn = _what_if_db(db, "bench")
    media = MediaSupervisor(MediaConfig(grace_ms=2000))
    control = CallControl(Charger(ledger_for(conn), PlanCache(conn), ChargingConfig()), media,
                          ControlConfig(supervise_rejected=True))
    cpu = time.process_time()
    wall = time.perf_counter()
    result = replay_file(path, control, account_override=REPLAY_ACCOUNT)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    charged = sum(1 for c in result.cdrs if c.cost)
    return cpu, wall, len(result.calls), charged, media.packets_matched


def time_tshark(path: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (tshark and children), lines printed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    result = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-Y", "sip || rtp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    elapsed = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, result.stdout.count(b"\n")


def rounds(path: Path, count: int, first: tuple[float, float]) -> None:
    """Replay and tshark ``count`` times each, alternating; CPU ranges and ratios."""
    replays, tsharks = [first[0]], [first[1]]
    for _ in range(count - 1):
        replays.append(time_replay(path)[0])
        tsharks.append(time_tshark(path)[1])
    ratios = [t / r for r, t in zip(replays, tsharks, strict=True)]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{count} rounds (load average {load}): full replay "
          f"{min(replays):.2f}-{max(replays):.2f} s CPU, tshark {min(tsharks):.2f}-"
          f"{max(tsharks):.2f} s CPU; tshark / replay per round {min(ratios):.1f}-"
          f"{max(ratios):.1f}x (median {sorted(ratios)[len(ratios) // 2]:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=500_000)
    parser.add_argument("--call-seconds", default="10",
                        help="length of every call (10: the worst case), or MIN-MAX")
    parser.add_argument("--keep", type=Path, help="write the capture here and keep it")
    parser.add_argument("--no-tshark", action="store_true")
    parser.add_argument("--pcapng", action="store_true", help="write the capture as pcapng")
    parser.add_argument("--rounds", type=int, default=1,
                        help="full replay and tshark this many times each, alternating")
    args = parser.parse_args()
    low, _, high = args.call_seconds.partition("-")
    call_seconds = (float(low), float(high or low))

    with tempfile.TemporaryDirectory() as tmp:
        path = (args.keep or Path(tmp)) / ("bench.pcapng" if args.pcapng else "bench.pcap")
        path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        count = build_capture(path, args.packets, call_seconds, args.pcapng)
        size = os.path.getsize(path)
        print(
            f"capture: {count:,} packets, {size / 1e6:.1f} MB, calls of "
            f"{args.call_seconds} s, "
            f"built in {time.perf_counter() - start:.1f} s ({path})"
        )

        cpu, wall, payloads, rtp = time_reader(path)
        rate = count / cpu
        print(
            f"sidecar reader + parse_rtp: {cpu:.2f} s CPU ({wall:.2f} s wall) "
            f"-> {rate:,.0f} packets/s on one core, {size / cpu / 1e6:.0f} MB/s; "
            f"{payloads:,} UDP payloads, {rtp:,} RTP"
        )
        r_cpu, r_wall, calls, charged, matched = time_replay(path)
        r_rate = count / r_cpu
        print(
            f"full replay (SIP, charging, media supervision): {r_cpu:.2f} s CPU "
            f"({r_wall:.2f} s wall) -> {r_rate:,.0f} packets/s on one core; {calls:,} calls "
            f"({charged:,} charged), {matched:,} RTP packets matched to their dialogs"
        )
        print(f"target 500,000 packets/s (full replay): "
              f"{'met' if r_rate >= 500_000 else 'NOT met'}")

        if args.no_tshark or shutil.which("tshark") is None:
            print("tshark: skipped")
            return
        t_wall, t_cpu, lines = time_tshark(path)
        print(
            f"tshark -r FILE -Y 'sip || rtp': {t_wall:.2f} s wall, {t_cpu:.2f} s CPU, "
            f"{lines:,} packets shown -> {count / t_wall:,.0f} packets/s"
        )
        print(
            f"ratio: reading is {t_wall / wall:.1f}x faster than tshark by wall time "
            f"({t_cpu / cpu:.1f}x by CPU time); the full replay {t_wall / r_wall:.1f}x "
            f"({t_cpu / r_cpu:.1f}x by CPU time)"
        )
        if args.rounds > 1:
            rounds(path, args.rounds, (r_cpu, t_cpu))


if __name__ == "__main__":
    main()
