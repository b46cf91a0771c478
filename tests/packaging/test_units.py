"""The shipped systemd units, sysusers entry and example configuration: systemd's own
checker accepts the units, they carry what running beside Kamailio needs, and the
example configuration loads and points where the shipped Kamailio configuration is."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import load_config
from sidecar.live.systemd import SystemdNotifier

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
UNITS = ("sidecar.service", "sidecar-api.service")
INSTALLED = "/opt/sidecar/bin/sidecar"


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in (PACKAGING / "systemd" / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section, f"{name}: not KEY=VALUE in a section: {raw!r}"
        out[section].setdefault(key, []).append(value)
    return out


def one(u: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = u[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}: {values}"
    return values[0]


def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: scripts/setup installs Debian's systemd")
    # The units start /opt/sidecar/bin/sidecar; verify checks that it is executable, so
    # the copies checked here start this checkout's command instead.
    here = str(Path(sys.executable).parent / "sidecar")
    assert os.access(here, os.X_OK)
    for name in UNITS:
        text = (PACKAGING / "systemd" / name).read_text()
        assert INSTALLED in text
        (tmp_path / name).write_text(text.replace(INSTALLED, here))
    p = subprocess.run([analyze, "verify", *(str(tmp_path / n) for n in UNITS)],
                       capture_output=True, text=True, timeout=60)
    mine = [ln for ln in (p.stdout + p.stderr).splitlines()
            if any(n in ln for n in UNITS)]
    assert p.returncode == 0, p.stdout + p.stderr
    # systemd only warns (exit 0) of an unknown key or a value it cannot parse.
    assert mine == [], "\n".join(mine)


def test_run_unit_has_what_running_beside_kamailio_needs() -> None:
    u = unit("sidecar.service")
    assert "kamailio.service" in one(u, "Unit", "After").split()
    assert "kamailio.service" in " ".join(u["Unit"]["Wants"]).split()
    s = "Service"
    assert one(u, s, "Type") == "notify" and one(u, s, "NotifyAccess") == "main"
    assert one(u, s, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(u, s, "Restart") == "on-failure"
    assert one(u, s, "ExecStart").split()[:4] == [INSTALLED, "run", "--config",
                                                  "/etc/sidecar/sidecar.toml"]
    assert one(u, s, "User") == "sidecar"
    # Kamailio's group: /run/kamailio is 0770 kamailio:kamailio (Debian's kamailio.service).
    assert one(u, s, "SupplementaryGroups") == "kamailio"
    assert one(u, s, "StateDirectory") == "sidecar"
    assert one(u, s, "ConfigurationDirectory") == "sidecar"
    assert one(u, s, "RuntimeDirectory") == "sidecar"
    assert "SIDECAR_DB=/var/lib/sidecar/sidecar.db" in u[s]["Environment"]
    # The JSON-RPC reply socket is made under $TMPDIR, in the runtime directory that
    # Kamailio's group may traverse (PrivateTmp hides /tmp from Kamailio).
    assert "TMPDIR=/run/sidecar" in u[s]["Environment"]
    assert one(u, s, "RuntimeDirectoryMode") == "0710"
    assert one(u, s, "ExecStartPre") == "+/bin/chgrp kamailio /run/sidecar"
    # The capture's one capability, and nothing else.
    assert one(u, s, "AmbientCapabilities") == "CAP_NET_RAW"
    assert one(u, s, "CapabilityBoundingSet") == "CAP_NET_RAW"
    assert "AF_PACKET" in one(u, s, "RestrictAddressFamilies").split()
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups",
                "RestrictSUIDSGID", "LockPersonality"):
        assert one(u, s, key) == "yes", key
    assert one(u, s, "ProtectSystem") == "strict"
    # The watchdog is fed (WATCHDOG=1 from the event loop: test_systemd_live.py).
    assert one(u, s, "WatchdogSec") == "30s"
    assert u["Install"]["WantedBy"] == ["multi-user.target"]


def test_api_unit_has_no_capability_and_the_same_store() -> None:
    u = unit("sidecar-api.service")
    s = "Service"
    assert one(u, s, "Type") == "notify" and one(u, s, "NotifyAccess") == "main"
    assert one(u, s, "ExecStart").split()[:2] == [INSTALLED, "api"]
    assert one(u, s, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(u, s, "Restart") == "on-failure"
    assert one(u, s, "User") == "sidecar"
    assert one(u, s, "CapabilityBoundingSet") == ""
    assert "AmbientCapabilities" not in u[s] and "WatchdogSec" not in u[s]
    assert u[s]["Environment"] == unit("sidecar.service")[s]["Environment"][:1]
    assert one(u, s, "ProtectSystem") == "strict" and one(u, s, "NoNewPrivileges") == "yes"


def test_sysusers_entry_makes_the_service_user(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.fail("systemd-sysusers is missing: scripts/setup installs Debian's systemd")
    (tmp_path / "etc").mkdir()
    # Applied to an empty root of the test's own, not to this machine.
    p = subprocess.run([sysusers, f"--root={tmp_path}",
                        str(PACKAGING / "sysusers.d" / "sidecar.conf")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    user = next(ln.split(":") for ln in (tmp_path / "etc" / "passwd").read_text().splitlines()
                if ln.startswith("sidecar:"))
    assert user[5] == "/var/lib/sidecar" and user[6].endswith("nologin")
    assert int(user[2]) < 1000  # a system user


def test_example_configuration_loads_and_matches_the_shipped_kamailio_cfg() -> None:
    cfg = load_config(PACKAGING / "sidecar.toml")
    kam = (ROOT / "kamailio" / "kamailio.cfg").read_text()

    def trydef(name: str) -> str:
        m = re.search(rf'^#!trydef {name} "?([^"\n]*)"?$', kam, re.M)
        assert m, name
        return m.group(1)

    assert cfg.rpc_socket == trydef("RPC_SOCK")
    assert f"{cfg.evapi_host}:{cfg.evapi_port}" == trydef("EVAPI_BIND")
    assert cfg.metrics_listen == "127.0.0.1:9464" and cfg.api_listen == "127.0.0.1:8480"
    assert not cfg.media_enabled
    assert cfg.node == socket.gethostname()  # the host name unless set


def test_notifier_reads_and_clears_the_environment() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1",
           "PATH": "/bin"}
    n = SystemdNotifier.from_environment(env)
    # WATCHDOG_PID names another process: no watchdog for this one.
    assert n.address == "@x" and n.watchdog_interval_s is None
    assert env == {"PATH": "/bin"}  # not passed on to a recharge command
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000",
           "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier.from_environment(env).watchdog_interval_s == 15.0
    quiet = SystemdNotifier.from_environment({})
    assert not quiet.enabled and quiet.ready("x") is False  # outside systemd: nothing


def test_a_missing_notification_socket_is_not_fatal(tmp_path: Path) -> None:
    n = SystemdNotifier(str(tmp_path / "gone.sock"))
    assert n.ready("serving") is False  # logged once, never raised
    assert n.stopping() is False
    n.close()
