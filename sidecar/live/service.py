"""The live sidecar: Kamailio's events in, the charging core's decisions out.

    evapi "offer"   -> CallControl (Charger.authorize) -> evapi "auth" (allow N s / reject)
    evapi "early"   -> ringing time; early-media SDP registered for the capture
    evapi "answer"  -> Charger.answer    -> first chunk reserved; media grace opens
    AF_PACKET RTP   -> MediaSupervisor   -> answer confirmed by media, FAS evidence
    (or rtpengine's counters, ng query: source = "rtpengine", live/rtpengine_source.py)
    credit timer    -> CallControl.tick  -> EndCall -> JSON-RPC dlg.end_dlg (retried)
    evapi "end"     -> media verdict + Charger.end -> CDR written once (FAS credited)
    (re)connect     -> events Kamailio kept while no sidecar was connected (replayed)
                    -> dlg.list          -> lost calls settled, running calls adopted

The charging core decides from memory; its store commands go to a writer thread
(``store/writer.py``) that commits them in batches and answers through the loop, so the
loop never waits on the disk. Offers that waited longer than ``shed_after_ms`` in
Kamailio's queue and ours get a fast 503 instead of a late answer. Rejections and CDRs
are logged with their reasons (allowed offers at debug level).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections import Counter, deque
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..charging import (
    Action,
    Alert,
    AuthDecision,
    CdrWritten,
    Charger,
    ChargingConfig,
    EndCall,
    PlanRates,
    Recharge,
)
from ..charging.book import AccountBook
from ..charging.commands import BatchResult
from ..config import Config, port_range
from ..kamailio.evapi import EvapiClient
from ..kamailio.events import End, Event, EventError, Failed, Offer, parse_event
from ..kamailio.rpc import KamailioRpc, RpcError
from ..rating import RateTable
from ..routing.health import HealthPolicy
from ..routing.router import Router, RouterConfig
from ..routing.select import Margin, Order, RoutingPolicy
from ..store.decks import PlanLoader
from ..store.journal import default_journal
from ..store.writer import Snapshot, StoreWriter, WriterEvent
from ..supervision.calls import CallControl, ControlConfig
from ..supervision.media import MediaConfig, MediaSupervisor
from .media import MediaPump
from .metrics import Metrics
from .notify import Notifier, run_recharge
from .rtpengine_source import RtpengineSource
from .timer import CreditTimer, wall_ms

log = logging.getLogger("sidecar.live")

END_RETRIES = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
SAMPLES = 20_000
#: The time constant (us, Kamailio's clock) of the offers' average wait that decides
#: whether lateness is sustained (``Sidecar._late``).
SHED_WINDOW_US = 200_000


class Sidecar:
    """One live sidecar process."""

    def __init__(self, config: Config, db: str | Path, plans: PlanLoader | None = None,
                 metrics: Metrics | None = None) -> None:
        self.config = config
        self.db = db
        self.book = AccountBook()
        self.plan_map: dict[str, PlanRates] = {}
        self.writer = StoreWriter(db, config.journal or default_journal(db, config.node),
                                  plans or PlanLoader(), self._from_writer,
                                  commit_delay_ms=config.commit_delay_ms, node=config.node,
                                  lease_ms=config.lease_s * 1000)
        self.charger = Charger(self.writer, self._plan, ChargingConfig(
            renew_lead_ms=config.renew_lead_ms, min_chunk_seconds=config.min_chunk_seconds,
            float_chunks=config.float_chunks, float_low_chunks=config.float_low_chunks,
            float_idle_ms=config.float_idle_ms), book=self.book)
        self.router = Router(router_config(config))  # least-cost routing
        self.charger.router = self.router
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._stored_calls: list[dict[str, object]] = []  # the store's live calls at start
        self._unsupervised: set[str] = set()  # adopted from the store, not yet reconciled
        self.media: MediaSupervisor | None = None
        if config.media_enabled:
            self.media = MediaSupervisor(MediaConfig(
                grace_ms=config.media_grace_ms, silence_share=config.media_silence_share,
                end_without_media_ms=config.media_end_without_media_s * 1000))
        self.control = CallControl(self.charger, self.media,
                                   ControlConfig(enforce=config.media_enforce))
        self.pump: MediaPump | None = None
        self.rtpe: RtpengineSource | None = None  # [media] source = "rtpengine"
        self.counters: Counter[str] = Counter()
        if self.media is not None and config.media_source == "rtpengine":
            self.rtpe = RtpengineSource(self.control, self.media,
                                        address=config.media_rtpengine,
                                        poll_ms=config.media_rtpengine_poll_ms,
                                        max_qps=config.media_rtpengine_max_qps,
                                        on_actions=self.on_actions, counters=self.counters)
        elif self.media is not None:
            self.pump = MediaPump(self.control, self.media, interface=config.media_interface,
                                  peer=config.media_peer,
                                  port_range=port_range(config.media_ports),
                                  buffer_bytes=config.media_buffer_mb << 20,
                                  on_actions=self.on_actions)
        self.evapi = EvapiClient(config.evapi_host, config.evapi_port, self.on_message,
                                 self.reconcile)
        self.rpc = KamailioRpc(config.rpc_socket, config.rpc_timeout)
        self.timer = CreditTimer(self.control, self.on_actions)
        self.notifier = Notifier(config.alert_webhook, config.recharge_command,
                                 config.recharge_webhook)
        self.dialogs: dict[str, tuple[int, int]] = {}  # call_ref -> (h_entry, h_id)
        # Authorization latency samples in microseconds: Kamailio's offer timestamp to
        # our reply written, and our own share of it (message in -> reply out).
        # (The latest 20,000 of each: enough for percentiles, a bounded memory.)
        self.auth_total_us: deque[int] = deque(maxlen=SAMPLES)
        self.auth_local_us: deque[int] = deque(maxlen=SAMPLES)
        self.shed_us: deque[int] = deque(maxlen=SAMPLES)  # offers answered busy
        self._wait_avg = 0.0  # moving average of offers' waits (ms), over SHED_WINDOW_US
        self._wait_ts = 0  # Kamailio's timestamp of the newest offer averaged (us)
        self._tasks: set[asyncio.Task[Any]] = set()
        # Prometheus metrics (served by ``sidecar run``): counted here, read on scrape.
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.attach(self)

    @property
    def store_loaded(self) -> bool:
        """The store's first snapshot (accounts, plans) is in memory."""
        return self._ready.is_set()

    def apply_config(self, config: Config) -> None:
        """Run on with a reloaded configuration (SIGHUP; ``live/reload.py``): the keys
        that can change under running calls take effect from now on (webhooks and the
        recharge command, shedding, the RPC timeout, chunking, media thresholds); the
        caller passes the others unchanged (they need a restart)."""
        self.config = config
        self.notifier.alert_webhook = config.alert_webhook
        self.notifier.recharge_command = tuple(config.recharge_command)
        self.notifier.recharge_webhook = config.recharge_webhook
        self.rpc.timeout = config.rpc_timeout
        self.charger.config = dataclasses.replace(
            self.charger.config, renew_lead_ms=config.renew_lead_ms,
            min_chunk_seconds=config.min_chunk_seconds, float_chunks=config.float_chunks,
            float_low_chunks=config.float_low_chunks, float_idle_ms=config.float_idle_ms)
        self.router.reconfigure(router_config(config))
        if self.media is not None:
            self.media.config = dataclasses.replace(
                self.media.config, grace_ms=config.media_grace_ms,
                silence_share=config.media_silence_share,
                end_without_media_ms=config.media_end_without_media_s * 1000)

    # --- lifecycle -------------------------------------------------------------
    async def run(self) -> None:
        """Run until cancelled."""
        self._loop = asyncio.get_running_loop()
        self.writer.start()
        try:
            while not self._ready.is_set():  # the store's first snapshot: accounts, plans
                if self.writer.start_error is not None:
                    raise StoreStartError(str(self.writer.start_error))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self._ready.wait()
            self._adopt_stored()
            await self.rpc.open()
            if self.pump is not None:
                self.pump.start()  # before evapi: media can beat the answer event
            if self.rtpe is not None:
                self.rtpe.start()
            self.timer.start()
            await self.evapi.run()
        finally:
            await self.timer.stop()
            if self.pump is not None:
                self.pump.stop()
            if self.rtpe is not None:
                self.rtpe.stop()
            for t in list(self._tasks):
                t.cancel()
            self.rpc.close()
            if self._ready.is_set():  # what floats hold undrawn goes back to the resellers
                self.charger.release_floats(wall_ms())
            await asyncio.get_running_loop().run_in_executor(None, self.writer.stop)
            pending = self.charger.inflight()
            if pending and not self.writer.stopped:
                log.warning("%d store command(s) unanswered at shutdown", pending)
            journaled = self.writer.journal_depth  # counted: the file is not read here
            if journaled:
                log.warning("%d settlement(s)/top-up(s)/fraud event(s) wait in the journal "
                            "%s: applied when the store takes writes again (at the next "
                            "start at the latest)", journaled, self.writer.journal.path)

    # --- the store edge ------------------------------------------------------------
    def _plan(self, name: str) -> PlanRates:
        rates = self.plan_map.get(name)
        if rates is None:  # not loaded (yet): no line rates anything, the call gets 404
            log.error("rate plan %s is not loaded", name)
            rates = PlanRates(RateTable([], ""), 60)
        return rates

    def _from_writer(self, ev: WriterEvent) -> None:
        """Called in the writer thread: hand the event to the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_store, ev)

    def _on_store(self, ev: WriterEvent) -> None:
        if isinstance(ev, BatchResult):
            self.on_actions(self.charger.on_results(ev, wall_ms()))
            self.timer.poke()
            return
        assert isinstance(ev, Snapshot)
        if ev.complete:
            self.book.load(ev.accounts, ev.sip)
            self.charger.guard.elsewhere = ev.elsewhere
        self.plan_map.update(ev.plans)
        if ev.fx is not None:
            self.charger.fx = ev.fx
        if ev.bundles is not None or ev.bundle_usage is not None:
            self.charger.bundles.load(ev.bundles, ev.bundle_usage)
        if ev.carriers is not None:
            said = self.router.set_book(ev.carriers, wall_ms())
            names = [d.carrier.name for d in ev.carriers.decks]
            log.info("carriers %s: %s", "loaded" if ev.first else "changed",
                     ", ".join(names) if names else "none (calls go where Kamailio sends "
                     "them)")
            for line in said:
                log.info("route health: %s", line)
        if ev.plans and not ev.first:
            log.info("rate plans reloaded: %s", ", ".join(sorted(ev.plans)))
        if ev.first:
            if ev.floats:  # this node's floats on resellers, as a restart finds them
                self.charger.load_floats(ev.floats, wall_ms())
            self._stored_calls = ev.live_calls
            for (account, country), last_ms in ev.called.items():
                self.charger.guard.seed(account, country, last_ms)
            log.info("store loaded: %d accounts, %d plans, %d live calls", len(ev.accounts),
                     len(ev.plans), len(ev.live_calls))
            self._ready.set()

    def _adopt_stored(self) -> None:
        """Calls the store holds reservations for (the sidecar restarted): taken in hand
        at once, so events Kamailio kept for them settle them at their real times; credit
        control resumes when Kamailio confirms they are still up (reconcile)."""
        now = wall_ms()
        for row in self._stored_calls:
            ref = str(row["call_ref"])
            self.on_actions(self.charger.adopt(
                ref, account=str(row["account"]), number=str(row["number"]), caller="",
                now_ms=now, answered_ms=int(str(row["answered_ms"])),
                paid_seconds=int(str(row["paid_seconds"])),
                reserved=Decimal(str(row["reserved"])), supervise=False,
                bundle=str(row.get("bundle") or ""), bundle_held=int(str(
                    row.get("bundle_held") or 0)),
                bundle_period=None if row.get("bundle_period") is None else int(str(
                    row["bundle_period"])),
                tier_holds={str(a): Decimal(str(v)) for a, v in json.loads(
                    str(row.get("tier_holds") or "{}")).items()},
                tier_draws={str(a): Decimal(str(v)) for a, v in json.loads(
                    str(row.get("tier_draws") or "{}")).items()}))
            if ref in self.charger.sessions:
                self._unsupervised.add(ref)
        self._stored_calls = []

    def latency_summary(self) -> str:
        """Authorization latency percentiles, for the log and the benchmark. The first
        figure counts from Kamailio's timestamp on the offer, so time spent queued (in
        Kamailio, the socket, or behind other events) is included."""
        def pct(xs: deque[int], q: float) -> float:
            s = sorted(xs)
            return s[min(len(s) - 1, int(len(s) * q))] / 1000 if s else 0.0
        t, loc, shed = self.auth_total_us, self.auth_local_us, self.shed_us
        out = (f"auth latency over {len(t)} offers: Kamailio offer -> reply sent "
               f"p50 {pct(t, 0.5):.2f} ms p99 {pct(t, 0.99):.2f} ms; in the sidecar "
               f"p50 {pct(loc, 0.5):.2f} ms p99 {pct(loc, 0.99):.2f} ms")
        if shed:
            out += (f"; {self.counters['shed']} offers answered busy (overload): "
                    f"p99 {pct(shed, 0.99):.2f} ms")
        refused = sorted((k.removeprefix("refused_"), n) for k, n in self.counters.items()
                         if k.startswith("refused_"))
        if refused:
            out += "; refused by limits: " + ", ".join(f"{k} {n}" for k, n in refused)
        return out

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- events from Kamailio ----------------------------------------------------
    def on_message(self, payload: bytes) -> None:
        """One evapi message. Malformed or unknown messages are logged and counted."""
        try:
            ev = parse_event(payload)
        except EventError as exc:
            self.counters["bad_events"] += 1
            log.error("ignored evapi message (%s): %r", exc, payload[:200])
            return
        self.counters[type(ev).__name__.lower()] += 1
        if (self.rtpe is not None and isinstance(ev, End)
                and ev.dialog.call_id in self.control.awaiting_media()):
            self._spawn(self._end_after_count(ev))  # rtpengine's last count first
            return
        try:
            self._dispatch(ev)
        except Exception:  # one bad call must not stop the others being charged
            self.counters["errors"] += 1
            log.exception("failed to handle %s for %s", type(ev).__name__, ev.dialog.call_id)
        self.timer.poke()

    async def _end_after_count(self, ev: End) -> None:
        """The end of a call whose callee media rtpengine has not shown yet: one last
        query (at most its timeout), then the end as it came."""
        assert self.rtpe is not None
        await self.rtpe.final(ev.dialog.call_id, ev.dialog.ts_ms or wall_ms())
        try:
            self._dispatch(ev)
        except Exception:
            self.counters["errors"] += 1
            log.exception("failed to handle End for %s", ev.dialog.call_id)
        self.timer.poke()

    def _dispatch(self, ev: Event) -> None:
        received_us = time.time_ns() // 1000
        d = ev.dialog
        ref = d.call_id
        now = d.ts_ms or wall_ms()
        if isinstance(ev, Offer) and self._late(ev, received_us):
            return
        if d.h_entry or d.h_id:
            self.dialogs[ref] = (d.h_entry, d.h_id)
        decision, actions = self.control.on_event(ev, now)
        if isinstance(ev, Offer) and decision is not None:
            reply: dict[str, object] = {"event": "auth", "tindex": ev.tindex,
                                        "tlabel": ev.tlabel, "call_id": ref}
            if decision.allow:
                reply |= {"action": "allow", "max_duration": decision.max_seconds,
                          "account": decision.account or ""}
                if decision.routes:  # least-cost routing: the carriers to try, in order
                    reply["routes"] = [{"carrier": r.carrier, "uri": r.uri}
                                       for r in decision.routes]
            else:
                reply |= {"action": "reject", "code": decision.code,
                          "reason": decision.phrase or _reason_phrase(decision.code)}
                if decision.limit:  # a usage limit or a fraud block: counted by name
                    self.counters[f"refused_{decision.limit}"] += 1
            if not self.evapi.send(reply):
                log.error("could not answer offer %s: evapi not connected", ref,
                          extra={"call": ref, "node": self.config.node})
            sent_us = time.time_ns() // 1000
            local_us = sent_us - received_us
            self.auth_local_us.append(local_us)
            total_us = sent_us - d.ts_us if d.ts_us else None
            if total_us is not None:
                self.auth_total_us.append(total_us)
            self.metrics.offered(decision.allow, decision.code, total_us, local_us)
            # Logged once answered (the answer never waits for a log line): a refusal at
            # info, an allow at debug; nothing is built for a line that is not written.
            if log.isEnabledFor(logging.DEBUG if decision.allow else logging.INFO):
                self._log_decision(ev, decision, local_us if total_us is None else total_us)
            if self.pump is not None and decision.allow:
                self.pump.flows_changed()
        elif self.pump is not None:
            self.pump.flows_changed()
        if isinstance(ev, End | Failed):
            self.dialogs.pop(ref, None)
        self.on_actions(actions)

    def _log_decision(self, ev: Offer, decision: AuthDecision, latency_us: int) -> None:
        """The decision's log line, with its fields (``sidecar.logs``); ``latency_us``
        from Kamailio's timestamp on the offer to the answer sent (else from its
        arrival)."""
        ref = ev.dialog.call_id
        fields: dict[str, object] = {
            "call": ref, "account": decision.account, "code": decision.code,
            "latency_ms": round(latency_us / 1000, 3), "node": self.config.node}
        if decision.allow:
            fields["decision"] = "allow"
            log.debug("offer %s from=%s to=%s -> allow %ss account=%s", ref, ev.from_user,
                      ev.ruri_user, decision.max_seconds, decision.account, extra=fields)
        else:
            fields["decision"], fields["reason"] = "reject", decision.reason
            log.info("offer %s from=%s to=%s -> reject %s (%s)", ref, ev.from_user,
                     ev.ruri_user, decision.code, decision.reason, extra=fields)

    def _late(self, ev: Offer, received_us: int) -> bool:
        """Overload: an offer that already waited longer than ``shed_after_ms`` (in
        Kamailio's queue and ours, by Kamailio's own timestamp) while offers keep
        waiting is answered ``busy`` at once, at a fraction of the cost of deciding it,
        so the offers behind it are answered in time instead of every one of them too
        late. Kamailio then does what it does when the sidecar is silent: 503
        (fail-closed) or relay (``FAIL_OPEN``)."""
        limit = self.config.shed_after_ms
        ts_us = ev.dialog.ts_us
        if not limit or not ts_us:
            return False
        waited_ms = (received_us - ts_us) / 1000
        if not 0 <= waited_ms < 60_000:  # beyond a minute: clocks differ, do not judge
            return False
        # Shed only under sustained lateness: the waits' moving average over Kamailio's
        # time (SHED_WINDOW_US: offers sent over the last ~200 ms weigh most, however
        # many; at least ~7 offers at low rates) past the limit too. Not for offers held
        # up by a burst or a stall of a busy machine: those are still decided, late,
        # rather than refused (and under FAIL_OPEN relayed unbilled); Kamailio's
        # overload control sheds sustained overload upstream before this (the answers'
        # lateness raises its level).
        last = self._wait_ts
        if ts_us > last:
            self._wait_ts = ts_us
            if last:
                # (at most a tenth per offer: after a quiet minute, one late offer
                # alone is no sustained lateness)
                w = min(0.1, 1.0 - math.exp((last - ts_us) / SHED_WINDOW_US))
                self._wait_avg += (min(waited_ms, 2 * limit) - self._wait_avg) * w
        if waited_ms <= limit or self._wait_avg <= limit:
            return False
        self.counters["shed"] += 1
        if self.counters["shed"] % 1000 == 1:
            log.warning("overload: offer %s waited %.0f ms (limit %d ms): 503; %d shed so far",
                        ev.dialog.call_id, waited_ms, limit, self.counters["shed"])
        self.evapi.send({"event": "auth", "tindex": ev.tindex, "tlabel": ev.tlabel,
                         "call_id": ev.dialog.call_id, "action": "busy", "code": 503,
                         "reason": "Service Unavailable"})
        self.shed_us.append(time.time_ns() // 1000 - ts_us)
        self.metrics.shed()
        return True

    # --- decisions out -------------------------------------------------------------
    def on_actions(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, EndCall):
                self._spawn(self.end_call(a))
            elif isinstance(a, Alert):
                if a.kind == "fraud":
                    self.metrics.fraud(a.data.get("rule", ""), a.data.get("action", ""),
                                       a.account)
                self._spawn(self.notifier.alert(a))
            elif isinstance(a, Recharge):
                acc = self.book.get(a.account, a.at_ms)
                self._spawn(run_recharge(
                    self.notifier, a, acc.currency if acc else "",
                    lambda code, amount, note: self._topup(code, amount, note),
                    self.charger.recharged))
            elif isinstance(a, CdrWritten):
                c = a.cdr
                self.metrics.cdr(c.disposition.value, c.fas_verdict, c.route)
                # An ordinary CDR is in the store; the log tells what needs a look (a FAS
                # verdict, money written off, a call the sidecar ended) at info level.
                notable = bool(c.fas_verdict or c.written_off or (c.end_reason
                               and c.ended_by == "proxy"))
                level = logging.INFO if notable else logging.DEBUG
                if log.isEnabledFor(level):
                    why = [c.end_reason, f"FAS {c.fas_verdict}" if c.fas_verdict else "",
                           f"{c.written_off} written off" if c.written_off else ""]
                    log.log(level,
                            "cdr %s account=%s %s duration=%sms billed=%ss cost=%s "
                            "charged=%s%s%s", c.call_ref, c.account, c.disposition.value,
                            c.duration_ms, c.billed_seconds, c.cost, c.charged,
                            f" ended_by={c.ended_by} ({c.end_reason})" if c.ended_by else "",
                            f" FAS {c.fas_verdict}: {c.fas_reasons} credited={c.credited}"
                            if c.fas_verdict else "",
                            extra={"call": c.call_ref, "account": c.account, "decision": "cdr",
                                   "code": c.sip_code, "reason": "; ".join(w for w in why if w)
                                   or c.disposition.value, "node": self.config.node})

    def _topup(self, code: str, amount: Decimal, note: str) -> None:
        self.charger.topup(code, amount, wall_ms(), note)

    async def end_call(self, a: EndCall) -> None:
        """Ask Kamailio to end the dialog; retry with backoff until it is gone."""
        for delay in (0.0, *END_RETRIES):
            if delay:
                await asyncio.sleep(delay)
            if a.call_ref not in self.charger.sessions:
                return  # the end event arrived: done
            h = self.dialogs.get(a.call_ref)
            if h is None:
                log.error("cannot end %s: no dialog id known", a.call_ref)
                continue
            if delay:
                self.counters["rpc_retries"] += 1
            session = self.charger.sessions.get(a.call_ref)  # gone once the end arrives
            try:
                await self.rpc.end_dialog(*h)
                self.counters["ended_by_rpc"] += 1
                lag_ms = wall_ms() - a.at_ms
                self.metrics.cut_off(lag_ms)
                if log.isEnabledFor(logging.INFO):
                    log.info("end %s (%s): dlg.end_dlg %s:%s sent %d ms after the deadline",
                             a.call_ref, a.reason, h[0], h[1], lag_ms, extra={
                                 "call": a.call_ref,
                                 "account": session.account if session else None,
                                 "decision": "end", "reason": a.reason, "latency_ms": lag_ms,
                                 "node": self.config.node})
                return
            except RpcError as exc:
                if exc.code == 404:  # Kamailio no longer has it: the end event was lost
                    log.warning("end %s: dialog already gone; settling", a.call_ref,
                                extra={"call": a.call_ref, "decision": "end",
                                       "reason": a.reason, "node": self.config.node})
                    self.on_actions(self.control.end_lost(a.call_ref, wall_ms(), "dialog gone"))
                    return
                self.counters["rpc_errors"] += 1
                log.error("end %s: %s (retrying)", a.call_ref, exc,
                          extra={"call": a.call_ref, "node": self.config.node})
        self.counters["rpc_gave_up"] += 1
        log.error("gave up ending %s after %d tries", a.call_ref, len(END_RETRIES) + 1,
                  extra={"call": a.call_ref, "decision": "end", "reason": a.reason,
                         "node": self.config.node})

    # --- reconciliation ------------------------------------------------------------
    async def reconcile(self) -> None:
        """On every (re)connect: events were dropped while disconnected. Settle calls
        Kamailio no longer has; adopt confirmed dialogs the sidecar is not tracking."""
        try:
            dialogs = await self.rpc.list_dialogs()
        except RpcError as exc:
            log.error("reconcile: dlg.list failed: %s", exc)
            return
        now = wall_ms()
        present: dict[str, dict[str, Any]] = {}
        for d in dialogs:
            cid = str(d.get("call-id") or d.get("callid") or "")
            # State 5 (deleted) lingers in dlg.list for a while after the BYE: it has ended.
            if cid and _state(d) < 5:
                present[cid] = d
                with contextlib.suppress(TypeError, ValueError):
                    self.dialogs[cid] = (int(d["h_entry"]), int(d["h_id"]))
        # Calls we track that Kamailio no longer has (their end was not replayed).
        settled = adopted = 0
        for ref in list(self.charger.sessions):
            if ref not in present:
                self._unsupervised.discard(ref)
                settled += 1
                self.on_actions(self.control.end_lost(ref, now, "lost while disconnected"))
        # Calls adopted from the store at start that are still up: credit control resumes.
        for ref in sorted(self._unsupervised):
            adopted += 1
            self.on_actions(self.charger.resume(ref, now))
        self._unsupervised.clear()
        # Confirmed dialogs nobody tracks: adopt them from their dialog variables.
        for ref, d in present.items():
            if ref in self.charger.sessions or _state(d) != 4:
                continue
            v = _dlg_vars(d)
            account = v.get("ac", "")
            if not account:
                log.error("reconcile: dialog %s has no account variable; not charged", ref)
                continue
            start = int(d.get("start_ts", 0) or 0) * 1000 or now
            self.on_actions(self.charger.adopt(ref, account=account, number=v.get("callee", ""),
                                               caller=v.get("caller", ""), now_ms=now,
                                               answered_ms=start))
            adopted_session = self.charger.sessions.get(ref)
            if adopted_session is not None and v.get("route"):
                adopted_session.meta["route"] = v["route"]  # the carrier (buy cost at the end)
            adopted += 1
        self.timer.poke()
        log.info("reconciled with Kamailio: %d dialogs, %d adopted, %d settled as lost",
                 len(present), adopted, settled)


def router_config(config: Config) -> RouterConfig:
    """Least-cost routing's settings from the ``[routing]`` keys."""
    return RouterConfig(
        policy=RoutingPolicy(
            margin=Margin(Decimal(config.routing_min_margin_per_minute),
                          Decimal(config.routing_min_margin_percent)),
            order=Order(config.routing_order),
            reference_seconds=config.routing_reference_seconds,
            max_routes=config.routing_max_routes or None),
        health=HealthPolicy(
            window_ms=config.routing_health_window_s * 1000,
            min_attempts=config.routing_health_min_attempts,
            max_fas_score=config.routing_health_max_fas_score,
            min_asr=Decimal(str(config.routing_health_min_asr)),
            cooldown_ms=config.routing_health_cooldown_s * 1000),
        no_route_code=config.routing_no_route_code)


class StoreStartError(RuntimeError):
    """The store could not be opened or loaded: the sidecar cannot start."""


def _state(d: dict[str, Any]) -> int:
    """A dialog's state from dlg.list (1 unconfirmed, 2 early, 3-4 confirmed, 5 deleted)."""
    try:
        return int(d.get("state", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _dlg_vars(d: dict[str, Any]) -> dict[str, str]:
    """Dialog variables from ``dlg.list`` (a list of one-key objects in Kamailio 5.6)."""
    raw = d.get("variables") or []
    out: dict[str, str] = {}
    if isinstance(raw, dict):
        raw = [raw]
    for item in raw:
        if isinstance(item, dict):
            for k, val in item.items():
                out[str(k)] = str(val)
    return out


_PHRASES = {402: "Payment Required", 403: "Forbidden", 404: "Not Found",
            480: "Temporarily Unavailable", 503: "Service Unavailable"}


def _reason_phrase(code: int) -> str:
    return _PHRASES.get(code, "Rejected")
