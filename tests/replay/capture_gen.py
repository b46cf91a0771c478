"""A seeded capture of overlapping calls with everything a real capture throws at a replay.

Each call is SIP through a proxy (both copies, as in ``test_signalling``) and G.711 RTP
both ways; per call, seeded: ringback, silence or voice from the callee, late media, no
media, early media, early media then busy, no BYE (still up when the capture ends),
video beside the audio, a re-INVITE moving the callee's media. On
the way: lost, duplicated and swapped packets, an SSRC change, a payload type change,
RTCP on the RTP port, runts that start like RTP, header-only and padded RTP, a packet
with an earlier time than the one before it, callee media from a port its SDP did not
name (latched) mixed with media from the one it named, RTP of no call, RTP sent before
the INVITE that names its address, RTP in VLAN tags (the frame decoder's slow path) and
garbage frames: ARP, cut frames, random bytes, an IPv4 fragment pair, IPv6 RTP.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from pathlib import Path

import dpkt

from sidecar.media.g711 import Codec
from tests.media.packets import ETH_IPV6, ETH_VLAN, ethernet, ipv4, ipv6, packetize, rtp, tone
from tests.media.packets import udp as udp_header
from tests.replay.test_signalling import ProxiedCall

T0 = 1_793_577_600.0  # 2026-11-02 UTC
PROXY = ("10.0.0.1", 5060)
Record = tuple[float, bytes]


def _frame(src: tuple[str, int], dst: tuple[str, int], payload: bytes,
           vlan: bool = False) -> bytes:
    packet = ipv4(src[0], dst[0], 17, udp_header(src[1], dst[1], payload))
    return ethernet(packet, vlans=[(ETH_VLAN, 7)] if vlan else ())


def _sdp(ip: str, port: int, origin: str, video: bool = False) -> str:
    return (f"v=0\r\no={origin} 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 8 0\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
            + (f"m=video {port + 2} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n" if video else ""))


def _audio(kind: str, seconds: float, codec: Codec, rnd: random.Random) -> list[bytes]:
    if kind == "ringback":
        samples = tone([425.0], -10.0, seconds)
    elif kind == "silence":
        samples = [rnd.uniform(-20, 20) for _ in range(int(seconds * 8000))]
    else:  # voice-like: loud noise in bursts
        samples = [rnd.uniform(-9000, 9000) if (i // 1600) % 3 else 0.0
                   for i in range(int(seconds * 8000))]
    return packetize(samples, codec)


def _stream(rnd: random.Random, t: float, src: tuple[str, int], dst: tuple[str, int],
            payloads: Sequence[bytes], ssrc: int, *, quirks: bool,
            relabel: bool = True, other_source: tuple[str, int] | None = None,
            pt: int = 8) -> list[Record]:
    """One direction of a call's RTP from time ``t``, 20 ms apart (``relabel``: the
    payload type may switch between PCMA and PCMU, the audio not re-encoded;
    ``other_source``: most packets are sent from there instead)."""
    out: list[Record] = []
    seq = rnd.randrange(65536)  # wraps within some calls
    stamp = rnd.randrange(1 << 32)
    sender = src
    for i, payload in enumerate(payloads):
        ts = t + i * 0.02
        if other_source is not None:
            src = sender if i % 7 == 3 else other_source
        if quirks:
            roll = rnd.random()
            if roll < 0.04:  # lost
                seq, stamp = (seq + 1) & 0xFFFF, (stamp + 160) & 0xFFFFFFFF
                continue
            if roll < 0.05:
                ssrc ^= 0x5A5A
            elif roll < 0.055 and relabel:
                pt = 0 if pt == 8 else 8
            elif roll < 0.07:
                out.append((ts + 0.001, _frame(src, dst, bytes([0x80, 200]) + b"\0" * 26)))
            elif roll < 0.075:
                out.append((ts + 0.001, _frame(src, dst, b"\x80\x08\x00")))  # a runt
            elif roll < 0.08:
                payload = b""  # header only
        packet = rtp(payload, payload_type=pt, sequence=seq, timestamp=stamp, ssrc=ssrc)
        if quirks and rnd.random() < 0.01:
            packet = rtp(payload, payload_type=pt, sequence=seq, timestamp=stamp, ssrc=ssrc,
                         padding=4)
        out.append((ts, _frame(src, dst, packet, vlan=quirks and rnd.random() < 0.01)))
        if quirks and rnd.random() < 0.01:
            out.append((ts + 0.0005, out[-1][1]))  # duplicated
        seq, stamp = (seq + 1) & 0xFFFF, (stamp + len(payload)) & 0xFFFFFFFF
    if quirks and len(out) > 10:
        k = rnd.randrange(2, len(out) - 2)
        out[k], out[k + 1] = (out[k][0], out[k + 1][1]), (out[k + 1][0], out[k][1])
        j = rnd.randrange(2, len(out) - 2)
        out[j] = (out[j][0] - 0.5, out[j][1])  # an earlier time than the packet before
    return out


def _sip(records: list[Record], payloads: list[object]) -> None:
    for p in payloads:
        ts, src_ip, src_port, dst_ip, dst_port, _, data = p  # type: ignore[misc]
        records.append((ts, _frame((src_ip, src_port), (dst_ip, dst_port), data)))


def build(seed: int = 1, calls: int = 10, *, quirks: bool = True,
          garbage: bool = True) -> list[Record]:
    """The records of the capture, in capture order (times as written)."""
    rnd = random.Random(seed)
    records: list[Record] = []
    kinds = ["voice", "ringback", "silence", "late", "none", "early", "voice", "nobye",
             "busy"]
    for c in range(calls):
        kind = kinds[c % len(kinds)] if c < len(kinds) else rnd.choice(kinds)
        t = T0 + c * 0.9 + rnd.uniform(0, 0.2)
        caller = (f"192.0.2.{10 + c % 3}", 40000 + 4 * c)
        callee = (f"198.51.100.{20 + c % 2}", 50000 + 4 * c)
        call = ProxiedCall(call_id=f"gen-{seed}-{c}@192.0.2.10", from_tag=f"f{c}",
                           to_tag=f"t{c}", ruri=f"sip:4930{c:07d}@10.0.0.1")
        answer = t + rnd.uniform(0.5, 2.0)
        seconds = 5.5 if kind in ("silence", "late") else rnd.uniform(2.0, 6.0)
        video = c % 6 == 0  # audio and video: two flows each way feed each party's stream
        sip = [*call.invite(t, sdp=_sdp(*caller, f"caller{c}", video))]
        if kind in ("early", "busy"):
            sip += call.reply(t + 0.2, 183, "Session Progress",
                              sdp=_sdp(*callee, f"callee{c}"))
            early = _audio("ringback", answer - t - 0.3, Codec.PCMA, rnd)
            records += _stream(rnd, t + 0.3, callee, caller, early, 0xE000 + c, quirks=quirks,
                               relabel=False)
            if kind == "busy":  # early media, then the call fails
                sip += call.reply(answer, 486, "Busy Here")
                sip += call.caller_request(answer + 0.01, "ACK", 1)
                _sip(records, sip)
                continue
        else:
            sip += call.reply(t + 0.3, 180, "Ringing")
        sip += call.reply(answer, 200, "OK", sdp=_sdp(*callee, f"callee{c}", video))
        sip += call.caller_request(answer + 0.05, "ACK", 1)
        end = answer + seconds
        if c % 5 == 4:  # the callee moves its media half way: a re-INVITE and its 200
            middle = answer + seconds / 2
            sip += call.callee_request(middle, "INVITE", 10,
                                       sdp=_sdp(callee[0], callee[1] + 100, f"callee{c}"))
            sip += call.caller_reply(middle + 0.02, 200, "OK", "INVITE", 10,
                                     sdp=_sdp(*caller, f"caller{c}", video))
        if kind != "nobye":
            sip += call.caller_request(end + 0.1, "BYE", 2)
            sip += call.reply(end + 0.12, 200, "OK", method="BYE", cseq=2)
        _sip(records, sip)
        if c % 4 == 1:  # caller media from before its INVITE: of no dialog, then its own
            early_caller = _audio("voice", 0.8, Codec.PCMA, rnd)
            records += _stream(rnd, t - 0.4, caller, callee, early_caller, 0xF000 + c,
                               quirks=False)
        start = answer + (3.0 if kind == "late" else 0.04)
        caller_audio = _audio("voice", end - answer, Codec.PCMA, rnd)
        records += _stream(rnd, answer + 0.03, caller, callee, caller_audio, 0xA000 + c,
                           quirks=quirks)
        if kind != "none":
            audio_kind = kind if kind in ("ringback", "silence") else "voice"
            callee_audio = _audio(audio_kind, end - start, Codec.PCMA, rnd)
            # Every third call's callee sends from a port its SDP does not name, and now
            # and then from the one it names.
            other = (callee[0], callee[1] + 2) if c % 3 == 2 else None
            records += _stream(rnd, start, callee, caller, callee_audio, 0xB000 + c,
                               quirks=quirks, relabel=audio_kind == "voice",
                               other_source=other)
        if video:
            frames = [bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(20, 300)))
                      for _ in range(int((end - answer) * 25))]
            records += _stream(rnd, answer + 0.035, (caller[0], caller[1] + 2),
                               (callee[0], callee[1] + 2), frames, 0xC000 + c,
                               quirks=quirks, relabel=False, pt=96)
            if kind != "none":
                records += _stream(rnd, start + 0.005, (callee[0], callee[1] + 2),
                                   (caller[0], caller[1] + 2), frames, 0xD000 + c,
                                   quirks=quirks, relabel=False, pt=96)
    if garbage:
        last = max(ts for ts, _ in records)
        stray = [rtp(b"\xd5" * 160, sequence=i, timestamp=160 * i, ssrc=7) for i in range(150)]
        records += [(T0 + 0.5 + i * 0.02, _frame(("10.9.9.9", 30000), ("10.9.9.8", 30002), p))
                    for i, p in enumerate(stray)]
        for i in range(40):
            ts = T0 + rnd.uniform(0, last - T0)
            roll = i % 5
            if roll == 0:  # ARP
                frame = ethernet(b"\0\x01\x08\x00\x06\x04\0\x01" + b"\0" * 20, 0x0806)
            elif roll == 1:  # cut short
                frame = _frame(("192.0.2.10", 40000), ("198.51.100.20", 50000),
                               rtp(b"\xd5" * 160))[: rnd.randrange(14, 40)]
            elif roll == 2:
                frame = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 80)))
            elif roll == 3:  # IPv6 RTP of no call
                frame = ethernet(ipv6("2001:db8::1", "2001:db8::2", 17,
                                      udp_header(30000, 30002, rtp(b"\xd5" * 160))), ETH_IPV6)
            else:  # an IPv4 datagram in two fragments
                body = udp_header(31000, 31002, rtp(b"\x55" * 200, ssrc=9))
                frame = ethernet(ipv4("10.9.9.9", "10.9.9.8", 17, body[:80], ident=77 + i,
                                      more_fragments=True))
                records.append((ts + 0.0001, ethernet(ipv4("10.9.9.9", "10.9.9.8", 17,
                                                           body[80:], ident=77 + i,
                                                           fragment_offset=80))))
            records.append((ts, frame))
    records.sort(key=lambda r: r[0])
    # One record moved out of order by a few hundred ms (its own time kept).
    if quirks and len(records) > 100:
        k = len(records) // 2
        records.insert(k + 20, records.pop(k))
    return records


def write_pcap(path: Path, records: Sequence[Record], *, order: str = "<", nano: bool = False,
               linktype: int = 1, snaplen: int = 65535) -> None:
    """A classic pcap file of ``records`` in that order (any byte order, us or ns)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    units = 1_000_000_000 if nano else 1_000_000
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for ts, frame in records:
        whole = int(ts)
        fraction = min(units - 1, round((ts - whole) * units))
        out.append(struct.pack(order + "IIII", whole, fraction, len(frame), len(frame)))
        out.append(frame)
    path.write_bytes(b"".join(out))


def write_pcapng(path: Path, records: Sequence[Record]) -> None:
    """A pcapng file of ``records`` (one Ethernet interface, microseconds)."""
    with path.open("wb") as f:
        writer = dpkt.pcapng.Writer(f, snaplen=65535)
        for ts, frame in records:
            writer.writepkt(frame, ts=ts)
