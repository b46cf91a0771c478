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


# --- validation: every number checked, every string bounded, nothing but EventError ---

def _offer(**changes: object) -> dict[str, object]:
    return OFFER | changes


def _raw(doc: dict[str, object], key: str, literal: str) -> bytes:
    """``doc`` as JSON with ``key``'s value written as the raw text ``literal``."""
    return json.dumps(doc | {key: "@@"}).replace('"@@"', literal).encode()


@pytest.mark.parametrize(("key", "literal", "needle"), [
    ("ts", "1e400", "'ts' must be a Unix time"),
    ("ts", "-1e400", "'ts' must be a Unix time"),
    ("ts", "NaN", "NaN is not a number"),
    ("ts", "Infinity", "Infinity is not a number"),
    ("ts", "-Infinity", "-Infinity is not a number"),
    ("ts", '"nan"', "'ts' must be a Unix time"),
    ("ts", '"inf"', "'ts' must be a Unix time"),
    ("ts", '"1e400"', "'ts' must be a Unix time"),
    ("ts", "-1", "'ts' must be a Unix time"),
    ("ts", "8589934592", "'ts' must be a Unix time"),
    ("ts", "1" + "0" * 400, "'ts' must be a Unix time"),
    ("ts", "1" + "0" * 5000, "not JSON"),  # beyond Python's integer conversion limit
    ("ts", "true", "'ts' must be a timestamp"),
    ("ts", "[1]", "'ts' must be a timestamp"),
    ("h_entry", "1e400", "'h_entry' must be an integer"),
    ("h_entry", "NaN", "NaN is not a number"),
    ("h_entry", "4294967296", "'h_entry' must be in 0..4294967295"),
    ("h_entry", "-1", "'h_entry' must be in 0..4294967295"),
    ("h_entry", "1" + "0" * 4000, "'h_entry' must be in 0..4294967295, not a huge integer"),
    ("h_id", "2.5", "'h_id' must be an integer, not 2.5"),
    ("h_id", '"--5"', "'h_id' must be a number"),
    ("h_id", '"\u00b2"', "'h_id' must be a number"),  # a Unicode digit int() refuses
    ("h_id", '"99999999999"', "'h_id' must be a number"),
    ("h_id", "{}", "'h_id' must be a number, not a JSON object"),
    ("tindex", "1.5", "'tindex' must be an integer, not 1.5"),
    ("tindex", "1e400", "'tindex' must be an integer"),
    ("tindex", "false", "'tindex' must be a number"),
    ("tindex", "null", "missing 'tindex'"),
    ("tlabel", "4294967296.0", "'tlabel' must be in 0..4294967295"),
    ("tlabel", "-0.5", "'tlabel' must be an integer"),
    ("src_port", "65536", "'src_port' must be in 0..65535"),
    ("src_port", "5060.5", "'src_port' must be an integer"),
    ("from_user", "1e400", "'from_user' must be a string"),
    ("from_user", "[]", "'from_user' must be a string, not a JSON array"),
])
def test_bad_numbers_are_refused_naming_the_field(key: str, literal: str, needle: str) -> None:
    with pytest.raises(EventError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        parse_event(_raw(OFFER, key, literal))


@pytest.mark.parametrize(("doc", "needle"), [
    ({"event": "early", "call_id": "c", "code": 99}, "'code' must be in 100..699"),
    ({"event": "early", "call_id": "c", "code": 700}, "'code' must be in 100..699"),
    ({"event": "failed", "call_id": "c", "code": 486.5}, "'code' must be an integer"),
    ({"event": "failed", "call_id": "c", "code": None}, "missing 'code'"),
    ({"event": "end", "call_id": "c", "start_ts": -5}, "'start_ts' must be a Unix time"),
    ({"event": "end", "call_id": "c", "start_ts": 1e300}, "'start_ts' must be a Unix time"),
    ({"event": 7, "call_id": "c"}, "'event' must be a string, not 7"),
    ({"event": [[1]], "call_id": "c"}, "'event' must be a string, not a JSON array"),
    ({"call_id": "c"}, "missing 'event'"),
])
def test_bad_codes_timestamps_and_kinds_are_refused(doc: dict[str, object], needle: str
                                                    ) -> None:
    with pytest.raises(EventError, match=needle.replace(".", r"\.")):
        parse_event(json.dumps(doc))


def test_integral_floats_and_digit_strings_are_integers() -> None:
    ev = parse_event(json.dumps(_offer(tindex=3.0, tlabel="7", h_entry=0, h_id=4294967295.0,
                                       src_port=" 65535 ")))
    assert isinstance(ev, Offer)
    assert (ev.tindex, ev.tlabel, ev.dialog.h_entry, ev.dialog.h_id, ev.src_port) == (
        3, 7, 0, 4294967295, 65535)
    assert all(type(v) is int for v in (ev.tindex, ev.tlabel, ev.dialog.h_id, ev.src_port))


def test_absent_or_zero_timestamps_mean_none() -> None:
    for ts in (0, 0.0, "0"):
        ev = parse_event(json.dumps(_offer(ts=ts)))
        assert ev.dialog.ts_us == 0
    doc = dict(OFFER)
    del doc["ts"]
    assert parse_event(json.dumps(doc)).dialog.ts_us == 0
    e = parse_event('{"event":"end","call_id":"x","start_ts":0}')
    assert isinstance(e, End) and e.start_ts_ms == 0
    last = parse_event(json.dumps(_offer(ts=2**33 - 0.5)))
    assert last.dialog.ts_us == (2**33) * 1_000_000 - 500_000


def test_absent_codes_mean_unknown() -> None:
    from sidecar.kamailio.events import Early, Failed

    e = parse_event('{"event":"early","call_id":"x"}')
    f = parse_event('{"event":"failed","call_id":"x","code":"487"}')
    assert isinstance(e, Early) and e.code == 0
    assert isinstance(f, Failed) and f.code == 487


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deep_nesting_is_refused_not_a_recursion_error(depth: int) -> None:
    for text in ("[" * depth, "[" * depth + "]" * depth,
                 json.dumps(OFFER)[:-1] + ',"x":' + '{"a":' * depth + "1" + "}" * depth + "}"):
        with pytest.raises(EventError, match="nested deeper than 32 levels"):
            parse_event(text.encode())


def test_nesting_inside_strings_and_moderate_nesting_are_fine() -> None:
    ev = parse_event(json.dumps(_offer(from_display="[" * 1000 + "{" * 20)))
    assert isinstance(ev, Offer) and ev.from_display.startswith("[[[")
    extra = '{"a":' * 31 + "1" + "}" * 31
    assert isinstance(parse_event(json.dumps(OFFER)[:-1] + f',"x":{extra}}}'), Offer)


def test_recursion_error_from_json_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    import sidecar.kamailio.events as events

    def boom(_: str) -> object:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(events._DECODER, "decode", boom)
    with pytest.raises(EventError, match="nested too deeply"):
        parse_event(json.dumps(OFFER))

    def oom(_: str) -> object:
        raise MemoryError

    monkeypatch.setattr(events._DECODER, "decode", oom)
    with pytest.raises(EventError, match="too large"):
        parse_event(json.dumps(OFFER))


@pytest.mark.parametrize("key", ["call_id", "from_user", "from_display", "pai_user", "to_user",
                                 "ruri", "ruri_user", "account_code", "src_ip", "sdp"])
def test_lone_surrogates_are_refused_naming_the_field(key: str) -> None:
    for bad in ("\ud800", "abc\udfff", "\udc00\ud800x"):
        payload = json.dumps(_offer(**{key: bad})).encode()  # escaped: \ud800
        assert b"\\ud" in payload
        with pytest.raises(EventError, match=f"'{key}' is not valid Unicode"):
            parse_event(payload)
    with pytest.raises(EventError, match=f"'{key}' is not valid Unicode"):
        parse_event(json.dumps(_offer(**{key: "x\ud800"}), ensure_ascii=False))


def test_paired_surrogates_and_other_unicode_are_fine() -> None:
    ev = parse_event(json.dumps(_offer(from_display="J\u00fcrgen \U0001f4de")).encode())
    assert isinstance(ev, Offer) and ev.from_display == "J\u00fcrgen \U0001f4de"
    raw = b'{"event":"answer","call_id":"\\ud83d\\udcde","route":"r\xc3\xa9"}'
    a = parse_event(raw)
    assert isinstance(a, Answer) and a.dialog.call_id == "\U0001f4de" and a.route == "r\u00e9"


def test_utf8_encoded_surrogates_and_bad_utf8_are_not_json() -> None:
    with pytest.raises(EventError, match="not JSON: not UTF-8"):
        parse_event(b'{"event":"answer","call_id":"\xed\xa0\x80"}')


@pytest.mark.parametrize(("key", "limit"), [("call_id", 1024), ("from_user", 1024),
                                            ("ruri", 1024), ("account_code", 1024),
                                            ("sdp", 65536)])
def test_long_strings_are_refused_naming_the_field(key: str, limit: int) -> None:
    assert isinstance(parse_event(json.dumps(_offer(**{key: "a" * limit}))), Offer)
    with pytest.raises(EventError, match=f"'{key}' is longer than {limit} characters"):
        parse_event(json.dumps(_offer(**{key: "a" * (limit + 1)})))


def test_oversized_payload_is_refused() -> None:
    from sidecar.kamailio.netstring import MAX_FRAME

    with pytest.raises(EventError, match="longer than"):
        parse_event(b" " * (MAX_FRAME + 1))


# --- property: whatever arrives, an event with checked fields or EventError ---

_U32_KEYS = ("h_entry", "h_id")


def _check_event(ev: object) -> None:
    from sidecar.kamailio.events import Early, Failed, MediaUpdate

    assert isinstance(ev, Offer | Early | Answer | MediaUpdate | End | Failed)
    d = ev.dialog
    for v in (d.h_entry, d.h_id):
        assert type(v) is int and 0 <= v <= 2**32 - 1
    assert type(d.ts_us) is int and 0 <= d.ts_us <= 2**33 * 1_000_000
    assert type(d.call_id) is str and 0 < len(d.call_id) <= 1024
    strings: list[str] = [d.call_id]
    if isinstance(ev, Offer):
        for v in (ev.tindex, ev.tlabel):
            assert type(v) is int and 0 <= v <= 2**32 - 1
        assert type(ev.src_port) is int and 0 <= ev.src_port <= 65535
        strings += [ev.from_user, ev.from_display, ev.pai_user, ev.to_user, ev.ruri,
                    ev.ruri_user, ev.account_code, ev.src_ip]
        assert len(ev.sdp) <= 65536
        strings.append(ev.sdp)
    if isinstance(ev, Early | Failed):
        assert type(ev.code) is int and (ev.code == 0 or 100 <= ev.code <= 699)
    if isinstance(ev, End):
        assert type(ev.start_ts_ms) is int and 0 <= ev.start_ts_ms <= 2**33 * 1000
    for s in strings:
        assert type(s) is str
        s.encode("utf-8")  # valid Unicode scalar values only


def _parse_checked(payload: bytes | str) -> None:
    try:
        ev = parse_event(payload)
    except EventError:
        return
    _check_event(ev)


_ANY_CHAR = st.characters(exclude_categories=())  # surrogates included
_SCALARS = (st.none() | st.booleans() | st.integers()
            | st.integers(-(2**70), 2**70) | st.floats()
            | st.sampled_from([0, 1, 2**32 - 1, 2**32, 65535, 65536, 99, 100, 699, 700,
                               1.5, 3.0, -0.0, 1e400, float("nan"), 2.0**33, "7", " 8 ",
                               "1.5", "nan", "inf", "-1", "\u00b2", "\u0663", "99999999999"])
            | st.text(_ANY_CHAR, max_size=40))
_JSON = st.recursive(_SCALARS, lambda c: st.lists(c, max_size=4)
                     | st.dictionaries(st.text(_ANY_CHAR, max_size=8), c, max_size=4),
                     max_leaves=20)
_KEYS = ["event", "call_id", "h_entry", "h_id", "ts", "tindex", "tlabel", "from_user",
         "from_display", "pai_user", "to_user", "ruri", "ruri_user", "account_code", "src_ip",
         "src_port", "sdp", "code", "side", "by", "reason", "start_ts", "route"]
_EVENTS = st.sampled_from(["offer", "early", "answer", "media", "end", "failed", "auth", ""])


@st.composite
def _event_docs(draw: st.DrawFn) -> dict[str, object]:
    """Kamailio-shaped objects: a real event with some fields replaced by anything."""
    doc: dict[str, object] = dict(OFFER) | {"event": draw(_EVENTS), "code": 180,
                                            "side": "caller", "start_ts": 1.5}
    for key in draw(st.lists(st.sampled_from(_KEYS), max_size=4)):
        if draw(st.booleans()):
            doc[key] = draw(_JSON)
        else:
            doc.pop(key, None)
    return doc


@given(st.binary(max_size=2000))
def test_any_bytes_give_an_event_or_event_error(payload: bytes) -> None:
    _parse_checked(payload)


@given(_JSON)
def test_any_json_value_gives_an_event_or_event_error(value: object) -> None:
    _parse_checked(json.dumps(value).encode())
    _parse_checked(json.dumps(value, ensure_ascii=False))


@given(_event_docs(), st.integers(0, 3000), st.sampled_from(
    ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1" + "0" * 5000, "1" * 4300,
     "1.5", "-1", "4294967296", "1e-400", "0.0", '"\\ud800"', '"\\udfff\\ud800"', "[]"]))
def test_event_shaped_objects_with_hostile_fields_give_an_event_or_event_error(
    doc: dict[str, object], depth: int, literal: str
) -> None:
    _parse_checked(json.dumps(doc).encode())
    _parse_checked(json.dumps(doc, ensure_ascii=False))
    for key in ("ts", "h_entry", "tindex", "src_port", "code", "call_id", "start_ts"):
        _parse_checked(_raw(doc, key, literal))
    nested = "[" * depth + "1" + "]" * depth
    _parse_checked(_raw(doc, "extra", nested))
    _parse_checked(_raw(doc, "ts", nested))
    _parse_checked(_raw(doc, "x", "[" * depth))
