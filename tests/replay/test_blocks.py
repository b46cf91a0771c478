"""The replay of a capture file in blocks (RTP held back per flow and counted in runs)
gives what the one-by-one replay of the same payloads gives: every call's report and
evidence, every CDR and every counter, on the lab's captures and on a seeded capture of
overlapping calls with lost, late, duplicated and garbled packets and garbage frames."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sidecar.media.pcap as pcap_module
import sidecar.replay.run as run_module
import sidecar.supervision.media as media_module
from sidecar.charging import Charger, ChargingConfig
from sidecar.cli.replay import REPLAY_ACCOUNT, _what_if_db
from sidecar.media.pcap import read_capture
from sidecar.replay.run import Replay
from sidecar.replay.signalling import SipTracker
from sidecar.store.accounts import ledger_for
from sidecar.store.db import connect
from sidecar.store.decks import PlanCache, import_deck
from sidecar.supervision.calls import CallControl, ControlConfig
from sidecar.supervision.media import MediaConfig, MediaSupervisor

from .capture_gen import build, write_pcap, write_pcapng

ROOT = Path(__file__).resolve().parents[2]
LAB = sorted(p for p in (ROOT / "pcaps").rglob("*.pcap*"))


def _control(tmp: Path, charged: bool, config: MediaConfig) -> tuple[CallControl, str]:
    if not charged:
        return CallControl(Charger(ledger_for(connect(":memory:")),
                                   PlanCache(connect(":memory:")), ChargingConfig()),
                           MediaSupervisor(config), ControlConfig(supervise_rejected=True)), ""
    db = tmp / "deck.db"
    if not db.exists():
        source = connect(db)
        import_deck(source, "bench", ROOT / "sidecar" / "data" / "sample-deck.csv")
        source.close()
    conn = _what_if_db(db, "bench")
    return CallControl(Charger(ledger_for(conn), PlanCache(conn), ChargingConfig()),
                       MediaSupervisor(config), ControlConfig(supervise_rejected=True)), \
        REPLAY_ACCOUNT


def replay(path: Path, tmp: Path, *, blocks: bool, charged: bool = True,
           config: MediaConfig | None = None) -> dict[str, Any]:
    """Everything a replay reports, as JSON text per part (Decimal and all)."""
    control, account = _control(tmp, charged, config or MediaConfig(grace_ms=2000))
    reader = read_capture(path)
    replayer = Replay(control, SipTracker(), account_override=account)
    # The reader itself is replayed in blocks; its datagrams() one payload at a time.
    result = replayer.run(reader if blocks else reader.datagrams())
    media = control.media
    assert media is not None
    return {
        "calls": [json.dumps(r.to_dict(), sort_keys=True, default=str) for r in result.calls],
        "cdrs": [repr(c) for c in result.cdrs],
        "capture": repr(reader.stats),
        "sip": repr(result.sip),
        "counts": (result.packets, result.rtp_packets, result.first_ts, result.last_ts),
        "media": (media.packets_matched, media.packets_unmatched, media.packets_not_rtp,
                  sorted(media.rtp_families), media.not_captured, media.bad_sdp),
    }


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """How many runs flow_run counted at once (NumPy) and one by one."""
    seen = {"vector": 0, "each": 0}
    each = media_module.MediaSupervisor._run_each

    def counted(self: MediaSupervisor, flow: Any, run: Any) -> None:
        seen["each"] += 1
        each(self, flow, run)

    monkeypatch.setattr(media_module.MediaSupervisor, "_run_each", counted)
    flow_run = media_module.MediaSupervisor.flow_run

    def spy(self: MediaSupervisor, flow: Any, run: Any) -> None:
        seen["vector"] += 1
        flow_run(self, flow, run)

    monkeypatch.setattr(media_module.MediaSupervisor, "flow_run", spy)
    yield seen
    seen["vector"] -= seen["each"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "calls.pcap"
    write_pcap(path, build(seed=5, calls=12))
    return path


def test_generated_capture_is_as_varied_as_it_claims(generated: Path, tmp_path: Path) -> None:
    got = replay(generated, tmp_path, blocks=False)
    verdicts = {json.loads(c)["verdict"] for c in got["calls"]}
    assert {"", "ringback", "silence", "late-media", "no-media"} <= verdicts
    capture = read_capture(generated)
    list(capture.datagrams())
    assert capture.stats.skipped and capture.stats.datagrams_reassembled
    assert got["media"][1] and got["media"][2]  # RTP of no call; RTCP and runts


@pytest.mark.parametrize("block_bytes", [4096, 1 << 16, 8 << 20])
@pytest.mark.parametrize("run_min", [1, 8])
def test_generated_capture_same_in_blocks(generated: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          runs: dict[str, int], block_bytes: int,
                                          run_min: int) -> None:
    monkeypatch.setattr(pcap_module, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(media_module, "_RUN_MIN", run_min)
    one_by_one = replay(generated, tmp_path, blocks=False)
    assert replay(generated, tmp_path, blocks=True) == one_by_one
    assert runs["vector"] > 0 and runs["each"] > 0  # both ways of counting were taken


@pytest.mark.parametrize("alone_blocks", [1, 3])
def test_blocks_replayed_one_by_one_in_between(generated: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               alone_blocks: int) -> None:
    """Once a block's datagrams are mostly handled alone, the rest of it and the next
    blocks are replayed one item after the other (here: from the first item handled
    alone), then holding back is tried again: the switches change nothing."""
    monkeypatch.setattr(pcap_module, "BLOCK_BYTES", 20_000)
    monkeypatch.setattr(run_module, "_ALONE_SHARE", -1.0)
    monkeypatch.setattr(run_module, "_ALONE_MIN", 0)
    monkeypatch.setattr(run_module, "_ALONE_BLOCKS", alone_blocks)
    calls = {"n": 0}
    one_by_one = run_module.Replay._one_by_one

    def counted(self: Replay, *args: Any) -> Any:
        calls["n"] += 1
        return one_by_one(self, *args)

    monkeypatch.setattr(run_module.Replay, "_one_by_one", counted)
    assert replay(generated, tmp_path, blocks=True) == replay(generated, tmp_path,
                                                               blocks=False)
    assert calls["n"] > 3


@pytest.mark.parametrize("block_bytes", [3000, 8 << 20])
def test_pcapng_same_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               block_bytes: int) -> None:
    monkeypatch.setattr(pcap_module, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(media_module, "_RUN_MIN", 2)
    path = tmp_path / "calls.pcapng"
    write_pcapng(path, build(seed=5, calls=12))
    assert read_capture(path).format == "pcapng"
    assert replay(path, tmp_path, blocks=True) == replay(path, tmp_path, blocks=False)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_other_seeds_and_uncharged_same_in_blocks(tmp_path: Path, seed: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "calls.pcap"
    write_pcap(path, build(seed=seed, calls=9, quirks=seed != 13))
    monkeypatch.setattr(pcap_module, "BLOCK_BYTES", 1 << 15)
    monkeypatch.setattr(media_module, "_RUN_MIN", 2)
    for charged in (False, True):
        assert replay(path, tmp_path, blocks=True, charged=charged) == \
            replay(path, tmp_path, blocks=False, charged=charged)


def test_media_deadlines_same_in_blocks(generated: Path, tmp_path: Path) -> None:
    """With answered calls ended for lack of media, the media's own deadlines read every
    dialog: held datagrams are handed over before each."""
    config = MediaConfig(grace_ms=1000, end_without_media_ms=1500)
    got = replay(generated, tmp_path, blocks=True, config=config)
    assert got == replay(generated, tmp_path, blocks=False, config=config)
    assert any(json.loads(c)["would_end"] for c in got["calls"])


def test_colliding_flow_mixes_are_grouped_by_their_bytes(
        generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcap_module, "_MIX", (np.uint64(0), np.uint64(0)))  # all collide
    assert replay(generated, tmp_path, blocks=True) == replay(generated, tmp_path,
                                                               blocks=False)


@pytest.mark.parametrize("cut", ["truncated", "corrupt"])
def test_damaged_file_same_in_blocks(generated: Path, tmp_path: Path, cut: str) -> None:
    data = generated.read_bytes()
    path = tmp_path / "damaged.pcap"
    if cut == "truncated":
        path.write_bytes(data[: len(data) * 2 // 3])
    else:  # a record length of 1 GB two thirds in
        records = build(seed=5, calls=12)
        write_pcap(path, records[: len(records) * 2 // 3])
        head = path.read_bytes()
        path.write_bytes(head + b"\0" * 8 + (1 << 30).to_bytes(4, "little") * 2 + data[-500:])
    got = replay(path, tmp_path, blocks=True)
    assert got == replay(path, tmp_path, blocks=False)
    assert ("truncated_file=True" in got["capture"]) == (cut == "truncated")
    assert "corrupt_record" in got["capture"] or cut == "truncated"


@pytest.mark.parametrize("path", LAB, ids=lambda p: p.name)
@pytest.mark.parametrize("run_min", [1, 8])
def test_lab_captures_same_in_blocks(path: Path, tmp_path: Path, run_min: int,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media_module, "_RUN_MIN", run_min)
    assert replay(path, tmp_path, blocks=True) == replay(path, tmp_path, blocks=False)

