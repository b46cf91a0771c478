"""``sidecar api`` as its own process on a free loopback port, as an operator runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .browser import free_port

TOKEN = "dashboard-test-token-" + "t" * 24


@contextmanager
def api_server(db: Path | str, run_dir: Path, token: str = TOKEN) -> Iterator[str]:
    """Start ``sidecar --db DB api`` with a read token; yields its base URL. Stopped by
    its PID on exit (SIGTERM, then SIGKILL), also on failure."""
    run_dir.mkdir(parents=True, exist_ok=True)
    token_file = run_dir / "api-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    port = free_port()
    log = (run_dir / "api.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "--db", str(db), "api",
                             "--listen", f"127.0.0.1:{port}", "--token-file",
                             str(token_file)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if json.load(r) == {"status": "ok"}:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"sidecar api exited with {proc.returncode}:\n"
                                   + (run_dir / "api.log").read_text()[-2000:])
            if time.monotonic() > deadline:
                raise RuntimeError("sidecar api did not answer /health in 30 s")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
