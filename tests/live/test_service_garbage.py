"""The live service survives whatever arrives on evapi: it logs, counts and carries on."""

from __future__ import annotations

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
