"""Live benchmark: the real Kamailio, the real ``sidecar run`` and real SIPp on loopback,
measured from the outside (black box), each figure beside its baseline from the same run.

    python benchmarks/bench_live.py cpu  [--rate 400] [--seconds 20] [--repeat 1]
    python benchmarks/bench_live.py step [--rates 400,600,800,1000,1200] [--seconds 20]
                                         [--max-minutes 40]
    python benchmarks/bench_live.py deck [--rate 50] [--seconds 20] [--lines 100000] [--at 5]
    python benchmarks/bench_live.py soak [--rate 300] [--minutes 30] [--media]
    python benchmarks/bench_live.py nodes [--rate 200] [--seconds 60]
                                          [--setups sqlite1,pg1,sqlite2,pg2]
                                          [--own-accounts]

Every subcommand also takes ``--keep DIR``: keep the run directories (Kamailio, sidecar
and SIPp logs, SIPp's statistics and response times, the database) under DIR; and
``--define NAME=VALUE`` (repeatable): a ``kamailio.cfg`` define for every Kamailio of the
run, to measure a tuning (e.g. ``--define OVERLOAD_AUTH_MS=30``); ``--cfg PATH``: run
``cpu``, ``step``, ``deck`` and ``soak`` with another ``kamailio.cfg`` (to compare a change
with the version before it: ``git show REV:kamailio/kamailio.cfg > /tmp/old.cfg``).

- ``cpu``: Kamailio alone (FAIL_OPEN, no sidecar) and Kamailio + sidecar at the same rate:
  completed and failed calls, Kamailio's CPU per completed call in both runs, the sidecar's
  CPU per completed call (user+sys of its process, /proc/PID/stat; target <= 0.4 ms).
- ``step``: both set-ups at each rate (fresh SIPp per step, the system left to settle in
  between): completed calls/s, failed calls, INVITE -> first non-100 reply p50/p99. Then the
  sidecar's share of Kamailio alone's completed calls where Kamailio alone starts to fail
  (> 1% failed; target >= 90%), and a run at 1.5x the sidecar's knee (the highest rate with
  < 1% failed): completed calls/s as a share of the knee's (target >= 90%) and the p99
  reply time of the refused calls (503; target < 50 ms), with how many of them Kamailio's
  overload control refused statelessly (``OVERLOAD_DELAY_MS`` in ``kamailio.cfg``).
- ``deck``: calls while the real CLI (``sidecar --db DB deck import FILE --plan NAME``, a
  process of its own) imports a new version of the plan the calls use; baseline: the same
  run without the import. Refused/failed calls (target 0), reply p50/p99 (target p99 < 20 ms).
- ``soak``: a long run at a steady rate (``--media``: SIPp sends RTP and the sidecar
  watches ``lo``); every minute: calls completed and failed, the sidecar's RSS
  (/proc/PID/status VmRSS) and CPU per call, Kamailio's CPU per call beside it; at the end
  whether the sidecar's CPU per call stayed within 10% (first minute vs last) and how much
  its RSS grew after minute 2.
- ``nodes``: several nodes sharing one store (issue 11): each node a Kamailio with its own
  ``sidecar run --node`` (``sidecar.lab.nodes.NodesLab``) and its own SIPp caller and
  callee, all nodes called at ``--rate`` at once; the store prepared through the CLI (the
  plan, postpaid accounts: one for every node's calls, or ``--own-accounts``). Set-ups,
  run one after another (``--setups``, default all four): ``sqlite1`` one node on SQLite
  (the baseline), ``pg1`` one node on PostgreSQL, ``sqlite2`` two nodes sharing one SQLite
  file, ``pg2`` two nodes sharing one PostgreSQL database. Each PostgreSQL set-up gets a
  fresh database on the tests' server (``$SIDECAR_TEST_PG``), dropped afterwards. One
  node has the machine to itself, as a node on its own host would; two nodes on one
  machine need twice its CPU. Per node: offered, completed, failed and refused calls,
  INVITE -> first non-100 reply p50/p99/max, the sidecar's own authorization latency from
  its log (Kamailio's offer -> reply sent) and its CPU per call; per set-up the CDRs,
  whether every balance equals its ledger, and the cores used by Kamailio, the sidecars,
  PostgreSQL's server and other work (target: reply p99 < 20 ms per node at 200 calls/s
  per node on PostgreSQL, no call failed). A PostgreSQL server restarted during a run (by
  other work) is reported, and the run's figures are not judged.

How calls are measured. 1 s calls (SIPp ``-d 1000``), signalling only unless ``--media``.
The caller is a copy of ``kamailio/sipp/uac.xml`` written to the run directory with SIPp
response-time (``rtd``) timers: ``reply`` from sending the INVITE to the first reply other
than 100 (the callee's 180, or Kamailio's 402/403/404/503), ``refused`` from the INVITE to a
503. SIPp's clock starts when it sends the INVITE, so the time the INVITE waits in
Kamailio's socket buffer, for a worker and for the sidecar is included; SIPp reports whole
milliseconds. Refused (503) and rejected (other 4xx-6xx) calls are ACKed and counted with
SIPp counters; "completed" are the calls that were answered and hung up, "failed" every
offered call that did not complete. CPU is user+sys from /proc (Kamailio: the main process
and its workers), taken just before the callee starts and after both SIPps ended; "other
load" is the machine's busy time (/proc/stat) less Kamailio, the sidecar, SIPp and this
script: what else ran on a shared machine meanwhile (and kernel threads, such as softirq
work for loopback packets). Kamailio runs with ``DBG_LEVEL=-1`` (errors only) in both
set-ups, so the per-call warning of a fail-open relay does not weigh on the baseline.
Without a sidecar the configuration keeps the answer/end events for one that may connect
later (its event store, bounded): part of the baseline's work, and the reason the
Kamailio-alone lab is started afresh for every run.

Every process is started by the lab (``sidecar.lab``) and stopped by its PID when a run
ends, also on errors; every SIPp run is bounded by its own timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sidecar.charging.charger import ChargingConfig
from sidecar.lab import KAMAILIO_DIR
from sidecar.lab.live import LiveLab
from sidecar.lab.nodes import NodesLab
from sidecar.lab.sipp import SippError, SippProcess, read_stat_rows

TICKS = os.sysconf("SC_CLK_TCK")

PLAN = "bench"
ACCOUNT = "LOAD"
DIALLED = "4930123456"
RATE_4930 = "0.0095"
BASE_DATE = "2024-01-01"  # the plan's first lines: in effect long before any run
CALL_MS = 1000
#: Kamailio's log level in every run: errors only (no per-call warning of a fail-open relay).
KAMAILIO_DEFINES: dict[str, str | int | None] = {"DBG_LEVEL": -1}
#: ``--cfg``: the kamailio.cfg of the single-node runs (None: the shipped one).
KAMAILIO_CFG: list[Path | None] = [None]
#: ``--sidecar-nice``: the sidecar's CPU priority in the single-node runs.
SIDECAR_NICE: list[int] = [0]
MEDIA_CONFIG = '[media]\nenabled = true\ninterface = "lo"\n'
FAIL_SHARE = 0.01  # "fails": more than 1% of the offered calls did not complete
#: First media port of the callee's and the caller's calls with --media (each side uses
#: 10,000 ports from there; below the kernel's ephemeral range).
MEDIA_BASE_UAS = 10_000
MEDIA_BASE_UAC = 20_000
IDLE_S = 5.0  # cpu: how long the idle lab is watched before the runs
NOISY_CORES = 0.25  # other load on the machine above this is pointed out


# ---------------------------------------------------------------------------- /proc
def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_cpu_s(pid: int | None) -> float:
    """User+system CPU seconds of one process (all its threads) so far; 0 if it is gone."""
    fields = _stat_fields(pid) if pid else None
    return (int(fields[11]) + int(fields[12])) / TICKS if fields else 0.0


def _tree(root_pid: int | None) -> Iterator[tuple[int, list[str]]]:
    """A process and its direct children (Kamailio's workers): (PID, /proc/PID/stat
    fields) each."""
    if not root_pid:
        return
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields and (int(entry) == root_pid or int(fields[1]) == root_pid):
            yield int(entry), fields


def tree_cpu_s(root_pid: int | None) -> float:
    """User+system CPU seconds of a process and its direct children (Kamailio's workers)."""
    return sum(int(f[11]) + int(f[12]) for _pid, f in _tree(root_pid)) / TICKS


def tree_wait_s(root_pid: int | None) -> float:
    """Seconds a process and its direct children (Kamailio's workers) have waited,
    runnable, for a CPU so far (run queue: the second field of /proc/PID/schedstat)."""
    total = 0
    for pid, _f in _tree(root_pid):
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def rss_kb(pid: int | None) -> int | None:
    """VmRSS of a process in kB (/proc/PID/status), ``None`` if it is gone."""
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores; not idle, not iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    busy = sum(values[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / TICKS


def tools_cpu_s(pids: Sequence[int | None] = ()) -> float:
    """CPU seconds of this script, of its children it has reaped (SIPp and the CLI once
    they ended) and of the running ``pids`` (SIPp while it runs): each process's whole
    lifetime is counted once, whether it is still running or already reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
            + sum(process_cpu_s(pid) for pid in pids))


@dataclass(frozen=True)
class Sample:
    """CPU counters of the lab's processes, of the load tools and of the machine."""

    t: float  # time.monotonic()
    kamailio_s: float
    sidecar_s: float
    tools_s: float  # this script, SIPp, the CLI
    machine_s: float
    sidecar_rss_kb: int | None
    kamailio_wait_s: float = 0.0  # run-queue wait of Kamailio's processes (schedstat)

    @classmethod
    def take(cls, lab: LiveLab, pids: Sequence[int | None] = ()) -> Sample:
        pid = lab.sidecar_pid
        return cls(time.monotonic(), tree_cpu_s(lab.kam.pid), process_cpu_s(pid),
                   tools_cpu_s(pids), machine_busy_s(), rss_kb(pid),
                   tree_wait_s(lab.kam.pid))

    def cores(self, before: Sample) -> dict[str, float]:
        """Cores used since ``before``: each part and the rest of the machine ("other")."""
        dt = max(self.t - before.t, 1e-9)
        out = {"kamailio": (self.kamailio_s - before.kamailio_s) / dt,
               "sidecar": (self.sidecar_s - before.sidecar_s) / dt,
               "tools": (self.tools_s - before.tools_s) / dt,
               "machine": (self.machine_s - before.machine_s) / dt}
        out["other"] = max(0.0, out["machine"] - out["kamailio"] - out["sidecar"] - out["tools"])
        # Kamailio's processes runnable but waiting for a CPU, on average (not cores used).
        out["kamailio_wait"] = (self.kamailio_wait_s - before.kamailio_wait_s) / dt
        return out


# ---------------------------------------------------------------------------- scenarios
_REJECT_CODES = (400, 401, 402, 403, 404, 405, 407, 408, 410, 480, 481, 482, 483, 484, 486,
                 487, 488, 500, 501, 502, 504, 600, 603, 604, 606)

_ACK_NON_2XX = """  <send>
    <![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port][ruri_params] SIP/2.0
      [last_Via:]
      From: "Caller [caller]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""

_MEDIA_NOP = re.compile(r"\s*<nop>\s*<action>\s*<exec play_pcap_audio=[^>]*/>\s*</action>\s*</nop>")


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise RuntimeError(f"scenario changed: expected exactly one {old.strip()!r}")
    return text.replace(old, new)


@dataclass(frozen=True)
class Scenarios:
    """The caller and callee scenario files of load runs."""

    uac: Path
    uas: Path
    media: bool


def bench_scenarios(out_dir: Path, *, media: bool) -> Scenarios:
    """The caller and callee for load runs: copies of ``uac.xml`` / ``uas.xml`` in ``out_dir``.

    The caller gets the ``reply`` and ``refused`` timers and the ``refused`` (503) and
    ``rejected`` (other 4xx-6xx) counters; a refused or rejected call is ACKed and ends.
    Without ``media`` both sides send no RTP. With it both play the scenarios' G.711 capture
    from a media port of each call's own (SIPp's ``[auto_media_port]``: -mp + 4 x the call
    number, modulo 10,000): with the one ``[media_port]`` of the originals, all the calls
    running at once would share one address, and a media watcher could tell them apart no
    more than the network can.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    uac = (KAMAILIO_DIR / "sipp" / "uac.xml").read_text()
    uas = (KAMAILIO_DIR / "sipp" / "uas.xml").read_text()
    if not media:
        uac, n_uac = _MEDIA_NOP.subn("", uac)
        uas, n_uas = _MEDIA_NOP.subn("", uas)
        if n_uac != 1 or n_uas != 1:
            raise RuntimeError("scenario changed: play_pcap_audio not found once per side")
    else:
        uac = _replace_once(uac, "m=audio [media_port]", "m=audio [auto_media_port]")
        uas = _replace_once(uas, "m=audio [media_port]", "m=audio [auto_media_port]")
    uac = _replace_once(uac, '<send retrans="500" start_rtd="setup">',
                        '<nop start_rtd="refused"/>\n  <send retrans="500" start_rtd="reply">')
    rejects = "".join(f'  <recv response="{code}" optional="true" rtd="reply" '
                      f'counter="rejected" next="rejected"/>\n' for code in _REJECT_CODES)
    uac = _replace_once(
        uac,
        '  <recv response="180" optional="true"/>\n'
        '  <recv response="183" optional="true"/>\n'
        '  <recv response="200" rtd="setup" rrs="true"/>\n',
        '  <recv response="180" optional="true" rtd="reply"/>\n'
        '  <recv response="183" optional="true" rtd="reply"/>\n'
        '  <recv response="503" optional="true" rtd="refused" counter="refused" '
        'next="refused"/>\n' + rejects +
        '  <recv response="200" rtd="reply" rrs="true"/>\n')
    uac = _replace_once(
        uac, '  <label id="done"/>\n',
        '  <nop next="done"/>\n\n'
        '  <!-- Refused (503) or rejected: ACK the final reply; the call ends there. -->\n'
        '  <label id="refused"/>\n  <nop rtd="reply"/>\n  <label id="rejected"/>\n'
        + _ACK_NON_2XX + '\n  <label id="done"/>\n')
    suffix = "media" if media else "signalling"
    uac_path, uas_path = out_dir / f"bench_uac_{suffix}.xml", out_dir / f"bench_uas_{suffix}.xml"
    uac_path.write_text(uac)
    uas_path.write_text(uas)
    return Scenarios(uac_path, uas_path, media)


# ---------------------------------------------------------------------------- SIPp results
def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


class RttTail:
    """Reads a growing ``-trace_rtt`` file as SIPp appends to it (whole lines only)."""

    def __init__(self, proc: SippProcess) -> None:
        self.proc = proc
        self._offset = 0
        self._rest = b""
        self.values: dict[str, list[tuple[float, float]]] = {}

    def poll(self) -> None:
        """Take in the lines written since the last call."""
        path = self.proc.rtt_file()
        if path is None:
            return
        with open(path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        self._offset += len(data)
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        for line in data[:cut].decode(errors="replace").splitlines():
            fields = line.split(";")
            try:
                t_ms, rtt_ms, name = float(fields[0]), float(fields[1]), fields[2].strip()
            except (ValueError, IndexError):
                continue  # the header
            self.values.setdefault(name, []).append((t_ms, rtt_ms))

    def times(self, name: str, since_ms: float = 0.0, until_ms: float = float("inf")
              ) -> list[float]:
        """Response times (ms) of timer ``name`` measured between the two instants (ms
        since SIPp started)."""
        return [rtt for t, rtt in self.values.get(name, ()) if since_ms <= t < until_ms]


def _epoch(value: str) -> float:
    """Seconds since the epoch from a SIPp statistics time (``DATE\tTIME\tEPOCH``)."""
    try:
        return float(value.rsplit("\t", 1)[-1])
    except ValueError:
        return 0.0


def _stat_int(row: dict[str, str], column: str) -> int:
    value = row.get(column, "").strip()
    return int(value) if value.isdigit() else 0


@dataclass(frozen=True)
class Counts:
    """SIPp's cumulative call counters at one moment (one ``-trace_stat`` row)."""

    elapsed_s: float = 0.0
    created: int = 0
    successful: int = 0
    failed: int = 0  # SIPp's own failures (timeouts, unexpected messages, ...)
    refused: int = 0  # 503
    rejected: int = 0  # other 4xx-6xx

    @classmethod
    def from_row(cls, row: dict[str, str]) -> Counts:
        return cls(_epoch(row.get("CurrentTime", "")) - _epoch(row.get("StartTime", "")),
                   _stat_int(row, "OutgoingCall(C)"), _stat_int(row, "SuccessfulCall(C)"),
                   _stat_int(row, "FailedCall(C)"), _stat_int(row, "refused(C)"),
                   _stat_int(row, "rejected(C)"))

    @property
    def completed(self) -> int:
        """Answered and hung up (a refused or rejected call also ends the scenario)."""
        return self.successful - self.refused - self.rejected

    @property
    def not_completed(self) -> int:
        return self.failed + self.refused + self.rejected


def last_counts(proc: SippProcess) -> Counts:
    rows = read_stat_rows(proc.files["stat"])
    return Counts.from_row(rows[-1]) if rows else Counts()


# ---------------------------------------------------------------------------- one load run
@dataclass
class Load:
    """One caller run at a fixed rate through one lab, and what it cost."""

    label: str
    rate: int
    seconds: float
    offered: int
    counts: Counts
    creation_s: float  # time SIPp took to create the calls (to its 1 s statistics tick)
    sent_per_s: float  # calls created per second within the first ``seconds``
    rtt: RttTail
    before: Sample
    after: Sample
    sidecar: bool
    timed_out: bool = False
    exit_code: int = 0
    notes: list[str] = field(default_factory=list)
    #: Calls refused statelessly by Kamailio's overload control (step runs; None: unknown).
    stateless: int | None = None
    #: Kamailio's shared memory in use at most during the run (MB, sampled), and its size.
    shm_peak_mb: int | None = None
    shm_total_mb: int | None = None

    @property
    def completed(self) -> int:
        return self.counts.completed

    @property
    def failed(self) -> int:
        """Offered calls that did not complete (failed, refused, rejected or never made)."""
        return self.offered - self.completed

    @property
    def failed_share(self) -> float:
        return self.failed / self.offered if self.offered else 0.0

    @property
    def window_s(self) -> float:
        """The time the calls were placed in: ``seconds``, unless SIPp fell behind."""
        return self.creation_s if self.creation_s > self.seconds + 1.5 else self.seconds

    @property
    def completed_per_s(self) -> float:
        return self.completed / self.window_s

    def _per_call_ms(self, seconds: float) -> float | None:
        return seconds * 1000 / self.completed if self.completed else None

    @property
    def kamailio_ms(self) -> float | None:
        return self._per_call_ms(self.after.kamailio_s - self.before.kamailio_s)

    @property
    def sidecar_ms(self) -> float | None:
        if not self.sidecar:
            return None
        return self._per_call_ms(self.after.sidecar_s - self.before.sidecar_s)

    @property
    def cores(self) -> dict[str, float]:
        """Cores used during the run: kamailio, sidecar, tools, machine, other."""
        return self.after.cores(self.before)

    def reply(self, q: float) -> float | None:
        return percentile(self.rtt.times("reply"), q)

    def refused_reply(self, q: float) -> float | None:
        return percentile(self.rtt.times("refused"), q)


@dataclass
class Running:
    """A load run in progress, as ``on_tick`` sees it."""

    uas: SippProcess
    uac: SippProcess
    rtt: RttTail

    @property
    def pids(self) -> list[int | None]:
        return [self.uas.pid, self.uac.pid]


@dataclass
class ShmPeak:
    """The most of Kamailio's shared memory in use, sampled during a run (``core.shmmem``;
    its own ``max_used`` counts from Kamailio's start, not from the run's)."""

    peak_mb: int | None = None
    total_mb: int | None = None
    last: float = 0.0

    def poll(self, lab: LiveLab, every_s: float = 0.5) -> None:
        now = time.monotonic()
        if now - self.last < every_s:
            return
        self.last = now
        try:
            info = lab.kam.rpc("core.shmmem", "m", timeout=0.5)
            used, total = int(info["real_used"]), int(info["total"])
        except (OSError, RuntimeError, KeyError, TypeError, ValueError):
            return
        self.total_mb = total
        self.peak_mb = used if self.peak_mb is None else max(self.peak_mb, used)


@dataclass
class Started:
    """A load run whose callee and caller are running (:func:`start_load`)."""

    lab: LiveLab
    label: str
    rate: int
    seconds: float
    offered: int
    timeout_s: float
    had_sidecar: bool
    before: Sample
    running: Running
    shm: ShmPeak = field(default_factory=ShmPeak)


def start_load(lab: LiveLab, scenarios: Scenarios, stack: contextlib.ExitStack, *,
               label: str, rate: int, seconds: float, account: str = ACCOUNT) -> Started:
    """Start a fresh SIPp callee and caller through ``lab``: calls at ``rate``/s for
    ``seconds`` on ``account``; both are stopped by PID when ``stack`` closes."""
    offered = max(1, round(rate * seconds))
    limit = max(100, rate * 10)  # concurrent calls before SIPp holds back new ones
    timeout_s = seconds + 40
    name = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
    had_sidecar = lab.sidecar_pid is not None
    before = Sample.take(lab)
    uas = stack.enter_context(lab.uas_sipp.start_uas(
        scenarios.uas, port=lab.uas_port, calls=offered, timeout_s=timeout_s + 10,
        name=f"{name}-uas", media_port=MEDIA_BASE_UAS if scenarios.media else None,
        trace_messages=False))
    uac = stack.enter_context(lab.sipp.start_uac(
        lab.target, scenarios.uac, account_code=account, dialled=DIALLED,
        duration_ms=CALL_MS, calls=offered, timeout_s=timeout_s, name=f"{name}-uac",
        media_port=MEDIA_BASE_UAC if scenarios.media else None,
        extra=["-r", str(rate), "-l", str(limit), "-trace_rtt", "-rtt_freq", "1"],
        trace_messages=False))
    favour_load_generator(uas.pid, uac.pid)
    return Started(lab, label, rate, seconds, offered, timeout_s, had_sidecar, before,
                   Running(uas, uac, RttTail(uac)))


def favour_load_generator(*pids: int | None) -> None:
    """SIPp first (nice -10): a caller or callee starved of CPU queues the replies in its
    own socket and measures its own backlog as the system's latency (seen as megabytes in
    SIPp's receive queue at 2,250 calls/s on 2 cores). The system under test gets the
    rest of the machine. Needs root; without it SIPp keeps its priority."""
    for pid in pids:
        if pid is not None:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, pid, -10)


def finish_load(st: Started, *, timed_out: bool) -> Load:
    """Wait for the caller (briefly: it has ended or timed out), stop the callee, and
    read what SIPp measured."""
    uac, uas = st.running.uac, st.running.uas
    try:
        result = uac.wait(5.0)
    except SippError:
        timed_out = True
        result = uac.stop()
    uas.stop()
    return measure_load(st, timed_out=timed_out, exit_code=result.exit_code)


def measure_load(st: Started, *, timed_out: bool, exit_code: int) -> Load:
    """What the run did and cost, once SIPp has ended."""
    lab, label, seconds, offered = st.lab, st.label, st.seconds, st.offered
    time.sleep(0.3)  # the last ends reach the sidecar
    after = Sample.take(lab)
    st.running.rtt.poll()
    rows = [Counts.from_row(r) for r in read_stat_rows(st.running.uac.files["stat"])]
    counts = rows[-1] if rows else Counts()
    creation_s = next((r.elapsed_s for r in rows if r.created >= offered),
                      rows[-1].elapsed_s if rows else float(seconds))
    in_window = [r for r in rows if 0 < r.elapsed_s <= seconds + 0.5]
    sent = in_window[-1].created / in_window[-1].elapsed_s if in_window else 0.0
    load = Load(label, st.rate, seconds, offered, counts, creation_s, sent, st.running.rtt,
                st.before, after, sidecar=st.had_sidecar, timed_out=timed_out,
                exit_code=exit_code, shm_peak_mb=st.shm.peak_mb,
                shm_total_mb=st.shm.total_mb)
    if timed_out:
        load.notes.append(f"{label}: SIPp did not finish within {st.timeout_s + 10:.0f} s")
    if creation_s > seconds + 1.5:
        load.notes.append(f"{label}: SIPp took {creation_s:.1f} s to place the calls of "
                          f"{seconds:.0f} s (caller or machine saturated)")
    if counts.successful and not st.running.rtt.values:
        load.notes.append(f"{label}: no response times found (SIPp's -trace_rtt file)")
    if st.had_sidecar and lab.sidecar_pid is None:
        load.notes.append(f"{label}: the sidecar exited during the run; see {lab.sidecar_log}")
    return load


def run_loads(runs: Sequence[tuple[LiveLab, str, str]], scenarios: Scenarios, *, rate: int,
              seconds: float, on_tick: Callable[[float, Running], None] | None = None
              ) -> list[Load]:
    """Calls at ``rate``/s for ``seconds`` through each of several labs at once (lab,
    label, account), each with a fresh SIPp callee and caller; ``on_tick(elapsed_s,
    running)`` is called about every 0.1 s (with the first lab's SIPps) while they run."""
    with contextlib.ExitStack() as stack:
        started = [start_load(lab, scenarios, stack, label=label, rate=rate, seconds=seconds,
                              account=account) for lab, label, account in runs]
        timeout_s = max(st.timeout_s for st in started) + 10
        timed_out = False
        t0 = time.monotonic()
        while any(st.running.uac.running() for st in started):
            if time.monotonic() - t0 > timeout_s:
                timed_out = True
                break
            if on_tick is not None:
                on_tick(time.monotonic() - t0, started[0].running)
            for st in started:
                st.shm.poll(st.lab)
            time.sleep(0.1)
        return [finish_load(st, timed_out=timed_out) for st in started]


def run_load(lab: LiveLab, scenarios: Scenarios, *, label: str, rate: int,
             seconds: float, on_tick: Callable[[float, Running], None] | None = None) -> Load:
    """Calls at ``rate``/s for ``seconds`` through ``lab`` with a fresh SIPp callee and
    caller; ``on_tick(elapsed_s, running)`` is called about every 0.1 s while it runs."""
    (load,) = run_loads([(lab, label, ACCOUNT)], scenarios, rate=rate, seconds=seconds,
                        on_tick=on_tick)
    return load


# ---------------------------------------------------------------------------- labs
def sidecar_cli() -> list[str]:
    """The ``sidecar`` command of this Python environment."""
    exe = Path(sys.executable).parent / "sidecar"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sidecar"]


def cli(db: Path | str, *args: str, timeout: float = 300) -> str:
    """Run the real CLI on ``db``; raise with its output when it fails."""
    proc = subprocess.run([*sidecar_cli(), "--db", str(db), *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"sidecar {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stdout}{proc.stderr}")
    return proc.stdout.strip()


def one_line_deck(path: Path) -> Path:
    """The plan's deck: one line, for the dialled number's prefix."""
    path.write_text("destination;code;rate_usd;increment;effective_from\n"
                    f"Germany Fixed;4930;{RATE_4930};1/1;{BASE_DATE}\n")
    return path


def make_db(path: Path, deck: Path | None = None) -> Path:
    """A database with the plan the calls use (``deck``, else one line for the dialled
    number's prefix) and one prepaid account with credit for any run."""
    if deck is None:
        deck = one_line_deck(path.with_suffix(".deck.csv"))
    cli(path, "deck", "import", str(deck), "--plan", PLAN, "--as-of", BASE_DATE)
    cli(path, "account", "add", ACCOUNT, "--plan", PLAN, "--kind", "prepaid",
        "--balance", "100000000")
    return path


def new_lab(run_dir: Path, db: Path, *, sidecar: bool, media: bool = False,
            metrics: bool = False) -> LiveLab:
    """Kamailio + sidecar, or Kamailio alone relaying every call (FAIL_OPEN); with
    ``metrics``, the sidecar serves /metrics on a free loopback port."""
    return LiveLab(run_dir, db, fail_open=not sidecar, with_sidecar=sidecar,
                   kamailio_defines=KAMAILIO_DEFINES, kamailio_cfg=KAMAILIO_CFG[0],
                   sidecar_nice=SIDECAR_NICE[0],
                   extra_config=MEDIA_CONFIG if media else "", metrics=metrics)


def settle(labs: Sequence[LiveLab], *, min_s: float = 3.0, max_s: float = 30.0) -> float:
    """Wait until the labs have no dialog or transaction left and their processes are
    idle (below 5% of a core over 0.5 s); at least ``min_s``, at most ``max_s``."""
    t0 = time.monotonic()
    time.sleep(min_s)
    while time.monotonic() - t0 < max_s:
        busy = False
        for lab in labs:
            try:
                dialogs = int(lab.kam.rpc("dlg.stats_active")["all"])
                transactions = int(lab.kam.rpc("tm.stats")["current"])
            except (OSError, RuntimeError, KeyError, TypeError, ValueError):
                dialogs = transactions = 0
            busy = busy or dialogs > 0 or transactions > 0
        a = [Sample.take(lab) for lab in labs]
        time.sleep(0.5)
        b = [Sample.take(lab) for lab in labs]
        cpu = sum((y.kamailio_s + y.sidecar_s) - (x.kamailio_s + x.sidecar_s)
                  for x, y in zip(a, b, strict=True)) / 0.5
        if not busy and cpu < 0.05:
            break
    return time.monotonic() - t0


@contextlib.contextmanager
def workdir(keep: Path | None, prefix: str) -> Iterator[Path]:
    if keep is not None:
        path = keep.resolve() / f"{prefix}{datetime.now(UTC):%Y%m%d-%H%M%S}"
        path.mkdir(parents=True, exist_ok=True)
        print(f"run directory: {path}")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def cdr_dispositions(db: Path) -> dict[str, int]:
    """CDRs per disposition in the sidecar's database (a sanity check that the calls were
    billed, and with ``--media`` that their media was seen); empty if it cannot be read."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            rows = conn.execute("SELECT disposition, COUNT(*) FROM cdrs GROUP BY 1 "
                                "ORDER BY 2 DESC").fetchall()
    except sqlite3.Error:
        return {}
    return {str(k): int(v) for k, v in rows}


# ---------------------------------------------------------------------------- printing
def fmt(value: float | int | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}{suffix}"
    return f"{value:,.{digits}f}{suffix}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _line(cells: Sequence[str], widths: Sequence[int], indent: str) -> str:
    out = [str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i])
           for i, c in enumerate(cells)]
    return indent + "  ".join(out).rstrip()


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    """Columns right-aligned (the first left-aligned) under their headers."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    sep = indent + "  ".join("-" * w for w in widths)
    return "\n".join([_line(headers, widths, indent), sep,
                      *(_line(r, widths, indent) for r in rows)])


class LiveTable:
    """A table printed a row at a time, as the figures come in (fixed column widths)."""

    def __init__(self, headers: Sequence[str], min_width: int = 7, indent: str = "  ",
                 groups: Sequence[tuple[str, int]] = ()) -> None:
        """``groups``: (title, number of columns) above the headers, left to right."""
        self.widths = [1 if h == "|" else max(len(h), min_width) for h in headers]
        self.indent = indent
        if groups:
            titles, col = [], 0
            for title, span in groups:
                width = sum(self.widths[col:col + span]) + 2 * (span - 1)
                titles.append(title.center(width) if title else " " * width)
                col += span
            print(indent + "  ".join(titles).rstrip())
        print(_line(headers, self.widths, indent))
        print(indent + "  ".join("-" * w for w in self.widths), flush=True)

    def row(self, cells: Sequence[str]) -> None:
        print(_line(cells, self.widths, self.indent), flush=True)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("ok" if ok else "MISSED")


def share(a: float, b: float) -> float | None:
    return a / b * 100 if b else None


def print_notes(loads: Sequence[Load]) -> None:
    for load in loads:
        for note in load.notes:
            print(f"  note: {note}")
        other = load.cores["other"]
        if other > NOISY_CORES:
            print(f"  note: {load.label}: other work kept {other:.2f} cores of the machine "
                  "busy during the run: its figures are disturbed")


def sidecar_log_summary(lab: LiveLab) -> str | None:
    """The sidecar's own last authorization-latency summary in its log, if it writes one."""
    try:
        text = lab.sidecar_log.read_text(errors="replace")
    except OSError:
        return None
    found = re.findall(r'"msg": "(auth latency[^"]*)"', text)
    return found[-1] if found else None


# ---------------------------------------------------------------------------- cpu
def median_of(loads: Sequence[Load], value: Callable[[Load], float | None]) -> float | None:
    """The median of a figure over repeated runs (runs without it left out)."""
    values = [v for v in (value(x) for x in loads) if v is not None]
    return statistics.median(values) if values else None


def cmd_cpu(args: argparse.Namespace) -> None:
    runs = "" if args.repeat == 1 else f", {args.repeat} runs each (medians)"
    print(f"cpu: {args.rate} calls/s for {args.seconds} s, {CALL_MS / 1000:.0f} s calls, "
          f"signalling only; Kamailio alone (FAIL_OPEN) vs Kamailio + sidecar{runs}")
    alone_runs: list[Load] = []
    with_runs: list[Load] = []
    with workdir(args.keep, "bench-cpu-") as d:
        scn = bench_scenarios(d / "scenarios", media=False)
        db = make_db(d / "bench.db")
        with new_lab(d / "with", db, sidecar=True) as lab:
            settle([lab])
            idle0 = Sample.take(lab)
            time.sleep(IDLE_S)
            idle = Sample.take(lab).cores(idle0)
            for n in range(1, args.repeat + 1):
                with new_lab(d / f"alone-{n}", d / "unused.db", sidecar=False) as alone:
                    alone_runs.append(run_load(alone, scn, label=f"alone #{n}", rate=args.rate,
                                               seconds=args.seconds))
                    settle([alone, lab])
                with_runs.append(run_load(lab, scn, label=f"with sidecar #{n}", rate=args.rate,
                                          seconds=args.seconds))
                settle([lab])
            lab.stop_sidecar()
            summary = sidecar_log_summary(lab)

    def both(value: Callable[[Load], float | None], digits: int = 0) -> list[str]:
        return [fmt(median_of(alone_runs, value), digits), fmt(median_of(with_runs, value),
                                                                digits)]

    def total_ms(x: Load) -> float | None:
        return None if x.kamailio_ms is None else x.kamailio_ms + (x.sidecar_ms or 0)

    rows = [
        ["offered calls", *both(lambda x: x.offered)],
        ["completed calls", *both(lambda x: x.completed)],
        ["failed calls", *both(lambda x: x.failed)],
        ["  of which refused (503)", *both(lambda x: x.counts.refused)],
        ["completed calls/s", *both(lambda x: x.completed_per_s)],
        ["Kamailio CPU ms/call", *both(lambda x: x.kamailio_ms, 3)],
        ["sidecar CPU ms/call", *both(lambda x: x.sidecar_ms, 3)],
        ["Kamailio + sidecar CPU ms/call", *both(total_ms, 3)],
        ["cores: Kamailio", *both(lambda x: x.cores["kamailio"], 2)],
        ["cores: sidecar", *both(lambda x: x.cores["sidecar"] if x.sidecar else None, 2)],
        ["cores: SIPp and this script", *both(lambda x: x.cores["tools"], 2)],
        ["cores: other load on the machine", *both(lambda x: x.cores["other"], 2)],
        ["reply p50 ms", *both(lambda x: x.reply(50))],
        ["reply p99 ms", *both(lambda x: x.reply(99))],
    ]
    print(table(["", "Kamailio alone", "Kamailio + sidecar"], rows))
    print(f"  idle before the runs ({IDLE_S:.0f} s, no calls): Kamailio {idle['kamailio']:.3f} "
          f"cores, sidecar {idle['sidecar']:.3f} cores (in the figures above)")
    side = median_of(with_runs, lambda x: x.sidecar_ms)
    each = ""
    if args.repeat > 1:
        each = "; runs: " + ", ".join(fmt(x.sidecar_ms, 3) for x in with_runs)
    print(f"sidecar CPU per call (offer + answer + end): {fmt(side, 3)} ms "
          f"(target <= 0.4 ms: {verdict(None if side is None else side <= 0.4)}){each}")
    kam_a = median_of(alone_runs, lambda x: x.kamailio_ms)
    kam_w = median_of(with_runs, lambda x: x.kamailio_ms)
    if kam_a and kam_w:
        print(f"Kamailio's own CPU per call with the sidecar: {kam_w / kam_a:.2f}x its CPU "
              "alone (evapi events, suspended transactions)")
    if kam_a and side is not None:
        # The machine's speed drifts (by a third within an hour on a shared VM): a call's
        # CPU in the sidecar as a share of Kamailio alone's, from the same run, far less.
        print(f"the sidecar's CPU per call is {side / kam_a:.2f}x Kamailio alone's "
              f"({fmt(kam_a, 3)} ms in this run): the figure to compare across machines")
    if summary:
        print(f"the sidecar's own log: {summary}")
    print_notes([*alone_runs, *with_runs])


# ---------------------------------------------------------------------------- step
def _step_cells(load: Load | None, *, sidecar: bool) -> list[str]:
    if load is None:
        return ["-"] * (10 if sidecar else 8)
    cells = [fmt(load.sent_per_s), fmt(load.completed_per_s), fmt(load.failed),
             f"{load.failed_share * 100:.1f}", ms(load.reply(50)), ms(load.reply(99))]
    if sidecar:
        cells += [fmt(load.counts.refused), ms(load.refused_reply(99))]
    return [*cells, fmt(load.cores.get("kamailio_wait"), 2), fmt(load.shm_peak_mb)]


def _step_row(rate: int | str, a: Load | None, w: Load) -> list[str]:
    other = max(x.cores["other"] for x in (a, w) if x is not None)
    return [str(rate), *_step_cells(a, sidecar=False), "|", *_step_cells(w, sidecar=True),
            fmt(other, 2)]


STEP_HEADERS = ["rate", "sent/s", "done/s", "failed", "fail%", "p50", "p99", "wait", "shm",
                "|", "sent/s", "done/s", "failed", "fail%", "p50", "p99", "503s", "503 p99",
                "wait", "shm", "other"]
STEP_GROUPS = [("", 1), ("Kamailio alone", 8), ("", 1), ("Kamailio + sidecar", 10), ("", 1)]


def overload_shed(lab: LiveLab) -> int | None:
    """INVITEs Kamailio's overload control has refused statelessly so far (``htable
    overload shed``); ``None`` if it cannot be read."""
    try:
        return int(lab.kam.rpc("htable.get", "overload", "shed")["item"]["value"])
    except (OSError, RuntimeError, KeyError, TypeError, ValueError):
        return None


def run_step_load(lab: LiveLab, scn: Scenarios, *, label: str, rate: int, seconds: float
                  ) -> Load:
    """:func:`run_load`, noting in ``load.stateless`` how many of the refused calls
    Kamailio's overload control refused statelessly (before any transaction)."""
    before = overload_shed(lab) or 0  # not set yet: none refused so far
    load = run_load(lab, scn, label=label, rate=rate, seconds=seconds)
    after = overload_shed(lab)
    if after is None:
        time.sleep(1.0)
        after = overload_shed(lab)
    if after is not None:
        load.stateless = after - before
    return load


def _stateless(load: Load) -> str:
    return f"{fmt(load.stateless)} of them stateless (overload control)" \
        if load.stateless is not None else "stateless refusals unknown"


def cmd_step(args: argparse.Namespace) -> None:
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    budget_s = args.max_minutes * 60
    t_start = time.monotonic()
    per_run_s = args.seconds + 45  # calls, their tail, settling
    print(f"step: rates {', '.join(map(str, rates))} calls/s, {args.seconds} s each, "
          f"{CALL_MS / 1000:.0f} s calls, signalling only; at most {args.max_minutes} min")
    print("  sent/s: calls SIPp placed per second; done/s: completed calls per second;\n"
          "  p50/p99: INVITE -> first non-100 reply in ms (all calls); 503 p99: refused calls;\n"
          "  wait: Kamailio's processes waiting for a CPU (run queue, /proc/PID/schedstat),\n"
          "  how many on average: the machine's CPU, not Kamailio, is then what holds calls up;\n"
          "  shm: Kamailio's shared memory in use at most, MB (of -m; SHM_RESERVE_PCT of it\n"
          "  free or less: new calls refused);\n"
          "  other: other load on the machine in cores (the larger of the two runs)")
    results: list[tuple[int, Load, Load]] = []
    extra: Load | None = None
    extra_alone: Load | None = None
    with workdir(args.keep, "bench-step-") as d:
        scn = bench_scenarios(d / "scenarios", media=False)
        db = make_db(d / "bench.db")
        with new_lab(d / "with", db, sidecar=True) as lab:
            out = LiveTable(STEP_HEADERS, min_width=6, groups=STEP_GROUPS)
            for rate in rates:
                left = budget_s - (time.monotonic() - t_start)
                if left < 2 * per_run_s:
                    print(f"  time budget: rates from {rate} skipped")
                    break
                with new_lab(d / f"alone-{rate}", d / "unused.db", sidecar=False) as alone:
                    a = run_step_load(alone, scn, label=f"alone {rate}", rate=rate,
                                      seconds=args.seconds)
                    settle([alone, lab])
                w = run_step_load(lab, scn, label=f"sidecar {rate}", rate=rate,
                                  seconds=args.seconds)
                settle([lab])
                results.append((rate, a, w))
                out.row(_step_row(rate, a, w))
            knee = max((r for r, _a, w in results if w.failed_share < FAIL_SHARE), default=None)
            if knee is not None:
                over = round(knee * 1.5)
                if budget_s - (time.monotonic() - t_start) >= 2 * per_run_s:
                    # The baseline at that rate too: what the machine carries without the
                    # sidecar (Kamailio relaying every call).
                    with new_lab(d / f"alone-{over}", d / "unused.db", sidecar=False) as alone:
                        extra_alone = run_step_load(alone, scn,
                                                    label=f"alone {over} (1.5x knee)",
                                                    rate=over, seconds=args.seconds)
                        settle([alone, lab])
                    extra = run_step_load(lab, scn, label=f"sidecar {over} (1.5x knee)",
                                          rate=over, seconds=args.seconds)
                    out.row(_step_row(f"{over}*", extra_alone, extra))
                    print("  *: 1.5x the sidecar's knee")
                else:
                    print(f"  time budget: the 1.5x knee run ({over}/s) skipped")
    print()
    if not results:
        print("no step ran")
        return
    total = next((x.shm_total_mb for _r, a, w in results for x in (a, w) if x.shm_total_mb), None)
    print(f"Kamailio's shared memory (-m): {fmt(total)} MB")
    # Where Kamailio alone starts to fail.
    fail_at = next(((r, a, w) for r, a, w in results if a.failed_share > FAIL_SHARE), None)
    if fail_at is None:
        r, a, w = results[-1]
        where = f"Kamailio alone did not fail up to {r}/s; at {r}/s"
    else:
        r, a, w = fail_at
        where = f"Kamailio alone starts to fail at {r}/s ({a.failed_share * 100:.1f}% failed)"
    pct = share(w.completed, a.completed)
    print(f"{where}: Kamailio + sidecar completed {fmt(w.completed)} calls = "
          f"{fmt(pct, 1)}% of Kamailio alone's {fmt(a.completed)} "
          f"(target >= 90%: {verdict(None if pct is None else pct >= 90)})")
    if knee is None:
        print("the sidecar's knee: every rate had >= 1% failed calls; no 1.5x run")
    else:
        k = next(w for r, _a, w in results if r == knee)
        print(f"the sidecar's knee (highest rate with < 1% failed): {knee}/s, "
              f"{fmt(k.completed_per_s)} completed calls/s")
        if extra is not None:
            pct = share(extra.completed_per_s, k.completed_per_s)
            p99 = extra.refused_reply(99)
            print(f"at 1.5x the knee ({extra.rate}/s): {fmt(extra.completed_per_s)} completed "
                  f"calls/s = {fmt(pct, 1)}% of the knee's (target >= 90%: "
                  f"{verdict(None if pct is None else pct >= 90)}); "
                  f"{fmt(extra.counts.refused)} refused (503; {_stateless(extra)}), their "
                  f"reply p99 {ms(p99)} ms "
                  f"(target < 50 ms: {verdict(None if p99 is None else p99 < 50)})")
            if extra_alone is not None:
                pct_alone = share(extra_alone.completed_per_s, k.completed_per_s)
                print(f"  baseline at {extra.rate}/s, Kamailio alone (no sidecar): "
                      f"{fmt(extra_alone.completed_per_s)} completed calls/s = "
                      f"{fmt(pct_alone, 1)}% of the sidecar's knee, "
                      f"{fmt(extra_alone.failed_share * 100, 1)}% failed, reply p99 "
                      f"{ms(extra_alone.reply(99))} ms, {fmt(extra_alone.counts.refused)} "
                      f"refused (503; {_stateless(extra_alone)}), their reply p99 "
                      f"{ms(extra_alone.refused_reply(99))} ms")
    print_notes([x for _r, a, w in results for x in (a, w)] + ([extra] if extra else [])
                + ([extra_alone] if extra_alone else []))
    print(f"total run time: {time.monotonic() - t_start:.0f} s "
          f"(budget {args.max_minutes} min)")


# ---------------------------------------------------------------------------- deck
def write_decks(dir_: Path, lines: int, *, notice_days: int = 7,
                seed: int = 20261) -> tuple[Path, Path]:
    """The plan's deck before (``base``) and the new version to import (``update``), both
    ``lines`` lines: the dialled number's prefix at the same rate, and other prefixes
    (never a prefix of the dialled number) unchanged, cheaper, or dearer from a date beyond
    the notice period, so the import passes the notice check."""
    rng = random.Random(seed)
    prefixes = ["4930"]
    seen = set(prefixes)
    while len(prefixes) < lines:
        length = rng.randint(4, 9)
        p = str(rng.randrange(10 ** (length - 1), 10 ** length))
        if p in seen or DIALLED.startswith(p):
            continue
        seen.add(p)
        prefixes.append(p)
    today = datetime.now(UTC).date()
    later = today + timedelta(days=notice_days + 3)
    head = "destination;code;rate_usd;increment;effective_from\n"
    base, update = [head], [head]
    for i, p in enumerate(prefixes):
        if i == 0:
            base.append(f"Germany Fixed;4930;{RATE_4930};1/1;{BASE_DATE}\n")
            update.append(f"Germany Fixed;4930;{RATE_4930};1/1;{today}\n")
            continue
        cents = rng.randint(50, 20000)  # 1/10,000 of a dollar per minute
        inc = ("1/1", "60/60", "30/6", "6/6")[i % 4]
        name = f"Zone {p[:3]}"
        base.append(f"{name};{p};{cents / 10000:.4f};{inc};{BASE_DATE}\n")
        kind = i % 3
        if kind == 0:  # unchanged
            update.append(f"{name};{p};{cents / 10000:.4f};{inc};{today}\n")
        elif kind == 1:  # cheaper at once
            update.append(f"{name};{p};{max(1, cents * 9 // 10) / 10000:.4f};{inc};{today}\n")
        else:  # dearer, after the notice period
            update.append(f"{name};{p};{cents * 11 // 10 / 10000:.4f};{inc};{later}\n")
    base_path, update_path = dir_ / "deck-base.csv", dir_ / "deck-update.csv"
    base_path.write_text("".join(base))
    update_path.write_text("".join(update))
    return base_path, update_path


@dataclass
class Importer:
    """Starts the CLI import at ``at_s`` into the run; records when it ran and its output."""

    argv: list[str]
    at_s: float
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started_s: float | None = None  # seconds since the caller started
    ended_s: float | None = None
    returncode: int | None = None
    timeout_s: float = 300.0
    note: str = ""
    output: str = ""

    def tick(self, elapsed: float, running: Running) -> None:
        if self.proc is None and elapsed >= self.at_s:
            with open(self.log, "wb") as out:
                self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
            self.started_s = elapsed
        elif self.proc is not None and self.returncode is None:
            code = self.proc.poll()
            if code is None and self.started_s is not None \
                    and elapsed - self.started_s > self.timeout_s:
                self.stop()
                code = self.proc.returncode
            if code is not None:
                self.returncode = code
                self.ended_s = elapsed

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def finish(self) -> None:
        """After the calls: wait for an import still running (bounded); keep its output."""
        if self.proc is not None and self.returncode is None:
            t0 = time.monotonic()
            try:
                self.returncode = self.proc.wait(
                    max(1.0, self.timeout_s - (self.started_s or 0)))
            except subprocess.TimeoutExpired:
                self.stop()
                self.returncode = self.proc.returncode
            self.ended_s = None  # ended after the calls
            self.note = f"the import ran {time.monotonic() - t0:.1f} s past the calls"
        if self.log.exists():
            self.output = self.log.read_text(errors="replace").strip()


def cmd_deck(args: argparse.Namespace) -> None:
    print(f"deck: {args.rate} calls/s for {args.seconds} s; at t = {args.at} s the CLI imports a "
          f"{args.lines:,}-line deck into plan {PLAN!r} (the plan the calls use)")
    with workdir(args.keep, "bench-deck-") as d:
        scn = bench_scenarios(d / "scenarios", media=False)
        base, update = write_decks(d, args.lines)
        t0 = time.monotonic()
        template = make_db(d / "template.db", base)
        print(f"  set-up: plan with {args.lines:,} lines and the account in "
              f"{time.monotonic() - t0:.1f} s")
        runs: dict[str, tuple[Load, Importer | None]] = {}
        for name in ("baseline", "import"):
            db = d / f"{name}.db"
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(template) + suffix)
                if src.exists():
                    shutil.copyfile(src, Path(str(db) + suffix))
            importer = None
            if name == "import":
                importer = Importer([*sidecar_cli(), "--db", str(db), "deck", "import",
                                     str(update), "--plan", PLAN], args.at, d / "import.log")
            with new_lab(d / name, db, sidecar=True) as lab:
                try:
                    load = run_load(lab, scn, label=name, rate=args.rate, seconds=args.seconds,
                                    on_tick=importer.tick if importer else None)
                finally:
                    if importer is not None:
                        importer.finish()
            runs[name] = (load, importer)
            if name == "baseline":
                time.sleep(3)  # let the machine settle
    base_load, _ = runs["baseline"]
    load, imp = runs["import"]
    assert imp is not None
    # The import's time window on SIPp's clock (ms since the caller started).
    window = (None if imp.started_s is None else
              (imp.started_s * 1000, (imp.ended_s or load.seconds + 5) * 1000 + 1000))

    def window_times(lo: Load) -> list[float]:
        return lo.rtt.times("reply", *window) if window else []

    rows = []
    for label, lo in (("without import", base_load), ("with import", load)):
        wt = window_times(lo)
        refused_in = len(lo.rtt.times("refused", *window)) if window else 0
        rows.append([label, fmt(lo.offered), fmt(lo.completed), fmt(lo.counts.refused),
                     fmt(lo.failed), ms(lo.reply(50)), ms(lo.reply(99)),
                     ms(max(lo.rtt.times("reply"), default=None)),
                     ms(percentile(wt, 99)), ms(max(wt, default=None)), fmt(refused_in)])
    print(table(["", "offered", "completed", "refused", "failed", "p50 ms", "p99 ms",
                 "max ms", "window p99", "window max", "window 503s"], rows))
    print("  failed: offered calls not completed (refused included); window: from the start "
          "of the import to 1 s after its end (the same seconds of the run without import)")
    output = imp.output
    if imp.started_s is None:
        print("the import did not start (the calls ended first)")
    else:
        took = ("after the calls ended" if imp.ended_s is None
                else f"{imp.ended_s - imp.started_s:.1f} s")
        print(f"import: started at t = {imp.started_s:.1f} s, took {took}, exit code "
              f"{imp.returncode}: {output.splitlines()[-1] if output else '(no output)'}")
    if imp.note:
        print(f"  note: {imp.note}")
    p99 = load.reply(99)
    print(f"refused / failed calls with the import: {load.counts.refused} / {load.failed} "
          f"(target 0: {verdict(load.failed == 0)}); reply p99 {ms(p99)} ms "
          f"(target < 20 ms: {verdict(None if p99 is None else p99 < 20)}); "
          f"without the import: {base_load.counts.refused} / {base_load.failed}, "
          f"p99 {ms(base_load.reply(99))} ms")
    print_notes([base_load, load])


# ---------------------------------------------------------------------------- soak
@dataclass(frozen=True)
class Minute:
    index: int
    counts: Counts
    sample: Sample
    reply_p99: float | None
    memory: dict[str, float]  # the sidecar's memory gauges (/metrics), if it answered


SOAK_HEADERS = ["minute", "completed", "failed", "503s", "sidecar RSS MB", "SQLite MB",
                "RSS-SQLite MB", "Python blocks k", "sidecar ms/call", "Kamailio ms/call",
                "other load cores", "reply p99 ms"]
MEMORY_GAUGES = ("sidecar_sqlite_memory_bytes", "sidecar_python_allocated_blocks")
REMEMBER_ENDED = ChargingConfig().remember_ended


def memory_gauges(lab: LiveLab) -> dict[str, float]:
    """The sidecar's memory gauges from its /metrics (empty if it does not answer)."""
    try:
        with urllib.request.urlopen(lab.metrics_url + "/metrics", timeout=5) as r:
            text = r.read().decode()
    except (OSError, RuntimeError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in MEMORY_GAUGES:
            out[name] = float(value)
    return out


class MinuteSampler:
    """``on_tick`` of a soak run: at every whole minute of the caller, SIPp's counters,
    the CPU counters and the sidecar's RSS; prints one line a minute."""

    def __init__(self, lab: LiveLab, minutes: int) -> None:
        self.lab = lab
        self.limit = minutes
        self.start = Sample.take(lab)
        self.minutes: list[Minute] = []
        self.out = LiveTable(SOAK_HEADERS)

    def tick(self, elapsed: float, running: Running) -> None:
        index = len(self.minutes) + 1
        if index > self.limit or elapsed < index * 60:
            return
        sample = Sample.take(self.lab, running.pids)
        counts = last_counts(running.uac)
        running.rtt.poll()
        p99 = percentile(running.rtt.times("reply", (index - 1) * 60_000, index * 60_000), 99)
        prev = self.minutes[-1] if self.minutes else None
        memory = memory_gauges(self.lab)
        self.minutes.append(Minute(index, counts, sample, p99, memory))
        row = _minute_row(index, prev.counts if prev else Counts(),
                          counts, prev.sample if prev else self.start, sample, p99, memory)
        self.out.row(row)


def cmd_soak(args: argparse.Namespace) -> None:
    seconds = args.minutes * 60
    mode = "with RTP (SIPp plays G.711; the sidecar captures on lo)" if args.media \
        else "signalling only"
    print(f"soak: {args.rate} calls/s for {args.minutes} min, {CALL_MS / 1000:.0f} s calls, "
          f"{mode}")
    with workdir(args.keep, "bench-soak-") as d:
        scn = bench_scenarios(d / "scenarios", media=args.media)
        db = make_db(d / "bench.db")
        with new_lab(d / "lab", db, sidecar=True, media=args.media, metrics=True) as lab:
            sampler = MinuteSampler(lab, args.minutes)
            load = run_load(lab, scn, label="soak", rate=args.rate, seconds=seconds,
                            on_tick=sampler.tick)
        dispositions = cdr_dispositions(db)
    minutes = sampler.minutes
    cores = load.cores
    print(f"total: {fmt(load.offered)} offered, {fmt(load.completed)} completed, "
          f"{fmt(load.failed)} failed ({fmt(load.counts.refused)} refused); sidecar "
          f"{fmt(load.sidecar_ms, 3)} ms/call, Kamailio {fmt(load.kamailio_ms, 3)} ms/call; "
          f"reply p50/p99 {ms(load.reply(50))}/{ms(load.reply(99))} ms")
    print(f"cores: Kamailio {cores['kamailio']:.2f}, sidecar {cores['sidecar']:.2f}, SIPp and "
          f"this script {cores['tools']:.2f}, other load {cores['other']:.2f}")
    if dispositions:
        print("the sidecar's CDRs by disposition: "
              + ", ".join(f"{k} {v:,}" for k, v in dispositions.items()))
    if len(minutes) < 2:
        print("fewer than 2 whole minutes measured: no trend")
        print_notes([load])
        return
    per_call = _per_minute_ms(minutes, sampler.start)
    # One minute is noisy on a shared machine (Kamailio's own CPU per call moves with the
    # sidecar's): with 10 minutes or more, the verdict compares the medians of the first
    # and the last 5 minutes; the single first and last minutes are printed too.
    window = 5 if len(per_call) >= 10 else 1
    head, tail = per_call[:window], per_call[-window:]
    first = (_median([x[0] for x in head]), _median([x[1] for x in head]))
    last = (_median([x[0] for x in tail]), _median([x[1] for x in tail]))
    if first[0] and last[0]:
        change = (last[0] / first[0] - 1) * 100
        kam = ((last[1] / first[1] - 1) * 100) if first[1] and last[1] else None
        what = (f"median of minutes 1-{window} -> {len(per_call) - window + 1}-{len(per_call)}"
                if window > 1 else f"minute 1 -> {len(minutes)}")
        print(f"sidecar CPU per call, {what}: {first[0]:.3f} -> {last[0]:.3f} ms "
              f"({change:+.1f}%; flat within 10%: {verdict(abs(change) <= 10)}); Kamailio's in "
              f"the same minutes: {fmt(kam, 1, '%')} (machine noise)")
        if window > 1 and per_call[0][0] and per_call[-1][0]:
            print(f"  single minutes 1 -> {len(per_call)}: {per_call[0][0]:.3f} -> "
                  f"{per_call[-1][0]:.3f} ms "
                  f"({(per_call[-1][0] / per_call[0][0] - 1) * 100:+.1f}%)")
        if first[1] and last[1]:
            r0, r1 = first[0] / first[1], last[0] / last[1]
            print(f"  the sidecar's CPU per call as a share of Kamailio's (machine noise "
                  f"taken out): {r0:.2f} -> {r1:.2f} ({(r1 / r0 - 1) * 100:+.1f}%; flat within "
                  f"10%: {verdict(abs(r1 / r0 - 1) <= 0.10)})")
    rss = [m.sample.sidecar_rss_kb for m in minutes]
    if len(minutes) > 2 and rss[1] is not None and rss[-1] is not None:
        print(f"sidecar RSS after minute 2: {rss[1] / 1024:.1f} -> {rss[-1] / 1024:.1f} MB "
              f"({(rss[-1] - rss[1]) / 1024:+.1f} MB over {len(minutes) - 2} min)")
        still = len(rss) - 1
        while still > 0 and rss[still - 1] == rss[-1]:
            still -= 1
        if still < len(rss) - 1:
            print(f"  RSS unchanged from minute {still + 1} to {len(rss)} "
                  f"({rss[-1] / 1024:.1f} MB)")
        _memory_split(minutes, 1)
        # The sidecar remembers the last REMEMBER_ENDED ended calls (duplicate events are
        # recognised): that memory is full after this many minutes, and flat from then.
        warm = -(-REMEMBER_ENDED // (args.rate * 60)) + 1
        if warm < len(minutes) - 1:
            print(f"  once the memory of the last {REMEMBER_ENDED:,} ended calls is full "
                  f"(minute {warm}):")
            _memory_split(minutes, warm - 1)
    elif rss[0] is not None and rss[-1] is not None:
        print(f"sidecar RSS after minute 2: n/a in a {len(minutes)}-minute run; minute 1 -> "
              f"{len(minutes)}: {rss[0] / 1024:.1f} -> {rss[-1] / 1024:.1f} MB "
              f"({(rss[-1] - rss[0]) / 1024:+.1f} MB)")
    print_notes([load])


def _memory_split(minutes: Sequence[Minute], start: int) -> None:
    """Of the RSS growth after minute ``start + 1``: SQLite's share (its page caches fill
    as the database grows) and the rest, with the interpreter's blocks."""
    a, b = minutes[start], minutes[-1]
    key_sql, key_py = MEMORY_GAUGES
    if (a.sample.sidecar_rss_kb is None or b.sample.sidecar_rss_kb is None
            or key_sql not in a.memory or key_sql not in b.memory):
        return
    sql = (b.memory[key_sql] - a.memory[key_sql]) / 2**20
    outside_a = a.sample.sidecar_rss_kb / 1024 - a.memory[key_sql] / 2**20
    outside_b = b.sample.sidecar_rss_kb / 1024 - b.memory[key_sql] / 2**20
    calls = b.counts.completed - a.counts.completed
    per_call = (outside_b - outside_a) * 2**20 / calls if calls else 0.0
    line = (f"  minute {a.index} -> {b.index}: SQLite's allocations {sql:+.1f} MB; RSS "
            f"outside SQLite {outside_a:.1f} -> {outside_b:.1f} MB "
            f"({outside_b - outside_a:+.1f} MB, {per_call:+.0f} bytes per call)")
    if key_py in a.memory and key_py in b.memory:
        line += (f"; Python blocks {a.memory[key_py] / 1000:,.0f}k -> "
                 f"{b.memory[key_py] / 1000:,.0f}k")
    print(line)


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _minute_row(index: int, c0: Counts, c1: Counts, s0: Sample, s1: Sample,
                p99: float | None, memory: dict[str, float]) -> list[str]:
    done = c1.completed - c0.completed
    side = (s1.sidecar_s - s0.sidecar_s) * 1000 / done if done else None
    kam = (s1.kamailio_s - s0.kamailio_s) * 1000 / done if done else None
    cores = s1.cores(s0)["other"]
    rss = None if s1.sidecar_rss_kb is None else s1.sidecar_rss_kb / 1024
    sqlite = memory.get("sidecar_sqlite_memory_bytes")
    sqlite_mb = None if sqlite is None else sqlite / 2**20
    outside = None if rss is None or sqlite_mb is None else rss - sqlite_mb
    blocks = memory.get("sidecar_python_allocated_blocks")
    return [str(index), fmt(done), fmt(c1.not_completed - c0.not_completed),
            fmt(c1.refused - c0.refused), fmt(rss, 1), fmt(sqlite_mb, 1), fmt(outside, 1),
            fmt(None if blocks is None else blocks / 1000, 0), fmt(side, 3), fmt(kam, 3),
            fmt(cores, 2), ms(p99)]


def _per_minute_ms(minutes: Sequence[Minute], start: Sample
                   ) -> list[tuple[float | None, float | None]]:
    out: list[tuple[float | None, float | None]] = []
    prev_s, prev_c = start, Counts()
    for m in minutes:
        done = m.counts.completed - prev_c.completed
        out.append(((m.sample.sidecar_s - prev_s.sidecar_s) * 1000 / done if done else None,
                    (m.sample.kamailio_s - prev_s.kamailio_s) * 1000 / done if done else None))
        prev_s, prev_c = m.sample, m.counts
    return out


# ---------------------------------------------------------------------------- nodes
@contextlib.contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A fresh database on the PostgreSQL server the tests use (``$SIDECAR_TEST_PG``, by
    default 127.0.0.1:5432), as the ``postgresql://`` URL ``--db`` takes; dropped at the
    end whatever happened (``tests/store/pgdb.py``)."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # run as a script: the repository root is not on the path
        sys.path.insert(0, root)
    from tests.store.pgdb import as_url, fresh_database

    with fresh_database() as conninfo:
        yield as_url(conninfo)


def make_nodes_store(store: Path | str, work: Path, accounts: Sequence[str]) -> None:
    """The plan and postpaid ``accounts`` (a credit limit no run reaches), through the CLI
    as an operator sets up a store of either kind (a SQLite path or a PostgreSQL URL)."""
    work.mkdir(parents=True, exist_ok=True)
    cli(store, "deck", "import", str(one_line_deck(work / "deck.csv")), "--plan", PLAN,
        "--as-of", BASE_DATE)
    for code in accounts:
        cli(store, "account", "add", code, "--plan", PLAN, "--kind", "postpaid",
            "--credit-limit", "100000000")


def store_check(store: Path | str) -> tuple[dict[str, int], int]:
    """The CDRs per disposition in the shared store, and how many accounts' balances
    differ from their ledgers."""
    from sidecar.store.accounts import verify_ledger
    from sidecar.store.conn import open_db

    conn = open_db(store)
    try:
        rows = conn.execute("SELECT disposition, COUNT(*) FROM cdrs GROUP BY disposition "
                            "ORDER BY 2 DESC").fetchall()
        bad = sum(1 for c in verify_ledger(conn) if c.problems)
    finally:
        conn.close()
    return {str(k): int(v) for k, v in rows}, bad


_AUTH = re.compile(r"offer -> reply sent p50 ([\d.]+) ms p99 ([\d.]+) ms; in the sidecar "
                   r"p50 ([\d.]+) ms p99 ([\d.]+) ms")

NODE_SETUPS = {
    "sqlite1": ("SQLite, 1 node", 1),
    "sqlite2": ("SQLite, 2 nodes, one file", 2),
    "pg1": ("PostgreSQL, 1 node", 1),
    "pg2": ("PostgreSQL, 2 nodes", 2),
}


def pg_started(url: str) -> str:
    """When the PostgreSQL server at ``url`` was (re)started: a restart during a run
    (other work on a shared machine) voids its figures."""
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()
    return str(row[0]) if row else ""


def pg_pids(url: str) -> list[int]:
    """The PostgreSQL server processes serving the database at ``url`` (its sidecars'
    connections) and the server's own background processes (WAL writer, checkpointer)."""
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
            "(datname = current_database() OR "
            "(datname IS NULL AND backend_type <> 'client backend'))").fetchall()
    return [int(r[0]) for r in rows]


@dataclass
class NodesResult:
    label: str
    loads: list[Load]
    summaries: list[str | None]
    cdrs: dict[str, int]
    ledger_problems: int
    disturbed: list[str]  # why the run's figures do not stand (empty: they do)
    postgres_s: float | None  # CPU seconds of PostgreSQL's server processes in the run

    def cores(self) -> dict[str, float]:
        """Cores used over the run: every node's Kamailio and sidecar, SIPp and this
        script, PostgreSQL's server, the whole machine, and the rest ("other")."""
        first = self.loads[0]
        dt = max(lo.after.t for lo in self.loads) - min(lo.before.t for lo in self.loads)
        out = {"kamailio": sum(lo.cores["kamailio"] for lo in self.loads),
               "sidecar": sum(lo.cores["sidecar"] for lo in self.loads),
               "tools": first.cores["tools"], "machine": first.cores["machine"],
               "postgres": (self.postgres_s or 0.0) / dt}
        out["other"] = max(0.0, out["machine"] - out["kamailio"] - out["sidecar"]
                           - out["tools"] - out["postgres"])
        return out


def cmd_nodes(args: argparse.Namespace) -> None:
    setups = [x.strip() for x in args.setups.split(",") if x.strip()]
    unknown = [x for x in setups if x not in NODE_SETUPS]
    if unknown:
        raise SystemExit(f"unknown set-up(s) {', '.join(unknown)}: choose from "
                         f"{', '.join(NODE_SETUPS)}")
    accounts_note = ("each node its own postpaid account" if args.own_accounts else
                     "one postpaid account for the calls of every node")
    print(f"nodes: {args.rate} calls/s per node for {args.seconds} s, {CALL_MS / 1000:.0f} s "
          f"calls, signalling only, {accounts_note}; each node a Kamailio with its own "
          f"`sidecar run --node`, the nodes sharing one store (load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    results: list[NodesResult] = []
    with workdir(args.keep, "bench-nodes-") as d:
        scn = bench_scenarios(d / "scenarios", media=False)
        for n, key in enumerate(setups):
            label, count = NODE_SETUPS[key]
            if n:
                time.sleep(3)  # let the machine settle
            with contextlib.ExitStack() as stack:
                store: Path | str
                if key.startswith("pg"):
                    store = stack.enter_context(fresh_pg_database())
                else:
                    (d / key).mkdir(parents=True, exist_ok=True)
                    store = d / key / "shared.db"
                codes = ([f"POST{k}" for k in range(count)] if args.own_accounts
                         else ["POST"])
                make_nodes_store(store, d / key, codes)
                pg_at = pg_started(store) if isinstance(store, str) else ""
                lab = stack.enter_context(NodesLab(d / key / "lab", store, count,
                                                   kamailio_defines=KAMAILIO_DEFINES))
                settle(list(lab))
                pids = pg_pids(store) if isinstance(store, str) else []
                pg0 = sum(map(process_cpu_s, pids))
                loads = run_loads([(node, f"{label}: node {k}", codes[k % len(codes)])
                                   for k, node in enumerate(lab)], scn, rate=args.rate,
                                  seconds=args.seconds)
                pg_s = sum(map(process_cpu_s, pids)) - pg0 if pids else None
                disturbed = [f"node {k}'s sidecar exited during the run"
                             for k, node in enumerate(lab) if node.sidecar_pid is None]
                for node in lab:
                    node.stop_sidecar()  # it logs its own latency summary as it stops
                summaries = [sidecar_log_summary(node) for node in lab]
                if isinstance(store, str) and pg_started(store) != pg_at:
                    disturbed.append("the PostgreSQL server was restarted during the run "
                                     "(by other work on this machine)")
                cdrs, bad = store_check(store)
            results.append(NodesResult(label, loads, summaries, cdrs, bad, disturbed, pg_s))
    rows = []
    for r in results:
        for k, (lo, summary) in enumerate(zip(r.loads, r.summaries, strict=True)):
            m = _AUTH.search(summary or "")
            rows.append([r.label if k == 0 else "", str(k), fmt(lo.offered), fmt(lo.completed),
                         fmt(lo.failed), fmt(lo.counts.refused), ms(lo.reply(50)),
                         ms(lo.reply(99)), ms(max(lo.rtt.times("reply"), default=None)),
                         m.group(1) if m else "-", m.group(2) if m else "-",
                         fmt(lo.sidecar_ms, 3)])
    print(table(["", "node", "offered", "completed", "failed", "503s", "p50 ms", "p99 ms",
                 "max ms", "own p50", "own p99", "sidecar ms/call"], rows))
    print("  p50/p99/max: INVITE -> first non-100 reply as SIPp measured it (whole ms); own: "
          "the sidecar's log, Kamailio's offer -> its reply sent (ms);\n"
          "  503s: offers the sidecar answered busy (it saw them more than shed_after_ms "
          "after Kamailio sent them); sidecar ms/call: its CPU per completed call")
    for r in results:
        total = sum(r.cdrs.values())
        offered = sum(lo.offered for lo in r.loads)
        c = r.cores()
        pg = f", PostgreSQL {c['postgres']:.2f}" if r.postgres_s is not None else ""
        print(f"{r.label}: {total:,} CDRs for {offered:,} offered calls ("
              + ", ".join(f"{k} {v:,}" for k, v in r.cdrs.items())
              + f"); balances {'=' if not r.ledger_problems else 'NOT equal to'} their "
              f"ledgers")
        print(f"  cores used (of {os.cpu_count()}): Kamailios {c['kamailio']:.2f}, sidecars "
              f"{c['sidecar']:.2f}{pg}, SIPp and this script {c['tools']:.2f}, other work "
              f"{c['other']:.2f}; the machine {c['machine']:.2f}")
        for k, summary in enumerate(r.summaries):
            print(f"  node {k}, the sidecar's own log: {summary or '(no summary found)'}")
        for why in r.disturbed:
            print(f"  DISTURBED: {why}: these figures do not stand")
        if c["other"] > NOISY_CORES:
            print(f"  note: other work kept {c['other']:.2f} cores of the machine busy during "
                  f"the run: its figures are disturbed")
        for lo in r.loads:
            for note in lo.notes:
                print(f"  note: {note}")
    for r in results:
        if not r.label.startswith("PostgreSQL"):
            continue
        p99s = [lo.reply(99) for lo in r.loads]
        failed = sum(lo.failed for lo in r.loads)
        ok = None if r.disturbed else (
            failed == 0 and all(p is not None and p < 20 for p in p99s))
        print(f"{r.label}: reply p99 per node {', '.join(ms(p) + ' ms' for p in p99s)} at "
              f"{args.rate} calls/s per node, {failed:,} calls failed (target p99 < 20 ms, "
              f"none failed: {verdict(ok)})")


# ---------------------------------------------------------------------------- main
def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--keep", type=Path, default=None,
                        help="keep run directories (logs, SIPp statistics) under this one")
    common.add_argument("--define", action="append", default=[], metavar="NAME=VALUE",
                        help="a kamailio.cfg define for every Kamailio of the run (e.g. "
                             "OVERLOAD_AUTH_MS=30); repeatable")
    common.add_argument("--cfg", type=Path, default=None, metavar="PATH",
                        help="run the Kamailio of cpu, step, deck and soak with this "
                             "kamailio.cfg instead of the shipped one (to compare a "
                             "change, e.g. an older version from git show)")
    common.add_argument("--sidecar-nice", type=int, default=0, metavar="N",
                        help="run the sidecar of cpu, step, deck and soak at this nice level "
                             "(as a systemd unit's Nice=)")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cpu", parents=[common], help="CPU per call, alone vs with the sidecar")
    p.add_argument("--rate", type=int, default=400)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--repeat", type=int, default=1,
                   help="alternate the two runs this many times and print medians")
    p.set_defaults(func=cmd_cpu)
    p = sub.add_parser("step", parents=[common], help="rising rates, alone vs with the sidecar")
    p.add_argument("--rates", default="400,600,800,1000,1200")
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--max-minutes", type=float, default=40.0,
                   help="skip the steps that would not finish within this")
    p.set_defaults(func=cmd_step)
    p = sub.add_parser("deck", parents=[common], help="calls while a deck is imported")
    p.add_argument("--rate", type=int, default=50)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--lines", type=int, default=100_000)
    p.add_argument("--at", type=float, default=5.0, help="seconds into the calls")
    p.set_defaults(func=cmd_deck)
    p = sub.add_parser("soak", parents=[common], help="a long run, sampled every minute")
    p.add_argument("--rate", type=int, default=300)
    p.add_argument("--minutes", type=int, default=30)
    p.add_argument("--media", action="store_true", help="SIPp sends RTP; the sidecar captures")
    p.set_defaults(func=cmd_soak)
    p = sub.add_parser("nodes", parents=[common],
                       help="two nodes sharing one store: PostgreSQL beside SQLite")
    p.add_argument("--rate", type=int, default=200, help="calls/s per node")
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--setups", default="sqlite1,pg1,sqlite2,pg2",
                   help=f"comma-separated, in order: {', '.join(NODE_SETUPS)}")
    p.add_argument("--own-accounts", action="store_true",
                   help="each node its own postpaid account (default: one for all)")
    p.set_defaults(func=cmd_nodes)
    args = ap.parse_args(argv)
    for item in args.define:
        name, eq, value = item.partition("=")
        if not eq or not name.isidentifier():
            ap.error(f"--define {item!r}: expected NAME=VALUE")
        KAMAILIO_DEFINES[name] = int(value) if value.lstrip("-").isdigit() else value
    SIDECAR_NICE[0] = args.sidecar_nice
    if args.cfg is not None:
        if not args.cfg.is_file():
            ap.error(f"--cfg {args.cfg}: no such file")
        KAMAILIO_CFG[0] = args.cfg.resolve()
    # SIGTERM (e.g. from timeout(1)) unwinds like Ctrl-C: every lab and SIPp is stopped.
    signal.signal(signal.SIGTERM, _terminate)
    t0 = time.monotonic()
    args.func(args)
    print(f"[{args.command}: {time.monotonic() - t0:.0f} s]")


if __name__ == "__main__":
    main()
