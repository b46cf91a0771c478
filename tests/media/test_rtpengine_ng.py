"""rtpengine's ng protocol: the bencode coder, and the client against the real daemon
(Debian's rtpengine-daemon, userspace mode on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.lab.rtpengine import RtpEngine
from sidecar.media.rtpengine import BencodeError, NgClient, NgError, bdecode, bencode, received_at

values = st.recursive(
    st.binary(max_size=40) | st.integers(min_value=-(2**63), max_value=2**63),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30)


@given(values)
def test_what_is_encoded_decodes_to_the_same(value: object) -> None:
    assert bdecode(bencode(value)) == value  # type: ignore[arg-type]


def test_known_forms() -> None:
    assert bencode({"command": "ping"}) == b"d7:command4:pinge"
    assert bencode({"b": 1, "a": [b"x", -2]}) == b"d1:al1:xi-2ee1:bi1ee"  # keys sorted
    assert bencode("é") == b"2:\xc3\xa9"
    assert bdecode(b"d6:result4:ponge") == {"result": b"pong"}


@pytest.mark.parametrize(("data", "message"), [
    (b"", "truncated at offset 0"),
    (b"i12", "unterminated integer at offset 0"),
    (b"i012e", "bad integer"),
    (b"i-0e", "bad integer"),
    (b"ie", "bad integer"),
    (b"5:abc", "truncated at offset 0"),
    (b"l1:a", "unterminated list"),
    (b"di1e1:ae", "dictionary key is not a string"),
    (b"d1:a", "truncated at offset 4"),
    (b"x", "unexpected byte"),
    (b"i1ei2e", "trailing bytes at offset 3"),
    (b"l" * 100 + b"e" * 100, "nested deeper than 64 levels"),
])
def test_bad_bencode_is_refused_naming_where(data: bytes, message: str) -> None:
    with pytest.raises(BencodeError, match=message):
        bdecode(data)


def test_values_without_a_bencode_form_are_refused() -> None:
    for bad in (True, 1.5, None, {1: b"x"}):
        with pytest.raises(BencodeError):
            bencode(bad)  # type: ignore[arg-type]


def test_received_at_sums_the_streams_of_one_local_port() -> None:
    reply = bdecode(
        b"d4:tagsd1:Ad6:mediasld7:streamsld10:local porti30000e13:local address"
        b"9:127.0.0.111:last packeti7e5:statsd7:packetsi5e5:bytesi800eeeeeee"
        b"1:Bd6:mediasld7:streamsld10:local porti30002e5:statsd7:packetsi9eeeeeeeee")
    assert isinstance(reply, dict)
    a = received_at(reply, 30000, "127.0.0.1")
    assert a is not None and (a.tag, a.packets, a.bytes, a.last_packet) == ("A", 5, 800, 7)
    b = received_at(reply, 30002)
    assert b is not None and b.packets == 9
    assert received_at(reply, 30000, "10.0.0.1") is None
    assert received_at(reply, 1234) is None
    assert received_at({}, 30000) is None


def test_ng_address_is_checked() -> None:
    assert NgClient.from_url("udp:127.0.0.1:2223").address == ("127.0.0.1", 2223)
    for bad in ("udp:127.0.0.1", "udp::2223", "udp:h:99999", "tcp:h:x"):
        with pytest.raises(ValueError, match="expected udp:HOST:PORT"):
            NgClient.from_url(bad)


@pytest.mark.timeout(60)
def test_the_real_daemon_answers_ping_and_refuses_an_unknown_call(tmp_path: Path) -> None:
    with RtpEngine(tmp_path) as rtpe:
        client = rtpe.client()
        assert client.ping()
        with pytest.raises(NgError, match="Unknown call-id"):
            client.query("no-such-call@test")
        pid = rtpe.pid
        assert pid is not None and Path(f"/proc/{pid}").exists()
    assert not rtpe.running()
    assert "Startup complete" in (tmp_path / "rtpengine.log").read_text()
    # Nothing listens any more: refused (ICMP on loopback) or, elsewhere, a timeout.
    with pytest.raises((ConnectionRefusedError, TimeoutError),
                       match=f"rtpengine 127.0.0.1:{rtpe.ng_port} .*'ping'"):
        NgClient("127.0.0.1", rtpe.ng_port, timeout=0.3).ping()
