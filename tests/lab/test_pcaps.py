"""The reference captures of ``pcaps/`` show what ``pcaps/expected.json`` says they show.

Every capture is read with the project's own reader (``sidecar.media.pcap``), its SIP
messages are split into first line, Call-ID, CSeq and SDP body, and the RTP of each side
is told apart by the media port of its SDP (the caller's from the INVITE, the callee's
from its first 183 or 200 OK with SDP). Then, per capture:

- size under 1 MB, one call (one Call-ID), the provisional and final responses, BYE;
- RTP direction facts: callee stream present or absent, early media before the answer or
  the failure, media start after the 200 OK (late media starts >= 4 s after it);
- the FAS detectors on the callee stream after the 200 OK: ringback found within 10 s
  in the ringback captures and nowhere else, nearly every frame silent in the silence
  capture;
- tshark, independently, sees the same SIP messages and RTP streams.

These read committed files and are fast. ``test_recorder_records_normal_afresh`` records
one case again with the real Kamailio, SIPp and tcpdump (about 6 s), to prove the recorder
works on a fresh machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from sidecar.lab.record import CASES, MAX_CAPTURE_BYTES, record_case
from sidecar.media.g711 import Codec
from sidecar.media.pcap import CapturedPayload, read_capture
from sidecar.media.rtp import RtpHeader, parse_rtp
from sidecar.media.sdp import parse_sdp
from sidecar.media.tones import RingbackDetector, SilenceDetector

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
EXPECTED: dict[str, dict[str, Any]] = json.loads((PCAPS / "expected.json").read_text())
NAMES = sorted(EXPECTED)

TSHARK_FIELDS = (
    "udp.srcport",
    "sip.Method",
    "sip.Status-Code",
    "sip.CSeq.method",
    "rtp.ssrc",
    "rtp.p_type",
)
_SIP_START = (b"SIP/2.0 ", b"INVITE ", b"ACK ", b"BYE ", b"CANCEL ", b"OPTIONS ")


@dataclass(frozen=True)
class SipPacket:
    """One SIP message as captured (each hop of the proxy is a packet of its own)."""

    timestamp: float
    src_port: int
    dst_port: int
    first_line: str
    call_id: str
    cseq_method: str
    body: str

    @property
    def status(self) -> int | None:
        """Status code of a response, ``None`` for a request."""
        return int(self.first_line.split()[1]) if self.first_line.startswith("SIP/2.0") else None

    @property
    def method(self) -> str:
        """Request method, or the CSeq method of a response."""
        return self.cseq_method if self.status is not None else self.first_line.split()[0]


@dataclass(frozen=True)
class RtpPacket:
    """One RTP packet as captured."""

    timestamp: float
    src_port: int
    dst_port: int
    header: RtpHeader
    payload: bytes


def _sip(p: CapturedPayload) -> SipPacket:
    text = p.payload.decode("latin-1")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    cseq = headers.get("cseq", "").split()
    return SipPacket(
        p.timestamp,
        p.src_port,
        p.dst_port,
        lines[0],
        headers.get("call-id", headers.get("i", "")),
        cseq[1] if len(cseq) > 1 else "",
        body,
    )


@dataclass(frozen=True)
class CallCapture:
    """The SIP and RTP of one capture, and the landmarks the checks refer to."""

    size: int
    sip: tuple[SipPacket, ...]
    rtp: tuple[RtpPacket, ...]

    def invite_responses(self, status: int | None = None) -> list[SipPacket]:
        """Responses to the INVITE (of one status), in capture order."""
        return [
            m
            for m in self.sip
            if m.status is not None
            and m.method == "INVITE"
            and (status is None or m.status == status)
        ]

    @property
    def invite(self) -> SipPacket:
        """The caller's INVITE (the first one in the capture)."""
        return next(m for m in self.sip if m.status is None and m.method == "INVITE")

    @property
    def final(self) -> SipPacket | None:
        """The first final response to the INVITE."""
        return next((m for m in self.invite_responses() if (m.status or 0) >= 200), None)

    @property
    def answer_time(self) -> float | None:
        """When the callee's 200 OK to the INVITE was first seen."""
        ok = self.invite_responses(200)
        return ok[0].timestamp if ok else None

    @property
    def caller_media_port(self) -> int:
        """The audio port of the INVITE's SDP offer."""
        return parse_sdp(self.invite.body).audio[0].port

    @property
    def callee_media_port(self) -> int:
        """The audio port of the first SDP answer (183 or 200 OK)."""
        answer = next(m for m in self.invite_responses() if m.body.strip())
        return parse_sdp(answer.body).audio[0].port

    def stream(
        self, src_port: int, *, after: float | None = None, before: float | None = None
    ) -> list[RtpPacket]:
        """RTP sent from ``src_port``, optionally only in a time window."""
        return [
            p
            for p in self.rtp
            if p.src_port == src_port
            and (after is None or p.timestamp >= after)
            and (before is None or p.timestamp < before)
        ]


@cache
def load(path: Path) -> CallCapture:
    """Read a capture into SIP messages and RTP packets (anything else fails the test)."""
    sip: list[SipPacket] = []
    rtp: list[RtpPacket] = []
    for p in read_capture(path):
        assert p.transport == "udp", p
        if p.payload.startswith(_SIP_START):
            sip.append(_sip(p))
            continue
        header = parse_rtp(p.payload)
        assert header is not None, f"{path.name}: neither SIP nor RTP: {p}"
        rtp.append(
            RtpPacket(
                p.timestamp,
                p.src_port,
                p.dst_port,
                header,
                p.payload[header.payload_offset : header.payload_end],
            )
        )
    return CallCapture(path.stat().st_size, tuple(sip), tuple(rtp))


def feed(detector: RingbackDetector | SilenceDetector, packets: list[RtpPacket]) -> float | None:
    """Feed a stream in order, noting gaps in the RTP clock; capture time of a detection."""
    previous: RtpPacket | None = None
    for p in packets:
        codec = Codec(p.header.payload_type)
        if previous is not None:
            gap = (p.header.timestamp - previous.header.timestamp) & 0xFFFFFFFF
            if gap != len(previous.payload):
                detector.discontinuity(max(0, gap - len(previous.payload)))
        previous = p
        if isinstance(detector, RingbackDetector):
            if detector.feed(p.payload, codec) is not None:
                return p.timestamp
        else:
            detector.feed(p.payload, codec)
    return None


# ------------------------------------------------------------------------------ the set


def test_every_capture_is_listed_and_every_listed_one_exists() -> None:
    on_disk = sorted(p.name for p in PCAPS.glob("*.pcap"))
    assert on_disk == NAMES
    assert sorted(f"{name}.pcap" for name in CASES) == NAMES


def test_expected_json_is_what_the_recorder_states() -> None:
    """``expected.json`` is written from ``sidecar.lab.record.CASES``: the two agree."""
    from sidecar.lab.record import expected_facts

    for name, case in CASES.items():
        assert EXPECTED[f"{name}.pcap"] == expected_facts(case)


# ------------------------------------------------------------------------------ structure


def check_signalling(cap: CallCapture, facts: dict[str, Any]) -> None:
    """SIP facts of one capture against its ``expected.json`` entry."""
    assert len({m.call_id for m in cap.sip}) == facts["calls"] == 1
    invite = cap.invite
    provisional = {m.status for m in cap.invite_responses() if 100 < (m.status or 0) < 200}
    assert provisional == set(facts["provisional"])
    finals = {m.status for m in cap.invite_responses() if (m.status or 0) >= 200}
    assert finals == {facts["final_code"]}
    assert (cap.answer_time is not None) == facts["has_200_ok"]
    byes = [m for m in cap.sip if m.status is None and m.method == "BYE"]
    assert bool(byes) == facts["has_bye"]
    if facts["hangup_by"] == "caller":
        assert byes[0].src_port == invite.src_port  # the first BYE leaves the caller
        assert any(m.status == 200 and m.method == "BYE" for m in cap.sip)
    codec_pt = {"PCMA": 8, "PCMU": 0}[facts["codec"]]
    assert parse_sdp(invite.body).audio[0].payload_types[0] == codec_pt
    if facts["instant_answer"]:
        assert cap.answer_time is not None
        assert cap.answer_time - invite.timestamp < 0.05
    if facts["has_200_ok"] and facts["talk_s"] is not None:
        assert cap.answer_time is not None
        assert byes[0].timestamp - cap.answer_time == pytest.approx(facts["talk_s"], abs=0.5)


def check_media(cap: CallCapture, facts: dict[str, Any]) -> None:
    """RTP direction and timing facts of one capture."""
    caller = cap.stream(cap.caller_media_port)
    callee = cap.stream(cap.callee_media_port)
    assert len(caller) + len(callee) == len(cap.rtp)  # no RTP from anywhere else
    assert bool(caller) == facts["caller_media"]
    assert bool(callee) == facts["callee_media"]
    codec_pt = {"PCMA": 8, "PCMU": 0}[facts["codec"]]
    assert {p.header.payload_type for p in cap.rtp} <= {codec_pt}
    final = cap.final
    assert final is not None
    early = cap.stream(cap.callee_media_port, before=final.timestamp)
    if facts["early_media"]:
        assert len(early) >= 50, "about 2 s of early media (20 ms packets) before the final"
        assert cap.callee_media_port == parse_sdp(cap.invite_responses(183)[0].body).audio[0].port
    else:
        assert not early
    if not facts["has_200_ok"]:
        # A failed call: media stops with the failure.
        assert all(p.timestamp < final.timestamp for p in callee)
        return
    answer = cap.answer_time
    assert answer is not None
    after = cap.stream(cap.callee_media_port, after=answer)
    if not facts["callee_media"]:
        assert not after
        return
    delay = after[0].timestamp - answer
    if facts["late_media_delay_s"] is not None:
        assert delay >= 4.0
        assert delay == pytest.approx(facts["late_media_delay_s"], abs=1.0)
    else:
        assert delay < 0.5
    if facts["caller_media"]:
        assert caller[0].timestamp - answer < 0.5


def check_detectors(cap: CallCapture, facts: dict[str, Any]) -> None:
    """The FAS detectors on the callee stream after the 200 OK (and before it)."""
    answer = cap.answer_time
    final = cap.final
    assert final is not None
    if facts["early_media_kind"] is not None:
        early = cap.stream(cap.callee_media_port, before=final.timestamp)
        found = feed(RingbackDetector(), early)
        assert (found is not None) == (facts["early_media_kind"] == "ringback")
    if answer is None or not facts["callee_media"]:
        # Nothing to hear after an answer: neither ringback nor silence can be expected.
        assert not (facts["ringback_after_answer"] or facts["silence_after_answer"])
        return
    after = cap.stream(cap.callee_media_port, after=answer)
    detected_at = feed(RingbackDetector(), after)
    if facts["ringback_after_answer"]:
        assert detected_at is not None, "ringback not detected"
        assert detected_at - answer <= 10.0
    else:
        assert detected_at is None, f"ringback detected {detected_at - answer:.2f} s in"
    silence = SilenceDetector()
    feed(silence, after)
    assert silence.frames >= 100
    share = silence.silent_frames / silence.frames
    if facts["silence_after_answer"]:
        assert share >= 0.98
    else:
        assert share < 0.9


def check_capture(path: Path, facts: dict[str, Any]) -> CallCapture:
    """Every check of one capture; returns it for further comparison."""
    cap = load(path)
    assert 24 < cap.size < MAX_CAPTURE_BYTES
    check_signalling(cap, facts)
    check_media(cap, facts)
    check_detectors(cap, facts)
    return cap


@pytest.mark.parametrize("name", NAMES)
def test_capture_matches_expected(name: str) -> None:
    check_capture(PCAPS / name, EXPECTED[name])


# ------------------------------------------------------------------------------ tshark


@pytest.mark.parametrize("name", NAMES)
def test_tshark_sees_the_same_sip_and_rtp(name: str) -> None:
    """An independent reader (tshark, installed by scripts/setup) agrees with ours."""
    tshark = shutil.which("tshark")
    assert tshark is not None, "tshark is installed by scripts/setup"
    cap = load(PCAPS / name)
    ports = {cap.caller_media_port, cap.callee_media_port}
    argv = [tshark, "-n", "-r", str(PCAPS / name)]
    for port in sorted(ports):
        argv += ["-d", f"udp.port=={port},rtp"]
    argv += ["-Y", "sip || rtp", "-T", "fields", "-E", "separator=|"]
    for field in TSHARK_FIELDS:
        argv += ["-e", field]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    sip: Counter[tuple[str, str, str]] = Counter()
    streams: Counter[tuple[int, int, int]] = Counter()
    for line in out.splitlines():
        src, method, status, cseq_method, ssrc, pt = line.split("|")
        if ssrc:
            streams[(int(src), int(ssrc, 16), int(pt))] += 1
        else:
            sip[(method, status, cseq_method)] += 1
    ours_sip = Counter(
        ("", str(m.status), m.method) if m.status is not None else (m.method, "", m.method)
        for m in cap.sip
    )
    ours_streams = Counter((p.src_port, p.header.ssrc, p.header.payload_type) for p in cap.rtp)
    assert sip == ours_sip
    assert streams == ours_streams


# ------------------------------------------------------------------------------ re-record


@pytest.mark.timeout(120)
def test_recorder_records_normal_afresh(tmp_path: Path) -> None:
    """Record ``normal`` again with the real Kamailio, SIPp and tcpdump: same structure."""
    case = CASES["normal"]
    rec = record_case(case, tmp_path / "out", tmp_path / "work")
    assert rec.uac.calls_ok and rec.uas.calls_ok
    fresh = check_capture(rec.path, EXPECTED[case.file_name])
    committed = load(PCAPS / case.file_name)

    def kinds(cap: CallCapture) -> Counter[str]:
        return Counter(m.first_line.split(" sip:")[0] for m in cap.sip)

    assert kinds(fresh) == kinds(committed)
    assert len(fresh.rtp) == pytest.approx(len(committed.rtp), rel=0.1)
