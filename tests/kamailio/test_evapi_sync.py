"""The evapi client's `sync`/`synced` handshake against a fake Kamailio (asyncio TCP server).

After connecting the client sends `sync`; Kamailio replays the events it kept while no
sidecar was connected, then `synced`. The replayed events must reach `on_message` before
`on_connect` (the reconciliation) runs, and nothing read after `synced` may reach
`on_message` while `on_connect` runs. A Kamailio that never answers still gets
`on_connect`, after the timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sidecar.kamailio.evapi import EvapiClient
from sidecar.kamailio.netstring import Decoder, encode

pytestmark = pytest.mark.timeout(30)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def frame(doc: dict[str, Any]) -> bytes:
    return encode(json.dumps(doc).encode())


def event(kind: str, n: int, *, replayed: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"event": kind, "call_id": f"call-{n}", "h_entry": 1, "h_id": n,
                           "ts": 1_800_000_000.0 + n}
    if replayed:
        doc["replayed"] = True
    return doc


async def read_one(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next netstring message the client sent."""
    decoder = Decoder()
    while True:
        data = await reader.read(4096)
        assert data, "client closed the connection"
        for payload in decoder.feed(data):
            doc: dict[str, Any] = json.loads(payload)
            return doc


class Recorder:
    """on_message / on_connect that log what happened, in order."""

    def __init__(self, connect_delay: float = 0.0) -> None:
        self.log: list[tuple[str, Any]] = []
        self.connect_delay = connect_delay
        self.connected = asyncio.Event()
        self.at_connect: float | None = None

    def on_message(self, payload: bytes) -> None:
        self.log.append(("message", json.loads(payload)))

    async def on_connect(self) -> None:
        self.at_connect = time.monotonic()
        self.log.append(("connect-start", None))
        await asyncio.sleep(self.connect_delay)  # a reconciliation that takes a while
        self.log.append(("connect-end", None))
        self.connected.set()

    def messages(self) -> list[dict[str, Any]]:
        return [doc for kind, doc in self.log if kind == "message"]


async def with_server(handler: Handler,
                      body: Callable[[int], Awaitable[None]]) -> None:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await body(port)
    finally:
        server.close()
        await server.wait_closed()


async def run_client(client: EvapiClient, until: Callable[[], Awaitable[object]]) -> None:
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(until(), 10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_replayed_events_reach_on_message_before_on_connect() -> None:
    got_sync: list[dict[str, Any]] = []
    rec = Recorder(connect_delay=0.3)

    async def kamailio(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got_sync.append(await read_one(reader))
        # Two kept events, `synced`, and a live event in the same segment: the live one
        # must wait until on_connect has finished.
        writer.write(frame(event("answer", 1, replayed=True))
                     + frame(event("end", 1, replayed=True))
                     + frame({"event": "synced", "replayed": 2})
                     + frame(event("offer", 2)))
        await writer.drain()
        await asyncio.sleep(0.2)  # ...and one sent while on_connect runs
        writer.write(frame(event("early", 2)))
        await writer.drain()
        await asyncio.sleep(5)
        writer.close()

    async def body(port: int) -> None:
        client = EvapiClient("127.0.0.1", port, rec.on_message, rec.on_connect)

        async def done() -> None:
            await rec.connected.wait()
            while len(rec.messages()) < 4:
                await asyncio.sleep(0.01)

        await run_client(client, done)
        assert client.replayed == 2
        assert client.sync_timeouts == 0

    asyncio.run(with_server(kamailio, body))
    assert got_sync == [{"event": "sync"}]
    kinds = [(kind, doc["event"] if doc else None) for kind, doc in rec.log]
    assert kinds == [("message", "answer"), ("message", "end"), ("connect-start", None),
                     ("connect-end", None), ("message", "offer"), ("message", "early")]
    assert all(d.get("replayed") is True for d in rec.messages()[:2])
    assert "synced" not in [d["event"] for d in rec.messages()]


def test_without_synced_on_connect_runs_after_the_timeout() -> None:
    rec = Recorder()
    sent_at: list[float] = []

    async def old_kamailio(reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        assert (await read_one(reader))["event"] == "sync"  # logged and ignored
        sent_at.append(time.monotonic())
        writer.write(frame(event("offer", 1)))  # live events still flow
        await writer.drain()
        await asyncio.sleep(5)
        writer.close()

    async def body(port: int) -> None:
        client = EvapiClient("127.0.0.1", port, rec.on_message, rec.on_connect,
                             sync_timeout=0.4)
        await run_client(client, rec.connected.wait)
        assert client.sync_timeouts == 1
        assert client.replayed is None

    asyncio.run(with_server(old_kamailio, body))
    assert rec.at_connect is not None
    assert 0.3 <= rec.at_connect - sent_at[0] <= 2.0
    assert [kind for kind, _ in rec.log] == ["message", "connect-start", "connect-end"]


def test_a_long_replay_moves_the_deadline_and_a_late_synced_is_swallowed() -> None:
    rec = Recorder()

    async def slow_kamailio(reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        await read_one(reader)
        for n in range(5):  # 5 x 0.15 s: longer than the timeout, never silent as long
            writer.write(frame(event("end", n, replayed=True)))
            await writer.drain()
            await asyncio.sleep(0.15)
        writer.write(frame({"event": "synced", "replayed": 5})
                     + frame({"event": "synced", "replayed": 0})  # a second one: dropped
                     + frame(event("offer", 9)))
        await writer.drain()
        await asyncio.sleep(5)
        writer.close()

    async def body(port: int) -> None:
        client = EvapiClient("127.0.0.1", port, rec.on_message, rec.on_connect,
                             sync_timeout=0.3)

        async def done() -> None:
            await rec.connected.wait()
            while len(rec.messages()) < 6:
                await asyncio.sleep(0.01)

        await run_client(client, done)
        assert client.sync_timeouts == 0
        assert client.replayed == 5

    asyncio.run(with_server(slow_kamailio, body))
    kinds = [kind for kind, _ in rec.log]
    assert kinds == ["message"] * 5 + ["connect-start", "connect-end", "message"]
    assert [d["event"] for d in rec.messages()] == ["end"] * 5 + ["offer"]


def test_every_reconnection_syncs_again() -> None:
    rec = Recorder()
    connections = 0

    async def kamailio(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        assert (await read_one(reader))["event"] == "sync"
        n = connections
        writer.write(frame(event("end", n, replayed=True))
                     + frame({"event": "synced", "replayed": 1}))
        await writer.drain()
        if n == 1:
            writer.close()  # Kamailio restarts, or the connection drops
            return
        await asyncio.sleep(5)
        writer.close()

    async def body(port: int) -> None:
        client = EvapiClient("127.0.0.1", port, rec.on_message, rec.on_connect,
                             backoff_initial=0.05)

        async def done() -> None:
            while [k for k, _ in rec.log].count("connect-end") < 2:
                await asyncio.sleep(0.01)

        await run_client(client, done)
        assert client.connects == 2

    asyncio.run(with_server(kamailio, body))
    assert [(k, d["call_id"] if d else None) for k, d in rec.log] == [
        ("message", "call-1"), ("connect-start", None), ("connect-end", None),
        ("message", "call-2"), ("connect-start", None), ("connect-end", None)]
