"""``sidecar run``: the live sidecar beside Kamailio."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..config import Config, ConfigError, listen_address, load_config, node_name_problem
from ..logs import setup_logging
from ..store.conn import describe, is_url
from .app import Context, cli, fail, pass_ctx

if TYPE_CHECKING:
    from ..live.http import MetricsServer
    from ..live.metrics import Metrics

log = logging.getLogger("sidecar")

#: Exit status of a sidecar that lost its leader lock (a supervisor restarts it: it then
#: waits as the standby).
EXIT_LEADERSHIP_LOST = 3
#: After leadership is lost the process exits within this many seconds, whatever hangs.
LOST_EXIT_WITHIN_S = 20.0
#: Once it holds the lock, a sidecar waits at most this long for Kamailio to count no
#: other evapi client (a former leader that has not noticed yet) before it connects.
FENCE_S = 5.0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop (libuv, transports in C): a fraction of asyncio's cost per
    message on the evapi connection. The standard loop where it is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@cli.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="TOML configuration (see README).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info")
@click.option("--node", "node_opt", default=None, metavar="NAME",
              help="This Kamailio node's name (default: [node] name, else the host name). "
                   "One sidecar per node is active; another one waits as its standby.")
@pass_ctx
def run_cmd(ctx: Context, config_path: Path | None, log_format: str, log_level: str,
            node_opt: str | None) -> None:
    """Run the live sidecar: connect to Kamailio's evapi, authorize and charge calls.

    Only one sidecar per node talks to Kamailio: it holds the node's leader lock in the
    store. A second one started for the same node waits as a hot standby and takes over
    when the active one stops or dies."""
    try:
        config = load_config(config_path)  # None: the defaults and $SIDECAR_TABLE__KEY
    except ConfigError as exc:
        fail(str(exc), 2)
        return
    node = node_opt if node_opt is not None else config.node
    problem = node_name_problem(node)
    if problem:  # a [node] name in the file was checked by load_config
        fail(f"--node {problem}" if node_opt is not None else
             f"the host name cannot name this node ({problem}): set [node] name or --node", 2)
        return
    setup_logging(log_format, log_level)
    config = dataclasses.replace(config, node=node)  # what the store's rows carry
    # Under systemd (Type=notify): READY=1 once serving, STATUS, RELOADING=1, STOPPING=1.
    from ..live.systemd import SystemdNotifier

    systemd = SystemdNotifier.from_environment()
    running = _Running(config)  # the configuration in force (SIGHUP reloads it)
    # --db / $SIDECAR_DB win over the file, so one config serves several databases.
    db = ctx.target if ctx.explicit else config.db
    from ..live.metrics import Metrics
    from ..live.service import Sidecar, StoreStartError
    from ..store.decks import PlanLoader
    from ..store.writer import WarmPlans

    # The writer thread (and the capture thread) share the interpreter lock with the
    # event loop: the loop gets it back within 1 ms instead of 5 when it wants it.
    sys.setswitchinterval(0.001)

    from ..live import leader

    # The node's leader lock lives in the store: a lock file beside the SQLite database
    # (its real path: two sidecars reaching it by different paths lock one file), or an
    # advisory lock on PostgreSQL.
    lock_at = db if is_url(db) else Path(db).resolve()
    try:
        lock = leader.leader_lock(lock_at, node,
                                  serves=f"evapi {config.evapi_host}:{config.evapi_port}")
    except ValueError as exc:
        fail(str(exc), 2)
        return
    lost: list[leader.LeadershipLost] = []

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def stop() -> None:
            if not running.stopping:
                running.stopping = True
                systemd.stopping(f"stopping: node {node}")
            if task is not None:
                task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        reloads: set[asyncio.Task[None]] = set()

        def hangup() -> None:  # SIGHUP: reload the configuration (one at a time)
            t = loop.create_task(_reload(metrics))
            reloads.add(t)
            t.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, hangup)
        log.info("sidecar starting: node=%s db=%s evapi=%s:%s rpc=%s", node, describe(db),
                 config.evapi_host, config.evapi_port, config.rpc_socket)
        systemd.status(f"starting: node {node}")
        # /metrics and /health/*: served from the start (a standby answers "not ready").
        metrics = Metrics()
        metrics.watch_gc()
        loop_watch = metrics.watch_loop()
        server = await _serve_metrics(config, metrics)
        reporting = loop.create_task(_report(metrics)) if systemd.enabled else None
        try:
            await _node(metrics)
        finally:
            loop_watch.close()
            if reporting is not None:
                reporting.cancel()
            for t in list(reloads):
                t.cancel()
            if not running.stopping:  # leadership lost, a failure: stopping all the same
                running.stopping = True
                systemd.stopping(f"stopping: node {node}")
            if server is not None:
                await server.stop()

    async def _report(metrics: Metrics) -> None:
        """Tell systemd how the sidecar is doing: READY=1 once it serves Kamailio (as
        /health/ready decides: the node's leader, its store loaded and taking writes,
        evapi connected), STATUS when that changes, WATCHDOG=1 while the loop runs."""
        loop = asyncio.get_running_loop()
        ping = systemd.watchdog_interval_s
        next_ping = loop.time()
        last = ""
        while True:
            ready, doc = metrics.readiness()
            text = _status_text(doc, node, running.config)
            if ready and not running.ready_sent:
                running.ready_sent = True
                systemd.ready(text)
                log.info("ready: %s", text)
            elif text != last and not running.reloading:
                systemd.status(text)
            last = text
            if ping is not None and loop.time() >= next_ping:
                systemd.watchdog()
                next_ping = loop.time() + ping
            await asyncio.sleep(0.1)

    async def _reload(metrics: Metrics) -> None:
        """SIGHUP: read the configuration file again (off the loop) and apply what can
        change live; a file with an error changes nothing (``live/reload.py``)."""
        from ..live.reload import plan_reload, read_again

        async with running.lock:
            if config_path is None:
                log.warning("SIGHUP: nothing to reload (started without --config)")
                return
            running.reloading = True
            if running.ready_sent:
                systemd.reloading()
            try:
                try:
                    new = await asyncio.to_thread(read_again, config_path, node_opt)
                except ConfigError as exc:
                    log.error("configuration reload refused, nothing changed: %s",
                              "; ".join(str(exc).splitlines()))
                    return
                plan = plan_reload(running.config, new)
                running.config = plan.config
                if metrics.sidecar is not None:
                    metrics.sidecar.apply_config(plan.config)
                if not plan.changed:
                    log.info("configuration reloaded from %s: nothing changed", config_path)
                if plan.applied:
                    log.info("configuration reloaded from %s: applied %s", config_path,
                             ", ".join(plan.applied))
                if plan.need_restart:
                    log.warning("configuration reload: %s changed: needs a restart; "
                                "running on with the old value(s)",
                                ", ".join(plan.need_restart))
                if plan.not_used:
                    log.info("configuration reload: %s changed (not used by sidecar run)",
                             ", ".join(plan.not_used))
            finally:
                running.reloading = False
                if running.ready_sent:
                    systemd.ready(_status_text(metrics.readiness()[1], node,
                                               running.config))

    async def _node(metrics: Metrics) -> None:
        """Wait for the node's lock (as a standby), then serve Kamailio."""
        # Hot: the rate plans are loaded while waiting for the lock (a standby's wait).
        plans = PlanLoader()
        warm = WarmPlans(db, plans)
        warm.start()
        try:
            await leader.acquire(lock)
        except asyncio.CancelledError:
            log.info("standby for node %s stopped", node)
            await asyncio.to_thread(warm.stop)
            return
        await asyncio.to_thread(warm.stop)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await _fence(running.config)
                await _lead(Sidecar(running.config, db, plans, metrics), lock, lost)
        finally:
            if not lost:  # a lost lock is gone already
                await leader.release(lock)

    async def _lead(sidecar: Sidecar, lock: leader.LeaderLock,
                    lost: list[leader.LeadershipLost]) -> None:
        """Serve Kamailio for as long as this process holds the node's lock."""
        serving = asyncio.ensure_future(sidecar.run())
        keeping = asyncio.ensure_future(leader.keep(lock))
        try:
            await asyncio.wait({serving, keeping}, return_when=asyncio.FIRST_COMPLETED)
            if keeping.done() and not keeping.cancelled():
                exc = keeping.exception()
                if isinstance(exc, leader.LeadershipLost):
                    lost.append(exc)
                    # Whatever hangs from here on, the process ends, so that a supervisor
                    # starts it again (as the standby).
                    watchdog = threading.Timer(LOST_EXIT_WITHIN_S, os._exit,
                                               (EXIT_LEADERSHIP_LOST,))
                    watchdog.daemon = True
                    watchdog.start()
                    log.critical("node %s: leadership lost (%s): no longer answering "
                                 "Kamailio; exiting", lock.node, exc)
                elif exc is not None:
                    raise exc
        finally:
            keeping.cancel()
            serving.cancel()  # the evapi connection is closed first, then the store's
            with contextlib.suppress(asyncio.CancelledError):  # writer flushes its queue
                await serving
            sidecar.metrics.attach(None)  # no longer serving Kamailio: not ready
            log.info("sidecar stopped: %s", dict(sidecar.counters))
            log.info("%s", sidecar.latency_summary())

    from ..live.media import MediaConfigError
    from ..media.capture import CaptureError

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())
    except (MediaConfigError, CaptureError) as exc:
        fail(f"media capture: {exc}", 2)
    except StoreStartError as exc:
        fail(f"store {describe(db)}: {exc}", 2)
    except leader.LeaderLockError as exc:
        fail(f"leader lock of node {node}: {exc}", 2)
    if lost:
        fail(f"node {node}: leadership lost ({lost[0]}); restart to wait as the standby",
             EXIT_LEADERSHIP_LOST)


@dataclasses.dataclass
class _Running:
    """What ``sidecar run`` keeps across its tasks: the configuration in force (the one it
    started with, plus the live keys of reloads) and what systemd was told."""

    config: Config
    ready_sent: bool = False  # READY=1 was sent (reloads then send RELOADING=1 / READY=1)
    reloading: bool = False
    stopping: bool = False
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


def _status_text(doc: dict[str, object], node: str, config: Config) -> str:
    """One line for ``systemctl status``, from the readiness document."""
    evapi = f"{config.evapi_host}:{config.evapi_port}"
    if doc.get("ready"):
        return f"serving Kamailio (evapi {evapi}) as node {node}"
    missing = doc.get("not_ready") or []
    if "leader" in (missing if isinstance(missing, list) else []):
        return f"node {node}: waiting for the leader lock (standby while another is active)"
    if doc.get("store_error"):
        return f"store unavailable: {doc['store_error']}"
    if "store" in (missing if isinstance(missing, list) else []):
        return f"node {node}: loading the store"
    return f"node {node}: connecting to Kamailio evapi {evapi}"


async def _serve_metrics(config: Config, metrics: Metrics) -> MetricsServer | None:
    """Start the metrics and health server on ``[metrics] listen`` (None when off)."""
    address = listen_address(config.metrics_listen) if config.metrics_listen else None
    if address is None:
        return None
    from ..live.http import MetricsServer

    server = MetricsServer(metrics, *address)
    await server.start()
    return server


async def _fence(config: Config) -> None:
    """Wait (at most ``FENCE_S``) until Kamailio counts no evapi client: a former leader
    that lost its lock without noticing yet (a PostgreSQL session the server dropped) is
    still connected for up to ~3 s, and two sidecars must never answer one Kamailio.
    Skipped when Kamailio cannot be asked (not running yet, another configuration)."""
    from ..kamailio.rpc import KamailioRpc, RpcError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + FENCE_S
    warned = False
    try:
        async with KamailioRpc(config.rpc_socket, min(config.rpc_timeout, 1.0)) as rpc:
            while True:
                res = await rpc.call("pv.shvGet", "evapi_clients")
                count = int(res["value"])
                if count <= 0:
                    return
                if loop.time() > deadline:
                    log.error("Kamailio still counts %d evapi client(s) after %.0f s: "
                              "connecting anyway (another sidecar under another node name?)",
                              count, FENCE_S)
                    return
                if not warned:
                    warned = True
                    log.warning("Kamailio still counts %d evapi client(s): waiting for the "
                                "former leader to go", count)
                await asyncio.sleep(0.1)
    except (RpcError, OSError, LookupError, TypeError, ValueError) as exc:
        log.debug("evapi client count not available from Kamailio (%s)", exc)
