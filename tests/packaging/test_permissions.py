"""The permissions of an installed host, for real: Kamailio runs as its own user (as
Debian's kamailio.service runs it, its runtime directory 0770 kamailio:kamailio) and the
sidecar's JSON-RPC client as an unprivileged user, as packaging/systemd/sidecar.service
sets it up: in Kamailio's group (SupplementaryGroups=kamailio), its reply socket under
$TMPDIR=/run/sidecar (0710, group kamailio). Kamailio's answers must reach the client;
without the group the client is refused."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.lab import free_port, port_is_bound
from sidecar.lab.kamailio import DEFAULT_CFG, KamailioProcess, KamailioSettings

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]

CLIENT = """
import asyncio, json, sys
from sidecar.kamailio.rpc import KamailioRpc, RpcError

async def main():
    rpc = KamailioRpc(sys.argv[1], 3.0)
    await rpc.open()
    try:
        print(json.dumps({"dir": rpc._dir, "version": await rpc.call("core.version")}))
    except RpcError as exc:
        print(json.dumps({"dir": rpc._dir, "error": str(exc)}))
    finally:
        rpc.close()

asyncio.run(main())
"""


def _needs_root_and_users() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (to run Kamailio and the client as other users)")
    try:
        pwd.getpwnam("kamailio")
        grp.getgrnam("kamailio")
    except KeyError:
        pytest.fail("Debian's kamailio package makes the kamailio user: scripts/setup")


@pytest.fixture
def host() -> Iterator[tuple[Path, Path, KamailioProcess]]:
    """Kamailio as user kamailio; its run directory and the sidecar's, as on a host."""
    _needs_root_and_users()
    kam_gid = grp.getgrnam("kamailio").gr_gid
    # Not under pytest's tmp_path: its parents are 0700 root, closed to other users.
    base = Path(tempfile.mkdtemp(prefix="sidecar-perm-", dir="/tmp"))
    base.chmod(0o755)
    run_kam = base / "kamailio"  # /run/kamailio: RuntimeDirectoryMode=0770
    run_kam.mkdir()
    os.chown(run_kam, pwd.getpwnam("kamailio").pw_uid, kam_gid)
    run_kam.chmod(0o770)
    run_side = base / "sidecar"  # /run/sidecar: 0710, chgrp kamailio (ExecStartPre)
    run_side.mkdir()
    os.chown(run_side, pwd.getpwnam("nobody").pw_uid, kam_gid)
    run_side.chmod(0o710)
    # The shipped configuration and package where users kamailio and nobody can read
    # them (as installed: /etc/kamailio, site-packages), whatever the permissions of the
    # checkout they come from.
    cfg = base / "kamailio.cfg"
    shutil.copyfile(DEFAULT_CFG, cfg)
    cfg.chmod(0o644)
    shutil.copytree(ROOT / "sidecar", base / "pkg" / "sidecar",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path in (base / "pkg").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (base / "pkg").chmod(0o755)
    kam = KamailioProcess(run_kam, KamailioSettings(
        sip_port=free_port("udp"), evapi_port=free_port("tcp"), children=1, shm_mb=64),
        cfg=cfg)
    log = (base / "kamailio.log").open("wb")
    # Started as its user, as systemd starts it (with -u from root, the jsonrpcs socket
    # would stay root's).
    proc = subprocess.Popen(["setpriv", "--reuid=kamailio", "--regid=kamailio",
                             "--init-groups", *kam.command()],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while not (kam.rpc_socket.exists()
                   and port_is_bound("tcp", "127.0.0.1", kam.settings.evapi_port)):
            assert proc.poll() is None, (base / "kamailio.log").read_text()[-2000:]
            assert time.monotonic() < deadline, (base / "kamailio.log").read_text()[-2000:]
            time.sleep(0.1)
        yield run_kam, run_side, kam
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def client(rpc_socket: Path, tmpdir: Path, *, kamailio_group: bool) -> dict[str, object]:
    """The sidecar's JSON-RPC client as user nobody (in group kamailio or not)."""
    import json

    groups = ["--groups=kamailio"] if kamailio_group else ["--clear-groups"]
    # Debian's python3 (this interpreter may live where user nobody cannot reach it)
    # with this checkout's package, as the host fixture copied it beside Kamailio's run
    # directory (the socket's).
    p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", *groups,
                        "env", f"TMPDIR={tmpdir}", "HOME=/nonexistent",
                        f"PYTHONPATH={rpc_socket.parents[1] / 'pkg'}",
                        "PYTHONDONTWRITEBYTECODE=1", "/usr/bin/python3",
                        "-c", CLIENT, str(rpc_socket)],
                       capture_output=True, text=True, timeout=30, cwd="/")
    assert p.returncode == 0, p.stderr
    doc: dict[str, object] = json.loads(p.stdout)
    return doc


def test_kamailio_as_its_user_answers_the_sidecar_in_its_group(
    host: tuple[Path, Path, KamailioProcess]
) -> None:
    _, run_side, kam = host
    got = client(kam.rpc_socket, run_side, kamailio_group=True)
    assert "error" not in got, got
    assert "kamailio" in str(got["version"]).lower()
    # The reply socket was made in the runtime directory, open for traversal only.
    assert str(got["dir"]).startswith(str(run_side) + "/sidecar-rpc-")


def test_without_kamailios_group_the_client_is_refused(
    host: tuple[Path, Path, KamailioProcess]
) -> None:
    kam = host[2]
    got = client(kam.rpc_socket, Path("/tmp"), kamailio_group=False)
    assert "Permission denied" in str(got.get("error")), got
