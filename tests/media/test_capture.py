"""Live capture (sidecar.media.capture) with real traffic: loopback, a veth pair into a
network namespace, and a tun device.

Everything except the filter compiler needs root (AF_PACKET, namespaces). Traffic goes
only to 127.0.0.1 / ::1, to the namespaces these tests create, or into a tun device no
route points at; counts are bounded and so are waits.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from sidecar.media import capture
from sidecar.media.capture import (
    DLT_RAW,
    CaptureError,
    LiveCapture,
    Mechanism,
    compile_filter,
    interface_towards,
    port_filter,
)
from sidecar.media.frames import LINKTYPE_ETHERNET, LINKTYPE_RAW
from sidecar.media.pcap import CapturedPayload
from tests.media import packets

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root")
MECHANISMS: tuple[Mechanism, ...] = ("ring", "recv")


def collect(cap: LiveCapture, expected: int, timeout: float = 5.0) -> list[CapturedPayload]:
    """Read until ``expected`` payloads arrived (or ``timeout``), then once more after the
    ring's block timeout has surely passed, so extra packets would show up too."""
    got: list[CapturedPayload] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        select.select([cap], [], [], 0.05)
        got += cap.read()
    time.sleep(0.1)
    got += cap.read()
    return got


def udp_port(family: socket.AddressFamily, host: str) -> tuple[socket.socket, int]:
    """A bound UDP socket (so datagrams to it are delivered, not answered by ICMP)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock, sock.getsockname()[1]


# ----------------------------------------------------------------- filters (no root)


def test_compile_filter_gives_the_program_tcpdump_prints() -> None:
    program = compile_filter("udp and dst port 5004", linktype=LINKTYPE_ETHERNET, snaplen=2048)
    assert program and len(program) % 8 == 0
    tcpdump = shutil.which("tcpdump")
    assert tcpdump is not None, "tcpdump missing: apt-get install tcpdump (scripts/setup does)"
    # tcpdump -ddd prints the count, then "code jt jf k" per instruction, in decimal.
    lines = subprocess.run(
        [tcpdump, "-y", "EN10MB", "-s", "2048", "-ddd", "udp and dst port 5004"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    count = int(lines[0])
    expected = b"".join(
        struct.pack("=HBBI", *map(int, line.split())) for line in lines[1 : 1 + count]
    )
    assert program == expected


def test_bad_filter_raises_naming_the_expression() -> None:
    with pytest.raises(CaptureError) as excinfo:
        compile_filter("udp and dst port", linktype=LINKTYPE_ETHERNET, snaplen=2048)
    message = str(excinfo.value)
    assert "'udp and dst port'" in message
    assert "syntax error" in message  # libpcap's own words


def test_raw_ip_link_type_compiles_differently_from_ethernet() -> None:
    ethernet = compile_filter("udp", linktype=LINKTYPE_ETHERNET, snaplen=256)
    raw = compile_filter("udp", linktype=DLT_RAW, snaplen=256)
    assert raw != ethernet
    assert compile_filter("udp", linktype=LINKTYPE_RAW, snaplen=256) == raw


def test_port_filter_sorts_deduplicates_and_falls_back_to_a_range() -> None:
    assert port_filter([4002, 4000, 4002]) == "udp and (dst port 4000 or dst port 4002)"
    assert port_filter(range(4000, 4010), max_ports=5) == "udp and dst portrange 4000-4009"
    assert port_filter([]) == "less 1"
    with pytest.raises(ValueError):
        port_filter([0])
    assert port_filter(range(10000, 10128, 2)).count("dst port") == 64
    assert port_filter(range(10000, 10130, 2)) == "udp and dst portrange 10000-10128"
    for expression in (port_filter(range(10000, 10128, 2)), port_filter([]), port_filter([1])):
        compile_filter(expression, linktype=LINKTYPE_ETHERNET, snaplen=2048)


def test_too_long_a_program_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A program past the kernel's 4,096 instructions takes libpcap minutes to optimize:
    # lower the limit instead (31 instructions for 16 ports).
    monkeypatch.setattr(capture, "_BPF_MAXINSNS", 20)
    with pytest.raises(CaptureError, match="port range"):
        compile_filter(port_filter(range(4000, 4016)), linktype=LINKTYPE_ETHERNET, snaplen=2048)


def test_interface_towards_loopback() -> None:
    assert interface_towards("127.0.0.1") == "lo"
    assert interface_towards("127.9.9.9") == "lo"
    assert interface_towards("::1") == "lo"
    with pytest.raises(ValueError):
        interface_towards("not-an-address")


# ----------------------------------------------------------------- loopback


@needs_root
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_loopback_each_packet_once_and_only_the_filtered_port(mechanism: Mechanism) -> None:
    receiver, port = udp_port(socket.AF_INET, "127.0.0.1")
    other, other_port = udp_port(socket.AF_INET, "127.0.0.1")
    sent = 300
    with receiver, other, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind(("127.0.0.1", 0))
        sender_port = sender.getsockname()[1]
        with LiveCapture("lo", filter=port_filter([port]), mechanism=mechanism) as cap:
            assert cap.loopback and cap.linktype == LINKTYPE_ETHERNET
            before = time.time()
            for i in range(sent):
                sender.sendto(b"in %d" % i, ("127.0.0.1", port))
                if i % 3 == 0:
                    sender.sendto(b"out %d" % i, ("127.0.0.1", other_port))
            after = time.time()
            got = collect(cap, sent)
            read = time.time()
            stats = cap.kernel_stats()
    assert [p.payload for p in got] == [b"in %d" % i for i in range(sent)]
    assert {(p.src_ip, p.src_port, p.dst_ip, p.dst_port, p.transport) for p in got} == {
        ("127.0.0.1", sender_port, "127.0.0.1", port, "udp")
    }
    timestamps = [p.timestamp for p in got]
    assert before - 0.01 <= min(timestamps) and max(timestamps) <= read + 0.01
    if mechanism == "ring":
        # The ring stamps every packet on arrival. recvmsg may stamp the first few at read
        # time: the kernel turns receive timestamps on lazily, from a work queue.
        assert timestamps[-1] <= after + 0.01
        assert timestamps == sorted(timestamps)
    # The outgoing copies and the other port never reach the socket, not even as counts.
    assert (stats.received, stats.dropped) == (sent, 0)
    assert stats.decoder.packets_read == sent and stats.decoder.payloads_yielded == sent
    assert stats.drop_fraction == 0.0


@needs_root
def test_loopback_ipv6() -> None:
    receiver, port = udp_port(socket.AF_INET6, "::1")
    with (
        receiver,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender,
        LiveCapture(interface_towards("::1"), filter=port_filter([port])) as cap,
    ):
        for i in range(50):
            sender.sendto(b"v6 %d" % i, ("::1", port))
        got = collect(cap, 50)
    assert len(got) == 50
    assert {(p.src_ip, p.dst_ip, p.dst_port) for p in got} == {("::1", "::1", port)}


@needs_root
def test_kernel_stats_accumulate_across_reads() -> None:
    receiver, port = udp_port(socket.AF_INET, "127.0.0.1")
    with (
        receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
        LiveCapture("lo", filter=port_filter([port])) as cap,
    ):
        for round_ in (1, 2):
            for _ in range(40):
                sender.sendto(b"x", ("127.0.0.1", port))
            assert len(collect(cap, 40)) == 40
            # PACKET_STATISTICS resets on every read: the totals must still grow.
            assert cap.kernel_stats().received == 40 * round_


@needs_root
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_set_filter_swaps_the_kernel_filter(mechanism: Mechanism) -> None:
    first, port_a = udp_port(socket.AF_INET, "127.0.0.1")
    second, port_b = udp_port(socket.AF_INET, "127.0.0.1")
    with (
        first,
        second,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
        LiveCapture("lo", filter=port_filter([port_a]), mechanism=mechanism) as cap,
    ):
        for _ in range(20):
            sender.sendto(b"a", ("127.0.0.1", port_a))
            sender.sendto(b"b", ("127.0.0.1", port_b))
        assert {p.dst_port for p in collect(cap, 20)} == {port_a}
        cap.set_filter(port_filter([port_b]))
        with pytest.raises(CaptureError, match="dst port nonsense"):
            cap.set_filter("udp and dst port nonsense")  # the old filter stays
        for _ in range(20):
            sender.sendto(b"a", ("127.0.0.1", port_a))
            sender.sendto(b"b", ("127.0.0.1", port_b))
        got = collect(cap, 20)
        assert cap.filter == port_filter([port_b])
    assert len(got) == 20 and {p.dst_port for p in got} == {port_b}


@needs_root
def test_nothing_is_read_when_nothing_matches() -> None:
    receiver, port = udp_port(socket.AF_INET, "127.0.0.1")
    with (
        receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
        LiveCapture("lo", filter=port_filter([])) as cap,
    ):
        for _ in range(20):
            sender.sendto(b"x", ("127.0.0.1", port))
        time.sleep(0.1)
        assert cap.read() == []
        assert select.select([cap], [], [], 0)[0] == []
        assert cap.kernel_stats().received == 0


@needs_root
def test_read_respects_max_packets_and_resumes_mid_block() -> None:
    receiver, port = udp_port(socket.AF_INET, "127.0.0.1")
    with (
        receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
        LiveCapture("lo", filter=port_filter([port])) as cap,
    ):
        for i in range(100):
            sender.sendto(b"%d" % i, ("127.0.0.1", port))
        time.sleep(0.1)
        chunks = [cap.read(max_packets=7) for _ in range(20)]
    assert all(len(chunk) <= 7 for chunk in chunks)
    assert [p.payload for chunk in chunks for p in chunk] == [b"%d" % i for i in range(100)]


@needs_root
def test_keyed_reads_give_the_wire_addressing_of_ipv4_and_decode_the_rest() -> None:
    """The live media path reads UDP/IPv4 datagrams as (ms, wire key, payload), without
    address text; anything else (IPv6 here) comes decoded, in capture order."""
    receiver, port = udp_port(socket.AF_INET, "127.0.0.1")
    receiver6, port6 = udp_port(socket.AF_INET6, "::1")
    with (
        receiver, receiver6,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender6,
        LiveCapture("lo", filter=port_filter([port, port6])) as cap,
    ):
        sender.bind(("127.0.0.1", 0))
        sender_port = sender.getsockname()[1]
        before_ms = int(time.time() * 1000)
        for i in range(50):
            sender.sendto(b"v4 %d" % i, ("127.0.0.1", port))
            if i % 10 == 0:
                sender6.sendto(b"v6 %d" % i, ("::1", port6))
        time.sleep(0.1)
        got: list[object] = []
        for _ in range(20):
            got += cap.read_keyed(max_packets=7)
        after_ms = int(time.time() * 1000)
    key = (socket.inet_aton("127.0.0.1") * 2 + struct.pack("!HH", sender_port, port))
    keyed = [g for g in got if not isinstance(g, CapturedPayload)]
    decoded = [g for g in got if isinstance(g, CapturedPayload)]
    assert [payload for _, _, payload in keyed] == [b"v4 %d" % i for i in range(50)]
    assert {k for _, k, _ in keyed} == {key}
    assert all(before_ms - 10 <= ms <= after_ms for ms, _, _ in keyed)
    assert [(p.dst_ip, p.dst_port, p.payload) for p in decoded] == [
        ("::1", port6, b"v6 %d" % i) for i in range(0, 50, 10)]
    order = [g[2] if not isinstance(g, CapturedPayload) else g.payload for g in got]
    assert order.index(b"v6 10") > order.index(b"v4 10") > order.index(b"v6 0")


@needs_root
def test_setup_errors_are_clear() -> None:
    with pytest.raises(CaptureError, match="no such network interface"):
        LiveCapture("nosuchif0", filter="udp")
    with pytest.raises(CaptureError, match="'udp and port'"):
        LiveCapture("lo", filter="udp and port")
    with pytest.raises(ValueError):
        LiveCapture("lo", filter="udp", mechanism="poll")  # type: ignore[arg-type]


# ----------------------------------------------------------------- veth + namespace

SENDER = """
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40000))
for i in range(count):
    s.sendto(b"ns %d" % i, (host, port))
"""


@pytest.fixture
def veth_namespace() -> Iterator[object]:
    if os.geteuid() != 0:
        pytest.skip("namespaces need root")
    from sidecar.lab.netns import VethNamespace

    with VethNamespace.create("capt") as lab:
        yield lab


@needs_root
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_veth_sees_received_and_sent_packets_once(
    veth_namespace: object, mechanism: Mechanism
) -> None:
    from sidecar.lab.netns import VethNamespace

    lab = veth_namespace
    assert isinstance(lab, VethNamespace)
    interface = interface_towards(lab.ns_ip)
    assert interface == lab.host_if
    receiver, port = udp_port(socket.AF_INET, lab.host_ip)
    inbound, outbound = 120, 80
    with (
        receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
        LiveCapture(interface, filter=port_filter([port, 40000]), mechanism=mechanism) as cap,
    ):
        assert not cap.loopback
        lab.run(
            [sys.executable, "-c", SENDER, lab.host_ip, str(port), str(inbound)],
            check=True,
            timeout=30,
        )
        for i in range(outbound):
            sender.sendto(b"host %d" % i, (lab.ns_ip, 40000))
        got = collect(cap, inbound + outbound)
        stats = cap.kernel_stats()
    received = [p for p in got if p.dst_ip == lab.host_ip]
    sent = [p for p in got if p.dst_ip == lab.ns_ip]
    assert [p.payload for p in received] == [b"ns %d" % i for i in range(inbound)]
    assert {(p.src_ip, p.src_port, p.dst_port) for p in received} == {(lab.ns_ip, 40000, port)}
    # Outgoing packets on a real interface are the host's own media: kept, once each.
    assert [p.payload for p in sent] == [b"host %d" % i for i in range(outbound)]
    assert {(p.src_ip, p.dst_port) for p in sent} == {(lab.host_ip, 40000)}
    assert len(got) == inbound + outbound
    assert stats.received == inbound + outbound and stats.dropped == 0


@needs_root
def test_namespace_is_removed_on_close() -> None:
    from pyroute2 import netns

    from sidecar.lab.netns import VethNamespace

    with VethNamespace.create("capt") as lab:
        assert lab.ns_name in netns.listnetns()
        assert os.path.exists(f"/sys/class/net/{lab.host_if}")
        assert lab.command("true") == ["ip", "netns", "exec", lab.ns_name, "true"]
    assert lab.ns_name not in netns.listnetns()
    assert not os.path.exists(f"/sys/class/net/{lab.host_if}")


# ----------------------------------------------------------------- tun (raw IP)

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


@pytest.fixture
def tun() -> Iterator[tuple[str, int]]:
    """A tun device (ARPHRD_NONE, no link header), up, with no address and no route:
    what is written to its descriptor arrives on it as received IP packets, and the
    stack then drops them (nothing local, no forwarding to anywhere)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun")
    from pyroute2 import IPRoute

    name = f"capt{os.getpid():x}t"
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        yield name, fd
    finally:
        os.close(fd)  # a non-persistent tun disappears with its last descriptor


@needs_root
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_tun_raw_ip_and_fragment_reassembly(tun: tuple[str, int], mechanism: Mechanism) -> None:
    name, fd = tun
    udp_proto = 17
    with LiveCapture(name, filter="udp", mechanism=mechanism) as cap:
        assert cap.linktype == LINKTYPE_RAW and not cap.loopback
        for i in range(30):
            datagram = packets.udp(5000, 6000, b"tun %d" % i)
            os.write(fd, packets.ipv4("10.213.254.2", "10.213.254.1", udp_proto, datagram))
        os.write(fd, packets.ipv4("10.213.254.2", "10.213.254.1", 1, b"\x08\0\0\0icmp"))
        # One datagram in two fragments: the decoder reassembles it, as from a file.
        whole = packets.udp(5000, 6000, bytes(range(200)))
        for offset, more in ((0, True), (104, False)):
            os.write(
                fd,
                packets.ipv4(
                    "10.213.254.2",
                    "10.213.254.1",
                    udp_proto,
                    whole[offset : offset + 104] if more else whole[offset:],
                    ident=77,
                    more_fragments=more,
                    fragment_offset=offset,
                ),
            )
        got = collect(cap, 31)
        stats = cap.kernel_stats()
    assert [p.payload for p in got[:30]] == [b"tun %d" % i for i in range(30)]
    assert got[30].payload == bytes(range(200))
    assert len(got) == 31
    assert {(p.src_ip, p.src_port, p.dst_ip, p.dst_port) for p in got} == {
        ("10.213.254.2", 5000, "10.213.254.1", 6000)
    }
    assert stats.received == 32  # the ICMP packet was filtered out in the kernel
    assert stats.decoder.datagrams_reassembled == 1
