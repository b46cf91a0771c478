"""``sidecar limits``, ``sidecar account parent`` and ``sidecar fraud`` through the
command, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.charging.commands import Flag
from sidecar.store.accounts import ledger_for
from sidecar.store.conn import Db
from tests.cli.test_rating_cli import DECK, run
from tests.conftest import target_of, write
from tests.store.pgdb import T0

SUSPEND = "fraud rule spend_per_minute: 1.20 spent in the last minute (limit 0.50)"
BLOCK = "fraud rule distinct_callees: 31 numbers in 10 minutes (limit 30)"


@pytest.fixture
def cli(store: Db, tmp_path: Path) -> tuple[Db, Path, str]:
    """Plan 'carrier' and a tree of accounts: CUST, its department DEPT, a team TEAM."""
    target = target_of(store)
    sc = _runner(tmp_path, target)
    sc("deck", "import", str(write(tmp_path / "carrier.csv", DECK)), "--plan", "carrier",
       "--as-of", "2026-11-21")
    sc("account", "add", "CUST", "--plan", "carrier")
    sc("account", "add", "DEPT", "--plan", "carrier", "--parent", "CUST")
    sc("account", "add", "TEAM", "--plan", "carrier", "--parent", "DEPT")
    return store, tmp_path, target


def _runner(tmp: Path, target: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    def sc(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return run(tmp, "--db", target, *args, ok=ok)
    return sc


def test_limits_are_set_shown_and_inherited(cli: tuple[Db, Path, str]) -> None:
    _db, tmp, target = cli
    sc = _runner(tmp, target)
    out = sc("limits", "set", "--plan", "carrier", "concurrent_calls=10", "max_rate=2",
             "deny=44,+33").stdout
    assert "plan carrier limits: concurrent_calls=10, max_rate=2, deny=33,44" in out
    sc("limits", "set", "--account", "CUST", "concurrent_calls=5",
       "spend_per_minute_action=suspend")
    out = sc("limits", "set", "--account", "DEPT", "max_rate=none").stdout
    assert "max_rate=none" in out

    doc = json.loads(sc("limits", "show", "--account", "TEAM", "--json").stdout)
    assert doc == {
        "account": "TEAM", "own": {},
        "effective": {"concurrent_calls": 5, "max_rate": None, "deny": ["33", "44"],
                      "spend_per_minute_action": "suspend"},
        "source": {"concurrent_calls": "account CUST", "max_rate": "account DEPT",
                   "deny": "plan carrier", "spend_per_minute_action": "account CUST"}}
    text = sc("limits", "show", "--account", "TEAM").stdout
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
            for line in text.splitlines() if line.count("│") == 4}
    assert rows == {"concurrent_calls": ["5", "account CUST"],
                    "max_rate": ["none (no limit)", "account DEPT"],
                    "deny": ["33,44", "plan carrier"],
                    "spend_per_minute_action": ["suspend", "account CUST"]}
    assert "own limits: none (all inherited)" in text

    # The team's own value wins; --unset inherits again.
    sc("limits", "set", "--account", "TEAM", "concurrent_calls=2", "max_rate=0.5")
    doc = json.loads(sc("limits", "show", "--account", "TEAM", "--json").stdout)
    assert doc["own"] == {"concurrent_calls": 2, "max_rate": "0.5"}
    assert doc["source"]["concurrent_calls"] == "account TEAM"
    sc("limits", "set", "--account", "TEAM", "--unset", "concurrent_calls")
    doc = json.loads(sc("limits", "show", "--account", "TEAM", "--json").stdout)
    assert doc["own"] == {"max_rate": "0.5"} and doc["effective"]["concurrent_calls"] == 5

    shown = json.loads(sc("account", "show", "TEAM", "--json").stdout)
    assert (shown["parent"], shown["blocked"], shown["limits"]) == (
        "DEPT", "", {"max_rate": "0.5"})
    assert shown["effective_limits"] == {"concurrent_calls": 5, "max_rate": "0.5",
                                         "deny": ["33", "44"],
                                         "spend_per_minute_action": "suspend"}
    text = sc("account", "show", "TEAM").stdout
    assert "parent: DEPT" in text and "account CUST" in text

    plan = json.loads(sc("limits", "show", "--plan", "carrier", "--json").stdout)
    assert plan["own"] == {"concurrent_calls": 10, "max_rate": "2", "deny": ["33", "44"]}
    # An account alone under a plan with no limits: nothing is set anywhere.
    sc("limits", "set", "--plan", "carrier", "--unset", "concurrent_calls", "--unset",
       "max_rate", "--unset", "deny")
    sc("account", "add", "SOLO", "--plan", "carrier")
    assert "no limits set" in sc("limits", "show", "--account", "SOLO").stdout


def test_bad_input_names_the_key_and_changes_nothing(cli: tuple[Db, Path, str]) -> None:
    _db, tmp, target = cli
    sc = _runner(tmp, target)
    sc("limits", "set", "--account", "CUST", "concurrent_calls=5")
    for args, says in (
            (["concurrent_calls=3", "max_rate=abc"], "limits.max_rate: expected an amount"),
            (["concurrent_calls=0"], "limits.concurrent_calls: expected a whole number"),
            (["deny=44,4x"], "limits.deny: '4x' is not a digit prefix"),
            (["max_rat=1"], "limits.max_rat: unknown limit"),
            (["short_calls_action=kill"], "limits.short_calls_action: expected one of"),
            (["concurrent_calls"], "expected KEY=VALUE"),
            (["--unset", "bogus"], "limits.bogus: unknown limit")):
        p = sc("limits", "set", "--account", "CUST", *args, ok=False)
        assert p.returncode == 2 and says in p.stderr, (args, p.stderr)
    doc = json.loads(sc("limits", "show", "--account", "CUST", "--json").stdout)
    assert doc["own"] == {"concurrent_calls": 5}
    p = sc("limits", "set", "--plan", "carrier", "max_rate=-1", ok=False)
    assert p.returncode == 2 and "limits.max_rate" in p.stderr
    assert json.loads(sc("limits", "show", "--plan", "carrier", "--json").stdout)["own"] == {}

    for args in (["concurrent_calls=1"], ["--account", "CUST", "--plan", "carrier",
                                          "concurrent_calls=1"], ["--account", "CUST"]):
        assert sc("limits", "set", *args, ok=False).returncode == 2
    p = sc("limits", "set", "--account", "NOPE", "concurrent_calls=1", ok=False)
    assert p.returncode == 1 and "account 'NOPE' not found" in p.stderr
    p = sc("limits", "show", "--plan", "nope", ok=False)
    assert p.returncode == 1 and "rate plan 'nope' not found" in p.stderr


def test_parents_refuse_cycles(cli: tuple[Db, Path, str]) -> None:
    _db, tmp, target = cli
    sc = _runner(tmp, target)
    p = sc("account", "parent", "CUST", "TEAM", ok=False)
    assert p.returncode == 1
    assert "'TEAM' is below it (TEAM -> DEPT -> CUST), that would be a cycle" in p.stderr
    assert "own parent" in sc("account", "parent", "CUST", "CUST", ok=False).stderr
    p = sc("account", "add", "X", "--plan", "carrier", "--parent", "NOPE", ok=False)
    assert p.returncode == 1 and "parent account 'NOPE' not found" in p.stderr
    sc("account", "add", "L4", "--plan", "carrier", "--parent", "TEAM")
    p = sc("account", "add", "L5", "--plan", "carrier", "--parent", "L4", ok=False)
    assert "at most 4 tiers" in p.stderr
    assert sc("account", "parent", "TEAM", ok=False).returncode == 2  # PARENT or --none
    assert "no parent" in sc("account", "parent", "TEAM", "--none").stdout
    assert json.loads(sc("account", "show", "TEAM", "--json").stdout)["parent"] is None
    sc("account", "parent", "CUST", "TEAM")  # no cycle any more
    assert json.loads(sc("account", "show", "CUST", "--json").stdout)["parent"] == "TEAM"
    codes = [a["code"] for a in json.loads(sc("account", "list", "--json").stdout)]
    assert "X" not in codes and "L5" not in codes


def test_fraud_events_and_the_operators_lift(cli: tuple[Db, Path, str]) -> None:
    db, tmp, target = cli
    sc = _runner(tmp, target)
    evidence = json.dumps({"spent": "1.20", "limit": "0.50", "window_s": 60})
    res = ledger_for(db).execute([
        Flag(1, "CUST", "spend_per_minute", "suspend", SUSPEND, evidence, "k1", T0),
        Flag(2, "DEPT", "distinct_callees", "block", BLOCK, "{}", "k2", T0 + 60_000),
        Flag(3, "DEPT", "new_country", "alert", "fraud rule new_country: 882 (new)", "{}",
             "k3", T0 + 120_000)])
    assert all(o.ok for o in res.outcomes)

    events = json.loads(sc("fraud", "events", "--json").stdout)
    assert [(e["account"], e["rule"], e["action"], e["open"]) for e in events] == [
        ("CUST", "spend_per_minute", "suspend", True),
        ("DEPT", "distinct_callees", "block", True),
        ("DEPT", "new_country", "alert", False)]
    assert events[0]["evidence"] == {"spent": "1.20", "limit": "0.50", "window_s": 60}
    assert events[0]["time"] == "2026-11-21T12:00:00.000+00:00"
    lines = sc("fraud", "events").stdout.splitlines()
    assert lines[0] == (f"2026-11-21T12:00:00.000+00:00  CUST  spend_per_minute  suspend  "
                        f"{SUSPEND}  [open]")
    assert len(lines) == 3
    assert [e["rule"] for e in json.loads(sc("fraud", "events", "--account", "DEPT",
                                             "--json").stdout)] == ["distinct_callees",
                                                                    "new_country"]
    assert [e["key"] for e in json.loads(sc(
        "fraud", "events", "--from", "2026-11-21T12:00:30", "--to", "2026-11-21T12:01:30",
        "--json").stdout)] == ["k2"]
    assert [e["key"] for e in json.loads(sc("fraud", "events", "--open", "--json").stdout)
            ] == ["k1", "k2"]
    assert "account 'NOPE' not found" in sc("fraud", "events", "--account", "NOPE",
                                            ok=False).stderr

    shown = json.loads(sc("account", "show", "DEPT", "--json").stdout)
    assert shown["blocked"] == BLOCK
    assert f"blocked: {BLOCK}" in sc("account", "show", "DEPT").stdout
    shown = json.loads(sc("account", "show", "CUST", "--json").stdout)
    assert shown["suspended"] and shown["suspend_reason"] == SUSPEND

    out = sc("fraud", "lift", "CUST", "--note", "customer confirmed").stdout
    assert out.strip() == (f"account CUST: 1 fraud event(s) lifted; resumed (was suspended: "
                           f"{SUSPEND})")
    out = sc("fraud", "lift", "DEPT").stdout
    assert out.strip() == f"account DEPT: 1 fraud event(s) lifted; unblocked (was: {BLOCK})"
    assert "nothing to lift" in sc("fraud", "lift", "DEPT").stdout
    cust = json.loads(sc("account", "show", "CUST", "--json").stdout)
    dept = json.loads(sc("account", "show", "DEPT", "--json").stdout)
    assert (cust["suspended"], cust["blocked"], dept["suspended"], dept["blocked"]) == (
        False, "", False, "")
    events = json.loads(sc("fraud", "events", "--json").stdout)
    assert [(e["open"], e["lifted_by"].startswith("cli:"), e["lift_note"])
            for e in events[:2]] == [(False, True, "customer confirmed"), (False, True, "")]
    assert "lifted 20" in sc("fraud", "events", "--account", "CUST").stdout
    assert json.loads(sc("fraud", "events", "--open", "--json").stdout) == []
    p = sc("fraud", "lift", "NOPE", ok=False)
    assert p.returncode == 1 and "account 'NOPE' not found" in p.stderr
