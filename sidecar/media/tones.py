"""Ringback and silence detection on G.711 audio, for False Answer Supervision (FAS).

A route that answers (200 OK) and then plays ringback is billing the caller for ringing.
The published rule this module implements (billing reference, section "FAS"): in the
callee's G.711 stream during the first 10 s after the answer, a ringing tone
(440+480 Hz North America, 400+450 Hz UK, 425 Hz Europe) at least 10x the rest of the
channel energy for about 150 ms (8 blocks of about 22 ms), found with Goertzel filters.

Definitions (8 kHz samples on the 16-bit scale of :mod:`sidecar.media.g711`)
    block
        176 consecutive samples (22 ms) of the stream, counted from the first sample fed.
    channel energy ``E``
        sum over the block of ``(x - mean)**2``: the mean is removed so a codec's DC
        offset (A-law's idle code decodes to +8) counts as nothing.
    tone energy ``P``
        energy of the least-squares fit of the block by sinusoids at the tone's
        frequencies (a cosine and a sine per frequency, any amplitude and phase): the
        orthogonal projection of the mean-removed block on their span.
    rest ``E - P``
        everything else in the channel.
    a block rings for a tone when
        ``P >= 10 * (E - P)``, the mean square ``E / 176`` is at least
        :data:`MIN_RING_MEAN_SQUARE` (about -44 dBm0: a block of idle noise does not
        ring however pure it is), and for a two-frequency tone each frequency alone
        accounts for at least :data:`MIN_COMPONENT_SHARE` of ``P`` (so a lone 440 Hz
        test tone is not North American ringback).
    ringback
        8 consecutive blocks ringing for the same tone, in which the phase of each of the
        tone's frequencies, measured against a clock running at the nominal frequency,
        moves by at most :data:`MAX_PHASE_STEP` (60 degrees) from block to block; reported
        at the end of the 8th block.

Why the phase condition: 22 ms cannot resolve 40 Hz, so a steady single tone lying
between a plan's two frequencies (460 Hz, say) fits the 440+480 Hz span almost perfectly
and splits its energy between them. It is not ringback: against 440 and 480 Hz clocks its
phase slips 20 Hz worth, about 160 degrees, every block. A true tone within 7.6 Hz of
nominal slips less than 60 degrees, which matches the tolerance of the 10x test itself.

Why a projection and not one Goertzel energy per frequency: at 22 ms the DFT resolution is
45 Hz, so the 440 and 480 Hz filters (40 Hz apart) each see most of the other's tone.
Summing their energies would double count; the projection counts each joule once. The
correlations it starts from, ``sum(x[n] * cos(w n))`` and ``sum(x[n] * sin(w n))``, are
exactly what Goertzel's recurrence computes for a block. They are computed here as dot
products against precomputed vectors: every vector of every plan (and of each second
frequency alone) is a row of one matrix, so one NumPy matrix-vector product gives all of a
block's correlations at once (about 2 us for all three plans, against about 2 us per
frequency with a C loop per vector and 5 us for the recurrence written in Python). The
22 ms block also sets the frequency tolerance: a tone about 7 Hz off nominal still passes
the 10x test.

Silence: a frame (20 ms, 160 samples) is silent when its mean absolute sample is under 512.
"""

from __future__ import annotations

import cmath
import enum
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast
from zlib import adler32

import numpy as np
import numpy.typing as npt

from sidecar.media.g711 import ALAW_TO_LINEAR, ULAW_TO_LINEAR, Codec

__all__ = [
    "BLOCK_SAMPLES",
    "DEFAULT_WINDOW_SAMPLES",
    "MAX_PHASE_STEP",
    "MIN_COMPONENT_SHARE",
    "MIN_RING_MEAN_SQUARE",
    "RING_BLOCKS",
    "RING_RATIO",
    "SAMPLE_RATE",
    "SILENCE_FRAME_SAMPLES",
    "SILENCE_MEAN_ABS",
    "BlockAnalysis",
    "RingbackDetection",
    "RingbackDetector",
    "RingbackTone",
    "SilenceDetector",
    "analyse_block",
    "is_silent",
    "mean_absolute",
]

SAMPLE_RATE = 8000
BLOCK_SAMPLES = 176  # 22 ms
RING_RATIO = 10.0
RING_BLOCKS = 8  # 8 x 22 ms = 176 ms of continuous tone
MIN_RING_MEAN_SQUARE = 100.0**2  # RMS 100: about -44 dBm0 (0 dBm0 sine RMS is ~15,800)
MIN_COMPONENT_SHARE = 0.1
MAX_PHASE_STEP = math.pi / 3
SILENCE_MEAN_ABS = 512
SILENCE_FRAME_SAMPLES = 160  # 20 ms
DEFAULT_WINDOW_SAMPLES = 10 * SAMPLE_RATE  # the reference looks at the first 10 s


class RingbackTone(enum.Enum):
    """Ringback tone plans; the value is the tone's frequencies in Hz."""

    NORTH_AMERICA = (440, 480)
    UK = (400, 450)
    EUROPE = (425,)

    @property
    def frequencies(self) -> tuple[int, ...]:
        """Frequencies in Hz."""
        frequencies: tuple[int, ...] = self.value
        return frequencies


# --- Precomputed orthonormal bases ----------------------------------------------------
#
# For each tone, the centred (mean-removed) cosine and sine of each of its frequencies,
# orthonormalised (Gram-Schmidt). With an orthonormal basis q_k of the tone's span, the
# projection energy is simply P = sum_k <x, q_k>^2, and since every q_k is centred,
# <x, q_k> = <x - mean, q_k>: removing the mean costs nothing per block.

_Vector = tuple[float, ...]
_Matrix = npt.NDArray[np.float64]
_Samples = npt.NDArray[Any]  # a block's linear samples (int16)


def _centred_sinusoids(frequency: int) -> list[list[float]]:
    step = 2.0 * math.pi * frequency / SAMPLE_RATE
    vectors = []
    for wave in (math.cos, math.sin):
        v = [wave(step * n) for n in range(BLOCK_SAMPLES)]
        mean = sum(v) / BLOCK_SAMPLES
        vectors.append([a - mean for a in v])
    return vectors


def _orthonormal(vectors: list[list[float]]) -> tuple[_Vector, ...]:
    """Modified Gram-Schmidt, at import; the vectors here are far from collinear."""
    basis: list[list[float]] = []
    for v in vectors:
        w = v[:]
        for q in basis:
            dot = sum(a * b for a, b in zip(w, q, strict=True))
            w = [a - dot * b for a, b in zip(w, q, strict=True)]
        norm = math.sqrt(sum(a * a for a in w))
        basis.append([a / norm for a in w])
    return tuple(tuple(q) for q in basis)


def _invert(matrix: list[list[float]]) -> list[list[float]]:
    """Gauss-Jordan inverse with partial pivoting (4x4 at most, at import)."""
    size = len(matrix)
    work = [row[:] + [float(i == j) for j in range(size)] for i, row in enumerate(matrix)]
    for column in range(size):
        pivot = max(range(column, size), key=lambda r: abs(work[r][column]))
        work[column], work[pivot] = work[pivot], work[column]
        scale = work[column][column]
        work[column] = [v / scale for v in work[column]]
        for r in range(size):
            if r != column:
                factor = work[r][column]
                work[r] = [a - factor * b for a, b in zip(work[r], work[column], strict=True)]
    return [row[size:] for row in work]


@dataclass(frozen=True)
class _ToneModel:
    tone: RingbackTone
    basis: tuple[_Vector, ...]  # orthonormal, spans cos/sin of every frequency of the tone
    # For a two-frequency tone: an orthonormal basis of the second frequency alone (the
    # first two vectors of ``basis`` already span the first frequency alone).
    second: tuple[_Vector, ...]
    # Maps coordinates in ``basis`` to (cos, sin) amplitudes per frequency: the inverse of
    # R in V = Q R, where V are the centred sinusoids and Q the orthonormal basis.
    to_amplitudes: tuple[_Vector, ...]
    radians_per_sample: tuple[float, ...]  # per frequency


def _model(tone: RingbackTone) -> _ToneModel:
    frequencies = tone.frequencies
    vectors = [v for f in frequencies for v in _centred_sinusoids(f)]
    basis = _orthonormal(vectors)
    r = [[sum(a * b for a, b in zip(q, v, strict=True)) for v in vectors] for q in basis]
    second = _orthonormal(_centred_sinusoids(frequencies[1])) if len(frequencies) > 1 else ()
    return _ToneModel(
        tone,
        basis,
        second,
        tuple(tuple(row) for row in _invert(r)),
        tuple(2.0 * math.pi * f / SAMPLE_RATE for f in frequencies),
    )


def _phasors(model: _ToneModel, y: Sequence[float]) -> tuple[complex, ...]:
    """Complex amplitude of each frequency, phase referred to the block's first sample."""
    amplitudes = [sum(t * v for t, v in zip(row, y, strict=True)) for row in model.to_amplitudes]
    # a cos(wn) + b sin(wn) = Re[(a - jb) e^(jwn)]
    return tuple(
        complex(amplitudes[2 * i], -amplitudes[2 * i + 1])
        for i in range(len(model.radians_per_sample))
    )


_MODELS: tuple[_ToneModel, ...] = tuple(_model(t) for t in RingbackTone)
_MODEL_OF: dict[RingbackTone, _ToneModel] = {m.tone: m for m in _MODELS}


# --- Block analysis ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockAnalysis:
    """What one block looks like to the ringback test."""

    energy: float  # E: mean-removed channel energy
    ringing: dict[RingbackTone, float]  # tones the block rings for -> their (E - P) / E
    residual_share: dict[RingbackTone, float]  # (E - P) / E per tone; 1.0 below the floor
    # For each ringing tone, the complex amplitude of each frequency (block-relative phase).
    phasors: dict[RingbackTone, tuple[complex, ...]]

    @property
    def tone(self) -> RingbackTone | None:
        """The best-fitting tone the block rings for, if any."""
        return min(self.ringing, key=self.ringing.__getitem__) if self.ringing else None


def _rows() -> tuple[_Matrix, tuple[tuple[_ToneModel, slice, slice | None], ...]]:
    """Every model's basis and second-frequency basis as rows of one matrix, and where
    each model's rows are."""
    rows: list[_Vector] = []
    where = []
    for model in _MODELS:
        first = slice(len(rows), len(rows) + len(model.basis))
        rows += model.basis
        second = None
        if model.second:
            second = slice(len(rows), len(rows) + len(model.second))
            rows += model.second
        where.append((model, first, second))
    return np.array(rows, dtype=np.float64), tuple(where)


_BASES, _WHERE = _rows()
_BASES_T = np.ascontiguousarray(_BASES.T)


#: Blocks are analysed in batches of this many rows (the last one padded with zeros):
#: every block goes through the same matrix product, so what is found in a block does
#: not depend on how many blocks were analysed with it (or on how the stream was cut).
_BATCH_ROWS = 32


def _correlations(x: _Matrix) -> tuple[_Matrix, _Matrix]:
    """Per row of ``x`` (blocks of linear samples): the energy ``E`` (mean removed) and
    the correlations with every row of :data:`_BASES`."""
    m = len(x)
    pad = -m % _BATCH_ROWS
    if pad:
        x = np.concatenate([x, np.zeros((pad, BLOCK_SAMPLES), dtype=np.float64)])
    total = x.sum(axis=1)
    energy = (x * x).sum(axis=1) - total * total / BLOCK_SAMPLES
    corr = np.concatenate([x[i : i + _BATCH_ROWS] @ _BASES_T
                           for i in range(0, len(x), _BATCH_ROWS)])
    return energy[:m], corr[:m]


class _Rows(NamedTuple):
    """:func:`_analyse_rows` of a batch of blocks."""

    energy: _Matrix  # E per block
    shares: _Matrix  # (E - P) / E per block and model (1.0 below the floor)
    ringing: npt.NDArray[np.bool_]  # per block and model
    corr: _Matrix  # correlations per block (see _WHERE)


def _analyse_rows(x: _Matrix, ratio: float, min_mean_square: float,
                  min_share: float) -> _Rows:
    """The ringing-block test on every row of ``x`` (blocks of linear samples) at once."""
    energy, corr = _correlations(x)
    loud = energy >= min_mean_square * BLOCK_SAMPLES
    safe = np.where(loud, energy, 1.0)
    ring_share = 1.0 / (1.0 + ratio)  # P >= ratio * (E - P)  <=>  (E - P) / E <= this
    squares = corr * corr
    shares = np.ones((len(x), len(_WHERE)), dtype=np.float64)
    ringing = np.zeros((len(x), len(_WHERE)), dtype=np.bool_)
    for i, (_model, first, second) in enumerate(_WHERE):
        projection = squares[:, first].sum(axis=1)
        share = np.maximum(0.0, energy - projection) / safe
        rings = loud & (share <= ring_share)
        if second is not None:
            # Both frequencies must be really there: each alone explains enough of P.
            p_first = squares[:, first.start] + squares[:, first.start + 1]
            p_second = squares[:, second].sum(axis=1)
            rings &= np.minimum(p_first, p_second) >= min_share * projection
        shares[:, i] = np.where(loud, share, 1.0)
        ringing[:, i] = rings
    return _Rows(energy, shares, ringing, corr)


def _analyse(
    block: Sequence[int] | _Samples, ratio: float, min_mean_square: float, min_share: float
) -> tuple[
    float,
    dict[RingbackTone, float],
    dict[RingbackTone, float],
    dict[RingbackTone, tuple[complex, ...]],
]:
    """Energy, ringing tones with their residual share, every tone's share, phasors."""
    x = np.asarray(block, dtype=np.float64).reshape(1, BLOCK_SAMPLES)
    rows = _analyse_rows(x, ratio, min_mean_square, min_share)
    shares = {model.tone: float(rows.shares[0, i]) for i, (model, _, _) in enumerate(_WHERE)}
    ringing, phasors = _ringing(rows, 0)
    return float(rows.energy[0]), ringing, shares, phasors


def _ringing(rows: _Rows, j: int) -> tuple[dict[RingbackTone, float],
                                            dict[RingbackTone, tuple[complex, ...]]]:
    """The tones block ``j`` of ``rows`` rings for (-> residual share) and their phasors."""
    ringing: dict[RingbackTone, float] = {}
    phasors: dict[RingbackTone, tuple[complex, ...]] = {}
    row = rows.ringing[j]
    if not row.any():
        return ringing, phasors
    corr = rows.corr[j]
    for i, (model, first, _) in enumerate(_WHERE):
        if row[i]:
            ringing[model.tone] = float(rows.shares[j, i])
            phasors[model.tone] = _phasors(model, corr[first].tolist())
    return ringing, phasors


def analyse_block(
    samples: Sequence[int],
    *,
    ratio: float = RING_RATIO,
    min_mean_square: float = MIN_RING_MEAN_SQUARE,
    min_component_share: float = MIN_COMPONENT_SHARE,
) -> BlockAnalysis:
    """Apply the ringing-block test (module docstring) to exactly 176 linear samples."""
    if len(samples) != BLOCK_SAMPLES:
        raise ValueError(f"a block is {BLOCK_SAMPLES} samples, got {len(samples)}")
    energy, ringing, shares, phasors = _analyse(
        tuple(int(s) for s in samples), ratio, min_mean_square, min_component_share
    )
    return BlockAnalysis(energy, ringing, shares, phasors)


# --- Streaming decode: G.711 bytes -> int16 via bytes.translate ------------------------


def _split_table(table: Sequence[int]) -> tuple[bytes, bytes]:
    # Low and high byte of each decoded sample as int16 little-endian: two translate()
    # calls and two slice assignments decode a whole payload in C.
    encoded = [(v & 0xFFFF).to_bytes(2, "little") for v in table]
    return bytes(e[0] for e in encoded), bytes(e[1] for e in encoded)


_INT16_TABLES: dict[Codec, tuple[bytes, bytes]] = {
    Codec.PCMU: _split_table(ULAW_TO_LINEAR),
    Codec.PCMA: _split_table(ALAW_TO_LINEAR),
}
_ABS_TABLES: dict[Codec, tuple[bytes, bytes]] = {
    Codec.PCMU: _split_table([abs(v) for v in ULAW_TO_LINEAR]),
    Codec.PCMA: _split_table([abs(v) for v in ALAW_TO_LINEAR]),
}

def _samples(int16: bytes | bytearray) -> _Samples:
    """Little-endian int16 bytes as an array (no copy)."""
    return np.frombuffer(int16, dtype="<i2")


def _to_int16(payload: bytes | bytearray, codec: Codec) -> bytearray:
    low, high = _INT16_TABLES[codec]
    out = bytearray(2 * len(payload))
    out[0::2] = payload.translate(low)
    out[1::2] = payload.translate(high)
    return out


# Adler-32's first half is 1 + the sum of the bytes modulo 65521: exact for up to 256
# bytes (1 + 256 * 255 < 65521), and a C loop ~10x faster than sum() over bytes.
_ADLER_EXACT = 256


def _byte_sum(data: bytes) -> int:
    if len(data) <= _ADLER_EXACT:
        return (adler32(data) & 0xFFFF) - 1
    return sum(data)


#: byte -> absolute linear sample, per law, for summing many frames at once (NumPy).
_ABS_ARRAYS: dict[Codec, npt.NDArray[np.int32]] = {
    codec: np.array([abs(v) for v in codec.table], dtype=np.int32) for codec in Codec
}
#: Longest frame whose sum of absolute samples (each at most 32,768) fits an int32.
_INT32_FRAME = (2**31 - 1) // 32768
_PAIR_ARRAYS: dict[Codec, npt.NDArray[np.int32]] = {}


def _pair_table(codec: Codec) -> npt.NDArray[np.int32]:
    """Absolute sample of both bytes of every 16-bit word, summed (either byte order)."""
    table = _PAIR_ARRAYS.get(codec)
    if table is None:
        words = np.arange(65536)
        single = _ABS_ARRAYS[codec]
        table = _PAIR_ARRAYS[codec] = (single[words & 0xFF] + single[words >> 8]).astype(
            np.int32)
    return table

#: SilenceDetector.feed sums whole frames with NumPy from this many frames in one call
#: (a batch of packets); fewer are summed one by one (the per-packet case).
_VECTOR_FRAMES = 4


def _absolute_sum(payload: bytes, codec: Codec) -> int:
    low, high = _ABS_TABLES[codec]
    return _byte_sum(payload.translate(high)) * 256 + _byte_sum(payload.translate(low))


@functools.cache
def _loud_table(codec: Codec, min_mean_square: float) -> bytes:
    """byte -> 1 if its sample's square reaches ``min_mean_square``, else 0.

    A block none of whose samples is loud has energy below ``min_mean_square * n``
    (``E <= sum(x**2) < n * min_mean_square``), so the ringing test rejects it without
    looking further: :meth:`RingbackDetector.feed` skips such blocks undecoded.
    """
    return bytes(1 if v * v >= min_mean_square else 0 for v in codec.table)


@dataclass(frozen=True, slots=True)
class RingbackDetection:
    """Where in the stream ringback was found (samples from the first sample fed)."""

    tone: RingbackTone
    start_sample: int  # first sample of the first of the ringing blocks
    detected_sample: int  # end of the block that completed the run

    @property
    def start_ms(self) -> float:
        """Start of the ringing run, in ms from the first sample fed."""
        return self.start_sample * 1000 / SAMPLE_RATE

    @property
    def detected_ms(self) -> float:
        """When the run became long enough, in ms from the first sample fed."""
        return self.detected_sample * 1000 / SAMPLE_RATE


class RingbackDetector:
    """Streaming ringback detector for one G.711 media stream.

    Feed RTP payloads in order with :meth:`feed`; report packet loss or a jump in the RTP
    timestamp with :meth:`discontinuity`. Only the first ``window_samples`` (default 10 s)
    are examined; after that, or after a detection, input is ignored and :attr:`finished`
    is true so the caller can stop decoding.
    """

    def __init__(
        self,
        *,
        window_samples: int | None = DEFAULT_WINDOW_SAMPLES,
        ratio: float = RING_RATIO,
        blocks: int = RING_BLOCKS,
        min_mean_square: float = MIN_RING_MEAN_SQUARE,
        min_component_share: float = MIN_COMPONENT_SHARE,
        max_phase_step: float = MAX_PHASE_STEP,
    ) -> None:
        self._window = window_samples
        self._max_phase_step = max_phase_step
        self._ratio = ratio
        self._blocks = blocks
        self._min_mean_square = min_mean_square
        self._min_share = min_component_share
        self._pending = bytearray()  # G.711 bytes (one per sample) not yet in a block
        # Stream sample index of the last loud sample fed (see _loud_table), -1 if none:
        # a block starting after it cannot ring and is skipped undecoded.
        self._last_loud = -1
        self._block_start = 0  # stream sample index of the first pending sample
        # (first stream sample, codec) for each change of codec; the last one is current.
        self._codecs: list[tuple[int, Codec]] = []
        self._codec: Codec | None = None  # the current codec, and its _loud_table
        self._loud = b""
        # Tone -> (consecutive ringing blocks, absolute-phase phasors of the last one).
        self._runs: dict[RingbackTone, tuple[int, tuple[complex, ...]]] = {}
        self.detection: RingbackDetection | None = None
        self.blocks_analysed = 0
        self.samples_fed = 0
        #: True once ringback was found or the window is used up (an attribute, not a
        #: property: the media supervisor reads it for every callee packet).
        self.finished = False
        self._update_finished()

    def _update_finished(self) -> None:
        self.finished = self.detection is not None or (
            self._window is not None and self._block_start >= self._window
        )

    def feed(self, payload: bytes, codec: Codec) -> RingbackDetection | None:
        """Add one packet's payload; return the detection if this packet completed it."""
        self.samples_fed += len(payload)
        if self.finished:
            return None
        pending = self._pending
        if codec is not self._codec:
            self._codec = codec
            self._codecs.append((self._block_start + len(pending), codec))
            self._loud = _loud_table(codec, self._min_mean_square)
        # Kept as G.711 bytes: a block is decoded only if it may hold a loud sample.
        loud = payload.translate(self._loud).rfind(1)
        if loud >= 0:
            self._last_loud = self._block_start + len(pending) + loud
        pending += payload
        count = len(pending)
        if count < BLOCK_SAMPLES:
            return None
        start = self._block_start
        if self._last_loud >= start:
            return self._drain()
        # Nothing loud pending (the usual case, and the whole of a silent stream): every
        # complete block is below the energy floor and rings for no tone, as _drain would
        # find one by one. Count them, drop them undecoded, and end the runs.
        blocks = count // BLOCK_SAMPLES
        window = self._window
        if window is not None and start + blocks * BLOCK_SAMPLES > window:
            blocks = -(-(window - start) // BLOCK_SAMPLES)  # those starting in the window
        self.blocks_analysed += blocks
        start += blocks * BLOCK_SAMPLES
        self._block_start = start
        if self._runs:
            self._runs = {}
        del pending[: blocks * BLOCK_SAMPLES]
        if len(self._codecs) > 1:
            self._prune_codecs()
        if window is not None and start >= window:
            self.finished = True
            pending.clear()
        return None

    def _prune_codecs(self) -> None:
        codecs = self._codecs
        while len(codecs) > 1 and codecs[1][0] <= self._block_start:
            del codecs[0]  # no pending sample is in the oldest codec any more

    def discontinuity(self, missing_samples: int) -> None:
        """Note ``missing_samples`` lost (or not sent): the partial block and runs reset."""
        self.samples_fed += missing_samples
        self._block_start += len(self._pending) + missing_samples
        self._pending.clear()
        self._runs.clear()
        self._update_finished()

    def _decode(self, start: int, offset: int) -> _Samples:
        """Linear samples of the block at stream sample ``start`` (``offset`` in pending)."""
        raw = self._pending[offset : offset + BLOCK_SAMPLES]
        codecs = self._codecs
        if codecs[-1][0] <= start:  # one codec for the whole block: the usual case
            return _samples(_to_int16(raw, codecs[-1][1]))
        samples = bytearray()
        end = start + BLOCK_SAMPLES
        for i, (first, codec) in enumerate(codecs):
            upto = codecs[i + 1][0] if i + 1 < len(codecs) else end
            lo, hi = max(first, start), min(upto, end)
            if lo < hi:
                samples += _to_int16(raw[lo - start : hi - start], codec)
        return _samples(samples)

    def _extend(
        self, tone: RingbackTone, start: int, relative: tuple[complex, ...]
    ) -> tuple[int, tuple[complex, ...]]:
        """The run of ``tone`` after a ringing block starting at stream sample ``start``."""
        # Refer each phasor to stream sample 0, so a steady tone at the nominal frequency
        # keeps a constant phasor from block to block.
        absolute = tuple(
            p * cmath.exp(-1j * w * start)
            for p, w in zip(relative, _MODEL_OF[tone].radians_per_sample, strict=True)
        )
        previous = self._runs.get(tone)
        if previous is not None and all(
            abs(cmath.phase(new * old.conjugate())) <= self._max_phase_step
            for new, old in zip(absolute, previous[1], strict=True)
        ):
            return previous[0] + 1, absolute
        return 1, absolute

    def _drain(self) -> RingbackDetection | None:
        """Analyse the complete pending blocks (in the window) in order: blocks after the
        last loud sample are counted without decoding; the others are decoded and tested
        together (:func:`_analyse_rows`), and only blocks that ring are looked at one by
        one, for the runs."""
        pending = self._pending
        window = self._window
        start = self._block_start
        blocks = len(pending) // BLOCK_SAMPLES
        if window is not None:
            blocks = max(0, min(blocks, -(-(window - start) // BLOCK_SAMPLES)))
        # Blocks starting at or before the last loud sample may ring; after it none can.
        tested = min(blocks, max(0, (self._last_loud - start) // BLOCK_SAMPLES + 1))
        result: RingbackDetection | None = None
        done = blocks  # blocks used up (analysed or counted)
        if tested:
            rows = _analyse_rows(self._decode_many(start, tested), self._ratio,
                                 self._min_mean_square, self._min_share)
            any_ring = cast("list[bool]", rows.ringing.any(axis=1).tolist())
            runs = self._runs
            if not any(any_ring):
                runs = {}
            else:
                for j in range(tested):
                    if not any_ring[j]:
                        runs = {}
                        continue
                    block_start = start + j * BLOCK_SAMPLES
                    ringing, phasors = _ringing(rows, j)
                    # A run counts consecutive, phase-coherent blocks ringing for one
                    # tone. A 425 Hz tone also fits the 400+450 Hz pair fairly well, so
                    # two runs can grow together; the best fit in the completing block
                    # names the tone.
                    self._runs = runs
                    runs = {tone: self._extend(tone, block_start, phasors[tone])
                            for tone in ringing}
                    complete = [t for t, (count, _) in runs.items() if count >= self._blocks]
                    if complete:
                        tone = min(complete, key=ringing.__getitem__)
                        end = block_start + BLOCK_SAMPLES
                        result = RingbackDetection(tone, end - runs[tone][0] * BLOCK_SAMPLES,
                                                   end)
                        self.detection = result
                        done = j + 1
                        break
            self._runs = runs
        if done > tested and self._runs:
            self._runs = {}  # quiet blocks after the tested ones end every run
        self.blocks_analysed += done
        self._block_start = start + done * BLOCK_SAMPLES
        del pending[: done * BLOCK_SAMPLES]
        if len(self._codecs) > 1:
            self._prune_codecs()
        if result is not None or (window is not None and self._block_start >= window):
            self.finished = True
            pending.clear()
        return result

    def _decode_many(self, start: int, count: int) -> _Matrix:
        """Linear samples of ``count`` pending blocks from stream sample ``start``, one
        row per block."""
        size = count * BLOCK_SAMPLES
        codecs = self._codecs
        if codecs[-1][0] <= start:  # one codec for all: the usual case
            samples = _samples(_to_int16(self._pending[:size], codecs[-1][1]))
        else:
            samples = np.concatenate([self._decode(start + i * BLOCK_SAMPLES,
                                                   i * BLOCK_SAMPLES)
                                      for i in range(count)])
        return samples.astype(np.float64).reshape(count, BLOCK_SAMPLES)


# --- Silence -------------------------------------------------------------------------


def mean_absolute(payload: bytes, codec: Codec) -> float:
    """Mean absolute linear sample (16-bit scale) of G.711 bytes; 0.0 for no bytes."""
    if not payload:
        return 0.0
    return _absolute_sum(payload, codec) / len(payload)


def is_silent(payload: bytes, codec: Codec, threshold: float = SILENCE_MEAN_ABS) -> bool:
    """True if the mean absolute sample is under ``threshold`` (512: the published rule)."""
    return mean_absolute(payload, codec) < threshold


class SilenceDetector:
    """Streaming count of silent and voiced frames of one G.711 stream.

    Frames are fixed ``frame_samples`` slices of the stream (20 ms by default), whatever
    the packetisation, so 20 ms and 30 ms senders are counted alike. A trailing partial
    frame is not counted.
    """

    def __init__(
        self,
        *,
        frame_samples: int = SILENCE_FRAME_SAMPLES,
        threshold: float = SILENCE_MEAN_ABS,
    ) -> None:
        if frame_samples <= 0:
            raise ValueError("frame_samples must be positive")
        self._frame = frame_samples
        self._limit = threshold * frame_samples  # compare sums, not means: no division
        self._partial_sum = 0
        self._partial_count = 0
        self._codec: Codec | None = None
        self._abs_low = self._abs_high = b""  # _ABS_TABLES of the last codec fed
        self._whole_frames = frame_samples <= _ADLER_EXACT  # feed's one-frame shortcut
        self._surely_silent = self._limit - 255 * frame_samples  # whatever the low bytes
        self._silent = 0
        self._voiced = 0
        self._first_voiced: int | None = None
        self._fed = 0
        #: Set by a caller that queues audio and feeds it in batches (the media
        #: supervisor): called before any count is read, so a count is always that of
        #: all the audio given so far.
        self.feed_pending: Callable[[], None] | None = None

    @property
    def silent_frames(self) -> int:
        """Silent frames counted so far."""
        if self.feed_pending is not None:
            self.feed_pending()
        return self._silent

    @property
    def voiced_frames(self) -> int:
        """Voiced frames counted so far."""
        if self.feed_pending is not None:
            self.feed_pending()
        return self._voiced

    @property
    def first_voiced_sample(self) -> int | None:
        """Start of the first voiced frame (samples from the first fed), if any."""
        if self.feed_pending is not None:
            self.feed_pending()
        return self._first_voiced

    @property
    def samples_fed(self) -> int:
        """Samples fed so far, those lost included (see :meth:`discontinuity`)."""
        if self.feed_pending is not None:
            self.feed_pending()
        return self._fed

    @property
    def frames(self) -> int:
        """Complete frames counted so far."""
        return self.silent_frames + self.voiced_frames

    def feed(self, payload: bytes, codec: Codec) -> None:
        """Add one packet's payload."""
        size = len(payload)
        frame = self._frame
        if size == frame and self._whole_frames and not self._partial_count:
            # One packet, one frame (20 ms packets): decide from the high bytes of the
            # absolute samples when they settle it, as sum = 256 * high + low with
            # 0 <= low <= 255 * size. Sums of up to 256 bytes by Adler-32 (_byte_sum).
            if codec is not self._codec:
                self._codec = codec
                self._abs_low, self._abs_high = _ABS_TABLES[codec]
            upper = ((adler32(payload.translate(self._abs_high)) & 0xFFFF) - 1) << 8
            limit = self._limit
            if upper < self._surely_silent or (
                upper < limit
                and upper + (adler32(payload.translate(self._abs_low)) & 0xFFFF) - 1 < limit
            ):
                self._silent += 1
            else:
                if self._first_voiced is None:
                    self._first_voiced = self._fed
                self._voiced += 1
            self._fed += size
            return
        position = 0
        if size >= _VECTOR_FRAMES * frame:
            position = self._feed_frames(payload, codec)
        while position < size:
            take = min(frame - self._partial_count, size - position)
            self._partial_sum += _absolute_sum(payload[position : position + take], codec)
            self._partial_count += take
            position += take
            if self._partial_count == frame:
                if self._partial_sum < self._limit:
                    self._silent += 1
                else:
                    if self._first_voiced is None:
                        self._first_voiced = self._fed + position - frame
                    self._voiced += 1
                self._partial_sum = 0
                self._partial_count = 0
        self._fed += size

    def _feed_frames(self, payload: bytes, codec: Codec) -> int:
        """Count the frames of a long ``payload`` (many packets' audio at once) as the
        frame-by-frame loop of :meth:`feed` does: the partial frame completed first, then
        every whole frame summed by NumPy. Returns how many bytes were taken (the rest,
        under a frame, is left to that loop); ``samples_fed`` is :meth:`feed`'s to move."""
        frame = self._frame
        position = 0
        if self._partial_count:
            position = frame - self._partial_count
            total = self._partial_sum + _absolute_sum(payload[:position], codec)
            self._partial_sum = self._partial_count = 0
            if total < self._limit:
                self._silent += 1
            else:
                if self._first_voiced is None:
                    self._first_voiced = self._fed + position - frame
                self._voiced += 1
        count = (len(payload) - position) // frame
        if count:
            if frame % 2 == 0 and frame <= _INT32_FRAME:
                # Two samples per look-up (a table of every pair of bytes), summed in the
                # table's own int32 (a frame's sum fits): about half the time of one
                # look-up per sample widened to int64.
                pairs = np.frombuffer(payload, dtype=np.uint16, count=count * frame // 2,
                                      offset=position)
                sums = np.add.reduce(np.take(_pair_table(codec), pairs)
                                     .reshape(count, frame // 2), axis=1)
            else:
                data = np.frombuffer(payload, dtype=np.uint8, count=count * frame,
                                     offset=position)
                sums = np.take(_ABS_ARRAYS[codec], data).reshape(count, frame).sum(
                    axis=1, dtype=np.int64)
            silent = sums < self._limit
            quiet = int(np.count_nonzero(silent))
            self._silent += quiet
            if quiet < count:
                self._voiced += count - quiet
                if self._first_voiced is None:
                    first = position + int(np.argmin(silent)) * frame
                    self._first_voiced = self._fed + first
            position += count * frame
        return position

    def discontinuity(self, missing_samples: int) -> None:
        """Note lost samples: the partial frame is dropped and the sample clock advances."""
        self._fed += missing_samples
        self._partial_sum = 0
        self._partial_count = 0
