"""Run the shipped Kamailio configuration in a private run directory, and talk JSON-RPC to it.

:class:`KamailioProcess` starts ``kamailio -f kamailio/kamailio.cfg`` in the foreground
(``-DD -E``) with ``-A NAME=VALUE`` overrides for every ``#!trydef`` switch the
configuration offers, so that tests and demos can pick their own ports and socket paths.
It refuses to start when the SIP UDP port or the evapi TCP port is taken (a second
Kamailio on the same UDP port would start anyway and steal traffic), waits until the
JSON-RPC socket answers and evapi listens, logs to ``RUN/kamailio.log`` and stops with
SIGTERM to the main PID, also on exceptions.

:class:`JsonRpcDatagramClient` is the small synchronous JSON-RPC 2.0 client over the UNIX
datagram socket of the ``jsonrpcs`` module, for the lab only: the sidecar proper has its
own asyncio client.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from . import KAMAILIO_DIR, ensure_port_free, port_is_bound

#: The configuration the project ships.
DEFAULT_CFG = KAMAILIO_DIR / "kamailio.cfg"

# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
_MAX_UNIX_PATH = 107


class KamailioError(RuntimeError):
    """Kamailio did not start, or stopped unexpectedly."""


class JsonRpcError(RuntimeError):
    """Kamailio answered a JSON-RPC request with an error object."""

    def __init__(self, method: str, code: int, message: str) -> None:
        self.method = method
        self.code = code
        self.message = message
        super().__init__(f"{method}: error {code}: {message}")


def _check_unix_path(path: Path) -> None:
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise ValueError(
            f"UNIX socket path too long ({len(os.fsencode(path))} > {_MAX_UNIX_PATH} bytes): "
            f"{path}; use a shorter run directory"
        )


class JsonRpcDatagramClient:
    """Synchronous JSON-RPC 2.0 over Kamailio's UNIX datagram socket (``jsonrpcs``).

    The client binds its own socket file, because Kamailio sends the reply to the
    sender's address; the file is removed on :meth:`close`.
    """

    _ids = itertools.count(1)

    def __init__(self, server_path: Path, client_path: Path, timeout: float = 2.0) -> None:
        _check_unix_path(server_path)
        _check_unix_path(client_path)
        self.server_path = server_path
        self.client_path = client_path
        client_path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(os.fspath(client_path))
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(timeout)

    def call(self, method: str, *params: str | int) -> Any:
        """Send one request and return its ``result``; raise :class:`JsonRpcError` on error.

        Parameters are positional: Kamailio's RPC ignores names and reads them in order.
        """
        request_id = next(self._ids)
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params:
            request["params"] = list(params)
        self._sock.sendto(json.dumps(request).encode(), os.fspath(self.server_path))
        while True:
            data = self._sock.recv(1 << 20)
            reply = json.loads(data)
            if reply.get("id") != request_id:
                continue  # a late answer to an earlier request that timed out
            if "error" in reply:
                err = reply["error"]
                raise JsonRpcError(method, int(err.get("code", 0)), str(err.get("message", "")))
            return reply.get("result")

    def close(self) -> None:
        """Close the socket and remove its file."""
        self._sock.close()
        self.client_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class KamailioSettings:
    """The ``#!define`` switches of ``kamailio.cfg`` that the lab sets (all have defaults)."""

    sip_ip: str = "127.0.0.1"
    sip_port: int = 5060
    #: Where every authorized INVITE goes (the carrier, or a SIPp UAS in the lab).
    dest: str = "sip:127.0.0.1:5080"
    evapi_ip: str = "127.0.0.1"
    evapi_port: int = 8448
    #: ms the suspended INVITE waits for the sidecar's ``auth``.
    auth_timeout_ms: int = 2000
    #: ms the forwarded INVITE may ring before a local 408.
    pre_answer_timeout_ms: int = 60000
    #: s of dialog lifetime without a sidecar ``max_duration`` (FAIL_OPEN calls).
    default_max_duration_s: int = 10800
    #: Relay calls when no sidecar is connected or it does not answer (default: 503).
    fail_open: bool = False
    #: Log every event sent to and received from the sidecar.
    log_events: bool = False
    #: SIP worker processes.
    children: int = 4
    #: Further ``-A`` defines: ``None`` defines a flag, strings are passed quoted.
    extra_defines: Mapping[str, str | int | None] = field(default_factory=dict)
    #: Shared and private memory, MB. Shared: about 0.22 MB per call/s of short calls (their
    #: transactions stay 5 s after they complete); 1024 holds the 3,000 calls/s and more
    #: the benchmarks offer, where the CPU, not the memory, is the limit.
    shm_mb: int = 1024
    pkg_mb: int = 8

    @property
    def evapi_bind(self) -> str:
        """``ip:port`` of the evapi listener."""
        return f"{self.evapi_ip}:{self.evapi_port}"


def _quoted(value: str) -> str:
    if '"' in value or "\n" in value:
        raise ValueError(f"value not usable as a Kamailio string define: {value!r}")
    return f'"{value}"'


class KamailioProcess:
    """One Kamailio instance for a test or a demo, as a context manager.

    ``with KamailioProcess(run_dir, KamailioSettings(sip_port=5070)) as kam:`` starts it
    and waits until it answers; ``kam.rpc("dlg.list")`` queries it; leaving the block
    stops it, also on exceptions.
    """

    def __init__(
        self,
        run_dir: Path,
        settings: KamailioSettings | None = None,
        *,
        cfg: Path = DEFAULT_CFG,
        kamailio_bin: str = "kamailio",
        startup_timeout: float = 15.0,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.settings = settings or KamailioSettings()
        self.cfg = Path(cfg).resolve()
        self.kamailio_bin = kamailio_bin
        self.startup_timeout = startup_timeout
        # Absolute paths: Kamailio changes its working directory to "/" before
        # writing the pid file, so a relative -P lands in /.
        self.pid_file = self.run_dir / "kamailio.pid"
        self.log_path = self.run_dir / "kamailio.log"
        self.rpc_socket = self.run_dir / "rpc.sock"
        self.ctl_socket = self.run_dir / "ctl.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._client_ids = itertools.count(1)

    # ------------------------------------------------------------------ command line
    def defines(self) -> dict[str, str | None]:
        """The ``-A`` defines passed to Kamailio, as NAME -> value (``None`` for a flag)."""
        s = self.settings
        out: dict[str, str | None] = {
            "SIP_IP": s.sip_ip,
            "SIP_PORT": str(s.sip_port),
            "DEST": _quoted(s.dest),
            "EVAPI_BIND": _quoted(s.evapi_bind),
            "RPC_SOCK": _quoted(os.fspath(self.rpc_socket)),
            "CTL_SOCK": _quoted("unix:" + os.fspath(self.ctl_socket)),
            "AUTH_TIMEOUT": str(s.auth_timeout_ms),
            "PRE_ANSWER_TIMEOUT": str(s.pre_answer_timeout_ms),
            "DEFAULT_MAX_DURATION": str(s.default_max_duration_s),
            "CHILDREN": str(s.children),
        }
        if s.fail_open:
            out["FAIL_OPEN"] = None
        if s.log_events:
            out["WITH_DEBUG"] = None
        for name, value in s.extra_defines.items():
            if value is None:
                out[name] = None
            elif isinstance(value, int):
                out[name] = str(value)
            else:
                out[name] = _quoted(value)
        return out

    def command(self) -> list[str]:
        """The full ``kamailio`` command line."""
        argv = [
            self.kamailio_bin,
            "-f", os.fspath(self.cfg),
            "-P", os.fspath(self.pid_file),
            "-Y", os.fspath(self.run_dir),
            "-m", str(self.settings.shm_mb),
            "-M", str(self.settings.pkg_mb),
            "-DD",
            "-E",
        ]  # fmt: skip
        for name, value in self.defines().items():
            argv += ["-A", name if value is None else f"{name}={value}"]
        return argv

    # ------------------------------------------------------------------ life cycle
    @property
    def pid(self) -> int | None:
        """PID of the main Kamailio process, while it runs."""
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        """Whether the main process is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Check the ports, start Kamailio and wait until it answers; raise on failure."""
        if self._proc is not None:
            raise KamailioError("already started")
        if not self.cfg.is_file():
            raise KamailioError(f"configuration not found: {self.cfg}")
        s = self.settings
        ensure_port_free("udp", s.sip_ip, s.sip_port, "Kamailio SIP listener")
        ensure_port_free("tcp", s.evapi_ip, s.evapi_port, "Kamailio evapi listener")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.rpc_socket, self.ctl_socket):
            _check_unix_path(path)
        with open(self.log_path, "ab") as log:
            # A session of its own: if the main process ever has to be killed, its
            # children (which would keep the ports) go with the process group.
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        s = self.settings
        while True:
            if not self.running():
                raise KamailioError(
                    f"kamailio exited during startup (code {self._returncode()}); "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if (
                self.rpc_socket.exists()
                and port_is_bound("udp", s.sip_ip, s.sip_port)
                and port_is_bound("tcp", s.evapi_ip, s.evapi_port)
            ):
                try:
                    self.rpc("core.version", timeout=0.5)
                    return
                except (OSError, JsonRpcError):
                    pass
            if time.monotonic() > deadline:
                raise KamailioError(
                    f"kamailio not ready after {self.startup_timeout} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM to the main PID and wait; SIGKILL the process group as a last resort.

        Returns the exit code of the main process (``None`` if it was never started).
        """
        proc = self._proc
        if proc is None:
            return None
        pgid = proc.pid  # start_new_session: the main process leads its own group
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(pgid)
                proc.wait(timeout)
        # The children exit within about a second of the main process.
        deadline = time.monotonic() + timeout
        while _group_alive(pgid):
            if time.monotonic() > deadline:
                _kill_group(pgid)
                break
            time.sleep(0.05)
        return proc.returncode

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

    # ------------------------------------------------------------------ helpers
    def log_text(self) -> str:
        """Everything Kamailio logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def rpc_client(self, timeout: float = 2.0) -> JsonRpcDatagramClient:
        """A new JSON-RPC client bound to a fresh socket file in the run directory."""
        client_path = self.run_dir / f"rpc-client-{os.getpid()}-{next(self._client_ids)}.sock"
        return JsonRpcDatagramClient(self.rpc_socket, client_path, timeout)

    def rpc(self, method: str, *params: str | int, timeout: float = 2.0) -> Any:
        """One JSON-RPC call (``dlg.list``, ``dlg.end_dlg``, ``core.version`` ...)."""
        with self.rpc_client(timeout) as client:
            return client.call(method, *params)

    def evapi_clients(self) -> int:
        """How many evapi clients (sidecars) the configuration counts as connected."""
        result = self.rpc("pv.shvGet", "evapi_clients")
        return int(result["value"])

    def wait_evapi_clients(self, count: int, timeout: float = 5.0) -> None:
        """Wait until Kamailio has counted ``count`` evapi clients.

        Connecting is not enough: the count is updated by the evapi dispatcher process
        afterwards, and an INVITE sent in between would find no sidecar.
        """
        deadline = time.monotonic() + timeout
        while (current := self.evapi_clients()) != count:
            if time.monotonic() > deadline:
                raise KamailioError(f"{current} evapi clients counted, expected {count}")
            time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
