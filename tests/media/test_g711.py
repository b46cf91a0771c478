"""G.711 tables against ITU-T G.711 values, and encode/decode round trips."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.media.g711 import (
    ALAW_TO_LINEAR,
    ULAW_TO_LINEAR,
    Codec,
    codec_for_payload_type,
    decode,
    decode_alaw,
    decode_ulaw,
    encode,
    encode_alaw,
    encode_ulaw,
)


def nearest_level_encoder(table: tuple[int, ...]) -> Callable[[int], int]:
    """An independent encoder for the tests: the byte whose level is nearest the sample."""
    pairs = sorted((level, code) for code, level in enumerate(table))

    def encode_one(sample: int) -> int:
        return min(pairs, key=lambda pair: abs(pair[0] - sample))[1]

    return encode_one


@pytest.mark.parametrize(
    ("code", "linear"),
    [
        (0xFF, 0),  # positive zero
        (0x7F, 0),  # negative zero
        (0x00, -32124),  # most negative
        (0x80, 32124),  # most positive
        (0xFE, 8),  # smallest non-zero step of segment 0
        (0xEF, 132),  # first level of segment 1: ((0 << 3) + 132) << 1 - 132
        (0x7E, -8),
    ],
)
def test_ulaw_known_values(code: int, linear: int) -> None:
    assert ULAW_TO_LINEAR[code] == linear


@pytest.mark.parametrize(
    ("code", "linear"),
    [
        (0xD5, 8),  # A-law idle pattern: smallest positive level
        (0x55, -8),
        (0xAA, 32256),  # most positive
        (0x2A, -32256),  # most negative
        (0xD4, 24),
        (0xC5, 264),  # first level of segment 1
    ],
)
def test_alaw_known_values(code: int, linear: int) -> None:
    assert ALAW_TO_LINEAR[code] == linear


def test_tables_are_odd_symmetric_and_monotonic_in_magnitude() -> None:
    # Flipping the sign bit negates the value (mu-law: bit 7; A-law: bit 7 as well).
    for code in range(256):
        assert ULAW_TO_LINEAR[code ^ 0x80] == -ULAW_TO_LINEAR[code]
        assert ALAW_TO_LINEAR[code ^ 0x80] == -ALAW_TO_LINEAR[code]
    # 128 distinct magnitudes (mu-law has +0 and -0, A-law has no zero level).
    assert len({abs(v) for v in ULAW_TO_LINEAR}) == 128
    assert len({abs(v) for v in ALAW_TO_LINEAR}) == 128
    positive_ulaw = [ULAW_TO_LINEAR[c] for c in range(0xFF, 0x7F, -1)]
    assert positive_ulaw == sorted(positive_ulaw)


def test_decoders_agree_with_tables() -> None:
    data = bytes(range(256))
    assert decode_ulaw(data) == list(ULAW_TO_LINEAR)
    assert decode_alaw(data) == list(ALAW_TO_LINEAR)
    assert decode(data, Codec.PCMU) == list(ULAW_TO_LINEAR)
    assert decode(data, Codec.PCMA) == list(ALAW_TO_LINEAR)
    assert decode(b"", Codec.PCMA) == []


def test_codec_for_payload_type() -> None:
    assert codec_for_payload_type(0) is Codec.PCMU
    assert codec_for_payload_type(8) is Codec.PCMA
    assert codec_for_payload_type(18) is None
    assert Codec.PCMU.table is ULAW_TO_LINEAR


@pytest.mark.parametrize("codec", list(Codec))
def test_every_code_round_trips(codec: Codec) -> None:
    table = codec.table
    reencoded = encode(table, codec)
    for code in range(256):
        # mu-law -0 (0x7F) re-encodes as +0 (0xFF): same level, which is what matters.
        assert table[reencoded[code]] == table[code]


@pytest.mark.parametrize("codec", list(Codec))
def test_quantisation_error_is_within_half_a_step(codec: Codec) -> None:
    samples = range(-32768, 32768)
    decoded = decode(encode(samples, codec), codec)
    top = max(codec.table)
    for x, y in zip(samples, decoded, strict=True):
        if abs(x) <= top:
            # Steps double per segment: 16 at the bottom (A-law), 1024 at the top.
            assert abs(y - x) <= max(16, abs(x) // 16 + 16), (x, y)
        else:
            assert abs(y) == top  # clipped to the largest level


@pytest.mark.parametrize("codec", list(Codec))
def test_encoder_matches_nearest_level_except_at_decision_points(codec: Codec) -> None:
    reference = nearest_level_encoder(codec.table)
    table = codec.table
    mismatches = 0
    for x in range(-32768, 32768, 7):
        ours = table[encode([x], codec)[0]]
        nearest = table[reference(x)]
        if ours != nearest:
            # G.711's decision thresholds sit on interval edges: at worst a tie, or a
            # level one step away at a segment edge.
            mismatches += 1
            assert abs(ours - x) <= 2 * abs(nearest - x) + 1
    assert mismatches < 300


@given(st.lists(st.integers(-32768, 32767), max_size=400))
def test_round_trip_property(samples: list[int]) -> None:
    for codec in Codec:
        once = decode(encode(samples, codec), codec)
        twice = decode(encode(once, codec), codec)
        assert once == twice  # a decoded level is a fixed point
        assert len(once) == len(samples)
        for x, y in zip(samples, once, strict=True):
            assert (x >= 0) == (y >= 0) or abs(x) <= 8  # sign kept (near zero: -0/+0)


def test_encoder_rounds_and_clips_floats() -> None:
    assert encode_ulaw([0.4, -0.4, 1e9, -1e9]) == bytes([0xFF, 0xFF, 0x80, 0x00])
    assert encode_alaw([1e9, -1e9]) == bytes([0xAA, 0x2A])
