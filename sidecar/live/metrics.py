"""Prometheus metrics and readiness of the live sidecar (``sidecar run``).

What the hot path moves is counted by prometheus_client objects whose labelled children
are bound once per label value (an offer costs one increment and one histogram
observation); what derives from state (live calls, reserved credit, evapi, the store
writer, the capture) is read when scraped, by a collector, from memory only: a scrape
never queries the store. Every metric lives in this object's own registry, not in
prometheus_client's global one.

Label values are few and fixed by the code or the operator: decisions, SIP codes the
sidecar answers, limit and fraud rule names, FAS verdicts, CDR dispositions, currencies,
routes (the carriers set up for least-cost routing, else the next hop Kamailio's
configuration names) on FAS verdicts, and the account on fraud events (rare: only the
accounts a rule tripped on). Never a number, a call or anything else from the wire.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..charging.model import Disposition
from .gcwatch import GcWatch
from .loopwatch import LoopWatch
from .memory import python_allocated_blocks, sqlite_memory_bytes

if TYPE_CHECKING:
    from .service import Sidecar

#: Authorization latency (Kamailio's offer timestamp -> answer sent), seconds: Kamailio
#: waits ``AUTH_TIMEOUT`` (2 s by default) and the sidecar sheds past ``shed_after_ms``.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.1, 0.25, 0.5, 1.0, 2.0)
#: How late a call is cut after its paid time (``dlg.end_dlg`` sent), seconds.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The sidecar's metrics and readiness; :meth:`attach` the running sidecar."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._offers = Counter(
            "sidecar_offers", "Offers (INVITEs) answered, by decision (allow, reject, busy) "
            "and SIP code", ["decision", "code"], registry=r)
        self._offer_children: dict[tuple[bool, int], Counter] = {}
        self._busy = self._offers.labels("busy", "503")
        self.auth_latency = Histogram(
            "sidecar_auth_latency_seconds", "Authorization latency: Kamailio's timestamp on "
            "the offer to the answer sent (queueing in Kamailio and the socket included)",
            buckets=LATENCY_BUCKETS, registry=r)
        #: Of the observed latency, the microseconds spent inside the sidecar (a plain
        #: int: exposed as sidecar_auth_sidecar_seconds_total when scraped).
        self.auth_sidecar_us = 0
        self.cutoff_lag = Histogram(
            "sidecar_cutoff_lag_seconds", "Calls cut by the sidecar: dlg.end_dlg sent this "
            "long after the paid time ran out", buckets=LAG_BUCKETS, registry=r)
        self._cdrs = Counter("sidecar_cdrs", "CDRs written, by disposition",
                             ["disposition"], registry=r)
        self._fas = Counter("sidecar_fas_verdicts", "False Answer Supervision verdicts on "
                            "written CDRs, by verdict and route (the carrier or next hop)",
                            ["verdict", "route"], registry=r)
        self._fraud = Counter("sidecar_fraud_events", "Fraud rules tripped, by rule, action "
                              "(alert, block, suspend) and account", ["rule", "action",
                                                                      "account"],
                              registry=r)
        self._children: dict[tuple[str, ...], Counter] = {}
        for d in Disposition:  # every disposition shown from the start, at 0
            self._child(self._cdrs, "cdr", d.value)
        self._offer_children[(True, 200)] = self._offers.labels("allow", "200")
        self.sidecar: Sidecar | None = None
        r.register(_StateCollector(self))
        #: Collector pauses (installed by ``sidecar run``: a process-wide hook).
        self.gc: GcWatch | None = None
        #: The event loop's lateness (started by ``sidecar run`` on its loop).
        self.loop: LoopWatch | None = None

    def watch_gc(self) -> GcWatch:
        """Time this process's garbage collections into ``sidecar_gc_pause_seconds``."""
        if self.gc is None:
            self.gc = GcWatch(self.registry)
        return self.gc

    def watch_loop(self) -> LoopWatch:
        """Time the running event loop's lateness into ``sidecar_event_loop_lag_seconds``
        (call on the loop; :meth:`LoopWatch.close` stops it)."""
        if self.loop is None:
            self.loop = LoopWatch(self.registry)
            self.loop.start()
        return self.loop

    def attach(self, sidecar: Sidecar | None) -> None:
        """The sidecar serving Kamailio now (None: none, a standby or stopping)."""
        self.sidecar = sidecar

    # --- events (the loop's thread) --------------------------------------------------
    def offered(self, allow: bool, code: int, total_us: int | None, local_us: int) -> None:
        """An offer was answered (``total_us``: since Kamailio's timestamp, if it had one;
        ``local_us``: inside the sidecar)."""
        child = self._offer_children.get((allow, code))
        if child is None:
            child = self._offers.labels("allow" if allow else "reject", str(code))
            self._offer_children[(allow, code)] = child
        child.inc()
        if total_us is not None:
            self.auth_latency.observe(total_us / 1e6)
            self.auth_sidecar_us += local_us

    def shed(self) -> None:
        """An offer was answered busy (503) without being decided: overload."""
        self._busy.inc()

    def cdr(self, disposition: str, fas_verdict: str, route: str = "") -> None:
        self._child(self._cdrs, "cdr", disposition).inc()
        if fas_verdict:
            self._child(self._fas, "fas", fas_verdict, route).inc()

    def fraud(self, rule: str, action: str, account: str = "") -> None:
        self._child(self._fraud, "fraud", rule, action, account).inc()

    def cut_off(self, lag_ms: int) -> None:
        """A call was ended ``lag_ms`` after its deadline (``dlg.end_dlg`` sent)."""
        self.cutoff_lag.observe(max(0, lag_ms) / 1000)

    def _child(self, parent: Counter, kind: str, *values: str) -> Counter:
        key = (kind, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = parent.labels(*values)
        return child

    # --- reads ------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The text exposition of every metric (run it on the loop: it reads its state)."""
        return generate_latest(self.registry)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready: this process leads its node (a standby is not), its store is loaded and
        takes writes, and evapi is connected to Kamailio. With what is not ready."""
        s = self.sidecar
        leader = s is not None
        store = s is not None and s.store_loaded and not s.writer.down
        evapi = s is not None and s.evapi.connected.is_set()
        ready = leader and store and evapi
        doc: dict[str, object] = {"ready": ready, "leader": leader, "evapi": evapi,
                                  "store": store}
        if not ready:
            doc["not_ready"] = [name for name, ok in (("leader", leader), ("store", store),
                                                      ("evapi", evapi)) if not ok]
        if s is not None and s.writer.down and s.writer.error:
            doc["store_error"] = s.writer.error
        return ready, doc


class _StateCollector:
    """Gauges and counters read from the sidecar's memory at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        return self._families(self.metrics.sidecar)

    def _families(self, s: Sidecar | None) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        ready = s is not None and self.metrics.readiness()[0]
        sqlite_bytes = sqlite_memory_bytes()
        if sqlite_bytes is not None:
            yield gauge("sidecar_sqlite_memory_bytes", "Memory SQLite has allocated in this "
                        "process (page caches, mostly: part of the resident size that "
                        "grows until the caches are full)", sqlite_bytes)
        yield gauge("sidecar_python_allocated_blocks", "Memory blocks the interpreter "
                    "holds (objects): flat once the load is steady", python_allocated_blocks())
        yield counter("sidecar_auth_sidecar_seconds", "Of sidecar_auth_latency_seconds_sum, "
                      "the time spent inside the sidecar (offer read -> answer sent)",
                      self.metrics.auth_sidecar_us / 1e6)
        yield gauge("sidecar_leader", "1 while this process is the node's active sidecar "
                    "(0: a standby)", int(s is not None))
        yield gauge("sidecar_ready", "1 while /health/ready answers 200", int(ready))
        sessions = s.charger.sessions if s is not None else {}
        yield gauge("sidecar_live_calls", "Calls under charging control (offered, ringing "
                    "or answered)", len(sessions))
        yield gauge("sidecar_live_answered_calls", "Answered calls under charging control",
                    sum(1 for c in sessions.values() if c.answered_ms is not None))
        reserved = GaugeMetricFamily("sidecar_reserved_credit", "Credit reserved (held) "
                                     "over the accounts in memory, per currency",
                                     labels=["currency"])
        if s is not None:
            for currency, held in sorted(s.book.held_by_currency().items()):
                reserved.add_metric([currency], float(held))
        yield reserved

        counters = s.counters if s is not None else {}
        evapi = s.evapi if s is not None else None
        connects = evapi.connects if evapi is not None else 0
        yield gauge("sidecar_evapi_connected", "1 while connected to Kamailio's evapi",
                    int(evapi is not None and evapi.connected.is_set()))
        yield counter("sidecar_evapi_connects", "Connections made to Kamailio's evapi",
                      connects)
        yield counter("sidecar_evapi_reconnects", "Connections to evapi after the first",
                      max(0, connects - 1))
        yield counter("sidecar_evapi_bad_messages", "evapi messages ignored: malformed "
                      "frames, unknown or invalid events",
                      counters.get("bad_events", 0)
                      + (evapi.framing_errors if evapi is not None else 0))
        refusals = CounterMetricFamily("sidecar_refusals", "Offers refused by a usage "
                                       "limit or a fraud state, by limit", labels=["limit"])
        for key, n in sorted(counters.items()):
            if key.startswith("refused_"):
                refusals.add_metric([key.removeprefix("refused_")], n)
        yield refusals
        yield counter("sidecar_end_calls", "dlg.end_dlg requests Kamailio accepted (calls "
                      "the sidecar ended)", counters.get("ended_by_rpc", 0))
        yield counter("sidecar_end_call_failures", "dlg.end_dlg requests that failed (RPC "
                      "errors, each retried)", counters.get("rpc_errors", 0))
        yield counter("sidecar_end_call_retries", "dlg.end_dlg requests sent again after a "
                      "failure", counters.get("rpc_retries", 0))
        yield counter("sidecar_end_call_gave_up", "Calls the sidecar gave up ending after "
                      "every retry", counters.get("rpc_gave_up", 0))

        w = s.writer if s is not None else None
        yield gauge("sidecar_store_down", "1 while the store does not take writes",
                    int(w is not None and w.down))
        yield gauge("sidecar_store_pending_commands", "Store commands sent by the charging "
                    "core and not answered yet", s.charger.inflight() if s is not None else 0)
        yield gauge("sidecar_store_queue_depth", "Store commands queued for the writer, not "
                    "yet in a batch", w.queued() if w is not None else 0)
        yield gauge("sidecar_store_journal_depth", "Settlements, top-ups and fraud events "
                    "waiting in the journal for the store", w.journal_depth if w is not None else 0)
        yield counter("sidecar_store_batches_committed", "Batches of store commands "
                      "committed", (w.batches - w.failed_batches) if w is not None else 0)
        yield counter("sidecar_store_commit_failures", "Batches the store could not commit "
                      "(rolled back; settlements journaled)",
                      w.failed_batches if w is not None else 0)

        router = s.router if s is not None else None
        if router is not None and router.active:
            now_ms = int(time.time() * 1000)
            calls = GaugeMetricFamily("sidecar_carrier_calls", "Least-cost routing: calls "
                                      "each carrier has now (sent the INVITE or answered)",
                                      labels=["carrier"])
            pulled = GaugeMetricFamily("sidecar_carrier_pulled", "1 while route health has "
                                       "the carrier out of the route lists",
                                       labels=["carrier"])
            asr = GaugeMetricFamily("sidecar_carrier_asr", "Answered / tries over the route "
                                    "health window (absent before the first try)",
                                    labels=["carrier"])
            fas = GaugeMetricFamily("sidecar_carrier_fas_score", "FAS score (0-100) over "
                                    "the route health window, once judged",
                                    labels=["carrier"])
            for name, st in router.statistics(now_ms).items():
                calls.add_metric([name], float(str(st["calls"])))
                pulled.add_metric([name], float(bool(st["pulled"])))
                if st["asr"] is not None:
                    asr.add_metric([name], float(str(st["asr"])))
                if st["fas_score"] is not None:
                    fas.add_metric([name], float(str(st["fas_score"])))
            yield from (calls, pulled, asr, fas)

        pump = s.pump if s is not None else None
        if pump is not None:
            yield counter("sidecar_capture_packets", "UDP packets from the capture handed "
                          "to media supervision", pump.packets)
            kernel = pump.kernel_stats()
            if kernel is not None:
                yield counter("sidecar_capture_kernel_packets", "Packets the kernel passed "
                              "the capture socket's filter", kernel[0])
                yield counter("sidecar_capture_drops", "Packets the kernel dropped: the "
                              "capture ring was full", kernel[1])
