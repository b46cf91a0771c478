"""evapi benchmark: CPU per event to frame and parse what Kamailio sends, per reply to
encode the ``auth`` answer, and per event through the whole client on a TCP connection,
each beside the previous implementation (the BASELINE copies below) in the same run.

    python benchmarks/bench_evapi.py [--calls 10000] [--repeat 9] [--stream-calls 3000]

- ``frame+parse``: one call's events as Kamailio writes them (``offer`` with the fields
  ``kamailio/kamailio.cfg`` sends and a 300-byte SDP, ``early`` 180, ``answer`` with its
  SDP, route and authorization fields, ``end``), each fed to the netstring decoder as one
  read and parsed (``parse_event``). CPU (process time) per event, best of ``--repeat``.
- ``reply``: an ``allow`` answer to an offer, dict to netstring bytes.
- ``stream``: a fake Kamailio in a thread sends the same events over loopback TCP, one
  write each, paced so that most reads carry one event; the client under test runs on
  uvloop (as ``sidecar run`` does) and on asyncio's own loop, parses every event and
  answers each offer. CPU of the event loop's thread per event, from the first event to
  the last (receive, framing, parsing, the reply and its write, the loop's own polling).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import socket
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.kamailio import events as ev
from sidecar.kamailio.evapi import EvapiClient, frame_json
from sidecar.kamailio.netstring import MAX_FRAME, Decoder, encode
from tests.kamailio.test_evapi_fast_paths import ReferenceDecoder

# --- the events, as Kamailio's jansson writes them ---------------------------------------

SDP_OFFER = ("v=0\r\no=- 3912345678 3912345678 IN IP4 192.0.2.10\r\ns=-\r\n"
             "c=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 16384 RTP/AVP 8 0 18 101\r\n"
             "a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:18 G729/8000\r\n"
             "a=fmtp:18 annexb=no\r\na=rtpmap:101 telephone-event/8000\r\n"
             "a=fmtp:101 0-16\r\na=ptime:20\r\na=maxptime:150\r\na=sendrecv\r\n")
SDP_ANSWER = SDP_OFFER.replace("192.0.2.10", "198.51.100.7").replace("16384", "30000")


def call_events(n: int) -> list[bytes]:
    """The four payloads of call ``n`` (jansson's separators: ``, `` and ``: ``)."""
    call_id = f"{n:08x}-4b2f-9a1c@192.0.2.10"
    ts = 1795262400.1234567 + n
    common = {"call_id": call_id, "h_entry": n % 4096, "h_id": n + 1, "ts": ts}
    auth = {"account": "ACME", "callee": "4930123456", "caller": "4930555000"}
    docs: list[dict[str, object]] = [
        {"event": "offer", **common, "tindex": n % 65536, "tlabel": 87654321 + n,
         "from_user": "4930555000", "from_display": "Alice Smith",
         "from_domain": "example.org", "pai_user": "4930555000", "to_user": "4930123456",
         "ruri": "sip:4930123456@10.0.0.1:5060;ac=ACME", "ruri_user": "4930123456",
         "account_code": "ACME", "src_ip": "192.0.2.10", "src_port": 5060,
         "sdp": SDP_OFFER},
        {"event": "early", **common, "ts": ts + 0.05, "code": 180, "sdp": ""},
        {"event": "answer", **common, "ts": ts + 2.5, "code": 200, "sdp": SDP_ANSWER,
         "route": "10.0.0.1:5060", **auth},
        {"event": "end", **common, "ts": ts + 62.5, "by": "caller", "reason": "bye",
         "start_ts": ts + 2.5, **auth},
    ]
    return [json.dumps(d).encode() for d in docs]


def allow_reply(n: int) -> dict[str, object]:
    return {"event": "auth", "tindex": n % 65536, "tlabel": 87654321 + n,
            "call_id": f"{n:08x}-4b2f-9a1c@192.0.2.10", "action": "allow",
            "max_duration": 3600, "account": "ACME"}


# ======================================================================================
# BASELINE: private copies of the previous implementation, for comparison only.
# ======================================================================================

# The previous netstring decoder: the one the fast-path tests check the new one against.
BaselineDecoder = ReferenceDecoder


def _b_str(doc: dict[str, Any], key: str, default: str | None = "",
           limit: int = ev.MAX_TEXT) -> str:
    v = doc.get(key, default)
    if type(v) is not str:
        if v is None:
            raise ev.EventError(f"missing '{key}'")
        if type(v) is int:
            v = str(v)
        elif type(v) is float and math.isfinite(v):
            v = repr(v)
        else:
            raise ev.EventError(f"'{key}' must be a string, not {ev._show(v)}")
    if len(v) > limit:
        raise ev.EventError(f"'{key}' is longer than {limit} characters ({len(v)})")
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ev.EventError(f"'{key}' is not valid Unicode (lone surrogate "
                                f"at character {exc.start})") from None
    return v


def _b_int(doc: dict[str, Any], key: str, default: int | None = 0, lo: int = 0,
           hi: int = ev.MAX_U32) -> int:
    v = doc.get(key, default)
    if type(v) is not int:
        if v is None:
            raise ev.EventError(f"missing '{key}'")
        if type(v) is float:
            if not v.is_integer():
                raise ev.EventError(f"'{key}' must be an integer, not {ev._show(v)}")
            if not lo <= v <= hi:
                raise ev.EventError(f"'{key}' must be in {lo}..{hi}, not {ev._show(v)}")
            return int(v)
        if type(v) is str:
            s = v.strip()
            if not (s.isascii() and s.isdigit() and len(s) <= ev.MAX_DIGITS):
                raise ev.EventError(f"'{key}' must be a number, not {ev._show(v)}")
            v = int(s)
        else:
            raise ev.EventError(f"'{key}' must be a number, not {ev._show(v)}")
    if not lo <= v <= hi:
        raise ev.EventError(f"'{key}' must be in {lo}..{hi}, not {ev._show(v)}")
    return v


def _b_ts_us(doc: dict[str, Any], key: str) -> int:
    v = doc.get(key, 0)
    if type(v) is not float and type(v) is not int:
        if type(v) is str and len(v) <= 40:
            try:
                v = float(v)
            except ValueError:
                raise ev.EventError(f"'{key}' must be a timestamp, not {ev._show(v)}"
                                    ) from None
        else:
            raise ev.EventError(f"'{key}' must be a timestamp, not {ev._show(v)}")
    if not 0 <= v < ev.MAX_TS:
        raise ev.EventError(f"'{key}' must be a Unix time in seconds in 0..2**33, "
                            f"not {ev._show(v)}")
    return round(float(v) * 1_000_000)


def _b_code(doc: dict[str, Any]) -> int:
    if "code" not in doc:
        return 0
    return _b_int(doc, "code", None, ev.MIN_CODE, ev.MAX_CODE)


_B_DECODER = json.JSONDecoder(parse_constant=ev._refuse_constant)


def baseline_parse_event(payload: bytes | str) -> ev.Event:
    """BASELINE parse_event: every field through its own checking function."""
    if len(payload) > MAX_FRAME:
        raise ev.EventError(f"longer than {MAX_FRAME} bytes")
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    except UnicodeDecodeError as exc:
        raise ev.EventError(f"not JSON: not UTF-8 ({exc.reason} at byte {exc.start})"
                            ) from None
    if text.count("[") + text.count("{") > ev.MAX_DEPTH and ev._too_deep(text):
        raise ev.EventError(f"not JSON: brackets nested deeper than {ev.MAX_DEPTH} levels "
                            "or unbalanced")
    try:
        doc = _B_DECODER.decode(text)
    except ev.EventError:
        raise
    except ValueError as exc:
        raise ev.EventError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ev.EventError("not JSON: nested too deeply") from None
    except MemoryError:
        raise ev.EventError("not JSON: too large to decode") from None
    if not isinstance(doc, dict):
        raise ev.EventError("not a JSON object")
    kind = doc.get("event")
    dialog = ev.Dialog(_b_str(doc, "call_id", None), _b_int(doc, "h_entry"),
                       _b_int(doc, "h_id"), _b_ts_us(doc, "ts"))
    if not dialog.call_id:
        raise ev.EventError("empty 'call_id'")
    if kind == "offer":
        return ev.Offer(dialog, _b_int(doc, "tindex", None), _b_int(doc, "tlabel", None),
                        _b_str(doc, "from_user"), _b_str(doc, "from_display"),
                        _b_str(doc, "pai_user"), _b_str(doc, "to_user"), _b_str(doc, "ruri"),
                        _b_str(doc, "ruri_user"), _b_str(doc, "account_code"),
                        _b_str(doc, "src_ip"), _b_int(doc, "src_port", 0, 0, ev.MAX_PORT),
                        _b_str(doc, "sdp", limit=ev.MAX_SDP))
    if kind == "early":
        return ev.Early(dialog, _b_code(doc), _b_str(doc, "sdp", limit=ev.MAX_SDP))
    if kind == "answer":
        return ev.Answer(dialog, _b_str(doc, "sdp", limit=ev.MAX_SDP), _b_str(doc, "route"))
    if kind == "media":
        side = _b_str(doc, "side")
        if side not in ("caller", "callee", ""):
            raise ev.EventError(f"'side' must be caller or callee, not {ev._show(side)}")
        return ev.MediaUpdate(dialog, side, _b_str(doc, "sdp", limit=ev.MAX_SDP))
    if kind == "end":
        return ev.End(dialog, _b_str(doc, "by"), _b_str(doc, "reason"),
                      _b_ts_us(doc, "start_ts") // 1000, _b_str(doc, "account"),
                      _b_str(doc, "callee"), _b_str(doc, "caller"))
    if kind == "failed":
        return ev.Failed(dialog, _b_code(doc), _b_str(doc, "reason"), _b_str(doc, "route"))
    if isinstance(kind, str):
        raise ev.EventError(f"unknown event {ev._show(kind)}")
    raise ev.EventError("missing 'event'" if kind is None else
                        f"'event' must be a string, not {ev._show(kind)}")


def baseline_frame_json(message: dict[str, object]) -> bytes:
    """BASELINE reply encoding (a new JSONEncoder per call, then the netstring)."""
    return encode(json.dumps(message, separators=(",", ":")).encode())


class BaselineEvapiClient:
    """BASELINE client: asyncio streams (StreamReader.read per read, a future and a task
    step each), with the same sync handling as the previous implementation."""

    def __init__(self, host: str, port: int, on_message: Callable[[bytes], None],
                 on_connect: Callable[[], Awaitable[None]] | None = None, *,
                 sync_timeout: float = 2.0) -> None:
        self.host, self.port = host, port
        self.on_message, self.on_connect = on_message, on_connect
        self.sync_timeout = sync_timeout
        self._writer: asyncio.StreamWriter | None = None
        self._sock: Any = None
        self.framing_errors = 0
        self.replayed: int | None = None

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._sock = writer.get_extra_info("socket")
        _b_tune(self._sock)
        self._writer = writer
        try:
            self.send({"event": "sync"})
            await self._read(reader)
        finally:
            self._writer = None
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        decoder = BaselineDecoder()
        syncing = True
        deadline = loop.time() + self.sync_timeout
        while True:
            if syncing:
                try:
                    data = await asyncio.wait_for(reader.read(65536),
                                                  max(0.0, deadline - loop.time()))
                except TimeoutError:
                    syncing = False
                    if self.on_connect is not None:
                        await self.on_connect()
                    continue
            else:
                data = await reader.read(65536)
            if not data:
                return
            _b_quickack(self._sock)
            for payload in decoder.feed(data):
                if b'"synced"' in payload and (count := _b_synced(payload)) is not None:
                    if syncing:
                        syncing = False
                        self.replayed = count
                        if self.on_connect is not None:
                            await self.on_connect()
                    continue
                if syncing and b'"replayed"' in payload:
                    deadline = loop.time() + self.sync_timeout
                self.on_message(payload)
            if decoder.errors:
                self.framing_errors += decoder.errors
                decoder.errors = 0

    def send(self, message: dict[str, object]) -> bool:
        w = self._writer
        if w is None or w.is_closing():
            return False
        w.write(baseline_frame_json(message))
        return True


def _b_synced(payload: bytes) -> int | None:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError, MemoryError):
        return None
    if not isinstance(doc, dict) or doc.get("event") != "synced":
        return None
    count = doc.get("replayed")
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def _b_tune(sock: Any) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _b_quickack(sock)


def _b_quickack(sock: Any) -> None:
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


# ======================================================================================
# Measurements
# ======================================================================================

def best_cpu(old: Callable[[], object], new: Callable[[], object], repeat: int
             ) -> tuple[float, float]:
    """The least process CPU time (s) of ``repeat`` runs of each, taken in turns so that
    both see the same machine."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in zip((old, new), times, strict=True):
            t0 = time.process_time()
            fn()
            out.append(time.process_time() - t0)
    return min(times[0]), min(times[1])


def bench_frame_parse(calls: int, repeat: int) -> None:
    frames = [[encode(p) for p in call_events(n)] for n in range(calls)]
    # The same events, and the same results, from both implementations.
    for call in frames[:50]:
        for f in call:
            got, = Decoder().feed(f)
            was, = BaselineDecoder().feed(f)
            assert got == was and ev.parse_event(got) == baseline_parse_event(was)

    def run(decoder_cls: type[Any], parse: Callable[[bytes], ev.Event],
            kind: int | None = None) -> Callable[[], None]:
        def go() -> None:
            d = decoder_cls()
            feed = d.feed
            for call in frames:
                for i, f in enumerate(call):
                    if kind is None or i == kind:
                        for p in feed(f):
                            parse(p)
        return go

    sizes = ", ".join(f"{n} {len(p)} B" for n, p in zip(
        ("offer", "early", "answer", "end"), call_events(0), strict=True))
    print(f"frame+parse, CPU per event ({calls} calls x 4 events, best of {repeat}; "
          f"SDP {len(SDP_OFFER)} B; payloads {sizes}):")
    print(f"  {'':8} {'baseline':>10} {'now':>10} {'ratio':>7}")
    names = ["offer", "early", "answer", "end"]
    for kind in [*range(4), None]:
        n = calls * (4 if kind is None else 1)
        old, new = (t / n * 1e6 for t in best_cpu(
            run(BaselineDecoder, baseline_parse_event, kind), run(Decoder, ev.parse_event, kind),
            repeat))
        name = "all 4" if kind is None else names[kind]
        print(f"  {name:8} {old:8.2f}us {new:8.2f}us {old / new:6.2f}x")
    payloads = [p for call in frames for p in call]
    old, new = best_cpu(lambda: [BaselineDecoder().feed(f) for f in payloads],
                        lambda: [Decoder().feed(f) for f in payloads], repeat)
    n = len(payloads)
    print(f"  framing alone (a decoder per frame): {old / n * 1e6:.2f}us -> "
          f"{new / n * 1e6:.2f}us")


def bench_reply(calls: int, repeat: int) -> None:
    replies = [allow_reply(n) for n in range(calls)]
    for m in replies[:50]:
        assert frame_json(m) == baseline_frame_json(m)
    old, new = (t / calls * 1e6 for t in best_cpu(
        lambda: [baseline_frame_json(m) for m in replies],
        lambda: [frame_json(m) for m in replies], repeat))
    print(f"reply (allow) dict -> netstring, CPU per reply: baseline {old:.2f}us, "
          f"now {new:.2f}us ({old / new:.2f}x)")


class FakeKamailio(threading.Thread):
    """Sends the events one write each, paced; answers `sync`; drains the replies."""

    def __init__(self, calls: int) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frames = [encode(p) for n in range(calls) for p in call_events(n)]
        self.replies = 0

    def run(self) -> None:
        conn, _ = self.listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = Decoder()
        while not decoder.feed(conn.recv(4096)):
            pass  # the `sync`
        conn.sendall(encode(b'{"event": "synced", "replayed": 0}'))
        drain = threading.Thread(target=self._drain, args=(conn,), daemon=True)
        drain.start()
        for f in self.frames:
            conn.sendall(f)
            time.sleep(0.0002)  # most reads then carry a single event, as at 300 calls/s
        drain.join(timeout=30)
        conn.close()
        self.listener.close()

    def _drain(self, conn: socket.socket) -> None:
        decoder = Decoder()
        want = len(self.frames) // 4
        while self.replies < want:
            data = conn.recv(65536)
            if not data:
                return
            self.replies += len(decoder.feed(data))


def stream_once(client_cls: type[Any], calls: int, loop_factory: Callable[[], Any]) -> float:
    """CPU of the event loop's thread per event, first event to last, with a reply to
    every offer."""
    kam = FakeKamailio(calls)
    kam.start()
    total = calls * 4
    got = 0
    t0 = t1 = 0.0
    done: asyncio.Future[None] | None = None
    client: Any = None

    def on_message(payload: bytes) -> None:
        nonlocal got, t0, t1
        if got == 0:
            t0 = time.thread_time()
        e = ev.parse_event(payload) if client_cls is EvapiClient \
            else baseline_parse_event(payload)
        if isinstance(e, ev.Offer):
            client.send({"event": "auth", "tindex": e.tindex, "tlabel": e.tlabel,
                         "call_id": e.dialog.call_id, "action": "allow",
                         "max_duration": 3600, "account": "ACME"})
        got += 1
        if got == total:
            t1 = time.thread_time()
            assert done is not None
            done.set_result(None)

    async def main() -> None:
        nonlocal done, client
        done = asyncio.get_running_loop().create_future()
        client = client_cls("127.0.0.1", kam.port, on_message)
        task = asyncio.create_task(client.run())
        await asyncio.wait_for(done, 120)
        while kam.replies < calls:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    loop = loop_factory()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    kam.join(timeout=10)
    return (t1 - t0) / total * 1e6


def bench_stream(calls: int, repeat: int) -> None:
    loops: list[tuple[str, Callable[[], Any]]] = []
    try:
        import uvloop
        loops.append(("uvloop", uvloop.new_event_loop))
    except ImportError:
        pass
    loops.append(("asyncio", asyncio.new_event_loop))
    print(f"stream over loopback TCP, CPU of the loop's thread per event (receive, frame, "
          f"parse, reply to offers; {calls} calls x 4 events, median of {repeat}):")
    for name, factory in loops:
        old, new = [], []
        for _ in range(repeat):
            old.append(stream_once(BaselineEvapiClient, calls, factory))
            new.append(stream_once(EvapiClient, calls, factory))
        o, n = statistics.median(old), statistics.median(new)
        print(f"  {name:8} baseline {o:7.2f}us   now {n:7.2f}us   ({o / n:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--stream-calls", type=int, default=3000)
    ap.add_argument("--stream-repeat", type=int, default=3)
    args = ap.parse_args()
    logging.getLogger("sidecar.evapi").setLevel(logging.ERROR)  # the reconnection notes
    bench_frame_parse(args.calls, args.repeat)
    bench_reply(args.calls, args.repeat)
    bench_stream(args.stream_calls, args.stream_repeat)


if __name__ == "__main__":
    main()
