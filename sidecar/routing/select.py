"""Least-cost routing: which carriers a call may go to, and in what order (pure core).

Given the dialled number, the customer's sell line (from their rate plan) and each
carrier's buy deck, :func:`select_routes` returns the ordered route list:

1. **Buy price.** Each carrier's line for the number is its deck's longest prefix in
   effect at the call's time (the same look-up as rating: :meth:`RateTable.lookup`).
   A carrier with no line, or a deck in another currency than the sell plan's, is left out.
2. **Margin.** Buy and sell are compared on the same *reference call* of
   ``reference_seconds`` (default 60 s), each priced exactly as billing prices it
   (:func:`sidecar.rating.price`: its increment, connection fee, minimum charge and
   surcharge, each component rounded once to the money scale). ``margin = sell - buy`` of
   that call is exact. A route is kept only when the margin is at least the minimum:
   ``margin * 60 >= per_minute * reference_seconds`` (the absolute minimum per minute)
   and ``margin * 100 >= percent * sell`` (the minimum as a percentage of the sell
   price); both are compared exactly, with no rounding, so a margin one unit of the
   last decimal below the minimum is refused. A negative margin is never kept, whatever
   the minimum (a minimum cannot be negative); a minimum of 0 admits break-even routes.
3. **Availability.** A carrier disabled (by an operator, or pulled by route health and
   its cool-down not over) or at capacity (concurrent calls, calls per second) is left
   out, after the margin so that the what-if tool shows its prices anyway.
4. **Order.** ``cost``: cheapest reference call first. ``quality``: the lowest
   *quality-adjusted cost* first, ``buy * (1 + penalty * (1 - quality))``, where quality
   (0..1) weighs ASR, ACD, PDD and the FAS score (:func:`quality_score`): with the default
   penalty of 1 a carrier of quality 0 counts at twice its price, one of quality 1 at its
   price. Ties go to the cheaper, then to the name.

Every carrier left out is listed with why (:class:`Excluded`); an empty list has a reason
naming each carrier's. Shown amounts: the margin per minute is rounded once to the money
scale (8 places, half-up; exact for the default 60 s reference); the margin percentage to
2 places, half-up. Neither rounding takes part in any decision.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from operator import itemgetter
from typing import Any, NamedTuple

from ..money import ZERO, fmt, round_money
from ..rating import RateLine, RateTable, price
from .carriers import HEALTH, NO_LOAD, Carrier, Load, capacity_problem

_ONE = Decimal(1)
_SIXTY = Decimal(60)
_HUNDRED = Decimal(100)
_PERCENT_Q = Decimal("0.01")


class RoutingError(ValueError):
    """A routing setting that cannot be used."""


class Order(StrEnum):
    """How the routes that qualify are ordered."""

    COST = "cost"
    QUALITY = "quality"


class Why(StrEnum):
    """Why a carrier is not in a route list."""

    NO_RATE = "no_rate"  # its deck has no line for the number (at that time)
    CURRENCY = "currency"  # its deck is in another currency than the sell plan
    LOSS = "loss"  # the buy price is above the sell price: never used
    MARGIN = "margin"  # the margin is below the configured minimum
    DISABLED = "disabled"  # an operator disabled it
    PULLED = "pulled"  # route health took it out
    CAPACITY = "capacity"  # concurrent calls or calls per second at the limit
    LIMIT = "limit"  # qualified, but beyond the number of routes a call may try


@dataclass(frozen=True)
class Margin:
    """The minimum margin a route must leave: ``per_minute`` in the sell currency, and
    ``percent`` of the sell price. Both apply; 0 (the default) admits break-even routes."""

    per_minute: Decimal = ZERO
    percent: Decimal = ZERO

    def __post_init__(self) -> None:
        for name in ("per_minute", "percent"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite():
                raise RoutingError(f"minimum margin {name} must be a decimal amount")
            if value < 0:
                raise RoutingError(f"minimum margin {name} cannot be negative ({value}): "
                                   "a route that loses money is never used")


@dataclass(frozen=True)
class QualityWeights:
    """How much each statistic counts in a carrier's quality (relative weights)."""

    asr: Decimal = Decimal(3)
    acd: Decimal = Decimal(1)
    pdd: Decimal = Decimal(1)
    fas: Decimal = Decimal(3)


@dataclass(frozen=True)
class RoutingPolicy:
    """How routes are chosen (see the module docstring)."""

    margin: Margin = field(default_factory=Margin)
    order: Order = Order.COST
    reference_seconds: int = 60
    #: Quality order: a carrier of quality 0 counts at (1 + penalty) times its price.
    quality_penalty: Decimal = _ONE
    weights: QualityWeights = field(default_factory=QualityWeights)
    #: ACD at or above this counts fully; shorter calls count in proportion.
    acd_target_seconds: Decimal = Decimal(120)
    #: PDD at or above this counts nothing; shorter delays count in proportion.
    pdd_limit_ms: int = 10_000
    #: What an unknown statistic (a carrier with no calls yet) counts as (0..1).
    unknown_quality: Decimal = Decimal("0.5")
    #: The most routes a call tries (None: every route that qualifies).
    max_routes: int | None = None

    def __post_init__(self) -> None:
        if self.reference_seconds < 1:
            raise RoutingError("reference_seconds must be at least 1")
        if self.quality_penalty < 0:
            raise RoutingError("quality_penalty cannot be negative")
        if not ZERO <= self.unknown_quality <= _ONE:
            raise RoutingError("unknown_quality must be from 0 to 1")
        if self.acd_target_seconds <= 0 or self.pdd_limit_ms < 1:
            raise RoutingError("acd_target_seconds and pdd_limit_ms must be positive")
        w = self.weights
        if min(w.asr, w.acd, w.pdd, w.fas) < 0 or w.asr + w.acd + w.pdd + w.fas <= 0:
            raise RoutingError("quality weights cannot be negative, nor all zero")
        if self.max_routes is not None and self.max_routes < 1:
            raise RoutingError("max_routes must be at least 1")


@dataclass(frozen=True, slots=True)
class Quality:
    """A carrier's statistics over a recent window (``sidecar.invoices.analytics``
    ``route_stats`` and ``supervision.routes`` ``score_routes``); None: not known."""

    asr: Decimal | None = None  # answered / attempts, 0..1
    acd_seconds: Decimal | None = None
    pdd_ms: int | None = None
    fas_score: int | None = None  # 0 (clean) .. 100 (fakes answers)


def quality_score(q: Quality, policy: RoutingPolicy) -> Decimal:
    """A carrier's quality from 0 (worst) to 1 (best): the weighted mean of ASR, ACD
    against its target, PDD against its limit (shorter is better) and the FAS score
    (lower is better), each from 0 to 1; an unknown one counts ``unknown_quality``.
    Exact decimals (28 digits), no rounding."""
    unknown = policy.unknown_quality
    w = policy.weights
    asr = unknown if q.asr is None else min(max(q.asr, ZERO), _ONE)
    acd = unknown if q.acd_seconds is None else min(
        max(q.acd_seconds, ZERO) / policy.acd_target_seconds, _ONE)
    pdd = unknown if q.pdd_ms is None else _ONE - min(
        Decimal(max(q.pdd_ms, 0)) / policy.pdd_limit_ms, _ONE)
    fas = unknown if q.fas_score is None else _ONE - min(
        Decimal(max(q.fas_score, 0)) / _HUNDRED, _ONE)
    return (w.asr * asr + w.acd * acd + w.pdd * pdd + w.fas * fas) / (
        w.asr + w.acd + w.pdd + w.fas)


@dataclass(frozen=True, slots=True)
class CarrierDeck:
    """A carrier and its buy deck, loaded (``load_table(conn, plan, kind=BUY)``)."""

    carrier: Carrier
    table: RateTable


class Route(NamedTuple):
    """One carrier of a route list: its buy line and the reference call's prices."""

    carrier: str
    uri: str
    line: RateLine  # the buy line that matched
    buy: Decimal  # the reference call at the carrier's price
    sell: Decimal  # ... and at the customer's
    margin: Decimal  # sell - buy, exact
    quality: Decimal | None  # 0..1 in quality order, else None
    rank: Decimal  # what the list is ordered by: cost, or quality-adjusted cost
    reference_seconds: int

    # Shown amounts, worked out when asked for (the INVITE needs none of them).
    @property
    def margin_per_minute(self) -> Decimal:
        """The margin per minute, rounded once to the money scale (exact at 60 s)."""
        return _shown_per_minute(self.margin, self.reference_seconds)

    @property
    def margin_percent(self) -> Decimal | None:
        """The margin as a percentage of the sell price, 2 places half-up (None when the
        sell price is 0)."""
        return _percent(self.margin, self.sell)


class Excluded(NamedTuple):
    """A carrier left out of a route list, and why (its prices when it had a line)."""

    carrier: str
    why: Why
    buy: Decimal | None = None
    margin: Decimal | None = None
    #: What :attr:`detail` is written from (the INVITE needs the text only when no
    #: route is left, so it is written when asked for).
    facts: tuple[Any, ...] = ()

    @property
    def detail(self) -> str:
        """Why, in words: the figures and the limit it failed."""
        f = self.facts
        why = self.why
        if why is Why.NO_RATE:
            return f"has no rate for {f[0]}"
        if why is Why.CURRENCY:
            return f"sells in {f[0]}, the customer buys in {f[1]}"
        if why is Why.LOSS:
            return (f"costs {fmt(self.buy or ZERO)}, above the sell price {fmt(f[0])} "
                    f"({f[1]} s call): never used")
        if why is Why.MARGIN:
            sell, ref, per_minute, percent = f
            margin = self.margin or ZERO
            pct = f" ({_percent(margin, sell)}%)" if sell else ""
            minimum = " and ".join(([f"{fmt(per_minute)}/min"] if per_minute is not None
                                    else []) + ([f"{fmt(percent)}%"] if percent is not None
                                                else []))
            return (f"leaves {fmt(_shown_per_minute(margin, ref))}/min{pct}, below the "
                    f"minimum margin of {minimum}")
        if why is Why.LIMIT:
            return f"qualifies but a call tries at most {f[0]} routes"
        return str(f[0])


class RouteList(NamedTuple):
    """The routes a call may take, best first, and the carriers left out."""

    number: str
    sell_line: RateLine
    sell: Decimal  # the reference call at the customer's price
    reference_seconds: int
    routes: tuple[Route, ...]
    excluded: tuple[Excluded, ...]

    @property
    def reason(self) -> str:
        """Why the list is empty ('' when it is not): each carrier's reason."""
        if self.routes:
            return ""
        if not self.excluded:
            return f"no route to {self.number}: no carriers"
        return f"no route to {self.number}: " + "; ".join(
            f"{e.carrier} {e.detail}" for e in self.excluded)


def _shown_per_minute(margin: Decimal, reference_seconds: int) -> Decimal:
    return round_money(margin * _SIXTY / reference_seconds) if reference_seconds != 60 \
        else margin


def _percent(margin: Decimal, sell: Decimal) -> Decimal | None:
    return (margin * _HUNDRED / sell).quantize(_PERCENT_Q, ROUND_HALF_UP) if sell else None


#: A prefix's lines of one carrier: origin ("" any) -> [(effective, line)], newest first.
_ByOrigin = dict[str, list[tuple[int, RateLine]]]
#: A prefix in a :class:`CarrierBook`: (carrier, effective, its only line) or
#: (carrier, _MANY, its lines by origin); _MANY is no Unix time a deck can name.
_MANY = -(1 << 62)
_Entry = tuple[int, int, "RateLine | _ByOrigin"]


def _newest(entry: tuple[int, RateLine]) -> int:
    return entry[0]


#: Sell lines whose reference price a :class:`CarrierBook` keeps.
SELL_PRICES_KEPT = 100_000


class CarrierBook:
    """Carriers' decks made ready to route many calls: what :func:`select_routes` takes
    in the live path instead of a plain list of decks (the same answers, faster).

    * One index of every carrier's prefixes: a number's prefixes are walked once for all
      carriers, longest first, and each carrier takes the line of the first prefix
      that has one in effect, its caller's origin class before the any-origin line, the
      latest effective date first: the rule of :meth:`RateTable.lookup`, which the tests
      hold it to for every deck.
    * Each buy line's price of the reference call is worked out once and kept (lines
      never change; a new deck version is a new book).

    Built once when the decks are loaded or change; never changed after, so a call being
    routed keeps the book it started with.
    """

    def __init__(self, decks: Sequence[CarrierDeck],
                 enabled_ms: Mapping[str, int] | None = None) -> None:
        self.decks = tuple(decks)
        #: When an operator last enabled each carrier (Unix ms): what ends a pull by route
        #: health made before it (:meth:`sidecar.routing.router.Router.set_book`).
        self.enabled_ms: Mapping[str, int] = dict(enabled_ms or {})
        merged: dict[str, list[_Entry]] = {}
        stamps: dict[int, int] = {}  # one int object per effective date
        for i, deck in enumerate(self.decks):
            # Every line that can ever be chosen: at time 0 all are in effect or
            # scheduled, one per prefix, origin and date (the later version's).
            own: dict[str, _ByOrigin] = {}
            for ln in deck.table.lines_in_effect(0):
                eff = ln.effective_ts
                own.setdefault(ln.prefix, {}).setdefault(ln.origin, []).append(
                    (stamps.setdefault(eff, eff), ln))
            for prefix, by_origin in own.items():
                entries = by_origin.get("")
                if len(by_origin) == 1 and entries is not None and len(entries) == 1:
                    # Most prefixes: one line for every caller. Kept as (carrier,
                    # effective, line); the rest as (carrier, _MANY, lines by origin).
                    merged.setdefault(prefix, []).append((i, entries[0][0], entries[0][1]))
                    continue
                for entries in by_origin.values():
                    entries.sort(key=_newest, reverse=True)
                merged.setdefault(prefix, []).append((i, _MANY, by_origin))
        self._index = {p: tuple(v) for p, v in merged.items()}
        self._max_len = max((len(p) for p in merged), default=0)
        # reference seconds -> id of a buy line -> price (the book's tables keep the lines
        # alive, so an id stays theirs).
        self._costs: dict[int, dict[int, Decimal]] = {}
        # reference seconds -> id of a sell line -> (the line, its price): the line is
        # kept with its price, so its id cannot be another line's while it is here.
        self._sell: dict[int, dict[int, tuple[RateLine, Decimal]]] = {}

    def with_carriers(self, carriers: Sequence[Carrier],
                      enabled_ms: Mapping[str, int] | None = None) -> CarrierBook:
        """The same decks with the carriers' new states (enabled, pulled, capacity,
        destination): a new book sharing this one's index and prices, at no cost. The
        carriers must be this book's, in the same order, on the same decks."""
        if [c.name for c in carriers] != [d.carrier.name for d in self.decks]:
            raise RoutingError("with_carriers takes the book's own carriers, in order")
        book = object.__new__(CarrierBook)
        book.__dict__.update(self.__dict__)
        book.decks = tuple(CarrierDeck(c, d.table) for c, d in zip(carriers, self.decks,
                                                                   strict=True))
        book.enabled_ms = dict(enabled_ms or {})
        return book

    def lines(self, digits: str, at: int, origin: str = "") -> list[RateLine | None]:
        """Each carrier's line for ``digits`` at ``at`` (Unix seconds), in deck order:
        what ``deck.table.lookup(digits, at, origin)`` gives, for every deck."""
        found: list[RateLine | None] = [None] * len(self.decks)
        todo = len(found)
        index = self._index
        for n in range(min(len(digits), self._max_len), 0, -1):
            hits = index.get(digits[:n])
            if hits is None:
                continue
            for i, eff, lines in hits:
                if found[i] is not None:
                    continue
                if eff != _MANY:  # the prefix's only line, for every caller
                    if eff <= at:
                        found[i] = lines  # type: ignore[assignment]
                        todo -= 1
                    continue
                by_origin: _ByOrigin = lines  # type: ignore[assignment]
                line = None
                if origin:
                    entries = by_origin.get(origin)
                    if entries:
                        for eff, ln in entries:
                            if eff <= at:
                                line = ln
                                break
                if line is None:
                    entries = by_origin.get("")
                    if entries:
                        for eff, ln in entries:
                            if eff <= at:
                                line = ln
                                break
                if line is not None:
                    found[i] = line
                    todo -= 1
            if not todo:
                break
        return found

    def costs(self, seconds: int) -> dict[int, Decimal]:
        """The prices of a call of ``seconds`` on this book's buy lines worked out so far,
        by id of the line (fill in with :func:`price` what is missing)."""
        found = self._costs.get(seconds)
        if found is None:
            found = self._costs[seconds] = {}
        return found

    def sell_cost(self, line: RateLine, seconds: int) -> Decimal:
        """The price of a call of ``seconds`` on a sell line, kept (at most
        :data:`SELL_PRICES_KEPT` lines, then forgotten all at once)."""
        kept = self._sell.get(seconds)
        if kept is None:
            kept = self._sell[seconds] = {}
        hit = kept.get(id(line))
        if hit is not None and hit[0] is line:
            return hit[1]
        if len(kept) >= SELL_PRICES_KEPT:
            kept.clear()
        cost = price(line, seconds).cost
        kept[id(line)] = (line, cost)
        return cost


def select_routes(
    number: str,
    now_ms: int,
    sell: RateLine,
    decks: Sequence[CarrierDeck] | CarrierBook,
    policy: RoutingPolicy,
    *,
    origin: str = "",
    loads: Mapping[str, Load] | None = None,
    pulled: Mapping[str, str] | Collection[str] = (),
    quality: Mapping[str, Decimal] | None = None,
) -> RouteList:
    """The route list of a call to ``number`` (E.164 digits) at ``now_ms`` (Unix ms)
    from a caller of ``origin`` class, sold on ``sell`` (the customer's line for it).

    ``decks``: the carriers' decks, or a :class:`CarrierBook` of them (faster, the same
    list). ``loads``: each carrier's calls up and calls in the last second (missing: none);
    ``pulled``: carriers route health took out (name, or name -> reason); ``quality``:
    each carrier's :func:`quality_score` (missing: ``unknown_quality`` throughout), used
    in quality order only. Pure: the same arguments give the same list.
    """
    at = now_ms // 1000
    ref = policy.reference_seconds
    currency = sell.currency
    m = policy.margin
    min_abs = m.per_minute * ref  # compared with margin * 60
    min_pct = m.percent
    need_abs = min_abs > 0
    need_pct = min_pct > 0
    by_quality = policy.order is Order.QUALITY
    penalty = policy.quality_penalty
    routes: list[Route] = []
    excluded: list[Excluded] = []
    costs: dict[int, Decimal] | None
    if isinstance(decks, CarrierBook):
        all_decks: Sequence[CarrierDeck] = decks.decks
        found = decks.lines(number, at, origin)
        costs = decks.costs(ref)
        sell_cost = decks.sell_cost(sell, ref)
    else:
        all_decks = decks
        found = [d.table.lookup(number, at, origin) for d in decks]
        costs = None
        sell_cost = price(sell, ref).cost
    for deck, line in zip(all_decks, found, strict=True):
        carrier = deck.carrier
        name = carrier.name
        if line is None:
            excluded.append(Excluded(name, Why.NO_RATE, None, None, (number,)))
            continue
        if line.currency != currency:
            excluded.append(Excluded(name, Why.CURRENCY, None, None,
                                     (line.currency, currency)))
            continue
        if costs is None:
            buy = price(line, ref).cost
        else:
            got = costs.get(id(line))
            if got is None:
                got = costs[id(line)] = price(line, ref).cost
            buy = got
        margin = sell_cost - buy
        if margin < 0:
            excluded.append(Excluded(name, Why.LOSS, buy, margin, (sell_cost, ref)))
            continue
        short_abs = need_abs and margin * _SIXTY < min_abs
        short_pct = need_pct and (margin * _HUNDRED < min_pct * sell_cost if sell_cost
                                  else True)
        if short_abs or short_pct:
            excluded.append(Excluded(name, Why.MARGIN, buy, margin, (
                sell_cost, ref, m.per_minute if short_abs else None,
                m.percent if short_pct else None)))
            continue
        if not carrier.enabled and not carrier.usable(now_ms):
            if carrier.disabled_by == HEALTH:
                excluded.append(Excluded(name, Why.PULLED, buy, margin, (
                    f"pulled by route health: {carrier.disabled_reason}",)))
            else:
                excluded.append(Excluded(name, Why.DISABLED, buy, margin, (
                    f"disabled: {carrier.disabled_reason or 'no reason given'}",)))
            continue
        if pulled and name in pulled:
            why = pulled[name] if isinstance(pulled, Mapping) else ""
            excluded.append(Excluded(name, Why.PULLED, buy, margin, (
                "pulled by route health" + (f": {why}" if why else ""),)))
            continue
        if carrier.max_calls is not None or carrier.max_cps is not None:
            full = capacity_problem(
                carrier, NO_LOAD if loads is None else loads.get(name, NO_LOAD))
            if full:
                excluded.append(Excluded(name, Why.CAPACITY, buy, margin, (full,)))
                continue
        q: Decimal | None = None
        rank = buy
        if by_quality:
            q = policy.unknown_quality if quality is None else quality.get(
                name, policy.unknown_quality)
            rank = buy * (_ONE + penalty * (_ONE - q))
        routes.append(_new_tuple(
            Route, (name, carrier.uri, line, buy, sell_cost, margin, q, rank, ref)))
    if len(routes) > 1:
        routes.sort(key=_RANK)
    if policy.max_routes is not None and len(routes) > policy.max_routes:
        for r in routes[policy.max_routes:]:
            excluded.append(Excluded(r.carrier, Why.LIMIT, r.buy, r.margin,
                                     (policy.max_routes,)))
        routes = routes[:policy.max_routes]
    return _new_tuple(RouteList, (number, sell, sell_cost, ref, tuple(routes),
                                  tuple(excluded)))


#: A Route (RouteList) made without NamedTuple's keyword handling: the hot path.
_new_tuple = tuple.__new__


_RANK = itemgetter(7, 3, 0)  # a route's rank, buy, carrier: the order of the list
