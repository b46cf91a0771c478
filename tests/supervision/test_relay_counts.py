"""Media facts from a relay's counters (rtpengine's ng ``query``) instead of captured
packets: ``MediaSupervisor.media_seen`` and ``CallControl.on_media_count`` give the
billing start, no-media and late-media verdicts as packets would."""

from __future__ import annotations

import json
from decimal import Decimal

from sidecar.charging import EndCall
from sidecar.kamailio.events import Answer, End, Offer
from sidecar.supervision.flows import Party
from sidecar.supervision.media import MediaConfig, MediaSupervisor, MediaVerdict, Verdict

from ..charging.harness import T0
from .media_gen import sdp
from .test_calls import CALLEE, CALLER, Lab, dialog

ANSWER = 3000


def counted(counts: list[tuple[int, int]], *, early_sdp: bool = False, end_ms: int = 9000,
            config: MediaConfig | None = None) -> tuple[MediaSupervisor, MediaVerdict]:
    """One dialog answered at 3 s whose callee's media is known only from (time, packets
    in all) counts."""
    sup = MediaSupervisor(config)
    sup.offer("c1", 0, sdp(*CALLER, origin="alice 11 1"))
    if early_sdp:
        sup.provisional("c1", 400, 183, sdp(*CALLEE, origin="bob 22 1"))
    sup.answer("c1", ANSWER, sdp(*CALLEE, origin="bob 22 1"))
    for ts, n in counts:
        sup.media_seen("c1", Party.CALLEE, ts, n, n * 172)
    v = sup.end("c1", end_ms)
    assert v is not None
    return sup, v


def test_media_counted_right_after_the_answer_bills_from_the_200_ok() -> None:
    _, v = counted([(3005, 0), (3255, 12), (3505, 25)])
    assert v.verdict is Verdict.CLEAN and v.billable_ms == ANSWER
    callee = v.evidence["callee"]
    assert callee["first_after_answer_ms"] == 3255 and callee["packets"] == 25
    assert callee["octets"] == 25 * 172 and callee["before_answer"] == 0
    assert v.evidence["media_delay_ms"] == 255
    assert v.evidence["source"] == "rtpengine"


def test_no_packets_counted_after_the_answer_is_no_media() -> None:
    _, v = counted([(3005, 0), (3255, 0), (6000, 0), (8900, 0)])
    assert v.verdict is Verdict.NO_MEDIA and v.billable_ms is None
    assert v.evidence["source"] == "rtpengine"
    assert "no media from the callee" in v.reason_text


def test_no_answer_from_the_relay_proves_nothing() -> None:
    """rtpengine never answered a query for the call: billed from the 200 OK, no FAS
    verdict (a failure to reach rtpengine is never 'no media')."""
    sup, v = counted([])
    assert v.verdict is Verdict.NOT_CAPTURED and v.billable_ms == ANSWER
    assert "source" not in v.evidence and sup.not_captured == 1


def test_late_media_is_billed_from_the_count_that_first_shows_it() -> None:
    counts = [(3005, 0)] + [(t, 0) for t in range(3255, 7755, 250)] + [(7755, 9), (8005, 21)]
    _, v = counted(counts, end_ms=12_000)
    assert v.verdict is Verdict.LATE_MEDIA and v.billable_ms == 7755
    assert "4.75 s after the 200 OK" in v.reason_text


def test_early_media_counted_across_the_answer_is_not_media_after_it() -> None:
    """The first count's window reaches back to the INVITE: what it shows is early
    media. A carrier that played early media and went quiet at its 200 OK: no media."""
    _, v = counted([(3005, 150), (3255, 150), (8000, 150)], early_sdp=True)
    assert v.verdict is Verdict.NO_MEDIA and v.billable_ms is None
    assert v.evidence["callee"]["before_answer"] == 150
    assert "only early media before the 200 OK (150 packets)" in v.reason_text


def test_early_media_that_goes_on_after_the_answer_is_a_clean_call() -> None:
    _, v = counted([(3005, 150), (3255, 162)], early_sdp=True)
    assert v.verdict is Verdict.CLEAN and v.billable_ms == ANSWER
    assert v.evidence["callee"]["before_answer"] == 150
    assert v.evidence["callee"]["first_after_answer_ms"] == 3255


def test_counts_never_give_ringback_or_silence() -> None:
    """Counters carry no audio: a long call counted throughout is clean, with no silence
    evidence."""
    counts = [(3005, 0)] + [(t, (t - 3005) // 20) for t in range(3255, 60_000, 250)]
    _, v = counted(counts, end_ms=60_000)
    assert v.verdict is Verdict.CLEAN
    assert "silent_frames" not in v.evidence and "ringback_at_ms" not in v.evidence


def test_the_return_value_says_when_the_answer_was_confirmed() -> None:
    sup = MediaSupervisor()
    assert not sup.media_seen("nobody", Party.CALLEE, 10, 5)  # an unknown dialog
    sup.offer("c1", 0, sdp(*CALLER))
    sup.answer("c1", ANSWER, sdp(*CALLEE))
    assert [sup.media_seen("c1", Party.CALLEE, t, n) for t, n in
            [(3005, 0), (3255, 0), (3505, 4), (3755, 9)]] == [False, False, True, False]
    assert not sup.media_seen("c1", Party.CALLER, 3760, 30)  # the caller's: no confirmation
    d = sup.dialogs["c1"]
    assert d.caller.packets == 30 and d.callee.packets == 9
    assert d.callee.last_ms == 3755


def test_a_relay_counting_afresh_adds_its_new_total() -> None:
    sup = MediaSupervisor()
    sup.offer("c1", 0, sdp(*CALLER))
    sup.answer("c1", ANSWER, sdp(*CALLEE))
    for t, n in [(3005, 0), (3255, 40), (3505, 50), (3755, 7)]:
        sup.media_seen("c1", Party.CALLEE, t, n)
    assert sup.dialogs["c1"].callee.packets == 57


def answered(lab: Lab, ref: str, end_at: int,
             counts: list[tuple[int, int | None]]) -> None:
    """One call of the charging lab, its callee's media known from counts (ms after
    T0; None: time passes, no count)."""
    lab.event(Offer(dialog(ref, T0), 1, 2, "alice", "Alice", "", "493012345", "sip:x",
                    "493012345", "acme", "127.0.0.1", 5060, sdp(*CALLER)), T0)
    lab.event(Answer(dialog(ref, T0 + ANSWER), sdp(*CALLEE), "carrier-a"), T0 + ANSWER)
    for t, n in counts:
        lab.actions += lab.control.tick(T0 + t)
        if n is None:
            continue
        lab.actions += lab.control.on_media_count(ref, Party.CALLEE, T0 + t, n, n * 172)
    lab.event(End(dialog(ref, T0 + end_at), "caller", "bye", T0 + ANSWER), T0 + end_at)


def test_counts_bill_a_call_from_the_200_ok() -> None:
    lab = Lab()
    answered(lab, "ok", 63_000, [(3005, 0), (3255, 12)])
    c = lab.cdr("ok")
    assert c["disposition"] == "answered" and c["fas_verdict"] == ""
    assert c["billable_ms"] == T0 + ANSWER and c["billed_seconds"] == 60
    assert c["media_ms"] == T0 + 3255
    assert json.loads(str(c["media"]))["source"] == "rtpengine"
    assert lab.sim.balance("acme") == Decimal("9.94")
    assert lab.control.awaiting_media() == {}


def test_counts_without_media_do_not_bill_and_late_counts_move_the_start() -> None:
    lab = Lab()
    answered(lab, "dead", 63_000, [(3005, 0), (3255, 0), (30_000, 0)])
    answered(lab, "late", 33_000, [(3005, 0), (8000, 0), (13_000, 50)])
    dead, late = lab.cdr("dead"), lab.cdr("late")
    assert dead["disposition"] == "no-media" and dead["fas_verdict"] == "no-media"
    assert Decimal(str(dead["charged"])) == 0
    assert late["fas_verdict"] == "late-media" and late["billable_ms"] == T0 + 13_000
    assert late["billed_seconds"] == 20
    assert lab.sim.balance("acme") == Decimal("9.98")


def test_a_call_is_ended_for_lack_of_media_only_once_the_relay_has_answered() -> None:
    lab = Lab(media=MediaConfig(end_without_media_ms=10_000))
    # rtpengine never answered: time passes, no count, the call is not ended
    answered(lab, "blind", 30_000, [(3005, None), (13_500, None), (29_000, None)])
    assert not [a for a in lab.actions if isinstance(a, EndCall)]
    answered(lab, "dead", 30_000, [(3005, 0), (3255, 0), (13_500, 0)])
    ends = [a for a in lab.actions if isinstance(a, EndCall)]
    assert [a.call_ref for a in ends] == ["dead"] and "no media" in ends[0].reason
    assert lab.cdr("blind")["fas_verdict"] == "media-not-captured"
