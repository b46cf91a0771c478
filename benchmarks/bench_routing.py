"""Least-cost routing benchmark: the route list of a call over 10 carriers' buy decks of
100,000 prefixes each, beside the sell-deck look-up alone, in the same run.

    python benchmarks/bench_routing.py [--prefixes 100000] [--carriers 10] [--calls 100000]
                                       [--rounds 3]

Each deck is made like ``bench_rating.py``'s (random prefixes under 34 country codes,
1 to 6 digits more, four increments), a different one per carrier and for the customer's
sell plan, so every number matches a line in every deck (at least its country code) and
most carriers qualify: the list to sort is as long as it gets. Prints, per round, the
microseconds per call of:

* the baseline: the sell deck's longest-prefix look-up alone (``RateTable.lookup``);
* rating the call on the sell deck (``RateTable.rate``), what the INVITE does today;
* route selection: the sell look-up plus :func:`sidecar.routing.select_routes` (a
  look-up in every carrier's deck, both prices of the reference call, the margin checks,
  the order), in cost order and in quality order. Target: under 50 us per call.
* the live router (what ``sidecar run`` does per call, :class:`sidecar.routing.router.
  Router`): the sell look-up, the route list with every carrier's load and the pulls
  taken into account, the first carrier taking the call, and the call's end counted for
  its carrier's health (200 calls kept up at a time).

Round 1 of the cost order also works out each buy line's price the first time it is
met (a :class:`CarrierBook` keeps them): the later rounds are the warm figure.

The figures are CPU time of this process per call (``time.process_time``): on a machine
shared with other work, wall-clock time also counts the time the process waited for a
core. The wall-clock figure is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import time
from datetime import UTC, datetime
from decimal import Decimal

from bench_rating import make_numbers  # the same dialled numbers as the rating benchmark

from sidecar.rating import Increment, RateLine, RateTable
from sidecar.routing import (
    Carrier,
    CarrierBook,
    CarrierDeck,
    Margin,
    Order,
    Quality,
    RoutingPolicy,
    quality_score,
    select_routes,
)
from sidecar.routing.router import Router, RouterConfig

COUNTRY = ["1", "7", "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43",
           "44", "45", "46", "47", "48", "49", "52", "55", "61", "81", "86", "91", "234", "351",
           "353", "356", "358", "380", "420", "971"]
INCREMENTS = [Increment.parse(t) for t in ("1/1", "6/6", "30/6", "60/60")]
JUNE = datetime(2026, 6, 1, tzinfo=UTC)


def make_lines(n: int, rng: random.Random, low: int, high: int) -> list[RateLine]:
    """A deck of ``n`` prefixes, rates from 0.0``low`` to 0.0``high`` per minute."""
    prefixes: set[str] = set(COUNTRY)
    while len(prefixes) < n:
        cc = rng.choice(COUNTRY)
        prefixes.add(cc + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 6))))
    amounts: dict[int, Decimal] = {}
    out = []
    for i, p in enumerate(sorted(prefixes)):
        cents = rng.randint(low, high)
        rate = amounts.setdefault(cents, Decimal(f"0.{cents:04d}"))
        out.append(RateLine(f"Breakout {i}", p, rate, INCREMENTS[i % 4], JUNE, "USD",
                            version=1))
    return out


def peak_mb() -> float:
    """The process's peak resident memory so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def per_call_us(seconds: float, calls: int) -> float:
    return seconds / calls * 1e6


class Clock:
    """CPU time and wall-clock time of one measurement."""

    def __enter__(self) -> Clock:
        self.cpu = time.process_time()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time() - self.cpu
        self.wall = time.perf_counter() - self.wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefixes", type=int, default=100_000)
    ap.add_argument("--carriers", type=int, default=10)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rng = random.Random(42)
    now_ms = int(datetime(2026, 11, 21, tzinfo=UTC).timestamp() * 1000)
    at = now_ms // 1000

    t0 = time.perf_counter()
    sell_lines = make_lines(args.prefixes, rng, 3000, 9999)
    sell = RateTable(sell_lines, "USD")
    decks = [CarrierDeck(Carrier(f"carrier{i:02d}", f"sip:gw{i}.example"),
                         RateTable(make_lines(args.prefixes, rng, 1, 6000), "USD"))
             for i in range(args.carriers)]
    print(f"{args.carriers} carriers x {args.prefixes:,} prefixes and the sell deck built in "
          f"{time.perf_counter() - t0:.1f} s (process peak memory {peak_mb():,.0f} MB)")
    t0 = time.perf_counter()
    before = peak_mb()
    book = CarrierBook(decks)
    print(f"carrier book (one index of every carrier's prefixes) built in "
          f"{time.perf_counter() - t0:.1f} s (+{peak_mb() - before:,.0f} MB peak)")
    numbers = make_numbers([ln.prefix for ln in sell_lines], args.calls, rng)
    cost = RoutingPolicy(Margin(per_minute=Decimal("0.0005")))
    quality = RoutingPolicy(Margin(per_minute=Decimal("0.0005")), Order.QUALITY)
    scores = {d.carrier.name: quality_score(
        Quality(Decimal(rng.randint(20, 70)) / 100, Decimal(rng.randint(30, 240)),
                rng.randint(800, 6000), rng.randint(0, 60)), quality) for d in decks}

    lookup = sell.lookup
    rate = sell.rate
    routes_total = 0
    results: dict[str, list[float]] = {"lookup": [], "rate": [], "cost": [], "quality": [],
                                       "live": []}
    router = Router(RouterConfig(policy=cost))
    router.set_book(book, now_ms)
    wall: dict[str, list[float]] = {k: [] for k in results}
    for rnd in range(1, args.rounds + 1):
        with Clock() as c:
            for num in numbers:
                lookup(num, at)
        results["lookup"].append(per_call_us(c.cpu, args.calls))
        wall["lookup"].append(per_call_us(c.wall, args.calls))

        with Clock() as c:
            for num in numbers:
                rate(num, 60_000, at)
        results["rate"].append(per_call_us(c.cpu, args.calls))
        wall["rate"].append(per_call_us(c.wall, args.calls))

        for name, policy in (("cost", cost), ("quality", quality)):
            routes_total = 0
            with Clock() as c:
                for num in numbers:
                    line = lookup(num, at)
                    assert line is not None
                    res = select_routes(num, now_ms, line, book, policy, quality=scores)
                    routes_total += len(res.routes)
            results[name].append(per_call_us(c.cpu, args.calls))
            wall[name].append(per_call_us(c.wall, args.calls))

        up: list[tuple[str, str]] = []  # the calls up: (call, its carrier)
        with Clock() as c:
            for i, num in enumerate(numbers):
                line = lookup(num, at)
                assert line is not None
                ref = f"{rnd}-{i}"
                routes = router.route(num, now_ms + i, line).routes
                if routes:
                    router.started(ref, routes, now_ms + i)
                    up.append((ref, routes[0].carrier))
                if len(up) > 200:
                    done, carrier = up.pop(0)
                    router.finished(done, carrier, offered_ms=now_ms + i - 200,
                                    ringing_ms=None, answered_ms=now_ms + i - 100,
                                    ended_ms=now_ms + i)
        results["live"].append(per_call_us(c.cpu, args.calls))
        wall["live"].append(per_call_us(c.wall, args.calls))
        for ref, _carrier in up:
            router.forget(ref)
        print(f"round {rnd} (CPU us per call; wall-clock in brackets): sell look-up "
              f"{results['lookup'][-1]:.2f} ({wall['lookup'][-1]:.2f}), sell rating "
              f"{results['rate'][-1]:.2f} ({wall['rate'][-1]:.2f}), route selection "
              f"{results['cost'][-1]:.1f} ({wall['cost'][-1]:.1f}) cost order, "
              f"{results['quality'][-1]:.1f} ({wall['quality'][-1]:.1f}) quality order, "
              f"live router {results['live'][-1]:.1f} ({wall['live'][-1]:.1f})")

    def span(key: str) -> str:
        v = results[key]
        return (f"{min(v):.2f}-{max(v):.2f} us CPU (median {statistics.median(v):.2f}; "
                f"wall-clock median {statistics.median(wall[key]):.2f})")

    print(f"\n{args.calls:,} calls per round, {args.rounds} rounds, "
          f"{routes_total / args.calls:.1f} routes per call on average, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores:")
    print(f"  baseline, sell-deck look-up alone: {span('lookup')}")
    print(f"  sell rating (RateTable.rate):      {span('rate')}")
    print(f"  route selection, cost order:       {span('cost')} (target < 50 us)")
    print(f"  route selection, quality order:    {span('quality')} (target < 50 us)")
    print(f"  live router, a whole call:         {span('live')} (target < 50 us)")
    print(f"  route selection / sell look-up:    "
          f"{statistics.median(results['cost']) / statistics.median(results['lookup']):.0f}x "
          f"(one look-up per carrier, {args.carriers} carriers, plus pricing)")


if __name__ == "__main__":
    main()
