"""Least-cost routing in the live path: the route list of each call, what every carrier
carries now, and route health judged on the calls as they end (pure: time is an argument,
no I/O).

One :class:`Router` serves the charging core (``Charger.router``):

    authorize  -> Router.route        the route list (select_routes over the CarrierBook)
               -> Router.started      the first carrier takes the call (its load, its CPS)
    attempt    -> Router.attempt      a carrier refused or did not answer: counted against
                                      it; on a 408 or a 5xx the next carrier takes the call
    end/failed -> Router.finished     the carrier that had the call, with the call's times
                                      and FAS verdict; its health is judged
    time       -> Router.tick         judgements that were waiting, cool-downs that end

A carrier's statistics are the tries it had over the health window
(:class:`~sidecar.routing.health.HealthPolicy`): each try is a
:class:`~sidecar.supervision.routes.RouteCall` that starts when the carrier was sent the
INVITE (the first carrier at the offer, the next one when the one before it failed), so
its post-dial delay and instant answers are its own. A try counts once: a failed try by
its ``attempt`` event, the try that took the call (answered, or cancelled while it rang)
at the call's end. The FAS score is :func:`~sidecar.supervision.routes.score_routes` over
those tries, the one the FAS report shows per route.

The book (carriers and their buy decks) comes from the store and is replaced whole when
it changes (:meth:`Router.set_book`): the calls being routed keep the one they started
with. Route health's pulls are the store's too: a restarted sidecar resumes them, and an
operator's ``carrier enable`` ends one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

from ..rating import RateLine, RateTable
from ..supervision.routes import PatternConfig, RouteCall, score_routes
from .carriers import HEALTH, Load
from .health import HealthEvent, HealthPolicy, RouteHealth, WindowStats
from .select import (
    CarrierBook,
    Order,
    Quality,
    Route,
    RouteList,
    RoutingPolicy,
    quality_score,
    select_routes,
)

#: Tries kept per carrier for its statistics (the oldest go first beyond this).
MAX_TRIES_KEPT = 20_000
_ONE_SECOND = 1000


@dataclass(frozen=True)
class RouterConfig:
    """How calls are routed and carriers judged.

    ``no_route_code``/``no_route_phrase``: the refusal of a call no carrier may take (every
    carrier left out: no rate, a loss, below the minimum margin, disabled, pulled, full).
    ``judge_every_ms``: a carrier is judged at most this often (its statistics are worked
    out over its whole window each time); a judgement that has to wait is made by
    :meth:`Router.tick`.
    """

    policy: RoutingPolicy = field(default_factory=RoutingPolicy)
    health: HealthPolicy = field(default_factory=HealthPolicy)
    no_route_code: int = 503
    no_route_phrase: str = "No Route Available"
    judge_every_ms: int = 1_000


@dataclass(slots=True)
class _Call:
    """A routed call: its list, which route has it, when that one was sent the INVITE."""

    routes: tuple[Route, ...]
    index: int
    since_ms: int
    counted: bool = False  # the current carrier's try was counted (its attempt event)
    holding: bool = True  # the current carrier has the call (False: every one failed)


@dataclass(slots=True)
class _Stats:
    """One carrier's tries (oldest first) and its CPS window."""

    tries: deque[RouteCall] = field(default_factory=lambda: deque(maxlen=MAX_TRIES_KEPT))
    starts: deque[int] = field(default_factory=deque)  # when its tries of the last second began
    calls: int = 0  # calls it has now
    judged_ms: int | None = None
    dirty: bool = False  # tries came in since it was last judged


class Router:
    """Route lists, carriers' loads and route health for one sidecar. One thread."""

    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config or RouterConfig()
        self.book: CarrierBook | None = None
        self._tables: dict[str, RateTable] = {}
        self.health = RouteHealth(self.config.health)
        self._patterns = PatternConfig(min_calls=self.config.health.min_attempts)
        self._calls: dict[str, _Call] = {}
        self._stats: dict[str, _Stats] = {}
        self._quality: dict[str, Decimal] = {}
        self._quality_ms: int | None = None

    def reconfigure(self, config: RouterConfig) -> None:
        """New settings (a reloaded configuration) for the calls from now on; carriers
        pulled stay pulled until their cool-down ends."""
        self.config = config
        self.health.policy = config.health
        self._patterns = PatternConfig(min_calls=config.health.min_attempts)
        self._quality_ms = None

    # --- the book ------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True when there are carriers to route calls to (else calls go where
        Kamailio's configuration sends them, as without routing)."""
        return self.book is not None and bool(self.book.decks)

    def set_book(self, book: CarrierBook, now_ms: int) -> list[str]:
        """Use ``book`` for new calls. Pulls the store holds that route health here does
        not know (a restart, another node) are taken up; a carrier an operator enabled
        after it was pulled is no longer pulled. Returns what changed, in words, for the
        log."""
        self.book = book
        self._tables = {d.carrier.name: d.table for d in book.decks}
        said = []
        for deck in book.decks:
            c = deck.carrier
            pulled = self.health.is_pulled(c.name)
            if (not c.enabled and c.disabled_by == HEALTH and c.until_ms is not None
                    and c.until_ms > now_ms and not pulled):
                self.health.load(c.name, c.until_ms, c.disabled_ms or now_ms,
                                 c.disabled_reason)
                said.append(f"{c.name} pulled until {c.until_ms} ({c.disabled_reason})")
            elif pulled and c.enabled and book.enabled_ms.get(c.name, -1) >= (
                    self.health.since(c.name) or 0):
                self.health.restore(c.name, now_ms, "enabled by an operator")
                said.append(f"{c.name} enabled by an operator")
        return said

    # --- calls ---------------------------------------------------------------------
    def route(self, number: str, now_ms: int, sell: RateLine, origin: str = "") -> RouteList:
        """The route list of a call to ``number`` sold on ``sell`` (call
        :attr:`active` first)."""
        assert self.book is not None
        policy = self.config.policy
        quality = self._qualities(now_ms) if policy.order is Order.QUALITY else None
        loads = None
        if self._stats:
            loads = {name: Load(s.calls, self._cps(s, now_ms))
                     for name, s in self._stats.items() if s.calls or s.starts}
        return select_routes(number, now_ms, sell, self.book, policy, origin=origin,
                             loads=loads, pulled=self.health.pulled, quality=quality)

    def started(self, call_ref: str, routes: tuple[Route, ...], now_ms: int) -> None:
        """The call was allowed with ``routes``: the first carrier is sent the INVITE."""
        if not routes or call_ref in self._calls:
            return
        self._calls[call_ref] = _Call(routes, 0, now_ms)
        self._take(routes[0].carrier, now_ms)

    def routes_of(self, call_ref: str) -> tuple[Route, ...]:
        call = self._calls.get(call_ref)
        return call.routes if call is not None else ()

    def attempt(self, call_ref: str, carrier: str, code: int, now_ms: int) -> None:
        """``carrier`` refused the call with ``code`` (408: it did not answer in time). On a
        408 or a 5xx Kamailio sends the INVITE to the next carrier of the list."""
        call = self._calls.get(call_ref)
        start = now_ms
        if call is not None and call.routes[call.index].carrier == carrier:
            start = call.since_ms
        self._count(carrier, RouteCall(carrier, start, None, None, now_ms))
        if call is None:
            return
        if call.routes[call.index].carrier == carrier:
            call.counted = True
        if call.holding and (code == 408 or 500 <= code <= 599):
            self._release(call.routes[call.index].carrier)
            nxt = call.index + 1
            if nxt < len(call.routes):
                call.index, call.since_ms, call.counted = nxt, now_ms, False
                self._take(call.routes[nxt].carrier, now_ms)
            else:
                call.holding = False  # every carrier failed: the call fails next

    def line_of(self, call_ref: str, carrier: str, number: str = "", at_ms: int = 0,
                origin: str = "") -> tuple[RateLine, RateTable] | None:
        """The buy line ``carrier`` prices the call on, and its deck: from the call's route
        list as it was made at the offer; for a call this router did not route (adopted
        after a restart), the line of ``number`` at ``at_ms`` in the carrier's deck. None
        when the carrier is not one of ours or has no line for it."""
        table = self._tables.get(carrier)
        if table is None:
            return None
        call = self._calls.get(call_ref)
        if call is not None:
            for r in call.routes:
                if r.carrier == carrier:
                    return r.line, table
            return None
        line = table.lookup(number, at_ms // 1000, origin) if number else None
        return (line, table) if line is not None else None

    def finished(self, call_ref: str, carrier: str, *, offered_ms: int,
                 ringing_ms: int | None, answered_ms: int | None, ended_ms: int,
                 fas_verdict: str = "") -> None:
        """The call ended on ``carrier`` (the route Kamailio names: the carrier that took
        it, or the last one tried). Its try is counted unless its attempt event was."""
        call = self._calls.pop(call_ref, None)
        if call is None:
            if not carrier or carrier not in self._tables:
                return  # not routed here (no carriers, or a carrier since removed)
            start = offered_ms
        else:
            current = call.routes[call.index].carrier
            if call.holding:
                self._release(current)
            if carrier == current:
                if call.counted and answered_ms is None:
                    return  # its attempt event counted this try already
                start = call.since_ms
            elif carrier and any(r.carrier == carrier for r in call.routes):
                start = offered_ms  # Kamailio skipped a carrier it could not relay to
            else:
                return
        if ringing_ms is not None and ringing_ms < start:
            ringing_ms = None  # the ringing of an earlier carrier
        self._count(carrier, RouteCall(carrier, start, ringing_ms, answered_ms, ended_ms,
                                       fas_verdict))

    def forget(self, call_ref: str) -> None:
        """The call is gone without an end that names its carrier."""
        call = self._calls.pop(call_ref, None)
        if call is not None and call.holding:
            self._release(call.routes[call.index].carrier)

    # --- health --------------------------------------------------------------------
    def tick(self, now_ms: int) -> list[HealthEvent]:
        """Judgements that were waiting, and carriers whose cool-down is over."""
        events = self.health.tick(now_ms)
        every = self.config.judge_every_ms
        for name, s in self._stats.items():
            if s.dirty and (s.judged_ms is None or now_ms - s.judged_ms >= every):
                events += self._judge(name, s, now_ms)
        return events

    def next_deadline(self) -> int | None:
        """When :meth:`tick` has something to do (ms), or None."""
        at = self.health.next_deadline()
        every = self.config.judge_every_ms
        for s in self._stats.values():
            if s.dirty:
                due = (s.judged_ms or 0) + every
                at = due if at is None else min(at, due)
        return at

    def restore(self, carrier: str, now_ms: int, note: str = "") -> list[HealthEvent]:
        """An operator brings a pulled carrier back now."""
        return self.health.restore(carrier, now_ms, note)

    def window_stats(self, carrier: str, now_ms: int) -> WindowStats:
        """``carrier``'s tries over its health window: attempts, answered, FAS score."""
        s = self._stats.get(carrier)
        start, end = self.health.window(carrier, now_ms)
        tries = [t for t in (s.tries if s else ()) if start <= t.ended_ms]
        if not tries:
            return WindowStats(start, end, 0, 0)
        score = score_routes(tries, self._patterns)[0]
        return WindowStats(start, end, score.attempts, score.answered,
                           score.score if score.judged else None)

    def statistics(self, now_ms: int) -> dict[str, dict[str, object]]:
        """Per carrier: calls up, calls in the last second, its window's figures and
        whether it is pulled (for the log, metrics and the API)."""
        out: dict[str, dict[str, object]] = {}
        names = sorted(set(self._tables) | set(self._stats))
        for name in names:
            s = self._stats.get(name)
            w = self.window_stats(name, now_ms)
            out[name] = {"calls": s.calls if s else 0, "cps": self._cps(s, now_ms) if s else 0,
                         "attempts": w.attempts, "answered": w.answered,
                         "asr": None if w.asr is None else str(w.asr.quantize(Decimal("0.0001"))),
                         "fas_score": w.fas_score, "pulled": self.health.is_pulled(name)}
        return out

    # --- internals -----------------------------------------------------------------
    def _stats_of(self, carrier: str) -> _Stats:
        s = self._stats.get(carrier)
        if s is None:
            s = self._stats[carrier] = _Stats()
        return s

    def _take(self, carrier: str, now_ms: int) -> None:
        s = self._stats_of(carrier)
        s.calls += 1
        s.starts.append(now_ms)

    def _release(self, carrier: str) -> None:
        s = self._stats.get(carrier)
        if s is not None and s.calls > 0:
            s.calls -= 1

    @staticmethod
    def _cps(s: _Stats, now_ms: int) -> int:
        starts = s.starts
        while starts and starts[0] <= now_ms - _ONE_SECOND:
            starts.popleft()
        return len(starts)

    def _count(self, carrier: str, t: RouteCall) -> None:
        s = self._stats_of(carrier)
        s.tries.append(t)
        s.dirty = True

    def _judge(self, name: str, s: _Stats, now_ms: int) -> list[HealthEvent]:
        s.dirty = False
        s.judged_ms = now_ms
        horizon = now_ms - self.config.health.window_ms
        tries = s.tries
        while tries and tries[0].ended_ms < horizon:
            tries.popleft()
        if self.health.is_pulled(name) or name not in self._tables:
            return []
        return self.health.observe(name, self.window_stats(name, now_ms), now_ms)

    def _qualities(self, now_ms: int) -> dict[str, Decimal]:
        """Each carrier's quality score, worked out at most once a second."""
        if self._quality_ms is not None and now_ms - self._quality_ms < _ONE_SECOND:
            return self._quality
        policy = self.config.policy
        out = {}
        for name in self._tables:
            out[name] = quality_score(self._quality_of(name, now_ms), policy)
        self._quality, self._quality_ms = out, now_ms
        return out

    def _quality_of(self, name: str, now_ms: int) -> Quality:
        s = self._stats.get(name)
        start, _ = self.health.window(name, now_ms)
        tries = [t for t in (s.tries if s else ()) if start <= t.ended_ms]
        if not tries:
            return Quality()
        answered = [t for t in tries if t.answered_ms is not None]
        asr = Decimal(len(answered)) / len(tries)
        acd = (Decimal(sum(t.ended_ms - (t.answered_ms or 0) for t in answered))
               / len(answered) / 1000) if answered else None
        rang = [t.ringing_ms - t.offered_ms for t in tries if t.ringing_ms is not None]
        pdd = sum(rang) // len(rang) if rang else None
        score = score_routes(tries, self._patterns)[0]
        return Quality(asr, acd, pdd, score.score if score.judged else None)

