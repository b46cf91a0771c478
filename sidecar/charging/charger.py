"""Online charging: authorize, reserve credit in chunks, end calls when it is gone, settle.

The :class:`Charger` is driven by events (offer, answer, end, failure, time advancing,
the store's answers) and answers with decisions and actions. It never reads a clock:
every method takes ``now_ms``. It never waits on its store either: it decides from the
accounts it holds (:class:`~sidecar.charging.book.AccountBook`) and sends commands
(reserve, settle, top up: ``commands.py``) to a store edge, whose outcomes come back
through :meth:`Charger.on_results`, as a timer's do through :meth:`Charger.tick`. The
store applies the same rules atomically against its own state, so concurrent calls
(and other processes) can never overdraw an account: a reservation the store cannot
cover comes back smaller and the call is shortened.

Synchronous use (tests, replay, the demo): ``Charger(SqliteLedger(conn), plans)`` applies
each command at once in its own transaction and reads accounts through from the store.

Timeline of an answered prepaid call::

    answer ──reserve chunk 1──┬── renew_at: reserve chunk 2 ──┬── ... ── cut-off
                              └ paid_seconds grows            └ partial grant: final,
                                                                EndCall at the exact ms
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from ..money import ZERO, to_text
from ..numbers import InvalidNumber, normalize, origin_class
from ..rating import NoRate, Price, RateLine, RateTable, affordable_seconds, price
from ..rating.bundles import UNLIMITED, Bundle, affordable_with_bundle, split
from ..rating.fx import FxError, FxTable
from ..routing.health import HealthEvent
from ..routing.router import Router
from .book import AccountBook
from .bundles import BundleBook
from .commands import (
    BatchResult,
    BundleDraw,
    CarrierHealth,
    ChainPart,
    CostTo,
    Flag,
    FloatHold,
    Outcome,
    Reserve,
    Settle,
    StoreCommand,
    TierPrice,
    Topup,
    UsageKey,
)
from .fraud import FraudGuard, Trip
from .limits import NO_LIMITS, Limits, effective
from .model import (
    Account,
    AccountKind,
    Action,
    Alert,
    AuthDecision,
    Cdr,
    CdrWritten,
    Disposition,
    EndCall,
    MediaOutcome,
    Recharge,
)
from .ports import StoreExecutor, StorePort
from .settle import (
    NO_EFFECT,
    Effect,
    Fit,
    grant,
    reserve_effect,
    settle_amounts,
    settle_prepaid,
)
from .tiers import Float, Upline, grant_chain

log = logging.getLogger("sidecar.charging")

REASON_CREDIT = "credit exhausted"
REASON_STORE = "store unavailable: credit could not be reserved"
#: Another node billed the call (this node's lease on it ran out: it was cut off from the
#: store, or thought dead): no more credit; the call ends at the paid time billed.
REASON_SETTLED = "settled by another node (this node's lease on the call ran out)"
#: A fraud rule suspended the account: its live calls end at once.
FRAUD_PREFIX = "fraud rule "


@dataclass(frozen=True)
class PlanRates:
    """What the charger needs of a rate plan."""

    table: RateTable
    chunk_seconds: int = 60
    limits: Limits = NO_LIMITS  # the plan's default limits (accounts inherit them)


@dataclass(frozen=True)
class ChargingConfig:
    """Tunables of credit control.

    ``renew_lead_ms``: how long before the paid time runs out the next chunk is reserved.
    ``min_chunk_seconds``: the chunk used while credit is low, so that calls sharing a
    small balance take turns instead of one call holding it all.
    ``low_credit_chunks``: credit is low when it covers fewer than this many chunks for
    every live call on the account (the new one included).
    ``float_chunks``: a float on a reseller (``tiers.py``) is topped up by this many of
    the chunk that asked, when it holds fewer than ``float_low_chunks`` of them and the
    reseller has twice the top-up available (0: no floats, a hold per call and tier).
    ``float_idle_ms``: a float nothing drew on for this long is given back.
    """

    renew_lead_ms: int = 5_000
    min_chunk_seconds: int = 6
    low_credit_chunks: int = 2
    remember_ended: int = 100_000
    float_chunks: int = 50
    float_low_chunks: int = 10
    float_idle_ms: int = 10_000


@dataclass
class CallSession:
    """One call under charging control."""

    call_ref: str
    call_id: str
    account: str
    plan: str
    line: RateLine
    number: str
    caller: str
    origin: str
    offered_ms: int
    max_seconds: int
    ringing_ms: int | None = None
    answered_ms: int | None = None
    billable_ms: int | None = None
    paid_seconds: int = 0
    reserved: Decimal = ZERO
    final: bool = False  # the account could not cover another chunk
    ending: bool = False  # EndCall was emitted
    end_reason: str = ""
    timer_gen: int = 0
    settled_elsewhere: bool = False  # another node wrote its CDR (REASON_SETTLED)
    meta: dict[str, str] = field(default_factory=dict)
    cap_seconds: int = 0  # the longest the limits allow (duration, or cost) ...
    cap_reason: str = ""  # ... and what the call's end says when it reaches it
    #: An account whose currency differs from its deck's: the deck's line (``line`` is
    #: it converted to the account's currency) and the exchange rate used.
    deck_line: RateLine | None = None
    fx_rate: Decimal | None = None
    #: The free-minute bundle the call draws on (``bundles.py``), its usage row, and the
    #: bundle seconds held for it (``paid_seconds`` counts them too: it is the time the
    #: call may run).
    bundle: Bundle | None = None
    bundle_key: UsageKey | None = None
    bundle_held: int = 0
    #: Resellers above the account, nearest first (``tiers.py``): each pays its own price.
    uplines: list[Upline] = field(default_factory=list)

    @property
    def paid_until_ms(self) -> int | None:
        if self.billable_ms is None:
            return None
        return self.billable_ms + self.paid_seconds * 1000


#: A float holds what its reseller's calls on this node draw in this long (at least
#: ``float_chunks`` chunks): a busy reseller's float is topped up about as often as a
#: quiet one's.
FLOAT_SPAN_MS = 2_000


class _Immediate:
    """Synchronous store use: each command applied at once in its own transaction and
    its outcome handed straight back to the charger."""

    def __init__(self, executor: StoreExecutor, charger: Charger) -> None:
        self.executor = executor
        self.charger = charger

    def submit(self, cmd: StoreCommand) -> None:
        self.charger._on_batch(self.executor.execute([cmd]), cmd.now_ms)


class Charger:
    """The charging core for all calls of one sidecar.

    ``Charger(ledger, plans)``: synchronous, on a store that executes commands and reads
    accounts (``SqliteLedger``). ``Charger(port, plans, book=book)``: the live form;
    ``port.submit`` queues commands to a store edge and ``book`` is fed by it."""

    def __init__(self, store: StoreExecutor | StorePort, plans: Callable[[str], PlanRates],
                 config: ChargingConfig | None = None, *, book: AccountBook | None = None
                 ) -> None:
        self.plans = plans
        self.config = config or ChargingConfig()
        if book is None:
            assert hasattr(store, "execute") and hasattr(store, "account")
            self.book = AccountBook(source=store)  # type: ignore[arg-type]
            self.port: StorePort = _Immediate(store, self)  # type: ignore[arg-type]
        else:
            self.book = book
            self.port = store  # type: ignore[assignment]
        self.sessions: dict[str, CallSession] = {}
        self._by_account: dict[str, set[str]] = {}
        self._timers: list[tuple[int, int, str]] = []  # (deadline, generation, call_ref)
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._recharge_pending: set[str] = set()
        self._seq = 0
        self._inflight: dict[int, StoreCommand] = {}
        self._out: list[Action] = []
        #: This node's floats on resellers (``tiers.py``), by reseller; when :meth:`tick`
        #: next looks for idle ones.
        self.floats: dict[str, Float] = {}
        self._floats_due = 0
        # Prices of (line, seconds) already computed: chunk boundaries and common call
        # lengths repeat across calls. Keyed by id(line), the line kept to check identity.
        self._prices: dict[tuple[int, int], tuple[RateLine, Price]] = {}
        self._lines: dict[int, tuple[RateLine, dict[str, str]]] = {}
        self._caps: dict[tuple[int, Decimal], tuple[RateLine, int]] = {}
        #: A tier's price of a call: (line, tier, reseller, seconds, credit, the net
        #: price and currency of the tier below) -> its TierPrice.
        self._tier_kept: dict[tuple[Any, ...], tuple[RateLine, TierPrice]] = {}
        #: A tier's price of a chunk: (line, paid seconds, seconds) -> the difference.
        self._spans: dict[tuple[int, int, int], tuple[RateLine, Decimal]] = {}
        self._fits: dict[tuple[int, int], tuple[RateLine, Fit]] = {}
        #: False after the store failed to commit, until it commits again: new calls are
        #: refused (503) meanwhile.
        self.store_ok = True
        self.store_error = ""
        #: Usage limits and fraud rules (counters per account, in memory).
        self.guard = FraudGuard()
        self._eff: dict[str, tuple[list[Limits], Limits]] = {}
        self._eff_tree: dict[str, tuple[int, Limits, Limits, Limits]] = {}
        #: Least-cost routing (None, or no carriers: calls go where Kamailio sends them).
        self.router: Router | None = None
        #: Exchange rates: accounts whose currency differs from their deck's.
        self.fx = FxTable()
        #: Free-minute bundles (none: every call is paid in money).
        self.bundles = BundleBook()
        self._converted: dict[tuple[int, str, Decimal], tuple[RateLine, RateLine]] = {}

    # --- events --------------------------------------------------------------------
    def authorize(
        self,
        call_ref: str,
        *,
        number: str,
        now_ms: int,
        account_code: str = "",
        sip_user: str = "",
        src_ip: str = "",
        caller: str = "",
        call_id: str = "",
    ) -> AuthDecision:
        """Decide an INVITE: allow with a maximum duration, or reject with a SIP code
        (403 unknown/suspended account, 404 no rate, 402 no credit)."""
        existing = self.sessions.get(call_ref)
        if existing is not None:  # a retransmitted offer gets the same answer
            return AuthDecision(True, 200, "", existing.max_seconds, existing.account,
                                existing.line.destination, existing.line.prefix,
                                routes=self.router.routes_of(call_ref)
                                if self.router is not None else ())
        if call_ref in self._ended:
            return AuthDecision(False, 403, "call already ended")
        acc, how = self.book.resolve(account_code, sip_user, src_ip, now_ms)
        if acc is None:
            return self._reject(call_ref, call_id, None, 403, how, caller, number, now_ms)
        if not self.store_ok:  # nothing could be reserved or settled: fail closed
            return self._reject(call_ref, call_id, acc, 503,
                                f"store unavailable ({self.store_error})", caller, number,
                                now_ms)
        if acc.suspended:
            return self._reject(
                call_ref, call_id, acc, 403,
                f"account {acc.code} suspended: {acc.suspend_reason}".rstrip(": "),
                caller, number, now_ms, phrase="Account Suspended", limit="suspended")
        if acc.blocked:
            return self._reject(call_ref, call_id, acc, 403,
                                f"account {acc.code} blocked: {acc.blocked}", caller, number,
                                now_ms, phrase="Calls Blocked", limit="blocked")
        rates = self.plans(acc.plan)
        table = rates.table
        try:
            digits = normalize(number, table.number_plan)
            origin = origin_class(caller, table.number_plan) if table.uses_origins else ""
            line = table.lookup(digits, now_ms // 1000, origin)
            if line is None:
                raise NoRate(f"no rate for {digits} in plan {acc.plan}")
        except (NoRate, InvalidNumber) as exc:
            return self._reject(call_ref, call_id, acc, 404, str(exc), caller, number,
                                now_ms)
        deck_line: RateLine | None = None
        fx_rate: Decimal | None = None
        if line.currency != acc.currency:
            try:
                deck_line, fx_rate = line, self._fx_rate(line.currency, acc.currency, now_ms)
            except FxError as exc:
                return self._reject(call_ref, call_id, acc, 503,
                                    f"account {acc.code} pays in {acc.currency}, its plan "
                                    f"rates in {line.currency}: {exc}", caller, digits,
                                    now_ms, phrase="No Exchange Rate", limit="fx")
            line = self._in_currency(line, acc.currency, fx_rate)
        lim = self.limits_of(acc, now_ms)
        cap = acc.max_call_seconds
        cap_reason = _duration_reason(cap)
        if lim.explicit:
            refusal = self.guard.check(acc.code, lim, line, digits, now_ms)
            if refusal is not None:
                return self._reject(call_ref, call_id, acc, refusal.code, refusal.reason,
                                    caller, digits, now_ms, line, phrase=refusal.phrase,
                                    limit=refusal.limit)
            if lim.max_call_cost is not None:
                by_cost = self._cost_cap(line, lim.max_call_cost)
                if by_cost <= 0:
                    return self._reject(
                        call_ref, call_id, acc, 403,
                        f"{line.destination} costs more than the maximum call cost "
                        f"{lim.max_call_cost} at once", caller, digits, now_ms, line,
                        phrase="Call Cost Limit", limit="max_call_cost")
                if by_cost < cap:
                    cap = by_cost
                    cap_reason = _cost_reason(lim.max_call_cost)
        avail = acc.available()
        if cap > 0 and self._price(line, cap).cost <= avail:
            seconds = cap  # the longest call allowed is affordable: no search needed
        else:
            seconds = affordable_seconds(line, avail)
            if self.bundles.active:  # free seconds left in a bundle make it longer
                pick = self.bundles.pick(acc.code, acc.plan, line, digits, now_ms)
                if pick is not None:
                    seconds = max(seconds, affordable_with_bundle(line, pick.left, avail))
        if seconds <= 0:
            return self._reject(
                call_ref, call_id, acc, 402,
                f"account {acc.code} has no credit for {line.destination}",
                caller, digits, now_ms, line)
        uplines: list[Upline] = []
        if acc.parent is not None:  # resellers above: each pays its own price too
            uplines, stop = self._uplines(acc, digits, caller, now_ms)
            if stop is not None:
                code_, why, phrase = stop
                return self._reject(call_ref, call_id, acc, code_, why, caller, digits,
                                    now_ms, line, phrase=phrase, limit="reseller")
            available = self.book.available  # (no view built for a prepaid reseller)
            for u in uplines:
                avail_u = available(u.account, now_ms) or ZERO
                if cap > 0 and self._price(u.line, cap).cost <= avail_u:
                    continue
                s_u = affordable_seconds(u.line, avail_u)
                if s_u <= 0:
                    return self._reject(
                        call_ref, call_id, acc, 402,
                        f"reseller {u.account} (above account {acc.code}) has no credit "
                        f"for {u.line.destination}", caller, digits, now_ms, line,
                        limit="reseller")
                seconds = min(seconds, s_u)
        max_seconds = min(seconds, cap)
        routes: tuple[Any, ...] = ()
        router = self.router
        if router is not None and router.active:
            # Buy and sell are compared in the deck's currency.
            rl = router.route(digits, now_ms, deck_line or line, origin)
            if not rl.routes:
                rc = router.config
                return self._reject(call_ref, call_id, acc, rc.no_route_code, rl.reason,
                                    caller, digits, now_ms, line, phrase=rc.no_route_phrase,
                                    limit="no_route")
            routes = rl.routes
        if lim.explicit:
            trips = self.guard.started(acc.code, call_ref, lim, line, digits, now_ms)
            if trips:
                self._tripped(acc.code, lim, trips, now_ms)
                after = self.book.get(acc.code, now_ms)
                if after is not None and (after.suspended or after.blocked):
                    self.guard.ended(acc.code, call_ref, lim, False, 0, now_ms)
                    what = after.suspend_reason if after.suspended else after.blocked
                    return self._reject(
                        call_ref, call_id, acc, 403, f"account {acc.code}: {what}", caller,
                        digits, now_ms, line,
                        phrase="Account Suspended" if after.suspended else "Calls Blocked",
                        limit="suspended" if after.suspended else "blocked")
        self.sessions[call_ref] = CallSession(
            call_ref, call_id or call_ref, acc.code, acc.plan, line, digits, caller, origin,
            now_ms, max_seconds, cap_seconds=cap, cap_reason=cap_reason, deck_line=deck_line,
            fx_rate=fx_rate, uplines=uplines)
        if routes:
            assert router is not None
            router.started(call_ref, routes, now_ms)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("authorized %s account=%s via %s dest=%s max=%ss", call_ref, acc.code,
                      how, line.destination, max_seconds,
                      extra={"call": call_ref, "account": acc.code, "decision": "allow",
                             "code": 200})
        return AuthDecision(True, 200, "", max_seconds, acc.code, line.destination, line.prefix,
                            routes=routes)

    def _uplines(self, acc: Account, digits: str, caller: str, now_ms: int
                 ) -> tuple[list[Upline], tuple[int, str, str] | None]:
        """The resellers above ``acc``, nearest first, each with its rate line for the
        call (converted to its currency if its plan rates in another); or why the call
        cannot be carried: (SIP code, reason, phrase)."""
        out: list[Upline] = []
        seen = {acc.code}
        parent = acc.parent
        peek = self.book.peek
        while parent and parent not in seen and len(seen) < 8:
            seen.add(parent)
            up = peek(parent)
            if up is None:
                break
            if up.reseller:
                if up.suspended or up.blocked:
                    why = up.suspend_reason if up.suspended else up.blocked
                    return [], (403, f"reseller {up.code} (above account {acc.code}) "
                                     f"{'suspended' if up.suspended else 'blocked'}: {why}",
                                "Account Suspended" if up.suspended else "Calls Blocked")
                table = self.plans(up.plan).table
                origin = origin_class(caller, table.number_plan) if table.uses_origins else ""
                line = table.lookup(digits, now_ms // 1000, origin)
                if line is None:
                    return [], (404, f"reseller {up.code} (above account {acc.code}): no rate "
                                     f"for {digits} in plan {up.plan}", "")
                fx_rate: Decimal | None = None
                if line.currency != up.currency:
                    try:
                        fx_rate = self._fx_rate(line.currency, up.currency, now_ms)
                    except FxError as exc:
                        return [], (503, f"reseller {up.code}: {exc}", "No Exchange Rate")
                    line = self._in_currency(line, up.currency, fx_rate)
                out.append(Upline(up.code, up.plan, line, fx_rate=fx_rate))
            parent = up.parent
        return out, None

    def limits_of(self, acc: Account, now_ms: int) -> Limits:
        """The account's effective limits: its own, else its parents', else its plan's."""
        plan = self.plans(acc.plan).limits
        if acc.parent is None and not acc.limits.explicit:
            return plan
        book = self.book
        if book.source is None:  # derived from the tree: kept until the tree changes
            kept = self._eff_tree.get(acc.code)
            if kept is not None and kept[0] == book.tree_version and kept[1] is acc.limits \
                    and kept[2] is plan:
                return kept[3]
        chain = [acc.limits]
        seen = {acc.code}
        parent = acc.parent
        peek = self.book.peek
        while parent and parent not in seen and len(chain) < 8:
            up = peek(parent)
            if up is None:
                break
            chain.append(up.limits)
            seen.add(parent)
            parent = up.parent
        chain.append(plan)
        hit = self._eff.get(acc.code)
        if hit is not None and len(hit[0]) == len(chain) and all(
                a is b for a, b in zip(hit[0], chain, strict=True)):
            eff = hit[1]
        else:
            eff = effective(chain)[0]
            self._eff[acc.code] = (chain, eff)
        self._eff_tree[acc.code] = (book.tree_version, acc.limits, plan, eff)
        return eff

    def _tripped(self, code: str, lim: Limits, trips: Sequence[Trip], now_ms: int) -> None:
        """Fraud rules tripped on an account: alert, store the event with its evidence,
        and block new calls or suspend the account (ending its live calls at once)."""
        for trip in trips:
            acc = self.book.get(code, now_ms)
            if acc is None:
                return
            reason = f"{FRAUD_PREFIX}{trip.rule}: {trip.summary}"
            action = trip.action
            if (action == "suspend" and acc.suspended) or (action == "block" and (
                    acc.blocked or acc.suspended)):
                continue  # the account is stopped already: nothing new to do
            log.warning("account %s: %s -> %s", code, reason, action,
                        extra={"account": code, "decision": "fraud",
                               "reason": f"{reason} ({action})"})
            self._out.append(Alert("fraud", code, f"account {code}: {reason} ({action})",
                                   now_ms, {"rule": trip.rule, "action": action}))
            seq = self._next_seq()
            effect = (Effect(suspend_reason=reason) if action == "suspend" else
                      Effect(block_reason=reason) if action == "block" else NO_EFFECT)
            self.book.apply(seq, code, effect)
            self._submit(Flag(seq, code, trip.rule, action, reason,
                              json.dumps(trip.evidence, default=str, sort_keys=True),
                              f"fraud-{code}-{trip.rule}-{now_ms}-{seq}", now_ms))
            if action == "suspend":
                for s in list(self.sessions.values()):
                    if s.account == code and not s.ending:
                        s.ending = True
                        s.end_reason = f"account suspended: {reason}"
                        s.timer_gen += 1
                        self._out.append(EndCall(s.call_ref, s.end_reason, now_ms))

    def ringing(self, call_ref: str, now_ms: int) -> None:
        """The first provisional reply (18x): the end of the post-dial delay."""
        s = self.sessions.get(call_ref)
        if s is not None and s.ringing_ms is None and s.answered_ms is None:
            s.ringing_ms = now_ms

    def attempt(self, call_ref: str, now_ms: int, code: int, carrier: str) -> list[Action]:
        """A carrier of the call's route list refused it with ``code`` (408: no answer in
        time); Kamailio tries the next one on a 408 or a 5xx. Counted for route health."""
        s = self.sessions.get(call_ref)
        if self.router is None or s is None or s.answered_ms is not None:
            return []
        self.router.attempt(call_ref, carrier, code, now_ms)
        if s.ringing_ms is not None and (code == 408 or 500 <= code <= 599):
            s.ringing_ms = None  # the next carrier's ringing is the call's post-dial delay
        return self._take()

    def answer(self, call_ref: str, now_ms: int, billable_ms: int | None = None,
               route: str = "") -> list[Action]:
        """The call was answered at ``now_ms``; billing starts at ``billable_ms``
        (default: the answer). Reserves the first chunk."""
        s = self.sessions.get(call_ref)
        if s is None or s.answered_ms is not None:
            return []  # unknown, ended, or a duplicate answer
        if route:
            s.meta["route"] = route
        s.answered_ms = now_ms
        s.billable_ms = billable_ms if billable_ms is not None else now_ms
        self._by_account.setdefault(s.account, set()).add(call_ref)
        if s.ending:  # its account was suspended by a fraud rule while it rang
            self._out.append(EndCall(call_ref, s.end_reason, now_ms))
            return self._take()
        self._reserve_next(s, now_ms, self._out)
        return self._take()

    def tick(self, now_ms: int) -> list[Action]:
        """Time advanced to ``now_ms``: reserve chunks that are due, end calls whose paid
        time is over."""
        actions = self._out
        timers = self._timers
        while timers and timers[0][0] <= now_ms:
            _deadline, gen, ref = heapq.heappop(timers)
            s = self.sessions.get(ref)
            if s is None or gen != s.timer_gen or s.ending:
                continue
            paid_until = s.paid_until_ms
            assert paid_until is not None
            if not s.final and now_ms < paid_until:
                self._reserve_next(s, now_ms, actions)
            elif now_ms >= paid_until:
                s.ending = True
                s.end_reason = self._paid_end(s)
                actions.append(EndCall(ref, s.end_reason, now_ms))
                if log.isEnabledFor(logging.INFO):
                    log.info("ending %s: %s after %s paid seconds", ref, s.end_reason,
                             s.paid_seconds, extra={"call": ref, "account": s.account,
                                                    "decision": "end", "reason": s.end_reason})
            else:
                self._schedule(s, paid_until)
        router = self.router
        if router is not None:
            due = router.next_deadline()
            if due is not None and due <= now_ms:
                self._health(router.tick(now_ms))
        if self.floats and now_ms >= self._floats_due:
            idle = self.config.float_idle_ms
            self.release_floats(now_ms, idle)
            self._floats_due = now_ms + idle // 2
        return self._take()

    def knows(self, call_ref: str) -> bool:
        """True if the call is running here or was settled recently."""
        return call_ref in self.sessions or call_ref in self._ended

    def next_deadline(self) -> int | None:
        """When :meth:`tick` next has something to do (ms), or None."""
        timers = self._timers
        due = self.router.next_deadline() if self.router is not None else None
        if self.floats and any(f.free > ZERO for f in self.floats.values()):
            due = self._floats_due if due is None else min(due, self._floats_due)
        while timers:
            deadline, gen, ref = timers[0]
            s = self.sessions.get(ref)
            if s is not None and gen == s.timer_gen and not s.ending:
                return deadline if due is None else min(deadline, due)
            heapq.heappop(timers)
        return due

    def adopt(self, call_ref: str, *, account: str, number: str, caller: str, now_ms: int,
              answered_ms: int | None, paid_seconds: int = 0, reserved: Decimal = ZERO,
              call_id: str = "", supervise: bool = True, bundle: str = "",
              bundle_period: int | None = None, bundle_held: int = 0,
              tier_holds: dict[str, Decimal] | None = None,
              tier_draws: dict[str, Decimal] | None = None) -> list[Action]:
        """Take charge of a call this process did not see start (after a restart or a lost
        connection): from its store record (paid seconds and holds) or from Kamailio's
        dialog list. Billing resumes where the record says; credit control resumes now
        (unless ``supervise`` is False: the call is only being settled)."""
        if call_ref in self.sessions:
            return []
        acc = self.book.get(account, now_ms)
        if acc is None:
            log.error("cannot adopt %s: account %s not found", call_ref, account)
            return []
        table = self.plans(acc.plan).table
        try:
            digits = normalize(number, table.number_plan)
        except InvalidNumber:
            log.error("cannot adopt %s: bad number %r", call_ref, number)
            return []
        origin = origin_class(caller, table.number_plan) if table.uses_origins else ""
        at = (answered_ms or now_ms) // 1000
        line = table.lookup(digits, at, origin)
        if line is None:
            log.error("cannot adopt %s: no rate for %s", call_ref, digits)
            return []
        deck_line: RateLine | None = None
        fx_rate: Decimal | None = None
        if line.currency != acc.currency:
            try:
                fx_rate = self._fx_rate(line.currency, acc.currency, answered_ms or now_ms)
            except FxError as exc:
                log.error("cannot adopt %s: %s", call_ref, exc)
                return []
            deck_line, line = line, self._in_currency(line, acc.currency, fx_rate)
        s = CallSession(call_ref, call_id or call_ref, acc.code, acc.plan, line, digits, caller,
                        origin, answered_ms or now_ms, acc.max_call_seconds,
                        paid_seconds=paid_seconds, reserved=reserved, deck_line=deck_line,
                        fx_rate=fx_rate)
        if acc.parent is not None:  # its resellers, with what its record holds on them
            ups, stop = self._uplines(acc, digits, caller, answered_ms or now_ms)
            if stop is not None:
                log.error("adopted %s: %s; its resellers are charged what was held",
                          call_ref, stop[1])
            for u in ups:
                u.reserved = (tier_holds or {}).get(u.account, ZERO)
                u.drawn = (tier_draws or {}).get(u.account, ZERO)
                f = self.floats.get(u.account)
                if f is not None and u.drawn:  # its draws are not free in the float
                    f.free = max(f.free - u.drawn, ZERO)
            s.uplines = ups
        if bundle and bundle_period is not None:  # the bundle seconds its record holds
            s.bundle_key = (acc.code, bundle, bundle_period)
            s.bundle_held = bundle_held
            s.bundle = next((b for b in self.bundles.of(acc.code, acc.plan)
                             if b.name == bundle), None)  # None: removed; draws no more
        self.sessions[call_ref] = s
        self.guard.adopt(acc.code, call_ref)
        log.info("adopted %s account=%s paid=%ss answered=%s", call_ref, acc.code, paid_seconds,
                 answered_ms, extra={"call": call_ref, "account": acc.code})
        if answered_ms is None:
            return []
        s.answered_ms = s.billable_ms = answered_ms
        if not supervise:  # to be settled, or resumed once Kamailio confirms it is up
            return []
        return self.resume(call_ref, now_ms)

    def resume(self, call_ref: str, now_ms: int) -> list[Action]:
        """Credit control of an adopted, answered call starts (again) now: the next chunk
        is reserved when its paid time runs low."""
        s = self.sessions.get(call_ref)
        if s is None or s.billable_ms is None or s.ending:
            return []
        live = self._by_account.setdefault(s.account, set())
        if call_ref in live:
            return []
        live.add(call_ref)
        paid_until = s.paid_until_ms
        assert paid_until is not None
        if paid_until - self.config.renew_lead_ms > now_ms:
            self._schedule(s, paid_until - self.config.renew_lead_ms)
        else:
            self._reserve_next(s, now_ms, self._out)
        return self._take()

    def stop(self, call_ref: str, reason: str, now_ms: int) -> list[Action]:
        """End a call for a reason other than credit (e.g. no media): an EndCall for the
        edge, and the reason kept for the CDR."""
        s = self.sessions.get(call_ref)
        if s is None or s.ending:
            return []
        s.ending = True
        s.end_reason = reason
        s.timer_gen += 1
        if log.isEnabledFor(logging.INFO):
            log.info("ending %s: %s", call_ref, reason, extra={
                "call": call_ref, "account": s.account, "decision": "end", "reason": reason})
        self._out.append(EndCall(call_ref, reason, now_ms))
        return self._take()

    def rebase(self, call_ref: str, billable_ms: int, now_ms: int) -> list[Action]:
        """Media confirmed the answer late: billing starts at ``billable_ms`` instead, so
        the paid time (and the credit cut-off) moves with it."""
        s = self.sessions.get(call_ref)
        if s is None or s.billable_ms is None or s.ending or billable_ms <= s.billable_ms:
            return []
        s.billable_ms = billable_ms
        paid_until = s.paid_until_ms
        assert paid_until is not None
        if s.final:
            self._schedule(s, paid_until)
        elif paid_until - self.config.renew_lead_ms > now_ms:
            self._schedule(s, paid_until - self.config.renew_lead_ms)
        else:
            self._reserve_next(s, now_ms, self._out)
        return self._take()

    def end(self, call_ref: str, now_ms: int, *, ended_by: str = "", reason: str = "",
            sip_code: int | None = None, lost: bool = False, route: str = "",
            media: MediaOutcome | None = None) -> list[Action]:
        """The dialog ended (BYE, timeout, failure). Settles the call once.

        ``lost``: the end itself was not seen (the call vanished while the sidecar was
        disconnected): it is billed at most up to its paid time. ``media``: what media
        supervision found (billing start, FAS verdict); None bills from the answer."""
        s = self.sessions.pop(call_ref, None)
        if s is None:
            return []  # duplicate or unknown: never charged twice
        self._forget(s)
        reprice: Callable[[int], None] | None = None
        if route:
            s.meta["route"] = route
        if media is not None and s.answered_ms is not None and media.billable_ms is None:
            # Answered without media: FAS, nothing is billed.
            cdr = self._cdr(s, Disposition.NO_MEDIA, now_ms)
            cdr.sip_code = 200
            cdr.billable_ms = None
            self._media(cdr, media)
        elif s.answered_ms is None:
            cdr = self._cdr(s, Disposition.FAILED, now_ms)
            cdr.sip_code = sip_code
            if media is not None:
                self._media(cdr, media)
        else:
            assert s.billable_ms is not None
            if media is not None and media.billable_ms is not None:
                s.billable_ms = max(s.answered_ms, media.billable_ms)
            duration = max(0, now_ms - s.billable_ms)
            if lost or (s.ending and (s.end_reason in (REASON_CREDIT, REASON_SETTLED) or (
                    s.cap_reason and s.end_reason == s.cap_reason))):
                # The sidecar cut the call at the paid time; the BYE's latency is ours.
                duration = min(duration, s.paid_seconds * 1000)
            rates = self.plans(s.plan)
            secs = rates.table.rounding_seconds(duration)
            cdr = self._cdr(s, Disposition.ANSWERED, now_ms)
            if s.bundle_key is not None:  # bundle seconds first, the rest paid
                sp = split(s.line, secs, s.bundle_held)
                p = sp.price
                cdr.billed_seconds = sp.billed_seconds
                cdr.bundle_seconds = sp.bundle_seconds
                reprice = functools.partial(_rebundle, cdr, s.line, s.deck_line, secs)
            else:
                p = self._price(s.line, secs)
                cdr.billed_seconds = p.billed_seconds
            cdr.sip_code = sip_code if sip_code is not None else 200
            cdr.duration_ms = duration
            cdr.usage, cdr.connection_fee = p.usage, p.connection_fee
            cdr.surcharge, cdr.minimum_uplift, cdr.cost = p.surcharge, p.minimum_uplift, p.cost
            if media is not None:
                self._media(cdr, media)
                if media.credit:
                    cdr.credited = cdr.cost  # the ledger credits what it charged
                    cdr.bundle_seconds = 0  # and the bundle gets its seconds back
        if s.answered_ms is not None:
            cdr.signalled_ms = max(0, now_ms - s.answered_ms)
        if s.bundle_key is not None:
            cdr.bundle, cdr.bundle_period = s.bundle_key[1], s.bundle_key[2]
        if s.deck_line is not None:  # rated in another currency: the deck's price too
            cdr.deck_currency = s.deck_line.currency
            cdr.fx_rate = str(s.fx_rate)
            cdr.deck_cost = (ZERO if not cdr.billed_seconds else
                             split(s.deck_line, cdr.billed_seconds, s.bundle_held).cost
                             if s.bundle_key is not None else
                             self._price(s.deck_line, cdr.billed_seconds).cost)
        cdr.ended_by = ended_by
        cdr.end_reason = s.end_reason or reason
        if self.router is not None:
            self._routed(s, cdr, now_ms)
        tiers: tuple[TierPrice, ...] = ()
        if s.uplines:
            tiers = self._tier_prices(s, cdr, media is not None and media.credit)
        self._settle(cdr, now_ms, s.reserved, s.bundle_held, reprice, tiers,
                     {u.account: u.reserved for u in s.uplines} if s.uplines else None)
        acc = self.book.get(s.account, now_ms)
        if acc is not None:
            lim = self.limits_of(acc, now_ms)
            if lim.explicit:
                trips = self.guard.ended(s.account, call_ref, lim,
                                         cdr.disposition is Disposition.ANSWERED,
                                         cdr.duration_ms, now_ms)
                if trips:
                    self._tripped(s.account, lim, trips, now_ms)
        return self._take()

    def fail(self, call_ref: str, now_ms: int, code: int, reason: str = "", route: str = "",
             media: MediaOutcome | None = None) -> list[Action]:
        """The INVITE failed (final negative reply or CANCEL): a zero-cost CDR."""
        return self.end(call_ref, now_ms, ended_by="", reason=reason or "failed", sip_code=code,
                        route=route, media=media)

    def _fx_rate(self, deck: str, account: str, now_ms: int) -> Decimal:
        """Account currency per deck currency in force at ``now_ms`` (:class:`FxError`)."""
        return self.fx.rate(deck, account, _utc(now_ms))[0]

    def _in_currency(self, line: RateLine, currency: str, rate: Decimal) -> RateLine:
        """``line`` with its amounts in ``currency`` at ``rate``: each multiplied exactly
        (no rounding here); a price on it is then rounded once, per component, as every
        price is. Kept per line and rate: the charger's price caches go by line."""
        key = (id(line), currency, rate)
        hit = self._converted.get(key)
        if hit is not None and hit[0] is line:
            return hit[1]
        if len(self._converted) > 100_000:
            self._converted.clear()
        conv = dataclasses.replace(
            line, rate=line.rate * rate, currency=currency,
            connection_fee=line.connection_fee * rate,
            minimum_charge=line.minimum_charge * rate,
            short_call_surcharge=line.short_call_surcharge * rate)
        self._converted[key] = (line, conv)
        return conv

    def _routed(self, s: CallSession, cdr: Cdr, now_ms: int) -> None:
        """A call the router sent to carriers: what the carrier that took it charges
        (its buy line, from its 200 OK to the end, by its deck's rounding) and the margin
        on the CDR; the try counted for the carrier's health."""
        router = self.router
        assert router is not None
        carrier = cdr.route
        got = router.line_of(s.call_ref, carrier, s.number, s.offered_ms, s.origin) \
            if carrier else None
        if got is not None:
            line, table = got
            buy = ZERO
            if s.answered_ms is not None:
                buy = self._price(line, table.rounding_seconds(
                    max(0, now_ms - s.answered_ms))).cost
            cdr.buy_cost = buy
            cdr.margin = cdr.cost - cdr.credited - buy
        router.finished(s.call_ref, carrier, offered_ms=s.offered_ms,
                        ringing_ms=s.ringing_ms, answered_ms=s.answered_ms, ended_ms=now_ms,
                        fas_verdict=cdr.fas_verdict)

    def health_events(self, events: Sequence[HealthEvent]) -> list[Action]:
        """Route health pulled or restored carriers: each event stored (with its
        evidence) and told to the operator (an alert)."""
        self._health(events)
        return self._take()

    def _health(self, events: Sequence[HealthEvent]) -> None:
        for ev in events:
            what = (f"carrier {ev.carrier} pulled from the routes: {ev.reason}"
                    if ev.kind.value == "pulled" else
                    f"carrier {ev.carrier} back in the routes: {ev.reason}")
            log.warning("%s", what, extra={"decision": "route_" + ev.kind.value,
                                           "reason": ev.reason})
            self._out.append(Alert("route_" + ev.kind.value, "", what, ev.at_ms,
                                   {"carrier": ev.carrier, "actor": ev.actor}))
            self._submit(CarrierHealth(
                self._next_seq(), ev.carrier, ev.kind.value, ev.actor, ev.reason,
                json.dumps(ev.evidence, default=str, sort_keys=True), ev.until_ms, ev.at_ms))

    @staticmethod
    def _media(cdr: Cdr, media: MediaOutcome) -> None:
        cdr.fas_verdict, cdr.fas_reasons = media.verdict, media.reasons
        cdr.media_ms, cdr.media = media.media_ms, media.evidence

    # --- internals -----------------------------------------------------------------
    def _reject(self, call_ref: str, call_id: str, acc: Account | None, code: int, why: str,
                caller: str, number: str, now_ms: int,
                line: RateLine | None = None, *, phrase: str = "", limit: str = ""
                ) -> AuthDecision:
        if log.isEnabledFor(logging.INFO):
            log.info("rejected %s with %s: %s", call_ref, code, why, extra={
                "call": call_ref, "account": acc.code if acc else None, "decision": "reject",
                "code": code, "reason": why})
        cdr = Cdr(call_ref, call_id or call_ref, Disposition.REJECTED,
                  account=acc.code if acc else None, plan=acc.plan if acc else None,
                  caller=caller, callee=number, currency=acc.currency if acc else "",
                  offered_ms=now_ms, ended_ms=now_ms, sip_code=code, end_reason=why)
        if line is not None:
            cdr.destination, cdr.prefix, cdr.rate = line.destination, line.prefix, line.rate
            cdr.increment = str(line.increment)
        self._settle(cdr, now_ms, ZERO)
        return AuthDecision(False, code, why, 0, acc.code if acc else None, phrase=phrase,
                            limit=limit)

    def _cdr(self, s: CallSession, disposition: Disposition, now_ms: int) -> Cdr:
        # Cdr(...) with these fields and the others' defaults, as its __init__ would build
        # it (every call ends here: the 45 fields' init costs twice this).
        line = s.line
        cdr = _new(Cdr)
        cdr.__dict__ = {
            **_CDR_DEFAULTS, "call_ref": s.call_ref, "call_id": s.call_id,
            "disposition": disposition, "account": s.account, "plan": s.plan,
            "caller": s.caller, "callee": s.number, "destination": line.destination,
            "prefix": line.prefix, "origin": s.origin, "rate": line.rate,
            "increment": self._line_fields(line)["increment"], "currency": line.currency,
            "offered_ms": s.offered_ms, "ringing_ms": s.ringing_ms,
            "answered_ms": s.answered_ms, "billable_ms": s.billable_ms, "ended_ms": now_ms,
            "route": s.meta.get("route", "")}
        return cdr

    def _tier_prices(self, s: CallSession, cdr: Cdr, credit: bool
                     ) -> tuple[TierPrice, ...]:
        """The call's price at every reseller above its account, for the store to charge
        and put on the CDR. Each tier rates the billable duration on its own plan; a FAS
        credit gives every tier its money back; a tier's margin is what the tier below
        pays less what it pays (None across currencies). A call never answered has none
        (nothing was held on its resellers)."""
        if cdr.disposition is Disposition.FAILED or cdr.disposition is Disposition.REJECTED:
            return ()
        answered = cdr.disposition is Disposition.ANSWERED
        below_net, below_ccy = cdr.cost - cdr.credited, cdr.currency
        out: list[TierPrice] = []
        kept = self._tier_kept
        for i, u in enumerate(s.uplines, 1):
            ul = u.line
            secs = self.plans(u.plan).table.rounding_seconds(cdr.duration_ms) \
                if answered else -1
            key = (id(ul), i, u.account, secs, credit, below_net, below_ccy)
            hit = kept.get(key)  # calls of one length on one line: the same prices
            if hit is not None and hit[0] is ul:
                t = hit[1]
            else:
                p = self._price(ul, secs) if answered else _NO_PRICE
                credited = p.cost if credit else ZERO
                net = p.cost - credited
                t = _remember(kept, key, ul, TierPrice(
                    i, u.account, u.plan, ul.currency, ul.destination, ul.prefix, ul.rate,
                    self._line_fields(ul)["increment"], p.billed_seconds, p.usage,
                    p.connection_fee, p.surcharge,
                    p.minimum_uplift, p.cost, credited,
                    below_net - net if ul.currency == below_ccy else None))
            out.append(t)
            below_net, below_ccy = t.cost - t.credited, ul.currency
        return tuple(out)

    def _settle(self, cdr: Cdr, now_ms: int, held: Decimal, bundle_held: int = 0,
                reprice: Callable[[int], None] | None = None,
                tiers: tuple[TierPrice, ...] = (),
                tier_held: dict[str, Decimal] | None = None) -> None:
        """Send the CDR to the store; the account's view moves as the store will move it
        (and its bundle's: the seconds held for the call and not used go back)."""
        self._remember_ended(cdr.call_ref)
        seq = self._next_seq()
        if cdr.bundle and cdr.account and cdr.bundle_period is not None:
            self.bundles.apply(seq, (cdr.account, cdr.bundle, cdr.bundle_period),
                               cdr.bundle_seconds - bundle_held)
        acc = self.book.get(cdr.account, now_ms) if cdr.account else None
        if acc is None:
            self._submit(Settle(seq, cdr, now_ms, None, reprice, tiers))
            return
        amounts = settle_amounts(acc, held, cdr.cost, cdr.credited)
        self.book.apply(seq, acc.code, amounts.effect, view_after=False)
        book = self.book
        for t in tiers:
            t_held = (tier_held or {}).get(t.account, ZERO)
            if not t_held:  # drawn from a float only: the view catches up at the commit
                continue  # (its balance is lower until then: what it gets back is not in)
            bal = book.prepaid_balance(t.account)  # (no view built for it)
            if bal is not None:
                effect = settle_prepaid(bal, t_held, t.cost, t.credited).effect
            else:
                up = book.get(t.account, now_ms)
                if up is None:
                    continue
                effect = settle_amounts(up, t_held, t.cost, t.credited).effect
            book.apply(seq, t.account, effect, view_after=False)
        self._submit(Settle(seq, cdr, now_ms, None, reprice, tiers))
        if held or amounts.charged:
            # Spend velocity: the reservations counted already; now what they missed
            # (or gave back).
            self._spent(acc, amounts.charged - amounts.credited - held, now_ms)

    def _spent(self, acc: Account, amount: Decimal, now_ms: int) -> None:
        lim = self.limits_of(acc, now_ms)
        if lim.spend_per_minute is None and lim.spend_per_hour is None:
            return
        trips = self.guard.spent(acc.code, lim, amount, now_ms)
        if trips:
            self._tripped(acc.code, lim, trips, now_ms)

    def _on_settled(self, cmd: Settle, o: Outcome, actions: list[Action]) -> None:
        cdr = cmd.cdr
        if not o.ok:
            if o.journaled:
                log.warning("call %s: store unavailable, settlement kept in the journal",
                            cdr.call_ref)
            else:
                log.error("call %s: settlement NOT recorded: %s", cdr.call_ref, o.error)
            return
        res = o.settlement
        if res is None or res.duplicate:
            return
        actions.append(CdrWritten(cdr))
        if cdr.written_off:
            log.warning("call %s: %s written off (account %s could not cover it)",
                        cdr.call_ref, cdr.written_off, cdr.account,
                        extra={"call": cdr.call_ref, "account": cdr.account, "decision": "cdr",
                               "reason": f"{cdr.written_off} written off"})
        if res.before is not None and res.after is not None:
            self._thresholds(res.before, res.after, cmd.now_ms, actions)
            if res.suspended_now:
                actions.append(Alert("suspended", res.after.code,
                                     f"account {res.after.code} suspended: "
                                     f"{res.after.suspend_reason}", cmd.now_ms))

    def _remember_ended(self, call_ref: str) -> None:
        self._ended[call_ref] = None
        if len(self._ended) > self.config.remember_ended:
            self._ended.popitem(last=False)

    def _forget(self, s: CallSession) -> None:
        s.timer_gen += 1
        refs = self._by_account.get(s.account)
        if refs is not None:
            refs.discard(s.call_ref)
            if not refs:
                del self._by_account[s.account]

    def _schedule(self, s: CallSession, deadline: int) -> None:
        s.timer_gen += 1
        heapq.heappush(self._timers, (deadline, s.timer_gen, s.call_ref))

    @staticmethod
    def _paid_end(s: CallSession) -> str:
        """Why a call ends at its paid time: another node billed it, it reached its
        limit (duration or cost), or credit ran out."""
        if s.settled_elsewhere:
            return REASON_SETTLED
        if s.cap_reason and s.cap_seconds and s.paid_seconds >= s.cap_seconds:
            return s.cap_reason
        return REASON_CREDIT

    def _chunk_seconds(self, s: CallSession, acc: Account | None) -> int:
        base = (acc.chunk_seconds if acc and acc.chunk_seconds else None) or \
            self.plans(s.plan).chunk_seconds
        if acc is None:
            return base
        live = len(self._by_account.get(s.account, ()))
        # available < rate * base / 60 * chunks * live, without the division's 28 digits
        need = s.line.rate * (base * self.config.low_credit_chunks * max(live, 1))
        if acc.available() * 60 < need:
            if (s.bundle is not None and s.bundle_key is not None
                    and s.paid_seconds <= s.bundle_held and self.bundles.left(
                        s.bundle, s.bundle_key) >= base * self.config.low_credit_chunks
                    * max(live, 1)):
                return base  # its bundle has seconds enough for every call's turns
            return max(self.config.min_chunk_seconds, s.line.increment.next, 1)
        return base

    def _reserve_next(self, s: CallSession, now_ms: int, actions: list[Action]) -> None:
        """Reserve chunks until the paid time reaches past the renewal lead, or credit ends.

        Decided from the account's view; the store applies the same rule to its own
        state and answers through :meth:`on_results`."""
        assert s.billable_ms is not None
        line = s.line
        while True:
            acc = self.book.get(s.account, now_ms)
            paid = s.paid_seconds
            if paid == 0 and s.bundle_key is None and self.bundles.active:
                pick = self.bundles.pick(s.account, s.plan, line, s.number, s.billable_ms)
                if pick is not None:  # the call draws on this bundle to its end
                    s.bundle, s.bundle_key = pick.bundle, pick.key
            chunk = self._chunk_seconds(s, acc)
            target = line.increment.billed(paid + chunk)
            if s.cap_seconds and target > s.cap_seconds >= paid:
                target = s.cap_seconds  # never pay beyond what the limits allow
            draw: BundleDraw | None = None
            fit: Fit
            cost_to: CostTo | None = None
            if s.bundle_key is not None:
                want, fit, cost_to, draw = self._bundle_terms(s, paid, target)
            else:
                base = self._price(line, paid).cost if paid else ZERO
                want = self._price(line, target).cost - base
                fit = self._fit(line, paid, base)
            chain: tuple[ChainPart, ...] = ()
            draws: tuple[tuple[str, Decimal], ...] = ()
            if acc is None:  # the account is gone: nothing more can be reserved
                granted, seconds = ZERO, paid
            elif s.uplines:  # every tier covers the same seconds (tiers.py)
                drawn = self._float_grant(s, acc, want, fit, target, paid, now_ms) \
                    if self.config.float_chunks else None
                if drawn is not None:
                    granted, seconds, draws = drawn
                else:
                    if cost_to is None:
                        cost_to = _cost_to(line, base)
                    granted, seconds, chain = self._chain_grant(
                        s, acc, want, fit, cost_to, target, paid, now_ms)
            else:
                granted, seconds = grant(acc, want, target, fit, paid)
            if granted > 0 or seconds > paid:  # seconds for nothing: a free destination
                seq = self._next_seq()
                after = self.book.apply(seq, s.account, reserve_effect(granted))
                live = {"number": s.number, **self._line_fields(line),
                        "answered_ms": s.billable_ms}
                s.paid_seconds = seconds
                s.reserved += granted
                if draw is not None:
                    self.bundles.apply(seq, draw.key, draw.seconds)
                    s.bundle_held += draw.seconds
                for u, part in zip(s.uplines, chain, strict=False):
                    self.book.apply(seq, u.account, reserve_effect(part.amount),
                                    view_after=False)
                    u.reserved += part.amount
                self._submit(Reserve(seq, s.account, s.call_ref, granted, seconds, paid, fit,
                                     live, now_ms, draw, chain, cost_to, draws))
                if acc is not None and after is not None and granted:
                    self._thresholds(acc, after, now_ms, actions)
                    self._spent(after, granted, now_ms)
            if seconds < target:
                s.final = True
            paid_until = s.paid_until_ms
            assert paid_until is not None
            if s.final or s.paid_seconds >= s.max_seconds:
                s.final = True
                if paid_until <= now_ms:
                    s.ending = True
                    s.end_reason = self._paid_end(s)
                    actions.append(EndCall(s.call_ref, s.end_reason, now_ms))
                    if log.isEnabledFor(logging.INFO):
                        log.info("ending %s at once: %s", s.call_ref, s.end_reason, extra={
                            "call": s.call_ref, "account": s.account, "decision": "end",
                            "reason": s.end_reason})
                else:
                    self._schedule(s, paid_until)
                return
            lead = min(self.config.renew_lead_ms, chunk * 500)
            renew_at = paid_until - lead
            if renew_at > now_ms:
                self._schedule(s, renew_at)
                return
            if s.ending:  # the store's answer (in synchronous use) ended it meanwhile
                return

    def _float_grant(self, s: CallSession, acc: Account, want: Decimal, fit: Fit,
                     target: int, paid: int, now_ms: int
                     ) -> tuple[Decimal, int, tuple[tuple[str, Decimal], ...]] | None:
        """A chunk of a call below resellers drawn from this node's floats on them: (what
        the account grants, the seconds, each tier's draw); None when a float cannot
        cover its tier's part (the per-call path then takes the chunk). Tops up floats
        running low, and gives back the remainder of one that cannot be topped up."""
        granted, seconds = grant(acc, want, target, fit, paid)
        floats = self.floats
        price = self._price
        ups = s.uplines
        amounts = []
        short = False
        spans = self._spans
        for u in ups:
            ul = u.line
            hit = spans.get((id(ul), paid, seconds))
            if hit is not None and hit[0] is ul:
                a = hit[1]
            else:
                a = price(ul, seconds).cost - price(ul, paid).cost if paid else \
                    price(ul, seconds).cost
                _remember(spans, (id(ul), paid, seconds), ul, a)
            amounts.append(a)
            f = floats.get(u.account)
            if f is None:
                f = floats[u.account] = Float(used_ms=now_ms, since_ms=now_ms)
            f.drawn += a  # (what its calls ask of it, drawn from it or not)
            free = f.free
            if free < a:
                self._float_more(u.account, f, a, now_ms, give_back=not f.asking)
                if f.free < a:  # (topped up, it is counted at once: it covers the chunk)
                    short = True
            elif free < f.low:
                self._float_more(u.account, f, a, now_ms, give_back=False)
        if short:
            return None
        draws = []
        for u, a in zip(ups, amounts, strict=True):
            f = floats[u.account]
            f.free -= a
            f.used_ms = now_ms
            u.drawn += a
            if a:
                draws.append((u.account, a))
        return granted, seconds, tuple(draws)

    def _float_more(self, code: str, f: Float, chunk: Decimal, now_ms: int, *,
                    give_back: bool) -> None:
        """Top a float up by ``float_chunks`` chunks when the reseller has twice that
        available; else, with ``give_back`` (the float cannot cover the chunk), give back
        what it holds: the reseller runs low, and its last credit must be where every
        call can reserve it."""
        if chunk <= ZERO:
            return
        amount = chunk * self.config.float_chunks
        if f.drawn and now_ms > f.since_ms:  # what it drains in FLOAT_SPAN_MS, if more
            amount = max(amount, (f.drawn * FLOAT_SPAN_MS / (now_ms - f.since_ms)
                                  ).quantize(chunk))
        avail = self.book.available(code, now_ms)
        if avail is not None and avail >= amount + amount:
            f.low = self._float_low(f, chunk, now_ms)
            f.asking += 1
            f.free += amount  # drawn on at once: the store applies it before the draws
            self._floats_watch(now_ms)
            f.drawn = ZERO
            f.since_ms = now_ms
            seq = self._next_seq()
            self.book.apply(seq, code, reserve_effect(amount), view_after=False)
            self._submit(FloatHold(seq, code, amount, now_ms))
        elif give_back and f.free > ZERO:
            self._float_give_back(code, f, now_ms)

    def _float_low(self, f: Float, chunk: Decimal, now_ms: int) -> Decimal:
        """Below this, a float asks for more: ``float_low_chunks`` chunks, or what it
        drains in a quarter of ``FLOAT_SPAN_MS`` (a top-up's round trip to the store,
        with room to spare), if more."""
        low = chunk * self.config.float_low_chunks
        if f.drawn and now_ms > f.since_ms:
            drain = f.drawn * (FLOAT_SPAN_MS // 4) / (now_ms - f.since_ms)
            if drain > low:
                return drain
        return low

    def _float_give_back(self, code: str, f: Float, now_ms: int) -> None:
        amount = f.free
        f.free = ZERO
        seq = self._next_seq()
        self.book.apply(seq, code, reserve_effect(-amount), view_after=False)
        self._submit(FloatHold(seq, code, -amount, now_ms))

    def release_floats(self, now_ms: int, idle_ms: int | None = None) -> None:
        """Give back what floats hold undrawn: every float's (``idle_ms`` None: the
        sidecar stops), or those of floats nothing drew on for ``idle_ms``."""
        for code, f in self.floats.items():
            if f.free > ZERO and not f.asking and (
                    idle_ms is None or now_ms - f.used_ms >= idle_ms):
                self._float_give_back(code, f, now_ms)

    def load_floats(self, held: Mapping[str, Decimal], now_ms: int) -> None:
        """This node's floats as the store holds them (a restart): free until the calls
        adopted from the store take their draws out (:meth:`adopt`)."""
        for code, amount in held.items():
            self.floats[code] = Float(free=amount, used_ms=now_ms, since_ms=now_ms)
        if held:
            self._floats_watch(now_ms)

    def _floats_watch(self, now_ms: int) -> None:
        """A float holds credit from ``now_ms``: :meth:`tick` looks for idle floats from
        then on (never from a time long gone: a clock that starts there would step through
        every half idle period since)."""
        if self._floats_due < now_ms:
            self._floats_due = now_ms + self.config.float_idle_ms // 2

    def _on_float(self, cmd: FloatHold, o: Outcome) -> None:
        f = self.floats.get(cmd.account)
        if f is None:
            f = self.floats[cmd.account] = Float(used_ms=cmd.now_ms)
        if cmd.amount > ZERO:  # counted free when asked: less if the store had less
            f.asking -= 1
            f.free -= cmd.amount - (o.granted if o.ok else ZERO)
        elif not o.ok:  # not given back: still held, still free
            f.free -= cmd.amount

    def _chain_grant(self, s: CallSession, acc: Account, want: Decimal, fit: Fit,
                     cost_to: CostTo, target: int, paid: int, now_ms: int
                     ) -> tuple[Decimal, int, tuple[ChainPart, ...]]:
        """A chunk of a call below resellers: what each tier can pay for, the fewest
        seconds of them on every tier (``tiers.grant_chain``)."""
        parts: list[tuple[Decimal | None, Decimal, RateLine, Decimal]] = []
        available = self.book.available
        for u in s.uplines:
            ul = u.line
            base = self._price(ul, paid).cost if paid else ZERO
            parts.append((available(u.account, now_ms),
                          self._price(ul, target).cost - base, ul, base))
        seconds, amounts = grant_chain((acc, want, fit, cost_to), parts, target, paid)
        return amounts[0], seconds, tuple(
            ChainPart(u.account, a, p[2], p[3])
            for u, a, p in zip(s.uplines, amounts[1:], parts, strict=True))

    def _bundle_terms(self, s: CallSession, paid: int, target: int
                      ) -> tuple[Decimal, Fit, CostTo, BundleDraw | None]:
        """A reservation of a call on a bundle: bundle seconds first, as many as the
        bundle has left up to ``target`` (while the call has not started paying), then
        money for the rest, priced by the bundle split (``rating.bundles``)."""
        line = s.line
        have = s.bundle_held
        take = 0
        if s.bundle is not None and s.bundle_key is not None and paid <= have < target:
            take = min(target - have, self.bundles.left(s.bundle, s.bundle_key))

        def terms(got: int) -> tuple[Decimal, Fit, CostTo]:
            b = have + got
            base = split(line, paid, b).cost if paid else ZERO

            def fit(avail: Decimal) -> tuple[Decimal, int]:
                d = min(affordable_with_bundle(line, b, avail + base), UNLIMITED)
                return (split(line, d, b).cost - base, d) if d > paid else (ZERO, paid)

            def cost_to(d: int) -> Decimal:
                return split(line, d, b).cost - base

            return split(line, target, b).cost - base, fit, cost_to

        want, fit, cost_to = terms(take)
        if not take:
            return want, fit, cost_to, None
        assert s.bundle_key is not None
        return want, fit, cost_to, BundleDraw(s.bundle_key, take, terms)

    def _on_reserved(self, cmd: Reserve, o: Outcome, now_ms: int,
                     actions: list[Action]) -> None:
        refused = bool(cmd.float_draws) and (not o.ok or not o.chain_granted)
        if refused:  # not recorded: failed (free again), or a float had less (none free)
            for code, a in cmd.float_draws:
                f = self.floats.get(code)
                if f is not None:
                    f.free = f.free + a if not o.ok else min(f.free, ZERO)
        s = self.sessions.get(cmd.call_ref)
        if s is None:
            return  # already settled: the settlement released whatever was held
        if cmd.bundle is not None and o.bundle_seconds != cmd.bundle.seconds:
            s.bundle_held -= cmd.bundle.seconds - o.bundle_seconds  # the store had fewer
        if cmd.chain:  # what each reseller's part really held
            got = o.chain_granted or (ZERO,) * len(cmd.chain)
            for u, part, g in zip(s.uplines, cmd.chain, got, strict=False):
                u.reserved += g - part.amount
        if refused:
            drew = dict(cmd.float_draws)
            for u in s.uplines:
                u.drawn -= drew.get(u.account, ZERO)
        if not o.ok:
            s.reserved -= cmd.amount
            if s.ending:
                return
            acc = self.book.get(s.account, now_ms)
            if acc is None or acc.kind is AccountKind.PREPAID:
                # Never let a prepaid call run on credit the store has not recorded.
                s.paid_seconds = min(s.paid_seconds, cmd.paid_before)
                s.final = True
                s.ending = True
                s.end_reason = REASON_STORE
                s.timer_gen += 1
                log.error("ending %s: %s (%s)", s.call_ref, REASON_STORE, o.error, extra={
                    "call": s.call_ref, "account": s.account, "decision": "end",
                    "reason": REASON_STORE})
                actions.append(EndCall(s.call_ref, REASON_STORE, now_ms))
            return
        if o.seconds >= cmd.seconds:
            if o.granted != cmd.amount:  # fewer bundle seconds, paid for in money instead
                s.reserved += o.granted - cmd.amount
            return
        # The store had less than the view showed (a change made elsewhere): the call
        # gets what the store granted, and ends when that is used.
        s.reserved -= cmd.amount - o.granted
        s.paid_seconds = min(s.paid_seconds, o.seconds)
        s.final = True
        if o.settled_elsewhere:
            s.settled_elsewhere = True
            log.warning("call %s: %s; it ends at its paid time", s.call_ref, REASON_SETTLED,
                        extra={"call": s.call_ref, "account": s.account,
                               "reason": REASON_SETTLED})
        else:
            log.warning("call %s: store granted %s s where %s s were expected", s.call_ref,
                        o.seconds, cmd.seconds)
        if s.ending:
            return
        paid_until = s.paid_until_ms
        assert paid_until is not None
        if paid_until <= now_ms:
            s.ending = True
            s.end_reason = REASON_SETTLED if s.settled_elsewhere else REASON_CREDIT
            s.timer_gen += 1
            actions.append(EndCall(s.call_ref, s.end_reason, now_ms))
        else:
            self._schedule(s, paid_until)

    def _line_fields(self, line: RateLine) -> dict[str, str]:
        """What a live-call record says about its rate line (the same for every chunk
        of every call on the line)."""
        hit = self._lines.get(id(line))
        if hit is not None and hit[0] is line:
            return hit[1]
        return _remember(self._lines, id(line), line, {
            "destination": line.destination, "prefix": line.prefix,
            "rate": to_text(line.rate), "increment": str(line.increment)})

    def _fit(self, line: RateLine, paid: int, base: Decimal) -> Fit:
        """What a reservation bringing a call on ``line`` from ``paid`` seconds (costing
        ``base``) takes when the store has only ``avail``: the most worth reserving. One
        function per line and paid time, shared by every call's command that needs it (the
        first chunk of every call on a line is the same)."""
        key = (id(line), paid)
        hit = self._fits.get(key)
        if hit is not None and hit[0] is line:
            return hit[1]

        def fit(avail: Decimal) -> tuple[Decimal, int]:
            d = affordable_seconds(line, avail, paid)
            return (price(line, d).cost - base, d) if d > paid else (ZERO, paid)

        return _remember(self._fits, key, line, fit)

    def _cost_cap(self, line: RateLine, cost: Decimal) -> int:
        """The longest call on ``line`` that costs at most ``cost`` (cached)."""
        key = (id(line), cost)
        hit = self._caps.get(key)
        if hit is not None and hit[0] is line:
            return hit[1]
        return _remember(self._caps, key, line, affordable_seconds(line, cost))

    def _price(self, line: RateLine, seconds: int) -> Price:
        key = (id(line), seconds)
        hit = self._prices.get(key)
        if hit is not None and hit[0] is line:
            return hit[1]
        return _remember(self._prices, key, line, price(line, seconds))

    # --- the store ---------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _submit(self, cmd: StoreCommand) -> None:
        self._inflight[cmd.seq] = cmd
        self.port.submit(cmd)

    def take_actions(self) -> list[Action]:
        """What an authorization asked of the edges (fraud alerts, and the ends of the
        live calls of an account a fraud rule just suspended)."""
        return self._take()

    def _take(self) -> list[Action]:
        out = self._out
        if not out:
            return []
        self._out = []
        return out

    def on_results(self, batch: BatchResult, now_ms: int) -> list[Action]:
        """The store answered a batch of commands (or failed to commit it)."""
        self._on_batch(batch, now_ms)
        return self._take()

    def _on_batch(self, batch: BatchResult, now_ms: int) -> None:
        done: list[tuple[str, int]] = []
        actions = self._out
        for o in batch.outcomes:
            cmd = self._inflight.get(o.seq)
            if cmd is None:
                continue
            code = cmd.cdr.account if isinstance(cmd, Settle) else cmd.account
            if not o.journaled:  # a journaled command stays pending until it is applied
                del self._inflight[o.seq]
                if code:
                    done.append((code, o.seq))
                    if isinstance(cmd, Reserve) and cmd.chain:
                        done += [(p.account, o.seq) for p in cmd.chain]
                    elif isinstance(cmd, Settle) and cmd.tiers:
                        done += [(t.account, o.seq) for t in cmd.tiers]
            if isinstance(cmd, Reserve):
                self._on_reserved(cmd, o, now_ms, actions)
            elif isinstance(cmd, Settle):
                self._on_settled(cmd, o, actions)
            elif isinstance(cmd, FloatHold):
                self._on_float(cmd, o)
            elif isinstance(cmd, Flag):
                if not o.ok and not o.journaled:
                    log.error("fraud rule %s (%s) on %s NOT recorded: %s", cmd.rule,
                              cmd.action, cmd.account, o.error)
            elif isinstance(cmd, CarrierHealth):
                if not o.ok and not o.journaled:
                    log.error("carrier %s %s NOT recorded: %s", cmd.carrier, cmd.kind, o.error)
            elif not o.ok and not o.journaled:
                log.error("top-up of %s %s on %s NOT recorded: %s", cmd.amount, cmd.note,
                          cmd.account, o.error)
        self.book.committed(done, batch.accounts)
        self.bundles.committed([seq for _code, seq in done], batch.bundles)
        if batch.error:
            if self.store_ok:
                log.error("store failed: %s; refusing new calls until it recovers",
                          batch.error)
            self.store_ok = False
            self.store_error = batch.error
        elif not self.store_ok:
            log.warning("store recovered: accepting new calls")
            self.store_ok = True
            self.store_error = ""

    def inflight(self) -> int:
        """Commands sent to the store and not yet answered (or kept in its journal)."""
        return len(self._inflight)

    def topup(self, code: str, amount: Decimal, now_ms: int, note: str = "",
              key: str = "") -> None:
        """Credit a payment (an automatic recharge) to an account, through the store."""
        seq = self._next_seq()
        self.book.apply(seq, code, Effect(balance=amount))
        self._submit(Topup(seq, code, amount, note, key or f"topup-{code}-{now_ms}-{seq}",
                           now_ms))

    def _thresholds(self, before: Account, after: Account, now_ms: int,
                    actions: list[Action]) -> None:
        code = after.code
        low = after.low_balance
        if low is not None and before.balance >= low > after.balance:
            actions.append(Alert("low_balance", code,
                                 f"account {code} balance {after.balance} {after.currency} "
                                 f"fell below {low}", now_ms,
                                 {"balance": str(after.balance), "threshold": str(low)}))
        below = after.recharge_below
        if (below is not None and after.recharge_amount and after.balance < below
                and code not in self._recharge_pending):
            self._recharge_pending.add(code)
            actions.append(Recharge(code, after.recharge_amount, now_ms))
        if after.kind is AccountKind.POSTPAID:
            # Budget warnings follow real spend; holds come and go with every chunk.
            for cap, spent_before, spent_after, what in (
                    (after.daily_cap, before.day_spend, after.day_spend, "daily"),
                    (after.monthly_cap, before.month_spend, after.month_spend, "monthly")):
                if cap is None:
                    continue
                warn = cap * Decimal("0.8")
                if spent_before < warn <= spent_after:
                    actions.append(Alert("budget", code, f"account {code} has used "
                                         f"{spent_after} of its {what} cap {cap}", now_ms,
                                         {"cap": str(cap), "spent": str(spent_after)}))

    def recharged(self, account: str) -> None:
        """The edge finished (or gave up) a recharge: allow the next one."""
        self._recharge_pending.discard(account)

    # --- views ---------------------------------------------------------------------
    def live(self, now_ms: int) -> list[dict[str, object]]:
        """Every answered call with its running cost and remaining paid time."""
        out: list[dict[str, object]] = []
        for s in self.sessions.values():
            if s.billable_ms is None:
                continue
            elapsed = max(0, now_ms - s.billable_ms)
            table = self.plans(s.plan).table
            secs = table.rounding_seconds(elapsed)
            cost = (split(s.line, secs, s.bundle_held).cost if s.bundle_key is not None
                    else price(s.line, secs).cost)
            paid_until = s.paid_until_ms or now_ms
            out.append({"call_ref": s.call_ref, "account": s.account, "number": s.number,
                        "destination": s.line.destination, "elapsed_ms": elapsed,
                        "cost": cost, "reserved": s.reserved,
                        "remaining_ms": max(0, paid_until - now_ms), "final": s.final})
        return out


#: Every Cdr field's default (the first three, which have none, are always given).
_CDR_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Cdr)}
if any(f.default_factory is not dataclasses.MISSING for f in dataclasses.fields(Cdr)):
    raise TypeError("Charger._cdr copies Cdr defaults: a field with a default_factory "
                    "needs a value of its own there")
_new = object.__new__

_K = TypeVar("_K")
_V = TypeVar("_V")
_CACHE_MAX = 50_000  # entries per cache; emptied when full (rate lines come and go)


def _remember(cache: dict[_K, tuple[RateLine, _V]], key: _K, line: RateLine, value: _V
              ) -> _V:
    """Keep ``value`` computed for ``line`` under ``key`` (keys hold ``id(line)``: the
    line is kept beside it, so a reused id is told apart by identity)."""
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = (line, value)
    return value


_NO_PRICE = Price(0, ZERO, ZERO, ZERO, ZERO, ZERO)


def _cost_to(line: RateLine, base: Decimal) -> CostTo:
    """The price on ``line`` of the seconds from a call's paid time (priced ``base``)
    to ``d``."""
    def cost_to(d: int) -> Decimal:
        return price(line, d).cost - base
    return cost_to


def _rebundle(cdr: Cdr, line: RateLine, deck_line: RateLine | None, secs: int,
              bundle_seconds: int) -> None:
    """Rate a settled call again with ``bundle_seconds`` from its bundle (the store had
    fewer for it than the core counted): what :meth:`Charger.end` does, for that many."""
    sp = split(line, secs, bundle_seconds)
    p = sp.price
    credit = cdr.credited == cdr.cost and cdr.cost > 0
    cdr.billed_seconds, cdr.bundle_seconds = sp.billed_seconds, sp.bundle_seconds
    cdr.usage, cdr.connection_fee = p.usage, p.connection_fee
    cdr.surcharge, cdr.minimum_uplift, cdr.cost = p.surcharge, p.minimum_uplift, p.cost
    if credit:
        cdr.credited = cdr.cost
    if deck_line is not None:
        cdr.deck_cost = split(deck_line, secs, bundle_seconds).cost
    if cdr.buy_cost is not None:
        cdr.margin = cdr.cost - cdr.credited - cdr.buy_cost


@functools.lru_cache(maxsize=256)
def _duration_reason(cap: int) -> str:
    """What a call's end says when it reaches the account's longest call (one string per
    value, not one per call)."""
    return f"maximum call duration {cap} s reached"


@functools.lru_cache(maxsize=256)
def _cost_reason(cost: Decimal) -> str:
    return f"maximum call cost {cost} reached"


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
