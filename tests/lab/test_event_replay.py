"""The events Kamailio keeps while no sidecar is connected, replayed on `sync`.

The real Kamailio (kamailio/kamailio.cfg) and SIPp on 127.0.0.1, with the minimal evapi
client of test_kamailio_lab. While no client is connected, `answer`, `end` and `failed`
are kept in shared memory; a client that sends `{"event":"sync"}` gets them (marked
`"replayed": true`, in the order they happened, with Kamailio's own `ts`), then
`{"event":"synced","replayed":N}`. Every process is stopped by PID, also on failure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from sidecar.lab.kamailio import JsonRpcError

from . import test_kamailio_lab as base
from .test_kamailio_lab import CALLER, DIALLED, EvapiClient, Event, Lab, Policy

#: The fixture starting a Kamailio of its own per test (``make_lab(fail_open=True)``).
make_lab = base.make_lab

pytestmark = pytest.mark.timeout(120)


def allow_with_account(offer: Event) -> Event:
    """Allow every offer for 60 s and name its account, as the sidecar does."""
    return {"event": "auth", "tindex": offer["tindex"], "tlabel": offer["tlabel"],
            "call_id": offer["call_id"], "action": "allow", "max_duration": 60,
            "account": offer["account_code"]}


def connect(lab: Lab, count: int = 1, policy: Policy = allow_with_account) -> EvapiClient:
    """A new client, closed when the test ends; waits until Kamailio counts ``count``."""
    s = lab.kam.settings
    client = EvapiClient(s.evapi_ip, s.evapi_port, policy)
    lab.stack.callback(client.close)
    lab.kam.wait_evapi_clients(count)
    return client


def disconnect(lab: Lab, client: EvapiClient, count: int = 0) -> None:
    client.close()
    lab.kam.wait_evapi_clients(count)


def sync(client: EvapiClient, timeout: float = 5.0) -> tuple[list[Event], Event]:
    """Send `sync`; return the events that came before the new `synced`, and `synced`."""
    start = len(client.events)
    done = len(client.of_kind("synced")) + 1
    client.send({"event": "sync"})
    deadline = time.monotonic() + timeout
    while len(client.of_kind("synced")) < done:
        if time.monotonic() > deadline:
            raise AssertionError(f"no 'synced'; got {client.events[start:]}")
        time.sleep(0.02)
    events = client.events[start:]
    n = next(i for i, e in enumerate(events) if e["event"] == "synced")
    return events[:n], events[n]


def kept(lab: Lab) -> int:
    """How many events Kamailio keeps: the store's counter, checked against the store."""
    try:
        count = int(lab.kam.rpc("htable.get", "evstorectl", "count")["item"]["value"])
    except JsonRpcError as exc:
        assert exc.message == "Key name doesn't exist in htable.", exc
        count = 0  # nothing was ever kept
    slots = lab.kam.rpc("htable.dump", "evstore")
    assert count == sum(len(slot["slot"]) for slot in slots), slots
    return count


def test_end_while_disconnected_is_replayed_with_its_real_time(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab()
    first = connect(lab)
    uas = lab.uas("uas.xml")
    uac = lab.uac(account_code="ACME-42", duration_ms=3000)
    answer = first.wait_for("answer")
    call_id = answer["call_id"]
    # Sent live: not replayed, and it names the account, dialled number and caller.
    assert "replayed" not in answer
    assert (answer["account"], answer["callee"], answer["caller"]) == (
        "ACME-42", DIALLED, CALLER)

    disconnect(lab, first)  # the sidecar goes away mid-call
    r_uac, r_uas = uac.wait(), uas.wait()
    assert r_uac.calls_ok, r_uac.output_tail()
    assert r_uas.calls_ok, r_uas.output_tail()
    (bye,) = [m for m in r_uac.sent("BYE") if not m.is_response]
    assert not first.of_kind("end")
    assert kept(lab) == 1

    time.sleep(3)  # the sidecar comes back a few seconds later
    reconnected_at = time.time()
    second = connect(lab)
    assert not second.events  # nothing is pushed before the sidecar asks
    replayed, synced = sync(second)
    assert [e["event"] for e in replayed] == ["end"]
    (end,) = replayed
    assert end["replayed"] is True
    assert end["call_id"] == call_id
    assert (end["h_entry"], end["h_id"]) == (answer["h_entry"], answer["h_id"])
    assert (end["by"], end["reason"]) == ("caller", "bye")
    assert end["start_ts"] == pytest.approx(answer["ts"], abs=1e-3)
    # Kamailio's time of the BYE, not the time the sidecar came back.
    assert end["ts"] == pytest.approx(bye.timestamp, abs=1.0)
    assert end["ts"] < reconnected_at - 2
    assert (end["account"], end["callee"], end["caller"]) == ("ACME-42", DIALLED, CALLER)
    assert synced == {"event": "synced", "replayed": 1}
    assert kept(lab) == 0

    # What was replayed is gone: a second sync replays nothing.
    again, synced = sync(second)
    assert again == []
    assert synced["replayed"] == 0

    # Events while a sidecar is connected are sent, not kept.
    uas = lab.uas("uas.xml")
    r_uac = lab.uac(account_code="ACME-42", duration_ms=500).wait()
    assert r_uac.calls_ok and uas.wait().calls_ok, r_uac.output_tail()
    live = second.wait_for("end", r_uac.sent("INVITE")[0].call_id)
    assert "replayed" not in live
    assert kept(lab) == 0
    disconnect(lab, second)
    third = connect(lab)
    replayed, synced = sync(third)
    assert replayed == [] and synced["replayed"] == 0


def test_answer_and_end_are_replayed_in_order(make_lab: Callable[..., Lab]) -> None:
    """FAIL_OPEN: a whole call with no sidecar at all. Its `answer` comes back before its
    `end`, and a second call's events after the first's."""
    lab = make_lab(fail_open=True)
    uas = lab.uas("uas.xml", duration_ms=0)
    first = lab.uac(duration_ms=1000).wait()
    assert first.calls_ok, first.output_tail()
    assert uas.wait().calls_ok
    uas = lab.uas("uas.xml")
    second = lab.uac(duration_ms=500).wait()
    assert second.calls_ok and uas.wait().calls_ok

    client = connect(lab)
    replayed, synced = sync(client)
    ids = [first.sent("INVITE")[0].call_id, second.sent("INVITE")[0].call_id]
    assert [(e["event"], e["call_id"]) for e in replayed] == [
        ("answer", ids[0]), ("end", ids[0]), ("answer", ids[1]), ("end", ids[1])]
    assert all(e["replayed"] is True for e in replayed)
    assert [e["ts"] for e in replayed] == sorted(e["ts"] for e in replayed)
    assert replayed[1]["ts"] - replayed[0]["ts"] == pytest.approx(1.0, abs=0.5)
    assert replayed[1]["start_ts"] == pytest.approx(replayed[0]["ts"], abs=1e-3)
    # Not authorized by a sidecar: the authorization fields are empty, not missing.
    assert (replayed[1]["account"], replayed[1]["callee"], replayed[1]["caller"]) == (
        "", "", "")
    assert "m=audio" in replayed[0]["sdp"]
    assert synced["replayed"] == 4


def test_failed_while_disconnected_is_replayed_to_the_syncing_client_only(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab()
    r = lab.uac("uac_reject.xml").wait()  # no sidecar: 503 at once
    assert r.calls_ok and r.final_codes == [503], r.output_tail()
    call_id = r.sent("INVITE")[0].call_id

    bystander = connect(lab, 1)
    asker = connect(lab, 2)
    replayed, synced = sync(asker)
    assert [(e["event"], e["call_id"], e["code"], e["replayed"]) for e in replayed] == [
        ("failed", call_id, 503, True)]
    assert synced["replayed"] == 1
    time.sleep(0.3)
    assert bystander.events == []  # replayed to the client that asked, nobody else


def test_the_store_is_bounded(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(extra_defines={"EVENT_STORE_MAX": 1})
    ids = []
    for _ in range(2):
        r = lab.uac("uac_reject.xml").wait()
        assert r.final_codes == [503], r.output_tail()
        ids.append(r.sent("INVITE")[0].call_id)
    assert kept(lab) == 1
    log = lab.kam.log_text()
    assert f"event store full (1 events): failed of {ids[1]} dropped" in log

    client = connect(lab)
    replayed, synced = sync(client)
    assert [e["call_id"] for e in replayed] == [ids[0]]
    assert synced["replayed"] == 1


def test_a_client_that_does_not_sync_gets_live_events_only(
    make_lab: Callable[..., Lab],
) -> None:
    """An older sidecar (no `sync`): live events as before; what was kept stays kept."""
    lab = make_lab()
    r = lab.uac("uac_reject.xml").wait()
    assert r.final_codes == [503], r.output_tail()
    old = connect(lab)
    time.sleep(0.5)
    assert old.events == []
    assert kept(lab) == 1


def test_replay_follows_the_sequence_across_gaps(make_lab: Callable[..., Lab]) -> None:
    """Events expire (or were replayed) in between: what is left comes back in sequence
    order, whatever the hash table's order, and the gaps send nothing."""
    lab = make_lab()
    keys = [k for k in range(10, 400) if k % 7 != 3 and k % 11 != 5]
    shuffled = sorted(keys, key=lambda k: (k * 7919) % 401)  # not in sequence order
    with lab.kam.rpc_client() as rpc:
        for k in shuffled:
            doc = {"event": "end", "call_id": f"call-{k}", "replayed": True}
            rpc.call("htable.sets", "evstore", str(k), json.dumps(doc))
        rpc.call("htable.seti", "evstorectl", "seq", 405)
        rpc.call("htable.seti", "evstorectl", "count", len(keys))
    client = connect(lab)
    replayed, synced = sync(client)
    assert [e["call_id"] for e in replayed] == [f"call-{k}" for k in keys]
    assert synced["replayed"] == len(keys)
    assert kept(lab) == 0
