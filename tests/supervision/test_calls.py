"""Call control: media verdicts change what is billed, on a real SQLite ledger."""

from __future__ import annotations

import json
from decimal import Decimal

from sidecar.charging import Charger, EndCall
from sidecar.charging.model import AccountKind
from sidecar.kamailio.events import Answer, Dialog, Early, End, Failed, Offer
from sidecar.store.accounts import verify_ledger
from sidecar.supervision.calls import CallControl, ControlConfig
from sidecar.supervision.media import MediaConfig, MediaSupervisor

from ..charging.harness import T0, Sim
from .media_gen import packets, quiet, sdp, speech_like, tone

CALLER = ("127.0.0.1", 6000)
CALLEE = ("127.0.0.1", 7000)


def dialog(ref: str, t: int) -> Dialog:
    return Dialog(ref, 1, 2, t * 1000)


class Lab:
    def __init__(self, *, enforce: bool = True, media: MediaConfig | None = None) -> None:
        self.sim = Sim()
        self.sim.account("acme", "10")
        self.control = CallControl(self.sim.charger, MediaSupervisor(media),
                                   ControlConfig(enforce=enforce))
        self.actions: list[object] = []

    def event(self, ev: object, t: int) -> None:
        self.control.tick(t)
        _, actions = self.control.on_event(ev, t)  # type: ignore[arg-type]
        self.actions += actions

    def call(self, ref: str, callee_audio: list[tuple[int, bytes]] | None, *,
             answer: bool = True, end_at: int = 63_000, number: str = "493012345",
             caller_talks: bool = True) -> None:
        """One call; the caller's media (a second of it after the 200 OK) shows that the
        capture sees the call's media path, unless ``caller_talks`` is False."""
        t = T0
        self.event(Offer(dialog(ref, t), 1, 2, "alice", "Alice", "", number, "sip:x", number,
                         "acme", "127.0.0.1", 5060, sdp(*CALLER)), t)
        self.event(Early(dialog(ref, t + 100), 180, ""), t + 100)
        if answer:
            self.event(Answer(dialog(ref, t + 3000), sdp(*CALLEE), "carrier-a"), t + 3000)
            if caller_talks:
                for ts, data in packets(speech_like(1.0), 3010):
                    self.actions += self.control.on_packet(T0 + ts, *CALLER, *CALLEE, data)
        for ts, data in callee_audio or []:
            self.actions += self.control.on_packet(T0 + ts, *CALLEE, *CALLER, data)
        if answer:
            self.event(End(dialog(ref, T0 + end_at), "caller", "bye", T0 + 3000), T0 + end_at)
        else:
            self.event(Failed(dialog(ref, T0 + end_at), 486, "Busy Here", "carrier-a"),
                       T0 + end_at)

    def cdr(self, ref: str) -> dict[str, object]:
        rows = [dict(r) for r in self.sim.cdrs() if r["call_ref"] == ref]
        assert len(rows) == 1
        return rows[0]


def test_clean_call_is_charged_from_the_answer_with_route_and_ringing() -> None:
    lab = Lab()
    lab.call("ok", packets(speech_like(60.0), 3020))
    c = lab.cdr("ok")
    assert c["disposition"] == "answered" and c["fas_verdict"] == ""
    assert c["billable_ms"] == T0 + 3000 and c["billed_seconds"] == 60
    assert Decimal(str(c["charged"])) == Decimal("0.06") and Decimal(str(c["credited"])) == 0
    assert c["route"] == "carrier-a" and c["ringing_ms"] == T0 + 100
    assert c["media_ms"] == T0 + 3020
    assert json.loads(str(c["media"]))["callee"]["packets"] == 3000
    assert lab.sim.balance("acme") == Decimal("9.94")


def test_no_media_call_is_not_billed_and_releases_its_reservation() -> None:
    lab = Lab()
    lab.call("dead", None)
    c = lab.cdr("dead")
    assert c["disposition"] == "no-media" and c["fas_verdict"] == "no-media"
    assert Decimal(str(c["cost"])) == 0 and Decimal(str(c["charged"])) == 0
    assert c["billable_ms"] is None
    # Up for 60 s as signalled, none of it billable.
    assert c["signalled_ms"] == 60_000 and c["duration_ms"] == 0
    assert lab.sim.balance("acme") == Decimal("10")
    assert all(not chk.problems for chk in verify_ledger(lab.sim.conn))


def test_ringback_call_is_charged_then_credited_with_the_reason() -> None:
    lab = Lab()
    lab.call("fas", packets(tone((425,), 1.0) + quiet(59.0), 3020))
    c = lab.cdr("fas")
    assert c["fas_verdict"] == "ringback"
    assert Decimal(str(c["charged"])) == Decimal("0.06")
    assert Decimal(str(c["credited"])) == Decimal("0.06")
    assert "425 Hz" in str(c["fas_reasons"])
    credit = lab.sim.conn.execute(
        "SELECT amount, note FROM ledger WHERE kind = 'credit' AND call_ref = 'fas'").fetchall()
    assert len(credit) == 1 and Decimal(credit[0][0]) == Decimal("0.06")
    assert "ringback" in credit[0][1] and "425 Hz" in credit[0][1]
    assert lab.sim.balance("acme") == Decimal("10")
    assert all(not chk.problems for chk in verify_ledger(lab.sim.conn))


def test_late_media_is_billed_from_the_first_callee_packet() -> None:
    lab = Lab()
    lab.call("late", packets(speech_like(20.0), 13_000), end_at=33_000)
    c = lab.cdr("late")
    assert c["fas_verdict"] == "late-media" and c["billable_ms"] == T0 + 13_000
    assert c["billed_seconds"] == 20 and c["answered_ms"] == T0 + 3000
    assert c["signalled_ms"] == 30_000 and c["duration_ms"] == 20_000


def test_observe_mode_records_the_verdict_but_bills_from_the_answer() -> None:
    lab = Lab(enforce=False)
    lab.call("dead", None)
    c = lab.cdr("dead")
    assert c["disposition"] == "answered" and c["fas_verdict"] == "no-media"
    assert c["billed_seconds"] == 60 and Decimal(str(c["credited"])) == 0


def test_failed_call_keeps_its_route_and_early_media_is_never_billed() -> None:
    lab = Lab()
    lab.call("busy", None, answer=False, end_at=5000)
    c = lab.cdr("busy")
    assert c["disposition"] == "failed" and c["route"] == "carrier-a" and c["sip_code"] == 486
    assert c["signalled_ms"] is None
    assert Decimal(str(c["cost"])) == 0


def test_answered_call_without_media_is_ended_when_configured() -> None:
    lab = Lab(media=MediaConfig(end_without_media_ms=10_000))
    t = T0
    lab.event(Offer(dialog("x", t), 1, 2, "alice", "", "", "493012345", "sip:x", "493012345",
                    "acme", "127.0.0.1", 5060, sdp(*CALLER)), t)
    lab.event(Answer(dialog("x", t + 1000), sdp(*CALLEE), ""), t + 1000)
    for ts, data in packets(speech_like(1.0), 1010):  # the caller talks: media is captured
        lab.control.on_packet(T0 + ts, *CALLER, *CALLEE, data)
    assert lab.control.next_deadline() is not None
    actions = lab.control.tick(t + 11_000)
    ends = [a for a in actions if isinstance(a, EndCall)]
    assert len(ends) == 1 and ends[0].reason.startswith("no media 10.0 s")
    lab.event(End(dialog("x", t + 11_050), "proxy", "rpc", t + 1000), t + 11_050)
    c = lab.cdr("x")
    assert c["disposition"] == "no-media" and c["end_reason"].startswith("no media")


def test_duplicate_end_events_charge_once() -> None:
    lab = Lab()
    lab.call("dup", packets(speech_like(10.0), 3020), end_at=13_000)
    lab.event(End(dialog("dup", T0 + 14_000), "callee", "bye", T0 + 3000), T0 + 14_000)
    assert len([r for r in lab.sim.cdrs() if r["call_ref"] == "dup"]) == 1
    assert lab.sim.balance("acme") == Decimal("9.99")


def test_charger_without_media_supervision_bills_from_the_answer() -> None:
    sim = Sim()
    sim.account("acme", "10", AccountKind.PREPAID)
    control = CallControl(Charger(sim.ledger, sim.charger.plans))
    t = T0
    control.on_event(Offer(dialog("m", t), 1, 2, "a", "", "", "493012345", "", "493012345",
                           "acme", "", 0, ""), t)
    control.on_event(Answer(dialog("m", t + 500), "", ""), t + 500)
    control.on_event(End(dialog("m", t + 30_500), "caller", "bye", t + 500), t + 30_500)
    row = next(r for r in sim.cdrs() if r["call_ref"] == "m")
    assert row["billed_seconds"] == 30 and row["fas_verdict"] == "" and row["media"] == ""


def test_a_capture_without_rtp_bills_from_the_answer_with_no_fas_verdict() -> None:
    """Signalling alone in the capture (or the wrong interface): no media from either side
    proves nothing. Billed from the 200 OK, verdict media-not-captured, no FAS credit, and
    a call is not ended for lack of media it could not have seen."""
    lab = Lab(media=MediaConfig(end_without_media_ms=10_000))
    lab.call("blind", None, caller_talks=False)
    c = lab.cdr("blind")
    assert c["disposition"] == "answered" and c["fas_verdict"] == "media-not-captured"
    assert c["billable_ms"] == T0 + 3000 and c["billed_seconds"] == 60
    assert Decimal(str(c["charged"])) == Decimal("0.06") and Decimal(str(c["credited"])) == 0
    assert "media not captured" in str(c["fas_reasons"])
    assert json.loads(str(c["media"]))["media_captured"] is False
    assert not [a for a in lab.actions if isinstance(a, EndCall)]
    assert lab.control.media is not None and lab.control.media.not_captured == 1


def test_rtp_of_another_call_shows_the_capture_sees_media() -> None:
    """Once the capture has carried RTP (of any call) in the call's address family, a
    call without any media of its own is no-media (FAS), as before."""
    lab = Lab()
    lab.call("talking", packets(speech_like(5.0), 3020), end_at=10_000)
    lab.call("dead", None, caller_talks=False)
    assert lab.cdr("talking")["fas_verdict"] == ""
    c = lab.cdr("dead")
    assert c["disposition"] == "no-media" and c["fas_verdict"] == "no-media"
    assert Decimal(str(c["charged"])) == 0
