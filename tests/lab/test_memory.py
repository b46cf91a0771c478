"""Shared memory in the shipped configuration (SHM_RESERVE_PCT), with the real Kamailio.

Every call holds shared memory in Kamailio (its transactions, kept 5 s after they
complete, its dialog); a rate beyond what Kamailio's -m holds used to exhaust it, and
then transactions of running calls failed ("out of mem") and their events were sent
without the fields that did not fit (an ``end`` without its ``call_id``, which the
sidecar cannot settle). With the reserve, new INVITEs are refused statelessly while
less than SHM_RESERVE_PCT per cent is free: every call let in keeps whole events.

The pool is made small (24 MB, a reserve of 40%) so that a modest rate through SIPp
fills it in a few seconds on any machine. The reserve must hold what the calls let in
still allocate (their BYE transactions: about 15 KB a call), here 200 calls/s for the
1 s calls last.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.lab.test_kamailio_lab import Lab, allow

pytestmark = [pytest.mark.timeout(120)]

SHM_MB = 24
RESERVE_PCT = 40
RATE = 200
CALLS = 1200
MEMORY_ERRORS = ("out of mem", "could not allocate shared memory", "Free fragment not found")


def _load(lab: Lab) -> tuple[int, str]:
    """CALLS calls of 1 s at RATE/s through the lab; (successful calls, Kamailio's log)."""
    uas = lab.uas("uas.xml", calls=CALLS)
    uac = lab.uac(duration_ms=1000, calls=CALLS, timeout_s=60,
                  extra=["-r", str(RATE), "-l", str(RATE * 5)], trace_messages=False)
    result = uac.wait()
    uas.stop()
    log = lab.kam.log_path.read_text(errors="replace")
    return int(result.stats.get("SuccessfulCall(C)", "0") or 0), log


def test_a_full_pool_refuses_new_calls_and_the_calls_let_in_keep_whole_events(
        make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(shm_mb=SHM_MB, log_events=False, children=2,
                   extra_defines={"SHM_RESERVE_PCT": RESERVE_PCT})
    sidecar = lab.client(allow(60))
    completed, log = _load(lab)

    # New calls were refused for memory (503 before any state: no offer) ...
    assert f"less than {RESERVE_PCT}% of shared memory free" in log
    shed = int(lab.kam.rpc("htable.get", "overload", "shed")["item"]["value"])
    offers = sidecar.of_kind("offer")
    assert shed > 0
    assert len(offers) + shed <= CALLS + 50  # (retransmitted INVITEs count again)
    # ... while every call let in ran: no allocation failed ...
    assert not [e for e in MEMORY_ERRORS if e in log], \
        [ln for ln in log.splitlines() if any(e in ln for e in MEMORY_ERRORS)][:5]
    assert completed >= 50
    # ... and each of its events arrived whole: an answer and an end per offer, with the
    # Call-ID and the dialog's ids (what the sidecar settles on).
    offered = {e["call_id"] for e in offers}
    for kind in ("answer", "end"):
        events = sidecar.of_kind(kind)
        assert all(isinstance(e.get("call_id"), str) and isinstance(e.get("h_id"), int)
                   for e in events), [e for e in events if "call_id" not in e][:3]
    ended = {e["call_id"] for e in sidecar.of_kind("end")}
    assert len(ended) >= completed
    assert ended <= offered
    # Once the calls are over (their transactions kept 5 s), the memory is back and new
    # calls are admitted again.
    deadline = time.monotonic() + 20
    while int(lab.kam.rpc("pv.shvGet", "ovl_mem")["value"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "shared memory free again" in lab.kam.log_path.read_text(errors="replace")


def test_without_the_reserve_the_same_load_fails_allocations_of_running_calls(
        make_lab: Callable[..., Lab]) -> None:
    # What the reserve prevents (the default before it): the pool runs out and Kamailio
    # fails transactions of calls it has let in.
    lab = make_lab(shm_mb=SHM_MB, log_events=False, children=2,
                   extra_defines={"SHM_RESERVE_PCT": 0})
    lab.client(allow(60))
    _completed, log = _load(lab)
    assert "shared memory free" not in log
    assert [e for e in MEMORY_ERRORS if e in log]
