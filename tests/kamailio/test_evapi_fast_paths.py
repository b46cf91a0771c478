"""The cheap paths of the evapi client give what the straightforward ones gave.

- the netstring decoder cuts frames straight out of each read: the same payloads and the
  same error counts as a decoder that buffers everything (the reference below), however
  the stream is split, garbage included;
- ``parse_event`` checks Kamailio's usual events in bulk: whenever the bulk check takes an
  event, the field-by-field checks give the same event;
- ``auth`` answers are formatted directly: the same bytes as the JSON encoder's;
- the client is an ``asyncio.Protocol``: the sync handshake holds on uvloop too, framing
  errors are counted, and an exception from ``on_message`` ends ``run()`` as it did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.kamailio import events
from sidecar.kamailio.evapi import EvapiClient, frame_json
from sidecar.kamailio.events import Answer, Dialog, Early, End, Failed, MediaUpdate, Offer
from sidecar.kamailio.netstring import MAX_FRAME, Decoder, encode

from . import test_evapi_sync

pytestmark = pytest.mark.timeout(60)


# --- framing ------------------------------------------------------------------------------

class ReferenceDecoder:
    """The previous netstring decoder (buffers everything and re-reads it from the start):
    the new one must frame every stream as it did. ``benchmarks/bench_evapi.py`` measures
    against it too."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame
        self.errors = 0

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            colon = buf.find(b":", 0, 12)
            if colon < 0:
                if len(buf) >= 12 or not buf.isdigit():
                    self._skip()
                    continue
                break
            head = bytes(buf[:colon])
            if not head.isdigit():
                self._skip()
                continue
            n = int(head)
            if n > self.max_frame:
                self._skip()
                continue
            end = colon + 1 + n
            if len(buf) <= end:
                break
            if buf[end] != ord(","):
                self._skip()
                continue
            out.append(bytes(buf[colon + 1:end]))
            del buf[:end + 1]
        return out

    def _skip(self) -> None:
        self.errors += 1
        buf = self._buf
        i = 1
        while i < len(buf):
            if buf[i - 1] == ord(",") and chr(buf[i]).isdigit():
                break
            i += 1
        del buf[:i]


_PIECES = st.one_of(
    st.binary(max_size=40).map(encode),
    st.binary(max_size=30),
    st.sampled_from([b",", b":", b"1", b"12:", b",5", b",\xb2", b",\xb9:", b"0:,",
                     b"99999999999:", b"3:abcd,", b"1048577:", b"00012:", b"\xb3:x,"]),
)


@given(st.lists(_PIECES, max_size=25), st.lists(st.integers(1, 60), min_size=1, max_size=8),
       st.sampled_from([MAX_FRAME, 16]))
def test_the_decoder_matches_the_reference_however_the_stream_is_split(
    pieces: list[bytes], steps: list[int], max_frame: int
) -> None:
    stream = b"".join(pieces)
    new, ref = Decoder(max_frame), ReferenceDecoder(max_frame)
    got: list[bytes] = []
    want: list[bytes] = []
    i = k = 0
    while i < len(stream):
        step = steps[k % len(steps)]
        k += 1
        chunk = stream[i:i + step]
        i += step
        a, b = new.feed(chunk), ref.feed(chunk)
        assert all(type(p) is bytes for p in a)
        got += a
        want += b
    assert got == want
    assert new.errors == ref.errors


def test_a_large_frame_in_small_pieces_is_put_together_once() -> None:
    payload = b"x" * MAX_FRAME
    stream = encode(payload) + encode(b"next")
    d = Decoder()
    out: list[bytes] = []
    for i in range(0, len(stream), 97):
        out += d.feed(stream[i:i + 97])
    assert out == [payload, b"next"] and d.errors == 0


def test_the_decoder_takes_bytearray_and_memoryview() -> None:
    d = Decoder()
    assert d.feed(bytearray(b"3:abc,")) == [b"abc"]
    assert d.feed(memoryview(b"2:de,1:")) == [b"de"]
    assert d.feed(bytearray(b"f,")) == [b"f"]


# --- parsing: the bulk check agrees with the field-by-field checks ---------------------

SDP = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.1\r\nm=audio 6000 RTP/AVP 8\r\n"
COMMON: dict[str, object] = {"call_id": "c1@h", "h_entry": 0, "h_id": 7,
                             "ts": 1795262400.1234567}
AUTH: dict[str, object] = {"account": "ACME", "callee": "4930123", "caller": "4930555"}
KAMAILIO_EVENTS: list[dict[str, object]] = [
    {"event": "offer", **COMMON, "tindex": 1, "tlabel": 2, "from_user": "alice",
     "from_display": "Alice", "from_domain": "example.org", "pai_user": "",
     "to_user": "4930123", "ruri": "sip:4930123@10.0.0.1;ac=ACME", "ruri_user": "4930123",
     "account_code": "ACME", "src_ip": "192.0.2.1", "src_port": 5060, "sdp": SDP},
    {"event": "early", **COMMON, "code": 183, "sdp": SDP},
    {"event": "answer", **COMMON, "code": 200, "sdp": SDP, "route": "10.0.0.1:5060", **AUTH},
    {"event": "media", **COMMON, "side": "callee", "sdp": SDP},
    {"event": "end", **COMMON, "by": "proxy", "reason": "rpc", "start_ts": 1795262390.5,
     **AUTH},
    {"event": "failed", **COMMON, "code": 486, "reason": "Busy Here", "route": ""},
]


@pytest.mark.parametrize("doc", KAMAILIO_EVENTS, ids=lambda d: str(d["event"]))
def test_kamailio_events_take_the_bulk_path_and_equal_the_checked_result(
    doc: dict[str, object]
) -> None:
    text = json.dumps(doc)
    quick = events._plain_event(json.loads(text), len(text))
    assert quick is not None
    assert quick == events._checked_event(json.loads(text)) == events.parse_event(text.encode())
    assert repr(quick) == repr(events._checked_event(json.loads(text)))
    assert hash(quick) == hash(events._checked_event(json.loads(text)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.dialog = quick.dialog  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.dialog.call_id = "x"  # type: ignore[misc]
    for f in dataclasses.fields(quick):
        assert type(getattr(quick, f.name)) is type(getattr(events._checked_event(
            json.loads(text)), f.name))


def test_the_bulk_path_builds_the_same_objects_as_the_constructors() -> None:
    d = Dialog("c", 1, 2, 3)
    text = json.dumps({"event": "early", "call_id": "c", "h_entry": 1, "h_id": 2,
                       "ts": 0.000003, "code": 180, "sdp": ""})
    assert events.parse_event(text) == Early(d, 180, "")
    assert type(events.parse_event(text)) is Early
    assert {Offer, Early, Answer, MediaUpdate, End, Failed} >= {
        type(events.parse_event(json.dumps(doc))) for doc in KAMAILIO_EVENTS}


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 2**33), st.sampled_from([2**32 - 1, 2**32,
    65535, 65536, 99, 100, 699, 700, 0, 2**64]), st.floats(allow_nan=True),
    st.sampled_from([0.0, 3.0, 1.5, 2.0**33, 8589934591.9, -0.0]),
    st.text(st.characters(exclude_categories=()), max_size=8),
    st.sampled_from(["", "caller", "callee", "proxy", "7", "a" * 1024, "a" * 1025,
                     "\ud800", "x\udfff", "\u00e9", "\U0001f4de"]),
    st.just("s" * 65537), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_KEYS = sorted({k for d in KAMAILIO_EVENTS for k in d})


@given(st.sampled_from(KAMAILIO_EVENTS),
       st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES | st.just(...)), max_size=4),
       st.booleans())
def test_the_bulk_check_never_takes_what_the_full_checks_refuse_or_read_otherwise(
    base: dict[str, object], changes: list[tuple[str, object]], ascii_only: bool
) -> None:
    doc = dict(base)
    for key, value in changes:
        if value is ...:
            doc.pop(key, None)
        else:
            doc[key] = value
    try:
        payload = json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    except ValueError:
        return
    try:
        text = payload.decode("utf-8")
        doc = events._DECODER.decode(text)
    except (UnicodeDecodeError, events.EventError):  # refused before the field checks
        with pytest.raises(events.EventError):
            events.parse_event(payload)
        return
    try:
        checked: object = events._checked_event(doc)
    except events.EventError as exc:
        checked = exc
    if b"\\u" not in payload:  # the bulk check's condition (parse_event's `plain`)
        quick = events._plain_event(events._DECODER.decode(text), len(text))
        if quick is not None:
            assert quick == checked
    try:
        parsed: object = events.parse_event(payload)
    except events.EventError as exc:
        assert isinstance(checked, events.EventError)
        assert str(exc) == str(checked)
        return
    assert parsed == checked


def test_a_escape_in_a_plain_ascii_payload_is_still_checked() -> None:
    for literal in ('"\\ud800"', '"a\\udfff"', '"\\uDC00"'):
        payload = json.dumps(KAMAILIO_EVENTS[0]).replace('"alice"', literal).encode()
        assert payload.isascii()
        with pytest.raises(events.EventError, match="'from_user' is not valid Unicode"):
            events.parse_event(payload)
    ok = json.dumps(KAMAILIO_EVENTS[0]).replace('"alice"', '"\\u00e9"').encode()
    ev = events.parse_event(ok)
    assert isinstance(ev, Offer) and ev.from_user == "\u00e9"


def test_the_decoder_fast_path_keeps_the_standard_errors() -> None:
    for text in (' {"a": 1}', '{"a": 1} ', '{"a": 1}x', "", "  ", "[1,", "nul"):
        try:
            want: object = json.JSONDecoder(parse_constant=events._refuse_constant).decode(text)
        except ValueError as exc:
            want = str(exc)
        try:
            got: object = events._DECODER.decode(text)
        except ValueError as exc:
            got = str(exc)
        assert got == want, text


# --- auth answers -----------------------------------------------------------------------

_JSONABLE = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                      st.text(st.characters(exclude_categories=()), max_size=12))


@given(st.one_of(
    st.fixed_dictionaries({"event": st.just("auth"), "tindex": st.integers(0, 2**32),
                           "tlabel": st.integers(0, 2**32), "call_id": _JSONABLE,
                           "action": st.just("allow"), "max_duration": _JSONABLE,
                           "account": _JSONABLE}),
    st.fixed_dictionaries({"event": st.just("auth"), "tindex": _JSONABLE,
                           "tlabel": st.integers(), "call_id": st.text(max_size=40),
                           "action": st.sampled_from(["reject", "busy"]),
                           "code": st.integers(400, 699), "reason": _JSONABLE}),
    st.dictionaries(st.text(max_size=8), _JSONABLE, max_size=8)))
def test_replies_are_the_json_encoders_bytes(message: dict[str, object]) -> None:
    assert frame_json(message) == encode(json.dumps(message, separators=(",", ":")).encode())


def test_the_usual_answers_take_the_template() -> None:
    allow = {"event": "auth", "tindex": 5, "tlabel": 6, "call_id": 'a"b\\c\u00e9',
             "action": "allow", "max_duration": 3600, "account": "ACME"}
    assert frame_json(allow) == encode(
        b'{"event":"auth","tindex":5,"tlabel":6,"call_id":"a\\"b\\\\c\\u00e9",'
        b'"action":"allow","max_duration":3600,"account":"ACME"}')
    busy = {"event": "auth", "tindex": 5, "tlabel": 6, "call_id": "x", "action": "busy",
            "code": 503, "reason": "Service Unavailable"}
    assert json.loads(Decoder().feed(frame_json(busy))[0]) == busy
    assert frame_json({"event": "sync"}) == b'16:{"event":"sync"},'


# --- the client ------------------------------------------------------------------------

@pytest.fixture
def uvloop_policy() -> Any:
    uvloop = pytest.importorskip("uvloop")
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(old)


@pytest.mark.parametrize("scenario", [
    test_evapi_sync.test_replayed_events_reach_on_message_before_on_connect,
    test_evapi_sync.test_without_synced_on_connect_runs_after_the_timeout,
    test_evapi_sync.test_a_long_replay_moves_the_deadline_and_a_late_synced_is_swallowed,
    test_evapi_sync.test_every_reconnection_syncs_again,
], ids=lambda f: f.__name__)
def test_the_sync_handshake_on_uvloop(uvloop_policy: Any, scenario: Callable[[], None]
                                      ) -> None:
    scenario()


def _serve_once(data: list[bytes], pause: float = 0.05) -> Callable[..., Any]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await test_evapi_sync.read_one(reader)
        for chunk in data:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(pause)
        await asyncio.sleep(5)
        writer.close()
    return handler


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_framing_errors_are_counted_and_split_frames_put_together(loop: str) -> None:
    got: list[bytes] = []
    synced = test_evapi_sync.frame({"event": "synced", "replayed": 0})
    offer = test_evapi_sync.frame(test_evapi_sync.event("offer", 1))
    data = [synced, b"xx:garbage," + offer[:10], offer[10:], b"5:abc", b"de!," + offer]

    async def body(port: int) -> None:
        client = EvapiClient("127.0.0.1", port, got.append)
        assert not client.send({"event": "x"})  # not connected

        async def done() -> None:
            while len(got) < 2:
                await asyncio.sleep(0.01)
            assert client.send({"event": "x"})

        await test_evapi_sync.run_client(client, done)
        assert client.framing_errors == 2 and client.replayed == 0
        assert client.connects == 1 and not client.connected.is_set()
        assert not client.send({"event": "x"})

    run = _runner(loop)
    run(test_evapi_sync.with_server(_serve_once(data), body))
    assert got == [offer[offer.index(b":") + 1:-1]] * 2


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_exception_from_on_message_ends_run(loop: str) -> None:
    synced = test_evapi_sync.frame({"event": "synced", "replayed": 0})
    data = [synced + test_evapi_sync.frame(test_evapi_sync.event("offer", 1))]

    def on_message(payload: bytes) -> None:
        raise RuntimeError("boom")

    async def body(port: int) -> None:
        client = EvapiClient("127.0.0.1", port, on_message)
        with pytest.raises(RuntimeError, match="boom"):
            await asyncio.wait_for(client.run(), 10)
        assert not client.connected.is_set()

    _runner(loop)(test_evapi_sync.with_server(_serve_once(data), body))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_nothing_is_read_while_on_connect_runs(loop: str) -> None:
    """A flood sent right after `synced` stays in the socket until on_connect is done."""
    log: list[str] = []
    flood = b"".join(test_evapi_sync.frame(test_evapi_sync.event("end", n))
                     for n in range(2000))
    data = [test_evapi_sync.frame({"event": "synced", "replayed": 0}), flood]
    client: EvapiClient | None = None

    async def on_connect() -> None:
        log.append("connect-start")
        await asyncio.sleep(0.3)
        log.append("connect-end")

    async def body(port: int) -> None:
        nonlocal client
        client = EvapiClient("127.0.0.1", port, lambda p: log.append("message"), on_connect)

        async def done() -> None:
            while log.count("message") < 2000:
                await asyncio.sleep(0.01)

        await test_evapi_sync.run_client(client, done)

    _runner(loop)(test_evapi_sync.with_server(_serve_once(data, pause=0.0), body))
    assert log == ["connect-start", "connect-end"] + ["message"] * 2000


def _runner(loop: str) -> Callable[[Any], None]:
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return lambda coro: uvloop.run(coro)
    return lambda coro: asyncio.run(coro)
