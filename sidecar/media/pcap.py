"""Capture reader: every UDP and TCP payload in a pcap or pcapng file.

This is an edge (it reads files); the frame decoding it relies on, :class:`FrameDecoder`
in :mod:`sidecar.media.frames`, is sans-IO so a live AF_PACKET capture can feed it the
same frames. The decoder's names are re-exported here.

What is read
    * pcap (micro- and nanosecond, either byte order, and the "modified" variant) and
      pcapng (any number of sections and interfaces, per-interface link type,
      ``if_tsresol`` and ``if_tsoffset``), chosen by the file's magic number.
    * Every link type and encapsulation :mod:`sidecar.media.frames` decodes: Ethernet,
      Linux SLL and SLL2, raw IP, loopback, PPP; VLAN tags and QinQ, PPPoE, MPLS, GRE
      and ERSPAN, VXLAN, Geneve, IP in IP; IPv4 options, IPv6 extension headers and
      fragment reassembly; dpkt as the fallback for the rest.
    * UDP payloads, and TCP segments that carry data (no stream reassembly).

Why records are not read with ``dpkt.pcap.Reader``
    Measured here: iterating ``dpkt.pcap.Reader`` alone runs at about 0.8 M records/s,
    against 2.7 M/s for two ``read`` calls and one ``struct`` unpack per record. dpkt's
    readers also trust the record length (a corrupt ``caplen`` of 4 GB becomes a 4 GB
    read), return ``Decimal`` timestamps for nanosecond files, and its pcapng reader
    applies the first interface's link type and timestamp resolution to every packet.
    dpkt is used for what it does well and is not on the per-packet path: decoding
    pcapng interface options, and frames the decoder's own code does not know.

Bad input
    Nothing in a capture raises. A frame that cannot be decoded is counted in
    :attr:`CaptureStats.skipped` under a reason (the ``SKIP_*`` constants) and skipped.
    A file cut mid-record ends the iteration with ``truncated_file`` set. Only a missing,
    unreadable or non-capture file raises :class:`CaptureError`, naming the file.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Final, NamedTuple, cast

import dpkt

from .frames import (
    _ADDRESS_CACHE_LIMIT,
    _ETH_IPV4_UDP_END,
    _ETHERTYPE_IPV4,
    _PROTO_UDP,
    _UDP_TUNNEL_MAX,
    _UDP_TUNNEL_PORTS,
    LINKTYPE_ETHERNET,
    SKIP_CORRUPT_RECORD,
    SKIP_TRUNCATED_RECORD,
    SKIP_UNKNOWN_INTERFACE,
    CapturedPayload,
    CaptureStats,
    FrameDecoder,
    KeyedDatagram,
    PayloadFields,
    Transport,
    _unpack_eth_ipv4_udp_pair,
)

__all__ = [  # the frame decoder's names are in sidecar.media.frames
    "CaptureError",
    "CaptureReader",
    "CaptureStats",
    "CapturedPayload",
    "PayloadFields",
    "Transport",
    "read_capture",
]



class CaptureError(Exception):
    """A file that cannot be read as a capture at all (missing, unreadable, wrong format)."""


# Classic pcap magics (as read little-endian) -> (byte order, nanosecond, record header).
_PCAP_MAGICS: Final[dict[int, tuple[str, bool, int]]] = {
    0xA1B2C3D4: ("<", False, 16),
    0xD4C3B2A1: (">", False, 16),
    0xA1B23C4D: ("<", True, 16),
    0x4D3CB2A1: (">", True, 16),
    # "Modified" pcap (Alexey Kuznetsov's patches): 8 more bytes per record header.
    0xA1B2CD34: ("<", False, 24),
    0x34CDB2A1: (">", False, 24),
}
_PCAPNG_SHB: Final = 0x0A0D0D0A
_PCAPNG_BOM: Final = 0x1A2B3C4D
_PCAPNG_BOM_SWAPPED: Final = 0x4D3C2B1A  # a big-endian section, read little-endian
_PCAPNG_IDB: Final = 1
_PCAPNG_PB: Final = 2  # obsolete Packet Block, still written by old tools
_PCAPNG_SPB: Final = 3
_PCAPNG_EPB: Final = 6
_PCAPNG_PACKET_BLOCKS: Final = frozenset({_PCAPNG_PB, _PCAPNG_SPB, _PCAPNG_EPB})
# No sane record is bigger: libpcap's largest snapshot length is 256 KiB.
_MAX_RECORD: Final = 16 * 1024 * 1024
_MIN_SNAPLEN_LIMIT: Final = 262144
_READ_BUFFER: Final = 1 << 20


class _Interface(NamedTuple):
    linktype: int
    units_per_second: float
    offset_seconds: int
    snaplen: int


class CaptureReader:
    """Iterate over the UDP/TCP payloads of a pcap or pcapng file.

    The file is checked when the reader is made (so a wrong path fails early) and opened
    afresh by each iteration, which also resets :attr:`stats`. While iterating,
    :attr:`position` and :attr:`size` give progress in bytes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fragment_timeout: float = 30.0,
        max_pending_datagrams: int = 1024,
    ) -> None:
        self.path = os.fspath(path)
        self._fragment_timeout = fragment_timeout
        self._max_pending = max_pending_datagrams
        self.stats = CaptureStats()
        self._file: BinaryIO | None = None
        try:
            with open(self.path, "rb") as f:
                head = f.read(24)
                self.size = os.fstat(f.fileno()).st_size
        except OSError as e:
            raise CaptureError(f"{self.path}: cannot read capture: {e.strerror or e}") from e
        if not head:
            raise CaptureError(f"{self.path}: empty file, not a pcap or pcapng capture")
        if len(head) < 4:
            raise CaptureError(f"{self.path}: too short to be a pcap or pcapng capture")
        magic = struct.unpack_from("<I", head)[0]
        if magic == _PCAPNG_SHB:
            self.format = "pcapng"
            if len(head) < 12:
                raise CaptureError(f"{self.path}: pcapng section header is truncated")
            if struct.unpack_from("<I", head, 8)[0] not in (_PCAPNG_BOM, _PCAPNG_BOM_SWAPPED):
                raise CaptureError(f"{self.path}: pcapng section header has no byte-order magic")
        elif magic in _PCAP_MAGICS:
            self.format = "pcap"
            if len(head) < 24:
                raise CaptureError(f"{self.path}: pcap file header is truncated")
        else:
            raise CaptureError(
                f"{self.path}: not a pcap or pcapng capture (starts with {head[:4].hex()})"
            )

    @property
    def position(self) -> int:
        """Bytes read so far by the iteration in progress (``size`` when none is)."""
        f = self._file
        if f is None or f.closed:
            return self.size
        return f.tell()

    def __iter__(self) -> Iterator[CapturedPayload]:
        return cast(Iterator[CapturedPayload], self._iterate(CapturedPayload))

    def tuples(self) -> Iterator[PayloadFields]:
        """The same payloads as plain tuples in :class:`CapturedPayload`'s field order.

        For loops that unpack each payload at once (``sidecar replay``): building a plain
        tuple costs about half what a NamedTuple instance does, at up to 10^6 packets/s.
        Payloads decoded off the fast path may still come as :class:`CapturedPayload`.
        """
        return self._iterate(tuple)

    def datagrams(self) -> Iterator[PayloadFields | KeyedDatagram]:
        """The same payloads, for a loop that matches UDP/IPv4 datagrams by their raw
        addressing (``sidecar replay``): each datagram of the Ethernet/IPv4/UDP fast path
        as a :data:`~sidecar.media.frames.KeyedDatagram` ``(timestamp, key, payload)``,
        ``key`` the 12 bytes of its addresses and ports as on the wire
        (:func:`~sidecar.media.frames.udp4_fields` gives their text and numbers); every
        other payload as in :meth:`tuples` (7 fields). No address is turned into text
        unless the consumer asks: most packets of a capture are of a few known flows.
        """
        if self.format == "pcap":
            return self._iter_pcap(tuple, keyed=True)
        return self._iter_pcapng()

    def _iterate(self, kind: type[tuple[Any, ...]]) -> Iterator[PayloadFields]:
        # One generator per format, not one delegating to another: ``yield from`` costs
        # about 0.1 us per payload.
        if self.format == "pcap":
            return cast(Iterator[PayloadFields], self._iter_pcap(kind))
        return self._iter_pcapng()

    def _start(self) -> tuple[BinaryIO, FrameDecoder]:
        """Fresh stats and decoder, and the file opened (at the start of an iteration)."""
        self.stats = CaptureStats()
        decoder = FrameDecoder(
            self.stats,
            fragment_timeout=self._fragment_timeout,
            max_pending_datagrams=self._max_pending,
        )
        try:
            f = open(self.path, "rb", buffering=_READ_BUFFER)  # noqa: SIM115 (closed by caller)
        except OSError as e:
            raise CaptureError(f"{self.path}: cannot read capture: {e.strerror or e}") from e
        self._file = f
        return f, decoder

    def _iter_pcap(self, kind: type[tuple[Any, ...]], keyed: bool = False
                   ) -> Iterator[PayloadFields | KeyedDatagram]:
        f, decoder = self._start()
        stats = self.stats
        header = f.read(24)
        order, nano, record_size = _PCAP_MAGICS[struct.unpack_from("<I", header)[0]]
        snaplen, linktype = struct.unpack_from(order + "16xII", header)
        # The link type's upper bits may carry an FCS length (pcap "LinkType and
        # additional information"); the type itself is the low 16 bits.
        linktype &= 0xFFFF
        limit = min(max(snaplen, _MIN_SNAPLEN_LIMIT), _MAX_RECORD)
        unpack_record = struct.Struct(order + "III").unpack_from
        scale = 1e-9 if nano else 1e-6
        read = f.read
        decode_slow = decoder.decode_slow
        address = decoder.address
        pairs: dict[bytes, tuple[str, str]] = {}  # source + destination -> their text
        new = tuple.__new__
        ethernet = linktype == LINKTYPE_ETHERNET
        # Records are cut out of 1 MiB chunks with unpack_from at an offset rather than
        # read one by one: two read() calls per record cost more than the rest of the
        # fast path. Counters are kept in locals and added to ``stats`` at the end: records
        # read are the fast path's payloads plus ``others``.
        buf = b""
        size = pos = 0
        fast = others = 0
        try:
            while True:
                start = pos + record_size
                if start > size:
                    buf = buf[pos:] + read(_READ_BUFFER)
                    size, pos, start = len(buf), 0, record_size
                    if start > size:
                        if buf:
                            others += 1
                            stats.skip(SKIP_TRUNCATED_RECORD)
                            stats.truncated_file = True
                        break
                seconds, fraction, caplen = unpack_record(buf, pos)
                if caplen > limit:
                    # The length is garbage, so where the next record starts is unknown.
                    others += 1
                    stats.skip(SKIP_CORRUPT_RECORD)
                    break
                end = start + caplen
                if end > size:
                    buf = buf[pos:] + read(max(_READ_BUFFER, end - size))
                    size, pos, start, end = len(buf), 0, record_size, record_size + caplen
                    if end > size:
                        others += 1
                        stats.skip(SKIP_TRUNCATED_RECORD)
                        stats.truncated_file = True
                        break
                pos = end
                timestamp = seconds + fraction * scale
                # The Ethernet/IPv4/UDP fast path of FrameDecoder.decode, inlined: a method
                # call per packet is a measurable share of the per-packet budget.
                if ethernet and caplen >= _ETH_IPV4_UDP_END:
                    (ethertype, ver_ihl, total, flags_frag, proto, src_dst, sport, dport,
                     ulen) = _unpack_eth_ipv4_udp_pair(buf, start + 12)
                    if (
                        ethertype == _ETHERTYPE_IPV4
                        and ver_ihl == 0x45
                        and proto == _PROTO_UDP
                        and not flags_frag & 0x3FFF
                        and 8 <= ulen <= total - 20
                        and total + 14 <= caplen
                        and (dport > _UDP_TUNNEL_MAX or dport not in _UDP_TUNNEL_PORTS)
                    ):
                        if keyed:  # addresses and ports as on the wire: see datagrams()
                            fast += 1
                            yield (timestamp, buf[start + 26 : start + 38],
                                   buf[start + 42 : start + 34 + ulen])
                            continue
                        pair = pairs.get(src_dst)
                        if pair is None:
                            if len(pairs) >= _ADDRESS_CACHE_LIMIT:
                                pairs.clear()
                            pair = pairs[src_dst] = (address(src_dst[:4]), address(src_dst[4:]))
                        fast += 1
                        yield new(kind, (
                            timestamp,
                            pair[0],
                            sport,
                            pair[1],
                            dport,
                            "udp",
                            buf[start + 42 : start + 34 + ulen],
                        ))
                        continue
                others += 1
                result = decode_slow(timestamp, linktype, buf[start:end])
                if result is not None:
                    stats.payloads_yielded += 1
                    yield result
            decoder.finish()
        finally:
            stats.packets_read += fast + others
            stats.payloads_yielded += fast
            f.close()

    def _iter_pcapng(self) -> Iterator[PayloadFields]:
        f, decoder = self._start()
        try:
            yield from self._pcapng_payloads(f, decoder)
            decoder.finish()
        finally:
            f.close()

    def _pcapng_payloads(self, f: BinaryIO, decoder: FrameDecoder) -> Iterator[PayloadFields]:
        stats = self.stats
        read = f.read
        decode = decoder.decode
        structs = _PCAPNG_STRUCTS["<"]
        interfaces: list[_Interface] = []
        last_timestamp = 0.0
        while True:
            head = read(8)
            if len(head) < 8:
                if head:
                    stats.skip(SKIP_TRUNCATED_RECORD)
                    stats.truncated_file = True
                return
            # The SHB type reads the same in both byte orders; others use the section's.
            block_type, block_length = structs.head(head)
            body_offset = 0
            if block_type == _PCAPNG_SHB:
                # A new section may switch byte order; its interfaces start afresh.
                bom = read(4)
                magic = struct.unpack_from("<I", bom)[0] if len(bom) == 4 else None
                if magic is None:
                    stats.skip(SKIP_TRUNCATED_RECORD)
                    stats.truncated_file = True
                    return
                if magic not in (_PCAPNG_BOM, _PCAPNG_BOM_SWAPPED):
                    stats.skip(SKIP_CORRUPT_RECORD)
                    return
                structs = _PCAPNG_STRUCTS["<" if magic == _PCAPNG_BOM else ">"]
                block_length = structs.head(head)[1]
                interfaces = []
                body_offset = 4
            if block_length < 12 or block_length % 4 or block_length > _MAX_RECORD:
                stats.skip(SKIP_CORRUPT_RECORD)
                return
            # ``body`` is the block after its 8-byte type and length.
            body = read(block_length - 8 - body_offset)
            if len(body) < block_length - 8 - body_offset:
                if block_type in _PCAPNG_PACKET_BLOCKS:
                    stats.packets_read += 1
                stats.skip(SKIP_TRUNCATED_RECORD)
                stats.truncated_file = True
                return
            if block_type in (_PCAPNG_EPB, _PCAPNG_PB):
                stats.packets_read += 1
                if block_length < 32:
                    stats.skip(SKIP_CORRUPT_RECORD)
                    continue
                unpack = structs.epb if block_type == _PCAPNG_EPB else structs.pb
                interface_id, high, low, caplen = unpack(body)
                if caplen > block_length - 32:
                    stats.skip(SKIP_CORRUPT_RECORD)
                    continue
                if interface_id >= len(interfaces):
                    stats.skip(SKIP_UNKNOWN_INTERFACE)
                    continue
                interface = interfaces[interface_id]
                last_timestamp = (
                    (high << 32) | low
                ) / interface.units_per_second + interface.offset_seconds
                result = decode(last_timestamp, interface.linktype, body[20 : 20 + caplen])
            elif block_type == _PCAPNG_SPB:
                stats.packets_read += 1
                if not interfaces:
                    stats.skip(SKIP_UNKNOWN_INTERFACE)
                    continue
                interface = interfaces[0]
                # A Simple Packet Block has no timestamp: the previous packet's is the
                # best estimate, and keeps time monotonic for the consumer.
                caplen = min(structs.u32(body)[0], block_length - 16)
                if interface.snaplen:
                    caplen = min(caplen, interface.snaplen)
                result = decode(last_timestamp, interface.linktype, body[4 : 4 + caplen])
            else:
                if block_type == _PCAPNG_IDB:
                    interfaces.append(_parse_idb(head + body, structs.order))
                continue
            if result is not None:
                stats.payloads_yielded += 1
                yield result


class _PcapngStructs(NamedTuple):
    """Precompiled unpackers for one byte order (format strings cost a cache lookup)."""

    order: str
    head: Callable[[bytes], tuple[int, int]]  # block type, block length
    epb: Callable[[bytes], tuple[int, int, int, int]]  # interface, ts high, ts low, caplen
    pb: Callable[[bytes], tuple[int, int, int, int]]  # same fields, 16-bit interface id
    u32: Callable[[bytes], tuple[int]]


def _pcapng_structs(order: str) -> _PcapngStructs:
    return _PcapngStructs(
        order,
        struct.Struct(order + "II").unpack_from,
        struct.Struct(order + "IIII").unpack_from,
        struct.Struct(order + "H2xIII").unpack_from,
        struct.Struct(order + "I").unpack_from,
    )


_PCAPNG_STRUCTS: Final = {order: _pcapng_structs(order) for order in "<>"}


def _parse_idb(block: bytes, order: str) -> _Interface:
    """Link type, timestamp resolution and offset of a pcapng Interface Description Block."""
    if len(block) < 20:
        return _Interface(-1, 1e6, 0, 0)  # no room for a link type: its packets get skipped
    linktype, snaplen = struct.unpack_from(order + "H2xI", block, 8)
    units_per_second = 1e6  # pcapng default resolution: microseconds
    offset_seconds = 0
    try:
        idb = (
            dpkt.pcapng.InterfaceDescriptionBlockLE(block)
            if order == "<"
            else dpkt.pcapng.InterfaceDescriptionBlock(block)
        )
        for option in idb.opts:
            if option.code == dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL and len(option.data) >= 1:
                value = option.data[0]
                # High bit set: a negative power of 2; clear: a negative power of 10.
                units_per_second = float(2 ** (value & 0x7F) if value & 0x80 else 10**value)
            elif option.code == dpkt.pcapng.PCAPNG_OPT_IF_TSOFFSET and len(option.data) >= 8:
                offset_seconds = struct.unpack_from(order + "q", option.data)[0]
    except Exception:
        # dpkt on untrusted bytes may raise anything (a comment option that is not UTF-8
        # raises UnicodeDecodeError): keep the defaults rather than lose the interface.
        pass
    return _Interface(linktype, units_per_second, offset_seconds, snaplen)


def read_capture(
    path: str | os.PathLike[str],
    *,
    fragment_timeout: float = 30.0,
    max_pending_datagrams: int = 1024,
) -> CaptureReader:
    """Open a pcap or pcapng file for reading; iterate the result for payloads.

    Raises :class:`CaptureError` (naming the file) if it is missing, unreadable, or not a
    capture. Read ``reader.stats`` after the iteration for counts of skipped frames.
    """
    return CaptureReader(
        path, fragment_timeout=fragment_timeout, max_pending_datagrams=max_pending_datagrams
    )
