"""rtpengine's per-call counters as the live media source (``[media] source = "rtpengine"``).

Where the sidecar cannot capture the media (rtpengine forwards it on another host),
rtpengine's own counters answer the question that confirms an answer: has the carrier
sent media since the 200 OK, and since when? For each answered call whose callee media
is not confirmed yet, the ng ``query`` command is sent at once (the count that marks
what arrived before the answer) and then every ``poll_ms``, until the callee's media is
seen or the call ends; at most ``max_qps`` queries a second in all (more calls: each is
queried less often). The packets rtpengine received on the port it advertised to the
carrier (the caller's SDP in the sidecar's eyes: the ``offer`` event's SDP with
``WITH_RTPENGINE``) are the carrier's media; :meth:`CallControl.on_media_count` takes the
count, so billing start, no-media and late-media verdicts work as with the capture.
Ringback and silence need the audio: they are not judged (evidence ``"source":
"rtpengine"``).

The queries are blocking UDP exchanges (:class:`sidecar.media.rtpengine.NgClient`) run
in a small thread pool, never on the event loop; the results come back to the loop. An
rtpengine that cannot be reached (timeout, refused) or that does not know the call is
logged and counted (``rtpengine_errors``, ``rtpengine_unknown_call``,
``rtpengine_no_stream`` in the sidecar's counters), and is never taken for "no media": a
call that got no answer from rtpengine is billed from the 200 OK (``media-not-captured``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..charging import Action
from ..config import ng_address
from ..media.rtpengine import BencodeError, Decoded, NgClient, NgError, received_at
from ..supervision.calls import CallControl
from ..supervision.flows import Party
from ..supervision.media import MediaSupervisor
from .timer import wall_ms

log = logging.getLogger("sidecar.media")


class RtpengineSource:
    """Polls rtpengine for the calls awaiting callee media and feeds the call control."""

    def __init__(self, control: CallControl, media: MediaSupervisor, *, address: str,
                 poll_ms: int, max_qps: int, on_actions: Callable[[list[Action]], None],
                 counters: Counter[str] | None = None, timeout_s: float = 0.5,
                 workers: int = 4, report_every_s: float = 60.0) -> None:
        where = ng_address(address)
        if where is None:
            raise ValueError(f"rtpengine ng address {address!r}: expected udp:HOST:PORT")
        self.address = address
        self.client = NgClient(*where, timeout=timeout_s)
        self.control = control
        self.media = media
        self.poll_s = poll_ms / 1000
        self.max_qps = max_qps
        self.on_actions = on_actions
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.workers = workers
        self.report_every_s = report_every_s
        self._pool: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._queries: set[asyncio.Task[None]] = set()
        self._due: dict[str, float] = {}  # call -> loop time of its next query
        self._inflight: set[str] = set()
        self._warned: set[str] = set()  # calls already warned about (no stream)
        self._last_error_log = 0.0

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="rtpengine")
        self._task = asyncio.get_running_loop().create_task(self._run())
        log.info("media from rtpengine's counters at %s (ng query every %d ms per "
                 "unconfirmed call, at most %d/s); no capture", self.address,
                 round(self.poll_s * 1000), self.max_qps)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for t in list(self._queries):
            t.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            self._report()

    def stats(self) -> dict[str, int]:
        return {k: v for k, v in self.counters.items() if k.startswith("rtpengine_")}

    def _report(self) -> None:
        s = self.stats()
        failed = s.get("rtpengine_errors", 0)
        log.log(logging.WARNING if failed else logging.INFO, "media from rtpengine: %s",
                " ".join(f"{k.removeprefix('rtpengine_')}={v}" for k, v in sorted(s.items()))
                or "no queries")

    # --- polling ---------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        ping = loop.create_task(self._ping(loop))  # told in the log; polling starts anyway
        self._queries.add(ping)
        ping.add_done_callback(self._queries.discard)
        step = min(0.05, self.poll_s / 2)
        burst = max(1.0, self.max_qps * step * 2)
        tokens = burst
        last = loop.time()
        next_report = last + self.report_every_s
        while True:
            await asyncio.sleep(step)
            now = loop.time()
            tokens = min(burst, tokens + (now - last) * self.max_qps)
            last = now
            if now >= next_report:
                next_report = now + self.report_every_s
                self._report()
            try:
                tokens = self._poll(loop, now, tokens)
            except Exception:  # the polling of every call must go on
                log.exception("rtpengine polling")

    def _poll(self, loop: asyncio.AbstractEventLoop, now: float, tokens: float) -> float:
        """Start the queries that are due (as many as ``tokens`` allow); tokens left."""
        waiting = self.control.awaiting_media()
        due = self._due
        for ref in [r for r in due if r not in waiting]:  # confirmed or ended
            del due[ref]
            self._warned.discard(ref)
        for ref in waiting:
            if ref not in due:  # just answered: the first count at once
                due[ref] = now
        ready = sorted((t, ref) for ref, t in due.items()
                       if t <= now and ref not in self._inflight)
        for _, ref in ready:
            if tokens < 1 or len(self._inflight) >= self.workers * 2:
                break
            tokens -= 1
            self._inflight.add(ref)
            task = loop.create_task(self._query(ref, waiting[ref]))
            self._queries.add(task)
            task.add_done_callback(self._queries.discard)
        return tokens

    async def _ping(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            ok = await loop.run_in_executor(self._pool, self.client.ping)
        except (OSError, NgError, BencodeError) as exc:
            log.error("rtpengine %s does not answer (%s): answered calls are billed from "
                      "the 200 OK (media-not-captured) until it does", self.address, exc)
            return
        if not ok:
            log.error("rtpengine %s: ping not answered with pong", self.address)

    def _carrier_ports(self, ref: str) -> list[int]:
        """rtpengine's ports in the SDP it sent to the carrier: the caller's addresses in
        the supervisor's flow table (the ``offer`` event's SDP, or a later one)."""
        return sorted({addr[1] for addr, owner in self.media.flows.addresses(ref).items()
                       if owner.party is Party.CALLER and not owner.latched})

    def _ask(self, ref: str) -> tuple[dict[str, Decoded], int]:
        """In a pool thread: the ``query`` reply and the wall time it arrived."""
        reply = self.client.query(ref)
        return reply, wall_ms()

    async def final(self, ref: str, end_ms: int) -> None:
        """One last count for a call ending with its callee media not confirmed yet
        (its end waits for it, at most the query's timeout): media that started since
        the last poll counts, as seen no later than ``end_ms``."""
        answer_ms = self.control.awaiting_media().get(ref)
        if answer_ms is None or self._pool is None:
            return
        self._inflight.add(ref)
        # Bounded even behind queries that hang (the pool's threads are all waiting).
        try:
            async with asyncio.timeout(self.client.timeout + 0.25):
                await self._query(ref, answer_ms, until_ms=end_ms)
        except TimeoutError:
            self.counters["rtpengine_errors"] += 1

    async def _query(self, ref: str, answer_ms: int, until_ms: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.counters["rtpengine_queries"] += 1
        try:
            ports = self._carrier_ports(ref)
            try:
                reply, at_ms = await loop.run_in_executor(self._pool, self._ask, ref)
            except NgError as exc:  # rtpengine does not know the call (not relayed by it?)
                self.counters["rtpengine_unknown_call"] += 1
                self._warn_once(ref, f"{ref}: rtpengine: {exc}")
                return
            except (OSError, BencodeError) as exc:  # timeout, refused, garbage
                self.counters["rtpengine_errors"] += 1
                self._error(f"rtpengine {self.address}: query for {ref} failed: {exc}")
                return
            found = [c for c in (received_at(reply, port) for port in ports) if c is not None]
            if not found:
                self.counters["rtpengine_no_stream"] += 1
                self._warn_once(ref, f"{ref}: rtpengine has no stream on the port(s) "
                                     f"{ports} of the SDP it sent to the carrier")
                return
            # Clocks: a count is never earlier than the 200 OK it follows (nor, the last
            # one, later than the end of the call).
            ts = max(min(at_ms, until_ms if until_ms is not None else at_ms), answer_ms)
            actions = self.control.on_media_count(
                ref, Party.CALLEE, ts, sum(c.packets for c in found),
                sum(c.bytes for c in found))
            if actions:
                self.on_actions(actions)
        except Exception:  # one call's trouble must not stop the others being polled
            self.counters["rtpengine_errors"] += 1
            log.exception("rtpengine query for %s", ref)
        finally:
            self._inflight.discard(ref)
            if ref in self._due:
                self._due[ref] = loop.time() + self.poll_s

    def _warn_once(self, ref: str, message: str) -> None:
        if ref not in self._warned:
            self._warned.add(ref)
            log.warning("%s (billed from the 200 OK unless it counts media)", message)

    def _error(self, message: str) -> None:
        """Logged at most every 10 s (an rtpengine down fails every query)."""
        now = time.monotonic()
        if now - self._last_error_log >= 10:
            self._last_error_log = now
            log.error("%s (%d failed so far; calls without an answer from rtpengine are "
                      "billed from the 200 OK)", message, self.counters["rtpengine_errors"])

    def __repr__(self) -> str:  # pragma: no cover - diagnostics
        return f"RtpengineSource({self.address!r}, awaiting {len(self._due)})"

