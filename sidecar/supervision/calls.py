"""Call control: one stream of dialog events and packets in, charging decisions out.

The live sidecar (events from Kamailio over evapi, packets from an AF_PACKET socket) and
pcap replay (events rebuilt from the capture's SIP, packets from the file) both drive a
:class:`CallControl`, so a replayed capture exercises exactly the production decisions::

    Offer        -> Charger.authorize (+ caller media address registered)
    Early (18x)  -> ringing time (PDD); early-media SDP registered
    Answer       -> Charger.answer (first chunk reserved), media grace window opens
    MediaUpdate  -> new SDP registered for the party that sent it
    packet       -> media facts; late callee media moves the billing start
    Attempt      -> Charger.attempt (a carrier of the route list failed: the next one)
    End / Failed -> media verdict -> Charger.end (billable start, FAS credit) -> CDR

Pure: no I/O, time is an argument.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from ..charging import Action, AuthDecision, Charger, MediaOutcome
from ..kamailio.events import Answer, Attempt, Early, End, Event, Failed, MediaUpdate, Offer
from .flows import Party
from .media import MediaSupervisor, MediaVerdict

log = logging.getLogger("sidecar.supervision")

REASON_NO_MEDIA = "no media"
_NONE: list[Action] = []  # the usual answer of on_packet; callers never modify it


@dataclass(frozen=True)
class ControlConfig:
    """``enforce``: media decides billing (start, not billed, FAS credit). Off, verdicts
    are only recorded and calls are billed from the 200 OK: a way to watch what media
    supervision would do before trusting it."""

    enforce: bool = True
    #: Supervise the media of calls the charger rejected too (replay: the capture shows
    #: them connected whatever today's balances say).
    supervise_rejected: bool = False


class CallControl:
    """Charging plus (optional) media supervision for every dialog of one sidecar."""

    def __init__(self, charger: Charger, media: MediaSupervisor | None = None,
                 config: ControlConfig | None = None) -> None:
        self.charger = charger
        self.media = media
        self.config = config or ControlConfig()
        self._unconfirmed: dict[str, int] = {}  # answered, no callee media yet -> answer ms
        self.verdicts: dict[str, MediaVerdict] = {}  # the last verdicts, for replay output
        self.keep_verdicts = False

    # --- signalling -------------------------------------------------------------------
    def on_event(self, ev: Event, now_ms: int) -> tuple[AuthDecision | None, list[Action]]:
        """Apply one dialog event at ``now_ms``. Offers get an authorization decision."""
        ref = ev.dialog.call_id
        media = self.media
        if isinstance(ev, Offer):
            decision = self.charger.authorize(
                ref, number=ev.ruri_user, now_ms=now_ms, account_code=ev.account_code,
                sip_user=ev.from_user, src_ip=ev.src_ip, caller=ev.pai_user or ev.from_user,
                call_id=ref)
            if media is not None and (decision.allow or self.config.supervise_rejected):
                media.offer(ref, now_ms, ev.sdp)
            return decision, self.charger.take_actions()
        if isinstance(ev, Early):
            self.charger.ringing(ref, now_ms)
            if media is not None:
                media.provisional(ref, now_ms, ev.code, ev.sdp)
            return None, []
        if isinstance(ev, Answer):
            actions = self.charger.answer(ref, now_ms, route=ev.route)
            if media is not None and ref in media.dialogs:
                media.answer(ref, now_ms, ev.sdp)
                d = media.dialogs[ref]
                if d.callee.first_after_answer_ms is None:
                    self._unconfirmed[ref] = now_ms
            return None, actions
        if isinstance(ev, MediaUpdate):
            if media is not None:
                media.update(ref, now_ms, ev.side, ev.sdp)
            return None, []
        if isinstance(ev, End):
            if ev.account and ev.start_ts_ms and not self.charger.knows(ref):
                # Answered and ended while no sidecar was connected (Kamailio replays
                # the end): settled from what the event carries.
                self.charger.adopt(ref, account=ev.account, number=ev.callee,
                                   caller=ev.caller, now_ms=now_ms,
                                   answered_ms=ev.start_ts_ms, supervise=False)
            outcome = self._outcome(ref, now_ms)
            return None, self.charger.end(ref, now_ms, ended_by=ev.by, reason=ev.reason,
                                          route=ev.route, media=outcome)
        if isinstance(ev, Attempt):
            return None, self.charger.attempt(ref, now_ms, ev.code, ev.route)
        if isinstance(ev, Failed):
            outcome = self._outcome(ref, now_ms)
            return None, self.charger.fail(ref, now_ms, ev.code, ev.reason, route=ev.route,
                                           media=outcome)
        return None, []

    def end_lost(self, ref: str, now_ms: int, reason: str) -> list[Action]:
        """A call whose end was not seen (gone from Kamailio while the sidecar was away):
        settled now, billed at most up to its paid time, with what media showed."""
        outcome = self._outcome(ref, now_ms)
        return self.charger.end(ref, now_ms, ended_by="proxy", reason=reason, lost=True,
                                media=outcome)

    def _outcome(self, ref: str, now_ms: int) -> MediaOutcome | None:
        self._unconfirmed.pop(ref, None)
        if self.media is None:
            return None
        v = self.media.end(ref, now_ms)
        if v is None:
            return None
        if self.keep_verdicts:
            self.verdicts[ref] = v
        evidence = json.dumps(v.evidence, separators=(",", ":"), sort_keys=True)
        media_ms = v.evidence["callee"]["first_after_answer_ms"]
        if not v.answered:
            return MediaOutcome(None, v.verdict.value, v.reason_text, False, None, evidence)
        if not self.config.enforce:  # observe only: bill from the 200 OK as without media
            return MediaOutcome(v.evidence["answer_ms"], v.verdict.value, v.reason_text,
                                False, media_ms, evidence)
        return MediaOutcome(v.billable_ms, v.verdict.value, v.reason_text, v.credited,
                            media_ms, evidence)

    # --- media ----------------------------------------------------------------------
    def on_packet(self, ts_ms: int, src_ip: str, src_port: int, dst_ip: str, dst_port: int,
                  payload: bytes) -> list[Action]:
        """One captured UDP datagram at capture time ``ts_ms``."""
        media = self.media
        if media is None:
            return []
        ref = media.datagram(ts_ms, src_ip, src_port, dst_ip, dst_port, payload)
        if media.shared_hits or ref in self._unconfirmed:
            return self.matched(ref, ts_ms)
        return _NONE

    def matched(self, ref: str | None, ts_ms: int) -> list[Action]:
        """The media supervisor took a packet at ``ts_ms`` for ``ref`` (None: no dialog)
        and maybe for others (its ``shared_hits``): the answers it confirmed. A loop that
        hands packets to the supervisor itself calls this when ``shared_hits`` is set or
        ``ref`` is awaiting media (:meth:`awaiting_media`); :meth:`on_packet` does."""
        media = self.media
        if media is None:
            return []
        if media.shared_hits:  # the packet was evidence for other dialogs too (B2BUA legs)
            hits, media.shared_hits = media.shared_hits, []
            actions = [a for r in hits for a in self._confirmed(r, ts_ms)]
            return actions + self._confirmed(ref, ts_ms) if ref is not None else actions
        if ref is None or ref not in self._unconfirmed:
            return _NONE
        return self._confirmed(ref, ts_ms)

    def on_media_count(self, ref: str, party: Party, ts_ms: int, packets: int,
                       octets: int = 0, source: str = "rtpengine") -> list[Action]:
        """A media relay's counters for ``ref`` at ``ts_ms`` (where the media cannot be
        sniffed; :meth:`MediaSupervisor.media_seen`): like packets, callee media may
        confirm the answer, and a late start moves the billing start."""
        media = self.media
        if media is None or ref not in media.dialogs:
            return []
        media.media_seen(ref, party, ts_ms, packets, octets, source)
        return self._confirmed(ref, ts_ms)

    def awaiting_media(self) -> Mapping[str, int]:
        """Answered dialogs whose callee media has not been seen yet -> their answer
        time (ms). A live view: read it, do not keep it."""
        return self._unconfirmed

    def _confirmed(self, ref: str, ts_ms: int) -> list[Action]:
        """Callee media may have just confirmed the answer of ``ref``: a late start moves
        its billing start."""
        media = self.media
        if media is None or ref not in self._unconfirmed:
            return []
        first = media.dialogs[ref].callee.first_after_answer_ms
        if first is None:
            return []
        answer_ms = self._unconfirmed.pop(ref)
        if self.config.enforce and first - answer_ms > media.config.grace_ms:
            log.info("%s: callee media %d ms after the 200 OK: billing starts now", ref,
                     first - answer_ms)
            return self.charger.rebase(ref, first, ts_ms)
        return []

    # --- time -----------------------------------------------------------------------
    def tick(self, now_ms: int) -> list[Action]:
        """Time advanced: credit chunks and cut-offs, and (if configured) answered calls
        without media ended."""
        actions = self.charger.tick(now_ms)
        if self.media is not None:
            for nm in self.media.tick(now_ms):
                self._unconfirmed.pop(nm.call_ref, None)
                actions += self.charger.stop(
                    nm.call_ref, f"{REASON_NO_MEDIA} {nm.for_ms / 1000:.1f} s after the 200 OK",
                    now_ms)
        return actions

    def next_deadline(self) -> int | None:
        """When :meth:`tick` next has something to do (ms), or None."""
        a = self.charger.next_deadline()
        b = self.media.next_deadline() if self.media is not None else None
        if a is None:
            return b
        return a if b is None else min(a, b)
