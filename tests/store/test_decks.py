"""Plans, deck versions, effective dates and the notice period, in SQLite; staged imports,
settings revisions and the live plan loader."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.rating import DeckError, RateLine, SecondRounding
from sidecar.store import decks
from sidecar.store.conn import Db
from sidecar.store.db import connect
from sidecar.store.decks import (
    ABANDONED_AFTER_MS,
    IMPORT_BATCH_ROWS,
    ImportConflict,
    ImportResult,
    PlanCache,
    PlanLoader,
    PlanNotFound,
    deck_versions,
    get_plan,
    import_deck,
    list_plans,
    load_lines,
    load_table,
    plan_revisions,
    remove_abandoned_imports,
    set_plan,
)
from tests.conftest import reopen, target_of, write

H = "destination;code;rate_usd;increment;effective_from\n"
NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)


#: For what only SQLite has (one lock for the whole database, its file, its upgrades).
SQLITE_ONLY = pytest.mark.parametrize("store", ["sqlite"], indirect=True)


@pytest.fixture
def conn(store: Db) -> Db:
    """Every test here runs on SQLite and on PostgreSQL."""
    return store


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def count(conn: Db, table: str) -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_import_creates_a_versioned_plan(conn: Db, tmp_path: Path) -> None:
    f = write(tmp_path / "v1.csv", H + "DE Fixed;4930;0.0095;1/1;2026-06-01\n")
    res = import_deck(conn, "wholesale", f, as_of=NOW)
    assert (res.version, res.lines, res.currency) == (1, 1, "USD")
    table = load_table(conn, "wholesale")
    assert table.rate("4930123", 61_000, ts("2026-11-21")).line.rate == Decimal("0.0095")


def test_bad_deck_changes_nothing(conn: Db, tmp_path: Path) -> None:
    import_deck(conn, "p", write(tmp_path / "ok.csv", H + "A;1;0.1;1/1;2026-06-01\n"), as_of=NOW)
    before = [count(conn, t) for t in ("plans", "deck_versions", "rates")]
    bad = write(tmp_path / "bad.csv", H + "B;2;0.1;1/1;2026-06-01\nC;3;zz;1/1;2026-06-01\n")
    with pytest.raises(DeckError, match=r"bad.csv:3:3 \(rate_usd\)"):
        import_deck(conn, "p", bad, as_of=NOW)
    with pytest.raises(DeckError):
        import_deck(conn, "new-plan", bad, as_of=NOW)
    assert [count(conn, t) for t in ("plans", "deck_versions", "rates")] == before


def test_calls_are_rated_by_the_line_in_effect_at_answer(
    conn: Db, tmp_path: Path
) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", H + "DE;49;0.02;1/1;2026-06-01\n"),
                as_of=NOW)
    # v2 schedules an increase with enough notice and a cheaper breakout at once.
    import_deck(conn, "p", write(tmp_path / "v2.csv", H +
                                 "DE;49;0.03;1/1;2026-12-15\nDE Berlin;4930;0.01;1/1;2026-11-21\n"),
                as_of=NOW)
    t = load_table(conn, "p")
    assert t.rate("4989123", 60_000, ts("2026-12-01")).line.rate == Decimal("0.02")
    assert t.rate("4989123", 60_000, ts("2026-12-15")).line.rate == Decimal("0.03")
    assert t.rate("4930123", 60_000, ts("2026-11-22")).line.destination == "DE Berlin"
    # Before the Berlin line existed, Berlin numbers took the country line.
    assert t.rate("4930123", 60_000, ts("2026-11-01")).line.destination == "DE"
    assert [v["version"] for v in deck_versions(conn, "p")] == [1, 2]


def test_increase_without_notice_is_refused_decrease_is_not(
    conn: Db, tmp_path: Path
) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", H + "DE;49;0.02;1/1;2026-06-01\n"),
                as_of=NOW)
    soon = write(tmp_path / "up.csv", H + "DE;49;0.025;1/1;2026-11-25\n")
    with pytest.raises(DeckError, match=r"up.csv:2 \(effective_from\): increase for 49 .*"
                                        r"7-day notice .*2026-11-28"):
        import_deck(conn, "p", soon, as_of=NOW)
    assert count(conn, "deck_versions") == 1
    down = write(tmp_path / "down.csv", H + "DE;49;0.015;1/1;2026-11-21\n")
    res = import_deck(conn, "p", down, as_of=NOW)
    assert res.decreases == 1
    assert load_table(conn, "p").rate("491", 60_000, ts("2026-11-21T13:00:00")).line.rate == \
        Decimal("0.015")


def test_a_new_longer_prefix_dearer_than_its_parent_is_an_increase(
    conn: Db, tmp_path: Path
) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", H + "DE;49;0.02;1/1;2026-06-01\n"),
                as_of=NOW)
    with pytest.raises(DeckError, match="increase for 4915"):
        import_deck(conn, "p", write(tmp_path / "v2.csv", H + "DE Mob;4915;0.2;1/1;2026-11-22\n"),
                    as_of=NOW)


def test_currency_must_match_the_plan(conn: Db, tmp_path: Path) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", H + "DE;49;0.02;1/1;2026-06-01\n"),
                as_of=NOW)
    eur = write(tmp_path / "eur.csv",
                "destination;code;rate_eur;increment;effective_from\nDE;49;0.01;1/1;2026-06-01\n")
    with pytest.raises(DeckError, match="deck is in EUR but plan 'p' is in USD"):
        import_deck(conn, "p", eur, as_of=NOW)


def test_unknown_plan(conn: Db) -> None:
    with pytest.raises(PlanNotFound, match="rate plan 'nope' not found"):
        load_table(conn, "nope")


# --- staged versions: the import never holds the write lock for long -------------------


def deck_of(n: int, rate: str = "0.01", first: int = 100000) -> str:
    """A deck of ``n`` distinct prefixes from ``first`` on."""
    return H + "".join(f"D{i};{first + i};{rate};1/1;2026-06-01\n" for i in range(n))


def visible(conn: Db) -> tuple[object, ...]:
    """Everything a reader is shown of the plans, for comparisons."""
    plans = list_plans(conn)
    return (plans, plan_revisions(conn),
            {p["plan"]: (deck_versions(conn, str(p["plan"])), len(load_lines(conn, str(p["plan"]))))
             for p in plans})


def leftovers(conn: Db) -> tuple[int, int]:
    """(versions not active, rates of no active version): both 0 when consistent."""
    staged = count_where(conn, "deck_versions", "state != 'active'")
    orphans = conn.execute(
        "SELECT COUNT(*) FROM rates r WHERE NOT EXISTS (SELECT 1 FROM deck_versions v "
        "WHERE v.plan = r.plan AND v.version = r.version AND v.state = 'active')").fetchone()[0]
    return staged, int(orphans)


def count_where(conn: Db, table: str, where: str) -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}").fetchone()[0])


def db_file(conn: Db) -> str:
    return str(conn.execute("PRAGMA database_list").fetchone()[2])


def test_a_staged_version_is_invisible_until_activated(
    conn: Db, tmp_path: Path
) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", deck_of(3)), as_of=NOW)
    other = reopen(conn)
    before = visible(other)
    seen: list[int] = []

    def check(done: int) -> None:
        seen.append(done)
        assert visible(other) == before  # the existing plan: still version 1 only
        assert "q" not in plan_revisions(other)  # a new plan: not there at all
        with pytest.raises(PlanNotFound):
            get_plan(other, "q")

    res = import_deck(conn, "p", write(tmp_path / "v2.csv", deck_of(12, "0.005")), as_of=NOW,
                      progress=check, batch_rows=5)
    assert seen == [5, 10, 12]
    assert res.version == 2
    assert [v["version"] for v in deck_versions(other, "p")] == [1, 2]
    assert len(load_lines(other, "p")) == 15
    before = visible(other)
    import_deck(conn, "q", write(tmp_path / "q.csv", deck_of(7)), as_of=NOW, progress=check,
                batch_rows=3)
    assert get_plan(other, "q").currency == "USD"
    assert leftovers(conn) == (0, 0)
    other.close()


@SQLITE_ONLY  # SQLite has one write lock for the whole database; PostgreSQL locks rows
def test_other_writers_get_the_lock_between_batches(
    conn: Db, tmp_path: Path
) -> None:
    big = write(tmp_path / "big.csv", H + "".join(
        f"D{i};{1000000 + i};0.01;1/1;2026-06-01\n" for i in range(100_000)))
    other = reopen(conn)
    other.execute("PRAGMA busy_timeout = 0")  # never waits: fails if the lock is held
    writes: list[int] = []

    def write_meanwhile(done: int) -> None:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO meta (key, value) VALUES (?, 'x')", (f"probe{done}",))
        other.execute("COMMIT")
        writes.append(done)

    res = import_deck(conn, "big", big, as_of=NOW, progress=write_meanwhile)
    assert res.lines == 100_000
    assert writes == list(range(IMPORT_BATCH_ROWS, 100_001, IMPORT_BATCH_ROWS))
    assert count_where(conn, "meta", "key LIKE 'probe%'") == len(writes)
    assert len(load_lines(other, "big")) == 100_000
    other.close()


@pytest.mark.parametrize("fail_at", [4, 12])  # after the first batch; after the last one
def test_a_failure_after_staging_undoes_the_import(
    conn: Db, tmp_path: Path, fail_at: int
) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", deck_of(3)), as_of=NOW)
    before = visible(conn)
    tables = [count(conn, t) for t in ("plans", "deck_versions", "rates")]

    def boom(done: int) -> None:
        if done >= fail_at:
            raise RuntimeError("disk on fire")

    v2 = write(tmp_path / "v2.csv", deck_of(12, "0.005"))
    with pytest.raises(RuntimeError, match="disk on fire"):
        import_deck(conn, "p", v2, as_of=NOW, progress=boom, batch_rows=4)
    with pytest.raises(RuntimeError, match="disk on fire"):
        import_deck(conn, "new", v2, as_of=NOW, progress=boom, batch_rows=4)
    assert visible(conn) == before
    assert [count(conn, t) for t in ("plans", "deck_versions", "rates")] == tables
    assert not conn.in_transaction
    # The next import works and takes the next number.
    assert import_deck(conn, "p", v2, as_of=NOW, batch_rows=4).version == 2
    assert import_deck(conn, "new", v2, as_of=NOW).version == 1
    assert len(load_lines(conn, "p")) == 15
    assert leftovers(conn) == (0, 0)


_CRASHING_IMPORT = """
import os, sys
from sidecar.store.conn import open_db
from sidecar.store.decks import import_deck
conn = open_db(sys.argv[1])
import_deck(conn, sys.argv[2], sys.argv[3], batch_rows=2, progress=lambda done: os._exit(3))
"""


def crash_during_import(conn: Db, plan: str, deck: Path) -> None:
    """Import in another process that dies after writing its first batch."""
    done = subprocess.run([sys.executable, "-c", _CRASHING_IMPORT, target_of(conn), plan,
                           str(deck)], timeout=60, check=False)
    assert done.returncode == 3


def test_the_import_of_a_process_that_died_is_removed_by_the_next(
    conn: Db, tmp_path: Path
) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", deck_of(3)), as_of=NOW)
    before = visible(conn)
    v2 = write(tmp_path / "v2.csv", deck_of(6, "0.005"))
    crash_during_import(conn, "fresh", v2)
    assert count_where(conn, "deck_versions", "state = 'staged'") == 1
    assert count(conn, "plans") == 2
    # The next import (of any plan) removes what the dead one wrote.
    crash_during_import(conn, "p", v2)
    assert count(conn, "plans") == 1  # the plan only the dead import knew is gone too
    assert visible(conn) == before  # written, but invisible
    assert count_where(conn, "deck_versions", "state = 'staged'") == 1
    assert count_where(conn, "rates", "version = 2") == 2
    assert import_deck(conn, "p", v2, as_of=NOW).version == 2  # not 3: the dead one is gone
    assert leftovers(conn) == (0, 0)
    assert len(load_lines(conn, "p")) == 9


def test_a_stalled_staged_version_is_removed_after_ten_minutes(
    conn: Db, tmp_path: Path
) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", deck_of(3)), as_of=NOW)
    crash_during_import(conn, "p", write(tmp_path / "v2.csv", deck_of(6, "0.005")))
    # As if the importer ran on another host: whether it still runs is unknown.
    conn.execute("UPDATE deck_versions SET importer = 'elsewhere:1' WHERE state = 'staged'")
    started = int(conn.execute("SELECT started_ms FROM deck_versions WHERE state = 'staged'")
                  .fetchone()[0])
    assert remove_abandoned_imports(conn, now_ms=started + ABANDONED_AFTER_MS - 1000) == 0
    assert leftovers(conn) == (1, 2)
    assert remove_abandoned_imports(conn, now_ms=started + ABANDONED_AFTER_MS + 1000) == 1
    assert leftovers(conn) == (0, 0)
    assert count(conn, "rates") == 3


def test_a_half_dropped_version_is_finished_off(conn: Db, tmp_path: Path) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", deck_of(3)), as_of=NOW)
    crash_during_import(conn, "p", write(tmp_path / "v2.csv", deck_of(6, "0.005")))
    conn.execute("UPDATE deck_versions SET state = 'dropping', importer = 'elsewhere:1' "
                 "WHERE state = 'staged'")
    import_deck(conn, "p", write(tmp_path / "v3.csv", deck_of(2, "0.004")), as_of=NOW)
    assert leftovers(conn) == (0, 0)
    assert [v["version"] for v in deck_versions(conn, "p")] == [1, 2]


@pytest.mark.parametrize("plan", ["p", "fresh"])
def test_two_imports_of_one_plan_at_once_stay_consistent(
    conn: Db, tmp_path: Path, plan: str
) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", deck_of(3)), as_of=NOW)
    decks = [write(tmp_path / "a.csv", deck_of(10, "0.005", first=200)),
             write(tmp_path / "b.csv", deck_of(7, "0.004", first=300))]
    both_staged = threading.Barrier(2, timeout=30)
    outcomes: dict[int, object] = {}

    def run(i: int) -> None:
        own = reopen(conn)
        waited = False

        def meet(done: int) -> None:
            nonlocal waited
            if not waited:  # both imports have a staged version and rows written
                waited = True
                both_staged.wait()

        try:
            outcomes[i] = import_deck(own, plan, decks[i], as_of=NOW, progress=meet,
                                      batch_rows=3)
        except Exception as exc:
            outcomes[i] = exc
        finally:
            own.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    results = [o for o in outcomes.values() if isinstance(o, ImportResult)]
    errors = [o for o in outcomes.values() if not isinstance(o, ImportResult)]
    # The first to finish is activated; the other was checked against a plan that no
    # longer stands, and is refused.
    assert len(results) == 1 and len(errors) == 1, outcomes
    assert isinstance(errors[0], ImportConflict)
    assert "import the deck again" in str(errors[0])
    assert leftovers(conn) == (0, 0)
    versions = deck_versions(conn, plan)
    # Numbers are unique; the refused import's number may be skipped.
    assert [v["version"] for v in versions][-1] == results[0].version
    assert len(versions) == (2 if plan == "p" else 1)
    assert versions[-1]["lines"] == results[0].lines
    assert count_where(conn, "rates", f"plan = '{plan}'") == sum(
        int(str(v["lines"])) for v in versions)
    # The refused deck imports as the next version.
    loser = decks[1] if results[0].lines == 10 else decks[0]
    assert import_deck(conn, plan, loser, as_of=NOW).version == versions[-1]["version"] + 1


def test_an_import_in_another_currency_while_a_new_plan_is_staged(
    conn: Db, tmp_path: Path
) -> None:
    other = reopen(conn)
    eur = write(tmp_path / "eur.csv", deck_of(2).replace("rate_usd", "rate_eur"))
    refused: list[Exception] = []

    def meanwhile(done: int) -> None:
        with pytest.raises(ImportConflict, match="another import of plan 'fresh' in USD") as e:
            import_deck(other, "fresh", eur, as_of=NOW)
        refused.append(e.value)

    import_deck(conn, "fresh", write(tmp_path / "usd.csv", deck_of(4)), as_of=NOW,
                progress=meanwhile, batch_rows=2)
    assert len(refused) == 2
    assert get_plan(conn, "fresh").currency == "USD"
    assert leftovers(conn) == (0, 0)
    other.close()


def test_an_older_database_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE plans (name TEXT PRIMARY KEY, currency TEXT NOT NULL,
            notice_days INTEGER NOT NULL DEFAULT 7, second_rounding TEXT NOT NULL DEFAULT 'ceil',
            chunk_seconds INTEGER NOT NULL DEFAULT 60,
            international_prefix TEXT NOT NULL DEFAULT '00',
            national_prefix TEXT NOT NULL DEFAULT '', country_code TEXT NOT NULL DEFAULT '',
            strip_prefixes TEXT NOT NULL DEFAULT '', created_ms INTEGER NOT NULL);
        CREATE TABLE deck_versions (id INTEGER PRIMARY KEY,
            plan TEXT NOT NULL REFERENCES plans(name), version INTEGER NOT NULL,
            imported_ms INTEGER NOT NULL, source TEXT NOT NULL, sha256 TEXT NOT NULL,
            lines INTEGER NOT NULL, UNIQUE (plan, version));
        INSERT INTO plans (name, currency, created_ms) VALUES ('p', 'USD', 0);
        INSERT INTO deck_versions (plan, version, imported_ms, source, sha256, lines)
            VALUES ('p', 1, 0, 'v1.csv', '', 1);
    """)
    old.commit()
    old.close()
    conn = connect(path)
    conn.execute("INSERT INTO rates (plan, version, destination, prefix, rate, increment, "
                 "effective_from, currency) VALUES ('p', 1, 'DE', '49', '0.02', '1/1', "
                 "'2026-06-01T00:00:00+00:00', 'USD')")
    assert plan_revisions(conn) == {"p": (1, 0)}
    assert load_table(conn, "p").rate("491", 60_000, ts("2026-11-21")).line.rate == \
        Decimal("0.02")
    assert import_deck(conn, "p", write(tmp_path / "v2.csv", H + "DE;49;0.01;1/1;2026-11-21\n"),
                       as_of=NOW).version == 2
    columns = [r[1] for r in conn.execute("PRAGMA table_info(deck_versions)")]
    assert columns[-3:] == ["state", "started_ms", "importer"]
    conn.close()


# --- settings revisions and the live loader -------------------------------------------


def test_set_plan_bumps_the_revision(conn: Db, tmp_path: Path) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", deck_of(2)), as_of=NOW)
    import_deck(conn, "q", write(tmp_path / "q.csv", deck_of(2)), as_of=NOW)
    assert plan_revisions(conn) == {"p": (1, 0), "q": (1, 0)}
    set_plan(conn, "p", chunk_seconds=30)
    assert plan_revisions(conn) == {"p": (1, 1), "q": (1, 0)}
    set_plan(conn, "p", chunk_seconds=30)  # no change: nothing to pick up
    set_plan(conn, "p")
    assert plan_revisions(conn)["p"] == (1, 1)
    set_plan(conn, "p", national_prefix="0", country_code="49", strip_prefixes=("99",))
    assert plan_revisions(conn)["p"] == (1, 2)
    import_deck(conn, "p", write(tmp_path / "v2.csv", deck_of(1, "0.005")), as_of=NOW)
    assert plan_revisions(conn)["p"] == (2, 2)


class LineReads:
    """Records which deck versions a loader reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, int]] = []
        real = decks.load_version_lines

        def spy(conn: Db, plan: str, version: int) -> list[RateLine]:
            self.calls.append((plan, version))
            return real(conn, plan, version)

        monkeypatch.setattr(decks, "load_version_lines", spy)

    def take(self) -> list[tuple[str, int]]:
        out, self.calls = self.calls, []
        return out


def test_plan_loader_refresh_loads_only_what_changed(
    conn: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = LineReads(monkeypatch)
    import_deck(conn, "a", write(tmp_path / "a1.csv", H + "DE;49;0.02;1/1;2026-06-01\n"),
                as_of=NOW)
    import_deck(conn, "b", write(tmp_path / "b1.csv", deck_of(3)), as_of=NOW)
    reads.take()
    live = reopen(conn)  # the loader's own connection
    loader = PlanLoader()
    first = loader.load_all(live)
    assert sorted(first) == ["a", "b"]
    assert sorted(reads.take()) == [("a", 1), ("b", 1)]
    assert loader.refresh(live) == {}
    assert reads.take() == []

    # A new version: only that plan, only that version's lines.
    old_a = first["a"]
    import_deck(conn, "a", write(tmp_path / "a2.csv", H + "DE Berlin;4930;0.01;1/1;"
                                 "2026-11-21\n"), as_of=NOW)
    reads.take()  # the import's own notice check
    changed = loader.refresh(live)
    assert list(changed) == ["a"]
    assert reads.take() == [("a", 2)]
    at = ts("2026-11-22")
    assert changed["a"].table.rate("4930123", 60_000, at).line.destination == "DE Berlin"
    assert changed["a"].table.size == 2
    # The table handed out before is untouched (calls may still be using it).
    assert old_a.table.rate("4930123", 60_000, at).line.destination == "DE"
    assert old_a.table.size == 1
    assert loader.refresh(live) == {}

    # New settings: a new PlanRates, no lines read.
    set_plan(conn, "b", chunk_seconds=20)
    changed = loader.refresh(live)
    assert list(changed) == ["b"] and changed["b"].chunk_seconds == 20
    assert changed["b"].table is first["b"].table  # nothing in the table changed
    set_plan(conn, "a", national_prefix="0", country_code="49", second_rounding=
             SecondRounding.FLOOR)
    changed = loader.refresh(live)
    assert list(changed) == ["a"]
    assert reads.take() == []
    table = changed["a"].table
    assert table.rate("030123", 60_999, at).line.destination == "DE Berlin"
    assert table.rate("030123", 60_999, at).price.billed_seconds == 60
    assert loader.refresh(live) == {}

    # An import being written is not seen; a new plan is, once active.
    seen: list[list[str]] = []

    def refresh_meanwhile(done: int) -> None:
        seen.append(sorted(loader.refresh(live)))

    import_deck(conn, "a", write(tmp_path / "a3.csv", deck_of(5)), as_of=NOW,
                progress=refresh_meanwhile, batch_rows=2)
    import_deck(conn, "c", write(tmp_path / "c.csv", deck_of(5)), as_of=NOW,
                progress=refresh_meanwhile, batch_rows=2)
    assert seen == [[], [], [], ["a"], [], []]
    changed = loader.refresh(live)
    assert sorted(changed) == ["c"]
    # Versions 1 and 2 were read by the import's notice check, not by the loader.
    assert sorted(reads.take()) == [("a", 1), ("a", 2), ("a", 3), ("c", 1)]
    changed = loader.plans
    assert changed["a"].table.size == 7
    # What the loader built rates as a table built from the database does.
    fresh = load_table(conn, "a")
    for table_ in (changed["a"].table, fresh):
        assert table_.lines_in_effect(at) == fresh.lines_in_effect(at)
    assert loader.plans.keys() == {"a", "b", "c"}
    live.close()


def test_plan_loader_can_follow_only_the_plans_asked_for(
    conn: Db, tmp_path: Path
) -> None:
    import_deck(conn, "a", write(tmp_path / "a.csv", deck_of(2)), as_of=NOW)
    loader = PlanLoader(follow_new_plans=False)
    assert loader.refresh(conn) == {}
    assert loader.load(conn, "a").table.size == 2
    import_deck(conn, "b", write(tmp_path / "b.csv", deck_of(2)), as_of=NOW)
    assert loader.refresh(conn) == {}
    with pytest.raises(PlanNotFound, match="plans: a, b"):
        loader.load(conn, "nope")


def test_plan_cache_picks_up_new_versions_and_settings(
    conn: Db, tmp_path: Path
) -> None:
    import_deck(conn, "p", write(tmp_path / "v1.csv", H + "DE;49;0.02;1/1;2026-06-01\n"),
                as_of=NOW)
    cache = PlanCache(conn, check_every=0)
    first = cache("p")
    assert cache("p") is first
    assert first.chunk_seconds == 60
    import_deck(conn, "p", write(tmp_path / "v2.csv", H + "DE;49;0.01;1/1;2026-11-21\n"),
                as_of=NOW)
    assert cache("p").table.rate("491", 60_000, ts("2026-11-22")).line.rate == Decimal("0.01")
    set_plan(conn, "p", chunk_seconds=30)
    assert cache("p").chunk_seconds == 30
    with pytest.raises(PlanNotFound):
        cache("nope")


def test_a_plan_row_left_without_versions_does_not_block_a_new_plan(
    conn: Db, tmp_path: Path
) -> None:
    conn.execute("INSERT INTO plans (name, currency, created_ms) VALUES ('fresh', 'EUR', 0)")
    with pytest.raises(PlanNotFound):
        get_plan(conn, "fresh")  # a plan without an active version is not there
    assert list_plans(conn) == []
    import_deck(conn, "fresh", write(tmp_path / "usd.csv", deck_of(2)), as_of=NOW)
    assert get_plan(conn, "fresh").currency == "USD"


def test_the_replay_copy_of_a_plan_takes_active_versions_only(
    conn: Db, tmp_path: Path
) -> None:
    from sidecar.cli.replay import _what_if_db

    import_deck(conn, "p", write(tmp_path / "v1.csv", deck_of(3)), as_of=NOW)
    crash_during_import(conn, "p", write(tmp_path / "v2.csv", deck_of(6, "0.005")))
    # (kept from the next import's clean-up: as if its process ran on another host)
    conn.execute("UPDATE deck_versions SET importer = 'elsewhere:1' WHERE state = 'staged'")
    crash_during_import(conn, "fresh", write(tmp_path / "f.csv", deck_of(6)))
    assert count_where(conn, "deck_versions", "state = 'staged'") == 2
    copy = _what_if_db(target_of(conn), "p")
    assert visible(copy) == visible(conn)
    assert count(copy, "rates") == 3
    with pytest.raises(PlanNotFound):
        _what_if_db(target_of(conn), "fresh")
    copy.close()
