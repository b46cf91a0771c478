"""Frame decoder: link-layer frames to UDP and TCP payloads (sans-IO).

Shared by the capture file reader (:mod:`sidecar.media.pcap`) and the live AF_PACKET
capture (:mod:`sidecar.media.capture`), so both produce identical values.

What is decoded
    * Link types: Ethernet (1), Linux cooked SLL (113) and SLL2 (276), raw IP (101, 12,
      14, 228 IPv4, 229 IPv6), BSD loopback (0, 108), PPP (9, 50) and Cisco HDLC (104).
    * Inside them, in any nesting: 802.1Q / 802.1ad / 0x9100 VLAN tags (stacked: QinQ),
      PPPoE sessions (PPP IPv4 0x0021, IPv6 0x0057), MPLS label stacks (then IPv4 or
      IPv6 by the version nibble, or an Ethernet pseudowire with or without its control
      word), GRE (checksum, key and sequence fields; IPv4, IPv6, MPLS, transparent
      Ethernet bridging 0x6558, PPTP's enhanced GRE carrying PPP), ERSPAN type I, II
      (0x88be) and III (0x22eb) mirror sessions, VXLAN (UDP 4789 and Linux's 8472),
      Geneve (UDP 6081), IP in IP and IPv6 in IP.
    * IPv4 with or without options, and IPv6 with its extension headers walked
      (hop-by-hop, routing, destination options, mobility, HIP, shim6, AH); fragmented
      datagrams of either are reassembled, keyed by (src, dst, id, protocol), with a
      bound on pending datagrams and a timeout measured in capture time. A fragment that
      never finds its datagram is counted under a ``fragment_*`` reason.
    * UDP payloads, and TCP segments that carry data (no stream reassembly).

    At most :data:`MAX_ENCAPSULATION` headers are peeled from one frame (each VLAN tag,
    PPPoE header, MPLS label stack, GRE, VXLAN or Geneve header, IP-in-IP, and an
    Ethernet frame carried by GRE or MPLS counts once): a hostile capture cannot make
    the decoder loop, and more is counted as ``encapsulation_too_deep``.

The fast path and the fallback
    Plain Ethernet / IPv4 without options / UDP, most of any VoIP capture, is decoded by
    one ``struct`` unpack (and the file reader inlines the same test in its loop).
    Everything else takes :meth:`FrameDecoder.decode_slow`, this module's own decoder for
    the encapsulations above. Where it meets something it does not know (an unknown
    link type or EtherType, 802.3 LLC/SNAP framing, 802.11 and radiotap, GRE source
    routing, ...) the frame is handed to dpkt, a well-kept general packet library: if
    dpkt finds an IP header in it, decoding continues from there with this module's IP
    code (so reassembly, tunnels and the skip reasons stay the same), and the frame is
    counted in :attr:`CaptureStats.fallback_decoded`.

Bad input
    Nothing in a frame raises. A frame that cannot be decoded is counted in
    :attr:`CaptureStats.skipped` under a reason (the ``SKIP_*`` constants) and skipped.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

import dpkt

__all__ = [
    "LINKTYPE_C_HDLC",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_LOOP",
    "LINKTYPE_NULL",
    "LINKTYPE_PPP",
    "LINKTYPE_PPP_HDLC",
    "LINKTYPE_RAW",
    "MAX_ENCAPSULATION",
    "SKIP_BAD_IP_HEADER",
    "SKIP_BAD_TCP_HEADER",
    "SKIP_BAD_UDP_HEADER",
    "SKIP_CORRUPT_RECORD",
    "SKIP_ENCAPSULATION_TOO_DEEP",
    "SKIP_FRAGMENT_DUPLICATE",
    "SKIP_FRAGMENT_EVICTED",
    "SKIP_FRAGMENT_EXPIRED",
    "SKIP_FRAGMENT_INCOMPLETE",
    "SKIP_FRAGMENT_INVALID",
    "SKIP_NOT_IP",
    "SKIP_NOT_UDP_TCP",
    "SKIP_TCP_NO_PAYLOAD",
    "SKIP_TRUNCATED_FRAME",
    "SKIP_TRUNCATED_RECORD",
    "SKIP_UNKNOWN_INTERFACE",
    "SKIP_UNSUPPORTED_ENCAPSULATION",
    "SKIP_UNSUPPORTED_LINKTYPE",
    "CaptureStats",
    "CapturedPayload",
    "FrameDecoder",
    "KeyedDatagram",
    "PayloadFields",
    "Transport",
    "udp4_fields",
]

Transport = Literal["udp", "tcp"]

# Link types, as numbered in the tcpdump.org LINKTYPE registry.
LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_PPP: Final = 9
LINKTYPE_PPP_HDLC: Final = 50
LINKTYPE_RAW: Final = 101
LINKTYPE_C_HDLC: Final = 104
LINKTYPE_LOOP: Final = 108
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276
# DLT_RAW is 12 on most systems and 14 on OpenBSD; old files carry the DLT, not 101.
_RAW_IP_LINKTYPES: Final = frozenset({LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6})

#: Encapsulation headers peeled from one frame at most (see the module notes).
MAX_ENCAPSULATION: Final = 8

# Reasons a frame is skipped (keys of CaptureStats.skipped).
SKIP_TRUNCATED_RECORD: Final = "truncated_record"  # file ends inside a record
SKIP_CORRUPT_RECORD: Final = "corrupt_record"  # impossible record length; reading stops
SKIP_UNKNOWN_INTERFACE: Final = "unknown_interface"  # pcapng packet names no known IDB
SKIP_UNSUPPORTED_LINKTYPE: Final = "unsupported_linktype"  # neither decoder knows it
SKIP_UNSUPPORTED_ENCAPSULATION: Final = "unsupported_encapsulation"  # ditto, inside
SKIP_ENCAPSULATION_TOO_DEEP: Final = "encapsulation_too_deep"  # > MAX_ENCAPSULATION
SKIP_NOT_IP: Final = "not_ip"  # ARP, LLDP, PPP LCP, ... (not an error, just not ours)
SKIP_NOT_UDP_TCP: Final = "not_udp_tcp"  # ICMP, SCTP, ESP, ...
SKIP_TRUNCATED_FRAME: Final = "truncated_frame"  # headers or datagram cut (snaplen, garbage)
SKIP_BAD_IP_HEADER: Final = "bad_ip_header"
SKIP_BAD_UDP_HEADER: Final = "bad_udp_header"
SKIP_BAD_TCP_HEADER: Final = "bad_tcp_header"
SKIP_TCP_NO_PAYLOAD: Final = "tcp_no_payload"  # SYN, pure ACK, FIN: nothing to yield
SKIP_FRAGMENT_DUPLICATE: Final = "fragment_duplicate"  # same fragment seen again
SKIP_FRAGMENT_INVALID: Final = "fragment_invalid"  # overlaps, or beyond 64 KiB
SKIP_FRAGMENT_EXPIRED: Final = "fragment_expired"  # datagram not complete within timeout
SKIP_FRAGMENT_EVICTED: Final = "fragment_evicted"  # too many datagrams pending
SKIP_FRAGMENT_INCOMPLETE: Final = "fragment_incomplete"  # still incomplete at end of file

_ETHERTYPE_IPV4: Final = 0x0800
_ETHERTYPE_IPV6: Final = 0x86DD
# 802.1Q, 802.1ad (QinQ outer) and the pre-standard 0x9100 QinQ tag.
_ETHERTYPE_VLAN: Final = frozenset({0x8100, 0x88A8, 0x9100})
_ETHERTYPE_PPPOE_SESSION: Final = 0x8864
_ETHERTYPE_MPLS: Final = frozenset({0x8847, 0x8848})  # unicast, multicast
_ETHERTYPE_TEB: Final = 0x6558  # transparent Ethernet bridging (an Ethernet frame)
_ETHERTYPE_ERSPAN_2: Final = 0x88BE  # ERSPAN type I (no header) and II
_ETHERTYPE_ERSPAN_3: Final = 0x22EB
_ETHERTYPE_PPP: Final = 0x880B  # PPP in PPTP's GRE
# EtherTypes that never carry IP: counted as not_ip without asking dpkt. ARP, RARP,
# PPPoE discovery, LLDP, EAPOL, slow protocols (LACP), Ethernet flow control, PTP, CFM,
# MACsec, MRP, PROFINET, EtherCAT, FCoE and FIP, Wake-on-LAN, IEEE 1905, loopback test.
_ETHERTYPE_NOT_IP: Final = frozenset({
    0x0806, 0x8035, 0x8863, 0x88CC, 0x888E, 0x8809, 0x8808, 0x88F7, 0x8902, 0x88E5,
    0x88E3, 0x8892, 0x88A4, 0x8906, 0x8914, 0x0842, 0x893A, 0x9000,
})
_PPP_IPV4: Final = 0x0021
_PPP_IPV6: Final = 0x0057
_PPP_MPLS: Final = 0x0281
_PROTO_IPIP: Final = 4
_PROTO_TCP: Final = 6
_PROTO_UDP: Final = 17
_PROTO_IPV6: Final = 41
_PROTO_GRE: Final = 47
# IP protocols this decoder goes into; IPv6 extension headers are walked until one.
_IP_PAYLOADS: Final = frozenset({_PROTO_UDP, _PROTO_TCP, _PROTO_GRE, _PROTO_IPIP, _PROTO_IPV6})
_UDP_VXLAN: Final = frozenset({4789, 8472})  # IANA's port, and the Linux kernel default
_UDP_GENEVE: Final = 6081
# The fast path leaves UDP to these ports to the full decoder; every port <= this bound.
_UDP_TUNNEL_PORTS: Final = _UDP_VXLAN | {_UDP_GENEVE}
_UDP_TUNNEL_MAX: Final = max(_UDP_TUNNEL_PORTS)
# IPv6 extension headers that are walked (hop-by-hop, routing, destination options,
# mobility, HIP, shim6); fragment (44) and AH (51) have their own length rules.
_IPV6_EXT_GENERIC: Final = frozenset({0, 43, 60, 135, 139, 140})
_IPV6_FRAGMENT: Final = 44
_IPV6_AH: Final = 51
_MAX_DATAGRAM: Final = 65535 + 40  # IPv6 payload plus room for the fixed header
# 64 KiB in 1280-byte (IPv6 minimum MTU) fragments is 52; tiny fragments beyond this
# bound are an attack or a bug, and would make each arrival's overlap scan long.
_MAX_FRAGMENTS: Final = 64
_ARPHRD_NETLINK: Final = 824  # SLL/SLL2 of nlmon: netlink messages, never IP

# Fast path: Ethernet type + IPv4 header (no options) + UDP header, from byte 12.
_ETH_IPV4_UDP = struct.Struct("!HBxHxxHxBxx4s4sHHH")
_unpack_eth_ipv4_udp = _ETH_IPV4_UDP.unpack_from
# The same with source and destination addresses as one 8-byte key (the file reader
# caches their text per pair: one lookup per packet instead of two).
_unpack_eth_ipv4_udp_pair = struct.Struct("!HBxHxxHxBxx8sHHH").unpack_from
_ETH_IPV4_UDP_END: Final = 12 + _ETH_IPV4_UDP.size  # 42
_IPV4 = struct.Struct("!BxHHHxBxx4s4s")
_unpack_ipv4 = _IPV4.unpack_from
_IPV6 = struct.Struct("!4xHBx16s16s")
_unpack_ipv6 = _IPV6.unpack_from
_U16 = struct.Struct("!H")
_unpack_u16 = _U16.unpack_from
_U16_PAIR = struct.Struct("!HH")
_unpack_u16_pair = _U16_PAIR.unpack_from
_UDP = struct.Struct("!HHH")
_unpack_udp = _UDP.unpack_from
_TCP = struct.Struct("!HH8xB")
_unpack_tcp = _TCP.unpack_from
_IPV6_FRAG = struct.Struct("!BxHI")
_unpack_ipv6_frag = _IPV6_FRAG.unpack_from

_ADDRESS_CACHE_LIMIT: Final = 65536


#: :class:`CapturedPayload`'s fields as a plain tuple (see :meth:`CaptureReader.tuples`).
PayloadFields = tuple[float, str, int, str, int, Transport, bytes]
#: A UDP/IPv4 datagram as :meth:`CaptureReader.datagrams` gives the fast path's: capture
#: time, the 12 bytes of source address, destination address, source port and
#: destination port as on the wire (:func:`udp4_fields` reads them), and the payload.
KeyedDatagram = tuple[float, bytes, bytes]


class CapturedPayload(NamedTuple):
    """One UDP datagram or TCP segment payload, with its addressing and capture time."""

    timestamp: float  # seconds since the epoch, from the capture record
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    transport: Transport
    payload: bytes


@dataclass
class CaptureStats:
    """What a read (or a live decoder) did with the frames it was given.

    ``skipped`` counts frames by reason; fragment reasons count fragments. A frame that
    became part of a reassembled datagram is counted in ``fragments_reassembled``.
    ``fallback_decoded`` counts frames this module's decoder did not know, decoded
    from the IP packet dpkt found in them (see the module notes).
    """

    packets_read: int = 0
    payloads_yielded: int = 0
    datagrams_reassembled: int = 0
    fragments_reassembled: int = 0
    truncated_file: bool = False
    fallback_decoded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def packets_skipped(self) -> int:
        """Total over all skip reasons."""
        return sum(self.skipped.values())

    def skip(self, reason: str, count: int = 1) -> None:
        """Count ``count`` frames skipped for ``reason``."""
        self.skipped[reason] = self.skipped.get(reason, 0) + count



class _PendingDatagram:
    """Fragments of one datagram, until it completes, expires or is evicted."""

    __slots__ = ("first_seen", "fragments", "total_length")

    def __init__(self, first_seen: float) -> None:
        self.first_seen = first_seen
        self.fragments: dict[int, bytes] = {}  # fragment offset (bytes) -> data
        self.total_length: int | None = None  # known once the last fragment is seen


# (IP version, source address, destination address, identification, protocol)
_FragmentKey = tuple[int, bytes, bytes, int, int]


class _Reassembler:
    """IPv4/IPv6 fragment reassembly with bounded memory, timed by capture timestamps.

    Overlapping fragments invalidate the whole datagram (as RFC 5722 requires for IPv6,
    and as is safest for IPv4): guessing which copy is right invites evasion bugs.
    """

    def __init__(self, stats: CaptureStats, timeout: float, max_pending: int) -> None:
        self._stats = stats
        self._timeout = timeout
        self._max_pending = max_pending
        # Insertion order is first-seen order, so the oldest datagram is always first.
        self._pending: dict[_FragmentKey, _PendingDatagram] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(
        self, now: float, key: _FragmentKey, offset: int, more: bool, data: bytes
    ) -> bytes | None:
        """Add one fragment; return the whole datagram payload when it completes."""
        self.expire(now)
        stats = self._stats
        end = offset + len(data)
        if end > _MAX_DATAGRAM or (more and (len(data) == 0 or len(data) % 8)):
            # Every fragment but the last carries a non-empty multiple of 8 bytes.
            stats.skip(SKIP_FRAGMENT_INVALID)
            return None
        datagram = self._pending.get(key)
        if datagram is None:
            if len(self._pending) >= self._max_pending:
                oldest = next(iter(self._pending))
                stats.skip(SKIP_FRAGMENT_EVICTED, len(self._pending.pop(oldest).fragments))
            datagram = self._pending[key] = _PendingDatagram(now)
        fragments = datagram.fragments
        previous = fragments.get(offset)
        if previous is not None and previous == data:
            stats.skip(SKIP_FRAGMENT_DUPLICATE)
            return None
        total = datagram.total_length
        if len(fragments) >= _MAX_FRAGMENTS or (total is not None and end > total):
            self._drop(key, SKIP_FRAGMENT_INVALID, extra=1)
            return None
        # Overlap is checked on arrival, so an overlapping datagram is freed at once rather
        # than held until it expires; the scan is short because fragments are bounded.
        for other_offset, other in fragments.items():
            if other_offset < end and offset < other_offset + len(other):
                self._drop(key, SKIP_FRAGMENT_INVALID, extra=1)
                return None
        if not more:
            if total is not None or any(o + len(d) > end for o, d in fragments.items()):
                # A second "last" fragment, or data beyond the end this one sets.
                self._drop(key, SKIP_FRAGMENT_INVALID, extra=1)
                return None
            datagram.total_length = total = end
        fragments[offset] = data
        # Fragments lie in [0, total) without overlap, so they tile it exactly when their
        # sizes add up.
        if total is None or sum(map(len, fragments.values())) != total:
            return None
        pieces = [fragments[o] for o in sorted(fragments)]
        del self._pending[key]
        stats.datagrams_reassembled += 1
        stats.fragments_reassembled += len(pieces)
        return b"".join(pieces)

    def expire(self, now: float) -> None:
        """Drop datagrams whose first fragment is older than the timeout."""
        pending = self._pending
        while pending:
            key = next(iter(pending))
            if now - pending[key].first_seen <= self._timeout:
                return
            self._drop(key, SKIP_FRAGMENT_EXPIRED)

    def flush(self) -> None:
        """Count every fragment still waiting as incomplete and forget it."""
        for key in list(self._pending):
            self._drop(key, SKIP_FRAGMENT_INCOMPLETE)

    def _drop(self, key: _FragmentKey, reason: str, extra: int = 0) -> None:
        self._stats.skip(reason, len(self._pending.pop(key).fragments) + extra)


def _address_text(raw: bytes) -> str:
    # ipaddress gives the RFC 5952 compressed IPv6 form, the same as sdp.py produces,
    # so addresses from SDP and from packets compare as strings.
    return str(ipaddress.ip_address(raw))


_KEY_FIELDS: dict[bytes, tuple[str, int, str, int]] = {}


def udp4_fields(key: bytes) -> tuple[str, int, str, int]:
    """Source address, source port, destination address and destination port of the
    12-byte addressing of a :data:`KeyedDatagram` (cached: a capture has few flows)."""
    fields = _KEY_FIELDS.get(key)
    if fields is None:
        if len(key) != 12:
            raise ValueError(f"a UDP/IPv4 key is 12 bytes, got {len(key)}")
        if len(_KEY_FIELDS) >= _ADDRESS_CACHE_LIMIT:
            _KEY_FIELDS.clear()
        sport, dport = _unpack_u16_pair(key, 8)
        fields = _KEY_FIELDS[key] = (_address_text(key[:4]), sport, _address_text(key[4:8]),
                                     dport)
    return fields


def _udp_tunnel(packet: bytes, start: int, end: int, port: int) -> tuple[int, int] | None:
    """Where the frame a VXLAN or Geneve header at ``packet[start:end]`` carries starts,
    and its EtherType; ``None`` if the UDP payload is not such a header."""
    if start + 8 > end:
        return None
    flags = packet[start]
    if port == _UDP_GENEVE:
        # Version 0, options length (4-byte units), flags, protocol, VNI, reserved.
        if flags >> 6:
            return None
        return start + 8 + ((flags & 0x3F) << 2), _unpack_u16(packet, start + 2)[0]
    # VXLAN: flags with I set (and G, group policy, allowed), reserved, VNI, reserved.
    # RTP's first byte (0x80..0xbf) and text never pass.
    if flags & 0x77 or not flags & 0x08:
        return None
    return start + 8, _ETHERTYPE_TEB


# dpkt's decoder for each link type it is asked about (see FrameDecoder._fallback).
_DPKT_LINKTYPES: Final[dict[int, Any]] = {
    LINKTYPE_NULL: dpkt.loopback.Loopback,
    LINKTYPE_ETHERNET: dpkt.ethernet.Ethernet,
    LINKTYPE_PPP: dpkt.ppp.PPP,
    LINKTYPE_PPP_HDLC: dpkt.ppp.PPP,
    LINKTYPE_LOOP: dpkt.loopback.Loopback,
    105: dpkt.ieee80211.IEEE80211,
    LINKTYPE_LINUX_SLL: dpkt.sll.SLL,
    127: dpkt.radiotap.Radiotap,
    LINKTYPE_LINUX_SLL2: dpkt.sll2.SLL2,
}


class FrameDecoder:
    """Decode link-layer frames to :class:`CapturedPayload` (sans-IO; keeps fragment state).

    Feed frames in capture order with :meth:`decode`; call :meth:`finish` at the end so
    fragments that never completed are counted.
    """

    def __init__(
        self,
        stats: CaptureStats | None = None,
        *,
        fragment_timeout: float = 30.0,
        max_pending_datagrams: int = 1024,
    ) -> None:
        """``fragment_timeout`` in capture seconds (Linux's ipfrag_time default is 30)."""
        self.stats = stats if stats is not None else CaptureStats()
        self._reassembler = _Reassembler(self.stats, fragment_timeout, max_pending_datagrams)
        # Raw address bytes -> text; bounded, and cleared rather than LRU'd because a
        # capture's address set is small and a clear is cheaper than bookkeeping.
        self._addresses: dict[bytes, str] = {}
        # Set while a frame is being decoded when this decoder met something it does not
        # know: decode_slow then asks dpkt (see _unknown).
        self._unknown: str | None = None
        self._in_fallback = False

    @property
    def pending_fragmented_datagrams(self) -> int:
        """Datagrams with fragments held, waiting for the rest."""
        return self._reassembler.pending

    def address(self, raw: bytes) -> str:
        """Text form of a 4- or 16-byte address, cached."""
        text = self._addresses.get(raw)
        if text is None:
            if len(self._addresses) >= _ADDRESS_CACHE_LIMIT:
                self._addresses.clear()
            text = self._addresses[raw] = _address_text(raw)
        return text

    def decode(self, timestamp: float, linktype: int, frame: bytes) -> CapturedPayload | None:
        """Decode one frame; ``None`` if it carries no UDP/TCP payload (yet).

        ``None`` is also returned for a fragment held for reassembly; the datagram comes
        out of the call that completes it, with that fragment's timestamp.
        """
        if linktype == LINKTYPE_ETHERNET and len(frame) >= _ETH_IPV4_UDP_END:
            (ethertype, ver_ihl, total, flags_frag, proto, src, dst, sport, dport, ulen) = (
                _unpack_eth_ipv4_udp(frame, 12)
            )
            if (
                ethertype == _ETHERTYPE_IPV4
                and ver_ihl == 0x45
                and proto == _PROTO_UDP
                and not flags_frag & 0x3FFF
                and 8 <= ulen <= total - 20
                and total + 14 <= len(frame)
                and (dport > _UDP_TUNNEL_MAX or dport not in _UDP_TUNNEL_PORTS)
            ):
                addresses = self._addresses
                src_text = addresses.get(src) or self.address(src)
                dst_text = addresses.get(dst) or self.address(dst)
                return CapturedPayload(
                    timestamp, src_text, sport, dst_text, dport, "udp", frame[42 : 34 + ulen]
                )
        return self.decode_slow(timestamp, linktype, frame)

    def decode_slow(self, timestamp: float, linktype: int, frame: bytes) -> CapturedPayload | None:
        """:meth:`decode` without the Ethernet/IPv4/UDP shortcut (every other case)."""
        self._unknown = None
        result = self._link(timestamp, linktype, frame)
        reason = self._unknown
        if reason is None:
            return result
        # This decoder did not know a link type or header (and counted nothing): ask dpkt.
        self._unknown = None
        self._in_fallback = True
        try:
            return self._fallback(timestamp, linktype, frame, reason)
        finally:
            self._in_fallback = False

    def finish(self) -> None:
        """End of input: count fragments of datagrams that never completed."""
        self._reassembler.flush()

    # -- helpers

    def _skip(self, reason: str) -> None:
        self.stats.skip(reason)

    def _unsupported(self, reason: str = SKIP_UNSUPPORTED_ENCAPSULATION) -> None:
        """Something this decoder does not know: dpkt gets the frame (once)."""
        if self._in_fallback:
            self.stats.skip(reason)
        elif self._unknown is None:
            self._unknown = reason

    def _fallback(
        self, timestamp: float, linktype: int, frame: bytes, reason: str
    ) -> CapturedPayload | None:
        """dpkt decodes the frame; this decoder goes on from the innermost IP header."""
        kind = _DPKT_LINKTYPES.get(linktype)
        if kind is None and linktype in _RAW_IP_LINKTYPES:
            kind = dpkt.ip6.IP6 if frame[:1] and frame[0] >> 4 == 6 else dpkt.ip.IP
        header = None
        if kind is not None:
            try:
                layer = kind(frame)
                # dpkt nests one object per header; the last IP layer is the innermost.
                for _ in range(4 * MAX_ENCAPSULATION):
                    if isinstance(layer, (dpkt.ip.IP, dpkt.ip6.IP6)):
                        header = layer
                    inner = getattr(layer, "data", None)
                    if isinstance(layer, dpkt.ieee80211.IEEE80211) and isinstance(inner, bytes):
                        # dpkt leaves an 802.11 data frame's LLC/SNAP payload undecoded.
                        inner = dpkt.llc.LLC(inner)
                    layer = inner
                    if not isinstance(layer, dpkt.Packet):
                        break
                # dpkt keeps fields, not offsets: its IP header's fixed part, packed
                # again as it was read, is found in the frame.
                offset = frame.find(header.pack_hdr()) if header is not None else -1
            except Exception:  # dpkt on hostile bytes may raise anything
                offset = -1
            if offset >= 0:
                skipped = self.stats.packets_skipped
                if frame[offset] >> 4 == 4:
                    result = self._ipv4(timestamp, frame, offset, len(frame), 0)
                else:
                    result = self._ipv6(timestamp, frame, offset, len(frame), 0)
                if self.stats.packets_skipped == skipped:
                    self.stats.fallback_decoded += 1
                return result
        self.stats.skip(reason)
        return None

    # -- link layers

    def _link(self, timestamp: float, linktype: int, frame: bytes) -> CapturedPayload | None:
        size = len(frame)
        if linktype == LINKTYPE_ETHERNET:
            return self._ethernet(timestamp, frame, 0, size, 0)
        if linktype in _RAW_IP_LINKTYPES:
            return self._ip(timestamp, frame, 0, size, 0)
        if linktype in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2):
            # SLL, 16 bytes: packet type, ARPHRD, address length, 8-byte address,
            # protocol. SLL2, 20 bytes: protocol, reserved, ifindex, ARPHRD, packet type,
            # address length, 8-byte address.
            sll2 = linktype == LINKTYPE_LINUX_SLL2
            start = 20 if sll2 else 16
            if size < start:
                self._skip(SKIP_TRUNCATED_FRAME)
                return None
            protocol = _unpack_u16(frame, 0 if sll2 else 14)[0]
            if _unpack_u16(frame, 8 if sll2 else 2)[0] == _ARPHRD_NETLINK:
                self._skip(SKIP_NOT_IP)
                return None
            return self._ethertype(timestamp, frame, start, size, protocol, 0)
        if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            # A 4-byte address family whose byte order and values differ across systems;
            # the IP version nibble that follows is unambiguous.
            return self._ip(timestamp, frame, 4, size, 0)
        if linktype in (LINKTYPE_PPP, LINKTYPE_PPP_HDLC):
            return self._ppp(timestamp, frame, 0, size, 0)
        if linktype == LINKTYPE_C_HDLC:
            # Address, control, then an EtherType.
            if size < 4:
                self._skip(SKIP_TRUNCATED_FRAME)
                return None
            return self._ethertype(timestamp, frame, 4, size, _unpack_u16(frame, 2)[0], 0)
        self._unsupported(SKIP_UNSUPPORTED_LINKTYPE)
        return None

    def _ethernet(
        self, timestamp: float, frame: bytes, offset: int, end: int, depth: int
    ) -> CapturedPayload | None:
        """An Ethernet frame at ``frame[offset:end]``."""
        if offset + 14 > end:
            self._skip(SKIP_TRUNCATED_FRAME)
            return None
        return self._ethertype(
            timestamp, frame, offset + 14, end, _unpack_u16(frame, offset + 12)[0], depth
        )

    def _ethertype(
        self, timestamp: float, frame: bytes, offset: int, end: int, ethertype: int, depth: int
    ) -> CapturedPayload | None:
        """The payload of EtherType ``ethertype`` at ``frame[offset:end]``."""
        while True:
            if ethertype == _ETHERTYPE_IPV4:
                return self._ipv4(timestamp, frame, offset, end, depth)
            if ethertype == _ETHERTYPE_IPV6:
                return self._ipv6(timestamp, frame, offset, end, depth)
            if ethertype in _ETHERTYPE_NOT_IP:
                self._skip(SKIP_NOT_IP)
                return None
            depth += 1
            if depth > MAX_ENCAPSULATION:
                self._skip(SKIP_ENCAPSULATION_TOO_DEEP)
                return None
            if ethertype in _ETHERTYPE_VLAN:
                # Priority / DEI / VLAN id, then the next EtherType.
                if offset + 4 > end:
                    self._skip(SKIP_TRUNCATED_FRAME)
                    return None
                ethertype = _unpack_u16(frame, offset + 2)[0]
                offset += 4
                continue
            if ethertype == _ETHERTYPE_PPPOE_SESSION:
                return self._pppoe(timestamp, frame, offset, end, depth)
            if ethertype in _ETHERTYPE_MPLS:
                return self._mpls(timestamp, frame, offset, end, depth)
            if ethertype == _ETHERTYPE_TEB:
                return self._ethernet(timestamp, frame, offset, end, depth)
            if ethertype == _ETHERTYPE_PPP:
                return self._ppp(timestamp, frame, offset, end, depth)
            self._unsupported()
            return None

    def _pppoe(
        self, timestamp: float, frame: bytes, offset: int, end: int, depth: int
    ) -> CapturedPayload | None:
        """A PPPoE session header (version/type, code, session id, length), then PPP."""
        if offset + 8 > end:
            self._skip(SKIP_TRUNCATED_FRAME)
            return None
        if frame[offset] != 0x11 or frame[offset + 1] != 0:
            # Version 1, type 1, code 0 (session data) is the only session frame.
            self._unsupported()
            return None
        length = _unpack_u16(frame, offset + 4)[0]
        offset += 6
        if offset + length > end:
            self._skip(SKIP_TRUNCATED_FRAME)
            return None
        # The length drops the Ethernet padding of short frames.
        return self._ppp(timestamp, frame, offset, offset + length, depth)

    def _ppp(
        self, timestamp: float, frame: bytes, offset: int, end: int, depth: int
    ) -> CapturedPayload | None:
        """A PPP frame: optional HDLC address and control (ff 03), protocol, payload."""
        if offset + 2 <= end and frame[offset] == 0xFF and frame[offset + 1] == 0x03:
            offset += 2
        if offset + 1 > end:
            self._skip(SKIP_TRUNCATED_FRAME)
            return None
        if frame[offset] & 1:
            # Protocol field compression: an odd first byte is the whole protocol.
            protocol = frame[offset]
            offset += 1
        elif offset + 2 > end:
            self._skip(SKIP_TRUNCATED_FRAME)
            return None
        else:
            protocol = _unpack_u16(frame, offset)[0]
            offset += 2
        if protocol == _PPP_IPV4:
            return self._ipv4(timestamp, frame, offset, end, depth)
        if protocol == _PPP_IPV6:
            return self._ipv6(timestamp, frame, offset, end, depth)
        if protocol == _PPP_MPLS:
            return self._ethertype(timestamp, frame, offset, end, 0x8847, depth)
        if protocol >= 0x8000:
            # Network and link control (IPCP, LCP, PAP, CHAP, ...): not traffic.
            self._skip(SKIP_NOT_IP)
            return None
        self._unsupported()
        return None

    def _mpls(
        self, timestamp: float, frame: bytes, offset: int, end: int, depth: int
    ) -> CapturedPayload | None:
        """An MPLS label stack, then IPv4, IPv6 or an Ethernet pseudowire."""
        while True:
            if offset + 4 > end:
                self._skip(SKIP_TRUNCATED_FRAME)
                return None
            bottom = frame[offset + 2] & 1
            offset += 4
            if bottom:
                break
        if offset >= end:
            self._skip(SKIP_TRUNCATED_FRAME)
            return None
        # No protocol field: the first nibble tells IPv4 (4), IPv6 (6), a pseudowire
        # control word (0), or an associated channel (1: OAM, not traffic); anything else
        # is an Ethernet pseudowire without control word (a MAC address), as Wireshark
        # reads it.
        nibble = frame[offset] >> 4
        if nibble == 4:
            return self._ipv4(timestamp, frame, offset, end, depth)
        if nibble == 6:
            return self._ipv6(timestamp, frame, offset, end, depth)
        if nibble == 1:
            self._skip(SKIP_NOT_IP)
            return None
        if nibble == 0:
            offset += 4  # the control word: flags, fragment, length, sequence number
        return self._ethernet(timestamp, frame, offset, end, depth + 1)

    def _gre(
        self, timestamp: float, packet: bytes, start: int, end: int, depth: int
    ) -> CapturedPayload | None:
        """A GRE header (RFC 2784/2890, or PPTP's version 1) at ``packet[start:end]``."""
        depth += 1
        if depth > MAX_ENCAPSULATION:
            self._skip(SKIP_ENCAPSULATION_TOO_DEEP)
            return None
        if start + 4 > end:
            self._skip(SKIP_TRUNCATED_FRAME)
            return None
        flags, protocol = _unpack_u16_pair(packet, start)
        version = flags & 7
        sequenced = flags & 0x1000
        if version == 0 and not flags & 0x4000:
            # Checksum and reserved, key, sequence number: 4 bytes each when present.
            offset = start + 4 + (flags & 0x8000 and 4) + (flags & 0x2000 and 4) + (
                sequenced and 4
            )
        elif version == 1 and protocol == _ETHERTYPE_PPP:
            # Enhanced GRE (PPTP): payload length and call id, sequence, acknowledgment.
            offset = start + 8 + (sequenced and 4) + (flags & 0x0080 and 4)
        else:
            # Source routing (dpkt reads it), or an unknown version.
            self._unsupported()
            return None
        if offset > end:
            self._skip(SKIP_TRUNCATED_FRAME)
            return None
        if protocol == _ETHERTYPE_ERSPAN_2:
            # Type II has an 8-byte header (version 1) and a GRE sequence number; type I
            # has neither.
            if sequenced:
                if offset + 8 > end:
                    self._skip(SKIP_TRUNCATED_FRAME)
                    return None
                if packet[offset] >> 4 != 1:
                    self._unsupported()
                    return None
                offset += 8
            return self._ethernet(timestamp, packet, offset, end, depth)
        if protocol == _ETHERTYPE_ERSPAN_3:
            # 12 bytes (version 2), and an 8-byte platform subheader when O is set.
            if offset + 12 > end:
                self._skip(SKIP_TRUNCATED_FRAME)
                return None
            if packet[offset] >> 4 != 2:
                self._unsupported()
                return None
            offset += 20 if packet[offset + 11] & 1 else 12
            return self._ethernet(timestamp, packet, offset, end, depth)
        return self._ethertype(timestamp, packet, offset, end, protocol, depth)

    def _tunnelled(
        self, timestamp: float, packet: bytes, offset: int, end: int, protocol: int, depth: int
    ) -> CapturedPayload | None:
        """What a VXLAN or Geneve header announces at ``packet[offset:end]``."""
        depth += 1
        if depth > MAX_ENCAPSULATION:
            self._skip(SKIP_ENCAPSULATION_TOO_DEEP)
            return None
        if offset > end:
            self._skip(SKIP_TRUNCATED_FRAME)
            return None
        if protocol == _ETHERTYPE_TEB:
            return self._ethernet(timestamp, packet, offset, end, depth)
        return self._ethertype(timestamp, packet, offset, end, protocol, depth)

    # -- IP

    def _ip(
        self, timestamp: float, frame: bytes, offset: int, end: int, depth: int
    ) -> CapturedPayload | None:
        """IPv4 or IPv6 by the version nibble."""
        version = frame[offset] >> 4 if offset < end else 0
        if version == 4:
            return self._ipv4(timestamp, frame, offset, end, depth)
        if version == 6:
            return self._ipv6(timestamp, frame, offset, end, depth)
        self._skip(SKIP_NOT_IP)
        return None

    def _ipv4(
        self, timestamp: float, frame: bytes, offset: int, limit: int, depth: int
    ) -> CapturedPayload | None:
        """An IPv4 packet at ``frame[offset:]``, within ``frame[:limit]``."""
        stats = self.stats
        if offset + 20 > limit:
            stats.skip(SKIP_TRUNCATED_FRAME)
            return None
        ver_ihl, total, ident, flags_frag, proto, src, dst = _unpack_ipv4(frame, offset)
        header = (ver_ihl & 0x0F) << 2
        if ver_ihl >> 4 != 4 or header < 20:
            stats.skip(SKIP_BAD_IP_HEADER)
            return None
        if total == 0:
            # Captured on the sending host with segmentation offload: the length is filled
            # in later by the NIC, so the captured length is all there is to go by.
            total = limit - offset
        if total < header:
            stats.skip(SKIP_BAD_IP_HEADER)
            return None
        end = offset + total
        if end > limit:
            stats.skip(SKIP_TRUNCATED_FRAME)
            return None
        if proto not in _IP_PAYLOADS:
            stats.skip(SKIP_NOT_UDP_TCP)
            return None
        start = offset + header
        if flags_frag & 0x3FFF:
            data = self._reassembler.add(
                timestamp,
                (4, src, dst, ident, proto),
                (flags_frag & 0x1FFF) << 3,
                bool(flags_frag & 0x2000),
                frame[start:end],
            )
            if data is None:
                return None
            return self._transport(timestamp, proto, src, dst, data, 0, len(data), depth)
        return self._transport(timestamp, proto, src, dst, frame, start, end, depth)

    def _ipv6(
        self, timestamp: float, frame: bytes, offset: int, limit: int, depth: int
    ) -> CapturedPayload | None:
        """An IPv6 packet at ``frame[offset:]``, within ``frame[:limit]``."""
        stats = self.stats
        if offset + 40 > limit:
            stats.skip(SKIP_TRUNCATED_FRAME)
            return None
        payload_length, next_header, src, dst = _unpack_ipv6(frame, offset)
        if frame[offset] >> 4 != 6:
            stats.skip(SKIP_BAD_IP_HEADER)
            return None
        start = offset + 40
        # Zero payload length is a jumbogram (or offload); use what was captured.
        end = start + payload_length if payload_length else limit
        if end > limit:
            stats.skip(SKIP_TRUNCATED_FRAME)
            return None
        fragment: tuple[int, bool, int] | None = None
        while next_header not in _IP_PAYLOADS:
            if next_header in _IPV6_EXT_GENERIC or next_header == _IPV6_AH:
                if start + 8 > end:
                    stats.skip(SKIP_TRUNCATED_FRAME)
                    return None
                following, units = frame[start], frame[start + 1]
                # Generic headers count 8-byte units after the first 8; AH counts 4-byte
                # units minus 2.
                start += (units + 2) << 2 if next_header == _IPV6_AH else (units + 1) << 3
                next_header = following
            elif next_header == _IPV6_FRAGMENT and fragment is None:
                if start + 8 > end:
                    stats.skip(SKIP_TRUNCATED_FRAME)
                    return None
                following, offset_flags, ident = _unpack_ipv6_frag(frame, start)
                fragment = (offset_flags & 0xFFF8, bool(offset_flags & 1), ident)
                start += 8
                next_header = following
                if fragment[0] or fragment[1]:
                    # Headers after the fragment header belong to the fragmentable part:
                    # walk them once the datagram is whole.
                    break
                fragment = None  # an "atomic fragment": a whole datagram
            else:
                stats.skip(SKIP_NOT_UDP_TCP)
                return None
            if start > end:
                stats.skip(SKIP_TRUNCATED_FRAME)
                return None
        if fragment is not None:
            frag_offset, more, ident = fragment
            data = self._reassembler.add(
                timestamp, (6, src, dst, ident, next_header), frag_offset, more, frame[start:end]
            )
            if data is None:
                return None
            return self._ipv6_reassembled(timestamp, next_header, src, dst, data, depth)
        return self._transport(timestamp, next_header, src, dst, frame, start, end, depth)

    def _ipv6_reassembled(
        self, timestamp: float, next_header: int, src: bytes, dst: bytes, data: bytes,
        depth: int,
    ) -> CapturedPayload | None:
        start, end = 0, len(data)
        while next_header not in _IP_PAYLOADS:
            if next_header not in _IPV6_EXT_GENERIC or start + 8 > end:
                self.stats.skip(SKIP_NOT_UDP_TCP)
                return None
            next_header, start = data[start], start + ((data[start + 1] + 1) << 3)
        return self._transport(timestamp, next_header, src, dst, data, start, end, depth)

    def _transport(
        self,
        timestamp: float,
        proto: int,
        src: bytes,
        dst: bytes,
        packet: bytes,
        start: int,
        end: int,
        depth: int,
    ) -> CapturedPayload | None:
        """The IP payload of protocol ``proto`` at ``packet[start:end]``: UDP, TCP, or a
        tunnel."""
        stats = self.stats
        if proto == _PROTO_UDP:
            if start + 8 > end:
                stats.skip(SKIP_TRUNCATED_FRAME)
                return None
            sport, dport, length = _unpack_udp(packet, start)
            if length == 0:
                length = end - start  # IPv6 jumbogram, or offload on the sender
            if length < 8 or start + length > end:
                stats.skip(SKIP_BAD_UDP_HEADER)
                return None
            if dport in _UDP_TUNNEL_PORTS:
                inner = _udp_tunnel(packet, start + 8, start + length, dport)
                if inner is not None:
                    return self._tunnelled(
                        timestamp, packet, inner[0], start + length, inner[1], depth
                    )
            payload = packet[start + 8 : start + length]
            transport: Transport = "udp"
        elif proto == _PROTO_TCP:
            if start + 20 > end:
                stats.skip(SKIP_TRUNCATED_FRAME)
                return None
            sport, dport, data_offset = _unpack_tcp(packet, start)
            header = (data_offset >> 4) << 2
            if header < 20 or start + header > end:
                stats.skip(SKIP_BAD_TCP_HEADER)
                return None
            if start + header == end:
                stats.skip(SKIP_TCP_NO_PAYLOAD)
                return None
            payload = packet[start + header : end]
            transport = "tcp"
        elif proto == _PROTO_GRE:
            return self._gre(timestamp, packet, start, end, depth)
        else:  # IP in IP, IPv6 in IP
            depth += 1
            if depth > MAX_ENCAPSULATION:
                stats.skip(SKIP_ENCAPSULATION_TOO_DEEP)
                return None
            if proto == _PROTO_IPIP:
                return self._ipv4(timestamp, packet, start, end, depth)
            return self._ipv6(timestamp, packet, start, end, depth)
        return CapturedPayload(
            timestamp, self.address(src), sport, self.address(dst), dport, transport, payload
        )
