"""A B2BUA's two legs in one capture: after a re-INVITE on each leg the media goes
straight between the two phones, and both legs are billed on it (replayed through the
production core, as `sidecar replay` does)."""

from __future__ import annotations

from decimal import Decimal

from sidecar.media.pcap import CapturedPayload
from sidecar.replay.run import Replay
from sidecar.store.accounts import verify_ledger
from sidecar.supervision.calls import CallControl
from sidecar.supervision.media import MediaSupervisor
from tests.charging.harness import Sim
from tests.replay.test_signalling import ProxiedCall

from .media_gen import packets, speech_like

T0 = 1_790_000_000.0  # 2026-09: the test deck is in force
A, B = ("192.0.2.10", 40000), ("198.51.100.20", 50000)  # the two phones
PBX_IN, PBX_OUT = ("10.0.0.9", 30000), ("10.0.0.9", 30002)  # the B2BUA's media ports


def _sdp(addr: tuple[str, int], origin: str, version: int) -> str:
    return (f"v=0\r\no={origin} 1 {version} IN IP4 {addr[0]}\r\ns=-\r\nc=IN IP4 {addr[0]}\r\n"
            f"t=0 0\r\nm=audio {addr[1]} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")


def _rtp(src: tuple[str, int], dst: tuple[str, int], start_s: float, seconds: float,
         seed: int) -> list[CapturedPayload]:
    return [CapturedPayload(T0 + ms / 1000, *src, *dst, "udp", data)
            for ms, data in packets(speech_like(seconds, seed=seed), int(start_s * 1000),
                                    ssrc=seed)]


def _b2bua_capture(direct_at: float) -> list[CapturedPayload]:
    inbound = ProxiedCall(call_id="leg-in@pbx", ruri="sip:+4930123456@10.0.0.1;ac=ACME")
    outbound = ProxiedCall(call_id="leg-out@pbx", from_tag="77", to_tag="88",
                           ruri="sip:+4930123456@10.0.0.1;ac=PBX")
    out: list[CapturedPayload] = [
        *inbound.invite(T0, sdp=_sdp(A, "phone-a", 1)),
        *outbound.invite(T0 + 0.01, sdp=_sdp(PBX_OUT, "pbx-out", 1)),
        *outbound.reply(T0 + 1.0, 200, "OK", sdp=_sdp(B, "phone-b", 1)),
        *outbound.caller_request(T0 + 1.01, "ACK", 1),
        *inbound.reply(T0 + 1.02, 200, "OK", sdp=_sdp(PBX_IN, "pbx-in", 1)),
        *inbound.caller_request(T0 + 1.03, "ACK", 1),
        # Direct media: the PBX tells each phone to send to the other.
        *inbound.callee_request(T0 + direct_at, "INVITE", 1, sdp=_sdp(B, "pbx-in", 2)),
        *inbound.caller_reply(T0 + direct_at + 0.01, 200, "OK", "INVITE", 1),
        *outbound.caller_request(T0 + direct_at + 0.02, "INVITE", 2, sdp=_sdp(A, "pbx-out", 2)),
        *outbound.reply(T0 + direct_at + 0.03, 200, "OK", cseq=2),
        *inbound.caller_request(T0 + 11.0, "BYE", 2),
        *inbound.reply(T0 + 11.01, 200, "OK", method="BYE", cseq=2),
        *outbound.caller_request(T0 + 11.02, "BYE", 3),
        *outbound.reply(T0 + 11.03, 200, "OK", method="BYE", cseq=3),
    ]
    relayed = direct_at - 1.05
    if relayed > 0:  # media through the PBX until the re-INVITEs
        out += _rtp(A, PBX_IN, 1.05, relayed, 1) + _rtp(PBX_IN, A, 1.05, relayed, 2)
        out += _rtp(PBX_OUT, B, 1.05, relayed, 3) + _rtp(B, PBX_OUT, 1.05, relayed, 4)
    direct = 10.9 - direct_at - 0.1
    out += _rtp(A, B, direct_at + 0.1, direct, 5) + _rtp(B, A, direct_at + 0.1, direct, 6)
    return sorted(out, key=lambda p: p.timestamp)


def test_both_legs_of_a_b2bua_with_direct_media_are_billed() -> None:
    for direct_at in (1.1, 4.0):  # re-INVITEs right after the answer, or after 3 s relayed
        sim = Sim()
        sim.account("ACME", "10")
        sim.account("PBX", "10")
        control = CallControl(sim.charger, MediaSupervisor())
        result = Replay(control).run(_b2bua_capture(direct_at))
        by_id = {c.call_id: c for c in result.calls}
        for leg, start in (("leg-in@pbx", 1.02), ("leg-out@pbx", 1.0)):
            c = by_id[leg]
            assert c.verdict == "" and c.disposition == "answered", (direct_at, leg, c.reasons)
            assert c.billable_ms == int((T0 + start) * 1000), (direct_at, leg)
            assert c.evidence["callee"]["packets"] >= 300, (direct_at, leg, c.evidence)
        cdrs = {c.call_id: c for c in result.cdrs}
        assert cdrs["leg-in@pbx"].billed_seconds == 10 and cdrs["leg-out@pbx"].billed_seconds == 11
        assert sim.balance("ACME") == Decimal("10") - Decimal("0.06") * 10 / 60
        assert all(not chk.problems for chk in verify_ledger(sim.conn))
