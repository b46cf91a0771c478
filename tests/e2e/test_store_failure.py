"""The real sidecar beside the real Kamailio when its database's disk fills up.

The database lives on a small tmpfs the test mounts (``tmpfs`` in conftest) and fills to
the last byte; the journal lives on another filesystem. Calls are real (SIPp through Kamailio).
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.lab.live import LiveLab
from sidecar.store.accounts import verify_ledger
from sidecar.store.db import connect
from sidecar.store.decks import import_deck
from tests.conftest import fill
from tests.e2e.test_live_sidecar import DECK, DIALLED, account, cdrs, wait_for

pytestmark = pytest.mark.timeout(240)


def test_full_disk_ends_unrecorded_prepaid_calls_refuses_new_ones_and_loses_nothing(
        tmpfs: Path, tmp_path: Path) -> None:
    db_path = tmpfs / "sidecar.db"
    db = connect(db_path)
    (tmp_path / "deck.csv").write_text(DECK)
    import_deck(db, "retail", tmp_path / "deck.csv", as_of=datetime(2026, 1, 1, tzinfo=UTC))
    account(db, "ACME", "10")
    journal = tmp_path / "journal"
    with LiveLab(tmp_path / "lab", db_path, journal=journal) as lab:
        # A call answered while the disk has room: its first minute is held.
        uas = lab.uas("uas.xml", calls=3, timeout_s=120)  # calls A, B and D
        call_a = lab.uac(account_code="ACME", dialled=DIALLED, duration_ms=6_000)
        wait_for(lambda: db.execute("SELECT COUNT(*) FROM live_calls").fetchone()[0] == 1)
        filler = fill(tmpfs)
        # Answered now: its credit cannot be recorded, so the sidecar ends it at once.
        t0 = time.monotonic()
        rb = lab.uac(account_code="ACME", dialled=DIALLED, duration_ms=20_000).wait()
        assert time.monotonic() - t0 < 10, "the unrecorded call ran on"
        assert rb.received("BYE"), rb.output_tail() + lab.log_tail()
        # The store is down: new calls are refused at once, 503.
        rc = lab.uac("uac_reject.xml", account_code="ACME", dialled=DIALLED).wait()
        assert rc.final_codes == [503], rc.output_tail() + lab.log_tail()
        # Call A runs to its end; its settlement goes to the journal.
        assert call_a.wait().calls_ok
        wait_for(lambda: journal.exists() and journal.stat().st_size > 0)
        assert cdrs(db, "ACME") == []
        out = subprocess.run(["sidecar", "--db", str(db_path), "journal", "--journal",
                              str(journal)], capture_output=True, text=True, check=True).stdout
        assert "pending" in out
        # Space comes back: everything lands, once; new calls are taken again.
        filler.unlink()
        wait_for(lambda: not journal.exists(), timeout=20)
        rd = lab.uac(account_code="ACME", dialled=DIALLED, duration_ms=1_000).wait()
        uas.wait()
        assert rd.calls_ok, rd.output_tail() + lab.log_tail()
        wait_for(lambda: len(cdrs(db, "ACME")) == 4)
        log = lab.sidecar_log.read_text()
    rows = {(c["disposition"], c["sip_code"], c["end_reason"]) for c in cdrs(db, "ACME")}
    assert ("rejected", 503, next(c["end_reason"] for c in cdrs(db, "ACME")
                                  if c["disposition"] == "rejected")) in rows
    by_duration = sorted(cdrs(db, "ACME"), key=lambda c: int(str(c["duration_ms"])))
    answered = [c for c in by_duration if c["disposition"] == "answered"]
    assert len(answered) == 3
    ended_by_store = [c for c in answered if "store unavailable" in str(c["end_reason"])]
    assert len(ended_by_store) == 1
    assert int(str(ended_by_store[0]["duration_ms"])) < 5_000
    call_a_cdr = answered[-1]
    assert 5_900 <= int(str(call_a_cdr["duration_ms"])) <= 7_000
    assert Decimal(str(call_a_cdr["charged"])) > 0
    assert db.execute("SELECT COUNT(*) FROM live_calls").fetchone()[0] == 0
    assert all(not c.problems for c in verify_ledger(db))
    assert "store failed" in log and "store writable again" in log
    db.close()
