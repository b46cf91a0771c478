"""Encapsulations: the same call inside VLAN/QinQ, PPPoE, MPLS, GRE/ERSPAN, VXLAN, Geneve,
IP in IP, Linux SLL/SLL2, PPP and 802.3 LLC/SNAP frames replays to the same calls, CDRs
and verdicts as plain Ethernet; tshark decodes the same frames; garbage never raises.

The call (INVITE with SDP, 180, 200 OK with SDP, ACK, 0.3 s of speech both ways in PCMA,
BYE, 200) is built here over IPv4, IPv4 with options, or IPv6 with extension headers,
and each packet is wrapped by one of :data:`ENCAPSULATIONS`.

``python -m tests.media.test_frames`` writes the committed captures of
``pcaps/encapsulated/`` and their ``expected.json``; a test checks that the committed
files are exactly what this module builds, and that they replay as the file says.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.cli.replay import replay_file
from sidecar.media.capture import LiveCapture, Mechanism, port_filter
from sidecar.media.frames import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_PPP,
    MAX_ENCAPSULATION,
    SKIP_ENCAPSULATION_TOO_DEEP,
    SKIP_NOT_IP,
    SKIP_TRUNCATED_FRAME,
    SKIP_UNSUPPORTED_ENCAPSULATION,
    SKIP_UNSUPPORTED_LINKTYPE,
    FrameDecoder,
)
from sidecar.media.g711 import Codec
from sidecar.media.pcap import CapturedPayload, read_capture
from sidecar.replay.run import ReplayResult
from sidecar.store.accounts import map_sip
from sidecar.supervision.calls import CallControl, ControlConfig
from sidecar.supervision.media import MediaConfig, MediaSupervisor

from ..charging.harness import Sim
from .packets import checksum, packetize, rtp, speech_like

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "pcaps" / "encapsulated"
T0 = 1_795_262_400.0  # 2026-11-21 12:00:00 UTC, when the test deck's rates apply
TALK_S = 0.3
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
TUNNEL_A, TUNNEL_B = "203.0.113.1", "203.0.113.2"

# --------------------------------------------------------------------------- the call

ADDRESSES = {4: ("192.0.2.10", "198.51.100.20"), 6: ("2001:db8::a", "2001:db8:0:1::b")}
CALLER_RTP, CALLEE_RTP = 40000, 50000


def _sdp(address: str, port: int, session: int) -> str:
    family = "IP6" if ":" in address else "IP4"
    return (f"v=0\r\no=- {session} 1 IN {family} {address}\r\ns=-\r\nc=IN {family} {address}"
            f"\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")


def _sip(start: str, cseq: str, caller: str, callee: str, *, to_tag: bool = True,
         sdp: str = "") -> bytes:
    host = f"[{caller}]" if ":" in caller else caller
    headers = [
        start,
        f"Via: SIP/2.0/UDP {host}:5060;branch=z9hG4bK{cseq.replace(' ', '')}",
        "From: <sip:+4930111222@example.com>;tag=from1",
        "To: <sip:+4930123456@example.com>" + (";tag=to1" if to_tag else ""),
        "Call-ID: encap-call-1@example.com",
        f"CSeq: {cseq}",
        f"Contact: <sip:u@{host}:5060>",
        "P-Asserted-Identity: <sip:+4930111222@example.com>",
    ]
    if sdp:
        headers.append("Content-Type: application/sdp")
    headers.append(f"Content-Length: {len(sdp)}")
    return ("\r\n".join(headers) + "\r\n\r\n" + sdp).encode()


# (timestamp, source, source port, destination, destination port, UDP payload)
Datagram = tuple[float, str, int, str, int, bytes]


@functools.cache
def call_datagrams(version: int) -> tuple[Datagram, ...]:
    """One answered call between the caller and the callee, in capture order."""
    a, b = ADDRESSES[version]
    ruri = "INVITE sip:+4930123456@example.com SIP/2.0"
    out: list[Datagram] = [
        (T0, a, 5060, b, 5060,
         _sip(ruri, "1 INVITE", a, b, to_tag=False, sdp=_sdp(a, CALLER_RTP, 1))),
        (T0 + 0.2, b, 5060, a, 5060, _sip("SIP/2.0 180 Ringing", "1 INVITE", a, b)),
        (T0 + 1.0, b, 5060, a, 5060,
         _sip("SIP/2.0 200 OK", "1 INVITE", a, b, sdp=_sdp(b, CALLEE_RTP, 2))),
        (T0 + 1.01, a, 5060, b, 5060, _sip("ACK sip:u@example.com SIP/2.0", "1 ACK", a, b)),
    ]
    caller = packetize(speech_like(TALK_S, seed=3), Codec.PCMA)
    callee = packetize(speech_like(TALK_S, seed=4), Codec.PCMA)
    for i, (up, down) in enumerate(zip(caller, callee, strict=True)):
        t = T0 + 1.005 + i * 0.02
        out.append((t, a, CALLER_RTP, b, CALLEE_RTP,
                    rtp(up, sequence=i + 1, timestamp=160 * i, ssrc=0xA)))
        out.append((t + 0.001, b, CALLEE_RTP, a, CALLER_RTP,
                    rtp(down, sequence=i + 1, timestamp=160 * i, ssrc=0xB)))
    bye = T0 + 1.0 + TALK_S + 0.05
    out.append((bye, a, 5060, b, 5060, _sip("BYE sip:u@example.com SIP/2.0", "2 BYE", a, b)))
    out.append((bye + 0.01, b, 5060, a, 5060, _sip("SIP/2.0 200 OK", "2 BYE", a, b)))
    return tuple(sorted(out, key=lambda d: d[0]))


def _raw(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, options: bytes = b"",
         ident: int = 1) -> bytes:
    """An IPv4 header with a valid checksum (and ``options``), then ``payload``."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45 + len(options) // 4, 0,
                         20 + len(options) + len(payload), ident, 0x4000, 64, proto, 0,
                         _raw(src), _raw(dst)) + options
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def ipv6(src: str, dst: str, proto: int, payload: bytes, *, extensions: bool = False) -> bytes:
    """An IPv6 header, then hop-by-hop and destination options headers if asked."""
    if extensions:
        # Hop-by-hop with a router alert and padding; destination options with PadN.
        dest = struct.pack("!BB", proto, 0) + bytes([1, 4, 0, 0, 0, 0])
        hop = struct.pack("!BB", 60, 0) + bytes([5, 2, 0, 0, 1, 0])
        payload, proto = hop + dest + payload, 0
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, 64, _raw(src),
                       _raw(dst)) + payload


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header with its checksum over the pseudo-header (required over IPv6)."""
    length = 8 + len(payload)
    pseudo = (_raw(src) + _raw(dst) + struct.pack("!HH", 17, length) if ":" not in src
              else _raw(src) + _raw(dst) + struct.pack("!IxxxB", length, 17))
    header = struct.pack("!HHHH", sport, dport, length, 0)
    value = checksum(pseudo + header + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, value) + payload


def ip_packet(datagram: Datagram, variant: str, ident: int) -> bytes:
    """The call's datagram as an IP packet: ``ipv4``, ``ipv4-options`` or ``ipv6-ext``."""
    _, src, sport, dst, dport, payload = datagram
    segment = udp(src, dst, sport, dport, payload)
    if variant == "ipv6-ext":
        return ipv6(src, dst, 17, segment, extensions=True)
    # Options: record route with room for two addresses, then end of options.
    options = bytes([7, 11, 4]) + bytes(8) + b"\0" if variant == "ipv4-options" else b""
    return ipv4(src, dst, 17, segment, options=options, ident=ident)


# --------------------------------------------------------------------------- encapsulations


def eth(payload: bytes, ethertype: int, *tags: tuple[int, int]) -> bytes:
    return MAC_B + MAC_A + b"".join(struct.pack("!HH", t, v) for t, v in tags) + struct.pack(
        "!H", ethertype) + payload


def ethertype_of(packet: bytes) -> int:
    return 0x86DD if packet[0] >> 4 == 6 else 0x0800


def plain(packet: bytes) -> bytes:
    return eth(packet, ethertype_of(packet))


def pppoe(packet: bytes, *tags: tuple[int, int]) -> bytes:
    ppp = struct.pack("!H", 0x0057 if packet[0] >> 4 == 6 else 0x0021) + packet
    return eth(struct.pack("!BBHH", 0x11, 0, 0x1234, len(ppp)) + ppp, 0x8864, *tags)


def mpls(packet: bytes) -> bytes:
    # Two labels (transport, then VPN with bottom of stack), TTL 64.
    labels = struct.pack("!II", (16001 << 12) | 64, (24005 << 12) | 0x100 | 64)
    return eth(labels + packet, 0x8847)


def mpls_pw(packet: bytes) -> bytes:
    # An Ethernet pseudowire: one label, the control word, the customer's frame.
    return eth(struct.pack("!II", (3000 << 12) | 0x100 | 64, 7) + plain(packet), 0x8847)


def gre(inner: bytes, protocol: int, *, flags: int = 0, key: int = 0, seq: int = 0,
        outer: int = 4) -> bytes:
    """GRE over IPv4 (or IPv6 with extension headers), checksum/key/sequence as flagged."""
    fields = b""
    if flags & 0x8000:
        fields += struct.pack("!HH", checksum(struct.pack("!HH", flags, protocol) + inner), 0)
    if flags & 0x2000:
        fields += struct.pack("!I", key)
    if flags & 0x1000:
        fields += struct.pack("!I", seq)
    body = struct.pack("!HH", flags, protocol) + fields + inner
    if outer == 6:
        return eth(ipv6("2001:db8:ffff::1", "2001:db8:ffff::2", 47, body, extensions=True),
                   0x86DD)
    return eth(ipv4(TUNNEL_A, TUNNEL_B, 47, body), 0x0800)


def erspan2(packet: bytes) -> bytes:
    # Version 1, VLAN 0, COS 0, Encap 0, T 0, session 100; index 0.
    header = struct.pack("!HHI", 0x1000, 100, 0)
    return gre(header + eth(packet, ethertype_of(packet), (0x8100, 300)), 0x88BE,
               flags=0x1000, seq=9)


def erspan3(packet: bytes) -> bytes:
    # Version 2, session 7, a timestamp, SGT, hardware id, O set: the 8-byte subheader.
    header = struct.pack("!HHIHH", 0x2000, 7, 123456, 0, 0x0001) + bytes(8)
    return gre(header + plain(packet), 0x22EB, flags=0x1000, seq=1)


def vxlan(packet: bytes, port: int = 4789) -> bytes:
    body = struct.pack("!BxxxI", 0x08, 5001 << 8) + plain(packet)
    return eth(ipv4(TUNNEL_A, TUNNEL_B, 17, udp(TUNNEL_A, TUNNEL_B, 54321, port, body)),
               0x0800)


def geneve(packet: bytes) -> bytes:
    # One 8-byte option (class 0x0102, type 0x80, 4 bytes of data), protocol TEB.
    option = struct.pack("!HBB", 0x0102, 0x80, 1) + b"\xde\xad\xbe\xef"
    body = struct.pack("!BBHI", len(option) // 4, 0, 0x6558, 77 << 8) + option
    body += plain(packet)
    return eth(ipv4(TUNNEL_A, TUNNEL_B, 17, udp(TUNNEL_A, TUNNEL_B, 54321, 6081, body)),
               0x0800)


def ipip(packet: bytes) -> bytes:
    proto = 41 if packet[0] >> 4 == 6 else 4
    return eth(ipv4(TUNNEL_A, TUNNEL_B, proto, packet), 0x0800)


def sll(packet: bytes) -> bytes:
    return struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", ethertype_of(packet)) + packet


def sll2(packet: bytes) -> bytes:
    return struct.pack("!HHIHBB8s", ethertype_of(packet), 0, 2, 1, 0, 6, MAC_A + b"\0\0") \
        + packet


def ppp(packet: bytes) -> bytes:
    return b"\xff\x03" + struct.pack("!H", 0x0057 if packet[0] >> 4 == 6 else 0x0021) + packet


def llc_snap(packet: bytes) -> bytes:
    # IEEE 802.3 (a length, not a type), LLC AA AA 03, SNAP OUI 0, then the EtherType.
    body = b"\xaa\xaa\x03\x00\x00\x00" + struct.pack("!H", ethertype_of(packet)) + packet
    return MAC_B + MAC_A + struct.pack("!H", len(body)) + body


def radiotap_80211(packet: bytes) -> bytes:
    # Radiotap with no fields, an 802.11 data frame to the access point, LLC/SNAP.
    header = struct.pack("<BBHI", 0, 0, 8, 0)
    dot11 = struct.pack("<HH6s6s6sH", 0x0108, 0, MAC_B, MAC_A, MAC_B, 0x10)
    snap = b"\xaa\xaa\x03\x00\x00\x00" + struct.pack("!H", ethertype_of(packet))
    return header + dot11 + snap + packet


Wrap = Callable[[bytes], bytes]
FALLBACK = frozenset({"llc-snap", "radiotap-80211"})  # dpkt finds their IP packets
#: name -> (link type, wrapper)
ENCAPSULATIONS: dict[str, tuple[int, Wrap]] = {
    "ethernet": (LINKTYPE_ETHERNET, plain),
    "vlan": (LINKTYPE_ETHERNET, lambda p: eth(p, ethertype_of(p), (0x8100, 100))),
    "qinq": (LINKTYPE_ETHERNET, lambda p: eth(p, ethertype_of(p), (0x88A8, 10), (0x8100, 20))),
    "qinq-9100": (LINKTYPE_ETHERNET,
                  lambda p: eth(p, ethertype_of(p), (0x9100, 10), (0x8100, 20))),
    "pppoe": (LINKTYPE_ETHERNET, pppoe),
    "pppoe-qinq": (LINKTYPE_ETHERNET, lambda p: pppoe(p, (0x88A8, 10), (0x8100, 20))),
    "mpls": (LINKTYPE_ETHERNET, mpls),
    "mpls-pw": (LINKTYPE_ETHERNET, mpls_pw),
    "gre": (LINKTYPE_ETHERNET,
            lambda p: gre(p, ethertype_of(p), flags=0xB000, key=42, seq=7)),
    "gre-ipv6": (LINKTYPE_ETHERNET, lambda p: gre(p, ethertype_of(p), outer=6)),
    "gre-teb": (LINKTYPE_ETHERNET, lambda p: gre(plain(p), 0x6558, flags=0x2000, key=1)),
    "erspan2": (LINKTYPE_ETHERNET, erspan2),
    "erspan3": (LINKTYPE_ETHERNET, erspan3),
    "vxlan": (LINKTYPE_ETHERNET, vxlan),
    "geneve": (LINKTYPE_ETHERNET, geneve),
    "ipip": (LINKTYPE_ETHERNET, ipip),
    "sll": (LINKTYPE_LINUX_SLL, sll),
    "sll2": (LINKTYPE_LINUX_SLL2, sll2),
    "ppp": (LINKTYPE_PPP, ppp),
    "llc-snap": (LINKTYPE_ETHERNET, llc_snap),
    "radiotap-80211": (127, radiotap_80211),
}
VARIANTS = ("ipv4", "ipv4-options", "ipv6-ext")


def frames(encapsulation: str, variant: str = "ipv4") -> tuple[int, list[tuple[float, bytes]]]:
    """The call's frames in one encapsulation: (link type, [(timestamp, frame)])."""
    linktype, wrap = ENCAPSULATIONS[encapsulation]
    version = 6 if variant.startswith("ipv6") else 4
    return linktype, [(d[0], wrap(ip_packet(d, variant, i + 1)))
                      for i, d in enumerate(call_datagrams(version))]


def write(path: Path, linktype: int, records: Sequence[tuple[float, bytes]]) -> Path:
    """A pcap (``.pcap``) or pcapng (``.pcapng``) file of ``records``."""
    with path.open("wb") as f:
        if path.suffix == ".pcapng":
            writer: Any = dpkt.pcapng.Writer(f, snaplen=65535, linktype=linktype)
        else:
            writer = dpkt.pcap.Writer(f, snaplen=65535, linktype=linktype)
        for ts, frame in records:
            writer.writepkt(frame, ts=ts)
    return path


def replay(path: Path) -> ReplayResult:
    """``sidecar replay --db``: the caller is account acme on the test deck's plan."""
    sim = Sim(db=":memory:")
    sim.account("acme", "5")
    map_sip(sim.conn, "user", "+4930111222", "acme")
    control = CallControl(sim.charger, MediaSupervisor(MediaConfig()),
                          ControlConfig(supervise_rejected=True))
    return replay_file(path, control)


def calls(result: ReplayResult) -> list[dict[str, Any]]:
    return [c.to_dict() for c in result.calls]


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ReplayResult]:
    """The plain-Ethernet replay of the call, per variant."""
    out = {}
    for variant in VARIANTS:
        linktype, records = frames("ethernet", variant)
        path = tmp_path_factory.mktemp("reference") / f"{variant}.pcap"
        out[variant] = replay(write(path, linktype, records))
    return out


# --------------------------------------------------------------------------- tests


def test_the_plain_call_is_answered_clean_and_billed(
    references: dict[str, ReplayResult]
) -> None:
    """The reference itself: otherwise 'the same as plain Ethernet' proves little."""
    for result in references.values():
        (call,) = result.calls
        assert call.disposition == "answered" and call.verdict == ""
        assert call.billable_ms == call.answer_ms
        assert call.billable_seconds == 1  # 0.35 s of talk, rounded up to the second
        assert call.cost is not None and call.cost == Decimal("0.001")  # 0.06 a minute
        (cdr,) = result.cdrs
        assert cdr.disposition == "answered" and cdr.charged == Decimal("0.001")
        assert result.rtp_packets == 2 * round(TALK_S / 0.02)
        assert not result.capture.skipped


@pytest.mark.parametrize("suffix", [".pcap", ".pcapng"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("encapsulation", sorted(ENCAPSULATIONS))
def test_encapsulated_call_replays_as_plain_ethernet(
    tmp_path: Path, references: dict[str, ReplayResult], encapsulation: str, variant: str,
    suffix: str,
) -> None:
    linktype, records = frames(encapsulation, variant)
    path = write(tmp_path / f"{encapsulation}{suffix}", linktype, records)
    result = replay(path)
    expected = references[variant]
    assert result.capture.skipped == {}
    assert result.capture.packets_read == result.packets == len(records)
    assert result.rtp_packets == expected.rtp_packets
    assert calls(result) == calls(expected)
    assert [c.__dict__ for c in result.cdrs] == [c.__dict__ for c in expected.cdrs]
    # Only 802.3 LLC/SNAP framing and Wi-Fi need dpkt.
    assert result.capture.fallback_decoded == (len(records) if encapsulation in FALLBACK
                                               else 0)


def test_pppoe_capture_through_the_command(tmp_path: Path) -> None:
    """The reported failure: PPPoE frames were 'not_ip' and the call was lost."""
    linktype, records = frames("pppoe")
    path = write(tmp_path / "pppoe.pcap", linktype, records)
    db = tmp_path / "s.db"
    Sim(db=db)  # the 'retail' plan
    command = [sys.executable, "-m", "sidecar", "--db", str(db), "replay", str(path),
               "--plan", "retail"]
    out = subprocess.run([*command, "--json"], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    document = json.loads(out)
    assert document["summary"]["frames_skipped"] == {}
    assert document["summary"]["frames_read"] == len(records)
    (call,) = document["calls"]
    assert call["disposition"] == "answered" and call["verdict"] == ""
    assert call["billable_seconds"] == 1 and call["cost"] == "0.001"
    text = subprocess.run(command, capture_output=True, text=True, check=True,
                          cwd=ROOT).stdout
    assert "FAS verdict: ok" in text
    assert f"1 calls, {len(records)} payloads ({len(records) - 6} RTP), 0 frames skipped," \
        in text


def test_skip_reasons_are_printed_in_the_summary(tmp_path: Path) -> None:
    linktype, records = frames("ethernet")
    arp = MAC_B + MAC_A + b"\x08\x06" + bytes(28)
    unknown = MAC_B + MAC_A + b"\x88\xb5" + bytes(40)  # a local experimental EtherType
    path = write(tmp_path / "mixed.pcap", linktype,
                 [*records, (T0 + 5, arp), (T0 + 5, arp), (T0 + 5, unknown)])
    text = subprocess.run([sys.executable, "-m", "sidecar", "replay", str(path)],
                          capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "3 frames skipped (not_ip 2, unsupported_encapsulation 1)" in text


# -- tshark as the independent decoder

TSHARK = shutil.which("tshark")


# Wireshark cannot tell an MPLS pseudowire's payload by itself: it is told, as an
# operator would be ("decode as").
TSHARK_DECODE_AS = {"mpls-pw": ["-d", "mpls.label==3000,pwethcw"]}


def tshark_udp(path: Path, encapsulation: str = "") -> list[tuple[int, int, int]]:
    """Per frame, the innermost UDP header tshark decodes: (source, destination, length)."""
    assert TSHARK is not None
    out = subprocess.run(
        [TSHARK, "-n", "-r", str(path), *TSHARK_DECODE_AS.get(encapsulation, []),
         "-T", "fields", "-E", "occurrence=l",
         "-e", "udp.srcport", "-e", "udp.dstport", "-e", "udp.length"],
        capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split("\t")
        rows.append(tuple(int(f) for f in fields) if all(fields) else (0, 0, 0))
    return rows  # type: ignore[return-value]


def ours_udp(path: Path) -> list[tuple[int, int, int]]:
    return [(p.src_port, p.dst_port, 8 + len(p.payload)) for p in read_capture(path)]


@pytest.mark.parametrize("variant", ["ipv4", "ipv6-ext"])
def test_tshark_decodes_the_same_frames(tmp_path: Path, variant: str) -> None:
    """Every encapsulation's frames, one file per link type (tshark starts slowly)."""
    by_linktype: dict[int, list[tuple[float, bytes]]] = {}
    for encapsulation in sorted(ENCAPSULATIONS):
        linktype, records = frames(encapsulation, variant)
        by_linktype.setdefault(linktype, []).extend(records)
    for linktype, records in by_linktype.items():
        path = write(tmp_path / f"{linktype}.pcapng", linktype, records)
        ours = ours_udp(path)
        assert len(ours) == len(records)
        assert tshark_udp(path, "mpls-pw") == ours, linktype


# -- limits and bad input


def _decode(linktype: int, frame: bytes) -> tuple[CapturedPayload | None, dict[str, int]]:
    decoder = FrameDecoder()
    result = decoder.decode(T0, linktype, frame)
    return result, decoder.stats.skipped


def _rtp_packet(version: int = 4) -> bytes:
    a, b = ADDRESSES[version]
    return ip_packet((T0, a, CALLER_RTP, b, CALLEE_RTP, rtp(b"\xd5" * 160)), "ipv4", 1)


def test_nesting_is_bounded() -> None:
    packet = _rtp_packet()
    # VXLAN in VXLAN: each VXLAN header and each inner Ethernet is a layer.
    frame = packet
    for _ in range(MAX_ENCAPSULATION // 2):
        frame = vxlan(frame)[14:]
    result, skipped = _decode(LINKTYPE_ETHERNET, eth(frame, 0x0800))
    assert result is not None and result.dst_port == CALLEE_RTP and not skipped
    for _ in range(MAX_ENCAPSULATION):
        frame = vxlan(frame)[14:]
    result, skipped = _decode(LINKTYPE_ETHERNET, eth(frame, 0x0800))
    assert result is None and skipped == {SKIP_ENCAPSULATION_TOO_DEEP: 1}
    tags = [(0x8100, i) for i in range(MAX_ENCAPSULATION + 1)]
    result, skipped = _decode(LINKTYPE_ETHERNET, eth(packet, 0x0800, *tags))
    assert result is None and skipped == {SKIP_ENCAPSULATION_TOO_DEEP: 1}
    result, skipped = _decode(LINKTYPE_ETHERNET, eth(packet, 0x0800, *tags[:-1]))
    assert result is not None and not skipped


@pytest.mark.parametrize(("frame", "reason"), [
    (eth(b"\x11\x00\x12\x34\x00\x02\xc0\x21", 0x8864), SKIP_NOT_IP),  # PPP LCP
    (eth(bytes(30), 0x8863), SKIP_NOT_IP),  # PPPoE discovery
    (eth(bytes(30), 0x0806), SKIP_NOT_IP),  # ARP
    (eth(bytes(40), 0x88B5), SKIP_UNSUPPORTED_ENCAPSULATION),
    (eth(struct.pack("!I", 0x100 | 64) + b"\x10" + bytes(20), 0x8847), SKIP_NOT_IP),  # OAM
    (eth(struct.pack("!I", 64), 0x8847), SKIP_TRUNCATED_FRAME),  # no bottom of stack
    (eth(b"\x11\x00\x12\x34\x00\x40\x00\x21" + bytes(20), 0x8864), SKIP_TRUNCATED_FRAME),
])
def test_what_cannot_be_decoded_is_counted_by_reason(frame: bytes, reason: str) -> None:
    result, skipped = _decode(LINKTYPE_ETHERNET, frame)
    assert result is None and skipped == {reason: 1}


def test_unknown_link_type_goes_to_dpkt_then_is_counted() -> None:
    result, skipped = _decode(147, _rtp_packet())  # a "user" link type: nobody knows it
    assert result is None and skipped == {SKIP_UNSUPPORTED_LINKTYPE: 1}


def test_rtp_to_a_tunnel_port_is_still_rtp() -> None:
    """Only a real VXLAN header is decapsulated: RTP sent to port 4789 stays a payload."""
    a, b = ADDRESSES[4]
    packet = ip_packet((T0, a, 4000, b, 4789, rtp(b"\xd5" * 160)), "ipv4", 1)
    result, skipped = _decode(LINKTYPE_ETHERNET, plain(packet))
    assert result is not None and result.dst_port == 4789 and not skipped


def _valid_frames() -> list[tuple[int, bytes]]:
    out = []
    for name in sorted(ENCAPSULATIONS):
        for variant in ("ipv4", "ipv6-ext"):
            linktype, records = frames(name, variant)
            out += [(linktype, records[0][1]), (linktype, records[6][1])]
    return out


VALID = _valid_frames()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.data())
def test_truncated_frames_never_raise_and_are_counted(
    valid: tuple[int, bytes], data: st.DataObject
) -> None:
    linktype, frame = valid
    cut = data.draw(st.integers(0, len(frame) - 1))
    decoder = FrameDecoder()
    result = decoder.decode(T0, linktype, frame[:cut])
    # Every frame has one outcome: a payload, or one skip under one reason.
    assert (result is None) == (decoder.stats.packets_skipped == 1)
    assert decoder.stats.packets_skipped <= 1


@settings(max_examples=600, deadline=None)
@given(st.sampled_from([1, 113, 276, 101, 0, 9, 104, 105, 127, 147]),
       st.sampled_from(VALID), st.binary(max_size=120), st.integers(0, 400))
def test_mutated_and_random_frames_never_raise(
    linktype: int, valid: tuple[int, bytes], noise: bytes, at: int
) -> None:
    frame = valid[1]
    at = min(at, len(frame))
    decoder = FrameDecoder()
    for candidate in (noise, frame[:at] + noise + frame[at + len(noise):], frame[:at] + noise):
        before = decoder.stats.packets_skipped
        result = decoder.decode(T0, linktype, candidate)
        assert result is not None or decoder.stats.packets_skipped == before + 1
    decoder.finish()


def test_capture_with_garbage_frames_still_replays_the_call(tmp_path: Path) -> None:
    import random

    rng = random.Random(7)
    good = frames("pppoe")[1]
    sources = [f for name in ("vxlan", "erspan2", "mpls", "qinq") for _, f in frames(name)[1]]
    mixed = list(good)
    for i in range(300):
        if i % 2:  # random bytes
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        else:  # a valid frame of another encapsulation, cut short
            source = rng.choice(sources)
            junk = source[: rng.randrange(len(source))]
        mixed.append((T0 + rng.random() * 2, junk))
    mixed.sort(key=lambda r: r[0])
    clean = replay(write(tmp_path / "clean.pcap", LINKTYPE_ETHERNET, good))
    result = replay(write(tmp_path / "mixed.pcap", LINKTYPE_ETHERNET, mixed))
    assert calls(result) == calls(clean)
    assert result.rtp_packets == clean.rtp_packets
    assert result.capture.packets_read == len(mixed)
    assert result.capture.packets_skipped > 0


# --------------------------------------------------------------------------- committed

#: file -> (encapsulation, description)
COMMITTED_CAPTURES: dict[str, tuple[str, str]] = {
    "pppoe.pcap": ("pppoe", "PPPoE session (0x8864), PPP IPv4 (0x0021)"),
    "pppoe_qinq_ipv6.pcapng": ("pppoe-qinq",
                               "QinQ (0x88a8 + 0x8100) then PPPoE, PPP IPv6 (0x0057); the "
                               "call over IPv6 with hop-by-hop and destination options"),
    "qinq.pcap": ("qinq", "802.1ad outer tag 10, 802.1Q inner tag 20"),
    "mpls.pcap": ("mpls", "MPLS, two labels, then IPv4 by the version nibble"),
    "gre_erspan2.pcap": ("erspan2",
                         "IPv4 / GRE with sequence / ERSPAN type II / Ethernet with VLAN 300"),
    "gre_erspan3.pcapng": ("erspan3",
                           "IPv4 / GRE / ERSPAN type III with platform subheader / Ethernet"),
    "vxlan.pcap": ("vxlan", "IPv4 / UDP 4789 / VXLAN VNI 5001 / Ethernet"),
    "sll2.pcap": ("sll2", "Linux cooked capture v2 (link type 276), as tcpdump -i any"),
}


def build_committed(out: Path) -> dict[str, dict[str, Any]]:
    """Write the committed captures into ``out``; their facts (for expected.json)."""
    out.mkdir(parents=True, exist_ok=True)
    facts: dict[str, dict[str, Any]] = {}
    for name, (encapsulation, description) in COMMITTED_CAPTURES.items():
        variant = "ipv6-ext" if "ipv6" in name else "ipv4"
        linktype, records = frames(encapsulation, variant)
        path = write(out / name, linktype, records)
        result = replay(path)
        (call,) = result.calls
        facts[name] = {
            "description": description,
            "format": "pcapng" if name.endswith(".pcapng") else "pcap",
            "linktype": linktype,
            "ip_version": 6 if variant == "ipv6-ext" else 4,
            "frames": len(records),
            "payloads": result.packets,
            "rtp_packets": result.rtp_packets,
            "skipped": dict(result.capture.skipped),
            "calls": len(result.calls),
            "call_id": call.call_id,
            "disposition": call.disposition,
            "fas": call.verdict,
            "final_code": call.final_code,
            "billable_seconds": call.billable_seconds,
            "cost": call.to_dict()["cost"],
            "talk_s": TALK_S,
        }
    (out / "expected.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


EXPECTED_COMMITTED: dict[str, dict[str, Any]] = (
    json.loads((COMMITTED / "expected.json").read_text())
    if (COMMITTED / "expected.json").exists() else {}
)


def test_committed_captures_are_what_this_module_builds(tmp_path: Path) -> None:
    facts = build_committed(tmp_path)
    assert facts == EXPECTED_COMMITTED
    for name in COMMITTED_CAPTURES:
        assert (tmp_path / name).read_bytes() == (COMMITTED / name).read_bytes(), name
        assert (COMMITTED / name).stat().st_size < 20_000


@pytest.mark.parametrize("name", sorted(EXPECTED_COMMITTED))
def test_committed_capture_replays_as_expected(name: str) -> None:
    exp = EXPECTED_COMMITTED[name]
    path = COMMITTED / name
    assert read_capture(path).format == exp["format"]
    result = replay(path)
    assert result.capture.packets_read == exp["frames"]
    assert result.capture.skipped == exp["skipped"] == {}
    assert result.packets == exp["payloads"] and result.rtp_packets == exp["rtp_packets"]
    (call,) = result.calls
    assert (call.disposition, call.verdict, call.final_code) == (
        exp["disposition"], exp["fas"], exp["final_code"]) == ("answered", "", 200)
    assert call.billable_seconds == exp["billable_seconds"]
    assert call.to_dict()["cost"] == exp["cost"]
    assert tshark_udp(path) == ours_udp(path)


if __name__ == "__main__":
    for name, fact in build_committed(COMMITTED).items():
        print(f"{name}: {fact['frames']} frames, {(COMMITTED / name).stat().st_size} bytes")


# --------------------------------------------------------------------------- live capture

RAW_SENDER = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for line in sys.stdin:
    s.send(bytes.fromhex(line))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and AF_PACKET need root")
@pytest.mark.parametrize("mechanism", ["ring", "recv"])
def test_live_capture_on_a_trunk_sees_vlan_and_qinq_frames(mechanism: Mechanism) -> None:
    """On receive the kernel moves a frame's outer VLAN tag into the packet's metadata
    (auxdata), so the filter and the decoder see it untagged; a QinQ frame keeps its
    inner tag, which the decoder walks."""
    from sidecar.lab.netns import VethNamespace

    with VethNamespace.create("trunk") as lab:
        host_mac = bytes.fromhex(
            Path(f"/sys/class/net/{lab.host_if}/address").read_text().strip().replace(":", ""))
        port, count = 41234, 40
        kinds = {"untagged": (), "vlan": ((0x8100, 100),), "qinq": ((0x88A8, 10), (0x8100, 20))}
        lines = []
        for kind, tags in kinds.items():
            for i in range(count):
                payload = b"%s %d" % (kind.encode(), i)
                packet = ipv4(lab.ns_ip, lab.host_ip, 17,
                              udp(lab.ns_ip, lab.host_ip, 40000, port, payload))
                frame = eth(packet, 0x0800, *tags)
                lines.append((host_mac + frame[6:]).hex())
        with LiveCapture(lab.host_if, filter=port_filter([port]), mechanism=mechanism) as cap:
            lab.run([sys.executable, "-c", RAW_SENDER, lab.ns_if], input="\n".join(lines),
                    text=True, check=True, timeout=30)
            got: list[CapturedPayload] = []
            deadline = time.monotonic() + 5
            while len(got) < len(lines) and time.monotonic() < deadline:
                select.select([cap], [], [], 0.05)
                got += cap.read()
            time.sleep(0.1)
            got += cap.read()
            stats = cap.kernel_stats()
    for kind in kinds:
        assert [p.payload for p in got if p.payload.startswith(kind.encode())] == [
            b"%s %d" % (kind.encode(), i) for i in range(count)], kind
    assert {(p.src_ip, p.src_port, p.dst_port) for p in got} == {(lab.ns_ip, 40000, port)}
    assert len(got) == len(lines) and stats.decoder.skipped == {}
