"""False Answer Supervision patterns over many calls of one route.

A single call can only show its own media (:mod:`.media`). A route that fakes answers
shows itself over many calls (carriers' published signatures):

* **FAS verdicts**: the share of its answered calls found without media, with late
  media, ringback or silence after the 200 OK;
* **instant answers**: 200 OK within a few hundred ms of the INVITE, with no ringing;
* **short calls**: a high share of answered calls lasting 15 s or less;
* **uniform durations**: many answered calls of (nearly) the same length;
* **uniform answer delays**: ringing -> answer delays that hardly vary, as a machine's do.

Each pattern that fires adds to a score (0-100) and a reason naming its evidence. A route
needs ``min_calls`` answered calls to be judged at all: one instant answer (an IVR) or
one short call says nothing about a route. Pure: rows in, scores out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from .media import FAS_VERDICTS


@dataclass(frozen=True)
class RouteCall:
    """One call as route statistics see it (from a CDR)."""

    route: str
    offered_ms: int
    ringing_ms: int | None
    answered_ms: int | None
    ended_ms: int
    fas_verdict: str = ""


@dataclass(frozen=True)
class PatternConfig:
    min_calls: int = 20  # answered calls a route needs before it is judged
    instant_answer_ms: int = 300
    instant_share: float = 0.3
    short_call_ms: int = 15_000
    short_share: float = 0.5
    uniform_window_ms: int = 1_000  # durations this close count as "the same"
    uniform_share: float = 0.4
    answer_delay_spread_ms: int = 250  # p90 - p10 of ringing -> answer below this
    fas_share: float = 0.05


@dataclass
class RouteScore:
    route: str
    attempts: int
    answered: int
    fas_calls: Counter[str] = field(default_factory=Counter)
    instant_answers: int = 0
    short_calls: int = 0
    uniform_calls: int = 0  # answered calls in the most crowded duration window
    answer_delay_p10_ms: int | None = None
    answer_delay_p90_ms: int | None = None
    judged: bool = False
    score: int = 0
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"route": self.route, "attempts": self.attempts, "answered": self.answered,
                "fas_calls": dict(self.fas_calls), "instant_answers": self.instant_answers,
                "short_calls": self.short_calls, "uniform_calls": self.uniform_calls,
                "answer_delay_p10_ms": self.answer_delay_p10_ms,
                "answer_delay_p90_ms": self.answer_delay_p90_ms, "judged": self.judged,
                "score": self.score, "reasons": list(self.reasons)}


def _percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _crowded_window(durations: list[int], width: int) -> int:
    """The most durations inside any window ``width`` ms wide (two pointers)."""
    best = lo = 0
    for hi, d in enumerate(durations):
        while d - durations[lo] > width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def score_routes(calls: Iterable[RouteCall], config: PatternConfig | None = None
                 ) -> list[RouteScore]:
    """Score every route seen in ``calls``; the most suspicious first."""
    cfg = config or PatternConfig()
    by_route: dict[str, list[RouteCall]] = {}
    for c in calls:
        by_route.setdefault(c.route, []).append(c)
    out = [_score(route, rows, cfg) for route, rows in by_route.items()]
    out.sort(key=lambda r: (-r.score, -r.answered, r.route))
    return out


def _score(route: str, rows: list[RouteCall], cfg: PatternConfig) -> RouteScore:
    answered = [c for c in rows if c.answered_ms is not None]
    r = RouteScore(route, len(rows), len(answered))
    r.fas_calls = Counter(c.fas_verdict for c in answered if c.fas_verdict in FAS_VERDICTS)
    durations = sorted(c.ended_ms - c.answered_ms for c in answered
                       if c.answered_ms is not None)
    r.short_calls = sum(1 for d in durations if d <= cfg.short_call_ms)
    r.uniform_calls = _crowded_window(durations, cfg.uniform_window_ms)
    r.instant_answers = sum(
        1 for c in answered if c.ringing_ms is None and c.answered_ms is not None
        and c.answered_ms - c.offered_ms <= cfg.instant_answer_ms)
    delays = sorted(c.answered_ms - c.ringing_ms for c in answered
                    if c.ringing_ms is not None and c.answered_ms is not None)
    if delays:
        r.answer_delay_p10_ms = _percentile(delays, 0.1)
        r.answer_delay_p90_ms = _percentile(delays, 0.9)
    n = r.answered
    if n < cfg.min_calls:
        return r
    r.judged = True
    fas = sum(r.fas_calls.values())
    if fas / n >= cfg.fas_share:
        r.score += min(60, round(200 * fas / n))
        kinds = ", ".join(f"{k} {v}" for k, v in r.fas_calls.most_common())
        r.reasons.append(f"{fas} of {n} answered calls ({fas / n:.0%}) failed media "
                         f"supervision ({kinds})")
    if r.instant_answers / n >= cfg.instant_share:
        r.score += 15
        r.reasons.append(f"{r.instant_answers / n:.0%} of answers came within "
                         f"{cfg.instant_answer_ms} ms of the INVITE with no ringing")
    if r.short_calls / n >= cfg.short_share:
        r.score += 15
        r.reasons.append(f"{r.short_calls / n:.0%} of answered calls lasted "
                         f"{cfg.short_call_ms // 1000} s or less")
    if r.uniform_calls / n >= cfg.uniform_share:
        r.score += 20
        r.reasons.append(f"{r.uniform_calls / n:.0%} of answered calls lasted the same "
                         f"(within {cfg.uniform_window_ms / 1000:g} s)")
    if len(delays) >= cfg.min_calls and r.answer_delay_p90_ms is not None \
            and r.answer_delay_p10_ms is not None \
            and r.answer_delay_p90_ms - r.answer_delay_p10_ms < cfg.answer_delay_spread_ms:
        r.score += 10
        r.reasons.append(f"ringing -> answer delays hardly vary ({r.answer_delay_p10_ms}-"
                         f"{r.answer_delay_p90_ms} ms for 80% of calls)")
    r.score = min(100, r.score)
    return r
