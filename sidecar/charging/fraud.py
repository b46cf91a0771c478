"""Usage limits at the INVITE and fraud detection over sliding windows (pure).

The :class:`FraudGuard` keeps, per account, what the limits and rules need: the calls up
now, when recent calls started, the numbers and countries called, the money committed
in the last minute and hour, the short calls. It answers from memory (no store round
trip) and never reads a clock: time is an argument.

- :meth:`FraudGuard.check` decides an offer against the account's effective limits:
  a :class:`Refusal` (its own SIP code and reason phrase) or None.
- :meth:`FraudGuard.started` records an allowed call and evaluates the rules that look
  at new calls (a new expensive country, bursts of distinct callees or countries,
  simultaneous high-cost calls); :meth:`FraudGuard.spent` the money rules (spend
  velocity: money reserved for answered calls, net of what settlement gives back);
  :meth:`FraudGuard.ended` the short-call flood rule. Each returns the rules that
  tripped (:class:`Trip`, with its action and evidence); the charging core turns them
  into alerts, blocks and suspensions.

A rule that trips forgets the evidence it used, so it trips again only on new evidence.
Counters are per node: on several nodes each enforces the limits on the calls it carries,
except the concurrent-call limit, which also counts the answered calls other nodes
carry (:attr:`FraudGuard.elsewhere`, from the store's live calls).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from ..money import ZERO, fmt
from ..numbers import country_code
from ..rating import RateLine
from .limits import Limits

DAY_MS = 86_400_000
DEFAULT_NEW_COUNTRY_DAYS = 90
DEFAULT_DISTINCT_MINUTES = 10
DEFAULT_SHORT_SECONDS = 6
DEFAULT_SHORT_MINUTES = 10

#: What a call that trips nothing returns (shared: callers only read it).
_NO_TRIPS: tuple[Trip, ...] = ()
#: Country codes by the first three digits of a number (at most 1,110 keys).
_countries: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Refusal:
    """An offer refused by a limit: the SIP code and reason phrase Kamailio answers with,
    the limit's name (a counter), and what the log says."""

    code: int
    phrase: str
    limit: str
    reason: str


@dataclass(frozen=True, slots=True)
class Trip:
    """A detection rule tripped on an account."""

    rule: str
    action: str  # alert, block, suspend
    summary: str  # one line for people
    evidence: dict[str, object] = field(default_factory=dict)


class _Times:
    """Times (ms) in a sliding window, oldest first: the count of what happened in the
    last ``span`` ms. Plain ints: nothing for the cyclic collector to track."""

    __slots__ = ("span", "times")

    def __init__(self, span_ms: int) -> None:
        self.span = span_ms
        self.times: deque[int] = deque()

    def add(self, now_ms: int) -> None:
        self.times.append(now_ms)
        self.prune(now_ms)

    def prune(self, now_ms: int) -> None:
        times = self.times
        edge = now_ms - self.span
        while times and times[0] <= edge:
            times.popleft()

    def count(self, now_ms: int) -> int:
        self.prune(now_ms)
        return len(self.times)


class _Window:
    """Timestamps with amounts in a sliding window, their count and sum."""

    __slots__ = ("items", "span", "total")

    def __init__(self, span_ms: int) -> None:
        self.span = span_ms
        self.items: deque[tuple[int, Decimal]] = deque()
        self.total = ZERO

    def add(self, now_ms: int, amount: Decimal = ZERO) -> None:
        self.items.append((now_ms, amount))
        if amount:
            self.total += amount
        self.prune(now_ms)

    def prune(self, now_ms: int) -> None:
        items = self.items
        edge = now_ms - self.span
        while items and items[0][0] <= edge:
            _, amount = items.popleft()
            if amount:
                self.total -= amount

    def clear(self) -> None:
        self.items.clear()
        self.total = ZERO


class _Recent:
    """Distinct keys seen in a sliding window (the last time each was seen; a plain dict
    keeps them in the order they were last seen)."""

    __slots__ = ("seen", "span")

    def __init__(self, span_ms: int) -> None:
        self.span = span_ms
        self.seen: dict[str, int] = {}

    def add(self, key: str, now_ms: int) -> int:
        seen = self.seen
        if key in seen:
            del seen[key]  # seen again: it moves to the end
        seen[key] = now_ms
        edge = now_ms - self.span
        if next(iter(seen.values())) <= edge:
            stale = []
            for k, t in seen.items():
                if t > edge:
                    break
                stale.append(k)
            for k in stale:
                del seen[k]
        return len(seen)


class _Account:
    """What the guard keeps for one account."""

    __slots__ = (
        "callees",
        "calls",
        "countries",
        "high_cost_up",
        "hour_numbers",
        "hour_times",
        "minute",
        "numbers",
        "second",
        "seen",
        "short",
        "spend_hour",
        "spend_minute",
        "up",
    )

    def __init__(self) -> None:
        self.up = 0  # calls offered and allowed, not yet ended
        self.high_cost_up = 0
        self.calls: dict[str, bool] = {}  # call -> high cost
        self.second: _Times | None = None
        self.minute: _Times | None = None
        self.numbers: dict[str, int] = {}  # number -> calls to it in the last hour
        # the calls of the last hour, oldest first: when, and the number called
        self.hour_times: deque[int] = deque()
        self.hour_numbers: deque[str] = deque()
        self.spend_minute: _Window | None = None
        self.spend_hour: _Window | None = None
        self.callees: _Recent | None = None
        self.countries: _Recent | None = None
        self.short: _Times | None = None
        self.seen: dict[str, int] = {}  # country -> last call (ms), history included

    def expire_numbers(self, now_ms: int) -> None:
        """Forget the calls to numbers made an hour ago or more."""
        times, called, numbers = self.hour_times, self.hour_numbers, self.numbers
        edge = now_ms - 3_600_000
        while times and times[0] <= edge:
            times.popleft()
            number = called.popleft()
            left = numbers[number] - 1
            if left:
                numbers[number] = left
            else:
                del numbers[number]


class FraudGuard:
    """Limits and detection rules for every account (see the module docstring)."""

    def __init__(self) -> None:
        self._accounts: dict[str, _Account] = {}
        #: Per account, the answered calls other nodes carry, as the store last said:
        #: the concurrent-call limit counts them too.
        self.elsewhere: dict[str, int] = {}

    def _acct(self, code: str) -> _Account:
        a = self._accounts.get(code)
        if a is None:
            a = self._accounts[code] = _Account()
        return a

    # --- history -----------------------------------------------------------------------
    def seed(self, code: str, country: str, last_ms: int) -> None:
        """The account called ``country`` at ``last_ms`` (from the stored CDRs)."""
        seen = self._acct(code).seen
        if seen.get(country, -1) < last_ms:
            seen[country] = last_ms

    def adopt(self, code: str, call_ref: str) -> None:
        """A call this process did not see start (a restart): it counts as up."""
        a = self._acct(code)
        if call_ref not in a.calls:
            a.calls[call_ref] = False
            a.up += 1

    def up(self, code: str) -> int:
        """Calls of the account allowed and not yet ended."""
        a = self._accounts.get(code)
        return a.up if a is not None else 0

    # --- at the INVITE -------------------------------------------------------------------
    def check(self, code: str, lim: Limits, line: RateLine, number: str, now_ms: int
              ) -> Refusal | None:
        """The first limit this offer breaks, or None. Changes nothing (but forgetting
        what left the windows)."""
        if lim.allow is None or lim.allow_prefixes.match(number) is None:
            if lim.deny is not None:
                denied = lim.deny_prefixes.match(number)
                if denied is not None:
                    return Refusal(403, "Destination Not Allowed", "deny",
                                   f"destination {number} denied (prefix {denied})")
            hc = lim.high_cost_rate
            if hc is not None and line.rate >= hc:
                return Refusal(403, "High-Cost Destination Not Allowed", "high_cost",
                               f"{line.destination} at {line.rate}/min is high cost "
                               f"(at or above {hc}) and not allowed")
        if lim.max_rate is not None and line.rate > lim.max_rate:
            return Refusal(403, "Destination Price Above Limit", "max_rate",
                           f"{line.destination} costs {line.rate}/min, above the limit "
                           f"{lim.max_rate}")
        if lim.max_connection_fee is not None and line.connection_fee > lim.max_connection_fee:
            return Refusal(403, "Connection Fee Above Limit", "max_connection_fee",
                           f"{line.destination} has a connection fee of "
                           f"{line.connection_fee}, above the limit {lim.max_connection_fee}")
        a = self._accounts.get(code)
        if lim.concurrent_calls is not None:
            here = a.up if a is not None else 0
            there = self.elsewhere.get(code, 0)
            if here + there >= lim.concurrent_calls:
                where = f" ({there} on other nodes)" if there else ""
                return Refusal(486, "Concurrent Call Limit", "concurrent_calls",
                               f"{here + there} calls up{where}, the limit is "
                               f"{lim.concurrent_calls}")
        if a is None:
            return None  # no call of the account seen yet: no window to break
        if lim.calls_per_second is not None and a.second is not None and \
                a.second.count(now_ms) >= lim.calls_per_second:
            return Refusal(503, "Call Rate Limit", "calls_per_second",
                           f"{lim.calls_per_second} calls in the last second already")
        if lim.calls_per_minute is not None and a.minute is not None and \
                a.minute.count(now_ms) >= lim.calls_per_minute:
            return Refusal(503, "Call Rate Limit", "calls_per_minute",
                           f"{lim.calls_per_minute} calls in the last minute already")
        if lim.same_number_per_hour is not None and a.numbers:
            a.expire_numbers(now_ms)
            if a.numbers.get(number, 0) >= lim.same_number_per_hour:
                return Refusal(403, "Too Many Calls To Number", "same_number_per_hour",
                               f"{lim.same_number_per_hour} calls to {number} in the last "
                               "hour already")
        return None

    def started(self, code: str, call_ref: str, lim: Limits, line: RateLine, number: str,
                now_ms: int) -> Sequence[Trip]:
        """An offer was allowed: count it, and evaluate the rules on new calls."""
        a = self._accounts.get(code)
        if a is None:
            a = self._accounts[code] = _Account()
        elif call_ref in a.calls:
            return _NO_TRIPS
        hc = lim.high_cost_rate
        high = hc is not None and line.rate >= hc
        a.calls[call_ref] = high
        a.up += 1
        # (The windows' adds are written out here: this runs for every allowed offer.)
        if lim.calls_per_second is not None:
            w = a.second
            if w is None:
                w = a.second = _Times(1000)
            times = w.times
            times.append(now_ms)
            edge = now_ms - 1000
            while times[0] <= edge:
                times.popleft()
        if lim.calls_per_minute is not None:
            w = a.minute
            if w is None:
                w = a.minute = _Times(60_000)
            times = w.times
            times.append(now_ms)
            edge = now_ms - 60_000
            while times[0] <= edge:
                times.popleft()
        if lim.same_number_per_hour is not None:
            numbers = a.numbers
            numbers[number] = numbers.get(number, 0) + 1
            a.hour_times.append(now_ms)
            a.hour_numbers.append(number)
            if a.hour_times[0] <= now_ms - 3_600_000:
                a.expire_numbers(now_ms)
        if not lim.rules_on_new_calls:
            return _NO_TRIPS
        trips: list[Trip] = []
        head = number[:3]  # the country code is in the first three digits
        country = _countries.get(head)
        if country is None:
            country = _countries[head] = country_code(head) or "?"
        if lim.new_country_rate is not None:
            days = lim.new_country_days or DEFAULT_NEW_COUNTRY_DAYS
            last = a.seen.get(country)
            if (last is None or last < now_ms - days * DAY_MS) and \
                    line.rate > lim.new_country_rate:
                trips.append(Trip(
                    "new_country", lim.action("new_country"),
                    f"first call in {days} days to country +{country} ({line.destination}) "
                    f"at {line.rate}/min, above {lim.new_country_rate}",
                    {"country": country, "destination": line.destination,
                     "number": number, "rate": str(line.rate),
                     "last_call_ms": last, "days": days}))
        a.seen[country] = now_ms
        if lim.distinct_callees is not None or lim.distinct_countries is not None:
            span = (lim.distinct_minutes or DEFAULT_DISTINCT_MINUTES) * 60_000
            # (The evidence a rule used is dropped when it trips: it trips again only on
            # new calls.)
            if lim.distinct_callees is not None:
                a.callees = _distinct(trips, "distinct_callees", "numbers", lim,
                                      lim.distinct_callees, a.callees, span, number, now_ms)
            if lim.distinct_countries is not None:
                a.countries = _distinct(trips, "distinct_countries", "countries", lim,
                                        lim.distinct_countries, a.countries, span, country,
                                        now_ms)
        if high:
            a.high_cost_up += 1
            if lim.high_cost_calls is not None and a.high_cost_up > lim.high_cost_calls:
                trips.append(Trip(
                    "high_cost_calls", lim.action("high_cost_calls"),
                    f"{a.high_cost_up} high-cost calls up at once (limit "
                    f"{lim.high_cost_calls})",
                    {"calls": a.high_cost_up, "destination": line.destination,
                     "rate": str(line.rate)}))
        return trips or _NO_TRIPS

    # --- during and after the call -------------------------------------------------------
    def spent(self, code: str, lim: Limits, amount: Decimal, now_ms: int) -> list[Trip]:
        """Money committed on the account (a reservation; at settlement, the charge minus
        what was reserved, which may be negative): the spend velocity rules."""
        if lim.spend_per_minute is None and lim.spend_per_hour is None:
            return []
        a = self._acct(code)
        trips: list[Trip] = []
        for rule, limit, span, attr in (
                ("spend_per_minute", lim.spend_per_minute, 60_000, "spend_minute"),
                ("spend_per_hour", lim.spend_per_hour, 3_600_000, "spend_hour")):
            if limit is None:
                continue
            w: _Window | None = getattr(a, attr)
            if w is None:
                w = _Window(span)
                setattr(a, attr, w)
            w.add(now_ms, amount)
            if amount > 0 and w.total > limit:
                trips.append(Trip(
                    rule, lim.action(rule),
                    f"{fmt(w.total)} spent in the last "
                    f"{'minute' if span == 60_000 else 'hour'} (limit {fmt(limit)})",
                    {"spent": fmt(w.total), "limit": fmt(limit), "window_s": span // 1000,
                     "commitments": len(w.items)}))
                w.clear()
        return trips

    def ended(self, code: str, call_ref: str, lim: Limits, answered: bool, duration_ms: int,
              now_ms: int) -> list[Trip]:
        """A call of the account ended (after ``duration_ms`` billable, if answered):
        it no longer counts as up; the short-call flood rule."""
        a = self._accounts.get(code)
        if a is None:
            return []
        high = a.calls.pop(call_ref, None)
        if high is None:
            return []
        a.up -= 1
        if high:
            a.high_cost_up -= 1
        if lim.short_calls is None or not answered:
            return []
        short_ms = (lim.short_call_seconds or DEFAULT_SHORT_SECONDS) * 1000
        if duration_ms >= short_ms:
            return []
        span = (lim.short_calls_minutes or DEFAULT_SHORT_MINUTES) * 60_000
        if a.short is None or a.short.span != span:
            a.short = _Times(span)
        a.short.add(now_ms)
        n = len(a.short.times)
        if n <= lim.short_calls:
            return []
        a.short.times.clear()
        return [Trip("short_calls", lim.action("short_calls"),
                     f"{n} answered calls shorter than {short_ms // 1000} s in "
                     f"{span // 60_000} min (limit {lim.short_calls})",
                     {"calls": n, "shorter_than_s": short_ms // 1000,
                      "minutes": span // 60_000})]


def _distinct(trips: list[Trip], rule: str, what: str, lim: Limits, limit: int,
              recent: _Recent | None, span: int, key: str, now_ms: int) -> _Recent | None:
    """Count ``key`` in a distinct-keys window (a new one when the span changed); append
    the rule's trip past ``limit``. The window to keep: None once its evidence is used."""
    if recent is None or recent.span != span:
        recent = _Recent(span)
    distinct = recent.add(key, now_ms)
    if distinct <= limit:
        return recent
    trips.append(Trip(rule, lim.action(rule),
                      f"{distinct} distinct {what} called in {span // 60_000} min "
                      f"(limit {limit})",
                      {"distinct": distinct, "minutes": span // 60_000,
                       what: list(recent.seen)[-20:]}))
    return None
