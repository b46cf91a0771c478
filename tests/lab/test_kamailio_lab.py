"""End to end with the real Kamailio (kamailio/kamailio.cfg) and real SIPp on 127.0.0.1.

Each test starts its own Kamailio on free ports, a tiny evapi client playing the sidecar
(netstrings over TCP, answering `offer` events with a fixed policy), and SIPp UAC/UAS
with RTP. Every process is stopped by PID when the test ends, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sidecar.lab import PortInUseError, free_port
from sidecar.lab.kamailio import JsonRpcError, KamailioProcess, KamailioSettings
from sidecar.lab.sipp import Sipp, SippProcess

pytestmark = [
    # Kamailio and SIPp are installed by scripts/setup: a missing tool fails, never skips.
    pytest.mark.timeout(120),
]

HOST = "127.0.0.1"
CALLER = "15551230001"
DIALLED = "4930123456"

Event = dict[str, Any]
Policy = Callable[[Event], Event | None]


def netstring(payload: bytes) -> bytes:
    """``LEN:payload,`` as evapi frames every message."""
    return str(len(payload)).encode() + b":" + payload + b","


def allow(max_duration: int) -> Policy:
    """Answer every offer with allow + max_duration."""

    def policy(offer: Event) -> Event:
        return {
            "event": "auth",
            "tindex": offer["tindex"],
            "tlabel": offer["tlabel"],
            "call_id": offer["call_id"],
            "action": "allow",
            "max_duration": max_duration,
        }

    return policy


def reject(code: int, reason: str) -> Policy:
    """Answer every offer with reject + code/reason."""

    def policy(offer: Event) -> Event:
        return {
            "event": "auth",
            "tindex": offer["tindex"],
            "tlabel": offer["tlabel"],
            "call_id": offer["call_id"],
            "action": "reject",
            "code": code,
            "reason": reason,
        }

    return policy


def silent(offer: Event) -> None:
    """Never answer."""
    return None


class EvapiClient:
    """The sidecar's side of evapi, reduced to what the tests need.

    A reader thread decodes the netstrings Kamailio sends, keeps every event and answers
    `offer` events with the policy's `auth` message (if it returns one).
    """

    def __init__(self, host: str, port: int, policy: Policy) -> None:
        self.policy = policy
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._sock = socket.create_connection((host, port), timeout=5)
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._read_loop, daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        buf = b""
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            buf += data
            while True:
                colon = buf.find(b":")
                if colon < 0:
                    break
                end = colon + 1 + int(buf[:colon])
                if len(buf) < end + 1:
                    break
                assert buf[end : end + 1] == b",", "bad netstring from Kamailio"
                event = json.loads(buf[colon + 1 : end])
                buf = buf[end + 1 :]
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()
                if event.get("event") == "offer":
                    answer = self.policy(event)
                    if answer is not None:
                        self.send(answer)

    def send(self, message: Event) -> None:
        """Send one JSON message as a netstring."""
        self.send_raw(netstring(json.dumps(message).encode()))

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        with self._send_lock:
            self._sock.sendall(data)

    def wait_for(self, kind: str, call_id: str | None = None, timeout: float = 10.0) -> Event:
        """The first event of ``kind`` (for ``call_id``), waiting up to ``timeout`` s."""

        def find() -> Event | None:
            for event in self.events:
                if event.get("event") == kind and call_id in (None, event.get("call_id")):
                    return event
            return None

        with self._cond:
            found = self._cond.wait_for(find, timeout)
        if found is None:
            raise AssertionError(f"no {kind!r} event for {call_id!r}; got {self.events}")
        return found

    def of_kind(self, kind: str) -> list[Event]:
        """Every event of one kind received so far."""
        with self._cond:
            return [e for e in self.events if e.get("event") == kind]

    def close(self) -> None:
        """Close the connection and stop the reader."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(2)


@dataclass
class Lab:
    """One Kamailio, a SIPp factory and what the test started, stopped at the end."""

    kam: KamailioProcess
    sipp: Sipp
    uas_port: int
    stack: contextlib.ExitStack
    clients: list[EvapiClient] = field(default_factory=list)

    @property
    def target(self) -> str:
        """Where UACs send their INVITEs."""
        s = self.kam.settings
        return f"{s.sip_ip}:{s.sip_port}"

    def client(self, policy: Policy) -> EvapiClient:
        """Connect a sidecar and wait until Kamailio counts it."""
        s = self.kam.settings
        client = EvapiClient(s.evapi_ip, s.evapi_port, policy)
        self.stack.callback(client.close)
        self.clients.append(client)
        self.kam.wait_evapi_clients(len(self.clients))
        return client

    def uas(self, scenario: str = "uas.xml", duration_ms: int = 0, calls: int = 1
            ) -> SippProcess:
        """Start the callee at DEST (for ``calls`` calls)."""
        proc = self.sipp.start_uas(scenario, port=self.uas_port, duration_ms=duration_ms,
                                   calls=calls)
        return self.stack.enter_context(proc)

    def uac(self, scenario: str = "uac.xml", **kwargs: Any) -> SippProcess:
        """Start a caller (in the background) through Kamailio."""
        proc = self.sipp.start_uac(self.target, scenario, dialled=DIALLED, caller=CALLER, **kwargs)
        return self.stack.enter_context(proc)


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """Factory for a lab with its own Kamailio; ``make_lab(fail_open=True, ...)``."""
    with contextlib.ExitStack() as stack:

        def make(**settings: Any) -> Lab:
            uas_port = free_port("udp", HOST)
            # children and log_events may be overridden too.
            config = KamailioSettings(**{
                "sip_ip": HOST,
                "sip_port": free_port("udp", HOST),
                "evapi_ip": HOST,
                "evapi_port": free_port("tcp", HOST),
                "dest": f"sip:{HOST}:{uas_port}",
                "children": 2,
                "log_events": True,
                **settings,
            })
            kam = stack.enter_context(KamailioProcess(tmp_path / "kam", config))
            return Lab(kam, Sipp(tmp_path / "sipp", host=HOST), uas_port, stack)

        yield make


def check_common(event: Event, call_id: str, t0: float, t1: float) -> None:
    """The keys every event carries."""
    assert event["call_id"] == call_id
    assert isinstance(event["h_entry"], int)
    assert isinstance(event["h_id"], int)
    assert event["h_id"] > 0, event  # h_entry is a hash bucket and may be 0
    assert isinstance(event["ts"], float)
    assert t0 - 0.01 <= event["ts"] <= t1 + 0.01, (t0, event["ts"], t1)


# ---------------------------------------------------------------------------- (a)
def test_allowed_call_sends_offer_answer_end(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    sidecar = lab.client(allow(60))
    uas = lab.uas("uas.xml")
    t0 = time.time()
    uac = lab.uac(account_code="ACME-42", duration_ms=2000)
    r_uac = uac.wait()
    t1 = time.time()
    r_uas = uas.wait()
    assert r_uac.calls_ok, r_uac.output_tail()
    assert r_uas.calls_ok, r_uas.output_tail()

    call_id = r_uac.sent("INVITE")[0].call_id
    offer = sidecar.wait_for("offer", call_id)
    answer = sidecar.wait_for("answer", call_id)
    end = sidecar.wait_for("end", call_id)
    for event in (offer, answer, end):
        check_common(event, call_id, t0, t1)
    assert offer["h_entry"] == answer["h_entry"] == end["h_entry"]
    assert offer["h_id"] == answer["h_id"] == end["h_id"]
    assert offer["ts"] < answer["ts"] < end["ts"]

    assert isinstance(offer["tindex"], int)
    assert isinstance(offer["tlabel"], int)
    assert offer["from_user"] == CALLER
    assert offer["from_display"] == f"Caller {CALLER}"
    assert offer["from_domain"] == HOST
    assert offer["pai_user"] == ""
    assert offer["to_user"] == DIALLED
    assert offer["ruri"] == f"sip:{DIALLED}@{lab.target};ac=ACME-42"
    assert offer["ruri_user"] == DIALLED
    assert offer["account_code"] == "ACME-42"
    assert offer["src_ip"] == HOST
    assert offer["src_port"] == uac.sip_port
    assert f"m=audio {uac.media_port} RTP/AVP 8" in offer["sdp"]
    assert "\r\n" in offer["sdp"]  # CRLFs survive the JSON escaping

    assert answer["code"] == 200
    assert f"m=audio {uas.media_port} RTP/AVP 8" in answer["sdp"]

    assert end["by"] == "caller"
    assert end["reason"] == "bye"
    assert end["start_ts"] == pytest.approx(answer["ts"], abs=1e-3)
    # Kamailio's connected time against SIPp's own (ACK -> 200 OK to the BYE).
    assert r_uac.talk_time_s is not None
    assert end["ts"] - end["start_ts"] == pytest.approx(r_uac.talk_time_s, abs=0.3)
    assert r_uac.talk_time_s == pytest.approx(2.0, abs=0.5)
    assert not sidecar.of_kind("failed")


# ---------------------------------------------------------------------------- (b)
def test_rejected_call_gets_the_sidecars_code(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    sidecar = lab.client(reject(402, "Payment Required"))
    r_uac = lab.uac("uac_reject.xml").wait()
    assert r_uac.calls_ok, r_uac.output_tail()
    assert r_uac.final_codes == [402]
    assert any(m.first_line == "SIP/2.0 402 Payment Required" for m in r_uac.received())

    call_id = r_uac.sent("INVITE")[0].call_id
    offer = sidecar.wait_for("offer", call_id)
    failed = sidecar.wait_for("failed", call_id)
    assert failed["code"] == 402
    assert failed["reason"] == "Payment Required"
    assert (failed["h_entry"], failed["h_id"]) == (offer["h_entry"], offer["h_id"])
    assert not sidecar.of_kind("answer")


# ---------------------------------------------------------------------------- (c)
def test_no_sidecar_connected_fails_closed_with_503(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    assert lab.kam.evapi_clients() == 0
    t0 = time.monotonic()
    r_uac = lab.uac("uac_reject.xml").wait()
    assert r_uac.calls_ok, r_uac.output_tail()
    assert r_uac.final_codes == [503]
    # Decided at once from the client count, not after AUTH_TIMEOUT.
    assert time.monotonic() - t0 < 1.5


def test_evapi_refuses_clients_outside_the_allowlist(make_lab: Callable[..., Lab]) -> None:
    """evapi has no authentication: a client from an address outside EVAPI_ALLOW is
    disconnected at once, never counted as a sidecar, and sees no call."""
    lab = make_lab(extra_defines={"EVAPI_ALLOW": "192.0.2.0/24,2001:db8::/32"})
    s = lab.kam.settings
    with socket.create_connection((s.evapi_ip, s.evapi_port), timeout=3) as conn:
        conn.sendall(netstring(b'{"event": "sync"}'))
        try:
            data = conn.recv(4096)
        except ConnectionResetError:  # closed with our `sync` unread
            data = b""
        assert data == b""  # closed by Kamailio, nothing replayed
    deadline = time.monotonic() + 5
    while "not in EVAPI_ALLOW" not in lab.kam.log_text():
        assert time.monotonic() < deadline, lab.kam.log_text()[-2000:]
        time.sleep(0.05)
    assert lab.kam.evapi_clients() == 0
    r_uac = lab.uac("uac_reject.xml").wait()
    assert r_uac.final_codes == [503]  # no sidecar: fail-closed


def test_silent_sidecar_fails_closed_after_auth_timeout(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(auth_timeout_ms=700)
    sidecar = lab.client(silent)
    r_uac = lab.uac("uac_reject.xml").wait()
    assert r_uac.calls_ok, r_uac.output_tail()
    assert r_uac.final_codes == [503]
    invite = r_uac.sent("INVITE")[0]
    final = next(m for m in r_uac.received("INVITE") if m.status_code == 503)
    assert final.timestamp - invite.timestamp == pytest.approx(0.7, abs=0.3)
    failed = sidecar.wait_for("failed", invite.call_id)
    assert (failed["code"], failed["reason"]) == (503, "Service Unavailable")


@pytest.mark.parametrize("sidecar_state", ["absent", "silent"])
def test_fail_open_relays_without_authorization(
    make_lab: Callable[..., Lab], sidecar_state: str
) -> None:
    lab = make_lab(fail_open=True, auth_timeout_ms=500)
    sidecar = lab.client(silent) if sidecar_state == "silent" else None
    uas = lab.uas("uas.xml")
    r_uac = lab.uac(duration_ms=1000).wait()
    assert r_uac.calls_ok, r_uac.output_tail()
    assert uas.wait().calls_ok
    if sidecar is not None:
        call_id = r_uac.sent("INVITE")[0].call_id
        assert sidecar.wait_for("end", call_id)["by"] == "caller"


def _auth_wait(lab: Lab, key: str) -> int:
    """A count of the ``authwait`` table: ``n`` INVITEs waiting for the sidecar now,
    ``shed`` refused at once because MAX_PENDING were waiting."""
    try:
        item = lab.kam.rpc("htable.get", "authwait", key)
    except JsonRpcError:  # not set yet (or expired): 0
        return 0
    return int(item["item"]["value"])


def test_beyond_max_pending_offers_are_refused_at_once_and_every_place_comes_back(
        make_lab: Callable[..., Lab]) -> None:
    """Admission control in Kamailio: with MAX_PENDING=3 and a sidecar that does not
    answer, 10 INVITEs sent within 0.2 s: 3 wait AUTH_TIMEOUT, 7 get 503 at once
    instead of queueing. Each place is given back when its INVITE stops waiting (timed
    out here), so a second burst behaves the same, and the count ends at 0."""
    lab = make_lab(auth_timeout_ms=2500, extra_defines={"MAX_PENDING": 3})
    lab.client(silent)
    for burst in (1, 2):
        r = lab.uac("uac_reject.xml", calls=10, extra=["-r", "50"], timeout_s=30).wait()
        assert r.calls_ok, r.output_tail()
        sent = {m.call_id: m.timestamp for m in r.sent("INVITE")}
        waits = sorted(m.timestamp - sent[m.call_id] for m in r.received("INVITE")
                       if m.status_code == 503)
        assert len(waits) == 10, (burst, waits)
        fast = [w for w in waits if w < 0.5]
        slow = [w for w in waits if w >= 2.0]
        assert (len(fast), len(slow)) == (7, 3), (burst, waits)
        assert _auth_wait(lab, "n") == 0
        assert _auth_wait(lab, "shed") == 7 * burst


def test_answered_and_busy_offers_give_their_place_back(make_lab: Callable[..., Lab]
                                                        ) -> None:
    """Offers the sidecar answers (allow, busy) leave no place taken: after 20 of each,
    the count of waiting INVITEs is 0 and none was refused for MAX_PENDING."""
    lab = make_lab(extra_defines={"MAX_PENDING": 2})
    client = lab.client(busy)
    r = lab.uac("uac_reject.xml", calls=20, extra=["-r", "20"]).wait()
    assert r.final_codes == [503] * 20
    assert _auth_wait(lab, "n") == 0
    client.policy = allow(60)
    uas = lab.uas("uas.xml", calls=20)
    r = lab.uac(calls=20, duration_ms=100, extra=["-r", "20"]).wait()
    assert r.calls_ok, r.output_tail()
    assert uas.wait().calls_ok
    assert _auth_wait(lab, "n") == 0
    assert _auth_wait(lab, "shed") == 0


def busy(offer: Event) -> Event:
    """Answer every offer as an overloaded sidecar does."""
    return {"event": "auth", "tindex": offer["tindex"], "tlabel": offer["tlabel"],
            "call_id": offer["call_id"], "action": "busy", "code": 503,
            "reason": "Service Unavailable"}


def test_busy_sidecar_gets_a_fast_503_without_waiting_for_the_timeout(
        make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(auth_timeout_ms=2000)
    lab.client(busy)
    r_uac = lab.uac("uac_reject.xml").wait()
    assert r_uac.final_codes == [503]
    invite = r_uac.sent("INVITE")[0]
    final = next(m for m in r_uac.received("INVITE") if m.status_code == 503)
    assert final.timestamp - invite.timestamp < 0.5  # not the 2 s AUTH_TIMEOUT


def test_busy_sidecar_under_fail_open_relays_the_call(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(fail_open=True, auth_timeout_ms=2000)
    lab.client(busy)
    uas = lab.uas("uas.xml")
    t0 = time.monotonic()
    r_uac = lab.uac(duration_ms=500).wait()
    assert r_uac.calls_ok, r_uac.output_tail()
    assert uas.wait().calls_ok
    assert time.monotonic() - t0 < 2.5  # relayed at once, not after AUTH_TIMEOUT


# ---------------------------------------------------------------------------- (d)
def test_end_dlg_sends_bye_both_ways(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    sidecar = lab.client(allow(60))
    uas = lab.uas("uas.xml")
    uac = lab.uac(duration_ms=20000)
    answer = sidecar.wait_for("answer")
    time.sleep(0.5)
    assert lab.kam.rpc("dlg.end_dlg", answer["h_entry"], answer["h_id"]) == {}

    end = sidecar.wait_for("end", answer["call_id"])
    assert (end["by"], end["reason"]) == ("proxy", "rpc")
    assert end["start_ts"] == pytest.approx(answer["ts"], abs=1e-3)
    r_uac, r_uas = uac.wait(10), uas.wait(10)
    assert r_uac.calls_ok, r_uac.output_tail()
    assert r_uas.calls_ok, r_uas.output_tail()
    assert len(r_uac.received("BYE")) == 1
    assert len(r_uas.received("BYE")) == 1
    assert all(m.is_response for m in r_uac.sent("BYE"))  # the caller did not hang up
    assert r_uac.talk_time_s is not None and r_uac.talk_time_s < 5

    with pytest.raises(JsonRpcError) as excinfo:
        lab.kam.rpc("dlg.end_dlg", answer["h_entry"], answer["h_id"])
    assert excinfo.value.code == 404


def test_end_dlg_before_answer_cancels_the_invite(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    sidecar = lab.client(allow(60))
    uas = lab.uas("uas_ringlong.xml", duration_ms=8000)
    uac = lab.uac("uac_reject.xml")
    offer = sidecar.wait_for("offer")
    time.sleep(0.5)  # ringing
    assert lab.kam.rpc("dlg.end_dlg", offer["h_entry"], offer["h_id"]) == {}
    r_uac, r_uas = uac.wait(10), uas.wait(10)
    assert r_uac.calls_ok, r_uac.output_tail()
    assert r_uas.calls_ok, r_uas.output_tail()
    assert r_uac.final_codes == [487]
    assert len(r_uas.received("CANCEL")) == 1
    failed = sidecar.wait_for("failed", offer["call_id"])
    assert (failed["code"], failed["reason"]) == (487, "Request Terminated")
    time.sleep(0.3)
    assert len(sidecar.of_kind("failed")) == 1
    assert not sidecar.of_kind("answer")


# ---------------------------------------------------------------------------- (e)
def test_dlg_list_shows_the_running_call(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    sidecar = lab.client(allow(45))
    uas = lab.uas("uas.xml")
    uac = lab.uac(duration_ms=20000)
    answer = sidecar.wait_for("answer")
    time.sleep(0.3)  # let the ACK confirm the dialog
    dialogs = lab.kam.rpc("dlg.list")
    assert isinstance(dialogs, list) and len(dialogs) == 1
    dlg = dialogs[0]
    assert dlg["call-id"] == answer["call_id"]
    assert (dlg["h_entry"], dlg["h_id"]) == (answer["h_entry"], answer["h_id"])
    assert dlg["state"] == 4  # confirmed by the ACK
    variables = {k: v for item in dlg["variables"] for k, v in item.items()}
    assert variables["max_duration"] == "45"
    # The dialog timeout is the backstop: max_duration + MAX_DURATION_GRACE (2 s).
    assert dlg["lifetime"] == 47

    lab.kam.rpc("dlg.end_dlg", dlg["h_entry"], dlg["h_id"])
    assert uac.wait(10).calls_ok
    assert uas.wait(10).calls_ok
    assert lab.kam.rpc("dlg.list") == []


# ---------------------------------------------------------------------------- (f)
def test_garbage_on_evapi_does_not_break_kamailio(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    sidecar = lab.client(allow(60))
    s = lab.kam.settings
    junk = [
        b"hello kamailio\r\n",
        netstring(b"this is not json"),
        netstring(b"[1, 2, 3]"),
        netstring(b'{"event": "bogus"}'),
        netstring(b'{"event": "auth", "tindex": "x", "tlabel": 1, "action": "allow"}'),
        netstring(b'{"event": "auth", "tindex": 1, "tlabel": 2, "action": "allow"}'),
        netstring(b'{"event": "auth", "tindex": 1, "tlabel": 2, "action": "explode"}'),
        b'99:{"event": "auth", "tindex"',  # truncated, then the connection closes
        b"99999999999999999999:",
    ]
    for data in junk:
        with socket.create_connection((s.evapi_ip, s.evapi_port), timeout=2) as conn:
            conn.sendall(data)
            time.sleep(0.05)
    # Well-framed nonsense on the sidecar's own connection.
    sidecar.send_raw(netstring(b"{not json"))
    sidecar.send({"event": "nonsense"})
    sidecar.send({"event": "auth", "tindex": 1, "tlabel": 1, "action": "allow"})
    lab.kam.wait_evapi_clients(1)
    assert lab.kam.running()

    uas = lab.uas("uas.xml")
    r_uac = lab.uac(account_code="HDR-7", account_code_header=True, duration_ms=1000).wait()
    assert r_uac.calls_ok, r_uac.output_tail()
    assert uas.wait().calls_ok
    call_id = r_uac.sent("INVITE")[0].call_id
    assert sidecar.wait_for("offer", call_id)["account_code"] == "HDR-7"
    assert sidecar.wait_for("end", call_id)["by"] == "caller"
    assert "evapi: ignored event [nonsense]" in lab.kam.log_text()


# ---------------------------------------------------------------------------- callees
def test_callee_hangs_up(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    sidecar = lab.client(allow(60))
    uas = lab.uas("uas_hangup.xml", duration_ms=1000)
    r_uac = lab.uac(duration_ms=10000).wait()
    assert r_uac.calls_ok, r_uac.output_tail()
    assert uas.wait().calls_ok
    end = sidecar.wait_for("end", r_uac.sent("INVITE")[0].call_id)
    assert (end["by"], end["reason"]) == ("callee", "bye")


def test_max_duration_ends_the_call(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    sidecar = lab.client(allow(1))
    uas = lab.uas("uas.xml")
    r_uac = lab.uac(duration_ms=10000).wait()
    assert r_uac.calls_ok, r_uac.output_tail()
    assert uas.wait().calls_ok
    end = sidecar.wait_for("end", r_uac.sent("INVITE")[0].call_id)
    assert (end["by"], end["reason"]) == ("proxy", "timeout")
    # 1 s + 2 s grace; the dialog timer works in whole seconds (+-1 s).
    assert 2.0 <= end["ts"] - end["start_ts"] <= 4.2
    assert len(r_uac.received("BYE")) == 1


def test_early_media_sends_early_then_answer(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    sidecar = lab.client(allow(60))
    uas = lab.uas("uas_early_media.xml", duration_ms=1000)
    r_uac = lab.uac(duration_ms=1000).wait()
    assert r_uac.calls_ok, r_uac.output_tail()
    assert uas.wait().calls_ok
    call_id = r_uac.sent("INVITE")[0].call_id
    early = sidecar.wait_for("early", call_id)
    answer = sidecar.wait_for("answer", call_id)
    assert early["code"] == 183
    assert f"m=audio {uas.media_port} RTP/AVP 8" in early["sdp"]
    assert early["h_id"] == answer["h_id"] > 0
    assert answer["ts"] - early["ts"] == pytest.approx(1.0, abs=0.4)


def test_callee_busy_is_relayed_and_reported(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    sidecar = lab.client(allow(60))
    uas = lab.uas("uas_reject.xml")
    r_uac = lab.uac("uac_reject.xml").wait()
    assert r_uac.calls_ok, r_uac.output_tail()
    assert uas.wait().calls_ok
    assert r_uac.final_codes == [486]
    failed = sidecar.wait_for("failed", r_uac.sent("INVITE")[0].call_id)
    assert (failed["code"], failed["reason"]) == (486, "Busy Here")


def test_ringing_too_long_is_cancelled(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(pre_answer_timeout_ms=1500)
    sidecar = lab.client(allow(60))
    uas = lab.uas("uas_ringlong.xml", duration_ms=10000)
    r_uac = lab.uac("uac_reject.xml").wait()
    assert r_uac.calls_ok, r_uac.output_tail()
    r_uas = uas.wait()
    assert r_uas.calls_ok, r_uas.output_tail()
    assert r_uac.final_codes == [408]
    assert len(r_uas.received("CANCEL")) == 1
    failed = sidecar.wait_for("failed", r_uac.sent("INVITE")[0].call_id)
    assert failed["code"] == 408


def test_answer_without_media_still_completes(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    sidecar = lab.client(allow(60))
    uas = lab.uas("uas_nomedia.xml")
    r_uac = lab.uac(duration_ms=1000).wait()
    assert r_uac.calls_ok, r_uac.output_tail()
    assert uas.wait().calls_ok
    call_id = r_uac.sent("INVITE")[0].call_id
    assert sidecar.wait_for("answer", call_id)["code"] == 200
    assert sidecar.wait_for("end", call_id)["by"] == "caller"


# ---------------------------------------------------------------------------- tooling
def test_taken_ports_are_named(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, 0))
        port = taken.getsockname()[1]
        kam = KamailioProcess(
            tmp_path / "kam",
            KamailioSettings(sip_ip=HOST, sip_port=port, evapi_port=free_port("tcp", HOST)),
        )
        with pytest.raises(PortInUseError, match=f"UDP port {HOST}:{port}"):
            kam.start()
        assert kam.pid is None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        kam = KamailioProcess(
            tmp_path / "kam",
            KamailioSettings(sip_ip=HOST, sip_port=free_port("udp", HOST), evapi_port=port),
        )
        with pytest.raises(PortInUseError, match=f"evapi listener: TCP port {HOST}:{port}"):
            kam.start()
