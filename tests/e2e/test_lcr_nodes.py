"""End to end: least-cost routing on two nodes sharing one PostgreSQL store (issue 15).

Two Kamailio + ``sidecar run`` nodes, two SIPp carriers both nodes route to. Route health
on the node that saw a carrier fake its answers pulls it; the pull is the store's, so the
other node stops sending it calls too, and an operator's ``carrier enable`` brings it back
on both. Every process is stopped by PID when the test ends, also on failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.lab.nodes import NodesLab
from sidecar.store.conn import open_db
from tests.e2e.test_lcr import FIXED, MEDIA_AND_ROUTING, SELL, Carrier, buy_deck
from tests.e2e.test_limits import cli, cli_json
from tests.e2e.test_live_sidecar import wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL database with the sell deck and a prepaid account."""
    from psycopg.conninfo import conninfo_to_dict

    from tests.store.pgdb import fresh_database

    with fresh_database() as conninfo:
        p = conninfo_to_dict(conninfo)
        url = f"postgresql://{p['user']}@{p['host']}:{p['port']}/{p['dbname']}"
        (tmp_path / "sell.csv").write_text(SELL)
        cli(url, "deck", "import", str(tmp_path / "sell.csv"), "--plan", "retail",
            "--as-of", "2026-01-01")
        cli(url, "account", "add", "ACME", "--plan", "retail", "--balance", "10")
        yield url


def cdrs(url: str) -> list[dict[str, Any]]:
    conn = open_db(url)
    try:
        cur = conn.execute("SELECT * FROM cdrs ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        conn.close()


def test_a_carrier_pulled_on_one_node_is_no_longer_tried_by_the_other(
        store: str, tmp_path: Path) -> None:
    faker = Carrier(None, store, tmp_path, "faker", buy_deck("0.0100", "1/1"))
    solid = Carrier(None, store, tmp_path, "solid", buy_deck("0.0350", "6/6"))
    with NodesLab(tmp_path / "nodes", store, 2, extra_config=MEDIA_AND_ROUTING) as nodes:
        faker.lab = solid.lab = nodes[0]
        faker.answer("uas_nomedia.xml", calls=3)
        for n in (1, 2, 3):  # node 0 sees faker answer three calls without media
            nodes[0].uac(account_code="ACME", dialled=FIXED, duration_ms=1500).wait()
            wait_for(lambda n=n: len(cdrs(store)) == n)
        assert [c["route"] for c in cdrs(store)] == ["faker"] * 3
        wait_for(lambda: cli_json(store, "carrier", "show", "faker")["enabled"] is False)
        # Node 1 never saw those calls: it takes the pull up from the store.
        wait_for(lambda: "route health: faker pulled until" in
                 nodes[1].sidecar_log.read_text())
        solid.answer("uas.xml", calls=1)
        r = nodes[1].uac(account_code="ACME", dialled=FIXED, duration_ms=1500).wait()
        assert r.calls_ok, r.output_tail() + nodes[1].log_tail()
        wait_for(lambda: len(cdrs(store)) == 4)
        last = cdrs(store)[-1]
        assert (last["route"], last["disposition"], last["node"]) == (
            "solid", "answered", nodes.names[1])
        assert faker.invites() == 3 and solid.invites() == 1
        # An operator brings it back: both nodes offer it calls again.
        cli(store, "carrier", "enable", "faker", "--note", "fixed")
        for node in nodes:
            wait_for(lambda node=node: "faker enabled by an operator" in
                     node.sidecar_log.read_text())
