"""Serial forking over the carriers the sidecar names (the `routes` of an `auth`), with
the real Kamailio (kamailio/kamailio.cfg) and real SIPp carriers on 127.0.0.1.

The sidecar is played by the tests' evapi client: its `auth` allows the call and lists
the carriers, cheapest first. Kamailio tries them in order: a 408 (no reply within
FR_TIMEOUT) or a 5xx moves on to the next carrier; any other reply (486, 404, 6xx) is
the callee's answer and ends the search. Each failed try is reported as an `attempt`
event, and `answer`, `failed` and `end` name the carrier in `route`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from sidecar.lab import free_port
from sidecar.lab.sipp import SippProcess
from tests.lab.test_kamailio_lab import HOST, Event, Lab, Policy

pytestmark = [pytest.mark.timeout(120)]


def routed(routes: list[dict[str, str]], max_duration: int = 60) -> Policy:
    """Allow every offer and name the carriers to try, in order."""

    def policy(offer: Event) -> Event:
        return {"event": "auth", "tindex": offer["tindex"], "tlabel": offer["tlabel"],
                "call_id": offer["call_id"], "action": "allow",
                "max_duration": max_duration, "account": "ACME", "routes": routes}

    return policy


def carrier(lab: Lab, scenario: str) -> tuple[SippProcess, str]:
    """A SIPp carrier on a port of its own: the process and its URI."""
    port = free_port("udp", HOST)
    proc = lab.stack.enter_context(lab.sipp.start_uas(scenario, port=port, timeout_s=30))
    return proc, f"sip:{HOST}:{port}"


def nobody() -> str:
    """The URI of a carrier that never answers (nothing listens there)."""
    return f"sip:{HOST}:{free_port('udp', HOST)}"


def test_the_cheapest_carrier_answers_503_and_the_call_completes_on_the_second(
        make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    first, first_uri = carrier(lab, "uas_unavailable.xml")
    second, second_uri = carrier(lab, "uas.xml")
    sidecar = lab.client(routed([{"carrier": "cheap", "uri": first_uri},
                                 {"carrier": "solid", "uri": second_uri}]))
    r = lab.uac(duration_ms=1000).wait()
    assert r.calls_ok, r.output_tail() + lab.kam.log_tail()
    assert r.final_codes == [200]  # the 503 stayed between Kamailio and the carrier
    assert first.wait().calls_ok and second.wait().calls_ok
    call_id = r.sent("INVITE")[0].call_id
    (attempt,) = sidecar.of_kind("attempt")
    assert (attempt["call_id"], attempt["route"], attempt["code"], attempt["reason"]) == (
        call_id, "cheap", 503, "Service Unavailable")
    assert sidecar.wait_for("answer", call_id)["route"] == "solid"
    assert sidecar.wait_for("end", call_id)["by"] == "caller"
    assert not sidecar.of_kind("failed")


def test_a_busy_callee_ends_the_search_no_other_carrier_is_tried(
        make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(extra_defines={"FR_TIMEOUT": 1000})
    busy, busy_uri = carrier(lab, "uas_reject.xml")
    sidecar = lab.client(routed([{"carrier": "first", "uri": busy_uri},
                                 {"carrier": "never", "uri": nobody()}]))
    t0 = time.monotonic()
    r = lab.uac("uac_reject.xml").wait()
    assert r.final_codes == [486], r.output_tail()
    assert time.monotonic() - t0 < 1.0  # not the next carrier's FR_TIMEOUT
    call_id = r.sent("INVITE")[0].call_id
    failed = sidecar.wait_for("failed", call_id)
    assert (failed["code"], failed["route"]) == (486, "first")
    assert [a["route"] for a in sidecar.of_kind("attempt")] == ["first"]
    assert busy.wait().calls_ok


def test_a_carrier_that_never_answers_times_out_and_the_next_one_takes_the_call(
        make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(extra_defines={"FR_TIMEOUT": 800})
    second, second_uri = carrier(lab, "uas.xml")
    sidecar = lab.client(routed([{"carrier": "silent", "uri": nobody()},
                                 {"carrier": "backup", "uri": second_uri}]))
    r = lab.uac(duration_ms=500).wait()
    assert r.calls_ok, r.output_tail() + lab.kam.log_tail()
    invite = r.sent("INVITE")[0]
    ok = next(m for m in r.received("INVITE") if m.status_code == 200)
    assert ok.timestamp - invite.timestamp >= 0.7  # FR_TIMEOUT on the first carrier
    (attempt,) = sidecar.of_kind("attempt")
    assert (attempt["route"], attempt["code"]) == ("silent", 408)
    assert sidecar.wait_for("answer", invite.call_id)["route"] == "backup"
    assert second.wait().calls_ok


def test_when_every_carrier_fails_the_caller_gets_the_last_reply(
        make_lab: Callable[..., Lab]) -> None:
    """Both carriers answer 503: the caller gets the last one's reply, as a proxy
    forwards it (RFC 3261 16.7: a 503 from downstream goes upstream as 500)."""
    lab = make_lab()
    one, one_uri = carrier(lab, "uas_unavailable.xml")
    two, two_uri = carrier(lab, "uas_unavailable.xml")
    sidecar = lab.client(routed([{"carrier": "one", "uri": one_uri},
                                 {"carrier": "two", "uri": two_uri}]))
    r = lab.uac("uac_reject.xml").wait()
    assert r.final_codes == [500], r.output_tail()
    call_id = r.sent("INVITE")[0].call_id
    assert [(a["route"], a["code"]) for a in sidecar.of_kind("attempt")] == [
        ("one", 503), ("two", 503)]
    final = next(m for m in r.received("INVITE") if m.status_code == 500)
    failed = sidecar.wait_for("failed", call_id)
    assert (failed["code"], failed["route"]) == (500, "two"), failed
    assert final.first_line == f"SIP/2.0 500 {failed['reason']}"
    assert one.wait().calls_ok and two.wait().calls_ok


def test_an_auth_without_routes_goes_to_dest_as_before(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    uas = lab.uas("uas.xml")
    sidecar = lab.client(routed([]))
    r = lab.uac(duration_ms=300).wait()
    assert r.calls_ok, r.output_tail()
    assert uas.wait().calls_ok
    call_id = r.sent("INVITE")[0].call_id
    assert sidecar.wait_for("answer", call_id)["route"] == f"{HOST}:{lab.uas_port}"
    assert not sidecar.of_kind("attempt")
