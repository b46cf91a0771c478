"""SQLite writes of a large batch: multi-row ``INSERT ... VALUES``, ``DELETE ... IN`` and
``UPDATE ... FROM (VALUES ...)`` statements (and NULLs bound through the sqlite3 adapter)
store exactly what row-by-row ``executemany`` stores, ledger ids and live-call upserts
included."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import ClassVar

import pytest

from sidecar.charging.commands import StoreCommand
from sidecar.charging.model import AccountKind
from sidecar.store.accounts import SqliteLedger, add_account, verify_ledger
from sidecar.store.db import connect
from sidecar.store.decks import import_deck
from sidecar.store.dialect import Dialect
from tests.store.pgdb import T0, reserve, settle, topup

DECK = """destination;code;rate_usd;increment;effective_from
Germany Fixed;4930;0.60;1/1;2026-06-01
"""
ACCOUNTS = [f"a{i}" for i in range(7)]


class RowByRow(Dialect):
    multi_sizes: ClassVar[tuple[int, ...]] = ()


class RowByRowLedger(SqliteLedger):
    dialect: ClassVar[Dialect] = RowByRow()


def _store(path: Path, deck: Path) -> sqlite3.Connection:
    conn = connect(path)
    import_deck(conn, "retail", deck)
    for code in ACCOUNTS:
        add_account(conn, code, "retail", AccountKind.PREPAID, now_ms=T0)
        SqliteLedger(conn).topup(code, Decimal("50"), T0)
    return conn


def _batches() -> list[list[StoreCommand]]:
    """Calls reserved, re-reserved (upserts), settled in the same batch or the next, some
    left running; a top-up: every table the batch writes, hundreds of rows each."""
    first: list[StoreCommand] = []
    second: list[StoreCommand] = []
    seq = 0
    for i in range(620):
        acct = ACCOUNTS[i % len(ACCOUNTS)]
        seq += 1
        first.append(reserve(seq, acct, f"c{i}", "0.02", 60))
        if i % 3 == 0:
            seq += 1
            first.append(reserve(seq, acct, f"c{i}", "0.02", 120, paid_before=60))
        if i % 2 == 0:
            seq += 1
            first.append(settle(seq, f"c{i}", acct, "0.011"))
        elif i % 5 != 0:
            seq += 1
            second.append(settle(seq, f"c{i}", acct, "0.013"))
    seq += 1
    second.append(topup(seq, ACCOUNTS[0], "5", "key-1"))
    return [first, second]


def _dump(conn: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    out = {}
    for table, order in (("ledger", "id"), ("cdrs", "id"), ("accounts", "code"),
                         ("live_calls", "call_ref"), ("applied_keys", "key")):
        cur = conn.execute(f"SELECT * FROM {table} ORDER BY {order}")
        names = [d[0] for d in cur.description]
        # A live call's lease runs from the wall clock: the only column left out.
        keep = [i for i, n in enumerate(names) if n != "lease_ms"]
        out[table] = [tuple((v, type(v).__name__) for v in (r[i] for i in keep)) for r in cur]
    return out


@pytest.mark.parametrize("most", [None, 3, 11, 37])
def test_multi_row_inserts_store_what_row_by_row_stores(tmp_path: Path, most: int | None
                                                         ) -> None:
    """``most``: batches cut to at most so many commands (a few rows of each statement,
    and every size of multi-row statement with leftovers), or whole."""
    deck = tmp_path / "deck.csv"
    deck.write_text(DECK)
    multi = _store(tmp_path / "multi.db", deck)
    single = _store(tmp_path / "single.db", deck)
    batches = _batches() if most is None else [
        whole[i:i + most] for whole in _batches() for i in range(0, len(whole), most)]
    for batch in batches:
        a = SqliteLedger(multi).execute(batch)
        b = RowByRowLedger(single).execute(batch)
        assert not a.error and not b.error
        assert a.outcomes == b.outcomes
    got, want = _dump(multi), _dump(single)
    assert len(got["cdrs"]) > 500 and len(got["ledger"]) > 500 and len(got["live_calls"]) > 50
    assert got == want
    # NULL columns are NULL (not '' or 'None'), as row by row.
    nulls = multi.execute("SELECT COUNT(*) FROM cdrs WHERE ringing_ms IS NULL AND "
                          "buy_cost IS NULL AND fx_rate IS NULL").fetchone()[0]
    assert nulls == len(got["cdrs"])
    assert all(not c.problems for c in verify_ledger(multi))
