"""Alerts go to a real HTTP webhook; recharges run a real payment command or webhook and
land in the ledger."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sidecar.charging import Alert, Recharge
from sidecar.config import ConfigError, load_config
from sidecar.live.notify import Notifier, run_recharge
from tests.charging.harness import Sim


class Hook:
    def __init__(self, status: int = 200, body: str = "") -> None:
        self.status, self.body = status, body
        self.received: list[dict[str, object]] = []


@pytest.fixture
def hook() -> Iterator[tuple[Hook, str]]:
    h = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = int(self.headers["Content-Length"])
            h.received.append(json.loads(self.rfile.read(n)))
            self.send_response(h.status)
            self.end_headers()
            self.wfile.write(h.body.encode())

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield h, f"http://127.0.0.1:{srv.server_address[1]}/hook"
    finally:
        srv.shutdown()
        srv.server_close()


def test_alert_is_posted_to_the_webhook(hook: tuple[Hook, str]) -> None:
    h, url = hook
    asyncio.run(Notifier(alert_webhook=url).alert(
        Alert("low_balance", "acme", "balance fell below 5", 1000, {"balance": "4.2"})))
    assert h.received == [{"kind": "low_balance", "account": "acme", "at_ms": 1000,
                           "message": "balance fell below 5", "balance": "4.2"}]


def test_recharge_by_payment_command_lands_in_the_ledger(tmp_path: Path) -> None:
    script = tmp_path / "pay.py"
    script.write_text("import sys\nprint('PAY-' + sys.argv[1] + '-' + sys.argv[2])\n")
    sim = Sim()
    sim.account("acme", "1")
    notifier = Notifier(recharge_command=[sys.executable, str(script), "{account}",
                                          "{amount}"])
    done: list[str] = []
    res = asyncio.run(run_recharge(
        notifier, Recharge("acme", Decimal("20"), 0), "USD",
        lambda code, amount, note: sim.ledger.topup(code, amount, sim.now, note) and None,
        done.append))
    assert res.ok and res.reference == "PAY-acme-20"
    assert sim.balance("acme") == Decimal("21")
    row = sim.conn.execute("SELECT kind, amount, note FROM ledger ORDER BY id DESC").fetchone()
    assert row == ("topup", "20", "auto-recharge PAY-acme-20")
    assert done == ["acme"]


def test_failed_payment_changes_nothing(tmp_path: Path, hook: tuple[Hook, str]) -> None:
    sim = Sim()
    sim.account("acme", "1")
    failing = Notifier(recharge_command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    res = asyncio.run(run_recharge(failing, Recharge("acme", Decimal("20"), 0), "USD",
                                   lambda *a: None, lambda _a: None))
    assert not res.ok and "exited 3" in res.error
    h, url = hook
    h.status = 402
    res = asyncio.run(Notifier(recharge_webhook=url).recharge(Recharge("acme", Decimal("5"), 0),
                                                              "USD"))
    assert not res.ok and "402" in res.error
    assert h.received == [{"account": "acme", "amount": "5", "currency": "USD"}]
    assert sim.balance("acme") == Decimal("1")


def test_config_file(tmp_path: Path) -> None:
    good = tmp_path / "ok.toml"
    good.write_text('[kamailio]\nevapi_port = 9000\n[recharge]\ncommand = ["pay", "{amount}"]\n')
    cfg = load_config(good)
    assert cfg.evapi_port == 9000 and cfg.recharge_command == ("pay", "{amount}")
    bad = tmp_path / "bad.toml"
    bad.write_text("[kamailio]\nevapi_prot = 9000\n")
    with pytest.raises(ConfigError, match=r"bad.toml: kamailio\.evapi_prot: unknown key"):
        load_config(bad)
    bad.write_text('[kamailio]\nevapi_port = "x"\n')
    with pytest.raises(ConfigError, match=r"kamailio\.evapi_port: must be int"):
        load_config(bad)
