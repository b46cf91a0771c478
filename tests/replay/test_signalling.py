"""SipTracker: the SIP of a capture as Kamailio's events.

Messages are built as a capture on the proxy host sees them: each one twice (customer ->
proxy, then proxy -> carrier or back), the relayed copy with the proxy's Via on top and
a Record-Route, To tags on replies, and UDP retransmissions where a test wants them.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.kamailio.events import Answer, Dialog, Early, End, Event, Failed, MediaUpdate, Offer
from sidecar.media.pcap import CapturedPayload, Transport, read_capture
from sidecar.replay import SipTracker
from sidecar.replay.signalling import LINGER_S, MAX_STREAM_BUFFER, name_addr, uri_param, uri_user
from tests.media.packets import ethernet, ipv4, udp

CALLER = ("192.0.2.10", 5062)
PROXY = ("10.0.0.1", 5060)
CARRIER = ("198.51.100.20", 5060)
ROUTE = "198.51.100.20:5060"
T0 = 1_700_000_000.0
HOP = 0.0004  # how long the proxy takes to relay a message

SDP_CALLER = (
    "v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=-\r\n"
    "c=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
)
SDP_CALLEE = (
    "v=0\r\no=carrier 1 1 IN IP4 198.51.100.20\r\ns=-\r\n"
    "c=IN IP4 198.51.100.20\r\nt=0 0\r\nm=audio 50000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
)
SDP_CALLEE_2 = SDP_CALLEE.replace("1 1 IN", "1 2 IN").replace("50000", "50002")

COMPACT = {"via": "v", "from": "f", "to": "t", "call-id": "i", "content-length": "l",
           "content-type": "c", "contact": "m"}

Headers = Sequence[tuple[str, str]]


def message(start: str, headers: Headers, body: str = "", *, compact: bool = False) -> bytes:
    """A SIP message: start line, headers, Content-Type and Content-Length, body."""
    fields = list(headers)
    if body:
        fields.append(("Content-Type", "application/sdp"))
    fields.append(("Content-Length", str(len(body.encode()))))
    if compact:
        fields = [(COMPACT.get(k.lower(), k), v) for k, v in fields]
    lines = [start, *(f"{k}: {v}" for k, v in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def packet(ts: float, src: tuple[str, int], dst: tuple[str, int], payload: bytes,
           transport: Transport = "udp") -> CapturedPayload:
    return CapturedPayload(ts, src[0], src[1], dst[0], dst[1], transport, payload)


@dataclass
class ProxiedCall:
    """One call from CALLER through PROXY to CARRIER; methods return both copies."""

    call_id: str = "a84b4c76e66710@192.0.2.10"
    from_tag: str = "1928301774"
    to_tag: str = "a6c85cf"
    ruri: str = "sip:+4930123456@10.0.0.1;ac=ACME"
    from_header: str = '"Alice Smith" <sip:alice@example.com>'
    to_header: str = "<sip:+4930123456@example.com>"
    extra: Headers = (("P-Asserted-Identity", "<sip:+15551230001@example.com>"),)
    compact: bool = False

    def _caller_via(self, branch: str) -> tuple[str, str]:
        return ("Via", f"SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK{branch};rport")

    def _proxy_via(self, branch: str) -> tuple[str, str]:
        return ("Via", f"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKp{branch}")

    def _carrier_via(self, branch: str) -> tuple[str, str]:
        return ("Via", f"SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bKc{branch}")

    def _caller_side(self, tagged: bool = True) -> tuple[str, str]:
        return self.from_header, f"{self.to_header};tag={self.to_tag}" if tagged \
            else self.to_header

    def _msg(self, start: str, headers: Headers, body: str) -> bytes:
        return message(start, headers, body, compact=self.compact)

    def invite(self, ts: float, *, sdp: str = SDP_CALLER, cseq: int = 1,
               extra: Headers = ()) -> list[CapturedPayload]:
        """The initial INVITE: from the caller, then relayed to the carrier."""
        branch = f"i{cseq}"
        common = [("From", f"{self.from_header};tag={self.from_tag}"), ("To", self.to_header),
                  ("Call-ID", self.call_id), ("CSeq", f"{cseq} INVITE"),
                  ("Contact", "<sip:alice@192.0.2.10:5062>"), *self.extra, *extra]
        first = self._msg(f"INVITE {self.ruri} SIP/2.0",
                          [self._caller_via(branch), ("Max-Forwards", "70"), *common], sdp)
        relayed = self._msg(
            "INVITE sip:+4930123456@198.51.100.20:5060 SIP/2.0",
            [self._proxy_via(branch), self._caller_via(branch),
             ("Record-Route", f"<sip:10.0.0.1;lr;ftag={self.from_tag};did=7b1.a1>"),
             ("Max-Forwards", "69"), *common], sdp)
        return [packet(ts, CALLER, PROXY, first), packet(ts + HOP, PROXY, CARRIER, relayed)]

    def reply(self, ts: float, code: int, reason: str, *, sdp: str = "", cseq: int = 1,
              method: str = "INVITE", tagged: bool = True) -> list[CapturedPayload]:
        """The carrier's reply to a request of the caller, then relayed to the caller."""
        branch = f"i{cseq}" if method in ("INVITE", "CANCEL") else f"{method.lower()}{cseq}"
        f, t = self._caller_side(tagged)
        common = [("From", f"{f};tag={self.from_tag}"), ("To", t), ("Call-ID", self.call_id),
                  ("CSeq", f"{cseq} {method}")]
        if code < 300 and code > 100:
            common += [("Contact", "<sip:carrier@198.51.100.20:5060>"),
                       ("Record-Route", f"<sip:10.0.0.1;lr;ftag={self.from_tag};did=7b1.a1>")]
        start = f"SIP/2.0 {code} {reason}"
        first = self._msg(start, [self._proxy_via(branch), self._caller_via(branch), *common],
                          sdp)
        relayed = self._msg(start, [self._caller_via(branch), *common], sdp)
        return [packet(ts, CARRIER, PROXY, first), packet(ts + HOP, PROXY, CALLER, relayed)]

    def caller_request(self, ts: float, method: str, cseq: int, *, sdp: str = "",
                       tagged: bool = True) -> list[CapturedPayload]:
        """An ACK, BYE, CANCEL, re-INVITE or UPDATE from the caller, then relayed."""
        branch = f"i{cseq}" if method == "CANCEL" else f"{method.lower()}{cseq}"
        f, t = self._caller_side(tagged)
        common = [("From", f"{f};tag={self.from_tag}"), ("To", t), ("Call-ID", self.call_id),
                  ("CSeq", f"{cseq} {method}"), ("Max-Forwards", "70")]
        first = self._msg(
            f"{method} sip:carrier@198.51.100.20:5060 SIP/2.0",
            [self._caller_via(branch),
             ("Route", f"<sip:10.0.0.1;lr;ftag={self.from_tag};did=7b1.a1>"), *common], sdp)
        relayed = self._msg(f"{method} sip:carrier@198.51.100.20:5060 SIP/2.0",
                            [self._proxy_via(branch), self._caller_via(branch), *common], sdp)
        return [packet(ts, CALLER, PROXY, first), packet(ts + HOP, PROXY, CARRIER, relayed)]

    def callee_request(self, ts: float, method: str, cseq: int, *,
                       sdp: str = "") -> list[CapturedPayload]:
        """A BYE, re-INVITE or UPDATE from the callee (From and To swapped), then relayed."""
        branch = f"{method.lower()}{cseq}"
        common = [("From", f"{self.to_header};tag={self.to_tag}"),
                  ("To", f"{self.from_header};tag={self.from_tag}"),
                  ("Call-ID", self.call_id), ("CSeq", f"{cseq} {method}"),
                  ("Max-Forwards", "70")]
        first = self._msg(
            f"{method} sip:alice@192.0.2.10:5062 SIP/2.0",
            [self._carrier_via(branch),
             ("Route", f"<sip:10.0.0.1;lr;ftag={self.from_tag};did=7b1.a1>"), *common], sdp)
        relayed = self._msg(f"{method} sip:alice@192.0.2.10:5062 SIP/2.0",
                            [self._proxy_via(branch), self._carrier_via(branch), *common], sdp)
        return [packet(ts, CARRIER, PROXY, first), packet(ts + HOP, PROXY, CALLER, relayed)]

    def caller_reply(self, ts: float, code: int, reason: str, method: str, cseq: int, *,
                     sdp: str = "") -> list[CapturedPayload]:
        """The caller's reply to a request of the callee, then relayed to the carrier."""
        branch = f"{method.lower()}{cseq}"
        common = [("From", f"{self.to_header};tag={self.to_tag}"),
                  ("To", f"{self.from_header};tag={self.from_tag}"),
                  ("Call-ID", self.call_id), ("CSeq", f"{cseq} {method}")]
        start = f"SIP/2.0 {code} {reason}"
        first = self._msg(start, [self._proxy_via(branch), self._carrier_via(branch), *common],
                          sdp)
        relayed = self._msg(start, [self._carrier_via(branch), *common], sdp)
        return [packet(ts, CALLER, PROXY, first), packet(ts + HOP, PROXY, CARRIER, relayed)]


def normal_call(call: ProxiedCall, t: float = T0) -> list[CapturedPayload]:
    """INVITE, 100, 180, 200 (SDP), ACK, caller BYE 30 s later, 200."""
    return [
        *call.invite(t),
        call.reply(t - HOP + 0.0002, 100, "Trying", tagged=False)[1],  # from the proxy
        *call.reply(t + 1, 180, "Ringing"),
        *call.reply(t + 5, 200, "OK", sdp=SDP_CALLEE),
        *call.caller_request(t + 5.1, "ACK", 1),
        *call.caller_request(t + 35, "BYE", 2),
        *call.reply(t + 35.01, 200, "OK", method="BYE", cseq=2),
    ]


def run(packets: Iterable[CapturedPayload], tracker: SipTracker | None = None,
        *, finish: bool = True) -> list[Event]:
    """Feed payloads in capture order (as a replay does); the events, finish() included."""
    tracker = tracker or SipTracker()
    events: list[Event] = []
    for p in sorted(packets, key=lambda p: p.timestamp):
        events += tracker.feed(p)
    if finish:
        events += tracker.finish()
    return events


def us(ts: float) -> int:
    return round(ts * 1_000_000)


def kinds(events: Sequence[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# --- calls ----------------------------------------------------------------------------
def test_normal_call_gives_offer_early_answer_end() -> None:
    call = ProxiedCall()
    tracker = SipTracker()
    events = run(normal_call(call), tracker)
    assert kinds(events) == ["Offer", "Early", "Answer", "End"]
    offer, early, answer, end = events
    assert offer == Offer(
        dialog=Dialog(call.call_id, 0, 0, us(T0)), tindex=0, tlabel=0,
        from_user="alice", from_display="Alice Smith", pai_user="+15551230001",
        to_user="+4930123456", ruri="sip:+4930123456@10.0.0.1;ac=ACME",
        ruri_user="+4930123456", account_code="ACME", src_ip=CALLER[0], src_port=CALLER[1],
        sdp=SDP_CALLER)
    assert early == Early(Dialog(call.call_id, 0, 0, us(T0 + 1)), 180, "")
    assert answer == Answer(Dialog(call.call_id, 0, 0, us(T0 + 5)), SDP_CALLEE, ROUTE)
    assert end == End(Dialog(call.call_id, 0, 0, us(T0 + 35)), "caller", "bye",
                      us(T0 + 5) // 1000)
    assert tracker.stats.dialogs == 1
    assert tracker.stats.messages == 13
    assert tracker.stats.bad == {}


def test_proxy_copies_and_retransmissions_give_one_event_each_at_the_first_copy() -> None:
    call = ProxiedCall()
    packets = normal_call(call)
    # Every UDP message retransmitted 0.5 s and 1.5 s later (timer A/E doubling).
    resent = [p._replace(timestamp=p.timestamp + d) for p in packets for d in (0.5, 1.5)]
    tracker = SipTracker()
    events = run(packets + resent, tracker)
    assert kinds(events) == ["Offer", "Early", "Answer", "End"]
    assert [e.dialog.ts_us for e in events] == [us(T0), us(T0 + 1), us(T0 + 5), us(T0 + 35)]
    assert tracker.stats.duplicates >= 20


def test_183_with_sdp_then_200() -> None:
    call = ProxiedCall()
    events = run([
        *call.invite(T0),
        *call.reply(T0 + 0.5, 183, "Session Progress", sdp=SDP_CALLEE),
        *call.reply(T0 + 0.6, 183, "Session Progress", sdp=SDP_CALLEE),  # retransmitted
        *call.reply(T0 + 8, 200, "OK", sdp=SDP_CALLEE),
        *call.caller_request(T0 + 8.1, "ACK", 1),
    ])
    assert kinds(events) == ["Offer", "Early", "Answer"]
    assert events[1] == Early(Dialog(call.call_id, 0, 0, us(T0 + 0.5)), 183, SDP_CALLEE)
    assert isinstance(events[2], Answer) and events[2].sdp == SDP_CALLEE


def test_distinct_provisional_replies_each_give_an_early() -> None:
    call = ProxiedCall()
    events = run([
        *call.invite(T0),
        *call.reply(T0 + 0.5, 180, "Ringing"),
        *call.reply(T0 + 1.0, 183, "Session Progress", sdp=SDP_CALLEE),
        *call.reply(T0 + 2.0, 183, "Session Progress", sdp=SDP_CALLEE_2),  # new early SDP
    ])
    assert [(e.code, e.sdp) for e in events if isinstance(e, Early)] == [
        (180, ""), (183, SDP_CALLEE), (183, SDP_CALLEE_2)]


def test_busy_486_fails_with_code_reason_and_route() -> None:
    call = ProxiedCall()
    tracker = SipTracker()
    events = run([
        *call.invite(T0),
        *call.reply(T0 + 1, 180, "Ringing"),
        *call.reply(T0 + 3, 486, "Busy Here"),
        *call.reply(T0 + 3.5, 486, "Busy Here"),  # retransmitted before the ACK
        *call.caller_request(T0 + 3.6, "ACK", 1),
    ], tracker)
    assert kinds(events) == ["Offer", "Early", "Failed"]
    assert events[2] == Failed(Dialog(call.call_id, 0, 0, us(T0 + 3)), 486, "Busy Here", ROUTE)
    assert tracker.stats.bad == {}


def test_cancel_ends_with_the_487() -> None:
    call = ProxiedCall()
    events = run([
        *call.invite(T0),
        *call.reply(T0 + 1, 180, "Ringing"),
        *call.caller_request(T0 + 4, "CANCEL", 1, tagged=False),
        *call.reply(T0 + 4.01, 200, "OK", method="CANCEL", tagged=False),
        *call.reply(T0 + 4.02, 487, "Request Terminated"),
        *call.caller_request(T0 + 4.03, "ACK", 1),
    ])
    assert kinds(events) == ["Offer", "Early", "Failed"]
    assert events[2] == Failed(Dialog(call.call_id, 0, 0, us(T0 + 4.02)), 487,
                               "Request Terminated", ROUTE)


def test_cancel_whose_487_is_missing_fails_at_finish() -> None:
    call = ProxiedCall()
    tracker = SipTracker()
    fed = run([*call.invite(T0), *call.caller_request(T0 + 4, "CANCEL", 1, tagged=False)],
              tracker, finish=False)
    assert kinds(fed) == ["Offer"]
    assert tracker.finish() == [
        Failed(Dialog(call.call_id, 0, 0, us(T0 + 4)), 487, "Request Terminated", ROUTE)]


def test_407_challenge_then_retried_invite_is_one_call() -> None:
    call = ProxiedCall()
    tracker = SipTracker()
    events = run([
        *call.invite(T0),
        *call.reply(T0 + 0.05, 407, "Proxy Authentication Required"),
        *call.caller_request(T0 + 0.06, "ACK", 1),
        *call.invite(T0 + 0.1, cseq=2,
                     extra=[("Proxy-Authorization", 'Digest username="alice", nonce="x"')]),
        *call.reply(T0 + 1, 180, "Ringing", cseq=2),
        *call.reply(T0 + 4, 200, "OK", sdp=SDP_CALLEE, cseq=2),
        *call.caller_request(T0 + 4.1, "ACK", 2),
        *call.caller_request(T0 + 64, "BYE", 3),
    ], tracker)
    assert kinds(events) == ["Offer", "Early", "Answer", "End"]
    assert events[0].dialog.ts_us == us(T0)  # the Offer is the first INVITE's
    assert isinstance(events[3], End) and events[3].start_ts_ms == us(T0 + 4) // 1000
    assert tracker.stats.auth_retries == 1
    assert tracker.stats.dialogs == 1


def test_401_never_retried_fails_at_finish_with_the_challenge_time() -> None:
    call = ProxiedCall()
    tracker = SipTracker()
    fed = run([*call.invite(T0), *call.reply(T0 + 0.05, 401, "Unauthorized"),
               *call.caller_request(T0 + 0.06, "ACK", 1)], tracker, finish=False)
    assert kinds(fed) == ["Offer"]
    assert tracker.finish() == [
        Failed(Dialog(call.call_id, 0, 0, us(T0 + 0.05)), 401, "Unauthorized", ROUTE)]
    assert tracker.finish() == []


def test_challenge_not_retried_within_linger_fails_during_the_capture() -> None:
    call, other = ProxiedCall(), ProxiedCall(call_id="other@192.0.2.10")
    tracker = SipTracker()
    events = run([*call.invite(T0), *call.reply(T0 + 0.05, 407, "Proxy Auth Required"),
                  *other.invite(T0 + LINGER_S + 1)], tracker, finish=False)
    assert kinds(events) == ["Offer", "Failed", "Offer"]
    assert events[1] == Failed(Dialog(call.call_id, 0, 0, us(T0 + 0.05)), 407,
                               "Proxy Auth Required", ROUTE)
    assert tracker.active_dialogs == 1  # the failed call is forgotten already


def test_late_offer_sdp_in_200_and_ack() -> None:
    call = ProxiedCall()
    events = run([
        *call.invite(T0, sdp=""),
        *call.reply(T0 + 1, 180, "Ringing"),
        *call.reply(T0 + 5, 200, "OK", sdp=SDP_CALLEE),
        *call.reply(T0 + 5.5, 200, "OK", sdp=SDP_CALLEE),  # retransmitted 2xx
        *call.caller_request(T0 + 5.6, "ACK", 1, sdp=SDP_CALLER),
        *call.caller_request(T0 + 5.7, "ACK", 1, sdp=SDP_CALLER),  # ACK to the resent 2xx
    ])
    assert kinds(events) == ["Offer", "Early", "Answer", "MediaUpdate"]
    assert isinstance(events[0], Offer) and events[0].sdp == ""
    assert isinstance(events[2], Answer) and events[2].sdp == SDP_CALLEE
    assert events[3] == MediaUpdate(Dialog(call.call_id, 0, 0, us(T0 + 5.6)), "caller",
                                    SDP_CALLER)


def test_reinvite_from_callee_and_its_200_are_two_media_updates() -> None:
    call = ProxiedCall()
    events = run([
        *call.invite(T0),
        *call.reply(T0 + 2, 200, "OK", sdp=SDP_CALLEE),
        *call.caller_request(T0 + 2.1, "ACK", 1),
        *call.callee_request(T0 + 10, "INVITE", 1, sdp=SDP_CALLEE_2),  # callee's CSeq space
        *call.callee_request(T0 + 10.5, "INVITE", 1, sdp=SDP_CALLEE_2),  # retransmitted
        *call.caller_reply(T0 + 10.6, 200, "OK", "INVITE", 1, sdp=SDP_CALLER),
        *call.callee_request(T0 + 10.7, "ACK", 1),
        *call.callee_request(T0 + 20, "BYE", 2),
    ])
    assert kinds(events) == ["Offer", "Answer", "MediaUpdate", "MediaUpdate", "End"]
    assert events[2] == MediaUpdate(Dialog(call.call_id, 0, 0, us(T0 + 10)), "callee",
                                    SDP_CALLEE_2)
    assert events[3] == MediaUpdate(Dialog(call.call_id, 0, 0, us(T0 + 10.6)), "caller",
                                    SDP_CALLER)
    assert isinstance(events[4], End) and events[4].by == "callee"


def test_update_from_caller_and_its_200() -> None:
    call = ProxiedCall()
    events = run([
        *call.invite(T0),
        *call.reply(T0 + 2, 200, "OK", sdp=SDP_CALLEE),
        *call.caller_request(T0 + 2.1, "ACK", 1),
        *call.caller_request(T0 + 9, "UPDATE", 2, sdp=SDP_CALLER),
        *call.reply(T0 + 9.1, 200, "OK", sdp=SDP_CALLEE_2, method="UPDATE", cseq=2),
    ])
    assert [(e.side, e.sdp) for e in events if isinstance(e, MediaUpdate)] == [
        ("caller", SDP_CALLER), ("callee", SDP_CALLEE_2)]


def test_update_while_ringing_is_a_media_update_as_live() -> None:
    call = ProxiedCall()
    events = run([
        *call.invite(T0),
        *call.reply(T0 + 0.5, 183, "Session Progress", sdp=SDP_CALLEE),
        *call.caller_request(T0 + 1, "UPDATE", 2, sdp=SDP_CALLER),
        *call.reply(T0 + 1.1, 200, "OK", sdp=SDP_CALLEE_2, method="UPDATE", cseq=2),
        *call.reply(T0 + 3, 200, "OK", sdp=SDP_CALLEE_2),
    ])
    assert kinds(events) == ["Offer", "Early", "MediaUpdate", "MediaUpdate", "Answer"]
    assert [e.side for e in events if isinstance(e, MediaUpdate)] == ["caller", "callee"]


def test_bye_from_callee() -> None:
    call = ProxiedCall()
    events = run([
        *call.invite(T0),
        *call.reply(T0 + 2, 200, "OK", sdp=SDP_CALLEE),
        *call.caller_request(T0 + 2.1, "ACK", 1),
        *call.callee_request(T0 + 40, "BYE", 1),
        *call.caller_reply(T0 + 40.01, 200, "OK", "BYE", 1),
        *call.callee_request(T0 + 40.5, "BYE", 1),  # retransmitted
    ])
    assert events[-1] == End(Dialog(call.call_id, 0, 0, us(T0 + 40)), "callee", "bye",
                             us(T0 + 2) // 1000)
    assert kinds(events).count("End") == 1


def test_bye_sent_by_the_proxy_itself_is_by_proxy() -> None:
    # dlg.end_dlg: Kamailio sends a BYE to each side; the first copy is the proxy's.
    call = ProxiedCall()
    bye_to_callee = call.caller_request(T0 + 30, "BYE", 2)[1]
    events = run([
        *call.invite(T0),
        *call.reply(T0 + 2, 200, "OK", sdp=SDP_CALLEE),
        *call.caller_request(T0 + 2.1, "ACK", 1),
        call.callee_request(T0 + 30, "BYE", 2)[1]._replace(timestamp=T0 + 30),  # to the caller
        bye_to_callee._replace(timestamp=T0 + 30.0001),  # to the carrier
    ])
    assert events[-1] == End(Dialog(call.call_id, 0, 0, us(T0 + 30)), "proxy", "rpc",
                             us(T0 + 2) // 1000)


def test_bye_before_any_answer_has_start_zero() -> None:
    call = ProxiedCall()
    events = run([*call.invite(T0), *call.caller_request(T0 + 3, "BYE", 2)])
    assert events[-1] == End(Dialog(call.call_id, 0, 0, us(T0 + 3)), "caller", "bye", 0)


def test_bye_and_cancel_for_unknown_calls_are_counted() -> None:
    call = ProxiedCall(call_id="never-seen@x")
    tracker = SipTracker()
    events = run([*call.caller_request(T0, "BYE", 2),
                  *call.caller_request(T0 + 1, "CANCEL", 1, tagged=False),
                  *call.reply(T0 + 2, 200, "OK", method="BYE", cseq=2)], tracker)
    assert events == []
    assert tracker.stats.ignored == {"bye_unknown_call": 2, "cancel_unknown_call": 2,
                                     "reply_unknown_call": 2}


def test_compact_headers() -> None:
    call = ProxiedCall(compact=True)
    normal = run(normal_call(ProxiedCall()))
    compact = run(normal_call(call))
    assert compact == normal
    assert b"\r\ni: " in call.invite(T0)[0].payload and b"\r\nl: " in call.invite(T0)[0].payload


def test_compact_vias_in_one_header_set_the_route() -> None:
    call = ProxiedCall()
    first, relayed = call.invite(T0)
    # The relayed copy with its two Vias folded into one comma-separated "v:" header.
    text = relayed.payload.replace(b"\r\nVia: SIP/2.0/UDP 192.0.2.10", b", SIP/2.0/UDP 192.0.2.10")
    text = text.replace(b"\r\nVia: ", b"\r\nv: ")
    events = run([first, relayed._replace(payload=text),
                  *call.reply(T0 + 1, 486, "Busy Here")])
    assert isinstance(events[-1], Failed) and events[-1].route == ROUTE


def test_single_copy_capture_routes_to_the_invites_destination() -> None:
    call = ProxiedCall()
    events = run([call.invite(T0)[0], call.reply(T0 + 1, 603, "Decline")[1]])
    assert events[-1] == Failed(Dialog(call.call_id, 0, 0, us(T0 + 1 + HOP)), 603, "Decline",
                                "10.0.0.1:5060")


def test_account_code_from_header_when_the_ruri_has_none() -> None:
    call = ProxiedCall(ruri="sip:+4930123456@10.0.0.1;user=phone",
                       from_header="<sip:+15551230001@example.com>", extra=())
    offer = run(call.invite(T0, extra=[("X-Account-Code", "  ACME-7 ")]))[0]
    assert isinstance(offer, Offer)
    assert (offer.account_code, offer.from_display, offer.pai_user) == ("ACME-7", "", "")
    assert offer.ruri == "sip:+4930123456@10.0.0.1;user=phone"


def test_utf8_display_name_and_folded_header_survive_parsing() -> None:
    call = ProxiedCall(from_header='"Jürgen Müller" <sip:juergen@example.com>')
    first = call.invite(T0)[0]
    folded = first.payload.replace(b"\r\nCSeq: 1 INVITE", b"\r\nCSeq:\r\n 1 INVITE")
    offer = run([first._replace(payload=folded)])[0]
    assert isinstance(offer, Offer)
    assert (offer.from_display, offer.from_user) == ("Jürgen Müller", "juergen")


def test_non_utf8_display_name_is_counted_and_the_call_kept() -> None:
    call = ProxiedCall(call_id="latin1@x")
    first = call.invite(T0)[0]
    latin1 = first.payload.replace(b'"Alice Smith"', '"Jürgen"'.encode("latin-1"))
    tracker = SipTracker()
    offer = run([first._replace(payload=latin1)], tracker)[0]
    assert isinstance(offer, Offer) and offer.from_display == "J\ufffdrgen"
    assert tracker.stats.non_utf8 == 1


def test_forgotten_after_linger_then_late_bye_is_unknown() -> None:
    call = ProxiedCall()
    tracker = SipTracker()
    run(normal_call(call), tracker, finish=False)
    assert tracker.active_dialogs == 1
    late = call.caller_request(T0 + 35 + LINGER_S + 1, "BYE", 2)
    assert run(late, tracker, finish=False) == []
    assert tracker.active_dialogs == 0
    assert tracker.stats.dialogs_forgotten == 1
    assert tracker.stats.ignored["bye_unknown_call"] == 2


def test_many_calls_keep_memory_bounded() -> None:
    tracker = SipTracker()
    events = 0
    for n in range(200):
        call = ProxiedCall(call_id=f"call-{n}@x", from_tag=f"f{n}")
        events += len(run(normal_call(call, T0 + 10 * n), tracker, finish=False))
    assert events == 800
    assert tracker.active_dialogs <= 8  # those that ended within the last LINGER_S


# --- TCP ------------------------------------------------------------------------------
def tcp_segments(ts: float, data: bytes, cuts: Sequence[int],
                 src: tuple[str, int] = CALLER,
                 dst: tuple[str, int] = PROXY) -> list[CapturedPayload]:
    bounds = [0, *cuts, len(data)]
    return [packet(ts + i * 0.001, src, dst, data[a:b], "tcp")
            for i, (a, b) in enumerate(itertools.pairwise(bounds)) if b > a]


def test_tcp_message_split_across_segments_and_two_in_one_segment() -> None:
    call = ProxiedCall()
    invite = call.invite(T0)[0].payload
    head_end = invite.index(b"\r\n\r\n")
    tracker = SipTracker()
    segments = tcp_segments(T0, invite, [2, head_end + 2, head_end + 30])  # "IN" | ... | ...
    events = run(segments, tracker, finish=False)
    assert kinds(events) == ["Offer"]
    assert isinstance(events[0], Offer) and events[0].sdp == SDP_CALLER
    assert events[0].dialog.ts_us == us(T0 + 0.003)  # when the message was complete
    # 180 and 200 back over the same connection in one segment, with a CRLF keep-alive.
    ringing = call.reply(T0 + 1, 180, "Ringing")[1].payload
    ok = call.reply(T0 + 2, 200, "OK", sdp=SDP_CALLEE)[1].payload
    both = packet(T0 + 2, PROXY, CALLER, ringing + b"\r\n\r\n" + ok, "tcp")
    events = tracker.feed(both)
    assert kinds(events) == ["Early", "Answer"]
    assert tracker.stats.bad == {}


def test_tcp_compact_content_length_frames_the_body() -> None:
    invite = ProxiedCall(compact=True).invite(T0)[0].payload
    tracker = SipTracker()
    events = run(tcp_segments(T0, invite + invite, [len(invite) - 10]), tracker, finish=False)
    assert kinds(events) == ["Offer"]
    assert tracker.stats.messages == 2 and tracker.stats.duplicates == 1


def test_tcp_lost_segment_resyncs_at_the_next_message() -> None:
    call = ProxiedCall()
    invite = call.invite(T0)[0].payload
    ok = call.reply(T0 + 2, 200, "OK", sdp=SDP_CALLEE)[1].payload
    tracker = SipTracker()
    # The start of the INVITE is lost: the stream starts mid-headers.
    events = run([packet(T0, CALLER, PROXY, invite[40:], "tcp"),
                  packet(T0 + 0.1, CALLER, PROXY, invite, "tcp")], tracker, finish=False)
    assert kinds(events) == ["Offer"]
    assert tracker.stats.bad == {"tcp_resync": 1}
    # A segment lost inside a body: the body runs into the next message, which survives.
    bye = call.caller_request(T0 + 9, "BYE", 2)[0].payload
    cut = ok[: len(ok) - 60]
    events = run([packet(T0 + 2, PROXY, CALLER, cut, "tcp"),
                  packet(T0 + 9, PROXY, CALLER, ok, "tcp"),
                  packet(T0 + 10, CALLER, PROXY, bye, "tcp")], tracker, finish=False)
    assert kinds(events) == ["Answer", "End"]
    assert tracker.stats.bad == {"tcp_resync": 2}


def test_tcp_buffer_is_bounded() -> None:
    tracker = SipTracker()
    junk_head = b"INVITE sip:x@y SIP/2.0\r\n" + b"X-Pad: " + b"a" * 1000
    segments = [packet(T0, CALLER, PROXY, junk_head, "tcp")]
    segments += [packet(T0 + i, CALLER, PROXY, b"b" * 8000, "tcp") for i in range(1, 12)]
    assert run(segments, tracker) == []
    assert tracker.stats.bad.get("tcp_overflow", 0) >= 1
    assert all(len(s.buf) <= MAX_STREAM_BUFFER for s in tracker._streams.values())


# --- bad input ------------------------------------------------------------------------
def test_garbage_is_counted_and_skipped() -> None:
    call = ProxiedCall()
    invite = call.invite(T0)[0].payload
    payloads = {
        "truncated": invite[: len(invite) - 20],
        "truncated_head": invite[:120],
        "not_sip": bytes(range(256)),
        "no_call_id": invite.replace(b"Call-ID:", b"X-Call:"),
        "bad_cseq": invite.replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"),
        "bad_content_length": invite.replace(b"Content-Length: ", b"Content-Length: x"),
        "unparsable": invite.replace(b"Max-Forwards: 70", b"Max Forwards: 70"),
        "bad_status": b"SIP/2.0 999 Whatever\r\nCall-ID: a\r\nCSeq: 1 INVITE\r\n\r\n",
        "bad_version": invite.replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1),
    }
    tracker = SipTracker()
    for n, data in enumerate(payloads.values()):
        assert tracker.feed(packet(T0 + n, CALLER, PROXY, data)) == []
    assert tracker.stats.bad == {reason: 2 if reason == "truncated" else 1
                                 for reason in payloads if reason != "truncated_head"}
    assert tracker.stats.dialogs == 0
    # Messages that are fine but of no interest are counted apart.
    tracker.feed(packet(T0, CALLER, PROXY, b"\r\n\r\n"))
    tracker.feed(packet(T0, CALLER, PROXY, b"OPTIONS sip:x SIP/2.0\r\n\r\n"))
    assert tracker.stats.ignored == {"keepalive": 1, "method_options": 1}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600), tcp=st.booleans(), prefix=st.sampled_from(
    [b"", b"INVITE sip:a@b SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n", b"BYE "]))
def test_random_bytes_never_raise(data: bytes, tcp: bool, prefix: bytes) -> None:
    tracker = SipTracker()
    p = packet(T0, CALLER, PROXY, prefix + data, "tcp" if tcp else "udp")
    assert isinstance(tracker.feed(p), list)
    tracker.finish()
    assert "internal_error" not in tracker.stats.bad


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_calls_never_raise(seed: int) -> None:
    rng = random.Random(seed)
    tracker = SipTracker()
    for p in normal_call(ProxiedCall()):
        data = bytearray(p.payload)
        for _ in range(rng.randint(0, 6)):
            op = rng.random()
            i = rng.randrange(len(data))
            if op < 0.4:
                data[i] = rng.randrange(256)
            elif op < 0.7:
                del data[i : i + rng.randint(1, 40)]
            else:
                data[i:i] = rng.choice([b"\r\n", b";tag=", b",", b"\r\n\r\n", b"\xff", b":"])
        transport: Transport = "tcp" if rng.random() < 0.5 else "udp"
        tracker.feed(p._replace(payload=bytes(data), transport=transport))
    tracker.finish()
    assert "internal_error" not in tracker.stats.bad


# --- looks_like_sip -------------------------------------------------------------------
def test_looks_like_sip() -> None:
    tracker = SipTracker(sip_ports=frozenset({5060, 5080}))
    rtp = bytes([0x80, 0x08, 0, 1]) + b"\0" * 168
    assert not tracker.looks_like_sip(packet(T0, CALLER, PROXY, rtp))
    assert not tracker.looks_like_sip(packet(T0, ("1.1.1.1", 40000), ("2.2.2.2", 40002), rtp))
    assert not tracker.looks_like_sip(packet(T0, CALLER, PROXY, b""))
    assert not tracker.looks_like_sip(packet(T0, CALLER, PROXY, b"\x00junk"))
    for start in (b"INVITE sip:", b"SIP/2.0 200 OK", b"BYE sip:", b"ACK ", b"CANCEL ",
                  b"UPDATE ", b"OPTIONS "):
        assert tracker.looks_like_sip(
            packet(T0, ("1.1.1.1", 40000), ("2.2.2.2", 7000), start + b" rest"))
    # A TCP segment to or from a SIP port may continue a message: it always goes in.
    assert tracker.looks_like_sip(packet(T0, CALLER, ("10.0.0.1", 5080), b"a=rtpmap", "tcp"))
    assert tracker.looks_like_sip(packet(T0, ("10.0.0.1", 5060), CALLER, rtp, "tcp"))
    assert not tracker.looks_like_sip(packet(T0, CALLER, ("10.0.0.1", 5070), b"a=x", "tcp"))


# --- helpers --------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "display", "uri"), [
    ('"Alice Smith" <sip:alice@example.com>;tag=1', "Alice Smith", "sip:alice@example.com"),
    ('"a \\"b\\" <c>" <sip:x@y>', 'a \\"b\\" <c>', "sip:x@y"),
    ("Bob <sip:bob@example.com;user=phone>;tag=2", "Bob", "sip:bob@example.com;user=phone"),
    ("sip:carol@example.com;tag=3", "", "sip:carol@example.com"),
    ("<tel:+15551230001>", "", "tel:+15551230001"),
])
def test_name_addr(value: str, display: str, uri: str) -> None:
    assert name_addr(value) == (display, uri)


def test_uri_user_and_param() -> None:
    assert uri_user("sip:+4930123456@10.0.0.1:5060;ac=ACME") == "+4930123456"
    assert uri_user("sip:alice:secret@example.com") == "alice"
    assert uri_user("tel:+15551230001;phone-context=x") == "+15551230001"
    assert uri_user("sip:example.com") == ""
    assert uri_param("sip:+49301@10.0.0.1;user=phone;AC=ACME?subject=x", "ac") == "ACME"
    assert uri_param("sip:+49301@10.0.0.1;ac", "ac") == ""
    assert uri_param("sip:ac=1@host", "ac") == ""


def test_pai_with_two_identities_takes_the_first() -> None:
    call = ProxiedCall(extra=(("P-Asserted-Identity",
                               '"Alice, Sales" <sip:+15551230001@example.com>, <tel:+1555>'),))
    offer = run(call.invite(T0))[0]
    assert isinstance(offer, Offer) and offer.pai_user == "+15551230001"


# --- captures -------------------------------------------------------------------------
def test_a_written_capture_replays_like_its_payloads(tmp_path: Path) -> None:
    packets = sorted(normal_call(ProxiedCall()), key=lambda p: p.timestamp)
    path = tmp_path / "call.pcap"
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        for p in packets:
            frame = ethernet(ipv4(p.src_ip, p.dst_ip, 17, udp(p.src_port, p.dst_port, p.payload)))
            writer.writepkt(frame, ts=p.timestamp)
    tracker = SipTracker()
    replayed: list[Event] = []
    for p in read_capture(path):
        if tracker.looks_like_sip(p):
            replayed += tracker.feed(p)
    replayed += tracker.finish()
    assert replayed == run(packets)


PCAPS = Path(__file__).resolve().parents[2] / "pcaps"


@pytest.mark.skipif(not (PCAPS / "expected.json").exists(), reason="no lab captures")
def test_lab_captures_give_the_expected_calls() -> None:
    expected = json.loads((PCAPS / "expected.json").read_text())
    for name, want in expected.items():
        tracker = SipTracker()
        events: list[Event] = []
        for p in read_capture(PCAPS / name):
            if tracker.looks_like_sip(p):
                events += tracker.feed(p)
        events += tracker.finish()
        offers = [e for e in events if isinstance(e, Offer)]
        assert len(offers) == want["calls"], name
        assert [e.code for e in events if isinstance(e, Early)] == want["provisional"], name
        answered = [e for e in events if isinstance(e, Answer)]
        failed = [e.code for e in events if isinstance(e, Failed)]
        assert (200 if answered else failed[0]) == want["final_code"], name
        ends = [e.by for e in events if isinstance(e, End)]
        assert ends == ([want["hangup_by"]] if want["has_bye"] else []), name
        assert tracker.stats.bad == {}, name
