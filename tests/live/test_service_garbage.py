"""The live service survives whatever arrives on evapi: it logs, counts and carries on."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sidecar.config import Config
from sidecar.live.service import Sidecar


def test_garbage_messages_are_counted_not_fatal(tmp_path: Path) -> None:
    sidecar = Sidecar(Config(), tmp_path / "s.db")
    for payload in (b"not json", b"[]", b'{"event":"bogus","call_id":"x"}',
                    b'{"event":"offer","call_id":"x"}', b"\xff\xfe",
                    b'{"event":"answer","call_id":"unknown","h_entry":1,"h_id":2,"ts":1}',
                    b'{"event":"end","call_id":"unknown","h_entry":1,"h_id":2,"ts":2}'):
        sidecar.on_message(payload)
    assert sidecar.counters["bad_events"] == 5
    assert sidecar.counters["answer"] == sidecar.counters["end"] == 1
    assert sidecar.counters["errors"] == 0


def test_offers_that_keep_arriving_late_are_answered_busy_at_once(tmp_path: Path) -> None:
    """Overload: offers that waited longer than shed_after_ms, one after the other, get
    `busy` (Kamailio answers 503 or relays under FAIL_OPEN) without being decided; one
    late offer, or a burst of them, does not; once offers are on time again they are
    decided again."""
    sidecar = Sidecar(Config(shed_after_ms=40), tmp_path / "s.db")
    sent: list[dict[str, object]] = []
    sidecar.evapi.send = lambda m: sent.append(m) or True  # type: ignore[method-assign]

    def offer(i: int, waited_ms: float) -> None:
        ts = time.time() - waited_ms / 1000
        sidecar.on_message(json.dumps({
            "event": "offer", "call_id": f"c{i}", "h_entry": 1, "h_id": i, "ts": ts,
            "tindex": i, "tlabel": i, "ruri_user": "4930123", "account_code": "X"}).encode())

    offer(0, 300)  # one late offer among punctual ones: decided (403: unknown account)
    assert sent[-1]["action"] == "reject"
    for i in range(1, 60):
        offer(i, 300)
    actions = [m["action"] for m in sent]
    assert "busy" not in actions[:20]  # a burst of late offers is still decided
    assert actions[-1] == "busy" and "busy" in actions[:45]  # sustained lateness is not
    assert sidecar.counters["shed"] == actions.count("busy")
    for i in range(60, 100):
        offer(i, 1)
    assert sent[-1]["action"] == "reject"
