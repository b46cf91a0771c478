"""The live sidecar's HTTP endpoints, on its own event loop (aiohttp).

    GET /metrics        Prometheus text exposition (the sidecar's own registry)
    GET /health/live    200 while the process and its event loop run
    GET /health/ready   200 {"ready": true} when this sidecar leads its node, its store
                        takes writes and evapi is connected; else 503 naming what is not

Every handler answers from memory: a scrape never waits on the store or on Kamailio.
A standby serves them too (not ready: not the leader). When the address is taken (the
node's active sidecar holds it while this one waits as its standby) binding is retried
every ``retry_s`` until it succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import Metrics

log = logging.getLogger("sidecar.http")


class MetricsServer:
    """Serves :class:`Metrics` over HTTP on ``host:port`` for as long as it runs."""

    def __init__(self, metrics: Metrics, host: str, port: int, *, retry_s: float = 2.0
                 ) -> None:
        self.metrics = metrics
        self.host, self.port = host, port
        self.retry_s = retry_s
        self.serving = False
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health/live", self._live)
        app.router.add_get("/health/ready", self._ready)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        self._binding: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen (at once if the address is free, else retried in the background)."""
        await self._runner.setup()
        if not await self._bind(first=True):
            self._binding = asyncio.get_running_loop().create_task(self._keep_binding())

    async def stop(self) -> None:
        if self._binding is not None:
            self._binding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._binding
            self._binding = None
        await self._runner.cleanup()
        self.serving = False

    async def _bind(self, *, first: bool) -> bool:
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await site.stop()  # registered with the runner before it failed
            if first:
                log.warning("metrics and health: cannot listen on %s:%s (%s); retrying "
                            "every %.0f s", self.host, self.port, exc.strerror or exc,
                            self.retry_s)
            return False
        self.serving = True
        log.info("metrics and health on http://%s:%s/metrics, /health/live, /health/ready",
                 self.host, self.port)
        return True

    async def _keep_binding(self) -> None:
        while True:
            await asyncio.sleep(self.retry_s)
            if await self._bind(first=False):
                return

    # --- handlers ---------------------------------------------------------------------
    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST,
                                     "Cache-Control": "no-store"})

    async def _live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True}, headers={"Cache-Control": "no-store"})

    async def _ready(self, request: web.Request) -> web.Response:
        ready, doc = self.metrics.readiness()
        return web.json_response(doc, status=200 if ready else 503,
                                 headers={"Cache-Control": "no-store"})
