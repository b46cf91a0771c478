"""evapi framing and event parsing: well-formed input decodes, garbage is skipped."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.kamailio.events import Answer, End, EventError, Offer, parse_event
from sidecar.kamailio.netstring import Decoder, encode


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 50))
def test_any_split_of_the_stream_gives_the_same_messages(msgs: list[bytes], step: int) -> None:
    stream = b"".join(encode(m) for m in msgs)
    d = Decoder()
    out: list[bytes] = []
    for i in range(0, len(stream), step):
        out += d.feed(stream[i:i + step])
    assert out == msgs and d.errors == 0


@pytest.mark.parametrize("garbage", [b"xx:abc,", b"5:abc,", b"99999999999:", b"hello world",
                                     b"3:abcd,", b"\x00\xff\xfe"])
def test_garbage_is_skipped_and_the_next_frame_still_decodes(garbage: bytes) -> None:
    d = Decoder()
    good = encode(b'{"event":"answer"}')
    out = d.feed(garbage + b"," + good)
    assert out[-1] == b'{"event":"answer"}'
    assert d.errors >= 1


def test_truncated_frame_waits_for_the_rest() -> None:
    d = Decoder()
    assert d.feed(b"10:01234") == []
    assert d.feed(b"56789,") == [b"0123456789"]


OFFER = {"event": "offer", "call_id": "abc@host", "h_entry": 12, "h_id": 34,
         "ts": 1795262400.123456, "tindex": 5, "tlabel": 6, "from_user": "alice",
         "from_display": "<script>", "pai_user": "", "to_user": "4930111",
         "ruri": "sip:4930111@127.0.0.1;ac=ACME", "ruri_user": "4930111",
         "account_code": "ACME", "src_ip": "127.0.0.1", "src_port": "5070",
         "sdp": "v=0\r\nm=audio 6000 RTP/AVP 8\r\n"}


def test_offer_parses() -> None:
    ev = parse_event(json.dumps(OFFER))
    assert isinstance(ev, Offer)
    assert (ev.dialog.call_id, ev.dialog.h_entry, ev.dialog.ts_ms) == (
        "abc@host", 12, 1795262400123)
    assert ev.src_port == 5070 and ev.account_code == "ACME"


def test_answer_and_end() -> None:
    a = parse_event('{"event":"answer","call_id":"x","h_entry":1,"h_id":2,"ts":"10.5",'
                    '"sdp":""}')
    assert isinstance(a, Answer) and a.dialog.ts_ms == 10500
    e = parse_event('{"event":"end","call_id":"x","h_entry":1,"h_id":2,"ts":11,'
                    '"by":"callee","reason":"bye","start_ts":10.5}')
    assert isinstance(e, End) and e.by == "callee" and e.start_ts_ms == 10500


@pytest.mark.parametrize(("payload", "needle"), [
    (b"not json", "not JSON"),
    (b"[1,2]", "not a JSON object"),
    (b'{"event":"offer"}', "missing 'call_id'"),
    (b'{"event":"bogus","call_id":"x"}', "unknown event 'bogus'"),
    (b'{"event":"answer","call_id":"x","h_entry":"zz"}', "'h_entry' must be a number"),
    (b'{"event":"offer","call_id":"x"}', "missing 'tindex'"),
    (b'\xff\xfe', "not JSON"),
])
def test_bad_events_are_named(payload: bytes, needle: str) -> None:
    with pytest.raises(EventError, match=needle):
        parse_event(payload)


def test_media_update_early_without_sdp_and_routes_parse() -> None:
    from sidecar.kamailio.events import Early, Failed, MediaUpdate

    m = parse_event(json.dumps({"event": "media", "call_id": "c", "side": "callee",
                                "sdp": "v=0\r\n", "ts": 1.5}))
    assert isinstance(m, MediaUpdate) and m.side == "callee" and m.dialog.ts_ms == 1500
    e = parse_event(json.dumps({"event": "early", "call_id": "c", "code": 180, "sdp": ""}))
    assert isinstance(e, Early) and e.code == 180 and e.sdp == ""
    a = parse_event(json.dumps({"event": "answer", "call_id": "c", "route": "10.0.0.9:5060"}))
    assert isinstance(a, Answer) and a.route == "10.0.0.9:5060"
    f = parse_event(json.dumps({"event": "failed", "call_id": "c", "code": 486,
                                "reason": "Busy", "route": "carrier-b"}))
    assert isinstance(f, Failed) and f.route == "carrier-b"
    with pytest.raises(EventError, match="'side' must be caller or callee"):
        parse_event(json.dumps({"event": "media", "call_id": "c", "side": "proxy"}))
