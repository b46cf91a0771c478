"""Usage limits and fraud events in the store, on SQLite and PostgreSQL alike: a fraud
rule's event stored once with its action on the account, limits inherited down the
account tree and from the plan, the operator's lift, the journal, the schema upgrade, and
the change notification a running sidecar hears."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sidecar.charging.commands import Flag
from sidecar.charging.limits import NO_LIMITS, Limits, LimitsError
from sidecar.charging.model import AccountKind
from sidecar.store.accounts import (
    AccountNotFound,
    ParentError,
    add_account,
    get_account,
    ledger_for,
    list_accounts,
    set_parent,
    set_suspended,
)
from sidecar.store.conn import Db
from sidecar.store.db import connect, transaction
from sidecar.store.decks import PlanLoader, import_deck
from sidecar.store.fraud import (
    effective_limits,
    fraud_events,
    lift,
    lift_fraud,
    limits_json,
    set_account_limits,
    update_account_limits,
    update_plan_limits,
)
from sidecar.store.journal import Journal, decode, encode
from sidecar.store.schema import SCHEMA_VERSION
from sidecar.store.writer import SqliteChanges
from tests.conftest import downgrade_and_reopen, reopen, target_of
from tests.store.pgdb import RETAIL_DECK, T0

SUSPEND = "fraud rule spend_per_minute: 1.20 spent in the last minute (limit 0.50)"
BLOCK = "fraud rule distinct_callees: 31 numbers in 10 minutes (limit 30)"


def flag(seq: int, account: str, action: str, key: str, reason: str = "",
         rule: str = "spend_per_minute", now: int = T0) -> Flag:
    return Flag(seq, account, rule, action, reason or f"fraud rule {rule}: tripped",
                json.dumps({"spent": "1.20", "limit": "0.50", "calls": ["c1", "c2"]}), key,
                now)


@pytest.fixture
def db(store: Db, tmp_path: Path) -> Db:
    """The store with plan 'retail' and accounts A, B, C on it."""
    deck = tmp_path / "retail.csv"
    deck.write_text(RETAIL_DECK)
    import_deck(store, "retail", deck, as_of=datetime(2026, 11, 1, tzinfo=UTC))
    for code in ("A", "B", "C"):
        add_account(store, code, "retail", AccountKind.PREPAID, now_ms=T0)
    return store


def test_a_fraud_event_is_stored_once_and_blocks_or_suspends_the_account(db: Db) -> None:
    ledger = ledger_for(db)
    ledger.node = "node-1"
    res = ledger.execute([flag(1, "A", "suspend", "k1", SUSPEND),
                          flag(2, "A", "suspend", "k1", SUSPEND),  # the same event again
                          flag(3, "B", "block", "k2", BLOCK, rule="distinct_callees"),
                          flag(4, "C", "alert", "k3", rule="new_country"),
                          flag(5, "NOPE", "block", "k4")])
    assert not res.error
    ok = [o.ok for o in res.outcomes]
    assert ok == [True, True, True, True, False]
    assert "account 'NOPE' not found" in str(res.outcomes[4].error)
    first, again = res.outcomes[0].settlement, res.outcomes[1].settlement
    assert first is not None and not first.duplicate and again is not None and again.duplicate
    assert res.accounts["A"].suspended and res.accounts["A"].suspend_reason == SUSPEND

    # What another process reads back (a CLI, the API, a restarted sidecar).
    other = reopen(db)
    try:
        a, b, c = (get_account(other, code) for code in ("A", "B", "C"))
        assert (a.suspended, a.suspend_reason, a.blocked) == (True, SUSPEND, "")
        assert (b.suspended, b.blocked) == (False, BLOCK)
        assert (c.suspended, c.blocked) == (False, "")  # an alert only tells
        assert {x.code: x.blocked for x in list_accounts(other)}["B"] == BLOCK
        events = fraud_events(other)
        assert [(e["account"], e["rule"], e["action"], e["node"]) for e in events] == [
            ("A", "spend_per_minute", "suspend", "node-1"),
            ("B", "distinct_callees", "block", "node-1"),
            ("C", "new_country", "alert", "node-1")]
        assert events[0]["evidence"] == {"spent": "1.20", "limit": "0.50",
                                         "calls": ["c1", "c2"]}
        assert events[0]["reason"] == SUSPEND and events[0]["open"]
        assert not events[2]["open"]  # an alert holds nothing
    finally:
        other.close()

    # A journal replayed later flags again: nothing happens twice.
    res = ledger.execute([flag(9, "A", "suspend", "k1", SUSPEND),
                          flag(10, "B", "block", "k2", BLOCK)])
    assert all(o.settlement is not None and o.settlement.duplicate for o in res.outcomes)
    assert len(fraud_events(db)) == 3


def test_events_filter_and_the_lift_accepts_calls_again(db: Db) -> None:
    ledger = ledger_for(db)
    set_suspended(db, "C", True, "unpaid invoice")  # an operator's suspension
    res = ledger.execute([flag(1, "A", "suspend", "k1", SUSPEND, now=T0),
                          flag(2, "B", "block", "k2", BLOCK, now=T0 + 60_000),
                          flag(3, "B", "alert", "k3", now=T0 + 120_000),
                          flag(4, "C", "block", "k4", BLOCK, now=T0 + 180_000)])
    assert all(o.ok for o in res.outcomes)
    assert [e["key"] for e in fraud_events(db, account="B")] == ["k2", "k3"]
    assert [e["key"] for e in fraud_events(db, from_ms=T0 + 60_000, to_ms=T0 + 180_000)] == [
        "k2", "k3"]
    assert [e["key"] for e in fraud_events(db, open_only=True)] == ["k1", "k2", "k4"]

    done = lift(db, "A", "cli:ops", "customer confirmed the calls", T0 + 300_000)
    assert done == {"account": "A", "lifted": 1, "unblocked": None, "resumed": SUSPEND,
                    "still_suspended": None}
    a = get_account(reopen(db), "A")
    assert (a.suspended, a.suspend_reason, a.blocked) == (False, "", "")
    (ev,) = fraud_events(db, account="A")
    assert (ev["open"], ev["lifted_ms"], ev["lifted_by"], ev["lift_note"]) == (
        False, T0 + 300_000, "cli:ops", "customer confirmed the calls")

    assert lift_fraud(db, "B", "api", "", T0 + 300_000) == 1  # the block, not the alert
    assert get_account(db, "B").blocked == ""
    # C: the fraud block goes, the operator's suspension stays.
    done = lift(db, "C", "api", "", T0 + 300_000)
    assert (done["unblocked"], done["resumed"], done["still_suspended"]) == (
        BLOCK, None, "unpaid invoice")
    c = get_account(db, "C")
    assert (c.blocked, c.suspended, c.suspend_reason) == ("", True, "unpaid invoice")
    assert fraud_events(db, open_only=True) == []
    assert lift_fraud(db, "A", "api", "", T0 + 400_000) == 0  # nothing left to lift
    with pytest.raises(AccountNotFound):
        lift(db, "NOPE", "api", "", T0)


def test_limits_are_inherited_from_parents_and_the_plan(db: Db) -> None:
    # A customer (A), its department (B), a team (C).
    set_parent(db, "B", "A")
    set_parent(db, "C", "B")
    update_plan_limits(db, "retail", {"concurrent_calls": "10", "max_rate": "2",
                                      "deny": "44,+33"})
    update_account_limits(db, "A", {"concurrent_calls": 5,
                                    "spend_per_minute_action": "suspend"})
    update_account_limits(db, "B", {"max_rate": None})  # no limit: stops inheritance
    own, eff, source = effective_limits(db, "C")
    assert own == NO_LIMITS
    assert (eff.concurrent_calls, eff.max_rate, eff.deny, eff.spend_per_minute_action) == (
        5, None, ("33", "44"), "suspend")
    assert source == {"concurrent_calls": "account A", "max_rate": "account B",
                      "deny": "plan retail", "spend_per_minute_action": "account A"}
    c = get_account(db, "C")
    assert (c.parent, c.limits) == ("B", NO_LIMITS)
    assert get_account(db, "B").limits.explicit == {"max_rate"}

    # The team's own value wins; unset, it inherits again.
    update_account_limits(db, "C", {"concurrent_calls": "2"})
    assert limits_json(db, account="C")["source"]["concurrent_calls"] == "account C"
    update_account_limits(db, "C", {}, unset=["concurrent_calls"])
    doc = limits_json(db, account="C")
    assert (doc["own"], doc["effective"]["concurrent_calls"]) == ({}, 5)
    # Off the tree: the plan's.
    set_parent(db, "C", None)
    assert limits_json(db, account="C")["effective"] == {
        "concurrent_calls": 10, "max_rate": "2", "deny": ["33", "44"]}
    assert limits_json(db, plan="retail")["source"] == {
        "concurrent_calls": "plan retail", "max_rate": "plan retail", "deny": "plan retail"}

    # Replaced whole (the API's PUT).
    set_account_limits(db, "A", Limits.parse({"calls_per_second": 3}))
    assert get_account(db, "A").limits.to_dict() == {"calls_per_second": 3}


def test_a_running_sidecar_loads_the_plan_limits_and_follows_their_changes(db: Db) -> None:
    loader = PlanLoader()
    assert loader.load_all(db)["retail"].limits == NO_LIMITS
    update_plan_limits(db, "retail", {"max_call_cost": "5"})
    changed = loader.refresh(db)
    assert changed["retail"].limits.max_call_cost == 5
    assert loader.refresh(db) == {}  # once


def test_bad_limits_name_the_key_and_change_nothing(db: Db) -> None:
    update_account_limits(db, "A", {"max_rate": "1.5"})
    for bad, key in (({"max_rate": "-1"}, "max_rate"), ({"concurrent_calls": "0"},
                                                       "concurrent_calls"),
                     ({"deny": "44,abc"}, "deny"), ({"nope": 1}, "nope"),
                     ({"distinct_action": "kill"}, "distinct_action")):
        with pytest.raises(LimitsError, match=f"limits.{key}"):
            update_account_limits(db, "A", {"calls_per_second": 3, **bad})
        with pytest.raises(LimitsError, match=f"limits.{key}"):
            update_plan_limits(db, "retail", bad)
    assert get_account(db, "A").limits.to_dict() == {"max_rate": "1.5"}
    assert limits_json(db, plan="retail")["own"] == {}
    with pytest.raises(AccountNotFound):
        update_account_limits(db, "NOPE", {"max_rate": "1"})


def test_parents_refuse_cycles_unknown_accounts_and_deep_trees(db: Db) -> None:
    set_parent(db, "B", "A")
    set_parent(db, "C", "B")
    with pytest.raises(ParentError, match="cycle"):
        set_parent(db, "A", "C")
    with pytest.raises(ParentError, match="own parent"):
        set_parent(db, "A", "A")
    with pytest.raises(AccountNotFound, match="'Z'"):
        set_parent(db, "A", "Z")
    with pytest.raises(AccountNotFound, match="'Z'"):
        set_parent(db, "Z", "A")
    add_account(db, "D", "retail", AccountKind.PREPAID, now_ms=T0, parent="C")  # 4 tiers
    with pytest.raises(ParentError, match="at most 4"):
        add_account(db, "E", "retail", AccountKind.PREPAID, now_ms=T0, parent="D")
    add_account(db, "E", "retail", AccountKind.PREPAID, now_ms=T0)
    add_account(db, "F", "retail", AccountKind.PREPAID, now_ms=T0, parent="E")
    with pytest.raises(ParentError, match="at most 4"):  # E's subtree moves with it
        set_parent(db, "E", "C")
    with pytest.raises(AccountNotFound):
        add_account(db, "G", "retail", AccountKind.PREPAID, now_ms=T0, parent="Z")
    assert [a.code for a in list_accounts(db)] == ["A", "B", "C", "D", "E", "F"]
    assert get_account(db, "A").parent is None  # nothing refused was written


def test_changes_reach_a_running_sidecar(db: Db) -> None:
    """A limit change or a lift made elsewhere is heard as any account change is."""
    if isinstance(db, sqlite3.Connection):
        changes = SqliteChanges(connect(target_of(db)))
        changes.changed()

        def heard() -> bool:
            return changes.changed()
    else:
        from sidecar.store.pg import PgChanges, PgLedger, connect_pg, open_pg

        url = target_of(db)
        pg_changes = PgChanges(url, PgLedger(connect_pg(url)), open_pg(url))

        def heard() -> bool:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if pg_changes.changed():
                    return True
                time.sleep(0.05)
            return False
    update_account_limits(db, "A", {"max_rate": "1"})
    assert heard()
    ledger_for(db).execute([flag(1, "A", "block", "k1")])
    assert heard()
    lift(db, "A", "cli:ops", "", T0)
    assert heard()
    update_plan_limits(db, "retail", {"max_rate": "3"})
    assert heard()


def test_a_stored_limit_set_that_does_not_parse_is_logged_and_not_applied(
        db: Db, caplog: pytest.LogCaptureFixture) -> None:
    bad = json.dumps({"max_rate": f"lots-{uuid.uuid4().hex}"})  # (each text logged once)
    with transaction(db):
        db.execute("UPDATE accounts SET limits = ? WHERE code = 'A'", (bad,))
    with caplog.at_level(logging.ERROR, logger="sidecar.store"):
        acc = get_account(db, "A")
        assert acc.limits == NO_LIMITS
        assert {a.code for a in list_accounts(db)} == {"A", "B", "C"}
    assert "account A limits.max_rate" in caplog.text


def test_a_flag_journaled_while_the_store_failed_is_applied_once(db: Db,
                                                                 tmp_path: Path) -> None:
    cmd = flag(7, "B", "block", "node-1:7", BLOCK, rule="distinct_callees")
    assert decode(json.loads(json.dumps(encode(cmd)))) == cmd
    journal = Journal(tmp_path / "sidecar.journal")
    journal.append([cmd, cmd], "run-1")
    assert journal.entries() == [("run-1", cmd), ("run-1", cmd)]
    res = ledger_for(db).execute([c for _run, c in journal.entries()])
    assert [o.settlement is not None and o.settlement.duplicate for o in res.outcomes] == [
        False, True]
    assert get_account(db, "B").blocked == BLOCK
    assert len(fraud_events(db)) == 1


def test_a_version_4_database_is_upgraded(db: Db) -> None:
    """A store written by the previous release (no limits, no block, no fraud events)
    gains them; its accounts read back with no limits and not blocked."""
    sql = ["ALTER TABLE live_calls DROP COLUMN tier_draws", "DROP TABLE reseller_floats",
           "ALTER TABLE live_calls DROP COLUMN tier_holds",
           "ALTER TABLE accounts DROP COLUMN reseller", "DROP TABLE cdr_tiers",
           "ALTER TABLE accounts DROP COLUMN blocked", "ALTER TABLE accounts DROP COLUMN limits",
           "ALTER TABLE plans DROP COLUMN limits", "DROP TABLE fraud_events",
           "ALTER TABLE cdrs DROP COLUMN signalled_ms", "ALTER TABLE plans DROP COLUMN kind",
           "DROP TABLE carrier_events", "DROP TABLE carriers",
           "ALTER TABLE cdrs DROP COLUMN fx_rate", "ALTER TABLE cdrs DROP COLUMN deck_cost",
           "ALTER TABLE cdrs DROP COLUMN deck_currency", "DROP TABLE fx_rates",
           "ALTER TABLE cdrs DROP COLUMN margin", "ALTER TABLE cdrs DROP COLUMN buy_cost",
           "ALTER TABLE cdrs DROP COLUMN bundle_seconds",
           "ALTER TABLE cdrs DROP COLUMN bundle_period", "ALTER TABLE cdrs DROP COLUMN bundle",
           "ALTER TABLE live_calls DROP COLUMN bundle_held",
           "ALTER TABLE live_calls DROP COLUMN bundle_period",
           "ALTER TABLE live_calls DROP COLUMN bundle",
           "DROP TABLE bundle_usage", "DROP TABLE bundles",
           "UPDATE meta SET value = '4' WHERE key = 'schema_version'"]
    up, columns = downgrade_and_reopen(db, sql)
    try:
        assert up.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[
            0] == str(SCHEMA_VERSION) == "11"
        # Version 6's, 8's, 9's, 10's and 11's columns too, at the end of the table as on a
        # new database.
        assert [str(r[0]) for r in up.execute(columns, ("cdrs",))][-10:] == [
            "node", "signalled_ms", "buy_cost", "margin", "deck_currency", "deck_cost",
            "fx_rate", "bundle", "bundle_period", "bundle_seconds"]
        assert [str(r[0]) for r in up.execute(columns, ("live_calls",))][-7:] == [
            "node", "lease_ms", "bundle", "bundle_period", "bundle_held", "tier_holds",
            "tier_draws"]
        assert up.execute("SELECT COUNT(*) FROM reseller_floats").fetchone() == (0,)
        cols = [str(r[0]) for r in up.execute(columns, ("accounts",))]
        assert cols[-3:] == ["blocked", "limits", "reseller"]
        assert [str(r[0]) for r in up.execute(columns, ("plans",))][-2:] == ["limits", "kind"]
        a = get_account(up, "A")
        assert (a.blocked, a.limits, a.parent) == ("", NO_LIMITS, None)
        ledger_for(up).execute([flag(1, "A", "block", "k1", BLOCK)])
        assert get_account(up, "A").blocked == BLOCK
        assert [e["action"] for e in fraud_events(up)] == ["block"]
    finally:
        up.close()


def test_each_node_sees_the_answered_calls_the_other_nodes_carry(db: Db) -> None:
    from decimal import Decimal

    from sidecar.charging.commands import Reserve
    from sidecar.store.fraud import calls_elsewhere

    live = {"number": "4930111", "destination": "Germany", "prefix": "4930",
            "rate": "0.06", "increment": "1/1", "answered_ms": T0}

    def fit(_avail: Decimal) -> tuple[Decimal, int]:
        return Decimal(0), 0

    for node, calls in (("node-1", [("A", "a1"), ("A", "a2"), ("B", "b1")]),
                        ("node-2", [("A", "a3")])):
        ledger = ledger_for(db)
        ledger.node = node
        res = ledger.execute([Reserve(i, acct, ref, Decimal(0), 0, 0, fit, live, T0)
                              for i, (acct, ref) in enumerate(calls)])
        assert not res.error and all(o.ok for o in res.outcomes)
    assert calls_elsewhere(db, "node-2") == {"A": 2, "B": 1}
    assert calls_elsewhere(db, "node-1") == {"A": 1}
    assert calls_elsewhere(db, "node-3") == {"A": 3, "B": 1}
