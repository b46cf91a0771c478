"""RateTable.extended: a table grown with new lines rates as one built from all of them."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.numbers import NumberPlan
from sidecar.rating import Increment, RateLine, RateTable, SecondRounding

BASE = datetime(2026, 6, 1, tzinfo=UTC)
DAYS = [0, 10, 20, 30]
ORIGINS = ["", "EEA", "NON-EEA"]
# Numbers and times probed: every digit string up to the longest prefix and beyond, and
# every effective date with the moments either side.
PROBE_NUMBERS = ["", "1", "2", "11", "12", "21", "22", "111", "112", "121", "211", "1111",
                 "1212", "2221", "11111", "21212"]
PROBE_TIMES = [int((BASE + timedelta(days=d, seconds=s)).timestamp())
               for d in DAYS for s in (-1, 0, 1)]

lines = st.builds(
    lambda prefix, rate, day, origin, version: RateLine(
        f"D{prefix}", prefix, Decimal(rate) / 1000, Increment(1, 1),
        BASE + timedelta(days=day), "USD", origin=origin, version=version),
    st.text("12", min_size=1, max_size=4),
    st.integers(1, 50),
    st.sampled_from(DAYS),
    st.sampled_from(ORIGINS),
    st.integers(1, 4),
)


def lookups(table: RateTable) -> list[RateLine | None]:
    return [table.lookup(n, at, o) for n in PROBE_NUMBERS for at in PROBE_TIMES
            for o in ORIGINS]


def same(a: RateTable, b: RateTable) -> None:
    assert lookups(a) == lookups(b)
    for at in PROBE_TIMES:
        assert a.lines_in_effect(at) == b.lines_in_effect(at)
    assert (a.size, a.uses_origins, a.currency) == (b.size, b.uses_origins, b.currency)
    assert (a.number_plan, a.rounding) == (b.number_plan, b.rounding)


@settings(max_examples=300, deadline=None)
@given(st.lists(lines, max_size=40), st.lists(st.integers(0, 40), max_size=4))
def test_extended_rates_as_the_table_of_all_lines(
    all_lines: list[RateLine], cuts: list[int]
) -> None:
    """Split the lines into consecutive chunks (a plan's versions as they are imported):
    extending chunk by chunk gives the table built from all lines at once, and every
    table handed out on the way keeps rating as before."""
    bounds = sorted({min(c, len(all_lines)) for c in cuts} | {len(all_lines)})
    table = RateTable(all_lines[:bounds[0]], "USD")  # the first version(s)
    earlier: list[tuple[RateTable, list[RateLine | None]]] = []
    for lo, hi in itertools.pairwise(bounds):
        earlier.append((table, lookups(table)))
        table = table.extended(all_lines[lo:hi])
    same(table, RateTable(all_lines, "USD"))
    for old, before in earlier:
        assert lookups(old) == before


@given(st.lists(lines, max_size=20), st.lists(lines, max_size=20))
def test_extended_with_new_settings(old_lines: list[RateLine], new_lines: list[RateLine]) -> None:
    plan = NumberPlan("00", "0", "1")
    old = RateTable(old_lines, "USD")
    new = old.extended(new_lines, number_plan=plan, rounding=SecondRounding.FLOOR)
    same(new, RateTable(old_lines + new_lines, "USD", number_plan=plan,
                        rounding=SecondRounding.FLOOR))
    assert (old.number_plan, old.rounding) == (NumberPlan(), SecondRounding.CEIL)


def test_settings_alone_share_the_whole_index() -> None:
    a = RateLine("A", "1", Decimal("0.1"), Increment(1, 1), BASE, "USD", version=1)
    old = RateTable([a], "USD")
    new = old.extended([], number_plan=NumberPlan("00", "0", "1"))
    assert new.rate("01", 1000, PROBE_TIMES[1]).line is a
    assert new._index["1"] is old._index["1"]
    b = RateLine("B", "2", Decimal("0.2"), Increment(1, 1), BASE, "USD", version=2)
    newer = new.extended([b])
    assert newer._index["1"] is old._index["1"]  # untouched prefixes are shared
    assert "2" not in new._index
