"""systemd's service notification protocol (``sd_notify(3)``), in a few lines.

A service started with ``Type=notify`` tells systemd how it is doing by sending one
datagram of ``KEY=VALUE`` lines to the UNIX datagram socket named by ``$NOTIFY_SOCKET``
(a path, or an abstract socket when it starts with ``@``):

    READY=1              started: systemd reports the unit active (``systemctl start`` returns)
    STATUS=...           one line shown by ``systemctl status``
    RELOADING=1          a configuration reload began (``READY=1`` again when it is done)
    STOPPING=1           shutting down
    WATCHDOG=1           still alive (with ``WatchdogSec=``: every ``$WATCHDOG_USEC`` / 2)

Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing. A failed send is
logged once and never raised: the sidecar's work does not depend on systemd hearing it.
The send is one non-blocking ``sendto`` on a local socket: safe on the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

log = logging.getLogger("sidecar.systemd")


class SystemdNotifier:
    """Sends state changes to systemd's notification socket (when there is one)."""

    def __init__(self, address: str = "", watchdog_usec: int = 0) -> None:
        #: The socket address as systemd gave it ('' = not started by systemd).
        self.address = address
        #: ``WatchdogSec=`` in microseconds (0 = no watchdog).
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None, *,
                         unset: bool = True) -> SystemdNotifier:
        """The notifier systemd set up for this process (``$NOTIFY_SOCKET``,
        ``$WATCHDOG_USEC`` when ``$WATCHDOG_PID`` is unset or this process). With
        ``unset`` the variables are removed from ``environ`` (``os.environ``), so the
        programs the sidecar starts (a recharge command) do not inherit them."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        watchdog = _watchdog_usec(env)
        if unset:
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                env.pop(key, None)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1`` (half the watchdog's timeout), or None."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec > 0 else None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``"READY=1"``, ``"STATUS=..."``) as one datagram; True when
        sent. Newlines inside a STATUS text are replaced (one line per key)."""
        if not self.address or not lines:
            return False
        payload = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(payload, _sockaddr(self.address))
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC: what systemd 253+ expects with RELOADING=1 (older ones ignore it).
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
                           "STATUS=reloading the configuration")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _sockaddr(address: str) -> str | bytes:
    """``@name`` is the abstract socket ``\\0name``; anything else a path."""
    if address.startswith("@"):
        return b"\0" + address[1:].encode()
    return address


def _watchdog_usec(env: Mapping[str, str]) -> int:
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return 0  # meant for another process (a parent that exec'd us did not clear it)
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return 0
    return max(usec, 0)
