"""End to end with the media relayed by rtpengine: the real Kamailio started with
``-A WITH_RTPENGINE``, Debian's rtpengine in userspace mode on loopback, the real
``sidecar run`` capturing RTP on ``lo`` and SIPp calls with RTP.

The sidecar supervises the carrier-facing leg (between rtpengine and the SIPp UAS): the
``offer`` event carries rtpengine's SDP towards the carrier, ``early``/``answer`` the
carrier's own. The verdicts are those of the same calls without rtpengine
(tests/e2e/test_live_media.py). rtpengine's own counters (ng ``query``), the source
where sniffing is not possible, are compared with what the capture saw on the same calls.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.lab.live import LiveLab
from sidecar.lab.rtpengine import RtpEngine
from sidecar.media.rtpengine import Decoded, NgError, received_at
from sidecar.store.accounts import verify_ledger

from .test_live_media import MEDIA, fresh_db
from .test_live_sidecar import DIALLED, account, balance, cdrs, wait_for

pytestmark = pytest.mark.timeout(240)  # rtpengine: installed by scripts/setup, never skipped


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = fresh_db(tmp_path / "sidecar.db", tmp_path)
    yield conn
    conn.close()


@pytest.fixture
def rtpe(tmp_path: Path) -> Iterator[RtpEngine]:
    with RtpEngine(tmp_path / "rtpengine") as engine:
        yield engine


def rtpe_lab(tmp_path: Path, rtpe: RtpEngine, extra: str = "") -> LiveLab:
    return LiveLab(tmp_path / "lab", tmp_path / "sidecar.db", extra_config=MEDIA + extra,
                   log_events=True,
                   kamailio_defines={"WITH_RTPENGINE": None, "RTPENGINE_SOCK": rtpe.sock})


class Querier(threading.Thread):
    """Polls rtpengine's ``query`` every 100 ms for every call it lists, keeping the last
    reply per Call-ID: with no delete-delay, the counters as they were just before the
    call was deleted (at its BYE), the window the capture counts too. What a sidecar
    that cannot sniff would read during the call."""

    def __init__(self, rtpe: RtpEngine) -> None:
        super().__init__(daemon=True)
        self.client = rtpe.client(timeout=0.5)
        # Call-ID -> (the last reply, when it came: Unix ms)
        self.replies: dict[str, tuple[dict[str, Decoded], int]] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.1):
            try:
                calls = self.client.command("list").get("calls")
            except (NgError, OSError):
                continue
            for cid in calls if isinstance(calls, list) else []:
                if not isinstance(cid, bytes):
                    continue
                with contextlib.suppress(NgError, OSError):  # deleted meanwhile
                    reply = self.client.query(cid.decode())
                    self.replies[cid.decode()] = (reply, int(time.time() * 1000))

    def __enter__(self) -> Querier:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join(5)


def call(lab: LiveLab, uas: str, *, uas_ms: int = 0, talk_ms: int = 3000) -> int:
    """One call from the customer (SIPp UAC) to the carrier (SIPp UAS running ``uas``);
    the carrier's media port."""
    server = lab.uas(uas, duration_ms=uas_ms)
    r = lab.uac("uac.xml", account_code="ACME", dialled=DIALLED, duration_ms=talk_ms).wait()
    server.wait()
    assert r.calls_ok, r.output_tail() + lab.log_tail()
    return server.media_port


def kamailio_events(lab: LiveLab) -> list[dict[str, object]]:
    """The events Kamailio sent (WITH_DEBUG logs each one)."""
    out = []
    for line in lab.kam.log_path.read_text(errors="replace").splitlines():
        m = re.search(r"evapi send: (\{.*\})$", line)
        if m:
            out.append(json.loads(m.group(1)))
    return out


def sdp_port(sdp: object) -> int:
    m = re.search(r"^m=audio (\d+)", str(sdp), re.M)
    assert m, sdp
    return int(m.group(1))


def test_normal_call_is_billed_from_the_answer_on_the_carrier_leg(
        tmp_path: Path, db: sqlite3.Connection, rtpe: RtpEngine) -> None:
    account(db, "ACME", "10")
    with rtpe_lab(tmp_path, rtpe) as lab:
        carrier_port = call(lab, "uas.xml")
        wait_for(lambda: len(cdrs(db, "ACME")) == 1)
        events = kamailio_events(lab)
    (c,) = cdrs(db, "ACME")
    assert c["disposition"] == "answered" and c["fas_verdict"] == "", c
    assert c["billable_ms"] == c["answered_ms"]
    media_ms = int(str(c["media_ms"]))
    assert 0 <= media_ms - int(str(c["answered_ms"])) < 500
    evidence = json.loads(str(c["media"]))
    assert evidence["callee"]["packets"] >= 90 and evidence["caller"]["packets"] >= 90
    # The offer is rtpengine's SDP (a port of its range), the answer the carrier's own.
    (offer,) = [e for e in events if e["event"] == "offer"]
    (answer,) = [e for e in events if e["event"] == "answer"]
    assert rtpe.port_min <= sdp_port(offer["sdp"]) <= rtpe.port_max
    assert sdp_port(answer["sdp"]) == carrier_port


def test_callee_without_rtp_is_no_media_and_not_billed(
        tmp_path: Path, db: sqlite3.Connection, rtpe: RtpEngine) -> None:
    account(db, "ACME", "10")
    with rtpe_lab(tmp_path, rtpe) as lab:
        call(lab, "uas_nomedia.xml")
        wait_for(lambda: len(cdrs(db, "ACME")) == 1)
    (c,) = cdrs(db, "ACME")
    assert c["disposition"] == "no-media" and c["fas_verdict"] == "no-media", c
    assert Decimal(str(c["charged"])) == 0 and balance(db, "ACME") == Decimal("10")
    assert all(not chk.problems for chk in verify_ledger(db))


@pytest.mark.parametrize(("uas", "uas_ms", "talk_ms", "verdict"), [
    ("uas_ringback.xml", 0, 4000, "ringback"),
    ("uas_silence.xml", 0, 4000, "silence"),
])
def test_false_answer_is_charged_then_credited(tmp_path: Path, db: sqlite3.Connection,
                                               rtpe: RtpEngine, uas: str, uas_ms: int,
                                               talk_ms: int, verdict: str) -> None:
    account(db, "ACME", "10")
    with rtpe_lab(tmp_path, rtpe) as lab:
        call(lab, uas, uas_ms=uas_ms, talk_ms=talk_ms)
        wait_for(lambda: len(cdrs(db, "ACME")) == 1)
    (c,) = cdrs(db, "ACME")
    assert c["fas_verdict"] == verdict, c
    charged, credited = Decimal(str(c["charged"])), Decimal(str(c["credited"]))
    assert charged > 0 and credited == charged
    assert balance(db, "ACME") == Decimal("10")
    assert all(not chk.problems for chk in verify_ledger(db))


def test_late_media_moves_the_billing_start(tmp_path: Path, db: sqlite3.Connection,
                                            rtpe: RtpEngine) -> None:
    account(db, "ACME", "10")
    with rtpe_lab(tmp_path, rtpe) as lab:
        call(lab, "uas_late_media.xml", uas_ms=4000, talk_ms=7000)
        wait_for(lambda: len(cdrs(db, "ACME")) == 1)
    (c,) = cdrs(db, "ACME")
    assert c["fas_verdict"] == "late-media", c
    delay = int(str(c["billable_ms"])) - int(str(c["answered_ms"]))
    assert 3500 < delay < 5000
    assert 2 <= int(str(c["billed_seconds"])) <= 4


def test_early_media_before_the_answer_is_a_clean_call(tmp_path: Path, db: sqlite3.Connection,
                                                       rtpe: RtpEngine) -> None:
    """183 with SDP and RTP at once, 200 OK 2 s later: the carrier's early media is seen
    on the carrier leg (the `early` event's SDP is the carrier's own), and the call is
    billed from the 200 OK."""
    account(db, "ACME", "10")
    with rtpe_lab(tmp_path, rtpe) as lab:
        carrier_port = call(lab, "uas_early_media.xml", uas_ms=2000, talk_ms=3000)
        wait_for(lambda: len(cdrs(db, "ACME")) == 1)
        events = kamailio_events(lab)
    (c,) = cdrs(db, "ACME")
    assert c["disposition"] == "answered" and c["fas_verdict"] == "", c
    assert c["billable_ms"] == c["answered_ms"]
    evidence = json.loads(str(c["media"]))
    assert evidence["callee"]["first_ms"] < evidence["answer_ms"] - 1500
    assert evidence["callee"]["before_answer"] > 50  # about 2 s of 20 ms frames
    (early,) = [e for e in events if e["event"] == "early" and e["code"] == 183]
    assert sdp_port(early["sdp"]) == carrier_port


def test_rtpengine_counters_agree_with_the_capture(tmp_path: Path,
                                                   db: sqlite3.Connection) -> None:
    """The same calls from both sources: what the sidecar's capture saw the carrier send,
    and what rtpengine counted on the port it advertised to the carrier (ng ``query``
    while the call is up). Without a delete-delay rtpengine forgets a call at its BYE,
    so its last counters cover the call as the capture does (with the default 30 s it
    would go on counting what the carrier still sends after the BYE)."""
    account(db, "ACME", "10")
    scenarios = [("uas.xml", 0), ("uas_nomedia.xml", 0), ("uas_late_media.xml", 2500)]
    with RtpEngine(tmp_path / "rtpengine", delete_delay_s=0) as rtpe, \
            rtpe_lab(tmp_path, rtpe) as lab, Querier(rtpe) as querier:
        for uas, uas_ms in scenarios:
            call(lab, uas, uas_ms=uas_ms, talk_ms=4000)
        wait_for(lambda: len(cdrs(db, "ACME")) == 3)
        offers = {str(e["call_id"]): e for e in kamailio_events(lab) if e["event"] == "offer"}
        with pytest.raises(NgError, match="Unknown call-id"):  # deleted at the BYE
            rtpe.client().query(next(iter(offers)))
    counted, read_ms = {}, {}
    for cid, offer in offers.items():
        assert cid in querier.replies, cid
        reply, read_ms[cid] = querier.replies[cid]
        counters = received_at(reply, sdp_port(offer["sdp"]), "127.0.0.1")
        assert counters is not None, cid
        counted[cid] = counters.packets
    rows = {str(c["call_id"]): c for c in cdrs(db, "ACME")}
    assert list(rows) == list(counted)
    assert [r["fas_verdict"] for r in rows.values()] == ["", "no-media", "late-media"]
    for cid, row in rows.items():
        captured = json.loads(str(row["media"]))["callee"]["packets"]
        # The same packets from both sources, but for those the carrier sent between the
        # last query and the end of the call (30 ms frames of g711a.pcap; about 100 ms,
        # a few packets, unless the machine is busy).
        after_ms = max(0, int(str(row["ended_ms"])) - read_ms[cid])
        assert 0 <= captured - counted[cid] <= after_ms // 30 + 3, \
            (row["fas_verdict"], captured, counted[cid], after_ms)
        # So the same answer to "did the carrier send media?".
        assert (counted[cid] > 0) is (row["fas_verdict"] != "no-media")
    assert next(iter(counted.values())) >= 120  # 4 s of 30 ms frames


def rtpengine_commands(rtpe: RtpEngine) -> list[tuple[str, str]]:
    """(Call-ID, command) of every ng command rtpengine logged."""
    return re.findall(r"\[([^\]]+)\]: \[control\] Received command '(\w+)'",
                      rtpe.log_path.read_text(errors="replace"))


def test_every_session_ends_with_its_call_and_no_rtpengine_is_a_503(
        tmp_path: Path, db: sqlite3.Connection) -> None:
    """Rejected by the sidecar (402), refused by the carrier (486), ended by the sidecar
    when the credit runs out (Kamailio's BYEs): each call's rtpengine session is deleted
    with it, none is left to rtpengine's timeout. With rtpengine gone, calls get 503."""
    account(db, "BROKE", "0")
    account(db, "PRE", "0.002")  # 2 s at 0.001/s
    with RtpEngine(tmp_path / "rtpengine", delete_delay_s=0) as rtpe, \
            rtpe_lab(tmp_path, rtpe) as lab:
        r = lab.uac("uac_reject.xml", account_code="BROKE", dialled=DIALLED).wait()
        assert r.final_codes == [402], r.output_tail() + lab.log_tail()
        busy = lab.uas("uas_reject.xml")
        r = lab.uac("uac_reject.xml", account_code="PRE", dialled=DIALLED).wait()
        assert r.final_codes == [486] and busy.wait().calls_ok, r.output_tail()
        server = lab.uas("uas.xml")
        r = lab.uac("uac.xml", account_code="PRE", dialled=DIALLED, duration_ms=10_000).wait()
        assert r.calls_ok and server.wait().calls_ok, r.output_tail() + lab.log_tail()
        wait_for(lambda: len(cdrs(db)) == 3)
        assert rtpe.client().command("list").get("calls") == []
        commands = rtpengine_commands(rtpe)
        rtpe.stop()
        r = lab.uac("uac_reject.xml", account_code="PRE", dialled=DIALLED).wait()
        assert r.final_codes == [503], r.output_tail()
        kam_log = lab.kam.log_path.read_text(errors="replace")
    call_ids = {cid for cid, _ in commands}
    assert len(call_ids) == 3
    for cid in call_ids:
        assert [c for i, c in commands if i == cid and c in ("offer", "delete")] == \
            ["offer", "delete"], (cid, commands)
    broke, busy_row, cut = cdrs(db)[:3]
    assert (broke["sip_code"], busy_row["sip_code"]) == (402, 486)
    assert cut["end_reason"] == "credit exhausted" and cut["billed_seconds"] == 2
    assert "refused or did not answer the offer" in kam_log


def test_reinvite_media_events_carry_the_carrier_leg(tmp_path: Path, db: sqlite3.Connection,
                                                     rtpe: RtpEngine) -> None:
    """A re-INVITE from the caller: its `media` event carries rtpengine's SDP towards the
    carrier (the port of the offer), the carrier's 200 OK its own; the call stays clean."""
    account(db, "ACME", "10")
    with rtpe_lab(tmp_path, rtpe) as lab:
        server = lab.uas("uas_reinvite.xml")
        r = lab.uac("uac_reinvite.xml", account_code="ACME", dialled=DIALLED,
                    duration_ms=3000).wait()
        assert r.calls_ok and server.wait().calls_ok, r.output_tail() + lab.log_tail()
        wait_for(lambda: len(cdrs(db, "ACME")) == 1)
        events = kamailio_events(lab)
    (c,) = cdrs(db, "ACME")
    assert c["disposition"] == "answered" and c["fas_verdict"] == "", c
    assert json.loads(str(c["media"]))["callee"]["packets"] >= 90
    (offer,) = [e for e in events if e["event"] == "offer"]
    (answer,) = [e for e in events if e["event"] == "answer"]
    media = {str(e["side"]): e for e in events if e["event"] == "media"}
    assert media.keys() == {"caller", "callee"}
    assert sdp_port(media["caller"]["sdp"]) == sdp_port(offer["sdp"])
    assert rtpe.port_min <= sdp_port(media["caller"]["sdp"]) <= rtpe.port_max
    assert sdp_port(media["callee"]["sdp"]) == sdp_port(answer["sdp"]) == server.media_port
