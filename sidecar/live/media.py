"""The live media edge: captured RTP into the call control, on the asyncio loop.

The capture socket (:class:`sidecar.media.capture.LiveCapture`) is read when the loop
says it is readable, in batches; each packet goes to :meth:`CallControl.on_packet` with
its kernel timestamp. A backlog is worked off in slices of ``slice_ms``, with the loop's
other callbacks (Kamailio's events) run in between: an offer never waits behind a whole
ring block of media. With ``ports = "auto"`` the kernel filter passes only the UDP
ports the live dialogs' SDP named, and is rebuilt (at most every ``refilter_ms``) as
dialogs come and go; with a configured range it is fixed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..charging import Action
from ..media.capture import LiveCapture, interface_towards, port_filter
from ..media.pcap import CapturedPayload
from ..supervision.calls import CallControl
from ..supervision.media import MediaSupervisor

log = logging.getLogger("sidecar.media")

_CHUNK = 64  # packets read between looks at the clock
_MAX_LISTED_PORTS = 64  # more than this: a port range (see port_filter)
_NARROW_S = 1.0  # an automatic port range narrows at most this often
_MARGIN = 512  # ports to spare on either side of an automatic range


class MediaConfigError(RuntimeError):
    """Media capture cannot start as configured (the message says which key)."""


class MediaPump:
    """Owns the capture socket and feeds the call control."""

    def __init__(self, control: CallControl, media: MediaSupervisor, *, interface: str,
                 peer: str, port_range: tuple[int, int] | None, buffer_bytes: int,
                 on_actions: Callable[[list[Action]], None], refilter_ms: int = 20,
                 report_every_s: float = 60.0, slice_ms: float = 2.0) -> None:
        self.control = control
        self.media = media
        self.interface = interface
        self.peer = peer
        self.port_range = port_range
        self.buffer_bytes = buffer_bytes
        self.on_actions = on_actions
        self.refilter_ms = refilter_ms
        self.report_every_s = report_every_s
        self.capture: LiveCapture | None = None
        self.packets = 0
        self._filter_version = -1
        self._refilter: asyncio.TimerHandle | None = None
        self._report: asyncio.TimerHandle | None = None
        self._more: asyncio.Handle | None = None  # reading goes on after other callbacks
        self.slice_s = slice_ms / 1000
        self._range: tuple[int, int] | None = None  # the automatic range in force
        self._range_at = 0.0  # when it was last set (time.monotonic)

    def _choose_interface(self) -> str:
        if self.interface:
            return self.interface
        if self.peer:
            # pyroute2's synchronous IPRoute runs its own event loop: not on this one.
            with ThreadPoolExecutor(1) as pool:
                return pool.submit(interface_towards, self.peer).result()
        raise MediaConfigError("[media] needs 'interface' or 'peer' (an address whose "
                               "route names the capture interface)")

    def _filter(self) -> str:
        if self.port_range is not None:
            lo, hi = self.port_range
            return f"udp and dst portrange {lo}-{hi}"
        ports = self.media.flows.ports()
        if len(ports) > _MAX_LISTED_PORTS:
            # Too many ports to list: a range over them, with _MARGIN ports to spare on
            # either side (new calls' ports mostly fall inside: no recompile for each).
            # It widens at once for a port outside, and narrows at most every _NARROW_S
            # (calls end all the time at a high rate).
            lo, hi = min(ports), max(ports)
            now = time.monotonic()
            kept = self._range
            if kept is not None and kept[0] <= lo and hi <= kept[1] \
                    and now - self._range_at < _NARROW_S:
                lo, hi = kept
            else:
                lo, hi = max(1, lo - _MARGIN), min(65535, hi + _MARGIN)
                self._range, self._range_at = (lo, hi), now
            return f"udp and dst portrange {lo}-{hi}"
        self._range = None
        return port_filter(sorted(ports), max_ports=_MAX_LISTED_PORTS)

    def start(self) -> None:
        """Open the capture and start reading (raises if it cannot be opened)."""
        name = self._choose_interface()
        self._filter_version = self.media.flows.version
        self.capture = LiveCapture(name, filter=self._filter(),
                                   buffer_bytes=self.buffer_bytes)
        loop = asyncio.get_running_loop()
        loop.add_reader(self.capture.fileno(), self._readable)
        self._report = loop.call_later(self.report_every_s, self._report_stats)
        log.info("media capture on %s, filter %s", name,
                 "auto (the dialogs' SDP ports)" if self.port_range is None
                 else self._filter())

    def stop(self) -> None:
        for h in (self._refilter, self._report, self._more):
            if h is not None:
                h.cancel()
        if self.capture is not None:
            asyncio.get_running_loop().remove_reader(self.capture.fileno())
            self._report_stats(again=False)
            self.capture.close()
            self.capture = None

    def flows_changed(self) -> None:
        """Dialogs were offered, answered or ended: refresh an automatic filter soon."""
        if self.port_range is not None or self.capture is None or self._refilter is not None:
            return
        if self.media.flows.version == self._filter_version:
            return
        self._refilter = asyncio.get_running_loop().call_later(
            self.refilter_ms / 1000, self._apply_filter)

    def _apply_filter(self) -> None:
        self._refilter = None
        if self.capture is None:
            return
        self._filter_version = self.media.flows.version
        try:
            expression = self._filter()
            if expression == self.capture.filter:
                return  # the same filter (a port range that still covers every flow)
            self.capture.set_filter(expression)
        except Exception:  # a filter that cannot be built must not stop the sidecar
            log.exception("media capture: could not update the kernel filter")

    def _readable(self) -> None:
        if self._more is None:  # else a continuation is due and reads on
            self._drain()

    def _drain(self) -> None:
        """Hand queued packets to the call control for at most ``slice_ms``, then let the
        loop run what else is ready (an offer waiting to be answered) and go on."""
        self._more = None
        cap = self.capture
        if cap is None:
            return
        control = self.control
        on_packet = control.on_packet
        media = self.media
        datagram_key = media.datagram_key
        matched = control.matched
        awaiting = control.awaiting_media()
        actions: list[Action] = []
        stats = cap.stats
        deadline = time.perf_counter() + self.slice_s
        while True:
            before = stats.packets_read
            for p in cap.read_keyed(_CHUNK):
                if not isinstance(p, CapturedPayload):  # UDP/IPv4: (ms, wire key, payload)
                    ts, key, payload = p
                    ref = datagram_key(ts, key, payload)
                    if media.shared_hits or ref in awaiting:
                        actions += matched(ref, ts)
                elif p.transport == "udp":
                    actions += on_packet(int(p.timestamp * 1000), p.src_ip, p.src_port,
                                         p.dst_ip, p.dst_port, p.payload)
                else:
                    continue
                self.packets += 1
            if stats.packets_read - before < _CHUNK:
                break  # the queue is empty
            if time.perf_counter() >= deadline:
                self._more = asyncio.get_running_loop().call_soon(self._drain)
                break
        if actions:
            self.on_actions(actions)

    def stats(self) -> dict[str, int]:
        """Capture counters: packets handled, kernel packets and drops, matched RTP."""
        out = {"packets": self.packets, "rtp_matched": self.media.packets_matched,
               "unmatched": self.media.packets_unmatched}
        if self.capture is not None:
            k = self.capture.kernel_stats()
            out |= {"kernel_packets": k.received, "kernel_drops": k.dropped}
        return out

    def kernel_stats(self) -> tuple[int, int] | None:
        """The kernel's packets and drops on the capture socket (cumulative; one
        ``getsockopt``), None while no capture is open."""
        if self.capture is None:
            return None
        k = self.capture.kernel_stats()
        return k.received, k.dropped

    def _report_stats(self, again: bool = True) -> None:
        s = self.stats()
        drops = s.get("kernel_drops", 0)
        level = logging.WARNING if drops else logging.INFO
        log.log(level, "media capture: %s", " ".join(f"{k}={v}" for k, v in s.items()))
        if again and self.capture is not None:
            self._report = asyncio.get_running_loop().call_later(
                self.report_every_s, self._report_stats)
