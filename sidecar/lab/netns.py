"""A network namespace joined to this host by a veth pair: a second "host" for tests.

:class:`VethNamespace` creates a namespace and a veth pair with pyroute2, moves one end
into the namespace, gives both ends an address in a free /30 of ``10.213.0.0/16`` (a
private test range) and brings everything up. Traffic between ``host_ip`` and ``ns_ip``
crosses a real interface (``host_if``), so a capture on it sees what a capture on a NIC
would: packets the host receives and packets it sends.

::

    with VethNamespace.create("rtp") as lab:
        subprocess.run(lab.command("python3", "-c", "..."), check=True)

Names carry the process id, so concurrent test runs do not collide, and
:meth:`VethNamespace.close` (also on ``with`` exit, on failure, and for whatever a
half-finished :meth:`create` made) removes the namespace and the veth pair. Needs root.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import subprocess
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

__all__ = ["NetnsError", "VethNamespace"]

#: Test addresses come from here, one /30 per namespace.
SUBNET = ipaddress.IPv4Network("10.213.0.0/16")

_counter = itertools.count()


class NetnsError(RuntimeError):
    """A namespace or veth pair could not be created (not root, no free subnet, ...)."""


def _used_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks of the addresses configured in this (the host's) namespace."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [
            ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}").network
            for a in ipr.get_addr(family=2)
        ]


def _free_subnet(seed: int) -> ipaddress.IPv4Network:
    used = _used_networks()
    candidates = list(SUBNET.subnets(new_prefix=30))
    # Start where the pid points, so concurrent runs rarely even try the same /30.
    start = seed % len(candidates)
    for candidate in candidates[start:] + candidates[:start]:
        if not any(candidate.overlaps(network) for network in used):
            return candidate
    raise NetnsError(f"no free /30 left in {SUBNET}")


class VethNamespace:
    """A namespace ``ns_name`` with veth end ``ns_if`` (``ns_ip``), joined to ``host_if``
    (``host_ip``) in this namespace. Make one with :meth:`create`."""

    def __init__(self, ns_name: str, host_if: str, ns_if: str) -> None:
        self.ns_name = ns_name
        self.host_if = host_if
        self.ns_if = ns_if
        self.host_ip = ""
        self.ns_ip = ""
        self.prefixlen = 30
        self._closed = False

    @classmethod
    def create(cls, name_prefix: str = "sidecar") -> Self:
        """Create the namespace and the pair, with addresses, all up.

        Interface names are ``{prefix[:4]}{pid:x}{n:x}h`` / ``...n`` (within the kernel's
        15 characters); the namespace is ``{prefix}-{pid}-{n}``.
        """
        from pyroute2 import IPRoute, NetNS, netns
        from pyroute2.netlink.exceptions import NetlinkError

        pid, n = os.getpid(), next(_counter)
        stem = f"{name_prefix[:4]}{pid:x}{n:x}"
        lab = cls(f"{name_prefix}-{pid}-{n}", f"{stem}h", f"{stem}n")
        try:
            subnet = _free_subnet(pid * 7 + n)
            host_ip, ns_ip = (str(h) for h in subnet.hosts())
            netns.create(lab.ns_name)
            with IPRoute() as ipr:
                ipr.link(
                    "add",
                    ifname=lab.host_if,
                    kind="veth",
                    peer={"ifname": lab.ns_if, "net_ns_fd": lab.ns_name},
                )
                index = ipr.link_lookup(ifname=lab.host_if)[0]
                ipr.addr("add", index=index, address=host_ip, prefixlen=30)
                ipr.link("set", index=index, state="up")
            with NetNS(lab.ns_name) as ns:
                index = ns.link_lookup(ifname=lab.ns_if)[0]
                ns.addr("add", index=index, address=ns_ip, prefixlen=30)
                ns.link("set", index=index, state="up")
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            lab.host_ip, lab.ns_ip = host_ip, ns_ip
        except (NetlinkError, OSError) as e:
            lab.close()
            raise NetnsError(f"cannot create namespace {lab.ns_name}: {e}") from e
        except BaseException:
            lab.close()
            raise
        return lab

    @property
    def exec_prefix(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.ns_name]

    def command(self, *argv: str) -> list[str]:
        """``argv`` prefixed to run inside the namespace (``ip netns exec NAME ...``)."""
        return [*self.exec_prefix, *argv]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in the namespace to completion (``subprocess.run`` arguments)."""
        return subprocess.run(self.command(*argv), **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the namespace (``subprocess.Popen`` arguments); the caller
        stops it by its pid."""
        return subprocess.Popen(self.command(*argv), **kwargs)

    def close(self) -> None:
        """Delete the veth pair and the namespace; safe to call twice or after a partial
        :meth:`create`."""
        if self._closed:
            return
        self._closed = True
        from pyroute2 import IPRoute, netns

        # Deleting one end deletes its peer; deleting the namespace would too, but the host
        # end may exist while the move into the namespace failed.
        try:
            with IPRoute() as ipr:
                for index in ipr.link_lookup(ifname=self.host_if):
                    ipr.link("del", index=index)
        except Exception:  # cleanup goes on with the namespace whatever happened here
            pass
        if self.ns_name in netns.listnetns():
            netns.remove(self.ns_name)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"VethNamespace({self.ns_name!r}: {self.host_if} {self.host_ip} <-> "
            f"{self.ns_if} {self.ns_ip})"
        )
