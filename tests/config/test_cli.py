"""``sidecar config check`` and ``example``, and ``sidecar run`` with the overrides: the real
command, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def sidecar(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("sidecar")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "sidecar"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})}, cwd=cwd)


def test_check_prints_the_effective_configuration_with_secrets_masked(tmp_path: Path
                                                                      ) -> None:
    p = tmp_path / "sidecar.toml"
    p.write_text('[database]\nurl = "postgresql://billing:s3cret@db.example/b?sslmode=require"\n'
                 '[alerts]\nwebhook = "https://hook:t0ken@alerts.example/in"\n'
                 "[media]\ngrace_ms = 1500\n")
    r = sidecar("config", "check", str(p), env={"SIDECAR_KAMAILIO__EVAPI_PORT": "8450"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "s3cret" not in out and "t0ken" not in out
    assert f'url = "postgresql://billing:***@db.example/b?sslmode=require"  # from {p}' in out
    assert 'webhook = "https://hook:***@alerts.example/in"' in out
    assert f"grace_ms = 1500  # from {p}" in out
    assert "evapi_port = 8450  # from $SIDECAR_KAMAILIO__EVAPI_PORT" in out
    assert "silence_share = 0.95  # default" in out
    r = sidecar("config", "check", "--json", str(p))
    doc = json.loads(r.stdout)
    assert doc["config"]["media"]["grace_ms"] == 1500
    assert doc["config"]["kamailio"]["evapi_port"] == 8448
    assert "s3cret" not in r.stdout


def test_check_exits_2_naming_each_key_path(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[media]\ngrace_ms = -5\n[kamailio]\nevapi_prot = 8448\n")
    r = sidecar("config", "check", str(p))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"error: {p}: kamailio.evapi_prot: unknown key (did you mean kamailio.evapi_port?)",
        f"error: {p}: media.grace_ms: must be at least 0, not -5",
        f"error: {p}: not usable (2 problems)"]


def test_example_is_a_configuration_check_accepts(tmp_path: Path) -> None:
    r = sidecar("config", "example")
    assert r.returncode == 0 and "[media]\n" in r.stdout and "grace_ms = 2000" in r.stdout
    (tmp_path / "example.toml").write_text(r.stdout)
    assert sidecar("config", "check", str(tmp_path / "example.toml")).returncode == 0


def test_run_reads_the_overrides_without_a_file_and_refuses_bad_ones(tmp_path: Path) -> None:
    r = sidecar("run", env={"SIDECAR_NODE__NAME": "a/b"}, cwd=tmp_path)
    assert r.returncode == 2
    assert "$SIDECAR_NODE__NAME: node.name: must be letters, digits" in r.stderr
    r = sidecar("run", env={"SIDECAR_KAMAILIO__EVAPI_PORT": "x"}, cwd=tmp_path)
    assert r.returncode == 2
    assert "$SIDECAR_KAMAILIO__EVAPI_PORT: kamailio.evapi_port: must be int, not 'x'" \
        in r.stderr
    assert not list(tmp_path.iterdir())  # nothing created
