"""The dashboard's cost to the sidecar: 1,000 calls up, without and with a dashboard
client connected to the live stream, in one run.

    python benchmarks/bench_dashboard.py [--rate 125] [--call-seconds 8.5] [--seconds 50]
                                         [--repeat 1] [--keep DIR]

The real Kamailio, the real ``sidecar run`` and real SIPp on loopback (``bench_live.py``'s
lab, load and CPU counters, reused from it), plus ``sidecar api`` on the same store as its
own process, as an operator runs it. ``--rate`` calls/s lasting ``--call-seconds`` each
keep rate x length calls up (125 x 8.5 s: about 1,060) once the first calls end; calls
are placed for ``--seconds``.

Two runs in the same lab, one after the other (``--repeat N``: N pairs, alternating which
goes first; medians): without a dashboard client (``sidecar api`` runs, idle), and with
one client reading ``GET /dashboard/live`` as the page does (fetch with the token,
``text/event-stream``). Printed side by side: calls placed and completed, calls up at
the peak (the stream's own count; without the client, Kamailio's active dialogs), the
sidecar's (``sidecar run``) CPU per completed call and whether the run with the client is
within 10% of the run without; the API process's cores; and the live view's update
interval as the client received it while at least 1,000 calls were up (target: at least
once a second).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bench_live as bl
from bench_live import (
    Load,
    bench_scenarios,
    fmt,
    make_db,
    new_lab,
    print_notes,
    process_cpu_s,
    run_load,
    settle,
    table,
    workdir,
)

from sidecar.lab import free_port
from sidecar.lab.live import LiveLab


@contextlib.contextmanager
def api_process(db: Path, run_dir: Path) -> Iterator[tuple[str, str, int]]:
    """``sidecar --db DB api`` on a free loopback port with a fresh read token; yields
    (base URL, token, PID). Stopped by its PID on exit, also on errors."""
    token = secrets.token_urlsafe(32)
    token_file = run_dir / "api-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    port = free_port("tcp", "127.0.0.1")
    with (run_dir / "api.log").open("ab") as log:
        proc = subprocess.Popen([*bl.sidecar_cli(), "--db", str(db), "api", "--listen",
                                 f"127.0.0.1:{port}", "--token-file", str(token_file)],
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("sidecar api did not start; see "
                                       f"{run_dir / 'api.log'}") from None
                time.sleep(0.1)
        yield base, token, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Client:
    """A dashboard client on its own thread: reads the live stream as the page does and
    records when each tick arrived and how many calls it showed."""

    base: str
    token: str
    ticks: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, calls)
    error: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.ticks and not self.error and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.ticks:
            raise RuntimeError(f"the dashboard client got no tick: {self.error or 'timeout'}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    async def _run(self) -> None:
        import aiohttp

        try:
            async with aiohttp.ClientSession() as http, http.get(
                    self.base + "/dashboard/live",
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=10)) as r:
                if r.status != 200:
                    self.error = f"HTTP {r.status}"
                    return
                buf = b""
                async for chunk in r.content.iter_any():
                    buf += chunk
                    while b"\n\n" in buf:
                        block, buf = buf.split(b"\n\n", 1)
                        for line in block.split(b"\n"):
                            if line.startswith(b"data:"):
                                doc = json.loads(line[5:])
                                self.ticks.append((time.monotonic(), len(doc.get("calls", []))))
                    if self._stop.is_set():
                        return
        except Exception as exc:  # reported with the figures
            self.error = f"{type(exc).__name__}: {exc}"

    def intervals(self, min_calls: int) -> list[float]:
        """Seconds between ticks while at least ``min_calls`` calls were up."""
        return [b[0] - a[0] for a, b in zip(self.ticks, self.ticks[1:], strict=False)
                if a[1] >= min_calls and b[1] >= min_calls]


@dataclass
class Run:
    load: Load
    api_cores: float
    peak_calls: int
    client: Client | None = None


class PeakDialogs:
    """``on_tick``: Kamailio's active dialogs every 2 s (the peak of calls up)."""

    def __init__(self, lab: LiveLab) -> None:
        self.lab = lab
        self.peak = 0
        self.last = 0.0

    def tick(self, elapsed: float, running: object) -> None:
        if elapsed - self.last < 2.0:
            return
        self.last = elapsed
        with contextlib.suppress(OSError, RuntimeError, KeyError, TypeError, ValueError):
            self.peak = max(self.peak, int(self.lab.kam.rpc("dlg.stats_active")["all"]))


def one_run(lab: LiveLab, scn: bl.Scenarios, api: tuple[str, str, int], *, dashboard: bool,
            rate: int, seconds: float, label: str) -> Run:
    base, token, api_pid = api
    client = Client(base, token) if dashboard else None
    if client is not None:
        client.start()
    peak = PeakDialogs(lab)
    api0, t0 = process_cpu_s(api_pid), time.monotonic()
    try:
        load = run_load(lab, scn, label=label, rate=rate, seconds=seconds,
                        on_tick=None if dashboard else peak.tick)
    finally:
        if client is not None:
            client.stop()
    api_cores = (process_cpu_s(api_pid) - api0) / (time.monotonic() - t0)
    calls = max((n for _, n in client.ticks), default=0) if client else peak.peak
    return Run(load, api_cores, calls, client)


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, default=125, help="calls per second (125)")
    p.add_argument("--call-seconds", type=float, default=8.5, help="length of a call (8.5)")
    p.add_argument("--seconds", type=float, default=50, help="how long calls are placed (50)")
    p.add_argument("--repeat", type=int, default=1, help="pairs of runs (medians)")
    p.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    args = p.parse_args(argv)
    bl.CALL_MS = int(args.call_seconds * 1000)  # bench_live's loads read it at start
    up = args.rate * args.call_seconds
    print(f"dashboard: {args.rate} calls/s for {args.seconds:.0f} s, {args.call_seconds} s "
          f"calls (about {up:,.0f} up), signalling only; the sidecar's CPU per call without "
          "and with a dashboard client on the live stream")
    without: list[Run] = []
    with_: list[Run] = []
    with workdir(args.keep, "bench-dashboard-") as d:
        scn = bench_scenarios(d / "scenarios", media=False)
        db = make_db(d / "bench.db")
        with new_lab(d / "lab", db, sidecar=True) as lab, api_process(db, d) as api:
            settle([lab])
            for n in range(1, args.repeat + 1):
                order = (False, True) if n % 2 else (True, False)
                for dash in order:
                    label = f"{'with' if dash else 'without'} dashboard #{n}"
                    run = one_run(lab, scn, api, dashboard=dash, rate=args.rate,
                                  seconds=args.seconds, label=label)
                    (with_ if dash else without).append(run)
                    settle([lab])

    def both(f: Callable[[Run], float | None], digits: int = 0) -> list[str]:
        return [fmt(median([f(r) for r in without]), digits),
                fmt(median([f(r) for r in with_]), digits)]

    rows = [
        ["offered calls", *both(lambda r: r.load.offered)],
        ["completed calls", *both(lambda r: r.load.completed)],
        ["failed calls", *both(lambda r: r.load.failed)],
        ["calls up at the peak", *both(lambda r: r.peak_calls)],
        ["sidecar run CPU ms/call", *both(lambda r: r.load.sidecar_ms, 3)],
        ["Kamailio CPU ms/call", *both(lambda r: r.load.kamailio_ms, 3)],
        ["cores: sidecar run", *both(lambda r: r.load.cores["sidecar"], 3)],
        ["cores: sidecar api", *both(lambda r: r.api_cores, 3)],
        ["cores: other load on the machine", *both(lambda r: r.load.cores["other"], 2)],
    ]
    print(table(["", "no dashboard", "dashboard client"], rows))
    a = median([r.load.sidecar_ms for r in without])
    b = median([r.load.sidecar_ms for r in with_])
    if a and b:
        change = (b / a - 1) * 100
        print(f"sidecar run CPU per call with the dashboard: {change:+.1f}% "
              f"(target: at most 10% more: {'met' if change <= 10 else 'missed'})")
    gaps = [g for r in with_ if r.client for g in r.client.intervals(1000)]
    if gaps:
        gaps.sort()
        p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
        print(f"live view updates with >= 1,000 calls up: {len(gaps)} intervals, mean "
              f"{statistics.mean(gaps):.3f} s, p99 {p99:.3f} s, max {gaps[-1]:.3f} s "
              f"(target: at least once a second: {'met' if gaps[-1] <= 1.0 else 'missed'})")
    else:
        print("live view: no two ticks with >= 1,000 calls up (raise --rate or "
              "--call-seconds)")
    for r in with_:
        if r.client and r.client.error:
            print(f"note: the dashboard client stopped: {r.client.error}")
    api_ms = median([r.api_cores * 1000 / r.load.completed_per_s
                     if r.load.completed_per_s else None for r in with_])
    if api_ms is not None:
        print(f"the dashboard's own cost (sidecar api, its own process): "
              f"{median([r.api_cores for r in with_]):.3f} cores, {api_ms:.3f} ms per call "
              "(per tick, not per call: the same at any call rate with as many calls up)")
        if a and b:
            print(f"sidecar run + sidecar api per call: {a:.3f} ms without the dashboard, "
                  f"{b + api_ms:.3f} ms with it ({((b + api_ms) / a - 1) * 100:+.1f}%)")
    print_notes([r.load for r in (*without, *with_)])


if __name__ == "__main__":
    main()
