"""``sidecar run`` under systemd's eyes, with the real Kamailio and SIPp: the notification
protocol (READY=1 once serving, STATUS, RELOADING=1/READY=1, STOPPING=1, WATCHDOG=1) on a
socket the test binds as systemd would, and SIGHUP reloading the configuration."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sidecar.lab.live import LiveLab
from sidecar.store.db import connect
from sidecar.store.decks import import_deck
from tests.e2e.test_live_sidecar import DECK, DIALLED, account, cdrs, wait_for

pytestmark = pytest.mark.timeout(180)


class NotifySocket:
    """What systemd listens on: a UNIX datagram socket (a path, or an abstract name)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def next(self, key: str, timeout: float = 20.0) -> dict[str, str]:
        """Receive until a datagram carrying ``key`` (``"READY"``) arrives; that one."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}= from the sidecar; got {self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))
            if key in fields:
                return fields

    def close(self) -> None:
        self.sock.close()


class Webhook:
    """An HTTP endpoint that keeps what is POSTed to it."""

    def __init__(self) -> None:
        posts = self.posts = []  # type: list[dict[str, object]]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(tmp_path / "sidecar.db")
    (tmp_path / "deck.csv").write_text(DECK)
    import_deck(conn, "retail", tmp_path / "deck.csv", as_of=datetime(2026, 1, 1, tzinfo=UTC))
    yield conn
    conn.close()


@pytest.fixture
def lab(tmp_path: Path, db: sqlite3.Connection) -> Iterator[LiveLab]:
    # No sidecar on entry: each test starts its own with the environment systemd gives.
    with LiveLab(tmp_path / "lab", tmp_path / "sidecar.db", metrics=True,
                 with_sidecar=False) as lab:
        yield lab


def ready_status(lab: LiveLab) -> int:
    try:
        with urllib.request.urlopen(lab.metrics_url + "/health/ready", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def log_has(lab: LiveLab, name: str, text: str) -> bool:
    return text in lab.spawned_log(name).read_text(errors="replace")


def test_ready_after_evapi_connects_reload_and_stopping_at_sigterm(
    lab: LiveLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # WatchdogSec=0.4s: a ping every 0.2 s
    try:
        pid = lab.spawn_sidecar("notify")
        msg = notify.next("READY")
        # READY=1 comes once the sidecar serves Kamailio: evapi connected, store loaded.
        assert msg["READY"] == "1"
        assert lab.evapi_connected_pids() == {pid}  # its TCP connection to evapi is up
        assert ready_status(lab) == 200
        wait_for(lambda: lab.kam.evapi_clients() == 1, timeout=2)  # Kamailio counts it
        assert msg["STATUS"].startswith("serving Kamailio (evapi 127.0.0.1:"), msg
        before = [m for _, m in notify.messages[:-1]]
        assert before and all("READY" not in m for m in before)
        assert any(m.get("STATUS", "").startswith(("node lab-", "starting")) for m in before)
        # The watchdog is fed from the event loop.
        t0 = time.monotonic()
        notify.next("WATCHDOG")
        notify.next("WATCHDOG")
        assert time.monotonic() - t0 < 2.0

        # systemctl reload: RELOADING=1, then READY=1 again.
        os.kill(pid, signal.SIGHUP)
        assert notify.next("RELOADING")["RELOADING"] == "1"
        again = notify.next("READY")
        assert again["STATUS"].startswith("serving Kamailio")
        wait_for(lambda: log_has(lab, "notify", "nothing changed"))

        # systemctl stop: STOPPING=1 at SIGTERM, then a clean exit.
        os.kill(pid, signal.SIGTERM)
        assert notify.next("STOPPING", timeout=10)["STOPPING"] == "1"
        lab.kill_sidecar(pid)  # waits for it
        assert lab.sidecar_exit_code(pid) == 0
    finally:
        notify.close()


def test_sighup_applies_live_keys_keeps_restart_keys_and_refuses_a_broken_file(
    lab: LiveLab, db: sqlite3.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An abstract notification socket this time (NOTIFY_SOCKET=@name).
    notify = NotifySocket(f"@sidecar-test-{os.getpid()}-{time.monotonic_ns()}")
    monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
    hook, other = Webhook(), Webhook()
    original = lab.config_path.read_text()
    try:
        # Any charge takes these accounts below their low-balance threshold: an alert.
        for code in ("ACME1", "ACME2", "ACME3"):
            account(db, code, "10", low_balance=Decimal("9.99"))
        pid = lab.spawn_sidecar("hup")
        notify.next("READY")

        def call(code: str) -> None:
            uas = lab.uas("uas.xml")
            r = lab.uac(account_code=code, dialled=DIALLED, duration_ms=1000).wait()
            uas.wait()
            assert r.calls_ok, r.output_tail() + lab.log_tail()
            wait_for(lambda: len(cdrs(db, code)) == 1)

        call("ACME1")  # no webhook configured yet: the alert is only logged
        time.sleep(0.5)
        assert hook.posts == []

        # Live keys (the alert webhook, a chunk size) and a restart-only one (evapi port).
        lab.config_path.write_text(
            original.replace(f"evapi_port = {lab.settings.evapi_port}",
                             f"evapi_port = {lab.settings.evapi_port + 1}")
            .replace("[metrics]\n", "[alerts]\n" f'webhook = "{hook.url}"\n' "[metrics]\n")
            + "[charging]\nmin_chunk_seconds = 7\n")
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: log_has(lab, "hup", "needs a restart"))
        text = lab.spawned_log("hup").read_text()
        applied = [ln for ln in text.splitlines() if "configuration reloaded from" in ln]
        assert len(applied) == 1, text[-3000:]
        assert "applied charging.min_chunk_seconds, alerts.webhook" in applied[0]
        assert "kamailio.evapi_port changed: needs a restart; running on with the old" in text
        # Still serving Kamailio on the old port, ready.
        assert lab.evapi_connected_pids() == {pid} and ready_status(lab) == 200
        call("ACME2")
        wait_for(lambda: len(hook.posts) == 1)
        assert hook.posts[0]["kind"] == "low_balance" and hook.posts[0]["account"] == "ACME2"

        # A broken file is refused whole: its valid new webhook is not taken either.
        lab.config_path.write_text(
            original.replace("[metrics]\n", "[alerts]\n" f'webhook = "{other.url}"\n'
                             "[metrics]\n")
            + 'shed_after_ms = "soon"\n')  # (in the [kamailio] table the file ends with)
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: log_has(lab, "hup", "configuration reload refused, nothing changed"))
        refused = next(ln for ln in lab.spawned_log("hup").read_text().splitlines()
                       if "reload refused" in ln)
        assert "kamailio.shed_after_ms" in refused and str(lab.config_path) in refused
        call("ACME3")
        wait_for(lambda: len(hook.posts) == 2)
        assert hook.posts[1]["account"] == "ACME3" and other.posts == []
        assert lab.sidecar_exit_code(pid) is None and ready_status(lab) == 200
    finally:
        hook.close()
        other.close()
        notify.close()
