"""The writer behind its queue: after a full batch, what is left goes without the commit
delay (it has waited a whole batch already); a batch that is not behind still waits for
company."""

from __future__ import annotations

import time
from pathlib import Path

from tests.store.test_writer import Live, check, prepare


def test_after_a_full_batch_the_rest_is_not_delayed(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    prepare(db, {"acme": "100", "beta": "100"})
    live = Live(db, tmp_path / "j", max_batch=10, commit_delay_ms=4000)
    try:
        t0 = time.monotonic()
        for i in range(8):  # 16 commands: a full batch of 10, then 6 left
            live.call(f"c{i}", "acme" if i % 2 else "beta", 30)
        live.settled()
        took = time.monotonic() - t0
    finally:
        live.stop()
    assert live.writer.commands == 16
    assert live.writer.batches == 2
    # The first batch filled up at once; the 6 left did not wait the 4 s delay.
    assert took < 2.0, took
    check(db)


def test_a_batch_not_behind_waits_for_company(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    prepare(db, {"acme": "100"})
    live = Live(db, tmp_path / "j", max_batch=10, commit_delay_ms=300)
    try:
        live.call("c0", "acme", 30)  # reserve + settle: 2 commands, one transaction
        live.settled()
        live.call("c1", "acme", 30)
        live.settled()
    finally:
        live.stop()
    assert (live.writer.commands, live.writer.batches) == (4, 2)
