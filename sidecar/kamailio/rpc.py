"""JSON-RPC 2.0 to Kamailio's ``jsonrpcs`` module over its UNIX datagram socket.

The client binds a socket path of its own (Kamailio sends the reply there), so requests
and replies are matched by id and each request gets its own answer, independently of
the evapi connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import tempfile
from typing import Any


class RpcError(RuntimeError):
    """Kamailio answered with an error (``code``), or did not answer."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, client: KamailioRpc) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client._on_reply(data)

    def error_received(self, exc: Exception) -> None:
        # A send the kernel refused (no permission on Kamailio's socket, no socket): the
        # loop reports it here, not to sendto's caller.
        self.client._on_send_error(exc)


class KamailioRpc:
    """Async JSON-RPC client; use as ``async with KamailioRpc(path) as rpc``."""

    def __init__(self, server_path: str, timeout: float = 2.0) -> None:
        self.server_path = server_path
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._dir: str | None = None

    async def __aenter__(self) -> KamailioRpc:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def open(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="sidecar-rpc-")
        # Kamailio, as its own user, must reach the reply socket: the directory (0700 from
        # mkdtemp) is opened for traversal only. Who may reach it at all is up to the
        # directory it is in ($TMPDIR: /run/sidecar, 0710 group kamailio, under systemd).
        os.chmod(self._dir, 0o711)
        local = os.path.join(self._dir, "reply.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(local)
        os.chmod(local, 0o666)  # Kamailio may run as another user
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._transport = transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self._dir, "reply.sock"))
            with contextlib.suppress(OSError):
                os.rmdir(self._dir)
            self._dir = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RpcError("client closed"))
        self._pending.clear()

    def _on_send_error(self, exc: Exception) -> None:
        """Every request waiting now fails with why the datagram could not be sent
        (they all went to the one socket), instead of waiting for its timeout."""
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RpcError(f"cannot reach Kamailio at {self.server_path}: "
                                           f"{exc}"))
        self._pending.clear()

    def _on_reply(self, data: bytes) -> None:
        try:
            doc = json.loads(data)
        except ValueError:
            return
        rid = doc.get("id") if isinstance(doc, dict) else None
        fut = self._pending.pop(rid, None) if isinstance(rid, int) else None
        if fut is None or fut.done():
            return
        if "error" in doc:
            err = doc["error"] or {}
            fut.set_exception(RpcError(str(err.get("message", err)), int(err.get("code", 0))))
        else:
            fut.set_result(doc.get("result"))

    async def call(self, method: str, *params: object) -> Any:
        """Call ``method`` and return its result; raise :class:`RpcError`."""
        if self._transport is None:
            raise RpcError("RPC client is not open")
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        msg = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params:
            msg["params"] = list(params)
        try:
            self._transport.sendto(json.dumps(msg).encode(), self.server_path)
        except OSError as exc:
            self._pending.pop(rid, None)
            raise RpcError(f"cannot reach Kamailio at {self.server_path}: {exc}") from exc
        try:
            async with asyncio.timeout(self.timeout):  # (not wait_for: see leader.off_loop)
                return await fut
        except TimeoutError as exc:
            self._pending.pop(rid, None)
            raise RpcError(f"{method}: no answer from Kamailio within {self.timeout} s") from exc

    async def end_dialog(self, h_entry: int, h_id: int) -> None:
        """``dlg.end_dlg``: BYE to both sides of a confirmed dialog."""
        await self.call("dlg.end_dlg", h_entry, h_id)

    async def list_dialogs(self) -> list[dict[str, Any]]:
        """``dlg.list``: every dialog Kamailio holds."""
        res = await self.call("dlg.list")
        if res is None:
            return []
        if isinstance(res, list):
            return [d for d in res if isinstance(d, dict)]
        if isinstance(res, dict):
            return [res]
        return []
