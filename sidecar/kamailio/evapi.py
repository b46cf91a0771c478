"""An asyncio evapi client: connects to Kamailio, reconnects with backoff, frames messages.

Kamailio keeps the ``answer``, ``end`` and ``failed`` events of the time no client is
connected (``kamailio/kamailio.cfg``). After every (re)connection the client sends
``{"event":"sync"}`` and reads at once: Kamailio replays the kept events (marked
``"replayed": true``, in the order they happened), then sends
``{"event":"synced","replayed":N}``. The replayed events go to ``on_message`` like any
other; at ``synced`` the read loop awaits ``on_connect`` (the owner reconciles its calls
with ``dlg.list``) before it reads on, so nothing that follows races the reconciliation.
A Kamailio that never answers ``synced`` (a configuration without the replay) gets
``on_connect`` after ``sync_timeout`` seconds without a replayed event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from .netstring import Decoder, encode

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
        self._writer: asyncio.StreamWriter | None = None
        self._sock: Any = None
        self.connected = asyncio.Event()
        self.connects = 0
        self.framing_errors = 0
        #: Events Kamailio replayed at the last ``synced`` (None: no ``synced`` yet).
        self.replayed: int | None = None
        #: Connections on which ``synced`` did not come in time.
        self.sync_timeouts = 0

    async def run(self) -> None:
        """Connect, read until the connection drops, back off, repeat (until cancelled)."""
        delay = self.backoff_initial
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                log.warning("evapi %s:%s unreachable (%s); retrying in %.1f s", self.host,
                            self.port, exc.strerror or exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_initial
            self._sock = writer.get_extra_info("socket")
            _tune(self._sock)
            self._writer = writer
            self.connects += 1
            self.connected.set()
            log.info("evapi connected to %s:%s", self.host, self.port)
            try:
                self.send({"event": "sync"})
                await self._read(reader)
            except (ConnectionError, OSError) as exc:
                log.warning("evapi connection lost: %s", exc)
            finally:
                self.connected.clear()
                self._writer = None
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            log.warning("evapi disconnected; reconnecting")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Read until the connection drops. Until ``synced`` (or its timeout) the client
        is syncing: each replayed event moves the deadline on."""
        loop = asyncio.get_running_loop()
        decoder = Decoder()
        syncing = True
        deadline = loop.time() + self.sync_timeout
        while True:
            if syncing:
                try:
                    data = await asyncio.wait_for(reader.read(65536),
                                                  max(0.0, deadline - loop.time()))
                except TimeoutError:
                    syncing = False
                    self.sync_timeouts += 1
                    log.warning("evapi: no 'synced' from Kamailio within %.1f s (a"
                                " configuration without the replay?); reconciling anyway",
                                self.sync_timeout)
                    await self._connected()
                    continue
            else:
                data = await reader.read(65536)
            if not data:
                return
            _quickack(self._sock)
            for payload in decoder.feed(data):
                if b'"synced"' in payload and (count := _synced(payload)) is not None:
                    if syncing:
                        syncing = False
                        self.replayed = count
                        log.info("evapi: Kamailio replayed %d event(s) kept while no"
                                 " sidecar was connected", count)
                        await self._connected()
                    else:
                        log.warning("evapi: late 'synced' (%d event(s) replayed) ignored",
                                    count)
                    continue
                if syncing and b'"replayed"' in payload:
                    deadline = loop.time() + self.sync_timeout
                self.on_message(payload)
            if decoder.errors:
                self.framing_errors += decoder.errors
                log.error("evapi: %d malformed frame(s) skipped", decoder.errors)
                decoder.errors = 0

    async def _connected(self) -> None:
        if self.on_connect is not None:
            await self.on_connect()

    def send(self, message: dict[str, object]) -> bool:
        """Queue one JSON message to Kamailio; False when not connected (it is lost)."""
        w = self._writer
        if w is None or w.is_closing():
            return False
        w.write(encode(json.dumps(message, separators=(",", ":")).encode()))
        return True


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
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
