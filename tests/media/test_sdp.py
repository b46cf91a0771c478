"""SDP parsing: what billing needs from offers and answers, and clear errors."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.media.g711 import Codec
from sidecar.media.sdp import Direction, RtpMap, SdpError, parse_sdp

SIPP_OFFER = (
    "v=0\r\n"
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 6000 RTP/AVP 8 0 101\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=ptime:20\r\n"
)


def test_sipp_offer() -> None:
    sdp = parse_sdp(SIPP_OFFER)
    assert sdp.origin == "user1 53655765 2353687637 IN IP4 127.0.0.1"
    assert sdp.connection_address == "127.0.0.1"
    assert sdp.address_type == "IP4"
    assert sdp.direction is Direction.SENDRECV
    assert sdp.ignored_lines == ()
    (audio,) = sdp.audio
    assert audio.media == "audio"
    assert (audio.port, audio.port_count, audio.protocol) == (6000, 1, "RTP/AVP")
    assert audio.payload_types == (8, 0, 101)
    assert audio.codecs == ("PCMA", "PCMU", "telephone-event")
    assert audio.rtpmap(0) == RtpMap(0, "PCMU", 8000, 1)  # from the static table
    assert audio.rtpmap(101) == RtpMap(101, "telephone-event", 8000, None)
    assert audio.rtpmap(9) is None  # not offered on this line
    assert audio.telephone_event_payload_type == 101
    assert audio.g711_codec(8) is Codec.PCMA
    assert audio.g711_codec(0) is Codec.PCMU
    assert audio.g711_codec(101) is None
    assert audio.connection_address == "127.0.0.1"
    assert audio.direction is Direction.SENDRECV
    assert audio.ptime_ms == 20
    assert audio.rtcp_port is None
    assert audio.line == 6
    assert audio.enabled and not audio.on_hold and audio.expects_media
    assert sdp.active_audio == (audio,)


def test_lf_only_and_crlf_agree() -> None:
    assert parse_sdp(SIPP_OFFER.replace("\r\n", "\n")) == parse_sdp(SIPP_OFFER)


def test_media_level_connection_overrides_session_level_and_ipv6_is_normalised() -> None:
    sdp = parse_sdp(
        "v=0\n"
        "c=IN IP4 192.0.2.1\n"
        "m=audio 4000 RTP/AVP 0\n"
        "m=audio 4002 RTP/AVP 0\n"
        "c=IN IP6 2001:DB8:0:0::0:1\n"
    )
    first, second = sdp.audio
    assert first.connection_address == "192.0.2.1" and first.address_type == "IP4"
    assert second.connection_address == "2001:db8::1" and second.address_type == "IP6"


def test_only_media_level_connections() -> None:
    sdp = parse_sdp("v=0\nm=audio 4000 RTP/AVP 0\nc=IN IP4 198.51.100.7\n")
    assert sdp.connection_address is None
    assert sdp.audio[0].connection_address == "198.51.100.7"


@pytest.mark.parametrize(
    ("session", "media", "expected"),
    [
        ("", "", Direction.SENDRECV),
        ("a=sendonly\n", "", Direction.SENDONLY),
        ("a=sendonly\n", "a=recvonly\n", Direction.RECVONLY),
        ("", "a=inactive\n", Direction.INACTIVE),
        ("a=inactive\n", "a=sendrecv\n", Direction.SENDRECV),
    ],
)
def test_direction_attributes(session: str, media: str, expected: Direction) -> None:
    sdp = parse_sdp(f"v=0\nc=IN IP4 192.0.2.1\n{session}m=audio 4000 RTP/AVP 0\n{media}")
    assert sdp.audio[0].direction is expected
    assert sdp.audio[0].expects_media == expected.sends


def test_direction_helpers() -> None:
    assert Direction.SENDONLY.sends and not Direction.SENDONLY.receives
    assert Direction.RECVONLY.receives and not Direction.RECVONLY.sends
    assert not Direction.INACTIVE.sends and not Direction.INACTIVE.receives


def test_port_zero_is_a_disabled_stream_and_needs_no_address() -> None:
    sdp = parse_sdp("v=0\nm=audio 0 RTP/AVP 0\nm=video 0 RTP/AVP 31\n")
    audio = sdp.audio[0]
    assert not audio.enabled and not audio.expects_media
    assert audio.connection_address is None
    assert sdp.active_audio == ()
    assert [m.media for m in sdp.media] == ["audio", "video"]


def test_hold_by_zero_address() -> None:
    audio = parse_sdp("v=0\nc=IN IP4 0.0.0.0\nm=audio 4000 RTP/AVP 8\n").audio[0]
    assert audio.on_hold and not audio.expects_media


def test_multicast_hostname_rtcp_and_port_count() -> None:
    sdp = parse_sdp(
        "v=0\n"
        "c=IN IP4 224.2.1.1/127/3\n"
        "m=audio 5004/2 RTP/AVP 96 97\n"
        "a=rtpmap:96 PCMU/8000\n"
        "a=rtpmap:97 L16/16000/2\n"
        "a=rtcp:5010 IN IP4 192.0.2.9\n"
        "m=audio 6000 RTP/AVP 0\n"
        "c=IN IP4 media.example.com\n"
    )
    first, second = sdp.audio
    assert first.connection_address == "224.2.1.1"
    assert first.port_count == 2
    assert first.rtcp_port == 5010
    assert first.g711_codec(96) is Codec.PCMU  # dynamic payload type mapped to PCMU
    assert first.rtpmap(97) == RtpMap(97, "L16", 16000, 2)
    assert first.g711_codec(97) is None
    assert second.connection_address == "media.example.com"


def test_rtpmap_overrides_static_meaning_and_names_are_case_insensitive() -> None:
    audio = parse_sdp(
        "v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0 101\n"
        "a=rtpmap:0 pcmu/8000\na=RTPMAP:101 Telephone-Event/8000\n"
    ).audio[0]
    assert audio.codecs == ("PCMU", "telephone-event")
    assert audio.g711_codec(0) is Codec.PCMU


def test_junk_lines_and_bad_attributes_are_skipped_and_reported() -> None:
    sdp = parse_sdp(
        "garbage before\n"  # 1
        "v=0\n"  # 2
        "c=IN IP4 192.0.2.1\n"  # 3
        "this is not sdp\n"  # 4
        "=x\n"  # 5
        "m=audio 4000 RTP/AVP 8 96\n"  # 6
        "a=rtpmap:96\n"  # 7: no encoding
        "a=rtpmap:x PCMU/8000\n"  # 8
        "a=ptime:soon\n"  # 9
        "a=rtcp:99999\n"  # 10
        "a=unknown-attribute:whatever\n"  # 11: fine, just not ours
        "\n"
        "   \n"
    )
    assert sdp.ignored_lines == (1, 4, 5, 7, 8, 9, 10)
    audio = sdp.audio[0]
    assert audio.codecs == ("PCMA",)  # 96 has no usable rtpmap
    assert audio.ptime_ms is None and audio.rtcp_port is None


def test_non_rtp_media_keeps_formats_without_payload_types() -> None:
    sdp = parse_sdp("v=0\nc=IN IP4 192.0.2.1\nm=image 4000 udptl t38\n")
    (image,) = sdp.media
    assert image.formats == ("t38",) and image.payload_types == ()
    assert sdp.audio == ()


def test_no_media_lines_is_valid() -> None:
    assert parse_sdp("v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\n").media == ()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "empty SDP body"),
        ("  \r\n ", "empty SDP body"),
        ("hello world\n", "no v= line and no m= line"),
        ("s=session\nt=0 0\n", "no v= line and no m= line"),
        ("v=1\n", "line 1: v='1'"),
        ("v=0\nc=IN IP4\n", "line 2: c= needs 3 fields"),
        ("v=0\nc=ATM NSAP 47.0091\n", "line 2: c= network type 'ATM'"),
        ("v=0\nc=IN IPX 192.0.2.1\n", "line 2: c= address type 'IPX'"),
        ("v=0\nc=IN IP4 999.1.1.1\n", "line 2: c= address '999.1.1.1'"),
        ("v=0\nc=IN IP4 2001:db8::1\n", "line 2: c= address '2001:db8::1' is not a valid IP4"),
        ("v=0\nc=IN IP6 192.0.2.1\n", "is not a valid IP6"),
        ("v=0\nc=IN IP4 bad_host!\n", "line 2: c= address 'bad_host!'"),
        ("v=0\nc=IN IP4 192.0.2.1\nm=audio\n", "line 3: m= needs"),
        ("v=0\nc=IN IP4 192.0.2.1\nm=audio abc RTP/AVP 0\n", "line 3: m= port 'abc'"),
        ("v=0\nc=IN IP4 192.0.2.1\nm=audio 70000 RTP/AVP 0\n", "m= port '70000'"),
        ("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000/0 RTP/AVP 0\n", "m= port count '0'"),
        ("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0 x\n", "line 3: m= format 'x'"),
        ("v=0\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 128\n", "m= format '128'"),
        ("v=0\nm=audio 4000 RTP/AVP 0\n", "line 2: m=audio has no connection address"),
    ],
)
def test_unusable_input_raises_naming_the_problem(body: str, message: str) -> None:
    with pytest.raises(SdpError) as info:
        parse_sdp(body)
    assert message in str(info.value)


def test_sdp_error_is_a_value_error() -> None:
    assert issubclass(SdpError, ValueError)


_LINES = st.sampled_from(
    [
        "v=0",
        "c=IN IP4 192.0.2.1",
        "c=IN IP6 ::1",
        "m=audio 4000 RTP/AVP 0 8",
        "m=audio 0 RTP/AVP 0",
        "m=video 5000 RTP/AVP 31",
        "a=rtpmap:8 PCMA/8000",
        "a=sendonly",
        "a=inactive",
        "a=rtcp:4001",
        "a=ptime:30",
        "junk",
        "",
    ]
)


@given(st.lists(_LINES, max_size=12), st.sampled_from(["\n", "\r\n"]))
def test_line_soup_parses_or_raises_sdp_error(lines: list[str], newline: str) -> None:
    try:
        sdp = parse_sdp(newline.join(lines))
    except SdpError:
        return
    for media in sdp.media:
        if media.media == "audio" and media.enabled:
            assert media.connection_address is not None


@given(st.text(max_size=200))
def test_arbitrary_text_never_raises_anything_but_sdp_error(text: str) -> None:
    with contextlib.suppress(SdpError):
        parse_sdp(text)


_FIELD_TEXT = st.text(alphabet="IN P46.:/0123456789abcdefRTAV xm=-", max_size=30)


@given(
    st.lists(
        st.one_of(
            _LINES,
            _FIELD_TEXT.map(lambda t: "c=" + t),
            _FIELD_TEXT.map(lambda t: "m=" + t),
            _FIELD_TEXT.map(lambda t: "a=" + t),
        ),
        max_size=10,
    )
)
def test_malformed_fields_raise_only_sdp_error(lines: list[str]) -> None:
    with contextlib.suppress(SdpError):
        parse_sdp("v=0\n" + "\n".join(lines))
