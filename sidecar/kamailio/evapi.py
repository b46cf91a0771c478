"""An asyncio evapi client: connects to Kamailio, reconnects with backoff, frames messages.

Kamailio keeps the ``answer``, ``end`` and ``failed`` events of the time no client is
connected (``kamailio/kamailio.cfg``). After every (re)connection the client sends
``{"event":"sync"}`` and reads at once: Kamailio replays the kept events (marked
``"replayed": true``, in the order they happened), then sends
``{"event":"synced","replayed":N}``. The replayed events go to ``on_message`` like any
other; at ``synced`` the client stops reading and awaits ``on_connect`` (the owner
reconciles its calls with ``dlg.list``) before it passes on what followed ``synced`` and
reads on, so nothing that follows races the reconciliation. A Kamailio that never
answers ``synced`` (a configuration without the replay) gets ``on_connect`` after
``sync_timeout`` seconds without a replayed event.

The connection is an ``asyncio.Protocol``: each read goes from ``data_received`` through
the netstring decoder to ``on_message`` in the same callback, with no task or future per
read. ``run`` only waits for what must be awaited: ``on_connect``, and the end of the
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, cast

from .netstring import Decoder

log = logging.getLogger("sidecar.evapi")


class EvapiClient:
    """One TCP connection to Kamailio's evapi server, kept up for as long as it runs."""

    def __init__(
        self,
        host: str,
        port: int,
        on_message: Callable[[bytes], None],
        on_connect: Callable[[], Awaitable[None]] | None = None,
        *,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        sync_timeout: float = 2.0,
    ) -> None:
        self.host, self.port = host, port
        self.on_message = on_message
        self.on_connect = on_connect
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.sync_timeout = sync_timeout
        self._transport: asyncio.Transport | None = None
        self.connected = asyncio.Event()
        self.connects = 0
        self.framing_errors = 0
        #: Events Kamailio replayed at the last ``synced`` (None: no ``synced`` yet).
        self.replayed: int | None = None
        #: Connections on which ``synced`` did not come in time.
        self.sync_timeouts = 0

    async def run(self) -> None:
        """Connect, read until the connection drops, back off, repeat (until cancelled)."""
        loop = asyncio.get_running_loop()
        delay = self.backoff_initial
        while True:
            try:
                transport, conn = await loop.create_connection(
                    lambda: _Connection(self, loop), self.host, self.port)
            except OSError as exc:
                log.warning("evapi %s:%s unreachable (%s); retrying in %.1f s", self.host,
                            self.port, exc.strerror or exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_initial
            _tune(conn.sock)
            self._transport = transport
            self.connects += 1
            self.connected.set()
            log.info("evapi connected to %s:%s", self.host, self.port)
            try:
                self.send({"event": "sync"})
                await self._serve(conn)
            except (ConnectionError, OSError) as exc:
                log.warning("evapi connection lost: %s", exc)
            finally:
                self.connected.clear()
                self._transport = None
                conn.stop()
                transport.close()
                with contextlib.suppress(Exception):
                    await conn.closed
            log.warning("evapi disconnected; reconnecting")

    async def _serve(self, conn: _Connection) -> None:
        """Start reading, then do what the connection asks to be awaited, until it ends:
        ``on_connect`` at ``synced`` or its timeout (reading is paused meanwhile), or
        raise what ``on_message`` or the connection raised."""
        conn.start()
        while True:
            if conn.error is not None:
                raise conn.error
            if conn.due:
                conn.due = False
                await self._connected()
                conn.release()
                continue
            if conn.lost:
                if conn.lost_exc is not None:
                    raise conn.lost_exc
                return
            conn.waiter = conn.loop.create_future()
            try:
                await conn.waiter
            finally:
                conn.waiter = None

    async def _connected(self) -> None:
        if self.on_connect is not None:
            await self.on_connect()

    def send(self, message: dict[str, object]) -> bool:
        """Queue one JSON message to Kamailio; False when not connected (it is lost)."""
        t = self._transport
        if t is None or t.is_closing():
            return False
        t.write(frame_json(message))
        return True


class _Connection(asyncio.Protocol):
    """One evapi connection: decodes what arrives and hands it on in order; tells
    :meth:`EvapiClient._serve` (``waiter``) when it has something to await."""

    def __init__(self, client: EvapiClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.sock: Any = None
        self.decoder = Decoder()
        self.syncing = True
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        # Reads kept while nothing may reach on_message: before start() (the client has
        # not sent `sync` yet) and while on_connect runs (reading is paused then, so only
        # a read already under way can land here).
        self.blocked = True
        self.backlog: list[bytes] = []
        self.held: list[bytes] = []  # what followed `synced` in its read
        self.due = False  # on_connect is to be awaited
        self.paused = False  # reading paused (transport.pause_reading)
        self.error: BaseException | None = None  # raised by on_message: run() raises it
        self.lost = False
        self.lost_exc: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self._setsockopt: Callable[[int, int, int], None] | None = None
        self._own_sock: socket.socket | None = None

    # --- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.sock = transport.get_extra_info("socket")
        if self.sock is not None and _TCP_QUICKACK is not None:
            # uvloop's stand-in for the socket builds a socket object (and asks the
            # kernel about it) on every call: a duplicate of the descriptor is one real
            # socket object for the same connection, made once.
            try:
                self._own_sock = socket.socket(fileno=os.dup(self.sock.fileno()))
                self._setsockopt = self._own_sock.setsockopt
            except OSError:
                self._setsockopt = self.sock.setsockopt

    def data_received(self, data: bytes) -> None:
        if self.blocked:
            self.backlog.append(data)
            return
        setsockopt = self._setsockopt
        if setsockopt is not None:
            # Linux clears TCP_QUICKACK after it acts, so it is set again after every read
            # (try/except: no context manager object per read).
            try:  # noqa: SIM105
                setsockopt(socket.IPPROTO_TCP, _QUICKACK_OPT, 1)
            except OSError:
                pass
        try:
            self._deliver(self.decoder.feed(data))
        except Exception as exc:  # from on_message: run() raises it
            self.error = exc
            self._block()

    def connection_lost(self, exc: Exception | None) -> None:
        self._setsockopt = None
        if self._own_sock is not None:
            self._own_sock.close()
            self._own_sock = None
        self.lost = True
        self.lost_exc = exc
        self.stop()
        self._wake()
        if not self.closed.done():
            self.closed.set_result(None)

    # --- driven by EvapiClient._serve ------------------------------------------------
    def start(self) -> None:
        """`sync` is sent: pass on what arrived so far, watch for `synced`."""
        self.deadline = self.loop.time() + self.client.sync_timeout
        self.timer = self.loop.call_at(self.deadline, self._sync_due)
        self._unblock()

    def release(self) -> None:
        """on_connect has finished: pass on what followed `synced`, read on."""
        held, self.held = self.held, []
        try:
            self._deliver(held)
        except Exception as exc:
            self.error = exc
            return
        self._unblock()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # --- inside ----------------------------------------------------------------------
    def _deliver(self, payloads: list[bytes]) -> None:
        on_message = self.client.on_message
        for i, payload in enumerate(payloads):
            if b'"synced"' in payload and (count := _synced(payload)) is not None:
                if self.syncing:
                    self.syncing = False
                    self.stop()
                    self.client.replayed = count
                    log.info("evapi: Kamailio replayed %d event(s) kept while no"
                             " sidecar was connected", count)
                    self.held = payloads[i + 1:]
                    self.due = True
                    self._block()
                    return  # framing errors are counted once the rest is passed on
                log.warning("evapi: late 'synced' (%d event(s) replayed) ignored", count)
                continue
            if self.syncing and b'"replayed"' in payload:
                self.deadline = self.loop.time() + self.client.sync_timeout
            on_message(payload)
        decoder = self.decoder
        if decoder.errors:
            self.client.framing_errors += decoder.errors
            log.error("evapi: %d malformed frame(s) skipped", decoder.errors)
            decoder.errors = 0

    def _sync_due(self) -> None:
        """The sync deadline timer: moved on by replayed events; at the deadline without
        `synced`, on_connect runs anyway."""
        self.timer = None
        if not self.syncing or self.lost:
            return
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._sync_due)
            return
        self.syncing = False
        self.client.sync_timeouts += 1
        log.warning("evapi: no 'synced' from Kamailio within %.1f s (a configuration"
                    " without the replay?); reconciling anyway", self.client.sync_timeout)
        self.due = True
        self._block()

    def _block(self) -> None:
        """Stop reading and wake run(), which has something to await or raise."""
        self.blocked = True
        if not self.paused and self.transport is not None \
                and not self.transport.is_closing():
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def _unblock(self) -> None:
        self.blocked = False
        while self.backlog and not self.blocked:
            self.data_received(self.backlog.pop(0))
        if self.paused and not self.blocked:
            self.paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


# --- messages to Kamailio ------------------------------------------------------------

_ENCODER = json.JSONEncoder(separators=(",", ":"))
_AUTH_TYPES = (str, int, int, str, str, int, str)


_Auth = tuple[str, int, int, str, str, int, str]


def _template(keys: tuple[str, ...]) -> str:
    specs = ("%s" if t is str else "%d" for t in _AUTH_TYPES)
    items = (f"{_json_str(k)}:{spec}" for k, spec in zip(keys, specs, strict=True))
    return "{" + ",".join(items) + "}"


# The ``auth`` answers (docs/evapi-events.md), by their keys in order: formatted directly
# (str values escaped by the JSON encoder's own function, ints as %d), the same bytes as
# the JSON encoder writes with these separators.
_TEMPLATES: dict[tuple[str, ...], str] = {keys: _template(keys) for keys in (
    ("event", "tindex", "tlabel", "call_id", "action", "max_duration", "account"),
    ("event", "tindex", "tlabel", "call_id", "action", "code", "reason"))}


def frame_json(message: dict[str, object]) -> bytes:
    """``message`` as compact JSON (ASCII, ``,`` and ``:`` without spaces) in a netstring."""
    template = _TEMPLATES.get(tuple(message))
    if template is not None:
        values = tuple(message.values())
        if tuple(map(type, values)) == _AUTH_TYPES:  # exact types: no bool, no subclass
            a, b, c, d, e, f, g = cast(_Auth, values)
            text = template % (_json_str(a), b, c, _json_str(d), _json_str(e), f,
                               _json_str(g))
            return b"%d:%s," % (len(text), text.encode())
    body = _ENCODER.encode(message).encode()
    return b"%d:%s," % (len(body), body)


def _synced(payload: bytes) -> int | None:
    """The count of a ``{"event":"synced","replayed":N}`` message, else None."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError, MemoryError):
        return None  # deep nesting or worse: not ours to judge, parse_event refuses it
    if not isinstance(doc, dict) or doc.get("event") != "synced":
        return None
    count = doc.get("replayed")
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
_QUICKACK_OPT = _TCP_QUICKACK or 0


def _tune(sock: Any) -> None:
    """Small messages both ways, each waited for: without these, Nagle's algorithm on one
    side and delayed ACKs on the other hold an offer or its answer for tens of ms."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _quickack(sock)


def _quickack(sock: Any) -> None:
    # Linux clears TCP_QUICKACK after it acts, so it is set again after every read.
    if sock is not None and _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
