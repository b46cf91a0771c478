"""The lab: the real Kamailio and SIPp on this machine, driven from Python.

Used by the end-to-end tests (``tests/lab``) and the demo, never by the sidecar proper.

- :mod:`sidecar.lab.kamailio`: :class:`~sidecar.lab.kamailio.KamailioProcess` runs the
  shipped ``kamailio/kamailio.cfg`` in its own run directory; a minimal synchronous
  JSON-RPC datagram client talks to it (``dlg.list``, ``dlg.end_dlg``).
- :mod:`sidecar.lab.sipp`: :class:`~sidecar.lab.sipp.Sipp` starts the scenarios of
  ``kamailio/sipp/`` (a UAS in the background, a UAC to completion) and reads back
  SIPp's own statistics and message traces.
- :mod:`sidecar.lab.live`: the whole live path in a box (Kamailio + ``sidecar run`` + SIPp).
- :mod:`sidecar.lab.netns`: a network namespace joined by a veth pair (a carrier "host").
- :mod:`sidecar.lab.audio` and :mod:`sidecar.lab.record`: the FAS scenarios' audio and the
  recorder of the reference captures in ``pcaps/``.

This module holds the few port helpers both need. Everything here is Linux-only
(``/proc/net``), like the rest of the lab.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Self

Transport = Literal["udp", "tcp"]

#: The repository's ``kamailio/`` directory (configuration and SIPp scenarios).
KAMAILIO_DIR = Path(__file__).resolve().parents[2] / "kamailio"


class PortInUseError(RuntimeError):
    """A port the lab needs is taken by another process."""

    def __init__(self, transport: Transport, host: str, port: int, what: str) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        super().__init__(
            f"{what}: {transport.upper()} port {host}:{port} is already in use "
            "(another Kamailio or SIPp still running?)"
        )


def ensure_port_free(transport: Transport, host: str, port: int, what: str) -> None:
    """Raise :class:`PortInUseError` naming ``what`` if ``host:port`` cannot be bound.

    UDP is checked with a plain bind: Kamailio sets SO_REUSEADDR on its UDP sockets, so a
    second instance would start and steal traffic, while a plain bind fails. TCP is checked
    with SO_REUSEADDR so that connections left in TIME_WAIT do not count, only a listener.
    """
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if transport == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(transport, host, port, what) from exc
            raise


#: Where the lab's own ports come from: below the kernel's ephemeral range (32768+ by
#: default), so that between the check and the bind of the process a port is meant for,
#: no socket bound to port 0 (a client's, any process's) can be given it; and below
#: 20000-30000, where the lab's rtpengine takes its media ports.
LAB_PORTS = (10_000, 20_000)

_handed_lock = threading.Lock()
_handed: set[int] = set()


def _can_bind(kind: int, host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _pick(host: str, low: int, high: int, size: int, step: int,
          kinds: tuple[int, ...]) -> int:
    """A base ``p`` (a multiple of ``step``) in ``[low, high)`` with ``p .. p+size-1``
    free for every socket kind in ``kinds`` and not handed out before by this process
    (two ports asked for one after the other are never the same)."""
    rng = random.Random()
    with _handed_lock:
        if len(_handed) > (high - low) // 2:
            _handed.clear()
        for _ in range(500):
            base = rng.randrange(low, high - size)
            base -= base % step
            span = range(base, base + size)
            if any(port in _handed for port in span):
                continue
            if all(_can_bind(kind, host, port) for port in span for kind in kinds):
                _handed.update(span)
                return base
    raise RuntimeError(f"no {size} free port(s) in {low}-{high} on {host}")


def free_port(transport: Transport, host: str = "127.0.0.1") -> int:
    """A port free right now, from :data:`LAB_PORTS` (never the ephemeral range)."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    return _pick(host, *LAB_PORTS, size=1, step=1, kinds=(kind,))


def free_fixed_port(host: str = "127.0.0.1") -> int:
    """A free UDP port from :data:`LAB_PORTS` (a control port, an rtpengine ng port)."""
    return free_port("udp", host)


def free_port_block(host: str = "127.0.0.1", size: int = 4, step: int = 2) -> int:
    """An even UDP port ``p`` with ``p .. p+size-1`` all free (SIPp media uses p and p+2)."""
    return _pick(host, *LAB_PORTS, size=size, step=step, kinds=(socket.SOCK_DGRAM,))


def _proc_net_entries(transport: Transport, pid: int | None = None
                      ) -> list[tuple[str, int, str, str]]:
    """(local IPv4 address, port, state, inode) of every IPv4 socket in
    /proc/net/{udp,tcp}, or in the network namespace of process ``pid`` (/proc/PID/net/...)."""
    entries: list[tuple[str, int, str, str]] = []
    base = "/proc/net" if pid is None else f"/proc/{pid}/net"
    with open(f"{base}/{transport}", encoding="ascii") as fh:
        next(fh)  # header
        for line in fh:
            fields = line.split()
            addr_hex, port_hex = fields[1].split(":")
            addr = socket.inet_ntoa(int(addr_hex, 16).to_bytes(4, "little"))
            entries.append((addr, int(port_hex, 16), fields[3], fields[9]))
    return entries


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds open (/proc/PID/fd)."""
    inodes: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _bound(entries: list[tuple[str, int, str, str]], transport: Transport, host: str,
           port: int, inodes: set[str] | None = None) -> bool:
    tcp_listen = "0A"
    for addr, bound_port, state, inode in entries:
        if bound_port != port or addr not in (host, "0.0.0.0"):
            continue
        if inodes is not None and inode not in inodes:
            continue
        if transport == "udp" or state == tcp_listen:
            return True
    return False


def port_is_bound(transport: Transport, host: str, port: int, pid: int | None = None) -> bool:
    """Whether some socket is bound to ``host:port`` (a TCP one must be listening), in
    this network namespace or in that of process ``pid``.

    Reads /proc/net instead of trying to bind, so that a check never steals the port
    from the process that is about to bind it.
    """
    return _bound(_proc_net_entries(transport, pid), transport, host, port)


def ports_bound_by(pid: int, transport: Transport, host: str, ports: Iterable[int]) -> bool:
    """Whether process ``pid`` itself holds a socket bound to ``host:port`` (a TCP one
    listening) for every port of ``ports``, in its network namespace; False once it is gone.

    Unlike :func:`port_is_bound`, a socket of another process on one of those ports does
    not count: a process that bound some of its ports and is about to exit because
    another socket holds the next one is not taken for started.
    """
    try:
        inodes = _socket_inodes(pid)
        entries = _proc_net_entries(transport, pid)
    except OSError:  # gone meanwhile
        return False
    return all(_bound(entries, transport, host, port, inodes) for port in ports)


class Every:
    """Calls :meth:`tick` every ``interval_s`` in a daemon thread while its ``with`` block
    runs (samplers and watchdogs of the lab's tests); stopped and joined at the end."""

    interval_s = 0.05

    def __init__(self, name: str = "lab-every") -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.tick()

    def tick(self) -> None:
        raise NotImplementedError
