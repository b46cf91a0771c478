"""The main job, as README gives it: the demo (real Kamailio, the real ``sidecar run``,
real SIPp calls with RTP) runs to the end, every call comes out as the demo says, and the
demo's own check fails loudly when one does not."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.demo import CALLS, check

pytestmark = pytest.mark.timeout(240)


def test_demo_runs_and_every_call_comes_out_as_described(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "sidecar.demo", "--keep", str(run)],
                          capture_output=True, text=True, timeout=200,
                          stdin=subprocess.DEVNULL, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert f"all {len(CALLS)} calls came out as described above" in out, out[-4000:]
    assert "ledger verified" in out

    # What a user reads in the database afterwards, checked here on its own.
    conn = sqlite3.connect(run / "demo.db")
    balances = {code: Decimal(str(b)) for code, b in
                conn.execute("SELECT code, balance FROM accounts")}
    assert balances["TIGHT"] == 0  # 0.04 of credit, all of it used, not a cent more
    assert balances["BROKE"] == 0
    assert all(b >= 0 for b in balances.values()), balances
    cdrs = conn.execute("SELECT account, disposition, sip_code, charged, bundle_seconds, "
                        "ended_by FROM cdrs ORDER BY id").fetchall()
    assert [(a, d, c) for a, d, c, *_ in cdrs] == [
        ("ACME", "answered", 200), ("BROKE", "rejected", 402), ("TIGHT", "answered", 200),
        ("ACME", "no-media", 200), ("ACME", "answered", 200), (None, "rejected", 403),
        ("BUNDLE", "answered", 200), ("RCUST", "answered", 200)]
    assert Decimal(str(cdrs[2][3])) == Decimal("0.04") and cdrs[2][5] == "proxy"
    assert cdrs[6][4] == 5  # the bundle's 5 s, the rest paid
    conn.close()

    # The demo's check names what differs: a call charged a cent short, a balance below
    # zero, a reply that did not come.
    tampered = tmp_path / "tampered.db"
    shutil.copy(run / "demo.db", tampered)
    conn = sqlite3.connect(tampered)
    conn.execute("UPDATE cdrs SET charged = '0.03' WHERE account = 'TIGHT'")
    conn.execute("UPDATE accounts SET balance = '-0.01' WHERE code = 'TIGHT'")
    finals: list[int | None] = [e.code for e in CALLS]
    finals[-1] = None
    problems = check(conn, finals)
    conn.close()
    assert "call 3: charged 0.03, not 0.04" in problems
    assert "account TIGHT: balance -0.01 below zero" in problems
    assert f"call {len(CALLS)}: the caller got no final reply, not 200" in problems
    assert any(p.startswith("ledger of TIGHT: ") for p in problems), problems
