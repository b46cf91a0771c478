"""rtpengine (Debian ``rtpengine-daemon``) for a test or a demo, as a context manager.

Runs the daemon in the foreground in userspace mode (``--table=-1``: no kernel
forwarding, nothing to load) on loopback: the ng control protocol on a free UDP port,
RTP on a range of ports below the kernel's ephemeral range, interface 127.0.0.1, no
configuration file (Debian's ``/etc/rtpengine/rtpengine.conf`` is ignored), logging to
``rtpengine.log`` in its run directory. Stopped with SIGTERM to its PID (SIGKILL if it
hangs), also on failure::

    with RtpEngine(run_dir) as rtpe:
        LiveLab(..., kamailio_defines={"WITH_RTPENGINE": None,
                                       "RTPENGINE_SOCK": rtpe.sock})
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from ..media.rtpengine import NgClient
from . import ensure_port_free, free_fixed_port

HOST = "127.0.0.1"


class RtpEngineError(RuntimeError):
    """rtpengine is missing, did not start or does not answer."""


class RtpEngine:
    """One rtpengine daemon on loopback."""

    def __init__(self, run_dir: Path, *, host: str = HOST, ng_port: int | None = None,
                 port_min: int | None = None, ports: int = 200, timeout_s: int = 60,
                 delete_delay_s: int | None = None,
                 binary: str = "rtpengine", startup_timeout: float = 10.0) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.host = host
        self.ng_port = ng_port if ng_port is not None else free_fixed_port(host)
        if port_min is None:  # an even base in 20000-30000, away from the ephemeral range
            port_min = random.Random().randrange(20_000, 30_000 - ports) & ~1
        self.port_min = port_min
        self.port_max = port_min + ports - 1
        self.timeout_s = timeout_s  # rtpengine ends a call without media after this long
        # s a deleted call stays queryable (and counting what still arrives); None:
        # rtpengine's default (30 s); 0: gone at once, counters frozen at the delete.
        self.delete_delay_s = delete_delay_s
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.pid_file = self.run_dir / "rtpengine.pid"
        self.log_path = self.run_dir / "rtpengine.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> str:
        """The ng address in Kamailio's ``rtpengine_sock`` form (``RTPENGINE_SOCK``)."""
        return f"udp:{self.host}:{self.ng_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def client(self, timeout: float = 2.0) -> NgClient:
        """An ng client for this daemon (``ping``, ``query``)."""
        return NgClient(self.host, self.ng_port, timeout)

    def command(self) -> list[str]:
        return [
            self.binary, "--config-file=none", "--foreground", "--log-stderr",
            "--table=-1", f"--interface={self.host}",
            f"--listen-ng={self.host}:{self.ng_port}",
            f"--port-min={self.port_min}", f"--port-max={self.port_max}",
            f"--timeout={self.timeout_s}", f"--pidfile={self.pid_file}",
        ] + ([] if self.delete_delay_s is None else [f"--delete-delay={self.delete_delay_s}"])

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self._proc is not None:
            raise RtpEngineError("already started")
        if shutil.which(self.binary) is None:
            raise RtpEngineError(f"{self.binary} not found: install Debian's rtpengine-daemon "
                                 "(scripts/setup)")
        ensure_port_free("udp", self.host, self.ng_port, "rtpengine ng listener")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        client = self.client(timeout=0.3)
        while True:
            if not self.running():
                code = self._proc.returncode if self._proc is not None else None
                raise RtpEngineError(f"rtpengine exited during startup (code {code}); log "
                                     f"{self.log_path}:\n{self.log_tail()}")
            try:
                if client.ping():
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RtpEngineError(f"rtpengine does not answer ng ping after "
                                     f"{self.startup_timeout} s; log {self.log_path}:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to the PID and wait; SIGKILL if it does not exit in ``timeout``."""
        p = self._proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()

    def log_tail(self, n: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
