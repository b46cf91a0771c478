"""Media supervision core: billable start and FAS verdicts from synthetic dialogs."""

from __future__ import annotations

from sidecar.media.g711 import Codec
from sidecar.supervision.flows import FlowTable, Party
from sidecar.supervision.media import MediaConfig, MediaSupervisor, Verdict

from .media_gen import packets, quiet, rtp, sdp, speech_like, tone

CALLER = ("127.0.0.1", 6000)
CALLEE = ("127.0.0.1", 7000)


def feed(sup: MediaSupervisor, pkts: list[tuple[int, bytes]], src: tuple[str, int],
         dst: tuple[str, int]) -> None:
    for ts, data in pkts:
        sup.packet(ts, src, dst, data)


def run(callee_audio: list[tuple[int, bytes]] | None, *, answer_ms: int | None = 3000,
        ringing_ms: int | None = 100, end_ms: int = 9000, codec: Codec = Codec.PCMA,
        config: MediaConfig | None = None, early: list[tuple[int, bytes]] | None = None,
        caller_audio: bool = True, ref: str = "c1") -> tuple[MediaSupervisor, object]:
    sup = MediaSupervisor(config)
    sup.offer(ref, 0, sdp(*CALLER, codec=codec, origin="alice 11 1"))
    if ringing_ms is not None:
        sup.provisional(ref, ringing_ms, 180, "")
    if early is not None:
        sup.provisional(ref, 400, 183, sdp(*CALLEE, codec=codec, origin="bob 22 1"))
        feed(sup, early, CALLEE, CALLER)
    if answer_ms is not None:
        sup.answer(ref, answer_ms, sdp(*CALLEE, codec=codec, origin="bob 22 1"))
        if caller_audio:
            feed(sup, packets(speech_like(end_ms / 1000 - 3.1, seed=9), answer_ms + 10, codec,
                              ssrc=0x99), CALLER, CALLEE)
    if callee_audio:
        feed(sup, callee_audio, CALLEE, CALLER)
    return sup, sup.end(ref, end_ms)


def test_normal_call_is_billed_from_the_200_ok() -> None:
    _, v = run(packets(speech_like(5.5), 3020))
    assert v.verdict is Verdict.CLEAN and v.billable_ms == 3000 and not v.credited
    assert v.evidence["callee"]["packets"] == 275
    assert v.evidence["media_delay_ms"] == 20
    assert v.reasons == ()


def test_answer_without_media_is_not_billed() -> None:
    _, v = run(None)
    assert v.answered and v.billable_ms is None and v.verdict is Verdict.NO_MEDIA
    assert "no media from the callee" in v.reason_text
    assert "packets from the caller" in v.reason_text


def test_media_within_the_grace_window_bills_from_the_answer() -> None:
    _, v = run(packets(speech_like(3.0), 4900))
    assert v.verdict is Verdict.CLEAN and v.billable_ms == 3000


def test_late_media_moves_the_billable_start_to_the_first_packet() -> None:
    _, v = run(packets(speech_like(2.0), 8000), end_ms=10_500)
    assert v.verdict is Verdict.LATE_MEDIA and v.billable_ms == 8000
    assert "5.00 s after the 200 OK" in v.reason_text and not v.credited


def test_grace_window_is_configurable() -> None:
    _, v = run(packets(speech_like(3.0), 4900), config=MediaConfig(grace_ms=1000))
    assert v.verdict is Verdict.LATE_MEDIA and v.billable_ms == 4900


def test_ringback_after_answer_pcma_425() -> None:
    audio = packets(tone((425,), 1.0) + quiet(4.0), 3020)
    _, v = run(audio)
    assert v.verdict is Verdict.RINGBACK and v.credited
    assert v.billable_ms == 3000
    assert "425 Hz" in v.reason_text
    assert 0 <= v.evidence["ringback_at_ms"] < 300


def test_ringback_after_answer_pcmu_440_480() -> None:
    audio = packets(tone((440, 480), 2.0) + quiet(3.0), 3020, Codec.PCMU)
    _, v = run(audio, codec=Codec.PCMU)
    assert v.verdict is Verdict.RINGBACK and "440+480 Hz" in v.reason_text


def test_ringback_after_the_first_ten_seconds_is_not_looked_for() -> None:
    audio = packets(speech_like(11.0) + tone((425,), 2.0), 3020)
    _, v = run(audio, end_ms=16_500)
    assert v.verdict is Verdict.CLEAN


def test_silent_callee_is_fas_silence() -> None:
    _, v = run(packets(quiet(5.5), 3020))
    assert v.verdict is Verdict.SILENCE and v.credited
    assert "silent in 100%" in v.reason_text


def test_speech_is_not_silence_and_short_calls_are_not_judged() -> None:
    _, v = run(packets(quiet(4.0) + speech_like(1.5), 3020))
    assert v.verdict is Verdict.CLEAN
    _, short = run(packets(quiet(2.0), 3020), end_ms=5100)
    assert short.verdict is Verdict.CLEAN  # 2 s of audio is too little to judge


def test_early_media_then_answer_bills_from_the_answer_and_ignores_early_ringback() -> None:
    early = packets(tone((425,), 2.5), 420, ssrc=0x55)
    audio = packets(speech_like(5.5), 3010, ssrc=0x55, seq0=300)
    _, v = run(audio, early=early)
    assert v.verdict is Verdict.CLEAN and v.billable_ms == 3000
    assert v.evidence["callee"]["before_answer"] == len(early)
    assert v.evidence["early_sdp_ms"] == 400


def test_early_media_then_failure_is_not_answered() -> None:
    early = packets(speech_like(2.0), 420)
    _, v = run(None, early=early, answer_ms=None)
    assert not v.answered and v.billable_ms is None and v.verdict is Verdict.CLEAN
    assert v.evidence["callee"]["before_answer"] == len(early)


def test_only_early_media_and_none_after_the_answer_is_no_media() -> None:
    early = packets(tone((425,), 2.5), 420)
    _, v = run(None, early=early)
    assert v.verdict is Verdict.NO_MEDIA and "only early media" in v.reason_text


def test_instant_answer_with_real_media_is_not_fas() -> None:
    _, v = run(packets(speech_like(5.0), 60), answer_ms=40, ringing_ms=None, end_ms=5100)
    assert v.verdict is Verdict.CLEAN and v.billable_ms == 40
    assert v.evidence["instant_answer"] is True


def test_callee_sending_from_another_port_is_latched() -> None:
    sup = MediaSupervisor()
    sup.offer("c1", 0, sdp(*CALLER))
    sup.answer("c1", 1000, sdp(*CALLEE))
    nat = ("127.0.0.1", 40000)  # the callee's real source port
    feed(sup, packets(speech_like(1.0), 1020), nat, CALLER)
    # The caller's media sent back to the latched address is recognised as the caller's.
    feed(sup, packets(speech_like(1.0), 1020, ssrc=7), CALLER, nat)
    d = sup.dialogs["c1"]
    assert d.callee.packets == 50 and d.caller.packets == 50


def test_symmetric_rtp_to_an_unknown_destination_is_classified_by_source() -> None:
    table = FlowTable()
    table.register("c1", Party.CALLEE, [CALLEE])
    assert table.classify(CALLEE, ("10.9.9.9", 5004)) == ("c1", Party.CALLEE)
    assert table.classify(("10.1.1.1", 1), ("10.2.2.2", 2)) is None


def test_reinvite_moves_a_party_and_the_old_address_is_dropped() -> None:
    sup = MediaSupervisor()
    sup.offer("c1", 0, sdp(*CALLER, origin="alice 11 1"))
    sup.answer("c1", 1000, sdp(*CALLEE, origin="bob 22 1"))
    moved = ("127.0.0.1", 7100)
    # Whose SDP it is comes from the origin line when the event does not say.
    sup.update("c1", 2000, "", sdp(*moved, origin="bob 22 2"))
    assert sup.flows.addresses("c1").keys() == {CALLER, moved}
    sup.update("c1", 2100, "caller", sdp("127.0.0.1", 6100, origin="alice 11 2"))
    assert ("127.0.0.1", 6100) in sup.flows.addresses("c1")
    assert CALLER not in sup.flows.addresses("c1")


def test_port_reuse_new_dialog_wins_and_old_one_forgets_only_its_own() -> None:
    sup = MediaSupervisor()
    sup.offer("old", 0, sdp(*CALLER))
    sup.offer("new", 10, sdp(*CALLER))
    sup.end("old", 20)
    assert sup.flows.classify(CALLEE, CALLER) == ("new", Party.CALLEE)


def test_rtcp_and_junk_on_a_flow_are_not_media() -> None:
    sup = MediaSupervisor()
    sup.offer("c1", 0, sdp(*CALLER))
    sup.answer("c1", 1000, sdp(*CALLEE))
    sup.packet(1100, CALLEE, CALLER, b"\x80\xc8" + b"\x00" * 26)  # RTCP sender report
    sup.packet(1100, CALLEE, CALLER, b"garbage")
    v = sup.end("c1", 5000)
    assert v is not None and v.verdict is Verdict.NO_MEDIA
    assert sup.packets_not_rtp == 2


def test_lost_packets_and_gaps_are_measured() -> None:
    audio = packets(speech_like(5.0), 3020)
    del audio[100:110]  # 200 ms lost
    _, v = run(audio)
    callee = v.evidence["callee"]
    assert callee["lost"] == 10 and callee["max_gap_ms"] == 220


def test_no_media_deadline_reports_answered_calls_without_callee_media() -> None:
    sup = MediaSupervisor(MediaConfig(end_without_media_ms=5000))
    for ref in ("quiet", "talking"):
        sup.offer(ref, 0, sdp(*CALLER) if ref == "quiet" else sdp("127.0.0.1", 6002))
        sup.answer(ref, 1000, sdp(*CALLEE) if ref == "quiet" else sdp("127.0.0.1", 7002))
    feed(sup, packets(speech_like(1.0), 1100), ("127.0.0.1", 7002), ("127.0.0.1", 6002))
    assert sup.tick(5999) == []
    ended = sup.tick(6000)
    assert [n.call_ref for n in ended] == ["quiet"] and ended[0].for_ms == 5000
    assert sup.tick(7000) == []


def test_bad_sdp_is_counted_and_does_not_break_the_dialog() -> None:
    sup = MediaSupervisor()
    sup.offer("c1", 0, "v=0\r\nm=audio notaport RTP/AVP 0\r\n")
    sup.answer("c1", 1000, sdp(*CALLEE))
    feed(sup, packets(speech_like(4.0), 1020), CALLEE, ("127.0.0.1", 1))
    v = sup.end("c1", 5100)
    assert sup.bad_sdp == 1 and v is not None and v.verdict is Verdict.CLEAN


def test_rtp_header_helper_round_trips() -> None:
    assert rtp(1, 2, 3, 8, b"x")[:2] == b"\x80\x08"


def _sdp_with(ip: str, lines: str, origin: str) -> str:
    return f"v=0\r\no={origin} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n{lines}"


def _stream(start_ms: int, seconds: float, pt: int, size: int, seed: int = 3,
            every_ms: int = 20) -> list[tuple[int, bytes]]:
    """RTP of a codec the detectors cannot decode: ``size`` random bytes every 20 ms."""
    import random

    rnd = random.Random(seed)
    n = int(seconds * 1000 / every_ms)
    return [(start_ms + k * every_ms, rtp(200 + k, 160 * k, 0x4242, pt, rnd.randbytes(size)))
            for k in range(n)]


def _undecodable(caller_m: str, callee_m: str, callee_media: list[tuple[int, bytes]] | None,
                 callee_port: int = 7000) -> object:
    sup = MediaSupervisor()
    sup.offer("v", 0, _sdp_with("127.0.0.1", caller_m.format(port=6000), "alice 1 1"))
    sup.provisional("v", 100, 180, "")
    sup.answer("v", 3000, _sdp_with("127.0.0.1", callee_m.format(port=callee_port), "bob 2 1"))
    feed(sup, _stream(3010, 5.0, 96, 40, seed=8), CALLER, ("127.0.0.1", callee_port))
    if callee_media:
        feed(sup, callee_media, ("127.0.0.1", callee_port), CALLER)
    return sup.end("v", 9000)


VIDEO_ONLY = ("m=audio 0 RTP/AVP 0\r\nm=video {port} RTP/AVP 96\r\n"
              "a=rtpmap:96 H264/90000\r\na=sendrecv\r\n")


def test_a_video_call_without_audio_is_billed_on_its_video() -> None:
    """Media presence counts whatever the stream: a video-only call whose callee sends
    video is a clean answer, billed from the 200 OK; without the callee's video, no-media."""
    v = _undecodable(VIDEO_ONLY, VIDEO_ONLY, _stream(3020, 5.0, 96, 900))
    assert v.verdict is Verdict.CLEAN and v.billable_ms == 3000, v.reasons
    assert v.evidence["callee"]["packets"] == 250
    assert "silent_frames" not in v.evidence  # no audio to judge: no silence verdict
    v = _undecodable(VIDEO_ONLY, VIDEO_ONLY, None)
    assert v.verdict is Verdict.NO_MEDIA and v.billable_ms is None


def test_audio_the_detectors_cannot_decode_counts_as_media_but_is_never_judged() -> None:
    """G.729, G.722 and opus: the callee's packets confirm the answer (and a late start is
    still late media), but ringback and silence are looked for only in G.711."""
    codecs = {
        "G.729": ("m=audio {port} RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n", 18, 20),
        "G.722": ("m=audio {port} RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n", 9, 160),
        "opus": ("m=audio {port} RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n", 111, 60),
    }
    for name, (m, pt, size) in codecs.items():
        # Low-level bytes that would be "silent" if read as G.711: still not judged.
        quiet_bytes = [(ts, rtp(300 + k, 160 * k, 0x77, pt, b"\xd5" * size))
                       for k, (ts, _) in enumerate(_stream(3020, 5.0, pt, size))]
        v = _undecodable(m, m, quiet_bytes)
        assert v.verdict is Verdict.CLEAN and v.billable_ms == 3000, (name, v.reasons)
        assert "silent_frames" not in v.evidence, name
        late = _stream(7000, 1.5, pt, size)
        v = _undecodable(m, m, late)
        assert v.verdict is Verdict.LATE_MEDIA and v.billable_ms == 7000, name


A = ("10.0.0.1", 4000)  # phone A (calls the PBX)
B = ("10.0.0.2", 5000)  # phone B (the PBX calls it)
PBX_IN, PBX_OUT = ("10.0.0.9", 10000), ("10.0.0.9", 10002)


def _b2bua(sup: MediaSupervisor, relay_ms: int, end_ms: int = 10_600) -> None:
    """Two legs through a B2BUA (inbound A -> PBX, outbound PBX -> B), answered at 1 s; the
    PBX relays the media for ``relay_ms``, then re-INVITEs both legs so A and B send to
    each other directly."""
    sup.offer("in", 0, sdp(*A, origin="a 1 1"))
    sup.offer("out", 10, sdp(*PBX_OUT, origin="pbx 9 1"))
    sup.answer("out", 990, sdp(*B, origin="b 2 1"))
    sup.answer("in", 1000, sdp(*PBX_IN, origin="pbx 8 1"))
    t = 1000 + relay_ms
    feed(sup, packets(speech_like(relay_ms / 1000, seed=4), 1010), A, PBX_IN)
    feed(sup, packets(speech_like(relay_ms / 1000, seed=5), 1010), PBX_IN, A)
    feed(sup, packets(speech_like(relay_ms / 1000, seed=4), 1012), PBX_OUT, B)
    feed(sup, packets(speech_like(relay_ms / 1000, seed=5), 1008), B, PBX_OUT)
    sup.update("in", t, "callee", sdp(*B, origin="pbx 8 2"))  # A now sends to B
    sup.update("out", t + 5, "caller", sdp(*A, origin="pbx 9 2"))  # B now sends to A
    direct = (end_ms - t - 100) / 1000
    feed(sup, packets(speech_like(direct, seed=6), t + 50), A, B)
    feed(sup, packets(speech_like(direct, seed=7), t + 50, ssrc=0x77), B, A)


def test_b2bua_legs_with_direct_media_are_both_judged_on_it() -> None:
    """A re-INVITE right at the answer moves the media straight between the phones: the
    packets are evidence for both legs (the outbound leg was judged no-media before)."""
    sup = MediaSupervisor()
    _b2bua(sup, relay_ms=0)
    v_in, v_out = sup.end("in", 10_600), sup.end("out", 10_600)
    for v in (v_in, v_out):
        assert v is not None and v.verdict is Verdict.CLEAN, v and v.reasons
        assert v.billable_ms is not None and v.evidence["callee"]["packets"] > 400
        assert v.evidence["caller"]["packets"] > 400
    assert v_in.billable_ms == 1000 and v_out.billable_ms == 990


def test_b2bua_legs_after_relayed_media_keep_both_and_one_leg_ending_frees_nothing() -> None:
    sup = MediaSupervisor()
    _b2bua(sup, relay_ms=2000, end_ms=20_000)
    assert sup.flows.classify(A, B) is not None and len(sup.flows.sharers(A, B)) == 1
    v_in = sup.end("in", 15_000)  # the inbound leg ends first: B stays the outbound's
    assert v_in is not None and v_in.verdict is Verdict.CLEAN
    assert sup.flows.sharers(A, B) == []
    assert sup.flows.classify(B, A) == ("out", Party.CALLEE)
    before = sup.dialogs["out"].callee.packets
    feed(sup, packets(speech_like(1.0, seed=8), 15_100, ssrc=0x88), B, A)
    assert sup.dialogs["out"].callee.packets == before + 50


def test_a_new_offer_naming_a_live_dialogs_address_shares_it_an_ended_ones_takes_it() -> None:
    """A new dialog's offer naming an address a dialog that has not ended holds is a
    second leg of the same media (a B2BUA with direct media): both keep it. Once a
    dialog has ended, its address named again is a reused port: taken over."""
    sup = MediaSupervisor()
    sup.offer("old", 0, sdp(*CALLER))
    sup.answer("old", 100, sdp(*CALLEE))
    sup.offer("new", 5000, sdp(*CALLER))
    assert sup.flows.classify(CALLEE, CALLER) == ("new", Party.CALLEE)
    assert sup.flows.sharers(CALLEE, CALLER) == [("old", Party.CALLEE)]
    sup.end("new", 6000)
    sup.end("old", 6000)
    sup.offer("third", 7000, sdp(*CALLER))
    assert sup.flows.classify(CALLEE, CALLER) == ("third", Party.CALLEE)
    assert sup.flows.sharers(CALLEE, CALLER) == []
