"""Route FAS patterns: honest routes score 0, faking routes are named with evidence."""

from __future__ import annotations

import random

from sidecar.supervision.routes import PatternConfig, RouteCall, score_routes


def honest(route: str, n: int, seed: int = 1) -> list[RouteCall]:
    rnd = random.Random(seed)
    out = []
    t = 0
    for i in range(n):
        t += 60_000
        ring = t + rnd.randint(800, 4000)
        if i % 3 == 0:  # not answered
            out.append(RouteCall(route, t, ring, None, ring + 20_000))
            continue
        ans = ring + rnd.randint(2_000, 25_000)
        out.append(RouteCall(route, t, ring, ans, ans + int(rnd.expovariate(1 / 120_000))
                             + 16_000))
    return out


def faking(route: str, n: int) -> list[RouteCall]:
    out = []
    for i in range(n):
        t = i * 60_000
        ans = t + 120  # instant, no ringing
        verdict = "no-media" if i % 4 == 0 else ""
        out.append(RouteCall(route, t, None, ans, ans + 12_000 + (i % 5) * 100, verdict))
    return out


def test_honest_route_scores_zero_and_faking_route_is_flagged_first() -> None:
    scores = score_routes(honest("good", 120) + faking("bad", 60))
    assert [s.route for s in scores] == ["bad", "good"]
    bad, good = scores
    assert good.judged and good.score == 0 and good.reasons == []
    assert bad.judged and bad.score >= 80
    text = " | ".join(bad.reasons)
    assert "failed media supervision (no-media 15)" in text
    assert "within 300 ms of the INVITE" in text
    assert "lasted 15 s or less" in text
    assert "lasted the same" in text


def test_a_few_calls_are_not_judged() -> None:
    (s,) = score_routes(faking("new", 5))
    assert not s.judged and s.score == 0 and s.instant_answers == 5


def test_ivr_route_with_instant_answers_and_real_media_is_only_mildly_noted() -> None:
    rnd = random.Random(3)
    calls = []
    for i in range(50):
        t = i * 60_000
        ans = t + 50
        calls.append(RouteCall("ivr", t, None, ans, ans + rnd.randint(30_000, 400_000)))
    (s,) = score_routes(calls)
    assert s.judged and s.score == 15 and len(s.reasons) == 1


def test_machine_like_answer_delays_are_flagged() -> None:
    calls = [RouteCall("m", i * 1000, i * 1000 + 900, i * 1000 + 5_000 + (i % 3) * 10,
                       i * 1000 + 5_000 + 30_000 + i * 997) for i in range(40)]
    (s,) = score_routes(calls, PatternConfig(min_calls=20))
    assert s.score == 10 and "delays hardly vary" in s.reasons[0]
