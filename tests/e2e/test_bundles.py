"""End to end: free-minute bundles (issue 14) with the real Kamailio, the real ``sidecar
run`` and real SIPp calls.

- A call that starts inside its bundle and ends outside it is split at the exact second:
  bundle seconds + paid seconds = billed seconds, the paid part at the deck's rate.
- A prepaid account with no money and a 4 s bundle: its call is cut (BYE both ways) when
  the bundle is used, and costs nothing. That bundle is added while ``sidecar run`` runs:
  it follows bundle changes without a restart.
- ``sidecar bundle list`` shows what is used and left. Every process is stopped by PID."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.lab.live import LiveLab
from sidecar.store.accounts import verify_ledger
from tests.e2e.test_limits import cli, cli_json
from tests.e2e.test_live_sidecar import (
    DECK,
    DIALLED,
    account,
    balance,
    call_cut_on_time,
    cdrs,
    deck_store,
    wait_for,
)

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = deck_store(tmp_path, DECK)
    yield conn
    conn.close()


def test_a_call_crossing_its_bundle_is_split_and_an_empty_account_is_cut_at_its_end(
        tmp_path: Path, db: sqlite3.Connection) -> None:
    path = tmp_path / "sidecar.db"
    account(db, "MIX", "1")
    account(db, "FREE", "0")
    cli(path, "bundle", "add", "de3", "--account", "MIX", "--seconds", "3",
        "--destination", "Germany Fixed")
    with LiveLab(tmp_path / "lab", path) as lab:
        # Started inside the 3 s bundle, ended well outside it.
        lab.uas()
        r = lab.uac(account_code="MIX", dialled=DIALLED, duration_ms=6_000).wait()
        assert r.calls_ok, r.output_tail() + lab.log_tail()
        wait_for(lambda: len(cdrs(db, "MIX")) == 1)

        # No money, a 4 s bundle added now, while the sidecar runs.
        refused = lab.uac("uac_reject.xml", account_code="FREE", dialled=DIALLED).wait()
        assert refused.final_codes == [402], refused.output_tail() + lab.log_tail()
        cli(path, "bundle", "add", "free4", "--account", "FREE", "--seconds", "4")
        time.sleep(1.5)  # the store thread looks for changes every 0.1 s
        call_cut_on_time(lab, "FREE", 4.0)
        wait_for(lambda: len([c for c in cdrs(db, "FREE")
                              if c["disposition"] == "answered"]) == 1)

    (mix,) = cdrs(db, "MIX")
    billed = int(str(mix["billed_seconds"]))
    assert billed == math.ceil(int(str(mix["duration_ms"])) / 1000) >= 5
    assert (mix["bundle"], mix["bundle_seconds"]) == ("de3", 3)
    # The paid part: billed - 3 s at 0.06/min (0.001/s), exactly.
    paid = billed - 3
    assert Decimal(str(mix["cost"])) == Decimal("0.001") * paid == Decimal(str(mix["charged"]))
    assert balance(db, "MIX") == Decimal(1) - Decimal("0.001") * paid

    (free,) = [c for c in cdrs(db, "FREE") if c["disposition"] == "answered"]
    assert (free["ended_by"], free["end_reason"]) == ("proxy", "credit exhausted")
    assert (free["billed_seconds"], free["bundle_seconds"], free["bundle"]) == (4, 4, "free4")
    assert Decimal(str(free["cost"])) == 0 == balance(db, "FREE")
    assert all(not c.problems for c in verify_ledger(db))

    (b,) = cli_json(path, "bundle", "list", "--account", "FREE")["bundles"]
    assert (b["used_seconds"], b["held_seconds"], b["left_seconds"]) == (4, 0, 0)
    (b,) = cli_json(path, "bundle", "list", "--account", "MIX")["bundles"]
    assert (b["used_seconds"], b["left_seconds"]) == (3, 0)
