"""PostgreSQL for the tests: a fresh database per test on the local server (scripts/setup
makes sure one accepts connections on 127.0.0.1:5432), dropped afterwards whatever
happened; and the worker of the multi-process test (spawned processes import it)."""

from __future__ import annotations

import os
import random
import tempfile
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sidecar.charging.commands import Reserve, Settle, StoreCommand, Topup
from sidecar.charging.model import Cdr, Disposition
from sidecar.money import ZERO
from sidecar.store.decks import import_deck
from sidecar.store.pg import PgConn, PgLedger, connect_pg, ensure_schema_pg

#: The server's maintenance database; tests create theirs beside it.
SERVER_URL = os.environ.get("SIDECAR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = 1_795_262_400_000  # 2026-11-21 12:00 UTC (tests.charging.harness.T0)
RATE = Decimal("0.60")  # per minute: 0.01 a second
PER_SECOND = Decimal("0.01")
LIVE: dict[str, object] = {"number": "4930123456", "destination": "Germany Fixed",
                           "prefix": "4930", "rate": "0.60", "increment": "1/1",
                           "answered_ms": T0}


def with_db(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def as_url(conninfo: str) -> str:
    """A ``key=value`` conninfo as the ``postgresql://`` URL users pass to ``--db``."""
    p = conninfo_to_dict(conninfo)
    return f"postgresql://{p['user']}@{p['host']}:{p['port']}/{p['dbname']}"


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database with a random name; its URL. Dropped at the end (sessions
    still connected to it are ended), even when the test failed."""
    name = f"sidecar_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(SERVER_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_db(SERVER_URL, name)
    finally:
        with psycopg.connect(SERVER_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


RETAIL_DECK = """destination;code;rate_usd;increment;effective_from
Germany Fixed;4930;0.60;1/1;2026-06-01
"""


def with_retail_plan(conn: psycopg.Connection[Any]) -> None:
    """The schema, and plan 'retail' (USD, 0.60 a minute to 4930 on 1/1) imported."""
    ensure_schema_pg(conn)
    with tempfile.TemporaryDirectory() as tmp:
        deck = Path(tmp) / "retail.csv"
        deck.write_text(RETAIL_DECK)
        import_deck(PgConn(conn), "retail", deck, as_of=datetime(2026, 11, 1, tzinfo=UTC))


def fit(avail: Decimal) -> tuple[Decimal, int]:
    """What a reservation takes when less than it asked for is available: whole seconds."""
    seconds = int(avail // PER_SECOND)
    return PER_SECOND * seconds, seconds


def reserve(seq: int, account: str, ref: str, amount: str | Decimal, seconds: int = 60,
            paid_before: int = 0, now: int = T0) -> Reserve:
    return Reserve(seq, account, ref, Decimal(amount), seconds, paid_before, fit, dict(LIVE),
                   now)


def cdr(ref: str, account: str | None, cost: str | Decimal, seconds: int = 60) -> Cdr:
    cost = Decimal(cost)
    return Cdr(ref, f"{ref}@test", Disposition.ANSWERED, account=account, plan="retail",
               caller="4930999", callee="4930123456", destination="Germany Fixed",
               prefix="4930", rate=RATE, increment="1/1", currency="USD", offered_ms=T0 - 5000,
               answered_ms=T0, billable_ms=T0, ended_ms=T0 + seconds * 1000,
               duration_ms=seconds * 1000, billed_seconds=seconds, usage=cost, cost=cost)


def settle(seq: int, ref: str, account: str | None, cost: str | Decimal,
           now: int = T0 + 60_000) -> Settle:
    return Settle(seq, cdr(ref, account, cost), now)


def topup(seq: int, account: str, amount: str | Decimal, key: str, now: int = T0) -> Topup:
    return Topup(seq, account, Decimal(amount), "card payment", key, now)


COSTS = [Decimal(c) for c in ("0", "0.30", "0.60", "0.61", "0.90", "1.50")]


def shared_account_worker(url: str, account: str, proc: int, calls: int, start: Any,
                          out: Any) -> None:
    """One of several processes charging calls to ONE account at once: every call is a
    Reserve (with the settle of its previous call in the same batch), now and then a
    top-up. Checks after every batch that the account never went below zero; reports
    what it charged and topped up (or the traceback of what went wrong)."""
    try:
        ledger = PgLedger(connect_pg(url))
        rng = random.Random(proc)
        charged = topped = granted_total = ZERO
        lowest: Decimal | None = None
        seq = 0
        prev: str | None = None
        start.wait(30)
        for i in range(calls + 1):
            cmds: list[StoreCommand] = []
            now = T0 + i * 1000
            if i < calls:
                seq += 1
                ref = f"p{proc}-c{i}"
                cmds.append(reserve(seq, account, ref, RATE, 60, now=now))
            if prev is not None:
                seq += 1
                cmds.append(settle(seq, prev, account, rng.choice(COSTS), now=now + 500))
            if i % 25 == 24:
                seq += 1
                cmds.append(topup(seq, account, "1.00", f"p{proc}-t{i}", now=now))
            res = ledger.execute(cmds)
            if res.error:
                raise AssertionError(f"batch {i} failed: {res.error}")
            acc = res.accounts[account]
            if acc.balance < 0 or acc.held < 0:
                raise AssertionError(f"below zero after batch {i}: {acc}")
            lowest = acc.balance if lowest is None else min(lowest, acc.balance)
            for o, c in zip(res.outcomes, cmds, strict=True):
                assert o.ok, o
                if isinstance(c, Reserve):
                    granted_total += o.granted
                elif o.settlement is not None and not o.settlement.duplicate:
                    if isinstance(c, Settle):
                        charged += o.settlement.charged
                    else:
                        topped += c.amount
            prev = f"p{proc}-c{i}" if i < calls else None
        ledger.db.close()
        out.put(("ok", proc, str(charged), str(topped), str(granted_total), str(lowest)))
    except BaseException:
        out.put(("error", proc, traceback.format_exc()))
