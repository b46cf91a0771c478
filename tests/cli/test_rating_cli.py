"""The rating CLI as a user runs it: the installed ``sidecar`` console script."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import write

DECK = """destination;code;rate_usd;increment;effective_from
Germany Fixed;4930;0.0095;1/1;2026-06-01
Germany Mobile T-Mobile;49151;0.0210;1/1;2026-06-01
Germany Mobile Vodafone;49152;0.0205;1/1;2026-06-01
Malta EEA;356;0.30;60/60;2026-06-01
"""


def run(tmp: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SIDECAR_DB": str(tmp / "cli.db")}
    p = subprocess.run(["sidecar", *args], capture_output=True, text=True, env=env, timeout=60)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    run(tmp_path, "deck", "import", str(write(tmp_path / "carrier.csv", DECK)), "--plan",
        "carrier", "--as-of", "2026-11-21")
    return tmp_path


def test_rate_json(plan: Path) -> None:
    out = run(plan, "rate", "--plan", "carrier", "--number", "+4915112345678", "--duration",
              "61", "--at", "2026-11-21T10:00:00", "--json").stdout
    doc = json.loads(out)
    assert {k: doc[k] for k in ("destination", "prefix", "increment", "billed_seconds", "cost",
                                "currency")} == {
        "destination": "Germany Mobile T-Mobile", "prefix": "49151", "increment": "1/1",
        "billed_seconds": 61, "cost": "0.02135000", "currency": "USD"}


def test_rate_text_and_no_rate(plan: Path) -> None:
    out = run(plan, "rate", "--plan", "carrier", "--number", "004930123", "--duration", "7")
    assert "Germany Fixed" in out.stdout and "4930" in out.stdout
    miss = run(plan, "rate", "--plan", "carrier", "--number", "+33123456", "--duration", "7",
               ok=False)
    assert miss.returncode == 1
    assert "no rate for 33123456" in miss.stderr
    j = run(plan, "rate", "--plan", "carrier", "--number", "+33123456", "--duration", "7",
            "--json", ok=False)
    assert json.loads(j.stdout)["error"] == "no_rate"


def test_rate_batch_csv(plan: Path) -> None:
    calls = write(plan / "calls.csv", "number,duration,cli,at\n4930111,7,,2026-11-21T10:00:00\n"
                  "+49152999,61.5,,\n35699123456,5,+390612345678,\n99999,10,,\n")
    out = run(plan, "rate", "--plan", "carrier", "--calls", str(calls)).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["billed_seconds"] for r in rows[:3]] == ["7", "62", "60"]
    assert rows[1]["destination"] == "Germany Mobile Vodafone"
    assert rows[2]["cost"] == "0.30000000"
    assert rows[3]["error"].startswith("no rate for 99999")


def test_bad_deck_via_cli_names_file_line_column(plan: Path) -> None:
    bad = write(plan / "bad.csv", DECK + "France;33;0.01;6/;2026-06-01\n")
    p = run(plan, "deck", "import", str(bad), "--plan", "carrier", ok=False)
    assert p.returncode == 2
    assert "bad.csv:6:4 (increment)" in p.stderr
    assert "nothing imported" in p.stderr
    show = json.loads(run(plan, "deck", "show", "--plan", "carrier", "--json").stdout)
    assert len(show["versions"]) == 1


def test_export_round_trips(plan: Path) -> None:
    out = plan / "export.csv"
    run(plan, "deck", "export", "--plan", "carrier", "--out", str(out))
    text = out.read_text()
    assert text.splitlines()[0] == "destination;code;rate_usd;increment;effective_from"
    assert "Germany Mobile T-Mobile;49151;0.0210;1/1;2026-06-01" in text
    run(plan, "deck", "import", str(out), "--plan", "copy", "--as-of", "2026-11-21")
    a = run(plan, "deck", "show", "--plan", "carrier", "--json").stdout
    b = run(plan, "deck", "show", "--plan", "copy", "--json").stdout
    strip = [{k: v for k, v in ln.items() if k != "version"} for ln in json.loads(a)["lines"]]
    assert strip == [{k: v for k, v in ln.items() if k != "version"}
                     for ln in json.loads(b)["lines"]]
