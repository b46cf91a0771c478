"""CaptureReader.blocks(): the same payloads, times and counts as the record-by-record
reader (CaptureReader.datagrams), whatever the format (pcap, pcapng), byte order, time
resolution, link type, damage or block size."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

import sidecar.media.pcap as pcap_module
from sidecar.media.frames import udp4_fields
from sidecar.media.pcap import CaptureReader, read_capture
from tests.media.packets import sll
from tests.replay.capture_gen import build, write_pcap

RECORDS = build(seed=3, calls=4)


def from_blocks(reader: CaptureReader) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for block in reader.blocks():
        for i in range(block.n):
            if block.fast[i]:
                out.append((float(block.ts[i]), block.key(i), block.payload(i)))
                assert int(block.ts_ms[i]) == int(float(block.ts[i]) * 1000)
            else:
                out.append(tuple(block.slow[i]))
    return out


def assert_same(path: Path) -> None:
    blocks_reader, one_by_one = read_capture(path), read_capture(path)
    expected = [tuple(p) for p in one_by_one.datagrams()]
    assert from_blocks(blocks_reader) == expected
    assert blocks_reader.stats == one_by_one.stats


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
@pytest.mark.parametrize("block_bytes", [64, 5000, 8 << 20])
def test_blocks_give_what_records_give(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       order: str, nano: bool, block_bytes: int) -> None:
    monkeypatch.setattr(pcap_module, "BLOCK_BYTES", block_bytes)
    path = tmp_path / "c.pcap"
    write_pcap(path, RECORDS, order=order, nano=nano)
    assert_same(path)


def test_other_link_type_goes_through_the_frame_decoder(tmp_path: Path) -> None:
    path = tmp_path / "sll.pcap"
    write_pcap(path, [(ts, sll(frame[14:])) for ts, frame in RECORDS if len(frame) > 14],
               linktype=113)
    assert_same(path)
    assert not any(block.fast.any() for block in read_capture(path).blocks())


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.999])
def test_file_cut_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           keep: float) -> None:
    monkeypatch.setattr(pcap_module, "BLOCK_BYTES", 3000)
    whole = tmp_path / "c.pcap"
    write_pcap(whole, RECORDS)
    data = whole.read_bytes()
    for cut in range(int(len(data) * keep), int(len(data) * keep) + 20):
        path = tmp_path / "cut.pcap"
        path.write_bytes(data[:cut])
        assert_same(path)


def test_corrupt_length_and_records_bigger_than_a_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcap_module, "BLOCK_BYTES", 100)  # most records are bigger
    path = tmp_path / "c.pcap"
    write_pcap(path, RECORDS[:300])
    head = path.read_bytes()
    path.write_bytes(head + b"\0" * 8 + (1 << 28).to_bytes(4, "little") * 2 + b"\0" * 64)
    assert_same(path)
    reader = read_capture(path)
    list(reader.blocks())
    assert reader.stats.skipped.get("corrupt_record") == 1


def test_garbage_capture_counts_its_garbage(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    write_pcap(path, RECORDS)
    reader = read_capture(path)
    items = sum(block.n for block in reader.blocks())
    assert reader.stats.skipped and reader.stats.datagrams_reassembled
    assert reader.stats.packets_read > items == reader.stats.payloads_yielded


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "pcaps")
                                         .rglob("*.pcapng")), ids=lambda p: p.name)
def test_lab_pcapng_blocks(path: Path) -> None:
    assert_same_payloads(path)


@pytest.mark.parametrize("seed", range(6))
def test_random_short_and_garbled_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         seed: int) -> None:
    """Frames of every length from 0 up, many of them Ethernet/IPv4/UDP headers with
    garbled lengths, flags or protocol, at the end of a block or not."""
    import random

    rnd = random.Random(seed)
    monkeypatch.setattr(pcap_module, "BLOCK_BYTES", rnd.choice([50, 333, 4096]))
    good = [frame for _, frame in RECORDS[:200] if len(frame) > 42]
    records = []
    for i in range(400):
        frame = bytearray(rnd.choice(good))
        roll = rnd.random()
        if roll < 0.3:
            frame = frame[: rnd.randrange(0, 60)]
        elif roll < 0.6:
            for _ in range(rnd.randrange(1, 4)):
                frame[rnd.randrange(12, 42)] = rnd.randrange(256)
        elif roll < 0.7:
            frame = bytearray(rnd.randbytes(rnd.randrange(0, 120)))
        records.append((1_700_000_000 + i * 0.01, bytes(frame)))
    path = tmp_path / "g.pcap"
    write_pcap(path, records)
    assert_same(path)


# --- pcapng ------------------------------------------------------------------------------


def _ng_block(order: str, kind: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(order + "II", kind, 12 + len(body)) + body + struct.pack(
        order + "I", 12 + len(body))


def _ng_section(order: str) -> bytes:
    return _ng_block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def _ng_interface(order: str, linktype: int, tsresol: int | None = None,
                  tsoffset: int | None = None) -> bytes:
    options = b""
    if tsresol is not None:
        options += struct.pack(order + "HH", 9, 1) + bytes([tsresol]) + b"\0" * 3
    if tsoffset is not None:
        options += struct.pack(order + "HHq", 14, 8, tsoffset)
    if options:
        options += struct.pack(order + "HH", 0, 0)
    return _ng_block(order, 1, struct.pack(order + "HHI", linktype, 0, 65535) + options)


def _ng_packet(order: str, interface: int, ticks: int, frame: bytes,
               caplen: int | None = None) -> bytes:
    return _ng_block(order, 6, struct.pack(
        order + "IIIII", interface, ticks >> 32, ticks & 0xFFFFFFFF,
        len(frame) if caplen is None else caplen, len(frame)) + frame)


def _pcapng_file() -> bytes:
    """Two sections (little-endian, then big-endian), interfaces of their own link type,
    resolution and offset (one described half way), Enhanced Packet Blocks of all of
    them, of no interface and with bad lengths, Simple and obsolete Packet Blocks, and a
    block of an unknown type."""
    out = [_ng_section("<"), _ng_interface("<", 1),
           _ng_interface("<", 113, tsresol=9)]
    for i, (ts, frame) in enumerate(RECORDS):
        out.append(_ng_packet("<", 0, int(ts * 1e6), frame))
        if i % 97 == 5:
            out.append(_ng_packet("<", 1, int(ts * 1e9), sll(frame[14:])))
        if i % 151 == 7:
            out.append(_ng_packet("<", 7, int(ts * 1e6), frame))  # no such interface
            out.append(_ng_packet("<", 0, int(ts * 1e6), frame, caplen=len(frame) + 64))
            out.append(_ng_block("<", 6, b"\0" * 12))  # too short for its fields
        if i == len(RECORDS) // 3:
            frame_simple = frame
            out.append(_ng_block("<", 3, struct.pack("<I", len(frame_simple)) + frame))
            out.append(_ng_block("<", 0x0BAD, b"\0" * 8))
            out.append(_ng_block("<", 2, struct.pack(
                "<HHIIII", 0, 0, int(ts * 1e6) >> 32, int(ts * 1e6) & 0xFFFFFFFF, len(frame),
                len(frame)) + frame))
            out.append(_ng_interface("<", 1, tsresol=0x83, tsoffset=-5))
        if i > len(RECORDS) // 3 and i % 5 == 0:
            out.append(_ng_packet("<", 2, int((ts + 5) * 8), frame))  # 1/8 s ticks
    out += [_ng_section(">"), _ng_interface(">", 1, tsoffset=2)]
    out += [_ng_packet(">", 0, int(ts * 1e6), frame) for ts, frame in RECORDS[:300]]
    return b"".join(out)


def assert_same_payloads(path: Path) -> None:
    """Blocks against one-by-one payloads (pcapng's are all CapturedPayload)."""
    blocks_reader, one_by_one = read_capture(path), read_capture(path)
    got: list[tuple[Any, ...]] = []
    for block in blocks_reader.blocks():
        for i in range(block.n):
            if block.fast[i]:
                got.append((float(block.ts[i]), *udp4_fields(block.key(i)), "udp",
                            block.payload(i)))
            else:
                got.append(tuple(block.slow[i]))
    assert got == [tuple(p) for p in one_by_one]
    assert blocks_reader.stats == one_by_one.stats


@pytest.mark.parametrize("block_bytes", [64, 3000, 8 << 20])
def test_pcapng_blocks_give_what_blocks_one_by_one_give(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int) -> None:
    monkeypatch.setattr(pcap_module, "BLOCK_BYTES", block_bytes)
    path = tmp_path / "c.pcapng"
    path.write_bytes(_pcapng_file())
    assert_same_payloads(path)
    reader = read_capture(path)
    assert sum(block.fast.sum() for block in reader.blocks()) > len(RECORDS) // 2
    assert set(reader.stats.skipped) >= {"corrupt_record", "unknown_interface"}


@pytest.mark.parametrize("keep", [0.02, 0.5, 0.98])
def test_pcapng_cut_anywhere_or_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        keep: float) -> None:
    monkeypatch.setattr(pcap_module, "BLOCK_BYTES", 2000)
    data = _pcapng_file()
    path = tmp_path / "cut.pcapng"
    for cut in range(int(len(data) * keep), int(len(data) * keep) + 9):
        path.write_bytes(data[:cut])
        assert_same_payloads(path)
        for junk in (struct.pack("<II", 6, 3), struct.pack("<II", 0x0A0D0D0A, 28) + b"bad!"):
            path.write_bytes(data[:cut] + junk + b"\0" * 40)
            assert_same_payloads(path)
