"""Ringback (FAS) and silence detection on synthetic and real G.711 audio."""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.media.g711 import ALAW_TO_LINEAR, ULAW_TO_LINEAR, Codec, encode
from sidecar.media.pcap import read_capture
from sidecar.media.rtp import parse_rtp
from sidecar.media.tones import (
    BLOCK_SAMPLES,
    RING_BLOCKS,
    RingbackDetection,
    RingbackDetector,
    RingbackTone,
    SilenceDetector,
    analyse_block,
    is_silent,
    mean_absolute,
)

from .packets import (
    cadence,
    level,
    multitone,
    packetize,
    silence,
    speech_like,
    tone,
    white_noise,
)

SIPP_AUDIO = Path("/usr/share/sip-tester/g711a.pcap")
RUN_MS = RING_BLOCKS * BLOCK_SAMPLES / 8  # 176 ms

# Cadences (on, off, ...) in seconds.
NORTH_AMERICA = ((440, 480), (2.0, 4.0))
UK = ((400, 450), (0.4, 0.2, 0.4, 2.0))
EUROPE = ((425,), (1.0, 4.0))


def ring(
    plan: tuple[tuple[int, ...], tuple[float, ...]], dbm0: float, seconds: float
) -> list[float]:
    """A ringback plan's tone played with its cadence."""
    frequencies, pattern = plan
    return cadence(frequencies, dbm0, pattern, seconds)


def detect(
    samples: Sequence[float], codec: Codec, samples_per_packet: int = 160
) -> RingbackDetection | None:
    detector = RingbackDetector()
    for payload in packetize(samples, codec, samples_per_packet):
        found = detector.feed(payload, codec)
        if found is not None:
            assert detector.detection == found and detector.finished
            return found
    return detector.detection


@pytest.mark.parametrize(
    ("plan", "tone_name", "dbm0"),
    [
        (NORTH_AMERICA, RingbackTone.NORTH_AMERICA, -19),
        (UK, RingbackTone.UK, -19),
        (EUROPE, RingbackTone.EUROPE, -13),
        (NORTH_AMERICA, RingbackTone.NORTH_AMERICA, -30),
        (EUROPE, RingbackTone.EUROPE, -30),
        (UK, RingbackTone.UK, -8),
    ],
)
@pytest.mark.parametrize(("codec", "ptime"), [(Codec.PCMU, 160), (Codec.PCMA, 240)])
def test_ringback_cadences_are_detected(
    plan: tuple[tuple[int, ...], tuple[float, ...]],
    tone_name: RingbackTone,
    dbm0: float,
    codec: Codec,
    ptime: int,
) -> None:
    frequencies, pattern = plan
    found = detect(cadence(frequencies, dbm0, pattern, 6.0), codec, ptime)
    assert found is not None
    assert found.tone is tone_name
    assert found.start_sample == 0
    assert found.detected_ms == pytest.approx(RUN_MS)
    assert found.detected_sample - found.start_sample == RING_BLOCKS * BLOCK_SAMPLES


def test_ringback_after_a_prompt_reports_where_it_starts() -> None:
    samples = speech_like(2.0) + silence(0.5) + ring(NORTH_AMERICA, -19, 3.0)
    found = detect(samples, Codec.PCMU)
    assert found is not None and found.tone is RingbackTone.NORTH_AMERICA
    # The first block entirely inside the tone starts within one block of 2.5 s.
    assert 2500 <= found.start_ms <= 2500 + BLOCK_SAMPLES / 8
    assert found.detected_ms == pytest.approx(found.start_ms + RUN_MS)


def test_ringback_through_moderate_noise_is_detected() -> None:
    ringback = ring(UK, -19, 3.0)
    noise = white_noise(rms=150, seconds=3.0)  # ~-40 dBm0: tone is ~100x the noise
    found = detect([a + b for a, b in zip(ringback, noise, strict=True)], Codec.PCMA)
    assert found is not None and found.tone is RingbackTone.UK


def test_ringback_buried_in_noise_is_not_ten_times_the_channel() -> None:
    ringback = ring(NORTH_AMERICA, -19, 3.0)
    noise = white_noise(rms=1200, seconds=3.0)  # tone only ~4x the noise energy
    assert detect([a + b for a, b in zip(ringback, noise, strict=True)], Codec.PCMU) is None


def test_slightly_off_frequency_ringback_is_detected() -> None:
    # Real tone generators are within a percent or so of nominal.
    assert detect(tone((442, 483), -19, 1.0), Codec.PCMU) is not None
    assert detect(tone((428,), -19, 1.0), Codec.PCMA) is not None


_OTHER_AUDIO: dict[str, Callable[[], list[float]]] = {
    "white noise": lambda: white_noise(rms=3000, seconds=10.0),
    "speech-like": lambda: speech_like(10.0),
    "several other tones": lambda: multitone(10.0),
    "1 kHz test tone": lambda: tone((1004,), -10, 5.0),
    "lone 440 Hz": lambda: tone((440,), -10, 5.0),
    "US dial tone 350+440": lambda: tone((350, 440), -13, 5.0),
    "busy tone 480+620": lambda: cadence((480, 620), -24, (0.5, 0.5), 5.0),
    "steady 455 Hz, between 440 and 480": lambda: tone((455,), -13, 5.0),
    "steady 470 Hz, between 440 and 480": lambda: tone((470,), -13, 5.0),
    "437 Hz: 12 Hz off 425": lambda: tone((437,), -13, 5.0),
    "too quiet ringback": lambda: ring(EUROPE, -55, 5.0),
    "too short bursts": lambda: cadence((425,), -13, (0.12, 0.1), 5.0),
    "digital silence": lambda: silence(10.0),
}


@functools.cache
def other_audio(name: str) -> list[float]:
    return _OTHER_AUDIO[name]()


@pytest.mark.parametrize("name", list(_OTHER_AUDIO))
@pytest.mark.parametrize("codec", list(Codec))
def test_no_ringback_in_other_audio(name: str, codec: Codec) -> None:
    assert detect(other_audio(name), codec) is None, name


def test_no_ringback_in_sipp_g711a_capture() -> None:
    payloads = [
        p.payload[h.payload_offset : h.payload_end]
        for p in read_capture(SIPP_AUDIO)
        if (h := parse_rtp(p.payload)) is not None
    ]
    assert len(payloads) == 236
    detector = RingbackDetector()
    for payload in payloads:
        assert detector.feed(payload, Codec.PCMA) is None
    assert detector.blocks_analysed == 236 * 240 // BLOCK_SAMPLES


def test_window_limits_the_search_to_the_first_ten_seconds() -> None:
    late = silence(10.5) + ring(EUROPE, -13, 2.0)
    assert detect(late, Codec.PCMA) is None
    detector = RingbackDetector(window_samples=None)
    for payload in packetize(late, Codec.PCMA):
        detector.feed(payload, Codec.PCMA)
    assert detector.detection is not None and detector.detection.start_ms >= 10500


def test_finished_after_window_and_input_is_then_ignored() -> None:
    detector = RingbackDetector(window_samples=1600)
    for payload in packetize(silence(0.5), Codec.PCMU):
        detector.feed(payload, Codec.PCMU)
    assert detector.finished
    analysed = detector.blocks_analysed
    for payload in packetize(tone((425,), -13, 1.0), Codec.PCMU):
        assert detector.feed(payload, Codec.PCMU) is None
    assert detector.blocks_analysed == analysed
    assert detector.samples_fed == 4000 + 8000


def test_discontinuity_breaks_a_run_and_advances_the_clock() -> None:
    detector = RingbackDetector()
    burst = packetize(tone((425,), -13, 0.12), Codec.PCMA)
    for payload in burst:
        detector.feed(payload, Codec.PCMA)
    detector.discontinuity(800)
    for payload in burst:
        detector.feed(payload, Codec.PCMA)
    assert detector.detection is None  # two 120 ms halves are not one 176 ms run
    detector.discontinuity(0)
    for payload in packetize(tone((425,), -13, 0.5), Codec.PCMA):
        detector.feed(payload, Codec.PCMA)
    found = detector.detection
    assert found is not None
    # Blocks restart at each discontinuity: 960 + 800 + 960 samples fed or skipped before.
    assert found.start_sample == 2720


def test_phase_jumps_break_a_run() -> None:
    # 425 Hz that restarts its phase every 66 ms (3 blocks) rings in most blocks but is
    # never one steady tone for 8.
    samples: list[float] = []
    for i in range(30):
        samples += [(-v if i % 2 else v) for v in tone((425,), -13, 0.066)]
    assert detect(samples, Codec.PCMU) is None
    lenient = RingbackDetector(max_phase_step=4.0)  # more than pi: no phase condition
    for payload in packetize(samples, Codec.PCMU):
        lenient.feed(payload, Codec.PCMU)
    assert lenient.detection is not None


def test_steady_tone_between_the_two_frequencies_needs_the_phase_condition() -> None:
    samples = tone((470,), -13, 2.0)
    lenient = RingbackDetector(max_phase_step=4.0)
    for payload in packetize(samples, Codec.PCMU):
        lenient.feed(payload, Codec.PCMU)
    assert lenient.detection is not None  # the block test alone is fooled
    assert detect(samples, Codec.PCMU) is None


def test_codec_may_change_between_packets() -> None:
    samples = tone((440, 480), -19, 0.5)
    mu = packetize(samples, Codec.PCMU)
    a = packetize(samples, Codec.PCMA)
    detector = RingbackDetector()
    for i in range(len(mu)):
        codec = Codec.PCMU if i % 2 else Codec.PCMA
        detector.feed((mu if i % 2 else a)[i], codec)
    assert detector.detection is not None
    assert detector.detection.tone is RingbackTone.NORTH_AMERICA


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=40))
def test_packetisation_does_not_change_the_result(sizes: list[int]) -> None:
    samples = silence(0.3) + tone((400, 450), -19, 0.6, start=0.3) + silence(0.2)
    data = encode(samples, Codec.PCMU)
    expected = detect(samples, Codec.PCMU)
    detector = RingbackDetector()
    position = 0
    i = 0
    while position < len(data):
        size = sizes[i % len(sizes)]
        detector.feed(data[position : position + size], Codec.PCMU)
        position += size
        i += 1
    assert detector.detection == expected


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(1, 3000), min_size=1, max_size=20))
def test_blocks_tested_together_ring_as_each_block_alone(seed: int, sizes: list[int]) -> None:
    """Blocks are tested many at a time: a tone near the 10x limit in noise (so blocks
    fall on both sides of it) rings in exactly the blocks that ring when each block is
    tested alone (``analyse_block``), however the stream is cut into feeds."""
    rng = random.Random(seed)
    noise = white_noise(level(-19) / rng.uniform(2.6, 3.8), 1.5, seed=seed)
    ringing = tone((440, 480), -19, 1.5)
    samples = [a + b for a, b in zip(ringing, noise, strict=True)]
    data = encode(samples, Codec.PCMU)
    decoded = [ULAW_TO_LINEAR[b] for b in data]
    alone = [analyse_block(decoded[i : i + BLOCK_SAMPLES]).tone is not None
             for i in range(0, len(decoded) - BLOCK_SAMPLES + 1, BLOCK_SAMPLES)]
    # The first run of RING_BLOCKS ringing blocks is where each block alone finds it.
    expected_end = None
    run = 0
    for i, rings in enumerate(alone):
        run = run + 1 if rings else 0
        if run >= RING_BLOCKS:
            expected_end = (i + 1) * BLOCK_SAMPLES
            break
    detector = RingbackDetector(max_phase_step=math.pi)  # the 10x test alone decides
    position = i = 0
    while position < len(data):
        size = sizes[i % len(sizes)]
        detector.feed(data[position : position + size], Codec.PCMU)
        position += size
        i += 1
    found = detector.detection
    assert (found.detected_sample if found is not None else None) == expected_end


def test_analyse_block_reports_shares() -> None:
    analysis = analyse_block([round(x) for x in tone((425,), -13, 0.022)])
    assert analysis.tone is RingbackTone.EUROPE
    assert analysis.residual_share[RingbackTone.EUROPE] < 1 / 11
    assert analysis.residual_share[RingbackTone.NORTH_AMERICA] > 1 / 11
    quiet = analyse_block([0] * BLOCK_SAMPLES)
    assert quiet.tone is None and quiet.energy == 0
    with pytest.raises(ValueError, match="176 samples"):
        analyse_block([0] * 160)


def test_a_block_with_only_one_of_two_frequencies_does_not_ring() -> None:
    analysis = analyse_block([round(x) for x in tone((480,), -13, 0.022)])
    # 480 Hz alone fits the 440+480 plan perfectly, but half the plan is missing.
    assert analysis.residual_share[RingbackTone.NORTH_AMERICA] < 0.01
    assert RingbackTone.NORTH_AMERICA not in analysis.ringing


# --- Silence ---------------------------------------------------------------------------


def test_mean_absolute_and_is_silent() -> None:
    assert mean_absolute(b"\xd5" * 160, Codec.PCMA) == 8
    assert mean_absolute(b"\xff" * 160, Codec.PCMU) == 0
    assert mean_absolute(b"\x00" * 10, Codec.PCMU) == 32124
    assert mean_absolute(b"", Codec.PCMU) == 0.0
    assert is_silent(b"\xd5" * 160, Codec.PCMA)
    assert not is_silent(b"\x00" * 160, Codec.PCMU)


@pytest.mark.parametrize("codec", list(Codec))
def test_threshold_is_512_mean_absolute(codec: Codec) -> None:
    table = codec.table
    below = max(c for c in range(256) if 0 < table[c] < 512)
    at_or_above = min((c for c in range(256) if table[c] >= 512), key=lambda c: table[c])
    assert is_silent(bytes([below]) * 160, codec)
    assert not is_silent(bytes([at_or_above]) * 160, codec)


def test_silence_detector_counts_frames_whatever_the_packet_size() -> None:
    detector = SilenceDetector()
    payloads = packetize(silence(1.0) + tone((1000,), -20, 1.0), Codec.PCMA, 240)
    for payload in payloads:
        detector.feed(payload, Codec.PCMA)
    assert (detector.silent_frames, detector.voiced_frames) == (50, 50)
    assert detector.frames == 100
    assert detector.first_voiced_sample == 8000
    assert detector.samples_fed == 16000


def test_low_noise_is_silence_and_speech_is_voiced() -> None:
    quiet = SilenceDetector()
    for payload in packetize(white_noise(rms=120, seconds=2.0), Codec.PCMU):
        quiet.feed(payload, Codec.PCMU)
    assert quiet.voiced_frames == 0 and quiet.silent_frames == 100
    assert quiet.first_voiced_sample is None
    talk = SilenceDetector()
    for payload in packetize(speech_like(2.0), Codec.PCMU):
        talk.feed(payload, Codec.PCMU)
    assert talk.voiced_frames > 90


def test_silence_in_sipp_capture() -> None:
    detector = SilenceDetector()
    for p in read_capture(SIPP_AUDIO):
        header = parse_rtp(p.payload)
        assert header is not None
        detector.feed(p.payload[header.payload_offset : header.payload_end], Codec.PCMA)
    assert detector.frames == 236 * 240 // 160
    # The recording starts with about a second of A-law idle code and breath, then speech.
    assert detector.first_voiced_sample == 8640
    assert detector.voiced_frames > detector.silent_frames


def test_silence_detector_discontinuity_and_validation() -> None:
    detector = SilenceDetector(frame_samples=100)
    detector.feed(b"\x00" * 50, Codec.PCMU)  # half a loud frame
    detector.discontinuity(50)
    detector.feed(b"\xff" * 100, Codec.PCMU)
    assert (detector.silent_frames, detector.voiced_frames) == (1, 0)
    assert detector.samples_fed == 200
    with pytest.raises(ValueError):
        SilenceDetector(frame_samples=0)


def test_random_bytes_never_break_the_detectors() -> None:
    rng = random.Random(5)
    ring = RingbackDetector()
    quiet = SilenceDetector()
    for _ in range(200):
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        codec = rng.choice(list(Codec))
        ring.feed(payload, codec)
        quiet.feed(payload, codec)
    assert quiet.samples_fed == ring.samples_fed


def test_tables_used_for_silence_match_the_decoders() -> None:
    for codec, table in ((Codec.PCMU, ULAW_TO_LINEAR), (Codec.PCMA, ALAW_TO_LINEAR)):
        for code in range(256):
            assert mean_absolute(bytes([code]), codec) == abs(table[code])


@pytest.mark.parametrize("frame", [160, 161, 240, 70_000])
@pytest.mark.parametrize("head", [0, 37])
def test_silence_counts_of_one_long_feed_are_those_of_frame_by_frame(frame: int,
                                                                     head: int) -> None:
    """Many frames in one feed are summed with NumPy (two samples per look-up in int32
    where a frame is even and its sum fits, one per look-up in int64 otherwise), after
    the frame a first short feed left partial: the same silent and voiced frames, and
    the same first voiced sample, as fed a frame at a time."""
    rng = random.Random(frame)
    for codec in Codec:
        # Frames near the silence threshold (a mean absolute sample of 512): about half
        # their samples at 1024, the others at the quietest level, anywhere in the frame.
        level = [mean_absolute(bytes([b]), codec) for b in range(256)]
        loud = min(range(256), key=lambda b: abs(level[b] - 1024))
        quiet = min(range(256), key=level.__getitem__)
        audio = bytearray()
        for _ in range(16):
            share = rng.uniform(0.4, 0.6)
            audio += bytes(loud if rng.random() < share else quiet for _ in range(frame))
        audio += bytes(range(256)) * 2  # and a partial frame left over
        whole, pieces = (SilenceDetector(frame_samples=frame) for _ in range(2))
        whole.feed(bytes(audio[:head]), codec)
        whole.feed(bytes(audio[head:]), codec)
        for i in range(0, len(audio), frame):
            pieces.feed(bytes(audio[i : i + frame]), codec)
        assert (whole.silent_frames, whole.voiced_frames, whole.first_voiced_sample) == \
            (pieces.silent_frames, pieces.voiced_frames, pieces.first_voiced_sample)
        assert whole.voiced_frames and whole.silent_frames
