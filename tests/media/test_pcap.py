"""Capture reader: formats, link types, IPv4/IPv6, fragments, garbage and truncation."""

from __future__ import annotations

import itertools
import os
import random
import re
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.media.frames import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    SKIP_BAD_IP_HEADER,
    SKIP_BAD_TCP_HEADER,
    SKIP_BAD_UDP_HEADER,
    SKIP_CORRUPT_RECORD,
    SKIP_FRAGMENT_DUPLICATE,
    SKIP_FRAGMENT_EVICTED,
    SKIP_FRAGMENT_EXPIRED,
    SKIP_FRAGMENT_INCOMPLETE,
    SKIP_FRAGMENT_INVALID,
    SKIP_NOT_IP,
    SKIP_NOT_UDP_TCP,
    SKIP_TCP_NO_PAYLOAD,
    SKIP_TRUNCATED_FRAME,
    SKIP_TRUNCATED_RECORD,
    SKIP_UNKNOWN_INTERFACE,
    SKIP_UNSUPPORTED_LINKTYPE,
    FrameDecoder,
)
from sidecar.media.pcap import CapturedPayload, CaptureError, CaptureReader, read_capture
from sidecar.media.rtp import parse_rtp

from .packets import (
    ETH_IPV6,
    ETH_QINQ,
    ETH_VLAN,
    ethernet,
    ipv4,
    ipv6,
    ipv6_fragment_header,
    ipv6_options_header,
    rtp,
    sll,
    sll2,
    tcp,
    udp,
)

SIPP_AUDIO = Path("/usr/share/sip-tester/g711a.pcap")
T0 = 1_700_000_000.0
A, B = "192.0.2.10", "198.51.100.20"
A6, B6 = "2001:db8::a", "2001:db8:0:1::b"

Frames = Sequence[tuple[float, bytes]]


def write_pcap(path: Path, frames: Frames, linktype: int = 1, nano: bool = False) -> Path:
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=65535, linktype=linktype, nano=nano)
        for ts, frame in frames:
            writer.writepkt(frame, ts=ts)
    return path


def write_pcapng(path: Path, frames: Frames, linktype: int = 1) -> Path:
    with path.open("wb") as f:
        writer = dpkt.pcapng.Writer(f, snaplen=65535, linktype=linktype)
        for ts, frame in frames:
            writer.writepkt(frame, ts=ts)
    return path


def read_all(path: Path, **options: float) -> tuple[list[CapturedPayload], CaptureReader]:
    reader = read_capture(path, **options)  # type: ignore[arg-type]
    return list(reader), reader


def udp4(payload: bytes, sport: int = 4000, dport: int = 5000, **ip: object) -> bytes:
    return ipv4(A, B, 17, udp(sport, dport, payload), **ip)  # type: ignore[arg-type]


# --- Formats and link types -------------------------------------------------------------


def test_ethernet_ipv4_udp(tmp_path: Path) -> None:
    frames = [(T0 + i * 0.02, ethernet(udp4(rtp(b"\xd5" * 160, sequence=i)))) for i in range(3)]
    payloads, reader = read_all(write_pcap(tmp_path / "a.pcap", frames))
    assert len(payloads) == 3
    first = payloads[0]
    assert first == CapturedPayload(T0, A, 4000, B, 5000, "udp", rtp(b"\xd5" * 160, sequence=0))
    assert payloads[2].timestamp == pytest.approx(T0 + 0.04, abs=1e-6)
    assert reader.format == "pcap"
    assert reader.stats.packets_read == 3 and reader.stats.payloads_yielded == 3
    assert reader.stats.skipped == {} and not reader.stats.truncated_file
    assert reader.position == reader.size == os.path.getsize(tmp_path / "a.pcap")


def test_ethernet_padding_is_not_payload(tmp_path: Path) -> None:
    frame = ethernet(udp4(b"ping")) + b"\0" * 12  # padded to the 60-byte minimum
    payloads, _ = read_all(write_pcap(tmp_path / "p.pcap", [(T0, frame)]))
    assert payloads[0].payload == b"ping"


@pytest.mark.parametrize("vlans", [[(ETH_VLAN, 100)], [(ETH_QINQ, 10), (ETH_VLAN, 20)]])
def test_vlan_tags(tmp_path: Path, vlans: list[tuple[int, int]]) -> None:
    frame = ethernet(udp4(b"tagged"), vlans=vlans)
    payloads, _ = read_all(write_pcap(tmp_path / "v.pcap", [(T0, frame)]))
    assert [p.payload for p in payloads] == [b"tagged"]


def test_tcp_payloads_and_empty_segments(tmp_path: Path) -> None:
    sip = b"OPTIONS sip:x@example.com SIP/2.0\r\n\r\n"
    frames = [
        (T0, ethernet(ipv4(A, B, 6, tcp(5060, 40000, b"", flags=0x02)))),  # SYN
        (T0 + 1, ethernet(ipv4(A, B, 6, tcp(5060, 40000, sip)))),
        (
            T0 + 2,
            ethernet(ipv4(A, B, 6, tcp(5060, 40000, sip, options=b"\x01\x01\x08\x0a" + b"\0" * 8))),
        ),
        (T0 + 3, ethernet(ipv4(A, B, 6, tcp(5060, 40000, b"", flags=0x10)))),  # pure ACK
    ]
    payloads, reader = read_all(write_pcap(tmp_path / "t.pcap", frames))
    assert [(p.transport, p.src_port, p.dst_port, p.payload) for p in payloads] == [
        ("tcp", 5060, 40000, sip),
        ("tcp", 5060, 40000, sip),
    ]
    assert reader.stats.skipped == {SKIP_TCP_NO_PAYLOAD: 2}


def test_ipv4_options_take_the_general_path(tmp_path: Path) -> None:
    frame = ethernet(ipv4(A, B, 17, udp(1, 2, b"opt"), options=b"\x94\x04\x00\x00"))
    payloads, _ = read_all(write_pcap(tmp_path / "o.pcap", [(T0, frame)]))
    assert payloads[0].payload == b"opt"


def test_ipv6_with_extension_headers(tmp_path: Path) -> None:
    frames = [
        (T0, ethernet(ipv6(A6, B6, 17, udp(1000, 2000, b"six")), ETH_IPV6)),
        (
            T0 + 1,
            ethernet(
                ipv6(
                    A6,
                    B6,
                    0,
                    ipv6_options_header(60) + ipv6_options_header(17, 1) + udp(1, 2, b"ext"),
                ),
                ETH_IPV6,
            ),
        ),
        (T0 + 2, ethernet(ipv6(A6, B6, 6, tcp(5061, 3000, b"tls")), ETH_IPV6)),
        (T0 + 3, ethernet(ipv6(A6, B6, 58, b"\x80\0\0\0icmp6"), ETH_IPV6)),
    ]
    payloads, reader = read_all(write_pcap(tmp_path / "6.pcap", frames))
    assert [(p.src_ip, p.dst_ip, p.transport, p.payload) for p in payloads] == [
        ("2001:db8::a", "2001:db8:0:1::b", "udp", b"six"),
        ("2001:db8::a", "2001:db8:0:1::b", "udp", b"ext"),
        ("2001:db8::a", "2001:db8:0:1::b", "tcp", b"tls"),
    ]
    assert reader.stats.skipped == {SKIP_NOT_UDP_TCP: 1}


@pytest.mark.parametrize(
    ("linktype", "frame"),
    [
        (LINKTYPE_LINUX_SLL, sll(udp4(b"sll"))),
        (LINKTYPE_LINUX_SLL, sll(ipv6(A6, B6, 17, udp(1, 2, b"sll")), ETH_IPV6)),
        (LINKTYPE_LINUX_SLL2, sll2(udp4(b"sll2"))),
        (LINKTYPE_LINUX_SLL2, sll2(ipv6(A6, B6, 17, udp(1, 2, b"sll2")), ETH_IPV6)),
        (LINKTYPE_RAW, udp4(b"raw")),
        (LINKTYPE_RAW, ipv6(A6, B6, 17, udp(1, 2, b"raw6"))),
        (12, udp4(b"dlt12")),
        (14, udp4(b"dlt14")),
        (LINKTYPE_IPV4, udp4(b"ipv4")),
        (LINKTYPE_IPV6, ipv6(A6, B6, 17, udp(1, 2, b"ipv6"))),
        (LINKTYPE_NULL, struct.pack("<I", 2) + udp4(b"null")),
        (LINKTYPE_LOOP, struct.pack(">I", 24) + ipv6(A6, B6, 17, udp(1, 2, b"loop6"))),
    ],
)
def test_link_types(tmp_path: Path, linktype: int, frame: bytes) -> None:
    payloads, reader = read_all(write_pcap(tmp_path / "l.pcap", [(T0, frame)], linktype))
    assert len(payloads) == 1, reader.stats
    assert payloads[0].payload in {
        b"sll",
        b"sll2",
        b"raw",
        b"raw6",
        b"dlt12",
        b"dlt14",
        b"ipv4",
        b"ipv6",
        b"null",
        b"loop6",
    }


def test_sll_non_ip_is_skipped(tmp_path: Path) -> None:
    payloads, reader = read_all(
        write_pcap(tmp_path / "s.pcap", [(T0, sll(b"\0" * 28, 0x0806))], LINKTYPE_LINUX_SLL)
    )
    assert payloads == [] and reader.stats.skipped == {SKIP_NOT_IP: 1}


def test_unsupported_link_type_is_counted(tmp_path: Path) -> None:
    payloads, reader = read_all(
        write_pcap(tmp_path / "w.pcap", [(T0, b"\0" * 40)] * 3, linktype=105)
    )
    assert payloads == [] and reader.stats.skipped == {SKIP_UNSUPPORTED_LINKTYPE: 3}


def test_nanosecond_pcap(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "n.pcap", [(T0 + 0.123456789, ethernet(udp4(b"ns")))], nano=True)
    payloads, _ = read_all(path)
    assert isinstance(payloads[0].timestamp, float)
    assert payloads[0].timestamp == pytest.approx(T0 + 0.123456789, abs=1e-6)


def test_big_endian_pcap(tmp_path: Path) -> None:
    frame = ethernet(udp4(b"be"))
    data = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    data += struct.pack(">IIII", int(T0), 250000, len(frame), len(frame)) + frame
    path = tmp_path / "be.pcap"
    path.write_bytes(data)
    payloads, _ = read_all(path)
    assert [(p.timestamp, p.payload) for p in payloads] == [(T0 + 0.25, b"be")]


def test_pcapng_basic(tmp_path: Path) -> None:
    frames = [(T0 + i, ethernet(udp4(bytes([i]) * 10))) for i in range(4)]
    payloads, reader = read_all(write_pcapng(tmp_path / "a.pcapng", frames))
    assert reader.format == "pcapng"
    assert [p.payload for p in payloads] == [bytes([i]) * 10 for i in range(4)]
    assert payloads[3].timestamp == pytest.approx(T0 + 3)


def _idb(linktype: int, tsresol: int | None = None) -> dpkt.pcapng.InterfaceDescriptionBlockLE:
    options = []
    if tsresol is not None:
        options = [
            dpkt.pcapng.PcapngOptionLE(
                code=dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL, data=bytes([tsresol])
            ),
            dpkt.pcapng.PcapngOptionLE(code=dpkt.pcapng.PCAPNG_OPT_ENDOFOPT),
        ]
    return dpkt.pcapng.InterfaceDescriptionBlockLE(snaplen=65535, linktype=linktype, opts=options)


def _epb(interface: int, ticks: int, frame: bytes) -> bytes:
    epb = dpkt.pcapng.EnhancedPacketBlockLE(
        iface_id=interface,
        ts_high=ticks >> 32,
        ts_low=ticks & 0xFFFFFFFF,
        caplen=len(frame),
        pkt_len=len(frame),
        pkt_data=frame,
    )
    return bytes(epb)


def test_pcapng_interfaces_with_their_own_link_type_and_resolution(tmp_path: Path) -> None:
    path = tmp_path / "multi.pcapng"
    with path.open("wb") as f:
        dpkt.pcapng.Writer(f, idb=[_idb(LINKTYPE_ETHERNET), _idb(LINKTYPE_LINUX_SLL, tsresol=9)])
        f.write(_epb(0, int(T0 * 1e6), ethernet(udp4(b"eth"))))
        f.write(_epb(1, int(T0 * 1e9) + 5, sll(udp4(b"cooked"))))
        f.write(_epb(7, int(T0 * 1e6), ethernet(udp4(b"nobody"))))  # no interface 7
    payloads, reader = read_all(path)
    assert [p.payload for p in payloads] == [b"eth", b"cooked"]
    assert payloads[1].timestamp == pytest.approx(T0, abs=1e-6)
    assert reader.stats.skipped == {SKIP_UNKNOWN_INTERFACE: 1}


def test_pcapng_simple_and_obsolete_packet_blocks_and_unknown_blocks(tmp_path: Path) -> None:
    path = tmp_path / "blocks.pcapng"
    with path.open("wb") as f:
        dpkt.pcapng.Writer(f, idb=[_idb(LINKTYPE_ETHERNET)])
        f.write(_epb(0, int(T0 * 1e6), ethernet(udp4(b"first"))))
        frame = ethernet(udp4(b"simple"))
        padded = frame + b"\0" * (-len(frame) % 4)
        f.write(
            struct.pack("<III", 3, 16 + len(padded), len(frame))
            + padded
            + struct.pack("<I", 16 + len(padded))
        )
        f.write(struct.pack("<II", 0x0BAD, 16) + b"\0" * 4 + struct.pack("<I", 16))  # custom block
        frame = ethernet(udp4(b"obsolete"))
        padded = frame + b"\0" * (-len(frame) % 4)
        ticks = int((T0 + 1) * 1e6)
        body = (
            struct.pack("<HHIIII", 0, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), len(frame))
            + padded
        )
        f.write(struct.pack("<II", 2, 12 + len(body)) + body + struct.pack("<I", 12 + len(body)))
    payloads, reader = read_all(path)
    assert [p.payload for p in payloads] == [b"first", b"simple", b"obsolete"]
    assert payloads[1].timestamp == payloads[0].timestamp  # no timestamp of its own
    assert payloads[2].timestamp == pytest.approx(T0 + 1)
    assert reader.stats.packets_read == 3


def test_pcapng_second_section_starts_its_own_interfaces(tmp_path: Path) -> None:
    first = write_pcapng(tmp_path / "1.pcapng", [(T0, ethernet(udp4(b"one")))])
    second = write_pcapng(tmp_path / "2.pcapng", [(T0 + 1, udp4(b"two"))], linktype=LINKTYPE_RAW)
    both = tmp_path / "both.pcapng"
    both.write_bytes(first.read_bytes() + second.read_bytes())
    payloads, _ = read_all(both)
    assert [p.payload for p in payloads] == [b"one", b"two"]


# --- Fragments ------------------------------------------------------------------------------


def fragments4(payload: bytes, size: int, ident: int = 77, sport: int = 4000) -> list[bytes]:
    datagram = udp(sport, 5000, payload)
    pieces = []
    for offset in range(0, len(datagram), size):
        chunk = datagram[offset : offset + size]
        more = offset + size < len(datagram)
        pieces.append(
            ethernet(
                ipv4(A, B, 17, chunk, ident=ident, more_fragments=more, fragment_offset=offset)
            )
        )
    return pieces


def test_fragmented_udp_is_reassembled_in_any_order(tmp_path: Path) -> None:
    big = bytes(random.Random(1).getrandbits(8) for _ in range(3000))
    parts = fragments4(big, 1480)
    assert len(parts) == 3
    other = ethernet(udp4(b"between"))
    frames = [
        (T0, parts[2]),
        (T0 + 0.001, other),
        (T0 + 0.002, parts[0]),
        (T0 + 0.003, parts[0]),
        (T0 + 0.004, parts[1]),
    ]
    payloads, reader = read_all(write_pcap(tmp_path / "f.pcap", frames))
    assert [p.payload for p in payloads] == [b"between", big]
    assert payloads[1].timestamp == pytest.approx(T0 + 0.004)  # when it became whole
    stats = reader.stats
    assert (stats.datagrams_reassembled, stats.fragments_reassembled) == (1, 3)
    assert stats.skipped == {SKIP_FRAGMENT_DUPLICATE: 1}


def test_fragments_of_interleaved_datagrams_are_kept_apart(tmp_path: Path) -> None:
    one, two = fragments4(b"1" * 100, 48, ident=1), fragments4(b"2" * 100, 48, ident=2)
    frames = [
        (T0 + i * 0.001, f)
        for i, f in enumerate(x for pair in zip(one, two, strict=True) for x in pair)
    ]
    payloads, _ = read_all(write_pcap(tmp_path / "i.pcap", frames))
    assert [p.payload for p in payloads] == [b"1" * 100, b"2" * 100]


def test_incomplete_overlapping_expired_and_evicted_fragments(tmp_path: Path) -> None:
    lost = fragments4(b"L" * 100, 48, ident=1)[:-1]  # last fragment never comes
    late = fragments4(b"T" * 100, 48, ident=3)
    overlap = fragments4(b"O" * 100, 48, ident=2)
    overlap_bad = ethernet(
        ipv4(A, B, 17, b"X" * 48, ident=2, more_fragments=True, fragment_offset=24)
    )
    frames = [(T0, f) for f in lost]
    frames += [(T0 + 1, late[0]), (T0 + 100, late[1]), (T0 + 100, late[2])]  # 99 s apart
    frames += [(T0 + 101, f) for f in (overlap[0], overlap_bad, overlap[1], overlap[2])]
    payloads, reader = read_all(write_pcap(tmp_path / "x.pcap", frames), fragment_timeout=30.0)
    assert payloads == []
    assert reader.stats.skipped == {
        SKIP_FRAGMENT_EXPIRED: 3,  # the 2 'lost' fragments and late[0], when 100 s arrive
        SKIP_FRAGMENT_INVALID: 2,  # overlap[0] and the fragment that overlaps it
        # late[1] and late[2] (their first fragment was gone), overlap[1] and overlap[2]
        # (theirs was dropped): still waiting at the end of the file.
        SKIP_FRAGMENT_INCOMPLETE: 4,
    }


def test_fragment_beyond_the_end_or_second_last_fragment_is_invalid(tmp_path: Path) -> None:
    parts = fragments4(b"E" * 100, 48, ident=4)  # offsets 0, 48, 96 (last, 12 bytes)
    beyond = ethernet(ipv4(A, B, 17, b"Y" * 48, ident=4, more_fragments=True, fragment_offset=104))
    again = ethernet(ipv4(A, B, 17, b"Z" * 8, ident=4, fragment_offset=200))
    frames = [(T0, parts[2]), (T0, beyond), (T0, parts[2]), (T0, again), (T0, parts[0])]
    _, reader = read_all(write_pcap(tmp_path / "e.pcap", frames))
    # Each bad fragment takes the datagram held so far with it (2 + 2); parts[0] then
    # starts a new datagram that never completes.
    assert reader.stats.skipped == {SKIP_FRAGMENT_INVALID: 4, SKIP_FRAGMENT_INCOMPLETE: 1}


def test_pending_fragments_are_bounded(tmp_path: Path) -> None:
    frames = [(T0, fragments4(b"z" * 100, 48, ident=i)[0]) for i in range(10)]
    payloads, reader = read_all(write_pcap(tmp_path / "b.pcap", frames), max_pending_datagrams=4)
    assert payloads == []
    assert reader.stats.skipped == {SKIP_FRAGMENT_EVICTED: 6, SKIP_FRAGMENT_INCOMPLETE: 4}


def test_fragment_sizes_must_be_multiples_of_eight(tmp_path: Path) -> None:
    frame = ethernet(ipv4(A, B, 17, b"q" * 13, ident=9, more_fragments=True))
    _, reader = read_all(write_pcap(tmp_path / "m.pcap", [(T0, frame)]))
    assert reader.stats.skipped == {SKIP_FRAGMENT_INVALID: 1}


def test_ipv6_fragments_are_reassembled(tmp_path: Path) -> None:
    datagram = ipv6_options_header(17) + udp(7000, 8000, b"v6" * 700)  # dest options inside
    frames = []
    for i, offset in enumerate(range(0, len(datagram), 512)):
        chunk = datagram[offset : offset + 512]
        more = offset + 512 < len(datagram)
        header = ipv6_fragment_header(60, offset, more, 0xABCDEF)
        frames.append((T0 + i * 0.001, ethernet(ipv6(A6, B6, 44, header + chunk), ETH_IPV6)))
    frames.reverse()
    payloads, reader = read_all(write_pcap(tmp_path / "f6.pcap", frames))
    assert [(p.src_port, p.dst_port, p.payload) for p in payloads] == [(7000, 8000, b"v6" * 700)]
    assert reader.stats.datagrams_reassembled == 1


def test_ipv6_atomic_fragment_is_a_whole_datagram(tmp_path: Path) -> None:
    frame = ethernet(
        ipv6(A6, B6, 44, ipv6_fragment_header(17, 0, False, 5) + udp(1, 2, b"atomic")), ETH_IPV6
    )
    payloads, _ = read_all(write_pcap(tmp_path / "a6.pcap", [(T0, frame)]))
    assert [p.payload for p in payloads] == [b"atomic"]


# --- Garbage and truncation ----------------------------------------------------------------


def test_garbage_between_good_packets_is_counted_and_skipped(tmp_path: Path) -> None:
    good = ethernet(udp4(rtp(b"\xd5" * 160)))
    garbage = [
        (b"", SKIP_TRUNCATED_FRAME),
        (b"\xff" * 10, SKIP_TRUNCATED_FRAME),
        (ethernet(b"\0" * 28, 0x0806), SKIP_NOT_IP),  # ARP
        (ethernet(ipv4(A, B, 1, b"\x08\0\0\0ping")), SKIP_NOT_UDP_TCP),  # ICMP
        (ethernet(udp4(b"x")[:15]), SKIP_TRUNCATED_FRAME),  # IP header cut
        (ethernet(b"\x43" + udp4(b"x")[1:]), SKIP_BAD_IP_HEADER),  # IHL 3
        (ethernet(b"\x65" + udp4(b"x")[1:]), SKIP_BAD_IP_HEADER),  # version 6 in an IPv4 frame
        (ethernet(udp4(b"abc", total_length=200)), SKIP_TRUNCATED_FRAME),  # longer than captured
        (ethernet(udp4(b"abc", total_length=10)), SKIP_BAD_IP_HEADER),  # shorter than its header
        (ethernet(ipv4(A, B, 17, struct.pack("!HHHH", 1, 2, 50, 0) + b"abc")), SKIP_BAD_UDP_HEADER),
        (ethernet(ipv4(A, B, 17, struct.pack("!HHHH", 1, 2, 4, 0))), SKIP_BAD_UDP_HEADER),
        (ethernet(ipv4(A, B, 17, b"\0\1\0")), SKIP_TRUNCATED_FRAME),  # UDP header cut
        (
            ethernet(ipv4(A, B, 6, tcp(1, 2, b"x")[:12] + b"\x20" + tcp(1, 2, b"x")[13:])),
            SKIP_BAD_TCP_HEADER,
        ),
        (ethernet(ipv6(A6, B6, 17, udp(1, 2, b"x"))[:30], ETH_IPV6), SKIP_TRUNCATED_FRAME),
        (ethernet(b"\x45" + ipv6(A6, B6, 17, udp(1, 2, b"x"))[1:], ETH_IPV6), SKIP_BAD_IP_HEADER),
        (ethernet(ipv6(A6, B6, 0, b"\x11\x05"), ETH_IPV6), SKIP_TRUNCATED_FRAME),  # ext header cut
        (ethernet(b"", vlans=[(ETH_VLAN, 1)])[:15], SKIP_TRUNCATED_FRAME),
        (bytes(random.Random(7).getrandbits(8) for _ in range(300)), None),
    ]
    frames = []
    for i, (frame, _) in enumerate(garbage):
        frames += [(T0 + i, good), (T0 + i + 0.5, frame)]
    frames.append((T0 + 99, good))
    payloads, reader = read_all(write_pcap(tmp_path / "g.pcap", frames))
    assert len(payloads) == len(garbage) + 1
    assert all(parse_rtp(p.payload) is not None for p in payloads)
    stats = reader.stats
    assert stats.packets_read == len(frames)
    assert stats.packets_skipped == len(garbage)
    for _, reason in garbage:
        if reason is not None:
            assert stats.skipped.get(reason, 0) > 0, reason


def test_truncated_pcap_ends_gracefully(tmp_path: Path) -> None:
    frames = [(T0 + i, ethernet(udp4(b"p" * 100))) for i in range(10)]
    path = write_pcap(tmp_path / "t.pcap", frames)
    whole = path.read_bytes()
    record = 16 + len(frames[0][1])
    for cut in (record // 2, 8):  # inside the last frame; inside the last record header
        path.write_bytes(whole[: len(whole) - record + cut])
        payloads, reader = read_all(path)
        assert len(payloads) == 9
        assert reader.stats.truncated_file
        assert reader.stats.skipped == {SKIP_TRUNCATED_RECORD: 1}
        assert reader.stats.packets_read == 10


def test_truncated_pcapng_ends_gracefully(tmp_path: Path) -> None:
    frames = [(T0 + i, ethernet(udp4(b"p" * 100))) for i in range(5)]
    path = write_pcapng(tmp_path / "t.pcapng", frames)
    for cut in (1, 4, 30, 100):
        data = path.read_bytes()
        cut_path = tmp_path / f"cut{cut}.pcapng"
        cut_path.write_bytes(data[:-cut])
        payloads, reader = read_all(cut_path)
        assert len(payloads) == 4
        assert reader.stats.truncated_file
        assert reader.stats.skipped == {SKIP_TRUNCATED_RECORD: 1}


def test_corrupt_record_length_stops_without_allocating_it(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "c.pcap", [(T0, ethernet(udp4(b"ok")))])
    path.write_bytes(
        path.read_bytes() + struct.pack("<IIII", int(T0), 0, 0xFFFFFFF0, 0xFFFFFFF0) + b"junk"
    )
    payloads, reader = read_all(path)
    assert [p.payload for p in payloads] == [b"ok"]
    assert reader.stats.skipped == {SKIP_CORRUPT_RECORD: 1}


def test_corrupt_pcapng_block_length_stops(tmp_path: Path) -> None:
    path = write_pcapng(tmp_path / "c.pcapng", [(T0, ethernet(udp4(b"ok")))])
    path.write_bytes(path.read_bytes() + struct.pack("<II", 6, 3) + b"\0" * 40)
    payloads, reader = read_all(path)
    assert [p.payload for p in payloads] == [b"ok"]
    assert reader.stats.skipped == {SKIP_CORRUPT_RECORD: 1}


# --- Files that are not captures ---------------------------------------------------------


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pcap"
    with pytest.raises(CaptureError, match=r"nope\.pcap"):
        read_capture(missing)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"\xd4\xc3", "too short"),
        (b"INVITE sip:bob@example.com SIP/2.0\r\n", "not a pcap or pcapng capture"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "pcap file header is truncated"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x00\x00\x00\x00", "no byte-order magic"),
    ],
)
def test_non_capture_file_names_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(CaptureError) as info:
        read_capture(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_directory_is_not_a_capture(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=re.escape(str(tmp_path))):
        read_capture(tmp_path)


# --- The real thing --------------------------------------------------------------------------


def test_sipp_g711a_capture() -> None:
    payloads, reader = read_all(SIPP_AUDIO)
    assert reader.stats.packets_read == 236 and reader.stats.skipped == {}
    headers = [parse_rtp(p.payload) for p in payloads]
    rtp_headers = [h for h in headers if h is not None]
    assert len(rtp_headers) == 236
    assert {h.payload_type for h in rtp_headers} == {8}  # PCMA
    assert {h.payload_length for h in rtp_headers} == {240}  # 30 ms at 8 kHz
    assert {(p.src_ip, p.src_port, p.dst_ip, p.dst_port) for p in payloads} == {
        ("10.1.3.143", 5000, "10.1.6.18", 2006)
    }
    sequences = [h.sequence for h in rtp_headers]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(sequences))
    assert payloads[-1].timestamp - payloads[0].timestamp == pytest.approx(7.0496, abs=1e-3)


def test_iterating_again_gives_the_same_and_resets_stats() -> None:
    reader = read_capture(SIPP_AUDIO)
    first = list(reader)
    assert list(reader) == first
    assert reader.stats.packets_read == 236


def test_pcapng_conversion_by_editcap_reads_the_same(tmp_path: Path) -> None:
    converted = tmp_path / "g711a.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(SIPP_AUDIO), str(converted)], check=True)
    assert list(read_capture(converted)) == list(read_capture(SIPP_AUDIO))


def test_agrees_with_tshark_on_a_mixed_capture(tmp_path: Path) -> None:
    big = b"F" * 2500
    frames = [
        (T0, ethernet(udp4(b"plain"))),
        (T0 + 0.1, ethernet(udp4(b"vlan"), vlans=[(ETH_VLAN, 7)])),
        (T0 + 0.2, ethernet(ipv6(A6, B6, 17, udp(1, 2, b"six")), ETH_IPV6)),
        *[(T0 + 0.3 + i * 0.01, f) for i, f in enumerate(fragments4(big, 1000))],
        (T0 + 0.5, ethernet(ipv4(A, B, 6, tcp(5060, 1234, b"tcp payload")))),
        (T0 + 0.6, ethernet(b"\0" * 28, 0x0806)),
    ]
    path = write_pcap(tmp_path / "mixed.pcap", frames)
    result = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-Y",
            "udp || tcp.len > 0",
            "-T",
            "fields",
            "-e",
            "udp.length",
            "-e",
            "tcp.len",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    tshark_lengths = [
        int(u) - 8 if u else int(t)
        for u, t in (line.split("\t") for line in result.stdout.splitlines())
    ]
    ours = [len(p.payload) for p in read_capture(path)]
    assert ours == tshark_lengths == [5, 4, 3, 2500, 11]


# --- Direct decoding (live capture) and robustness ----------------------------------------------


def test_frame_decoder_is_usable_without_a_file() -> None:
    decoder = FrameDecoder()
    parts = fragments4(b"k" * 60, 32)  # 68-byte datagram: 32 + 32 + 4
    assert decoder.decode(T0, LINKTYPE_ETHERNET, parts[0]) is None
    assert decoder.decode(T0, LINKTYPE_ETHERNET, parts[2]) is None
    assert decoder.pending_fragmented_datagrams == 1
    whole = decoder.decode(T0 + 0.1, LINKTYPE_ETHERNET, parts[1])
    assert whole is not None and whole.payload == b"k" * 60
    decoder.decode(T0 + 0.2, LINKTYPE_ETHERNET, fragments4(b"k" * 60, 32, ident=5)[0])
    decoder.finish()
    assert decoder.stats.skipped == {SKIP_FRAGMENT_INCOMPLETE: 1}
    assert decoder.address(bytes(16)) == "::"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([0, 1, 12, 101, 108, 113, 228, 229, 276, 105]),
    st.binary(max_size=120),
)
def test_decoder_never_raises_on_arbitrary_frames(linktype: int, frame: bytes) -> None:
    decoder = FrameDecoder()
    result = decoder.decode(T0, linktype, frame)
    if result is None:
        assert decoder.stats.packets_skipped <= 1
    else:
        assert result.transport in ("udp", "tcp")


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400), st.sampled_from(["pcap", "pcapng"]))
def test_reader_never_raises_on_arbitrary_bodies(tmp_path: Path, body: bytes, kind: str) -> None:
    path = tmp_path / f"fuzz.{kind}"
    good = ethernet(udp4(b"ok"))
    if kind == "pcap":
        write_pcap(path, [(T0, good)])
    else:
        write_pcapng(path, [(T0, good)])
    path.write_bytes(path.read_bytes() + body)
    payloads, reader = read_all(path)
    assert payloads[0].payload == b"ok"
    assert reader.stats.packets_read >= 1


def test_big_endian_pcapng_section_then_little_endian(tmp_path: Path) -> None:
    frame = ethernet(udp4(b"big"))
    ticks = int(T0 * 1e6)
    big_endian = (
        bytes(dpkt.pcapng.SectionHeaderBlock())
        + bytes(dpkt.pcapng.InterfaceDescriptionBlock(snaplen=65535, linktype=LINKTYPE_ETHERNET))
        + bytes(
            dpkt.pcapng.EnhancedPacketBlock(
                iface_id=0,
                ts_high=ticks >> 32,
                ts_low=ticks & 0xFFFFFFFF,
                caplen=len(frame),
                pkt_len=len(frame),
                pkt_data=frame,
            )
        )
    )
    little = write_pcapng(tmp_path / "le.pcapng", [(T0 + 1, ethernet(udp4(b"little")))])
    path = tmp_path / "mixed-endian.pcapng"
    path.write_bytes(big_endian + little.read_bytes())
    payloads, reader = read_all(path)
    assert [(p.timestamp, p.payload) for p in payloads] == [(T0, b"big"), (T0 + 1, b"little")]
    assert reader.stats.skipped == {}
