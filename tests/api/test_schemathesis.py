"""Schemathesis against the live API: the real ``sidecar api`` on a store with calls, an
invoice, a live call and tokens made by ``sidecar token create``'s store function; every
check schemathesis has (server errors, status codes, content types, response schemas
and headers, negative data rejected, positive data accepted, authentication ignored or
not, unsupported methods, stateful links) over the generated document, once with a read
token and once with an admin token. It must find nothing.

One setting: a request the document allows may still be refused with 422 for a rule a
JSON schema cannot state (a deck's contents, ``to`` before ``from``, 30 February, a
plan that does not exist); 400 stays a failure for such a request, since it means the
document and the server disagree about what is well formed."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from sidecar.store.tokens import create_token
from tests.api.test_api import seeded_sim

CONFIG = """\
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    import asyncio

    async def probe() -> None:
        deadline = time.monotonic() + seconds
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(url + "/health") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the API did not start"
                await asyncio.sleep(0.2)
    asyncio.run(probe())


@pytest.mark.timeout(240)
def test_schemathesis_finds_nothing_with_a_read_and_an_admin_token(tmp_path: Path) -> None:
    db = tmp_path / "api.db"
    sim = seeded_sim(db)
    tokens = {"read": create_token(sim.conn, "reader", "read", 0),
              "admin": create_token(sim.conn, "admin", "admin", 0)}
    sim.conn.close()
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    port = _free_port()
    env = {**os.environ, "SIDECAR_DB": str(db)}
    env.pop("SIDECAR_API_TOKEN", None)
    env.pop("SIDECAR_API_ADMIN_TOKEN", None)
    api = subprocess.Popen(["sidecar", "api", "--listen", f"127.0.0.1:{port}"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, api)
        import json
        import urllib.request

        req = urllib.request.Request(f"{base}/openapi.json",
                                     headers={"Authorization": f"Bearer {tokens['read']}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            served = json.load(r)
        # Every operation of the served document (itself excepted) must be tested.
        operations = sum(len(item) for path, item in served["paths"].items()
                         if path != "/openapi.json")
        # Both at once. The read token: generated and fuzzed requests and the links
        # between operations; the admin token (the writes too): every phase, the
        # exhaustive boundary cases included. A fixed seed: a failure is reproducible.
        t0 = time.monotonic()
        runs = {scope: subprocess.Popen(
            ["st", "--config-file", str(tmp_path / "schemathesis.toml"), "--no-color",
             "run", f"{base}/openapi.json", "--checks", "all", "--phases", phases,
             "--max-examples", "2", "--seed", "1", "--generation-database", "none",
             # A PDF takes seconds to render, more on a loaded machine: no speed check.
             "--request-timeout", "60", "--max-response-time", "60",
             "-H", f"Authorization: Bearer {tokens[scope]}"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True) for scope, phases in (("read", "examples,fuzzing,stateful"),
                                             ("admin", "examples,coverage,fuzzing,stateful"))}
        for scope, run in runs.items():
            out, _ = run.communicate(timeout=180)
            summary = out[out.find("SUMMARY"):]
            print(f"{scope} token, {time.monotonic() - t0:.1f} s:\n{summary}")
            assert run.returncode == 0, out[-8000:]
            # Every operation of the document.
            assert f"Tested: {operations}" in summary, summary
            assert " passed" in summary and "failure" not in summary, summary
    finally:
        api.terminate()
        log, _ = api.communicate(timeout=30)
    assert "sidecar/api" not in log, log[-4000:]  # no traceback through the API's code
