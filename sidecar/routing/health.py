"""Route health: a carrier that fakes answers or stops completing calls is taken out of
the route lists, and brought back after a cool-down or by an operator (pure state
machine; time is an argument).

A carrier is judged on its calls over a recent window (``HealthPolicy.window_ms``) once
it has at least ``min_attempts`` of them there:

* its **FAS score** (0-100, :func:`sidecar.supervision.routes.score_routes`) at or above
  ``max_fas_score``, or
* its **ASR** (answered / attempts) below ``min_asr``

pulls it: a :class:`HealthEvent` ``pulled`` with the evidence (the window, the counts,
the figure and the threshold it crossed). It comes back when the cool-down is over
(:meth:`RouteHealth.tick`, ``restored`` by ``cool-down``) or by an operator's command
(:meth:`RouteHealth.restore`). From then on it is judged only on calls made after its
return: the caller asks :meth:`RouteHealth.window` which calls to count, and statistics
over calls from before the return are ignored, so the calls that pulled it cannot pull
it again at once.

The caller computes the statistics (the CDRs are in the store), hands them to
:meth:`RouteHealth.observe`, stores the events, and calls :meth:`RouteHealth.tick` at
:meth:`RouteHealth.next_deadline`, as ``Charger.next_deadline``/``tick`` do for credit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

from .carriers import HEALTH, OPERATOR

COOL_DOWN = "cool-down"
_ASR_Q = Decimal("0.0001")


class HealthError(ValueError):
    """A route health setting that cannot be used."""


@dataclass(frozen=True)
class HealthPolicy:
    """When a carrier is pulled, and for how long."""

    window_ms: int = 60 * 60 * 1000  # the calls of the last hour
    min_attempts: int = 20  # a carrier with fewer calls there is not judged
    max_fas_score: int = 50  # pulled at or above this FAS score
    min_asr: Decimal = Decimal("0.15")  # pulled below this ASR
    cooldown_ms: int = 15 * 60 * 1000

    def __post_init__(self) -> None:
        if self.window_ms < 1 or self.cooldown_ms < 1:
            raise HealthError("window_ms and cooldown_ms must be positive")
        if self.min_attempts < 1:
            raise HealthError("min_attempts must be at least 1")
        if not 0 < self.max_fas_score <= 100:
            raise HealthError("max_fas_score must be from 1 to 100")
        if not Decimal(0) <= self.min_asr <= Decimal(1):
            raise HealthError("min_asr must be from 0 to 1")


@dataclass(frozen=True)
class WindowStats:
    """A carrier's calls in ``[from_ms, to_ms)``: attempts, answered, FAS score."""

    from_ms: int
    to_ms: int
    attempts: int
    answered: int
    fas_score: int | None = None  # None: not judged (too few answered calls)

    @property
    def asr(self) -> Decimal | None:
        """Answered / attempts, exact (None without attempts)."""
        return Decimal(self.answered) / self.attempts if self.attempts else None


class EventKind(StrEnum):
    PULLED = "pulled"
    RESTORED = "restored"


@dataclass(frozen=True)
class HealthEvent:
    """A carrier taken out of (``pulled``) or put back into (``restored``) the routes."""

    carrier: str
    kind: EventKind
    at_ms: int
    actor: str  # health, cool-down, operator
    reason: str
    evidence: dict[str, object] = field(default_factory=dict)
    until_ms: int | None = None  # pulled: when the cool-down ends


@dataclass
class _Pulled:
    since_ms: int
    until_ms: int
    reason: str


class RouteHealth:
    """The health of every carrier: which are pulled, until when, and from when each is
    judged. One thread at a time."""

    def __init__(self, policy: HealthPolicy | None = None) -> None:
        self.policy = policy or HealthPolicy()
        self._pulled: dict[str, _Pulled] = {}
        self._since: dict[str, int] = {}  # carrier -> judged on calls from this time on

    def window(self, carrier: str, now_ms: int) -> tuple[int, int]:
        """The calls to count for ``carrier`` at ``now_ms``: ``[from_ms, now_ms)``, the
        policy's window, shortened to start at the carrier's last return."""
        start = now_ms - self.policy.window_ms
        return max(start, self._since.get(carrier, start)), now_ms

    def is_pulled(self, carrier: str) -> bool:
        return carrier in self._pulled

    @property
    def pulled(self) -> dict[str, str]:
        """The carriers pulled now, with why (what :func:`select_routes` takes)."""
        return {name: p.reason for name, p in self._pulled.items()}

    def since(self, carrier: str) -> int | None:
        """When a pulled carrier was pulled (None if it is not pulled)."""
        p = self._pulled.get(carrier)
        return None if p is None else p.since_ms

    def until(self, carrier: str) -> int | None:
        """When a pulled carrier's cool-down ends (None if it is not pulled)."""
        p = self._pulled.get(carrier)
        return None if p is None else p.until_ms

    def observe(self, carrier: str, stats: WindowStats, now_ms: int) -> list[HealthEvent]:
        """Judge ``carrier`` on ``stats``: a ``pulled`` event when it crossed a threshold,
        else nothing. Statistics that count calls from before the carrier's return, or
        too few calls, judge nothing; a carrier already pulled stays as it is."""
        pol = self.policy
        if carrier in self._pulled or stats.attempts < pol.min_attempts:
            return []
        if stats.from_ms < self._since.get(carrier, stats.from_ms):
            return []  # counts calls from before its return
        evidence: dict[str, object] = {
            "from_ms": stats.from_ms, "to_ms": stats.to_ms, "attempts": stats.attempts,
            "answered": stats.answered, "fas_score": stats.fas_score}
        asr = stats.asr
        assert asr is not None  # attempts >= min_attempts >= 1
        shown = asr.quantize(_ASR_Q, ROUND_HALF_UP)
        evidence["asr"] = str(shown)
        minutes = (stats.to_ms - stats.from_ms) // 60_000
        reasons = []
        if stats.fas_score is not None and stats.fas_score >= pol.max_fas_score:
            evidence["max_fas_score"] = pol.max_fas_score
            reasons.append(f"FAS score {stats.fas_score} at or above {pol.max_fas_score}")
        if asr < pol.min_asr:
            evidence["min_asr"] = str(pol.min_asr)
            reasons.append(f"ASR {shown} below {pol.min_asr}")
        if not reasons:
            return []
        reason = (" and ".join(reasons)
                  + f" over {stats.attempts} calls in {minutes} min")
        until = now_ms + pol.cooldown_ms
        self._pulled[carrier] = _Pulled(now_ms, until, reason)
        return [HealthEvent(carrier, EventKind.PULLED, now_ms, HEALTH, reason, evidence, until)]

    def next_deadline(self) -> int | None:
        """When :meth:`tick` has something to do: the earliest end of a cool-down."""
        return min((p.until_ms for p in self._pulled.values()), default=None)

    def tick(self, now_ms: int) -> list[HealthEvent]:
        """Bring back the carriers whose cool-down is over at ``now_ms``."""
        out = []
        for name in sorted(n for n, p in self._pulled.items() if p.until_ms <= now_ms):
            p = self._pulled.pop(name)
            self._since[name] = now_ms
            out.append(HealthEvent(name, EventKind.RESTORED, now_ms, COOL_DOWN,
                                   f"cool-down over (pulled at {p.since_ms}: {p.reason})",
                                   {"pulled_ms": p.since_ms}))
        return out

    def restore(self, carrier: str, now_ms: int, note: str = "") -> list[HealthEvent]:
        """An operator brings ``carrier`` back now (nothing if it is not pulled)."""
        p = self._pulled.pop(carrier, None)
        if p is None:
            return []
        self._since[carrier] = now_ms
        return [HealthEvent(carrier, EventKind.RESTORED, now_ms, OPERATOR,
                            note or "restored by an operator", {"pulled_ms": p.since_ms})]

    def load(self, carrier: str, until_ms: int, since_ms: int, reason: str) -> None:
        """Resume a pull that the store holds (a restart): pulled at ``since_ms`` with
        ``reason`` until ``until_ms``."""
        self._pulled[carrier] = _Pulled(since_ms, until_ms, reason)
