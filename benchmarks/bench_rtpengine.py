"""Live through rtpengine: how many simultaneous G.711 calls the machine carries with 0
capture drops, and what rtpengine, Kamailio and the sidecar cost side by side.

    python benchmarks/bench_rtpengine.py [--steps 25,50,100,150,200,300,400] [--talk 15]
                                         [--max-rate 100] [--max-minutes 10] [--all]
                                         [--repeat 1] [--keep DIR]

Each step of N simultaneous calls runs twice, each time on a fresh lab (``sidecar.lab``):

- ``plain``: the shipped ``kamailio.cfg``, media straight between caller and callee (the
  baseline);
- ``rtpengine``: Kamailio with ``WITH_RTPENGINE`` and Debian's rtpengine in userspace
  mode (``sidecar.lab.rtpengine.RtpEngine``, as the end-to-end tests start it), every RTP
  packet relayed by rtpengine on loopback.

Both with ``sidecar run`` supervising the media (``[media] enabled``, capture on ``lo``,
the kernel filter following the dialogs' SDP ports) and its metrics endpoint on. SIPp
places the N calls (``-m N -l N``) at up to ``--max-rate`` calls/s (N/2 per s for small
steps), each talks ``--talk`` seconds; both sides play G.711 speech (PCMA, 20 ms packets,
50 packets/s per direction: SIPp's ``g711a.pcap`` speech looped to the talk time with the
lab's encoder, ``sidecar.lab.audio``), from a media port of each call's own. So all N
calls are up together for the talk time less the ramp (the "plateau").

Per step and set-up it prints: calls offered, completed (answered, talked, hung up),
failed (every other offered call); the most dialogs Kamailio held at once
(``dlg.stats_active``, sampled); the UDP packets the sidecar's capture handed to the
supervision (``sidecar_capture_packets``: with many calls the kernel filter widens from
the listed SDP ports to a port range, which through rtpengine also passes the caller-side
leg's packets) and the capture drops (the kernel's count of packets it dropped because
the capture ring was full: ``sidecar_capture_drops`` on ``/metrics``, read when the calls
have ended); the relay drops (packets rtpengine logged as discarded because its userspace
receive queue was full); the FAS verdicts of the CDRs (all should be normal: speech both
ways); and for rtpengine, Kamailio (the main process and its workers), the sidecar and
SIPp (both SIPps and this script): CPU milliseconds per completed call over the whole
step (user+sys from /proc/PID/stat, set-up and teardown included) and the share of a
core during the plateau; "other" is the rest of the machine's busy time (/proc/stat):
the kernel's loopback and softirq work not charged to a process, and other work on a
shared machine. Then the largest step with 0 capture drops, 0 failed calls and every
verdict normal, through rtpengine and in the baseline, and through rtpengine with 0
relay drops as well. Notes under a step say why calls failed: SIPp's aborted calls by
what it expected and got, calls refused with 503 and those the sidecar answered busy
(its overload limit), a sidecar that exited and its last critical message.

The machine has two cores shared by all of it: SIPp sends and receives every packet,
and through rtpengine every packet crosses the loopback twice. Steps stop after the
first step where the rtpengine set-up fails (``--all``: run every step) or before one
that would end after ``--max-minutes``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import sqlite3
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench_live import (
    ACCOUNT,
    DIALLED,
    KAMAILIO_DEFINES,
    Counts,
    bench_scenarios,
    fmt,
    machine_busy_s,
    make_db,
    process_cpu_s,
    table,
    tools_cpu_s,
    tree_cpu_s,
    workdir,
)

from sidecar.lab.audio import speech_samples, write_rtp_pcap
from sidecar.lab.live import LiveLab
from sidecar.lab.rtpengine import RtpEngine
from sidecar.lab.sipp import SippError, read_stat_rows
from sidecar.media.g711 import Codec

MEDIA_CONFIG = '[media]\nenabled = true\ninterface = "lo"\n'
#: First media port of the callee's and the caller's calls (SIPp's [auto_media_port]:
#: -mp + 4 x the call number, modulo 10,000), and of rtpengine's range (4 ports a call:
#: RTP and RTCP towards each side), all below the kernel's ephemeral range (32768).
MEDIA_BASE_UAS = 10_000
MEDIA_BASE_UAC = 20_000
RTPENGINE_PORT_MIN = 30_000
RTPENGINE_PORTS_BELOW_EPHEMERAL = 2_768
SETUPS = ("plain", "rtpengine")


# ---------------------------------------------------------------------------- scenarios
def talk_audio(path: Path, seconds: float) -> Path:
    """PCMA speech in 20 ms RTP packets for ``seconds`` (SIPp's speech looped)."""
    speech = speech_samples()
    need = int(seconds * 8000) + 8000
    samples = (speech * (need // len(speech) + 1))[:need]
    write_rtp_pcap(path, [float(s) for s in samples], Codec.PCMA)
    return path


def scenarios(out_dir: Path, talk_s: float) -> tuple[Path, Path]:
    """The load scenarios of ``bench_live`` (a media port per call, reply timers,
    refused and rejected counters) playing ``talk_s`` of 20 ms speech both ways."""
    sc = bench_scenarios(out_dir, media=True)
    audio = talk_audio(out_dir / "talk_pcma.pcap", talk_s)
    for path in (sc.uac, sc.uas):
        text = path.read_text()
        for old, new in (('play_pcap_audio="/usr/share/sip-tester/g711a.pcap"',
                          f'play_pcap_audio="{audio}"'), ("a=ptime:30", "a=ptime:20")):
            if text.count(old) != 1:
                raise RuntimeError(f"{path.name}: expected exactly one {old!r}")
            text = text.replace(old, new)
        path.write_text(text)
    return sc.uac, sc.uas


# ---------------------------------------------------------------------------- one run
@dataclass(frozen=True)
class Cpu:
    """CPU seconds of the three processes and the machine at one moment."""

    t: float
    rtpengine: float
    kamailio: float
    sidecar: float
    sipp: float  # both SIPps (running or reaped) and this script
    machine: float

    @classmethod
    def take(cls, lab: LiveLab, rtpe: RtpEngine | None, sipp: Sequence[int | None] = ()
             ) -> Cpu:
        return cls(time.monotonic(), process_cpu_s(rtpe.pid) if rtpe else 0.0,
                   tree_cpu_s(lab.kam.pid), process_cpu_s(lab.sidecar_pid),
                   tools_cpu_s(sipp), machine_busy_s())

    def minus(self, before: Cpu) -> dict[str, float]:
        return {"rtpengine": self.rtpengine - before.rtpengine,
                "kamailio": self.kamailio - before.kamailio,
                "sidecar": self.sidecar - before.sidecar,
                "sipp": self.sipp - before.sipp,
                "machine": self.machine - before.machine,
                "seconds": self.t - before.t}


@dataclass
class Run:
    """One step through one set-up."""

    setup: str
    calls: int
    offered: int = 0
    completed: int = 0
    failed: int = 0
    peak_dialogs: int = 0
    captured: int | None = None
    drops: int | None = None
    relay_discards: int | None = None  # packets rtpengine logged as discarded
    sidecar_exited: bool = False  # (its CPU is then unknown)
    verdicts: dict[str, int] = field(default_factory=dict)
    whole: dict[str, float] = field(default_factory=dict)  # CPU s over the whole step
    plateau: dict[str, float] = field(default_factory=dict)  # CPU s during the plateau
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """0 capture drops, 0 failed calls, every verdict normal."""
        return (self.failed == 0 and self.completed == self.calls and self.drops == 0
                and set(self.verdicts) <= {"normal"})

    @property
    def lossless(self) -> bool:
        """Clean, and rtpengine discarded no packet either."""
        return self.clean and not self.relay_discards

    def per_call_ms(self, part: str) -> float | None:
        if not self.completed or part not in self.whole:
            return None
        return self.whole[part] * 1000 / self.completed

    def core_pct(self, part: str) -> float | None:
        dt = self.plateau.get("seconds", 0.0)
        return self.plateau[part] * 100 / dt if dt > 0 else None


def metric(url: str, name: str) -> int | None:
    """One counter of the sidecar's /metrics (Prometheus text), None if absent."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    m = re.search(rf"^{name}(?:_total)? (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else None


def verdicts(db: Path) -> dict[str, int]:
    """CDRs per FAS verdict ("normal" for none), answered or not."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT fas_verdict, COUNT(*) FROM cdrs GROUP BY 1").fetchall()
    return {(str(v) or "normal"): int(n) for v, n in rows}


def cdr_count(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM cdrs").fetchone()[0])


_ABORT = re.compile(r"while expecting '([^']+)' \(index \d+\), received '(SIP/2\.0 \d+|[A-Z]+)")


def sipp_aborts(err_log: Path, side: str) -> list[str]:
    """Why SIPp aborted calls (its error log): "side: N x expecting X, got Y"."""
    try:
        text = err_log.read_text(errors="replace")
    except OSError:
        return []
    counts: dict[tuple[str, str], int] = {}
    for m in _ABORT.finditer(text):
        key = (m.group(1), m.group(2).removeprefix("SIP/2.0 "))
        counts[key] = counts.get(key, 0) + 1
    return [f"{side} SIPp aborted {n} call(s) expecting {want}, got {got}"
            for (want, got), n in sorted(counts.items())]


def exit_reason(lab: LiveLab) -> str:
    """The sidecar's last critical log message (JSON lines), or "no reason logged"."""
    reason = "no reason logged"
    with contextlib.suppress(OSError):
        for line in lab.sidecar_log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                entry = json.loads(line)
                if entry.get("level") == "critical":
                    reason = str(entry.get("msg", reason))
    return reason


def relay_discards(rtpe: RtpEngine) -> int:
    """Packets rtpengine discarded because its userspace receive queue was full (one
    ``discarding packet`` line each in its log)."""
    text = rtpe.log_path.read_text(errors="replace") if rtpe.log_path.exists() else ""
    return text.count("discarding packet")


class DialogPeak(threading.Thread):
    """Samples Kamailio's active dialogs every 0.5 s; keeps the highest count."""

    def __init__(self, lab: LiveLab) -> None:
        super().__init__(daemon=True)
        self.lab = lab
        self.peak = 0
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.wait(0.5):
            with contextlib.suppress(OSError, RuntimeError, KeyError, TypeError, ValueError):
                self.peak = max(self.peak, int(self.lab.kam.rpc("dlg.stats_active")["all"]))

    def __enter__(self) -> DialogPeak:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_evt.set()
        self.join(5)


@contextlib.contextmanager
def lab_for(setup: str, run_dir: Path, db: Path, calls: int
            ) -> Iterator[tuple[LiveLab, RtpEngine | None]]:
    """A fresh lab of one set-up: Kamailio (+ rtpengine) + sidecar with media and
    metrics; everything stopped by PID at the end."""
    with contextlib.ExitStack() as stack:
        rtpe: RtpEngine | None = None
        defines = dict(KAMAILIO_DEFINES)
        if setup == "rtpengine":
            ports = max(RTPENGINE_PORTS_BELOW_EPHEMERAL, 4 * calls + 200)
            rtpe = stack.enter_context(RtpEngine(run_dir / "rtpengine",
                                                 port_min=RTPENGINE_PORT_MIN, ports=ports))
            defines |= {"WITH_RTPENGINE": None, "RTPENGINE_SOCK": rtpe.sock}
        lab = stack.enter_context(LiveLab(run_dir / "lab", db, extra_config=MEDIA_CONFIG,
                                          metrics=True, kamailio_defines=defines))
        yield lab, rtpe


def run_step(setup: str, calls: int, work: Path, template_db: Path, uac: Path, uas: Path,
             *, talk_s: float, max_rate: int) -> Run:
    run = Run(setup, calls)
    run_dir = work / f"{setup}-{calls}-{int(time.time())}"
    run_dir.mkdir(parents=True)
    db = run_dir / "sidecar.db"
    shutil.copyfile(template_db, db)
    rate = max(1, min(max_rate, (calls + 1) // 2))
    ramp_s = calls / rate
    talk_ms = int(talk_s * 1000)
    timeout_s = ramp_s + talk_s + 60
    with lab_for(setup, run_dir, db, calls) as (lab, rtpe), contextlib.ExitStack() as stack:
        before = Cpu.take(lab, rtpe)
        sidecar_pid = lab.sidecar_pid
        server = stack.enter_context(lab.uas_sipp.start_uas(
            uas, port=lab.uas_port, calls=calls, timeout_s=timeout_s + 10, name="uas",
            media_port=MEDIA_BASE_UAS, trace_messages=False))
        caller = stack.enter_context(lab.sipp.start_uac(
            lab.target, uac, account_code=ACCOUNT, dialled=DIALLED, duration_ms=talk_ms,
            calls=calls, timeout_s=timeout_s, name="uac", media_port=MEDIA_BASE_UAC,
            extra=["-r", str(rate), "-l", str(calls)], trace_messages=False))
        t0 = time.monotonic()
        plateau = (t0 + ramp_s + 1.0, t0 + max(ramp_s + 2.0, talk_s))
        p0: Cpu | None = None
        p1: Cpu | None = None
        with DialogPeak(lab) as peak:
            while caller.running():
                now = time.monotonic()
                if p0 is None and now >= plateau[0]:
                    p0 = Cpu.take(lab, rtpe, (caller.pid, server.pid))
                if p0 is not None and p1 is None and now >= plateau[1]:
                    p1 = Cpu.take(lab, rtpe, (caller.pid, server.pid))
                if now - t0 > timeout_s + 10:
                    run.notes.append(f"{setup} {calls}: SIPp still running, stopped")
                    break
                time.sleep(0.05)
        run.peak_dialogs = peak.peak
        try:
            caller.wait(5.0)
        except SippError:
            caller.stop()
        server.stop()
        run.notes += [f"{setup} {calls}: {why}" for side, proc in
                      (("caller", caller), ("callee", server))
                      for why in sipp_aborts(proc.files["err"], side)]
        rows = read_stat_rows(caller.files["stat"])
        counts = Counts.from_row(rows[-1]) if rows else Counts()
        run.offered = counts.created
        run.completed = counts.completed
        run.failed = calls - run.completed
        if counts.refused or counts.rejected:
            run.notes.append(f"{setup} {calls}: {counts.refused} call(s) refused with 503, "
                             f"{counts.rejected} rejected")
        deadline = time.monotonic() + 15
        while cdr_count(db) < counts.successful and time.monotonic() < deadline:
            time.sleep(0.2)
        after = Cpu.take(lab, rtpe)
        run.sidecar_exited = lab.sidecar_pid is None  # (then its CPU is unknown)
        run.captured = metric(lab.metrics_url, "sidecar_capture_packets")
        run.drops = metric(lab.metrics_url, "sidecar_capture_drops")
        run.verdicts = verdicts(db)
        if rtpe is not None:
            run.relay_discards = relay_discards(rtpe)
    shed = re.findall(r"(\d+) offers answered busy \(overload\)",
                      lab.sidecar_log.read_text(errors="replace"))
    if shed:  # the sidecar's summary at its exit
        run.notes.append(f"{setup} {calls}: the sidecar answered {shed[-1]} offer(s) busy "
                         "(503: an offer waited longer than its overload limit)")
        if lab.sidecar_pid is None and sidecar_pid is not None:
            when = "during the step" if run.sidecar_exited else "after the measurement"
            run.notes.append(
                f"{setup} {calls}: the sidecar exited {when} with status "
                f"{lab.sidecar_exit_code(sidecar_pid)} ({exit_reason(lab)}; Kamailio "
                f"{'running' if lab.kam.running() else 'gone'}); see {lab.sidecar_log}")
    run.whole = after.minus(before)
    if p0 is not None and p1 is not None:
        run.plateau = p1.minus(p0)
    else:
        run.notes.append(f"{setup} {calls}: the calls ended before the plateau was measured")
    if run.drops is None:
        run.notes.append(f"{setup} {calls}: no capture drops counter on /metrics")
    return run


# ---------------------------------------------------------------------------- output
def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def cpu_cell(run: Run, part: str) -> str:
    if part == "rtpengine" and run.setup != "rtpengine":
        return "-"
    if part == "sidecar" and run.sidecar_exited:
        return "exited"
    per_call = run.per_call_ms(part)
    return f"{fmt(per_call, 1)} ms {pct(run.core_pct(part))}"


def other_pct(run: Run) -> str:
    dt = run.plateau.get("seconds", 0.0)
    if dt <= 0:
        return "-"
    busy = run.plateau["machine"] - sum(run.plateau[p] for p in
                                        ("rtpengine", "kamailio", "sidecar", "sipp"))
    return f"{max(0.0, busy) * 100 / dt:.0f}%"


def verdict_cell(run: Run) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(run.verdicts.items())) or "-"


def print_runs(runs: Sequence[Run]) -> None:
    headers = ["calls", "set-up", "offered", "done", "failed", "dialogs", "captured",
               "drops", "relay drops", "verdicts", "rtpengine", "kamailio", "sidecar", "SIPp",
               "other"]
    rows = [[str(r.calls), r.setup, fmt(r.offered), fmt(r.completed), fmt(r.failed),
             fmt(r.peak_dialogs), fmt(r.captured), fmt(r.drops), fmt(r.relay_discards),
             verdict_cell(r),
             cpu_cell(r, "rtpengine"), cpu_cell(r, "kamailio"), cpu_cell(r, "sidecar"),
             cpu_cell(r, "sipp"), other_pct(r)] for r in runs]
    print(table(headers, rows), flush=True)


def largest_clean(runs: Sequence[Run], setup: str, *, lossless: bool = False) -> int | None:
    """The largest step of ``setup`` whose every repeat was clean (and lossless)."""
    steps: dict[int, bool] = {}
    for r in runs:
        if r.setup == setup:
            steps[r.calls] = steps.get(r.calls, True) and (r.lossless if lossless
                                                            else r.clean)
    clean = [n for n, ok in steps.items() if ok]
    return max(clean) if clean else None


# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="25,50,100,150,200,300,400",
                        help="simultaneous calls per step, comma-separated")
    parser.add_argument("--talk", type=float, default=15.0, help="talk time of a call (s)")
    parser.add_argument("--max-rate", type=int, default=100,
                        help="most calls placed per second while a step ramps up")
    parser.add_argument("--repeat", type=int, default=1, help="runs of every step")
    parser.add_argument("--max-minutes", type=float, default=10.0,
                        help="start no step that would end after this")
    parser.add_argument("--all", action="store_true",
                        help="go on after a step where the rtpengine set-up failed")
    parser.add_argument("--keep", type=Path, help="keep the run directories under DIR")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    if not steps or min(steps) < 1:
        parser.error("--steps: positive numbers of calls, e.g. 25,50,100")
    t_start = time.monotonic()
    runs: list[Run] = []
    with workdir(args.keep, "bench-rtpengine-") as work:
        uac, uas = scenarios(work / "scenarios", args.talk)
        template = make_db(work / "template.db")
        print(f"{args.talk:g} s calls, G.711 PCMA 20 ms both ways. CPU of each part: ms "
              "per completed call over the whole step, then % of a core during the plateau "
              "(all calls up); SIPp: both SIPps and this script; other: the rest of the "
              "machine (other work, kernel threads)", flush=True)
        for calls in steps:
            step_s = 2 * args.repeat * (calls / max(1, min(args.max_rate, (calls + 1) // 2))
                                        + args.talk + 12)
            spent = time.monotonic() - t_start
            if spent + step_s > args.max_minutes * 60:
                print(f"step {calls}: not run (about {step_s:.0f} s more would pass "
                      f"--max-minutes {args.max_minutes:g})")
                break
            step_runs = [run_step(setup, calls, work, template, uac, uas, talk_s=args.talk,
                                  max_rate=args.max_rate)
                         for _ in range(args.repeat) for setup in SETUPS]
            runs += step_runs
            print_runs(step_runs)
            for r in step_runs:
                for note in r.notes:
                    print(f"  note: {note}")
            if not args.all and not all(r.clean for r in step_runs if r.setup == "rtpengine"):
                break
    print("\nall steps:")
    print_runs(runs)
    for setup in SETUPS:
        best = largest_clean(runs, setup)
        print(f"largest step with 0 capture drops, 0 failed calls, all verdicts normal "
              f"({setup}): {fmt(best) if best is not None else 'none'}")
    best = largest_clean(runs, "rtpengine", lossless=True)
    print(f"  through rtpengine and with 0 relay drops as well: "
          f"{fmt(best) if best is not None else 'none'}")
    print(f"({time.monotonic() - t_start:.0f} s)")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # the labs stop their processes by PID on the way out


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    main(sys.argv[1:])
