"""Live capture edge: a call's RTP from a network interface, as :class:`CapturedPayload`.

This is the live twin of :func:`sidecar.media.pcap.read_capture`: an ``AF_PACKET`` socket
with a kernel BPF filter hands frames to the same sans-IO :class:`FrameDecoder`, so live
operation and pcap replay produce identical values for the media supervisor. Linux only,
and it needs ``CAP_NET_RAW`` (root).

The socket
    Created with protocol 0 (receives nothing), then the compiled filter is attached,
    then it is bound to the interface with ``ETH_P_ALL``: no unfiltered packet can be
    queued in between (a drain before the bind makes sure of it). The filter comes from
    a tcpdump expression compiled by libpcap (:func:`compile_filter`, via ``ctypes`` on
    ``libpcap.so.0.8``); :func:`port_filter`
    writes the expression for a set of RTP ports, and :meth:`LiveCapture.set_filter`
    swaps it atomically as calls come and go (``SO_ATTACH_FILTER`` replaces the old one).

    Ethernet-framed interfaces (``ARPHRD_ETHER``: physical NICs, veth, bridges, VLANs,
    bonds, tap; ``ARPHRD_LOOPBACK``) use ``SOCK_RAW`` and link type Ethernet. Every other
    type (``ARPHRD_NONE`` tun and WireGuard, GRE, sit, ...) uses ``SOCK_DGRAM``, where
    the kernel strips any link header, and link type raw IP: one rule that works for all
    of them rather than a header parser per type.

VLAN trunks
    On receive the kernel moves a frame's outer 802.1Q or 802.1ad tag out of the frame
    into the packet's metadata (``skb_vlan_untag``; AF_PACKET reports it as auxdata,
    ``tp_vlan_tci`` in the ring), before the BPF filter runs and before the frame is
    copied to the socket: a tagged frame on a trunk reaches the filter and the decoder
    untagged and needs nothing more. A QinQ frame keeps its inner tag in the frame. The
    decoder walks any stack of tags; for the filter, :meth:`LiveCapture.set_filter`
    attaches, on Ethernet interfaces other than loopback, the expression and behind it
    the same expression compiled after ``vlan`` (the first program's rejections jump to
    the second), so frames that still carry a tag are matched past it. That is a second
    compile: 64 ports take about 35 ms instead of 10 (about 55 ms for libpcap's own
    ``A or (vlan and A)``). Other encapsulations (PPPoE, MPLS, GRE, VXLAN) are decoded
    when they reach the decoder, but a port filter does not pass them: capture them
    with a filter that names them, or in a file for ``sidecar replay``.

Loopback's double copies
    On ``lo`` the kernel shows a packet twice: once as it is sent (``PACKET_OUTGOING``)
    and once as it is received (``PACKET_HOST``). On loopback only, three instructions
    are put in front of the compiled program: load the ancillary packet type
    (``SKF_AD_OFF + SKF_AD_PKTTYPE``) and return 0 (drop) for ``PACKET_OUTGOING``. The
    copy is dropped in the kernel, before it costs a copy or a wake-up, and is not
    counted in the kernel statistics. On every other interface outgoing packets are the
    host's own media (the proxy's or a media relay's) and are kept.

Why a ``PACKET_MMAP`` ring (``TPACKET_V3``) and not ``recv`` per packet
    Both are implemented (``mechanism="ring"`` / ``"recv"``) and measured by
    ``benchmarks/bench_capture.py``: 1,000 simultaneous G.711 calls (both directions,
    20 ms, 172-byte UDP payloads, a port per leg) replayed by tcpreplay on ``lo`` for 10 s
    per rate on a 2-core machine (tcpreplay busy-waits on one core), every payload
    decoded and handed to a per-flow counter. Capture-process CPU per second and kernel
    drops, over two runs (the recv drops vary with other load on the machine):

    ========== ===================== ==================================
    offered    ring (TPACKET_V3)     recvmsg per packet
    ========== ===================== ==================================
    25 k/s     0.06 core, none       0.32-0.37 core, none
    50 k/s     0.13 core, none       0.53-0.55 core, none
    100 k/s    0.17-0.23 core, none  0.65-0.73 core, none
    150 k/s    0.30-0.37 core, none  0.67-0.90 core, 0-0.37 % dropped
    200 k/s    0.36-0.41 core, none  0.61-0.98 core, 0-40 % dropped
    ========== ===================== ==================================

    The ring costs no system call per packet: the kernel fills 256 KiB blocks in a
    shared mapping and hands a block over when it is full or ``block_timeout_ms`` old;
    Python walks its packets with one ``struct`` unpack each (about 2-2.5 µs per packet
    with decoding and the consumer, so about 400,000 packets/s per core), and the kernel
    timestamps (nanoseconds) come in the packet headers. ``recvmsg`` needs a system call,
    a wake-up and an ancillary-data parse per packet for the same timestamp: three to
    four times the CPU, a saturated core near 150,000 packets/s, and little left for the
    supervisor at the 100,000 packets/s target. The ring is the default. Its cost is
    latency: on a quiet interface a block is handed over only when its timeout expires
    (10 ms by default). tcpreplay itself tops out near 230,000 packets/s here, so the
    ring's own limit was not reached.

Using it
    ::

        cap = LiveCapture(interface_towards(media_peer), filter=port_filter(rtp_ports))
        loop.add_reader(cap.fileno(), lambda: supervisor.feed(cap.read()))
        ...
        cap.set_filter(port_filter(new_rtp_ports))  # as calls start and end

    :meth:`LiveCapture.set_filter` compiles with libpcap, whose optimizer is slow for long
    port lists (see :func:`port_filter`); ctypes releases the GIL during the compile, so
    a busy service can call it from an executor, and should not call it per packet.

What is not done here
    No RTP parsing and no flow table: that is the supervisor's job. Non-first IP
    fragments carry no UDP ports, so a port filter does not pass them; RTP is never
    fragmented in practice (a G.711 packet is 200 bytes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import mmap
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Final, Literal, Self

from sidecar.media import pcap
from sidecar.media.frames import (
    _ETH_IPV4_UDP_END,
    _ETHERTYPE_IPV4,
    _PROTO_UDP,
    _UDP_TUNNEL_MAX,
    _UDP_TUNNEL_PORTS,
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    FrameDecoder,
    _unpack_eth_ipv4_udp,
)
from sidecar.media.pcap import CapturedPayload, CaptureStats

__all__ = [
    "DLT_RAW",
    "CaptureError",
    "KernelStats",
    "LiveCapture",
    "Mechanism",
    "compile_filter",
    "interface_towards",
    "port_filter",
]

Mechanism = Literal["ring", "recv"]

#: libpcap's DLT for raw IP on Linux (the pcap file LINKTYPE_RAW is 101); pass either.
DLT_RAW: Final = 12

# Linux constants (include/uapi/linux/if_packet.h, if_ether.h, filter.h, asm/socket.h);
# the socket module lacks most of them.
_SOL_PACKET: Final = 263
_PACKET_RX_RING: Final = 5
_PACKET_STATISTICS: Final = 6
_PACKET_VERSION: Final = 10
_TPACKET_V3: Final = 2
_TP_STATUS_USER: Final = 1
_ETH_P_ALL: Final = 3
_SO_ATTACH_FILTER: Final = 26
_SO_RCVBUFFORCE: Final = 33
_SO_TIMESTAMPNS: Final = 35
_PACKET_OUTGOING: Final = 4
_SKF_AD_PKTTYPE_ADDRESS: Final = 0xFFFFF000 + 4  # SKF_AD_OFF (-0x1000) + SKF_AD_PKTTYPE
_BPF_MAXINSNS: Final = 4096  # the kernel refuses longer classic programs
_ARPHRD_ETHER: Final = 1
_ARPHRD_LOOPBACK: Final = 772
_ARPHRD_NONE: Final = 0xFFFE

# struct sock_filter / bpf_insn: u16 code, u8 jt, u8 jf, u32 k (native byte order).
_INSN = struct.Struct("=HBBI")
# Loopback prefix: A = pkttype; if A == PACKET_OUTGOING return 0; else fall through.
_DROP_OUTGOING: Final = b"".join(
    (
        _INSN.pack(0x20, 0, 0, _SKF_AD_PKTTYPE_ADDRESS),  # BPF_LD | BPF_W | BPF_ABS
        _INSN.pack(0x15, 0, 1, _PACKET_OUTGOING),  # BPF_JMP | BPF_JEQ | BPF_K
        _INSN.pack(0x06, 0, 0, 0),  # BPF_RET | BPF_K
    )
)

# struct tpacket_block_desc: block_status, num_pkts, offset_to_first_pkt at offset 8.
_BLOCK_HEAD = struct.Struct("=III")
_BLOCK_STATUS_OFFSET: Final = 8
_BLOCK_HEAD_END: Final = 48  # sizeof(struct tpacket_block_desc)
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, (tp_len, tp_status),
# tp_mac.
_PACKET_HEAD = struct.Struct("=IIII8xH")
_TPACKET3_HDRLEN: Final = 48 + 20  # TPACKET_ALIGN(sizeof(tpacket3_hdr)) + sockaddr_ll
_FRAME_SIZE: Final = 2048  # tp_frame_size: only validated for V3, must divide the block
# struct tpacket_req3: block size, block count, frame size, frame count, retire timeout
# (ms), private area size, feature word.
_REQ3 = struct.Struct("=IIIIIII")
_TIMESPEC = struct.Struct("=qq")
_STATS = struct.Struct("=III")  # tp_packets, tp_drops, tp_freeze_q_cnt (V3 only)

_PCAP_NETMASK_UNKNOWN: Final = 0xFFFFFFFF


class CaptureError(pcap.CaptureError):
    """A live capture cannot be set up: bad filter, unknown interface, no permission,
    no libpcap. Subclasses :class:`sidecar.media.pcap.CaptureError`, so one ``except``
    covers both capture edges."""


# --------------------------------------------------------------------------- libpcap


class _BpfProgram(ctypes.Structure):
    _fields_ = (("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p))


_libpcap: ctypes.CDLL | None = None
# pcap_compile was not thread-safe before libpcap 1.8, and loading is done once.
_libpcap_lock = threading.Lock()


def _load_libpcap() -> ctypes.CDLL:
    global _libpcap
    if _libpcap is not None:
        return _libpcap
    names = ["libpcap.so.0.8", "libpcap.so.1"]
    found = ctypes.util.find_library("pcap")
    if found:
        names.append(found)
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.pcap_open_dead.argtypes = (ctypes.c_int, ctypes.c_int)
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_compile.argtypes = (
            ctypes.c_void_p,
            ctypes.POINTER(_BpfProgram),
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint32,
        )
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_geterr.argtypes = (ctypes.c_void_p,)
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_freecode.argtypes = (ctypes.POINTER(_BpfProgram),)
        lib.pcap_freecode.restype = None
        lib.pcap_close.argtypes = (ctypes.c_void_p,)
        lib.pcap_close.restype = None
        _libpcap = lib
        return lib
    raise CaptureError(
        "libpcap not found (tried " + ", ".join(names) + "): install Debian's libpcap0.8"
    )


def compile_filter(expression: str, *, linktype: int, snaplen: int) -> bytes:
    """Compile a tcpdump filter expression to a classic BPF program, with libpcap.

    ``linktype`` is the libpcap DLT of the frames the filter will see: 1 (Ethernet) or
    :data:`DLT_RAW` (raw IP; the pcap-file number 101 is accepted too). Accepted packets
    are cut to ``snaplen`` bytes (the program's return value). Returns the instructions as
    ``struct sock_filter`` records in native byte order, ready for ``SO_ATTACH_FILTER``.
    A bad expression raises :class:`CaptureError` with libpcap's message, naming it.
    """
    if linktype == LINKTYPE_RAW:
        linktype = DLT_RAW
    if not 0 < snaplen <= 262144:
        raise CaptureError(f"snaplen {snaplen} is out of range (1..262144)")
    try:
        encoded = expression.encode("ascii")
    except UnicodeEncodeError:
        raise CaptureError(f"capture filter {expression!r}: not ASCII") from None
    with _libpcap_lock:
        lib = _load_libpcap()
        handle = lib.pcap_open_dead(linktype, snaplen)
        if not handle:
            raise CaptureError(f"libpcap refused link type {linktype}")
        try:
            program = _BpfProgram()
            if lib.pcap_compile(handle, ctypes.byref(program), encoded, 1, _PCAP_NETMASK_UNKNOWN):
                message = (lib.pcap_geterr(handle) or b"unknown error").decode(errors="replace")
                raise CaptureError(f"capture filter {expression!r}: {message}")
            try:
                code = ctypes.string_at(program.bf_insns, program.bf_len * _INSN.size)
            finally:
                lib.pcap_freecode(ctypes.byref(program))
        finally:
            lib.pcap_close(handle)
    if len(code) // _INSN.size > _BPF_MAXINSNS - len(_DROP_OUTGOING) // _INSN.size:
        # Leave room for the loopback prefix, so a filter that compiles always attaches.
        raise CaptureError(
            f"capture filter {expression[:80]!r}...: {len(code) // _INSN.size} BPF "
            f"instructions, more than the kernel accepts; use a port range"
        )
    return code


def _either(first: bytes, second: bytes) -> bytes:
    """One classic BPF program that accepts what either program accepts.

    Each of ``first``'s rejections (``ret #0``, the only way libpcap's programs reject)
    becomes a forward jump to the start of ``second``; its acceptances stay. Costs one
    more compile instead of libpcap optimizing ``A or (vlan and A)`` as one expression,
    which takes ten times as long for 64 ports.
    """
    count = len(first) // _INSN.size
    out = bytearray(first)
    for i in range(count):
        code, _jt, _jf, k = _INSN.unpack_from(first, i * _INSN.size)
        if code == 0x06 and k == 0:  # BPF_RET | BPF_K, 0
            _INSN.pack_into(out, i * _INSN.size, 0x05, 0, 0, count - i - 1)  # BPF_JMP | BPF_JA
    return bytes(out) + second


def port_filter(ports: Iterable[int], *, max_ports: int = 64) -> str:
    """A filter expression for UDP datagrams to any of ``ports``.

    ``"udp and (dst port 4000 or dst port 4002)"`` (sorted, without duplicates); past
    ``max_ports`` ports, ``"udp and dst portrange MIN-MAX"`` instead. The bound is set
    by libpcap's optimizer, whose time grows much faster than the port count (measured
    here: 64 ports 3 ms, 128 ports 25 ms, 256 ports 0.14 s, 512 ports 0.8 s, 3,000 ports
    minutes), and a filter is recompiled whenever calls come or go. An empty set gives
    ``"less 1"``, which matches no packet (libpcap refuses expressions it can prove
    reject everything, such as ``"udp and not udp"``).
    """
    unique = sorted(set(ports))
    for port in unique:
        if not 0 < port < 65536:
            raise ValueError(f"not a UDP port: {port}")
    if not unique:
        return "less 1"
    if len(unique) > max_ports:
        return f"udp and dst portrange {unique[0]}-{unique[-1]}"
    return "udp and (" + " or ".join(f"dst port {port}" for port in unique) + ")"


def interface_towards(ip: str) -> str:
    """The name of the interface the kernel routes ``ip`` through (``lo`` for 127.x, ::1
    and the host's own addresses), from a netlink route lookup.

    Raises :class:`CaptureError` when there is no route, ``ValueError`` for a bad address.
    """
    address = ipaddress.ip_address(ip)
    from pyroute2 import IPRoute  # imported here: only a live capture needs netlink
    from pyroute2.netlink.exceptions import NetlinkError

    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with IPRoute() as ipr:
            routes = ipr.route("get", dst=str(address), family=family)
    except NetlinkError as e:
        raise CaptureError(f"no route towards {address}: {e}") from e
    index = routes[0].get_attr("RTA_OIF") if routes else None
    if not index:
        raise CaptureError(f"no route towards {address}")
    return socket.if_indextoname(index)


# --------------------------------------------------------------------------- capture


@dataclass(frozen=True)
class KernelStats:
    """Cumulative counters of a :class:`LiveCapture` since it was opened.

    ``received`` counts packets that passed the filter, including the ``dropped`` ones
    the kernel had no room for (the socket buffer or ring was full); filtered-out
    packets, loopback's outgoing copies among them, are in neither. ``freezes`` counts
    the times the ring filled up (0 for ``recv``). ``decoder`` is a snapshot of the
    frame decoder's statistics (frames read, payloads, skips by reason).
    """

    received: int
    dropped: int
    freezes: int
    decoder: CaptureStats = field(default_factory=CaptureStats)

    @property
    def drop_fraction(self) -> float:
        """``dropped / received`` (0.0 when nothing was received)."""
        return self.dropped / self.received if self.received else 0.0


def _interface_type(interface: str) -> int:
    try:
        with open(f"/sys/class/net/{interface}/type", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError) as e:
        raise CaptureError(f"interface {interface!r}: cannot read its type: {e}") from e


class LiveCapture:
    """UDP/TCP payloads seen on one interface, through a kernel BPF filter.

    ``filter`` is a tcpdump expression (see :func:`port_filter`); ``snaplen`` bounds the
    bytes kept per packet. ``buffer_bytes`` is the ring size (``mechanism="ring"``, the
    default) or the socket receive buffer (``"recv"``, set with ``SO_RCVBUFFORCE`` so
    ``net.core.rmem_max`` does not cap it). The ring is split in blocks of
    ``block_bytes``; a partly filled block is handed over after ``block_timeout_ms``,
    which is the longest a packet waits on a quiet interface.

    Use :meth:`fileno` with a selector or ``loop.add_reader`` and call :meth:`read` when
    it is readable. Not thread-safe: one reader.
    """

    def __init__(
        self,
        interface: str,
        *,
        filter: str,  # the tcpdump word; keyword-only
        snaplen: int = 2048,
        buffer_bytes: int = 64 << 20,
        mechanism: Mechanism = "ring",
        block_bytes: int = 256 << 10,
        block_timeout_ms: int = 10,
        fragment_timeout: float = 30.0,
    ) -> None:
        if mechanism not in ("ring", "recv"):
            raise ValueError(f"mechanism must be 'ring' or 'recv', not {mechanism!r}")
        self.interface = interface
        self.mechanism: Mechanism = mechanism
        self.snaplen = snaplen
        try:
            socket.if_nametoindex(interface)
        except OSError:
            raise CaptureError(f"no such network interface: {interface!r}") from None
        arphrd = _interface_type(interface)
        #: Whether loopback's outgoing copies are dropped by the filter.
        self.loopback = arphrd == _ARPHRD_LOOPBACK
        ethernet = arphrd in (_ARPHRD_ETHER, _ARPHRD_LOOPBACK)
        #: Link type of the frames handed to the decoder (Ethernet, or raw IP).
        self.linktype = LINKTYPE_ETHERNET if ethernet else LINKTYPE_RAW
        self.filter = filter
        program = self._program(filter)  # a bad filter fails before any socket exists
        self.stats = CaptureStats()
        self._decoder = FrameDecoder(self.stats, fragment_timeout=fragment_timeout)
        self._received = 0
        self._dropped = 0
        self._freezes = 0
        self._ring: mmap.mmap | None = None
        self._block_bytes = block_bytes
        self._blocks = 0
        self._block = 0  # ring block to read next
        self._left = 0  # packets not yet read in the current block (0: block not open)
        self._offset = 0  # ring offset of the next packet in the current block
        kind = socket.SOCK_RAW if ethernet else socket.SOCK_DGRAM
        try:
            # Protocol 0: the socket receives nothing until bind() names a protocol.
            self._sock = socket.socket(socket.AF_PACKET, kind, 0)
        except PermissionError:
            raise CaptureError(
                f"capture on {interface}: permission denied (needs root or CAP_NET_RAW)"
            ) from None
        try:
            if mechanism == "ring":
                self._setup_ring(buffer_bytes, block_bytes, block_timeout_ms, snaplen)
            else:
                self._setup_recv(buffer_bytes)
            self._attach(program)
            self._sock.setblocking(False)
            self._drain_socket()
            self._sock.bind((interface, _ETH_P_ALL))
        except BaseException:
            self.close()
            raise

    # -- setup

    def _program(self, expression: str) -> bytes:
        linktype = LINKTYPE_ETHERNET if self.linktype == LINKTYPE_ETHERNET else DLT_RAW
        code = compile_filter(expression, linktype=linktype, snaplen=self.snaplen)
        if self.loopback:
            # The prefix's jumps are relative, so the program after it runs unchanged.
            return _DROP_OUTGOING + code
        if linktype == LINKTYPE_ETHERNET:
            # A frame that still carries a tag (QinQ's inner one, see the module notes)
            # gets a second chance: the same expression past the tag.
            try:
                tagged = compile_filter(
                    f"vlan and ({expression})", linktype=linktype, snaplen=self.snaplen
                )
            except CaptureError:
                return code  # an expression "vlan" cannot prefix: untagged frames only
            either = _either(code, tagged)
            if len(either) // _INSN.size <= _BPF_MAXINSNS:
                return either
        return code

    def _setup_ring(
        self, buffer_bytes: int, block_bytes: int, block_timeout_ms: int, snaplen: int
    ) -> None:
        page = mmap.PAGESIZE
        if block_bytes % page or block_bytes % _FRAME_SIZE:
            raise CaptureError(f"block_bytes {block_bytes} is not a multiple of {page}")
        if _BLOCK_HEAD_END + _TPACKET3_HDRLEN + 16 + snaplen > block_bytes:
            raise CaptureError(f"snaplen {snaplen} does not fit a {block_bytes}-byte block")
        blocks = max(buffer_bytes // block_bytes, 2)
        sock = self._sock
        sock.setsockopt(_SOL_PACKET, _PACKET_VERSION, _TPACKET_V3)
        request = _REQ3.pack(
            block_bytes,
            blocks,
            _FRAME_SIZE,
            block_bytes // _FRAME_SIZE * blocks,
            block_timeout_ms,
            0,
            0,
        )
        try:
            sock.setsockopt(_SOL_PACKET, _PACKET_RX_RING, request)
        except OSError as e:
            raise CaptureError(
                f"capture on {self.interface}: cannot set up a {blocks} x {block_bytes}-byte "
                f"ring: {e.strerror}"
            ) from e
        self._ring = mmap.mmap(sock.fileno(), blocks * block_bytes, mmap.MAP_SHARED)
        self._blocks = blocks

    def _setup_recv(self, buffer_bytes: int) -> None:
        sock = self._sock
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, buffer_bytes)
        except PermissionError:
            # Without CAP_NET_ADMIN the size is capped at net.core.rmem_max.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)

    def _attach(self, program: bytes) -> None:
        # struct sock_fprog {unsigned short len; struct sock_filter *filter;}: the kernel
        # copies the instructions during the call, so the buffer only has to outlive it.
        buffer = ctypes.create_string_buffer(program, len(program))
        fprog = struct.pack("@HP", len(program) // _INSN.size, ctypes.addressof(buffer))
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
        except OSError as e:
            raise CaptureError(
                f"capture on {self.interface}: kernel refused the filter: {e.strerror}"
            ) from e

    def _drain_socket(self) -> None:
        # Nothing can be queued yet (protocol 0 until bind), but a socket that had been
        # bound before must not hand over packets the filter never saw.
        if self._ring is not None:
            return
        while True:
            try:
                self._sock.recv(1)
            except (BlockingIOError, InterruptedError):
                return

    # -- public API

    def fileno(self) -> int:
        """The socket's descriptor, readable when packets are waiting."""
        return self._sock.fileno()

    def set_filter(self, expression: str) -> None:
        """Replace the kernel filter with ``expression``, atomically.

        A bad expression raises :class:`CaptureError` and leaves the old filter in place.
        Packets already queued passed the old filter and are still delivered.
        """
        self._attach(self._program(expression))
        self.filter = expression

    def read(self, max_packets: int = 8192) -> list[CapturedPayload]:
        """Decode up to ``max_packets`` queued frames without blocking; their payloads.

        Timestamps are the kernel's receive times (with ``recv``, the first packets after
        the socket opens may be stamped when read: the kernel switches receive
        timestamps on lazily). Frames that carry no UDP/TCP payload
        are counted in :attr:`stats` and left out, so the list may be shorter.
        """
        if self._ring is not None:
            return self._read_ring(max_packets)
        return self._read_recv(max_packets)

    def kernel_stats(self) -> KernelStats:
        """Cumulative kernel counters (``PACKET_STATISTICS`` resets on each read, so they
        are added up here) and a snapshot of the decoder's statistics."""
        raw = self._sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, _STATS.size)
        raw = raw.ljust(_STATS.size, b"\0")  # TPACKET_V1 sockets return 8 bytes
        packets, drops, freezes = _STATS.unpack(raw)
        self._received += packets
        self._dropped += drops
        self._freezes += freezes
        decoder = replace(self.stats, skipped=dict(self.stats.skipped))
        return KernelStats(self._received, self._dropped, self._freezes, decoder)

    def close(self) -> None:
        """Release the ring and the socket (idempotent)."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading

    def _read_ring(self, max_packets: int) -> list[CapturedPayload]:
        ring = self._ring
        assert ring is not None
        out: list[CapturedPayload] = []
        append = out.append
        decode = self._decoder.decode
        linktype = self.linktype
        unpack_packet = _PACKET_HEAD.unpack_from
        frames = 0
        while frames < max_packets:
            run = self._ring_run(max_packets - frames)
            if run is None:
                break  # the kernel still owns the next block: nothing more queued
            offset, take = run
            for _ in range(take):
                next_offset, seconds, nanoseconds, caplen, mac = unpack_packet(ring, offset)
                start = offset + mac
                result = decode(
                    seconds + nanoseconds * 1e-9, linktype, ring[start : start + caplen]
                )
                if result is not None:
                    append(result)
                offset += next_offset
            frames += take
            self._ring_done(take, offset)
        self.stats.packets_read += frames
        self.stats.payloads_yielded += len(out)
        return out

    def read_keyed(self, max_packets: int = 8192
                   ) -> list[tuple[int, bytes, bytes] | CapturedPayload]:
        """:meth:`read`, with the UDP/IPv4 datagrams of the Ethernet fast path given as
        ``(capture time in ms, wire key, payload)``: the 12 bytes of source and
        destination address and ports as on the wire (see
        ``MediaSupervisor.datagram_key``), no address text made; every other frame as
        :meth:`read` gives it, in order."""
        ring = self._ring
        if ring is None or self.linktype != LINKTYPE_ETHERNET:
            return list(self.read(max_packets))
        out: list[tuple[int, bytes, bytes] | CapturedPayload] = []
        append = out.append
        decode_slow = self._decoder.decode_slow
        linktype = self.linktype
        unpack_packet = _PACKET_HEAD.unpack_from
        unpack_udp = _unpack_eth_ipv4_udp
        frames = 0
        while frames < max_packets:
            run = self._ring_run(max_packets - frames)
            if run is None:
                break  # the kernel still owns the next block: nothing more queued
            offset, take = run
            for _ in range(take):
                next_offset, seconds, nanoseconds, caplen, mac = unpack_packet(ring, offset)
                start = offset + mac
                offset += next_offset
                if caplen >= _ETH_IPV4_UDP_END:
                    (ethertype, ver_ihl, total, flags_frag, proto, _src, _dst, _sport, dport,
                     ulen) = unpack_udp(ring, start + 12)
                    if (ethertype == _ETHERTYPE_IPV4 and ver_ihl == 0x45
                            and proto == _PROTO_UDP and not flags_frag & 0x3FFF
                            and 8 <= ulen <= total - 20 and total + 14 <= caplen
                            and (dport > _UDP_TUNNEL_MAX or dport not in _UDP_TUNNEL_PORTS)):
                        append((seconds * 1000 + nanoseconds // 1_000_000,
                                ring[start + 26 : start + 38],
                                ring[start + 42 : start + 34 + ulen]))
                        continue
                result = decode_slow(seconds + nanoseconds * 1e-9, linktype,
                                     ring[start : start + caplen])
                if result is not None:
                    append(result)
            frames += take
            self._ring_done(take, offset)
        self.stats.packets_read += frames
        self.stats.payloads_yielded += len(out)
        return out

    def _ring_run(self, room: int) -> tuple[int, int] | None:
        """Where the next frames to read are in the ring, and how many of them (at most
        ``room``, all in one block), opening the next block if need be; None while the
        kernel still owns it. :meth:`_ring_done` says how far reading got."""
        ring = self._ring
        assert ring is not None
        while not self._left:
            base = self._block * self._block_bytes
            status, count, first = _BLOCK_HEAD.unpack_from(ring, base + 8)
            if not status & _TP_STATUS_USER:
                return None
            if not count:
                self._release_block()
                continue
            self._left = count
            self._offset = base + first
        return self._offset, min(self._left, room)

    def _ring_done(self, frames: int, offset: int) -> None:
        """``frames`` frames of the run :meth:`_ring_run` gave were read, up to ``offset``:
        a block read to its end goes back to the kernel."""
        self._left -= frames
        self._offset = offset
        if not self._left:
            self._release_block()

    def _release_block(self) -> None:
        # Writing TP_STATUS_KERNEL (0) hands the block back; the kernel fills blocks in
        # order, so the next one to read is always the next in the ring.
        ring = self._ring
        assert ring is not None
        struct.pack_into("=I", ring, self._block * self._block_bytes + _BLOCK_STATUS_OFFSET, 0)
        self._block = (self._block + 1) % self._blocks
        self._left = 0

    def _read_recv(self, max_packets: int) -> list[CapturedPayload]:
        out: list[CapturedPayload] = []
        append = out.append
        decode = self._decoder.decode
        linktype = self.linktype
        recvmsg = self._sock.recvmsg
        snaplen = self.snaplen
        ancillary = socket.CMSG_SPACE(_TIMESPEC.size)
        unpack_timespec = _TIMESPEC.unpack_from
        frames = 0
        while frames < max_packets:
            try:
                frame, cmsgs, _flags, _address = recvmsg(snaplen, ancillary)
            except (BlockingIOError, InterruptedError):
                break
            frames += 1
            timestamp = None
            for level, kind, data in cmsgs:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                    seconds, nanoseconds = unpack_timespec(data)
                    timestamp = seconds + nanoseconds * 1e-9
            result = decode(time.time() if timestamp is None else timestamp, linktype, frame)
            if result is not None:
                append(result)
        self.stats.packets_read += frames
        self.stats.payloads_yielded += len(out)
        return out
