"""Run the SIPp scenarios of ``kamailio/sipp/`` and read back what SIPp measured.

:class:`Sipp` starts a UAS (:meth:`Sipp.start_uas`) and a UAC (:meth:`Sipp.start_uac`)
in the background; ``with proc: proc.wait()`` runs one to completion. Every
SIPp gets free ports (SIP, media p and p+2, control), a bounded run time (SIPp's own
``-timeout`` and a wait limit here) and its trace files in the run directory:

- ``NAME.stat.csv`` (``-trace_stat``): SIPp's statistics; :class:`SippResult` reads the
  last row (successful/failed calls, call length, the named response-time counters such
  as ``talk``, which ``uac.xml`` runs from the ACK to the end of the call);
- ``NAME.short.tsv`` (``-trace_shortmsg``): one line per SIP message sent or received;
- ``NAME.msg.log``, ``NAME.err.log``, ``NAME.screen.log``, ``NAME.out``: full messages,
  unexpected messages, the final screen, stdout;
- with ``extra=["-trace_rtt", "-rtt_freq", "1"]``: every response time SIPp measured, in
  :meth:`SippProcess.rtt_file` (SIPp 3.6.1 drops what is left in its buffer at exit, so keep
  ``-rtt_freq 1``); :func:`read_stat_rows` reads the whole statistics time series.

Processes are stopped by their PID (SIGTERM, then SIGKILL), also when a test fails.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from . import (
    KAMAILIO_DIR,
    ensure_port_free,
    free_fixed_port,
    free_port,
    free_port_block,
    ports_bound_by,
)

#: The scenarios the project ships.
SCENARIO_DIR = KAMAILIO_DIR / "sipp"

#: SIPp's documented exit codes.
EXIT_CODES: Mapping[int, str] = {
    0: "all calls were successful",
    1: "at least one call failed",
    97: "exit on internal command",
    99: "normal exit without calls processed",
    255: "fatal error",
    254: "fatal error binding a socket",
}


class SippError(RuntimeError):
    """SIPp could not be started, or did not finish in time."""


class SippPortTaken(SippError):
    """SIPp exited at start because one of its ports was bound meanwhile (errno 98)."""


@dataclass(frozen=True)
class SipMessage:
    """One line of SIPp's ``-trace_shortmsg`` file."""

    timestamp: float
    #: ``S`` sent by this SIPp, ``R`` received.
    direction: Literal["S", "R"]
    call_id: str
    cseq_number: int
    cseq_method: str
    first_line: str

    @property
    def is_response(self) -> bool:
        """Whether this is a SIP response."""
        return self.first_line.startswith("SIP/2.0 ")

    @property
    def status_code(self) -> int | None:
        """The status code of a response, ``None`` for a request."""
        if not self.is_response:
            return None
        return int(self.first_line.split()[1])

    @property
    def method(self) -> str:
        """The request method, or the CSeq method of a response."""
        return self.cseq_method if self.is_response else self.first_line.split(" ", 1)[0]


def parse_sipp_duration(text: str) -> float:
    """Seconds from SIPp's ``HH:MM:SS:microseconds`` statistics format."""
    hours, minutes, seconds, micros = (int(part) for part in text.split(":"))
    return hours * 3600 + minutes * 60 + seconds + micros / 1e6


def _read_short_messages(path: Path) -> tuple[SipMessage, ...]:
    messages: list[SipMessage] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ()
    for line in lines:
        fields = line.split("\t")
        if len(fields) < 7 or fields[3] not in ("S", "R"):
            continue
        cseq = fields[5].removeprefix("CSeq:").strip().split()
        direction: Literal["S", "R"] = "S" if fields[3] == "S" else "R"
        messages.append(
            SipMessage(
                timestamp=float(fields[2]),
                direction=direction,
                call_id=fields[4],
                cseq_number=int(cseq[0]) if cseq and cseq[0].isdigit() else 0,
                cseq_method=cseq[1] if len(cseq) > 1 else "",
                first_line=fields[6],
            )
        )
    return tuple(messages)


def _read_last_stats(path: Path) -> dict[str, str]:
    rows = read_stat_rows(path)
    return rows[-1] if rows else {}


def read_stat_rows(path: Path) -> list[dict[str, str]]:
    """Every row of a ``-trace_stat`` CSV (column name -> value), oldest first.

    With ``-fd 1`` SIPp appends one row a second, so this is a time series of its
    cumulative counters (``(C)`` columns) while it runs; a row still being written
    (shorter than the header) is left out.
    """
    try:
        with open(path, newline="", errors="replace") as fh:
            rows = list(csv.reader(fh, delimiter=";"))
    except FileNotFoundError:
        return []
    if len(rows) < 2:
        return []
    header = rows[0]
    return [dict(zip(header, row, strict=False)) for row in rows[1:]
            if len(row) >= len(header) - 1]


@dataclass(frozen=True)
class SippResult:
    """What one SIPp run did, as SIPp itself recorded it."""

    name: str
    exit_code: int
    #: Last row of the ``-trace_stat`` CSV (column name -> value).
    stats: Mapping[str, str]
    messages: tuple[SipMessage, ...]
    files: Mapping[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Exit code 0: every call of the scenario succeeded."""
        return self.exit_code == 0

    @property
    def calls_ok(self) -> bool:
        """SIPp's statistics count at least one successful call and no failed one.

        Tests use this rather than :attr:`ok`: SIPp 3.6.1 was once seen exiting with 255
        after a run its statistics (and its messages) show as fully successful, a call
        ending while the pcap was still playing.
        """
        return self.successful_calls > 0 and self.failed_calls == 0

    @property
    def exit_meaning(self) -> str:
        """SIPp's meaning of the exit code."""
        return EXIT_CODES.get(self.exit_code, f"exit code {self.exit_code}")

    def _stat_int(self, column: str) -> int:
        value = self.stats.get(column, "")
        return int(value) if value.isdigit() else 0

    @property
    def successful_calls(self) -> int:
        """Successful calls (cumulated)."""
        return self._stat_int("SuccessfulCall(C)")

    @property
    def failed_calls(self) -> int:
        """Failed calls (cumulated)."""
        return self._stat_int("FailedCall(C)")

    @property
    def call_length_s(self) -> float | None:
        """Average call length in seconds, from creation to the end of the scenario."""
        value = self.stats.get("CallLength(C)")
        return parse_sipp_duration(value) if value else None

    def response_time_s(self, name: str) -> float | None:
        """Average of the named response-time counter (``rtd``) in seconds."""
        value = self.stats.get(f"ResponseTime{name}(C)")
        return parse_sipp_duration(value) if value else None

    @property
    def talk_time_s(self) -> float | None:
        """``uac.xml``'s ``talk`` counter: from the ACK to the end of the call."""
        return self.response_time_s("talk")

    def received(self, method: str | None = None) -> list[SipMessage]:
        """Received requests (of one method) and responses."""
        return [
            m
            for m in self.messages
            if m.direction == "R" and (method is None or m.method == method)
        ]

    def sent(self, method: str | None = None) -> list[SipMessage]:
        """Sent requests (of one method) and responses."""
        return [
            m
            for m in self.messages
            if m.direction == "S" and (method is None or m.method == method)
        ]

    @property
    def final_codes(self) -> list[int]:
        """Final status codes of the INVITE responses this SIPp received."""
        return [
            code
            for m in self.received("INVITE")
            if (code := m.status_code) is not None and code >= 200
        ]

    def output_tail(self, lines: int = 30) -> str:
        """The end of SIPp's stdout and error log, for assertion messages."""
        parts: list[str] = []
        for key in ("out", "err"):
            path = self.files.get(key)
            if path is not None and path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)


class SippProcess:
    """One SIPp instance running in the background; a context manager that stops it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        run_dir: Path,
        files: Mapping[str, Path],
        *,
        sip_host: str,
        sip_port: int,
        media_port: int,
        timeout_s: float,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.run_dir = run_dir
        self.files = dict(files)
        self.sip_host = sip_host
        self.sip_port = sip_port
        self.media_port = media_port
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of the SIPp process once started."""
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        """Whether SIPp is still running."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, wait_bound: bool = True) -> None:
        """Start SIPp; with ``wait_bound``, wait until its SIP and media ports are bound.

        A port found free before the start can be taken by another socket before SIPp
        binds it: SIPp then exits at once with errno 98, raised as :class:`SippPortTaken`
        (the caller picks other ports and starts again)."""
        if self._proc is not None:
            raise SippError(f"{self.name}: already started")
        with open(self.files["out"], "wb") as out:
            self._proc = subprocess.Popen(
                self.argv,
                cwd=self.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if not wait_bound:
            return
        deadline = time.monotonic() + 5.0
        ports = [self.sip_port, self.media_port, self.media_port + 2]
        # Bound by this SIPp itself: the socket that took one of its ports is bound too,
        # and SIPp, having bound the ports before it, is about to exit (errno 98).
        while not ports_bound_by(self._proc.pid, "udp", self.sip_host, ports):
            if not self.running():
                output = self.result().output_tail()
                if "errno = 98" in output:
                    raise SippPortTaken(f"{self.name}: a port was taken before sipp bound it:\n"
                                        + output)
                raise SippError(
                    f"{self.name}: sipp exited at once ({self._proc.poll()}):\n"
                    + self.result().output_tail()
                )
            if time.monotonic() > deadline:
                self.stop()
                raise SippError(f"{self.name}: ports {ports} not all bound after 5 s")
            time.sleep(0.02)

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to finish; stop it and raise :class:`SippError` after ``timeout``."""
        if self._proc is None:
            raise SippError(f"{self.name}: not started")
        limit = self.timeout_s + 5.0 if timeout is None else timeout
        try:
            self._proc.wait(limit)
        except subprocess.TimeoutExpired:
            result = self.stop()
            raise SippError(
                f"{self.name}: still running after {limit} s, stopped:\n" + result.output_tail()
            ) from None
        return self.result()

    def stop(self, timeout: float = 3.0) -> SippResult:
        """SIGTERM (then SIGKILL) to this SIPp's PID if it still runs; return its result."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return self.result()

    @property
    def scenario(self) -> Path | None:
        """The scenario file this SIPp runs (its ``-sf`` argument)."""
        try:
            return Path(self.argv[self.argv.index("-sf") + 1])
        except (ValueError, IndexError):
            return None

    def rtt_file(self) -> Path | None:
        """The file ``-trace_rtt`` writes (``SCENARIO_PID_rtt.csv``, beside the scenario
        file or in the run directory), once it exists."""
        scenario = self.scenario
        if scenario is None or self._proc is None:
            return None
        name = f"{scenario.stem}_{self._proc.pid}_rtt.csv"
        for directory in (scenario.parent, self.run_dir):
            if (directory / name).exists():
                return directory / name
        return None

    def result(self) -> SippResult:
        """What SIPp recorded so far (exit code -1 while it runs)."""
        code = self._proc.poll() if self._proc is not None else None
        return SippResult(
            name=self.name,
            exit_code=-1 if code is None else code,
            stats=_read_last_stats(self.files["stat"]),
            messages=_read_short_messages(self.files["short"]),
            files=self.files,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Sipp:
    """Factory for SIPp runs sharing one run directory and host address."""

    def __init__(
        self,
        run_dir: Path,
        *,
        host: str = "127.0.0.1",
        scenario_dir: Path = SCENARIO_DIR,
        sipp_bin: str = "sipp",
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.host = host
        # E.g. ["ip", "netns", "exec", NAME]: SIPp runs in a network namespace of its own,
        # where the ports are the lab's alone (5060, 6000, 8888 by default).
        self.command_prefix = list(command_prefix)
        self.scenario_dir = Path(scenario_dir)
        self.sipp_bin = sipp_bin
        self._count = 0

    def _scenario(self, scenario: str | Path) -> Path:
        path = Path(scenario)
        if not path.is_absolute():
            path = self.scenario_dir / path
        if not path.is_file():
            raise SippError(f"scenario not found: {path}")
        return path

    def _process(
        self,
        role: str,
        scenario: str | Path,
        *,
        name: str | None,
        port: int | None,
        media_port: int | None,
        duration_ms: int,
        calls: int,
        timeout_s: float,
        keys: Mapping[str, str],
        tail: Sequence[str],
        extra: Sequence[str] = (),
        trace_messages: bool = True,
    ) -> SippProcess:
        self._count += 1
        name = name or f"{role}{self._count}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.command_prefix:  # a namespace of its own: nothing else binds there
            sip_port = port if port is not None else 5060
            media_port = media_port if media_port is not None else 6000
            control_port = 8888
        else:
            sip_port = port if port is not None else free_port("udp", self.host)
            ensure_port_free("udp", self.host, sip_port, f"SIPp {name} SIP port")
            if media_port is None:
                media_port = free_port_block(self.host)
            else:
                for offset in (0, 2):
                    ensure_port_free("udp", self.host, media_port + offset,
                                     f"SIPp {name} media")
            control_port = free_fixed_port(self.host)
        files = {
            "out": self.run_dir / f"{name}.out",
            "stat": self.run_dir / f"{name}.stat.csv",
            "short": self.run_dir / f"{name}.short.tsv",
            "msg": self.run_dir / f"{name}.msg.log",
            "err": self.run_dir / f"{name}.err.log",
            "screen": self.run_dir / f"{name}.screen.log",
            "log": self.run_dir / f"{name}.actions.log",
        }
        for path in files.values():
            path.unlink(missing_ok=True)
        argv = [
            *self.command_prefix,
            self.sipp_bin,
            "-sf", os.fspath(self._scenario(scenario)),
            "-i", self.host,
            "-p", str(sip_port),
            "-mi", self.host,
            "-mp", str(media_port),
            "-cp", str(control_port),
            "-m", str(calls),
            "-d", str(duration_ms),
            "-nostdin",
            # 2 MB socket buffers (SIPp's own are 64 kB): a load generator that drops
            # replies while the machine is busy would retransmit and measure 500 ms.
            "-buff_size", "2097152",
            "-timeout", str(max(1, int(timeout_s))),
            "-timeout_error",
            "-trace_stat", "-stf", os.fspath(files["stat"]), "-fd", "1",
            "-trace_err", "-error_file", os.fspath(files["err"]),
            "-trace_screen", "-screen_file", os.fspath(files["screen"]),
            "-trace_logs", "-log_file", os.fspath(files["log"]),
        ]  # fmt: skip
        if trace_messages:  # off for load runs: tracing every message slows SIPp down
            argv += ["-trace_shortmsg", "-shortmessage_file", os.fspath(files["short"]),
                     "-trace_msg", "-message_file", os.fspath(files["msg"])]
        for key, value in keys.items():
            argv += ["-key", key, value]
        argv += list(extra)
        argv += list(tail)
        return SippProcess(
            name,
            argv,
            self.run_dir,
            files,
            sip_host=self.host,
            sip_port=sip_port,
            media_port=media_port,
            timeout_s=timeout_s,
        )

    def _start(self, proc: SippProcess, auto_ports: bool, attempts: int = 4) -> SippProcess:
        """Start ``proc`` once its ports are bound; ports the lab picked itself are picked
        again when another socket took one of them first (see :class:`SippPortTaken`)."""
        for attempt in range(attempts):
            try:
                proc.start(wait_bound=True)
                return proc
            except SippPortTaken:
                if not auto_ports or self.command_prefix or attempt == attempts - 1:
                    raise
            sip_port = free_port("udp", self.host)
            media_port = free_port_block(self.host)
            argv = list(proc.argv)
            for flag, value in (("-p", sip_port), ("-mp", media_port),
                                ("-cp", free_fixed_port(self.host))):
                argv[argv.index(flag) + 1] = str(value)
            proc = SippProcess(proc.name, argv, self.run_dir, proc.files,
                               sip_host=self.host, sip_port=sip_port, media_port=media_port,
                               timeout_s=proc.timeout_s)
        raise AssertionError("unreachable")

    def start_uas(
        self,
        scenario: str | Path = "uas.xml",
        *,
        port: int | None = None,
        media_port: int | None = None,
        duration_ms: int = 0,
        calls: int = 1,
        timeout_s: float = 30.0,
        name: str | None = None,
        extra: Sequence[str] = (),
        trace_messages: bool = True,
    ) -> SippProcess:
        """Start a UAS in the background and wait until its SIP port is bound.

        ``duration_ms`` is the scenario's ``<pause/>`` (ringing time of
        ``uas_ringlong.xml``, early media of ``uas_early_media.xml``, talk time of
        ``uas_hangup.xml``). It exits after ``calls`` calls or ``timeout_s``.
        """
        proc = self._process(
            "uas",
            scenario,
            name=name,
            port=port,
            media_port=media_port,
            duration_ms=duration_ms,
            calls=calls,
            timeout_s=timeout_s,
            keys={},
            tail=[],
            extra=extra,
            trace_messages=trace_messages,
        )
        return self._start(proc, port is None and media_port is None)

    def start_uac(
        self,
        target: str,
        scenario: str | Path = "uac.xml",
        *,
        dialled: str = "4930123456",
        caller: str = "15551230001",
        account_code: str | None = None,
        account_code_header: bool = False,
        duration_ms: int = 2000,
        calls: int = 1,
        port: int | None = None,
        media_port: int | None = None,
        timeout_s: float = 30.0,
        name: str | None = None,
        extra: Sequence[str] = (),
        trace_messages: bool = True,
    ) -> SippProcess:
        """Start a UAC calling ``dialled`` through ``target`` (``ip:port``) in the background.

        ``account_code`` goes into an ``;ac=`` R-URI parameter, or into an
        ``X-Account-Code`` header with ``account_code_header``. ``duration_ms`` is the
        talk time after the ACK, unless the far side hangs up first.
        """
        ruri_params = ""
        extra_hdr = "X-Lab-Call: 1"
        if account_code is not None:
            if account_code_header:
                extra_hdr = f"X-Account-Code: {account_code}"
            else:
                ruri_params = f";ac={account_code}"
        proc = self._process(
            "uac",
            scenario,
            name=name,
            port=port,
            media_port=media_port,
            duration_ms=duration_ms,
            calls=calls,
            timeout_s=timeout_s,
            keys={"caller": caller, "ruri_params": ruri_params, "extra_hdr": extra_hdr},
            tail=["-s", dialled, target],
            extra=extra,
            trace_messages=trace_messages,
        )
        return self._start(proc, port is None and media_port is None)
