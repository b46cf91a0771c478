"""RTP header parsing: fields, CSRCs, extension, padding, RTCP and junk rejection."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.media.rtp import RtpHeader, is_rtcp, parse_rtp

from .packets import rtp


def test_plain_header() -> None:
    packet = rtp(b"\xd5" * 160, payload_type=8, sequence=513, timestamp=160, ssrc=0xDEADBEEF)
    header = parse_rtp(packet)
    assert header == RtpHeader(8, False, 513, 160, 0xDEADBEEF, 12, 172)
    assert header is not None and header.payload_length == 160


def test_sipp_first_packet() -> None:
    # First packet of /usr/share/sip-tester/g711a.pcap: marker set, PCMA.
    packet = bytes.fromhex("8088e6fd000000f0dee0ee8f") + b"\xd5" * 240
    header = parse_rtp(packet)
    assert header is not None
    assert (header.payload_type, header.marker, header.sequence) == (8, True, 0xE6FD)
    assert (header.timestamp, header.ssrc) == (240, 0xDEE0EE8F)
    assert packet[header.payload_offset : header.payload_end] == b"\xd5" * 240


def test_csrcs_extension_and_padding_are_skipped() -> None:
    payload = bytes(range(40))
    packet = rtp(payload, csrcs=[1, 2, 3], extension=b"\x10\x20\x30\x40" * 2, padding=4)
    header = parse_rtp(packet)
    assert header is not None
    assert header.payload_offset == 12 + 3 * 4 + 4 + 8
    assert packet[header.payload_offset : header.payload_end] == payload


def test_marker_and_dynamic_payload_type() -> None:
    header = parse_rtp(rtp(b"\x00" * 4, payload_type=101, marker=True))
    assert header is not None and header.payload_type == 101 and header.marker


def test_empty_payload_is_rtp() -> None:
    header = parse_rtp(rtp(b""))
    assert header is not None and header.payload_length == 0


@pytest.mark.parametrize("packet_type", [200, 201, 202, 203, 204, 205, 206, 207])
def test_rtcp_is_rejected(packet_type: int) -> None:
    # Receiver Report with one report block, as a real endpoint sends on rtcp-mux.
    packet = struct.pack("!BBHI", 0x81, packet_type, 7, 0x1234) + b"\0" * 24
    assert parse_rtp(packet) is None
    assert is_rtcp(packet)


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x80\x08\x00",  # shorter than the fixed header
        b"INVITE sip:bob@example.com SIP/2.0\r\n",  # SIP: version bits 01
        b"SIP/2.0 200 OK\r\n\r\n",
        b"\r\n\r\n",  # SIP keep-alive
        bytes.fromhex("0001002c2112a442") + b"\0" * 12,  # STUN binding request
        bytes.fromhex("16fefd") + b"\0" * 20,  # DTLS handshake
        bytes.fromhex("40080001") + b"\0" * 20,  # RTP version 1
        rtp(b"", csrcs=[1, 2])[:16],  # CSRC list cut short
        bytes.fromhex("90080001000000000000000000010005"),  # extension runs past the end
        rtp(b"abc", padding=4)[:-1] + b"\x00",  # padding count 0
        rtp(b"abc", padding=4)[:-1] + b"\x40",  # padding longer than the packet
    ],
)
def test_non_rtp_is_rejected(packet: bytes) -> None:
    assert parse_rtp(packet) is None


def test_is_rtcp_is_false_for_rtp() -> None:
    assert not is_rtcp(rtp(b"\xd5" * 160))
    assert not is_rtcp(b"\x81\xc8")


@given(st.binary(max_size=64))
def test_never_raises_and_bounds_are_sane(data: bytes) -> None:
    header = parse_rtp(data)
    if header is not None:
        assert 12 <= header.payload_offset <= header.payload_end <= len(data)
        assert 0 <= header.payload_type <= 127
        assert not is_rtcp(data)


@given(
    payload=st.binary(max_size=300),
    payload_type=st.integers(0, 127).filter(lambda pt: not 64 <= pt <= 95),
    marker=st.booleans(),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    extension_words=st.none() | st.integers(0, 4),
    padding=st.integers(0, 255),
)
def test_built_packets_parse_back(
    payload: bytes,
    payload_type: int,
    marker: bool,
    sequence: int,
    timestamp: int,
    ssrc: int,
    csrcs: list[int],
    extension_words: int | None,
    padding: int,
) -> None:
    extension = None if extension_words is None else b"\xab" * (4 * extension_words)
    packet = rtp(
        payload,
        payload_type=payload_type,
        marker=marker,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        csrcs=csrcs,
        extension=extension,
        padding=padding,
    )
    header = parse_rtp(packet)
    assert header is not None
    assert (header.payload_type, header.marker, header.sequence) == (payload_type, marker, sequence)
    assert (header.timestamp, header.ssrc) == (timestamp, ssrc)
    assert packet[header.payload_offset : header.payload_end] == payload
