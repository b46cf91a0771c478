"""The lab's reference captures (pcaps/) replayed through the production core: each
gives the verdict, billable start and charge pcaps/expected.json records."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.media.pcap import read_capture
from sidecar.replay.run import Replay
from sidecar.store.accounts import map_sip, verify_ledger
from sidecar.store.db import connect
from sidecar.supervision.calls import CallControl, ControlConfig
from sidecar.supervision.media import MediaSupervisor

from ..charging.harness import Sim

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
EXPECTED = json.loads((PCAPS / "expected.json").read_text())
SIDECAR = [sys.executable, "-m", "sidecar"]


def replay(name: str, sim: Sim | None = None) -> tuple[object, Sim]:
    sim = sim or charged_sim()
    control = CallControl(sim.charger, MediaSupervisor(), ControlConfig(supervise_rejected=True))
    reader = read_capture(PCAPS / name)
    result = Replay(control).run(reader)
    return result, sim


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_capture_gives_its_expected_verdict(name: str) -> None:
    exp = EXPECTED[name]
    result, _ = replay(name)
    assert len(result.calls) == exp["calls"] == 1
    (call,) = result.calls
    assert call.verdict == exp["fas"], call.reasons
    assert call.disposition == exp["disposition"]
    assert call.final_code == exp["final_code"]
    if exp["final_code"] != 200:
        assert call.answer_ms is None and call.billable_ms is None
        return
    assert call.answer_ms is not None and call.invite_ms is not None
    if exp["fas"] == "no-media":
        assert call.billable_ms is None and call.billable_seconds == 0
        # Not billed, but up as signalled: the CDR's signalled_ms says for how long.
        assert call.signalled_ms is not None and call.signalled_ms > 3000
        assert call.to_dict()["signalled_ms"] == call.signalled_ms
    elif exp["fas"] == "late-media":
        delay = (call.billable_ms - call.answer_ms) / 1000
        assert abs(delay - exp["late_media_delay_s"]) < 0.2
        assert call.billable_ms == call.callee_media_ms
    else:  # billed from the 200 OK (ringback and silence are then credited)
        assert call.billable_ms == call.answer_ms
    if exp["early_media"]:
        assert call.callee_media_ms is not None and call.callee_media_ms < call.answer_ms
        assert call.evidence["callee"]["before_answer"] > 50
    assert call.evidence["instant_answer"] is exp["instant_answer"]
    assert (call.ringing_ms is None) is (not exp["provisional"])


def test_ringback_reason_names_the_tone_and_its_time() -> None:
    result, _ = replay("ringback_after_answer_pcmu.pcap")
    (call,) = result.calls
    assert call.reasons.startswith("ringing tone (440+480 Hz) in the callee's media")
    assert call.evidence["ringback_at_ms"] < 1000


def charged_sim() -> Sim:
    """A store where the lab's caller (SIP user 15551230001) is account acme on 'retail'."""
    sim = Sim()
    sim.account("acme", "5")
    map_sip(sim.conn, "user", "15551230001", "acme")
    return sim


@pytest.mark.parametrize(("name", "disposition", "credited"), [
    ("normal.pcap", "answered", False),
    ("ringback_after_answer.pcap", "answered", True),
    ("silence_after_answer.pcap", "answered", True),
    ("no_media.pcap", "no-media", False),
    ("late_media.pcap", "answered", False),
    ("early_media_failure.pcap", "failed", False),
])
def test_replay_writes_the_cdr_and_ledger_rows_live_would(name: str, disposition: str,
                                                          credited: bool) -> None:
    result, sim = replay(name, charged_sim())
    (cdr,) = [dict(r) for r in sim.cdrs()]
    (call,) = result.calls
    assert cdr["disposition"] == disposition and cdr["call_id"] == call.call_id
    assert cdr["fas_verdict"] == EXPECTED[name]["fas"]
    assert cdr["route"] == call.route and cdr["route"].startswith("127.0.0.1:")
    charged, cred = Decimal(cdr["charged"]), Decimal(cdr["credited"])
    if disposition == "answered":
        # 0.06/min per second: the billed seconds at 0.001 each.
        assert charged == Decimal("0.001") * cdr["billed_seconds"] > 0
        assert cdr["billable_ms"] == call.billable_ms
    else:
        assert charged == 0
    assert (cred == charged > 0) is credited
    balance = sim.balance("acme")
    assert balance == Decimal("5") - charged + cred
    assert all(not c.problems for c in verify_ledger(sim.conn))


def test_cli_replay_json_with_a_what_if_plan(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    Sim(db=db)  # imports the 'retail' plan into db
    out = subprocess.run([*SIDECAR, "--db", str(db), "replay", str(PCAPS / "late_media.pcap"),
                          "--plan", "retail", "--json"], capture_output=True, text=True,
                         check=True)
    doc = json.loads(out.stdout)
    (call,) = doc["calls"]
    assert call["verdict"] == "late-media" and call["billable_seconds"] == 4
    assert call["cost"] == "0.004" and call["currency"] == "USD"
    assert doc["summary"]["rtp_packets"] > 300
    # A what-if writes nothing.
    conn = connect(db)
    assert conn.execute("SELECT COUNT(*) FROM cdrs").fetchone()[0] == 0


def test_cli_replay_text_and_db_write(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    sim = Sim(db=db)
    sim.account("acme", "5")
    map_sip(sim.conn, "user", "15551230001", "acme")
    out = subprocess.run([*SIDECAR, "replay", str(PCAPS / "ringback_after_answer.pcap"),
                          "--db", str(db)], capture_output=True, text=True, check=True)
    assert "FAS verdict: ringback - ringing tone (425 Hz)" in out.stdout
    assert "1 CDRs written to" in out.stdout
    row = connect(db).execute("SELECT fas_verdict, credited FROM cdrs").fetchone()
    assert row[0] == "ringback" and Decimal(row[1]) > 0


def test_cli_replay_bad_files_fail_clearly(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all")
    out = subprocess.run([*SIDECAR, "replay", str(junk)], capture_output=True, text=True)
    assert out.returncode == 1 and "not a pcap or pcapng capture" in out.stderr
    out = subprocess.run([*SIDECAR, "replay", str(tmp_path / "missing.pcap")],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "missing.pcap" in out.stderr


def test_capture_with_garbage_packets_still_replays(tmp_path: Path) -> None:
    import dpkt

    src = PCAPS / "normal.pcap"
    dst = tmp_path / "garbage.pcap"
    with src.open("rb") as f, dst.open("wb") as g:
        reader = dpkt.pcap.Reader(f)
        writer = dpkt.pcap.Writer(g, linktype=reader.datalink())
        for i, (ts, frame) in enumerate(reader):
            writer.writepkt(frame, ts)
            if i % 7 == 0:  # junk frames, truncated frames, SIP-looking junk on 5060
                writer.writepkt(b"\x00" * 9, ts)
                writer.writepkt(frame[:30], ts)
                writer.writepkt(frame[:42] + b"INVITE sip:x SIP/2.0\r\n\r\n\xff\xfe", ts)
    reader = read_capture(dst)
    control = CallControl(Sim().charger, MediaSupervisor(), ControlConfig(supervise_rejected=True))
    result = Replay(control).run(reader)
    (call,) = result.calls
    assert call.verdict == "" and call.billable_ms == call.answer_ms
    assert result.capture.packets_skipped > 0


def test_call_still_up_when_the_capture_ends_is_ended_there(tmp_path: Path) -> None:
    import dpkt

    cut = tmp_path / "cut.pcap"
    last = 0.0
    with (PCAPS / "normal.pcap").open("rb") as f, cut.open("wb") as g:
        reader = dpkt.pcap.Reader(f)
        writer = dpkt.pcap.Writer(g, linktype=reader.datalink())
        for ts, frame in reader:
            if b"BYE sip:" in frame:
                break
            writer.writepkt(frame, ts)
            last = ts
    result, sim = replay_file(cut, charged_sim())
    (call,) = result.calls
    assert call.answer_ms is not None and call.ended_ms == int(last * 1000)
    assert call.verdict == "" and call.billable_ms == call.answer_ms
    (cdr,) = [dict(r) for r in sim.cdrs()]
    assert cdr["disposition"] == "answered" and cdr["end_reason"] == "capture ended"
    assert Decimal(cdr["charged"]) > 0


def replay_file(path: Path, sim: Sim) -> tuple[object, Sim]:
    control = CallControl(sim.charger, MediaSupervisor(), ControlConfig(supervise_rejected=True))
    reader = read_capture(path)
    return Replay(control).run(reader), sim


def test_a_call_the_sidecar_refuses_is_reported_rejected_with_its_code() -> None:
    result, sim = replay("normal.pcap", Sim())  # no account for the lab's caller
    (call,) = result.calls  # type: ignore[attr-defined]
    assert call.disposition == "rejected"
    assert call.auth.startswith("403 no account for SIP user '15551230001'")
    assert call.cost is None  # nothing billed
    (cdr,) = sim.cdrs()
    assert (cdr["disposition"], cdr["sip_code"]) == ("rejected", 403)


def _signalling_only(src: Path, dst: Path) -> int:
    """``src`` without its RTP (what a capture of the SIP port holds); returns the number
    of frames kept."""
    import dpkt

    kept = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        writer = dpkt.pcap.Writer(fout, linktype=dpkt.pcap.Reader(src.open("rb")).datalink())
        for ts, frame in dpkt.pcap.Reader(fin):
            eth = dpkt.ethernet.Ethernet(frame)
            udp = getattr(eth.data, "data", None)
            if isinstance(udp, dpkt.udp.UDP) and udp.data[:1] and 0x80 <= udp.data[0] <= 0xBF:
                continue  # RTP and RTCP (SIP starts with a letter)
            writer.writepkt(frame, ts)
            kept += 1
    return kept


@pytest.mark.parametrize("name", ["normal.pcap", "no_media.pcap", "ringback_after_answer.pcap"])
def test_a_capture_of_the_signalling_alone_bills_from_the_answer_and_warns(
        name: str, tmp_path: Path) -> None:
    """Without RTP in the capture nothing can be said about media: every answered call is
    billed from its 200 OK, verdict media-not-captured (never a FAS verdict), and the
    replay warns, where the full capture gives its own verdict."""
    stripped = tmp_path / f"sip-only-{name}"
    assert _signalling_only(PCAPS / name, stripped) > 0
    result, sim = replay(str(stripped))  # an absolute path: PCAPS / it is itself
    (call,) = result.calls
    assert call.verdict == "media-not-captured", call.reasons
    assert call.disposition == "answered" and call.billable_ms == call.answer_ms
    assert call.billable_seconds > 0 and "media not captured" in call.reasons
    assert all(not c.problems for c in verify_ledger(sim.conn))
    out = subprocess.run([*SIDECAR, "replay", str(stripped)], capture_output=True, text=True,
                         check=True)
    assert "FAS verdict: media-not-captured" in out.stdout, out.stdout
    assert "warning: 1 answered call(s) billed from the 200 OK" in out.stderr, out.stderr
