"""Record the reference captures of ``pcaps/`` in the lab: real Kamailio, SIPp and RTP.

``python -m sidecar.lab.record [--out pcaps/] [CASE ...]`` records each case (all of
:data:`CASES` by default) as ``OUT/CASE.pcap`` and writes ``OUT/expected.json``, the
verdict and facts the tests expect of every capture (from :data:`CASES`, the one place
they are stated).

One case is one call, recorded on its own:

1. Kamailio runs the shipped ``kamailio/kamailio.cfg`` with ``FAIL_OPEN`` on free ports:
   no sidecar is connected, so every INVITE is relayed at once to the carrier (and
   without its overload control, whose probes would be in the capture).
2. ``tcpdump -i lo -s 0 -U -w FILE`` starts with a filter naming the lab's own ports
   (SIP of the caller, Kamailio and the carrier, and both media port pairs), so other
   traffic on the loopback, such as tests running concurrently, stays out of the file.
   The call starts only once tcpdump says it is listening.
3. A SIPp UAS (the carrier, with the case's scenario) and a SIPp UAC (the customer)
   place one call through Kamailio; both must count it as successful.
4. tcpdump gets SIGTERM by PID and is waited for (it flushes the file on the way out);
   Kamailio and SIPp are stopped by PID too, also when anything fails.

Audio that the scenarios play and SIPp does not ship is made by
:mod:`sidecar.lab.audio`; it is rebuilt first when a file is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from . import KAMAILIO_DIR, free_port, free_port_block
from .audio import AUDIO_DIR, AUDIO_FILES, build_all
from .kamailio import KamailioProcess, KamailioSettings
from .sipp import Sipp, SippResult

__all__ = [
    "CASES",
    "DEFAULT_OUT",
    "MAX_CAPTURE_BYTES",
    "Case",
    "RecordError",
    "Recording",
    "Tcpdump",
    "expected_facts",
    "main",
    "record_case",
    "write_expected",
]

HOST = "127.0.0.1"
#: The repository's ``pcaps/`` directory.
DEFAULT_OUT = KAMAILIO_DIR.parent / "pcaps"
#: Every capture stays well under 1 MB.
MAX_CAPTURE_BYTES = 1_000_000
CALLER = "15551230001"
DIALLED = "4930123456"

Disposition = Literal["answered", "failed", "no-media"]
FasVerdict = Literal["", "no-media", "late-media", "ringback", "silence"]


class RecordError(RuntimeError):
    """A case could not be recorded (a tool failed, or the call did not go as scripted)."""


@dataclass(frozen=True)
class Case:
    """One reference call: the scenarios that make it and what the capture must show."""

    name: str
    summary: str
    uas_scenario: str
    uac_scenario: str = "uac.xml"
    #: The UAS scenario's ``<pause/>`` (early media time, wait before late media).
    uas_duration_ms: int = 0
    #: The UAC's talk time after the ACK (``uac.xml``), before its BYE.
    uac_duration_ms: int = 4500
    disposition: Disposition = "answered"
    fas: FasVerdict = ""
    final_code: int = 200
    provisional: tuple[int, ...] = (180,)
    early_media: bool = False
    #: What the early media is: "ringback" (a ringing tone) or "announcement" (speech).
    early_media_kind: Literal["ringback", "announcement"] | None = None
    caller_media: bool = True
    callee_media: bool = True
    codec: Literal["PCMA", "PCMU"] = "PCMA"
    ringback_after_answer: bool = False
    silence_after_answer: bool = False
    #: Seconds from the 200 OK to the callee's first RTP packet, when that is the point.
    late_media_delay_s: float | None = None
    #: Seconds after the 200 OK from which the call is billable ("200 OK with
    #: established media"); ``None``: nothing billable (not answered, or a FAS verdict
    #: that voids the whole call).
    billable_from_answer_s: float | None = 0.0
    #: The answer leaves within a few ms of the INVITE (no 180).
    instant_answer: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        """Name of the capture file."""
        return f"{self.name}.pcap"


#: The reference calls, by name (= capture file stem).
CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case(
            "normal",
            "180, 200 OK; both sides play speech (g711a.pcap); 4.5 s talk; caller BYE",
            "uas.xml",
        ),
        Case(
            "no_media",
            "180, 200 OK, but the callee sends no RTP at all (the caller does); 4 s; caller BYE",
            "uas_nomedia.xml",
            uac_duration_ms=4000,
            disposition="no-media",
            fas="no-media",
            callee_media=False,
            billable_from_answer_s=None,
        ),
        Case(
            "ringback_after_answer",
            "180, 200 OK, then the callee plays 425 Hz ringback in PCMA (1 s on, 4 s off: "
            "bursts at 0 and 5 s after the ACK); caller gives up after 7 s, BYE",
            "uas_ringback.xml",
            uac_duration_ms=7000,
            fas="ringback",
            ringback_after_answer=True,
            billable_from_answer_s=None,
        ),
        Case(
            "ringback_after_answer_pcmu",
            "PCMU offer and answer; 180, 200 OK, then the callee plays 440+480 Hz ringback "
            "in PCMU (2 s on, 4 s off); caller gives up after 7 s, BYE",
            "uas_ringback_pcmu.xml",
            uac_scenario="uac_pcmu.xml",
            uac_duration_ms=7000,
            fas="ringback",
            codec="PCMU",
            ringback_after_answer=True,
            billable_from_answer_s=None,
        ),
        Case(
            "silence_after_answer",
            "180, 200 OK, then the callee's RTP carries only low noise (mean |sample| "
            "about 35, under 512) for the whole call; 6 s; caller BYE",
            "uas_silence.xml",
            uac_duration_ms=6000,
            fas="silence",
            silence_after_answer=True,
            billable_from_answer_s=None,
        ),
        Case(
            "early_media_answer",
            "183 with SDP and 1.8 s of 425 Hz ringback as early media, 200 OK at 2 s, "
            "then speech both ways; 4.5 s talk; caller BYE",
            "uas_early_ringback.xml",
            uas_duration_ms=2000,
            provisional=(183,),
            early_media=True,
            early_media_kind="ringback",
        ),
        Case(
            "early_media_failure",
            "183 with SDP and a 2 s spoken announcement as early media, then 404 Not Found; "
            "no 200 OK, no BYE",
            "uas_early_media_fail.xml",
            uac_scenario="uac_reject.xml",
            uas_duration_ms=2200,
            disposition="failed",
            final_code=404,
            provisional=(183,),
            early_media=True,
            early_media_kind="announcement",
            caller_media=False,
            billable_from_answer_s=None,
        ),
        Case(
            "late_media",
            "180, 200 OK, no callee RTP for 5 s after the ACK, then speech; caller talks "
            "throughout; 9 s; caller BYE",
            "uas_late_media.xml",
            uas_duration_ms=5000,
            uac_duration_ms=9000,
            fas="late-media",
            late_media_delay_s=5.0,
            billable_from_answer_s=5.0,
        ),
        Case(
            "ivr_instant_answer",
            "200 OK within a few ms of the INVITE, no 180, then an IVR prompt (speech) and "
            "the caller's speech; 4.5 s; caller BYE. A genuine instant answer: not FAS",
            "uas_instant.xml",
            provisional=(),
            instant_answer=True,
        ),
    )
}


def expected_facts(case: Case) -> dict[str, Any]:
    """The ``expected.json`` entry of one case (see ``pcaps/README.md`` for the fields)."""
    answered = case.final_code == 200
    return {
        "description": case.summary,
        "calls": 1,
        "disposition": case.disposition,
        "fas": case.fas,
        "final_code": case.final_code,
        "provisional": list(case.provisional),
        "has_200_ok": answered,
        "has_bye": answered,
        "hangup_by": "caller" if answered else None,
        "early_media": case.early_media,
        "early_media_kind": case.early_media_kind,
        "caller_media": case.caller_media,
        "callee_media": case.callee_media,
        "codec": case.codec,
        "ringback_after_answer": case.ringback_after_answer,
        "silence_after_answer": case.silence_after_answer,
        "late_media_delay_s": case.late_media_delay_s,
        "billable_from_answer_s": case.billable_from_answer_s,
        "instant_answer": case.instant_answer,
        "talk_s": case.uac_duration_ms / 1000 if answered else None,
        "uas_scenario": case.uas_scenario,
        "uac_scenario": case.uac_scenario,
        **case.extra,
    }


def write_expected(out_dir: Path, cases: Sequence[Case] | None = None) -> Path:
    """Write ``out_dir/expected.json`` for ``cases`` (default: all), keyed by file name."""
    chosen = list(CASES.values()) if cases is None else list(cases)
    data = {case.file_name: expected_facts(case) for case in chosen}
    path = out_dir / "expected.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


class Tcpdump:
    """``tcpdump -i lo -s 0 -U -w FILE FILTER`` for one capture; stopped by PID.

    :meth:`start` returns once tcpdump reports that it listens (the filter is attached),
    so nothing of the call can precede the capture. ``-Z root`` keeps tcpdump from
    dropping to the ``tcpdump`` user, which could not write into the repository.
    """

    def __init__(
        self,
        path: Path,
        bpf_filter: str,
        log: Path,
        *,
        interface: str = "lo",
        tcpdump_bin: str = "tcpdump",
    ) -> None:
        self.path = path
        self.bpf_filter = bpf_filter
        self.log = log
        self.argv = [
            tcpdump_bin,
            "-i",
            interface,
            "-s",
            "0",
            "-U",
            "-n",
            "-Z",
            "root",
            "-w",
            os.fspath(path),
            bpf_filter,
        ]
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of tcpdump while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 5.0) -> None:
        """Start tcpdump and wait until it listens; raise :class:`RecordError` otherwise."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while b"listening on" not in self.log.read_bytes():
            if self._proc.poll() is not None:
                raise RecordError(
                    f"tcpdump exited with {self._proc.returncode}: "
                    f"{self.log.read_text(errors='replace').strip()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RecordError(f"tcpdump not listening after {timeout} s")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then wait for tcpdump to flush and exit (SIGKILL if it hangs)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Recording:
    """One recorded case."""

    case: Case
    path: Path
    size: int
    uac: SippResult
    uas: SippResult


def _distinct_ports(count: int, taken: set[int]) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port("udp", HOST)
        if port not in taken:
            taken.add(port)
            ports.append(port)
    return ports


def _media_block(taken: set[int]) -> int:
    for _ in range(50):
        base = free_port_block(HOST)
        block = set(range(base, base + 4))
        if not block & taken:
            taken.update(block)
            return base
    raise RecordError("no free media port block distinct from the lab's other ports")


def _missing_audio() -> list[str]:
    return [name for name in AUDIO_FILES if not (AUDIO_DIR / name).is_file()]


def record_case(
    case: Case, out_dir: Path, work_dir: Path, *, call_timeout_s: float = 40.0
) -> Recording:
    """Record ``case`` into ``out_dir/CASE.pcap``; logs and traces go to ``work_dir``.

    Raises :class:`RecordError` if a tool fails, a side does not count the call as
    successful, or the capture is empty or too big.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    taken: set[int] = set()
    kam_port, uas_port, uac_port = _distinct_ports(3, taken)
    uas_media = _media_block(taken)
    uac_media = _media_block(taken)
    settings = KamailioSettings(
        sip_ip=HOST,
        sip_port=kam_port,
        evapi_ip=HOST,
        evapi_port=free_port("tcp", HOST),
        dest=f"sip:{HOST}:{uas_port}",
        fail_open=True,
        children=2,
        # The captures hold the call alone: no overload probes (OPTIONS Kamailio sends
        # its own SIP socket every few ms, kamailio.cfg OVERLOAD_DELAY_MS).
        extra_defines={"OVERLOAD_DELAY_MS": 0},
    )
    ports = sorted(
        {kam_port, uas_port, uac_port, uas_media, uas_media + 2, uac_media, uac_media + 2}
    )
    bpf = f"udp and host {HOST} and (" + " or ".join(f"port {p}" for p in ports) + ")"
    path = out_dir / case.file_name
    tmp = out_dir / f".{case.file_name}.part"
    sipp = Sipp(work_dir / "sipp", host=HOST)
    with contextlib.ExitStack() as stack:
        kam = stack.enter_context(KamailioProcess(work_dir / "kamailio", settings))
        capture = stack.enter_context(Tcpdump(tmp, bpf, work_dir / "tcpdump.log"))
        uas = stack.enter_context(
            sipp.start_uas(
                case.uas_scenario,
                port=uas_port,
                media_port=uas_media,
                duration_ms=case.uas_duration_ms,
                timeout_s=call_timeout_s,
                name="uas",
            )
        )
        uac = stack.enter_context(
            sipp.start_uac(
                f"{HOST}:{kam_port}",
                case.uac_scenario,
                dialled=DIALLED,
                caller=CALLER,
                port=uac_port,
                media_port=uac_media,
                duration_ms=case.uac_duration_ms,
                timeout_s=call_timeout_s,
                name="uac",
            )
        )
        r_uac = uac.wait()
        r_uas = uas.wait(call_timeout_s)
        time.sleep(0.3)  # let the last retransmission or RTP packet reach the capture
        capture.stop()
        if not (r_uac.calls_ok and r_uas.calls_ok):
            raise RecordError(
                f"{case.name}: the call did not go as scripted "
                f"(uac: {r_uac.exit_meaning}, uas: {r_uas.exit_meaning})\n"
                + r_uac.output_tail()
                + "\n"
                + r_uas.output_tail()
                + "\nkamailio:\n"
                + kam.log_tail(20)
            )
    size = tmp.stat().st_size if tmp.exists() else 0
    if size <= 24:  # the pcap file header alone
        tmp.unlink(missing_ok=True)
        raise RecordError(f"{case.name}: nothing captured (filter: {bpf})")
    if size >= MAX_CAPTURE_BYTES:
        tmp.unlink(missing_ok=True)
        raise RecordError(f"{case.name}: capture of {size} bytes is not under 1 MB")
    tmp.replace(path)
    return Recording(case, path, size, r_uac, r_uas)


@contextlib.contextmanager
def _work_dir(keep: bool) -> Iterator[Path]:
    # Short paths under /tmp: Kamailio's UNIX sockets live in the run directory.
    path = Path(tempfile.mkdtemp(prefix="pcaprec-"))
    ok = False
    try:
        yield path
        ok = True
    finally:
        if ok and not keep:
            shutil.rmtree(path, ignore_errors=True)
        else:
            print(f"work directory kept: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sidecar.lab.record [--out DIR] [--keep-work] [--expected-only] [CASE ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.lab.record",
        description="Record the reference captures with the real Kamailio, SIPp and tcpdump.",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the work directory (Kamailio and SIPp logs and traces)",
    )
    parser.add_argument(
        "--expected-only",
        action="store_true",
        help="only rewrite OUT/expected.json from the case table",
    )
    parser.add_argument(
        "cases",
        nargs="*",
        metavar="CASE",
        help=f"cases to record (default: all): {', '.join(CASES)}",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.cases if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.expected_only:
        print(f"expected verdicts: {write_expected(args.out)}")
        return 0
    if _missing_audio():
        build_all()
    chosen = [CASES[name] for name in args.cases] or list(CASES.values())
    with _work_dir(args.keep_work) as work:
        for number, case in enumerate(chosen, 1):
            print(f"[{number}/{len(chosen)}] {case.name}: {case.summary}", flush=True)
            rec = record_case(case, args.out, work / case.name)
            print(f"    {rec.path}: {rec.size} bytes", flush=True)
    print(f"expected verdicts: {write_expected(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
