"""The live rtpengine source when rtpengine fails: queries stay under the rate cap, run
off the event loop (a hanging rtpengine never stalls it), are counted as errors, and no
call is judged no-media for it (tests/e2e/test_rtpengine_counters.py: the real thing)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter

import pytest

from sidecar.kamailio.events import Answer, End, Offer
from sidecar.live.rtpengine_source import RtpengineSource
from sidecar.supervision.media import Verdict

from ..charging.harness import T0
from ..supervision.media_gen import sdp
from ..supervision.test_calls import Lab, dialog

pytestmark = pytest.mark.timeout(60)

CALLS = 60


def answered_calls(lab: Lab) -> list[str]:
    refs = [f"call-{i}" for i in range(CALLS)]
    lab.control.keep_verdicts = True
    for i, ref in enumerate(refs):
        lab.event(Offer(dialog(ref, T0), 1, 2, "alice", "Alice", "", "493012345", "sip:x",
                        "493012345", "acme", "127.0.0.1", 5060,
                        sdp("127.0.0.1", 20_000 + 2 * i)), T0)
        lab.event(Answer(dialog(ref, T0 + 1000), sdp("127.0.0.1", 40_000 + 2 * i),
                         "carrier-a"), T0 + 1000)
    assert len(lab.control.awaiting_media()) == CALLS
    return refs


async def poll_for(source: RtpengineSource, seconds: float) -> float:
    """Run the source for ``seconds``; the event loop's worst lateness meanwhile (s)."""
    source.start()
    worst = 0.0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            t = time.monotonic()
            await asyncio.sleep(0.01)
            worst = max(worst, time.monotonic() - t - 0.01)
    finally:
        source.stop()
    return worst


@pytest.mark.parametrize("rtpengine", ["refuses", "hangs"])
def test_failing_rtpengine_is_rate_capped_off_the_loop_and_never_no_media(
        rtpengine: str) -> None:
    lab = Lab()
    refs = answered_calls(lab)
    # Nothing listens (ICMP refused at once), or a socket that reads and never answers.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if rtpengine == "refuses":
        sock.close()
    counters: Counter[str] = Counter()
    assert lab.control.media is not None
    source = RtpengineSource(lab.control, lab.control.media,
                             address=f"udp:127.0.0.1:{port}", poll_ms=100, max_qps=40,
                             on_actions=lab.actions.extend, counters=counters,
                             timeout_s=0.3)
    try:
        worst = asyncio.run(poll_for(source, 1.5))
    finally:
        sock.close()
    queries = counters["rtpengine_queries"]
    # At most 40/s (plus a burst of 4) for 1.5 s, although 60 calls each want 10/s.
    assert queries <= 40 * 1.5 + 4 + 2, counters
    if rtpengine == "refuses":
        assert queries >= 30 and counters["rtpengine_errors"] >= queries - 8, counters
    else:  # each query holds a worker for its 0.3 s timeout: 4 workers, about 13/s
        assert 8 <= queries <= 40 and counters["rtpengine_errors"] >= 8, counters
    assert worst < 0.1, worst  # the loop was never held up by a query
    for ref in refs:
        lab.event(End(dialog(ref, T0 + 20_000), "caller", "bye", T0 + 1000), T0 + 20_000)
    verdicts = {v.verdict for v in lab.control.verdicts.values()}
    assert verdicts == {Verdict.NOT_CAPTURED}
    assert all(lab.cdr(ref)["billed_seconds"] == 19 for ref in refs[:3])
