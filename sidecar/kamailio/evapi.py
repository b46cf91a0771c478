"""An asyncio evapi client: connects to Kamailio, reconnects with backoff, frames messages.

Kamailio drops events while no client is connected, so every (re)connection is reported
to the owner (``on_connect``), which reconciles its calls with ``dlg.list``.
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
    ) -> None:
        self.host, self.port = host, port
        self.on_message = on_message
        self.on_connect = on_connect
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self._writer: asyncio.StreamWriter | None = None
        self._sock: Any = None
        self.connected = asyncio.Event()
        self.connects = 0
        self.framing_errors = 0

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
                if self.on_connect is not None:
                    await self.on_connect()
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
        decoder = Decoder()
        while True:
            data = await reader.read(65536)
            if not data:
                return
            _quickack(self._sock)
            for payload in decoder.feed(data):
                self.on_message(payload)
            if decoder.errors:
                self.framing_errors += decoder.errors
                log.error("evapi: %d malformed frame(s) skipped", decoder.errors)
                decoder.errors = 0

    def send(self, message: dict[str, object]) -> bool:
        """Queue one JSON message to Kamailio; False when not connected (it is lost)."""
        w = self._writer
        if w is None or w.is_closing():
            return False
        w.write(encode(json.dumps(message, separators=(",", ":")).encode()))
        return True


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
