"""A B2BUA with direct media recorded in the lab (``pcaps/b2bua/``): two dialogs with
Call-IDs of their own whose media is the same packets, replayed through the production
core as ``sidecar replay`` does. Each leg gets the verdict and the billing its media
justifies, and the recorder makes such a capture again with the real Kamailio and SIPp.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sidecar.kamailio.events import Answer, Early, End, Offer
from sidecar.media.pcap import read_capture
from sidecar.replay.run import Replay
from sidecar.replay.signalling import SipTracker
from sidecar.store.accounts import verify_ledger
from sidecar.supervision.calls import CallControl
from sidecar.supervision.media import MediaSupervisor
from tests.charging.harness import Sim

DIR = Path(__file__).resolve().parents[2] / "pcaps" / "b2bua"
NAME = "b2bua_direct_media.pcap"
EXPECTED: dict[str, Any] = json.loads((DIR / "expected.json").read_text())[NAME]
LEGS = EXPECTED["legs"]
Address = tuple[str, int]


def recorder() -> ModuleType:
    """``pcaps/b2bua/record.py``, the script that records the capture."""
    spec = importlib.util.spec_from_file_location("b2bua_record", DIR / "record.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def audio_address(sdp: str) -> Address:
    c = re.search(r"^c=IN IP4 (\S+)", sdp, re.M)
    m = re.search(r"^m=audio (\d+)", sdp, re.M)
    assert c and m, sdp
    return c.group(1), int(m.group(1))


@dataclass
class Leg:
    """One dialog of the capture, from its SIP."""

    call_id: str
    caller: str
    account: str
    offer_media: Address
    offer_s: float = 0.0
    answer_media: Address | None = None
    answer_s: float | None = None
    provisional: tuple[int, ...] = ()
    end_by: str | None = None
    end_s: float | None = None


@dataclass
class Capture:
    legs: dict[str, Leg]  # "in" / "out", told apart by the account in the R-URI
    rtp: dict[tuple[Address, Address], int]  # (source, destination) -> packets


def read(path: Path) -> Capture:
    """The dialogs (SIP) and the other UDP datagrams of a capture, with the project's
    reader and SIP tracker (what the replay sees)."""
    tracker = SipTracker()
    events = []
    rtp: dict[tuple[Address, Address], int] = {}
    for p in read_capture(path):
        if tracker.looks_like_sip(p):
            events += [(p.timestamp, e) for e in tracker.feed(p)]
        elif p.transport == "udp":
            key = ((p.src_ip, p.src_port), (p.dst_ip, p.dst_port))
            rtp[key] = rtp.get(key, 0) + 1
    events += [(0.0, e) for e in tracker.finish()]
    by_id: dict[str, Leg] = {}
    for ts, e in events:
        if isinstance(e, Offer):
            by_id[e.dialog.call_id] = Leg(e.dialog.call_id, e.from_user, e.account_code,
                                          audio_address(e.sdp), ts)
            continue
        leg = by_id[e.dialog.call_id]
        if isinstance(e, Answer):
            leg.answer_media, leg.answer_s = audio_address(e.sdp), ts
        elif isinstance(e, End):
            leg.end_by, leg.end_s = e.by, ts
        elif isinstance(e, Early):
            leg.provisional += (e.code,)
    names = {leg["account"]: name for name, leg in LEGS.items()}
    return Capture({names[leg.account]: leg for leg in by_id.values()}, rtp)


def check_capture(path: Path) -> Capture:
    """The SIP and RTP facts of ``expected.json``."""
    assert path.stat().st_size < 300_000
    cap = read(path)
    assert len(cap.legs) == EXPECTED["calls"] == 2
    assert len({leg.call_id for leg in cap.legs.values()}) == 2
    phones = {"phone_a": cap.legs["in"].offer_media, "phone_b": cap.legs["in"].answer_media}
    for name, facts in LEGS.items():
        leg = cap.legs[name]
        assert (leg.caller, leg.account) == (facts["caller"], facts["account"])
        assert list(leg.provisional) == facts["provisional"]
        # Each dialog names the same two phones: the media is the same packets.
        assert leg.offer_media == phones[facts["offer_media"]]
        assert leg.answer_media == phones[facts["answer_media"]]
        assert leg.answer_s is not None and leg.end_s is not None
        assert abs(leg.answer_s - leg.offer_s - facts["answer_after_s"]) < 0.4, name
        assert leg.end_by == facts["hangup_by"]
        assert abs(leg.end_s - leg.answer_s - facts["talk_s"]) < 0.5, name
    first = min(LEGS, key=lambda n: cap.legs[n].answer_s or 0.0)
    assert first == EXPECTED["answered_first"]
    a, b = phones["phone_a"], phones["phone_b"]
    assert b is not None
    # Every datagram that is not SIP goes straight between the two phones, both ways.
    assert set(cap.rtp) == {(a, b), (b, a)}
    assert min(cap.rtp.values()) >= EXPECTED["rtp_min_packets_each_way"]
    return cap


def test_the_capture_is_two_dialogs_over_the_same_packets() -> None:
    check_capture(DIR / NAME)


def test_tshark_sees_the_same_two_dialogs_and_streams() -> None:
    """An independent reader (tshark, installed by scripts/setup): two Call-IDs, whose
    INVITEs carry the two accounts, and the same RTP packets between the same phones."""
    tshark = shutil.which("tshark")
    assert tshark is not None, "tshark is installed by scripts/setup"
    cap = read(DIR / NAME)
    a, b = cap.legs["in"].offer_media, cap.legs["in"].answer_media
    assert b is not None
    argv = [tshark, "-n", "-r", str(DIR / NAME), "-d", f"udp.port=={a[1]},rtp",
            "-d", f"udp.port=={b[1]},rtp", "-Y", "sip.Method == INVITE || rtp",
            "-T", "fields", "-E", "separator=|", "-e", "sip.Call-ID", "-e", "sip.r-uri",
            "-e", "udp.srcport", "-e", "udp.dstport", "-e", "rtp.p_type"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    invites: dict[str, set[str]] = {}
    streams: dict[tuple[int, int], int] = {}
    for line in out.splitlines():
        call_id, ruri, src, dst, pt = line.split("|")
        if call_id:
            invites.setdefault(call_id, set()).add(ruri.rsplit(";ac=", 1)[-1])
        else:
            assert pt == "8"  # PCMA
            streams[(int(src), int(dst))] = streams.get((int(src), int(dst)), 0) + 1
    assert invites == {leg.call_id: {leg.account} for leg in cap.legs.values()}
    assert streams == {(s[1], d[1]): n for (s, d), n in cap.rtp.items()}


def test_expected_facts_are_those_the_recorder_scripts() -> None:
    rec = recorder()
    assert rec.FILE_NAME == NAME
    assert (LEGS["in"]["caller"], LEGS["in"]["account"]) == (rec.CALLER_A, rec.ACCOUNT_A)
    assert (LEGS["out"]["caller"], LEGS["out"]["account"]) == (rec.CALLER_PBX,
                                                               rec.ACCOUNT_PBX)
    assert LEGS["in"]["talk_s"] == rec.TALK_A_MS / 1000
    assert LEGS["out"]["talk_s"] == rec.TALK_PBX_MS / 1000
    assert LEGS["in"]["answer_after_s"] == rec.ANSWER_AFTER_MS / 1000


def replay() -> tuple[Any, Sim]:
    sim = Sim()
    for facts in LEGS.values():
        sim.account(facts["account"], "5")
    control = CallControl(sim.charger, MediaSupervisor())
    return Replay(control).run(read_capture(DIR / NAME)), sim


# Leg in's dialog comes first. Leg out's offer names phone A's address, which leg in
# (ringing, not ended) holds, and leg in's answer names phone B's, which leg out
# (answered) holds: both legs share both addresses, so every packet between the phones
# is evidence for both dialogs.


@pytest.mark.parametrize("name", ["in", "out"])
def test_replay_gives_each_leg_the_verdict_and_billing_its_media_justifies(name: str) -> None:
    facts = LEGS[name]
    cap = read(DIR / NAME)
    result, sim = replay()
    calls = {c.call_id: c for c in result.calls}
    assert len(calls) == 2
    call = calls[cap.legs[name].call_id]
    assert (call.disposition, call.verdict) == (facts["disposition"], facts["fas"]), \
        call.reasons
    assert call.answer_ms is not None and call.billable_ms is not None
    assert (call.billable_ms - call.answer_ms) / 1000 == facts["billable_from_answer_s"]
    # The callee's media is phone B's, whichever leg.
    assert call.evidence["callee"]["packets"] >= EXPECTED["rtp_min_packets_each_way"], \
        call.evidence
    (cdr,) = [dict(r) for r in sim.cdrs() if r["call_id"] == call.call_id]
    assert cdr["billed_seconds"] == facts["billed_seconds"]
    # 0.06/min per second under the tests' deck, nothing credited.
    assert Decimal(cdr["charged"]) == Decimal("0.001") * facts["billed_seconds"]
    assert Decimal(cdr["credited"]) == 0
    assert sim.balance(facts["account"]) == Decimal("5") - Decimal(cdr["charged"])
    assert all(not c.problems for c in verify_ledger(sim.conn))


def test_the_recorder_records_it_again(tmp_path: Path) -> None:
    """The real Kamailio (twice), SIPp (four) and tcpdump: the same facts again."""
    rec = recorder()
    recorded = rec.record(tmp_path / "out", tmp_path / "work")
    assert all(r.calls_ok for r in recorded.results.values())
    cap = check_capture(recorded.path)
    phones = recorded.media_ports
    assert cap.legs["in"].offer_media == ("127.0.0.1", phones["phone_a"])
    assert cap.legs["out"].answer_media == ("127.0.0.1", phones["phone_b"])


def test_replay_counts_the_same_packets_for_both_legs() -> None:
    cap = read(DIR / NAME)
    result, _ = replay()
    calls = {c.call_id: c for c in result.calls}
    counted = {name: (calls[leg.call_id].evidence["caller"]["packets"],
                      calls[leg.call_id].evidence["callee"]["packets"])
               for name, leg in cap.legs.items()}
    a, b = cap.legs["in"].offer_media, cap.legs["in"].answer_media
    assert b is not None
    sent = (cap.rtp[(a, b)], cap.rtp[(b, a)])  # phone A's, phone B's
    # Each leg counts (nearly) every packet of the call: those after its BYE are not its.
    for name, (caller, callee) in counted.items():
        assert caller >= sent[0] - 30 and callee >= sent[1] - 30, (name, counted, sent)
