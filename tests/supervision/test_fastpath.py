"""The per-packet fast paths give exactly what the plain paths give.

* MediaSupervisor's flow cache: a packet is never attributed to a stale dialog (re-INVITE,
  port reuse, latching, dialog end), and random dialogs give the same verdicts, evidence
  and counters with the cache as without it.
* RingbackDetector skips blocks with no loud sample undecoded; SilenceDetector decides a
  20 ms packet from its high bytes when they settle it: same results as the full paths.
* CaptureReader reads records out of 1 MiB chunks and offers plain tuples (``tuples()``):
  same payloads and stats as the public iterator, across chunk boundaries and truncation.
"""

from __future__ import annotations

import random
import socket
import struct
from pathlib import Path
from typing import Any

import dpkt
import pytest

from sidecar.media.g711 import Codec, encode
from sidecar.media.pcap import CapturedPayload, read_capture
from sidecar.media.tones import RingbackDetector, SilenceDetector
from sidecar.replay.run import Replay
from sidecar.supervision.calls import CallControl, ControlConfig
from sidecar.supervision.flows import Party
from sidecar.supervision.media import MediaSupervisor

from ..charging.harness import Sim
from ..media.packets import ethernet, ipv4, udp
from .media_gen import packets, quiet, rtp, sdp, speech_like, tone

CALLER = ("127.0.0.1", 6000)
CALLEE = ("127.0.0.1", 7000)


class _NoCache(dict[Any, Any]):
    """A flow cache that never hits: the supervisor classifies every packet afresh."""

    def get(self, key: Any, default: Any = None) -> Any:
        return default


def uncached() -> MediaSupervisor:
    sup = MediaSupervisor()
    sup._flow_cache = _NoCache()  # the reference: no fast path
    return sup


def answered(sup: MediaSupervisor, ref: str, caller: tuple[str, int],
             callee: tuple[str, int], at: int = 0) -> None:
    sup.offer(ref, at, sdp(*caller, origin=f"{ref}-a 1 1"))
    sup.answer(ref, at + 100, sdp(*callee, origin=f"{ref}-b 2 1"))


def one(seq: int, ssrc: int = 5, payload: bytes = b"\xd5" * 160) -> bytes:
    return rtp(seq, seq * 160, ssrc, 8, payload)


def test_reinvite_drops_the_cached_flow_of_the_old_address() -> None:
    sup = MediaSupervisor()
    answered(sup, "c1", CALLER, CALLEE)
    assert sup.packet(200, CALLEE, CALLER, one(1)) == "c1"  # cached now
    moved = ("127.0.0.1", 6100)
    sup.update("c1", 300, "caller", sdp(*moved, origin="c1-a 1 2"))
    # The caller moved: the callee's packets to its old address are no longer ours...
    assert sup.packet(320, ("10.9.9.9", 1), CALLER, one(2)) is None
    # ... and those to the new address are the callee's.
    assert sup.packet(340, CALLEE, moved, one(3)) == "c1"
    assert sup.dialogs["c1"].callee.packets == 2


def test_a_new_dialog_naming_a_cached_address_gets_the_flow_rebuilt() -> None:
    sup = MediaSupervisor()
    answered(sup, "old", CALLER, CALLEE)
    assert sup.packet(200, ("10.0.0.9", 4000), CALLER, one(1)) == "old"  # cached
    # A new dialog's SDP names the caller's address while "old" is still up (a B2BUA's
    # second leg): the cached flow is rebuilt, the packet counts for both.
    answered(sup, "new", CALLER, ("127.0.0.1", 7002), at=300)
    assert sup.packet(500, ("10.0.0.9", 4000), CALLER, one(2)) == "new"
    assert sup.dialogs["old"].callee.packets == 2
    assert sup.dialogs["new"].callee.packets == 1


def test_port_reuse_after_the_end_moves_a_cached_flow_to_the_new_dialog() -> None:
    sup = MediaSupervisor()
    answered(sup, "old", CALLER, CALLEE)
    assert sup.packet(200, ("10.0.0.9", 4000), CALLER, one(1)) == "old"  # cached
    sup.end("old", 250)
    answered(sup, "new", CALLER, ("127.0.0.1", 7002), at=300)
    assert sup.packet(500, ("10.0.0.9", 4000), CALLER, one(2)) == "new"
    assert sup.dialogs["new"].callee.packets == 1
    assert "old" not in sup.dialogs or sup.dialogs["old"].callee.packets == 1


def test_dialog_end_drops_its_cached_flows() -> None:
    sup = MediaSupervisor()
    answered(sup, "c1", CALLER, CALLEE)
    assert sup.packet(200, CALLEE, CALLER, one(1)) == "c1"
    assert sup.packet(200, CALLER, CALLEE, one(1, ssrc=6)) == "c1"
    v = sup.end("c1", 300)
    assert v is not None and v.evidence["callee"]["packets"] == 1
    assert sup.packet(320, CALLEE, CALLER, one(2)) is None
    assert sup.packet(320, CALLER, CALLEE, one(2, ssrc=6)) is None
    # The same Call-ID offered again is a new dialog: nothing of the old one leaks in.
    answered(sup, "c1", CALLER, CALLEE, at=400)
    assert sup.packet(600, CALLEE, CALLER, one(3)) == "c1"
    assert sup.dialogs["c1"].callee.packets == 1
    assert not sup._flow_cache.keys() - {(*CALLEE, *CALLER)}


def test_latching_moves_a_flow_cached_by_its_source() -> None:
    sup = MediaSupervisor()
    answered(sup, "a", CALLER, CALLEE)
    relay = ("10.0.0.50", 9000)
    # Symmetric RTP from the callee to an unknown address: classified by its source.
    assert sup.packet(200, CALLEE, relay, one(1)) == "a"
    assert sup.dialogs["a"].callee.packets == 1
    # Dialog "b"'s callee sends from ``relay``: the address is latched to "b", so a
    # packet to it is b's caller's media from now on, as FlowTable.classify says.
    answered(sup, "b", ("127.0.0.1", 6002), ("127.0.0.1", 7002), at=300)
    assert sup.packet(500, relay, ("127.0.0.1", 6002), one(1, ssrc=9)) == "b"
    assert sup.flows.classify(CALLEE, relay) == ("b", Party.CALLER)
    assert sup.packet(520, CALLEE, relay, one(2)) == "b"
    assert sup.dialogs["a"].callee.packets == 1
    assert sup.dialogs["b"].caller.packets == 1


def test_sdp_update_changes_the_codec_of_a_cached_flow() -> None:
    sup = MediaSupervisor()
    sup.offer("c1", 0, sdp(*CALLER))
    body = ("v=0\r\no=bob 2 {v} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 7000 RTP/AVP 96\r\n{rtpmap}")
    sup.answer("c1", 100, body.format(v=1, rtpmap=""))
    audio = encode(speech_like(0.02), Codec.PCMA)
    assert sup.packet(200, CALLEE, CALLER, rtp(1, 0, 5, 96, audio)) == "c1"
    silence = sup.dialogs["c1"].silence
    assert silence is not None and silence.frames == 0  # PT 96 is nothing known yet
    sup.update("c1", 300, "callee", body.format(v=2, rtpmap="a=rtpmap:96 PCMA/8000\r\n"))
    assert sup.packet(320, CALLEE, CALLER, rtp(2, 160, 5, 96, audio)) == "c1"
    assert silence.frames == 1


def _scenario(seed: int) -> list[tuple[Any, ...]]:
    """Random overlapping dialogs on a few shared ports, with re-INVITEs, latching,
    loss, RTCP and ends: the steps both supervisors get."""
    rnd = random.Random(seed)
    steps: list[tuple[Any, ...]] = []
    addresses = [("127.0.0.1", 6000 + 2 * i) for i in range(6)]
    sources = addresses + [("10.0.0.7", 5000 + i) for i in range(4)]
    audio = {name: encode(samples, Codec.PCMA) for name, samples in
             (("speech", speech_like(0.4)), ("quiet", quiet(0.4)),
              ("ring", tone((425,), 0.4)))}
    live: list[str] = []
    now = 0
    for n in range(400):
        now += rnd.randint(1, 30)
        r = rnd.random()
        if r < 0.05 or not live:
            ref = f"c{n % 9}"
            steps.append(("offer", ref, now, sdp(*rnd.choice(addresses), origin=f"{ref} 1 1")))
            steps.append(("answer", ref, now + 5, sdp(*rnd.choice(addresses),
                                                      origin=f"{ref}x 2 1")))
            live.append(ref)
        elif r < 0.08:
            ref = rnd.choice(live)
            steps.append(("update", ref, now, rnd.choice(["caller", "callee"]),
                          sdp(*rnd.choice(addresses), origin="x 1 2")))
        elif r < 0.11:
            ref = rnd.choice(live)
            live.remove(ref)
            steps.append(("end", ref, now))
        else:
            src, dst = rnd.choice(sources), rnd.choice(sources)
            seq = n if rnd.random() > 0.05 else n + rnd.randint(2, 40)
            data = audio[rnd.choice(list(audio))]
            k = rnd.randrange(len(data) // 160)
            pkt = rtp(seq, seq * 160, rnd.choice([1, 2]), 8, data[k * 160:(k + 1) * 160])
            if rnd.random() < 0.03:
                pkt = b"\x80\xc8" + b"\0" * 26
            steps.append(("packet", now, src, dst, pkt))
    steps.extend(("end", ref, now + 1) for ref in live)
    return steps


def _play(sup: MediaSupervisor, steps: list[tuple[Any, ...]]) -> list[Any]:
    out: list[Any] = []
    for step in steps:
        kind, *args = step
        if kind == "offer":
            sup.offer(*args)
        elif kind == "answer":
            sup.answer(*args)
        elif kind == "update":
            sup.update(*args)
        elif kind == "end":
            v = sup.end(*args)
            out.append(None if v is None else (v.call_ref, v.verdict, v.billable_ms,
                                                v.reasons, v.evidence))
        else:
            out.append(sup.packet(*args))
    out.append((sup.packets_matched, sup.packets_unmatched, sup.packets_not_rtp))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_flow_cache_gives_what_classifying_every_packet_gives(seed: int) -> None:
    steps = _scenario(seed)
    fast = MediaSupervisor()
    assert _play(fast, steps) == _play(uncached(), steps)
    assert len(fast._flows_of) <= 2 * len(fast._flow_cache)


def _wire(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    return (socket.inet_aton(src[0]) + socket.inet_aton(dst[0])
            + struct.pack("!HH", src[1], dst[1]))


class _Keyed(MediaSupervisor):
    """Packets given by their wire key, as the live capture gives UDP/IPv4 datagrams."""

    def packet(self, ts_ms: int, src: tuple[str, int], dst: tuple[str, int],
               payload: bytes) -> str | None:
        return self.datagram_key(ts_ms, _wire(src, dst), payload)


@pytest.mark.parametrize("seed", range(12))
def test_wire_keys_and_known_strays_give_what_classifying_every_packet_gives(
        seed: int) -> None:
    """The wire-key path, with datagrams of no dialog remembered until an owner of either
    address changes, counts and attributes every packet as the plain path does."""
    steps = _scenario(seed)
    keyed = _Keyed()
    assert _play(keyed, steps) == _play(uncached(), steps)
    assert keyed.packets_unmatched > 0
    for key, (src, dst) in keyed._stray_keys.items():
        assert key in keyed._strays_of[src] and key in keyed._strays_of[dst]


def test_a_stray_datagram_is_counted_until_its_address_gets_a_dialog() -> None:
    sup = MediaSupervisor()
    sup.rtp_families.add(4)
    key = _wire(("10.0.0.9", 4000), CALLER)
    assert sup.datagram_key(100, key, one(1)) is None
    assert sup.datagram_key(120, key, one(2)) is None  # known of no dialog: one lookup
    assert sup.packets_unmatched == 2 and key in sup._stray_keys
    answered(sup, "late", CALLER, CALLEE, at=130)  # the caller's address is offered now
    assert key not in sup._stray_keys
    assert sup.datagram_key(240, key, one(3)) == "late"
    assert sup.dialogs["late"].callee.packets == 1


# --- detectors ------------------------------------------------------------------------


class _Ungated(RingbackDetector):
    """Every block decoded and analysed, as before the loud-sample gate."""

    def feed(self, payload: bytes, codec: Codec) -> Any:
        self._last_loud = 1 << 62
        return super().feed(payload, codec)


def _audio(kind: str, seconds: float, rnd: random.Random) -> list[float]:
    if kind == "na":  # at levels either side of the energy floor (RMS 100)
        return tone((440, 480), seconds, rnd.choice([60.0, 99.0, 3000.0]))
    if kind == "eu":
        return tone((425,), seconds)
    if kind == "quiet":
        return quiet(seconds, seed=rnd.randint(0, 99))
    if kind == "speech":
        return speech_like(seconds, seed=rnd.randint(0, 99))
    return [0.0] * int(seconds * 8000)


def _stream(rnd: random.Random) -> list[tuple[bytes, Codec, int]]:
    """(payload, codec, samples missing before it) for a random callee stream."""
    out: list[tuple[bytes, Codec, int]] = []
    codec = Codec.PCMA
    for _ in range(rnd.randint(3, 12)):
        if rnd.random() < 0.15:
            codec = Codec.PCMU if codec is Codec.PCMA else Codec.PCMA
        samples = _audio(rnd.choice(["na", "eu", "quiet", "speech", "zero"]),
                         rnd.choice([0.1, 0.3, 0.6]), rnd)
        data = encode(samples, codec)
        size = rnd.choice([160, 160, 240, 80, 7])
        for k in range(0, len(data), size):
            missing = rnd.choice([0] * 40 + [160, 333])
            out.append((data[k:k + size], codec, missing))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_ringback_gate_and_silence_shortcut_change_nothing(seed: int) -> None:
    rnd = random.Random(seed)
    window = rnd.choice([None, 8000, 4000])
    fast, full = RingbackDetector(window_samples=window), _Ungated(window_samples=window)
    frames = SilenceDetector()
    chunked = SilenceDetector()  # fed in odd pieces: never the one-frame shortcut
    found: list[Any] = []
    for payload, codec, missing in _stream(rnd):
        if missing:
            for d in (fast, full, frames, chunked):
                d.discontinuity(missing)
        found.append((fast.feed(payload, codec), full.feed(payload, codec)))
        frames.feed(payload, codec)
        for k in range(0, len(payload), 13):
            chunked.feed(payload[k:k + 13], codec)
        assert (fast.blocks_analysed, fast.samples_fed, fast.finished) == \
            (full.blocks_analysed, full.samples_fed, full.finished)
    assert all(a == b for a, b in found)
    assert fast.detection == full.detection
    assert (frames.silent_frames, frames.voiced_frames, frames.first_voiced_sample,
            frames.samples_fed) == (chunked.silent_frames, chunked.voiced_frames,
                                    chunked.first_voiced_sample, chunked.samples_fed)


def test_a_quiet_block_between_ringing_blocks_ends_the_run() -> None:
    ring = encode(tone((425,), 0.1), Codec.PCMA)  # 4 blocks and a bit
    idle = b"\xd5" * 352  # two blocks of A-law idle: no loud sample
    d = RingbackDetector(window_samples=None)
    for chunk in (ring, idle, ring, idle):
        assert d.feed(chunk, Codec.PCMA) is None
    assert d.detection is None and d.blocks_analysed == (2 * (800 + 352)) // 176


# --- reader ---------------------------------------------------------------------------


def _write(path: Path, count: int) -> list[tuple[float, bytes]]:
    rnd = random.Random(count)
    frames = []
    for i in range(count):
        payload = bytes(rnd.randrange(256) for _ in range(rnd.choice([0, 12, 172, 1400])))
        src = f"10.0.{i % 3}.1"
        frames.append((1_700_000_000 + i * 0.001,
                       ethernet(ipv4(src, "10.0.9.9", 17, udp(4000 + i % 7, 5000, payload)))))
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=65535)
        for ts, frame in frames:
            writer.writepkt(frame, ts=ts)
    return frames


def test_reader_tuples_equal_the_public_payloads_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.pcap"
    _write(path, 2500)  # about 2 MiB: records straddle the 1 MiB chunks
    reader = read_capture(path)
    public = list(reader)
    stats = reader.stats
    plain = list(reader.tuples())
    assert all(type(p) is CapturedPayload for p in public)
    assert [tuple(p) for p in public] == plain and len(plain) == 2500
    assert reader.stats == stats and stats.packets_read == 2500


@pytest.mark.parametrize("cut", [1, 10, 600_000, 1_048_570, 1_048_600])
def test_reader_cut_anywhere_ends_with_truncated_file(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.pcap"
    _write(path, 1500)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - cut])
    whole = list(read_capture(tmp_path.joinpath("cut.pcap")))
    reader = read_capture(path)
    assert [tuple(p) for p in whole] == list(reader.tuples())
    assert reader.stats.truncated_file and reader.stats.skipped == {"truncated_record": 1}
    assert reader.stats.packets_read == len(whole) + 1


def test_replay_of_a_reader_and_of_its_payloads_agree(tmp_path: Path) -> None:
    # A call's SIP and media as a capture; Replay takes the reader's fast tuples, or
    # any iterable of CapturedPayload: the reports are the same.
    frames: list[tuple[float, bytes]] = []
    invite = ("INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1"
              "\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: x1\r\n"
              "CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {n}\r\n\r\n")
    ok = ("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\nFrom: "
          "<sip:a@127.0.0.1>;tag=1\r\nTo: <sip:100@127.0.0.1>;tag=2\r\nCall-ID: x1\r\n"
          "CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {n}\r\n\r\n")
    offer, answer = sdp(*CALLER), sdp(*CALLEE)
    t0 = 1_700_000_000.0

    def frame(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
        return ethernet(ipv4(src[0], dst[0], 17, udp(src[1], dst[1], payload)))

    frames.append((t0, frame(("127.0.0.1", 5060), ("127.0.0.1", 5062),
                             (invite.format(n=len(offer)) + offer).encode())))
    frames.append((t0 + 1, frame(("127.0.0.1", 5062), ("127.0.0.1", 5060),
                                 (ok.format(n=len(answer)) + answer).encode())))
    for ts, data in packets(speech_like(2.0), 1020):
        frames.append((t0 + ts / 1000, frame(CALLEE, CALLER, data)))
    path = tmp_path / "call.pcap"
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=65535)
        for when, fr in frames:
            writer.writepkt(fr, ts=when)

    def run(source: Any) -> tuple[list[dict[str, Any]], Any]:
        media = MediaSupervisor()
        control = CallControl(Sim().charger, media, ControlConfig(supervise_rejected=True))
        result = Replay(control).run(source)
        assert result.packets == len(frames) and result.rtp_packets == 100
        # The call is still up when the capture ends: it is ended there, with its evidence.
        assert "x1" not in media.dialogs
        return [c.to_dict() for c in result.calls], result.calls[0].evidence["callee"]

    from_reader = run(read_capture(path))
    assert from_reader == run(list(read_capture(path)))
    assert from_reader[1]["packets"] == 100 and from_reader[1]["first_after_answer_ms"]
