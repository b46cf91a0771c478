"""``sidecar api`` under systemd's eyes: READY=1 once it listens, SIGHUP re-reads the token
file (a replaced token works at once, the old one no longer; a bad file changes
nothing), STOPPING=1 and a clean exit at SIGTERM."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sidecar.lab import free_port
from sidecar.store.db import connect
from tests.packaging.test_systemd_live import NotifySocket

pytestmark = pytest.mark.timeout(120)


def status(url: str, token: str) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_api_ready_reloads_its_token_file_on_sighup(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    connect(tmp_path / "sidecar.db").close()
    first, second = (secrets.token_urlsafe(32) for _ in range(2))
    token_file = tmp_path / "api-token"
    token_file.write_text(first + "\n")
    token_file.chmod(0o600)
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    port = free_port("tcp")
    url = f"http://127.0.0.1:{port}/v1/accounts"
    env = {**os.environ, "NOTIFY_SOCKET": notify.address}
    env.pop("SIDECAR_API_TOKEN", None)
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "--db", str(tmp_path / "sidecar.db"),
                             "api", "--listen", f"127.0.0.1:{port}", "--token-file",
                             str(token_file)], stdout=log, stderr=log, env=env,
                            stdin=subprocess.DEVNULL)
    try:
        msg = notify.next("READY")
        assert msg["STATUS"] == f"serving the API on 127.0.0.1:{port}"
        assert status(url, first) == 200  # listening when READY=1 came
        assert status(url, second) == 401

        token_file.write_text(second + "\n")  # the token was replaced
        proc.send_signal(signal.SIGHUP)
        assert notify.next("RELOADING")["RELOADING"] == "1"
        notify.next("READY")
        assert status(url, second) == 200 and status(url, first) == 401

        token_file.write_text("short\n")  # refused: nothing changes
        proc.send_signal(signal.SIGHUP)
        notify.next("READY")
        assert status(url, second) == 200
        deadline = time.monotonic() + 5
        while b"tokens not reloaded" not in (tmp_path / "api.log").read_bytes():
            assert time.monotonic() < deadline, (tmp_path / "api.log").read_text()
            time.sleep(0.05)
        assert "at least 32 characters" in (tmp_path / "api.log").read_text()

        proc.send_signal(signal.SIGTERM)
        assert notify.next("STOPPING")["STOPPING"] == "1"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        notify.close()
