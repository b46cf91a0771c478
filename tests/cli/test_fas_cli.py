"""``sidecar fas``: route scores and FAS calls from the CDRs, through the installed CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sidecar.kamailio.events import Answer, Dialog, End, Offer
from sidecar.supervision.calls import CallControl
from sidecar.supervision.media import MediaSupervisor
from tests.charging.harness import T0, Sim
from tests.supervision.media_gen import packets, sdp, speech_like

SIDECAR = [sys.executable, "-m", "sidecar"]


def test_fas_calls_and_routes(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    sim = Sim(db=db)
    sim.account("acme", "10")
    control = CallControl(sim.charger, MediaSupervisor())
    for i in range(3):  # answered without media on carrier-x
        ref, t = f"c{i}", T0 + i * 60_000
        control.on_event(Offer(Dialog(ref, 1, 1, t * 1000), 0, 0, "a", "", "", "493012345",
                               "", "493012345", "acme", "", 0,
                               sdp("127.0.0.1", 6000 + 2 * i)), t)
        control.on_event(Answer(Dialog(ref, 1, 1, 0), sdp("127.0.0.1", 7000 + 2 * i),
                                "carrier-x"), t + 200)
        for ts, data in packets(speech_like(0.2), 300):  # the caller talks: media captured
            control.on_packet(t + ts, "127.0.0.1", 6000 + 2 * i, "127.0.0.1", 7000 + 2 * i,
                              data)
        control.on_event(End(Dialog(ref, 1, 1, 0), "caller", "bye", 0), t + 10_000)
    out = subprocess.run([*SIDECAR, "--db", str(db), "fas", "calls", "--json"],
                         capture_output=True, text=True, check=True)
    calls = json.loads(out.stdout)
    assert [c["call_id"] for c in calls] == ["c0", "c1", "c2"]
    assert {c["fas_verdict"] for c in calls} == {"no-media"}
    out = subprocess.run([*SIDECAR, "--db", str(db), "fas", "routes", "--min-calls", "3",
                          "--json"], capture_output=True, text=True, check=True)
    (route,) = json.loads(out.stdout)
    assert route["route"] == "carrier-x" and route["judged"] and route["score"] >= 60
    assert route["fas_calls"] == {"no-media": 3}
    bad = subprocess.run([*SIDECAR, "--db", str(db), "fas", "calls", "--account", "NOPE"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "account 'NOPE' not found" in bad.stderr
