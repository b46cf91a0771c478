"""The whole live path in a box: Kamailio + the real ``sidecar run`` + SIPp.

Used by the end-to-end tests and the demo. Everything started here is stopped by PID
when the block ends, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ..store.migrate import is_url
from . import free_port
from .kamailio import DEFAULT_CFG, KamailioProcess, KamailioSettings
from .netns import VethNamespace
from .sipp import Sipp, SippProcess

HOST = "127.0.0.1"


class LiveLab:
    """Kamailio with the shipped config, the sidecar connected to it, SIPp on demand."""

    def __init__(self, run_dir: Path, db: Path | str, *, fail_open: bool = False,
                 auth_timeout_ms: int = 2000, log_events: bool = False,
                 pre_answer_timeout_ms: int = 60_000, extra_config: str = "",
                 carrier: VethNamespace | None = None, with_sidecar: bool = True,
                 kamailio_defines: Mapping[str, str | int | None] | None = None,
                 journal: Path | None = None, metrics: bool = False,
                 kamailio_cfg: Path | None = None, sidecar_nice: int = 0) -> None:
        self.run_dir = Path(run_dir).resolve()
        # False: Kamailio (and SIPp) only, no sidecar started on entry (a baseline; with
        # fail_open the calls are relayed without authorization). start_sidecar() still works.
        self.with_sidecar = with_sidecar
        # The sidecar's CPU priority (``nice``): > 0 yields the CPU to Kamailio on a
        # saturated machine, as a unit with ``Nice=`` does.
        self.sidecar_nice = sidecar_nice
        # A SQLite path (made absolute), or a postgresql:// URL kept as given (several
        # nodes' sidecars share one store: sidecar.lab.nodes).
        self.db: Path | str = db if isinstance(db, str) and is_url(db) else Path(db).resolve()
        self.journal = Path(journal).resolve() if journal else None  # default: beside db
        # With ``carrier``, the callee (SIPp UAS) runs in that network namespace, reached
        # over its veth pair: Kamailio and the caller use the host end's address.
        self.carrier = carrier
        sip_ip = carrier.host_ip if carrier else HOST
        uas_ip = carrier.ns_ip if carrier else HOST
        self.uas_port = 5060 if carrier else free_port("udp", HOST)
        self.settings = KamailioSettings(
            sip_ip=sip_ip, sip_port=free_port("udp", sip_ip), evapi_ip=HOST,
            evapi_port=free_port("tcp", HOST), dest=f"sip:{uas_ip}:{self.uas_port}",
            children=4, log_events=log_events, fail_open=fail_open,
            auth_timeout_ms=auth_timeout_ms, pre_answer_timeout_ms=pre_answer_timeout_ms,
            extra_defines=dict(kamailio_defines or {}))  # e.g. {"DBG_LEVEL": 1}
        # ``kamailio_cfg``: another configuration than the shipped one (a benchmark's A/B).
        self.kam = KamailioProcess(self.run_dir / "kamailio", self.settings,
                                   cfg=kamailio_cfg or DEFAULT_CFG)
        self.sipp = Sipp(self.run_dir / "sipp", host=sip_ip)
        self.uas_sipp = Sipp(self.run_dir / "sipp-carrier", host=uas_ip,
                             command_prefix=carrier.command() if carrier else ())
        self.config_path = self.run_dir / "sidecar.toml"
        self.extra_config = extra_config  # more TOML for sidecar.toml (e.g. a [media] table)
        # The sidecar's /metrics and /health/* on a free port (``metrics_url``), else off:
        # labs side by side must not share the default port.
        self.metrics_port = free_port("tcp", HOST) if metrics else None
        self.sidecar_log = self.run_dir / "sidecar.log"
        self._sidecar: subprocess.Popen[bytes] | None = None
        # This Kamailio's node name (``sidecar run --node``): one per lab, so the labs of
        # several nodes on one host (sharing a store) each have their own leader lock.
        self.node = f"lab-{self.settings.evapi_port}"
        # More ``sidecar run`` processes for this Kamailio (standbys): name -> process.
        self._spawned: dict[str, subprocess.Popen[bytes]] = {}
        self._stack = contextlib.ExitStack()

    @property
    def target(self) -> str:
        """Where callers send INVITEs."""
        return f"{self.settings.sip_ip}:{self.settings.sip_port}"

    def __enter__(self) -> Self:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "[database]\n"
            f'path = "{self.db}"\n'
            + (f'journal = "{self.journal}"\n' if self.journal else "")
            + "[metrics]\n"
            + (f'listen = "{HOST}:{self.metrics_port}"\n' if self.metrics_port else
               'listen = ""\n')
            + "[kamailio]\n"
            f'evapi_host = "{self.settings.evapi_ip}"\n'
            f"evapi_port = {self.settings.evapi_port}\n"
            f'rpc_socket = "{self.kam.rpc_socket}"\n' + self.extra_config)
        self._stack.enter_context(self.kam)
        self._stack.callback(self.stop_sidecar)
        self._stack.callback(self._stop_spawned)
        if self.with_sidecar:
            try:
                self.start_sidecar()
            except BaseException:  # __exit__ will not run: stop Kamailio (by PID) here
                self._stack.close()
                raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.close()

    @property
    def metrics_url(self) -> str:
        """The sidecar's metrics and health server (a lab made with ``metrics=True``)."""
        if self.metrics_port is None:
            raise RuntimeError("this lab was made without metrics=True")
        return f"http://{HOST}:{self.metrics_port}"

    @property
    def sidecar_pid(self) -> int | None:
        """PID of the running ``sidecar run`` process (``None`` when it is not running)."""
        p = self._sidecar
        return p.pid if p is not None and p.poll() is None else None

    def start_sidecar(self, timeout: float = 10.0) -> None:
        """Start ``sidecar run`` and wait until Kamailio counts it as connected."""
        if self._sidecar is not None and self._sidecar.poll() is None:
            return
        log = self.sidecar_log.open("ab")
        nice = self.sidecar_nice
        self._sidecar = subprocess.Popen(self.sidecar_argv(), stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL,
                                         preexec_fn=(lambda: os.nice(nice)) if nice else None)
        log.close()
        deadline = time.monotonic() + timeout
        while self.kam.evapi_clients() < 1:
            if self._sidecar.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self._sidecar.returncode}:\n"
                                   f"{self.sidecar_log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("sidecar did not connect to Kamailio's evapi in time")
            time.sleep(0.05)

    def stop_sidecar(self, timeout: float = 5.0, *, kill: bool = False) -> None:
        """SIGTERM the sidecar and wait for it (SIGKILL if it hangs); ``kill``: SIGKILL at
        once, as a crash would end it."""
        p = self._sidecar
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        deadline = time.monotonic() + timeout
        while (self.kam.running() and self.kam.evapi_clients() > 0
               and time.monotonic() < deadline):  # (a test may have stopped Kamailio)
            time.sleep(0.05)

    # --- more sidecars for this Kamailio: standbys ------------------------------------------
    def sidecar_argv(self, *extra: str) -> list[str]:
        """The ``sidecar run`` command line of this lab's node (its store, configuration
        and node name)."""
        return [sys.executable, "-m", "sidecar", "--db", str(self.db), "run", "--config",
                str(self.config_path), "--log-format", "json", "--node", self.node, *extra]

    def spawn_sidecar(self, name: str, *extra: str) -> int:
        """Start one more ``sidecar run`` for this Kamailio (the same node: a standby while
        another one is active) with its own log (:meth:`spawned_log`); do not wait for it.
        Its PID. Stopped by PID when the lab ends, also on failure."""
        if name in self._spawned and self._spawned[name].poll() is None:
            raise RuntimeError(f"sidecar {name} is already running")
        with self.spawned_log(name).open("ab") as log:
            proc = subprocess.Popen(self.sidecar_argv(*extra), stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL)
        self._spawned[name] = proc
        return proc.pid

    def spawned_log(self, name: str) -> Path:
        """The log file of the sidecar started as ``name`` by :meth:`spawn_sidecar`."""
        return self.run_dir / f"sidecar-{name}.log"

    def _sidecar_procs(self) -> list[subprocess.Popen[bytes]]:
        procs = list(self._spawned.values())
        return procs if self._sidecar is None else [self._sidecar, *procs]

    def sidecar_exit_code(self, pid: int) -> int | None:
        """The exit status of a sidecar this lab started (None while it runs)."""
        for p in self._sidecar_procs():
            if p.pid == pid:
                return p.poll()
        raise KeyError(f"no sidecar with PID {pid} was started here")

    def kill_sidecar(self, pid: int, *, kill: bool = False, timeout: float = 5.0) -> None:
        """Stop one sidecar this lab started (the first one or a spawned one) by its PID:
        SIGTERM and wait (SIGKILL if it hangs); ``kill``: SIGKILL at once, as a crash.
        Does not wait for Kamailio's count: a standby may be connecting already."""
        procs = [p for p in self._sidecar_procs() if p.pid == pid]
        if not procs:
            raise KeyError(f"no sidecar with PID {pid} was started here")
        p = procs[0]
        if p.poll() is not None:
            return
        p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def _stop_spawned(self) -> None:
        for proc in self._spawned.values():
            if proc.poll() is None:
                self.kill_sidecar(proc.pid)

    def evapi_connected_pids(self) -> set[int]:
        """The PIDs of the sidecars started here that hold a TCP connection to Kamailio's
        evapi port (established), read from /proc: who is connected, not only how many."""
        out = set()
        for p in self._sidecar_procs():
            if p.poll() is None and _has_tcp_peer(p.pid, self.settings.evapi_ip,
                                                  self.settings.evapi_port):
                out.add(p.pid)
        return out

    def wait_connected(self, pid: int, timeout: float = 10.0) -> float:
        """Wait until the sidecar ``pid`` is the one client Kamailio counts on evapi (and
        holds the connection); the seconds it took."""
        t0 = time.monotonic()
        while True:
            if self.kam.evapi_clients() == 1 and self.evapi_connected_pids() == {pid}:
                return time.monotonic() - t0
            if self.sidecar_exit_code(pid) is not None:
                raise RuntimeError(f"sidecar {pid} exited with {self.sidecar_exit_code(pid)}")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(
                    f"sidecar {pid} not the one evapi client after {timeout} s (Kamailio "
                    f"counts {self.kam.evapi_clients()}, connected: "
                    f"{self.evapi_connected_pids()})")
            time.sleep(0.02)

    def uas(self, scenario: str = "uas.xml", **kw: Any) -> SippProcess:
        """Start the callee (the carrier) at Kamailio's destination."""
        return self._stack.enter_context(self.uas_sipp.start_uas(scenario, port=self.uas_port,
                                                                 **kw))

    def uac(self, scenario: str = "uac.xml", **kw: Any) -> SippProcess:
        """Start a caller through Kamailio (in the background)."""
        return self._stack.enter_context(self.sipp.start_uac(self.target, scenario, **kw))

    def log_tail(self, n: int = 40) -> str:
        """The end of the sidecar's and Kamailio's logs, for failure messages."""
        side = self.sidecar_log.read_text(errors="replace").splitlines()[-n:] \
            if self.sidecar_log.exists() else []
        return "sidecar:\n" + "\n".join(side) + "\nkamailio:\n" + self.kam.log_tail(n)


def _has_tcp_peer(pid: int, host: str, port: int) -> bool:
    """Whether process ``pid`` owns an established IPv4 TCP connection to ``host:port``
    (its socket inodes, matched in the /proc/PID/net/tcp table)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        with open(f"/proc/{pid}/net/tcp", encoding="ascii") as fh:
            next(fh)  # header
            rows = [line.split() for line in fh]
    except OSError:  # gone meanwhile
        return False
    want = f"{int.from_bytes(socket.inet_aton(host), 'little'):08X}:{port:04X}"
    established = "01"
    return any(f[2] == want and f[3] == established and f[9] in inodes for f in rows)
