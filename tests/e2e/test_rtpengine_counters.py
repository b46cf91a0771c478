"""End to end with no capture at all: the real ``sidecar run`` with ``[media] source =
"rtpengine"`` learns of the carrier's media from rtpengine's own per-call counters (ng
``query``), as where the media is forwarded on another host. The real Kamailio started
with ``-A WITH_RTPENGINE``, Debian's rtpengine in userspace mode on loopback, SIPp calls
with RTP.

The same verdicts as with sniffing (tests/e2e/test_rtpengine.py) for the billing start,
no media and late media; an rtpengine the sidecar cannot reach is never taken for "no
media": such calls are billed from the 200 OK (``media-not-captured``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from sidecar.lab import free_port
from sidecar.lab.live import LiveLab
from sidecar.lab.rtpengine import RtpEngine
from sidecar.store.accounts import verify_ledger

from .test_live_media import fresh_db
from .test_live_sidecar import account, balance, cdrs, wait_for
from .test_rtpengine import call

pytestmark = pytest.mark.timeout(240)  # rtpengine: installed by scripts/setup, never skipped


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = fresh_db(tmp_path / "sidecar.db", tmp_path)
    yield conn
    conn.close()


def counters_lab(tmp_path: Path, rtpe: RtpEngine, ng: str = "") -> LiveLab:
    """Kamailio relaying through ``rtpe``; the sidecar reading rtpengine's counters at
    ``ng`` (default: that rtpengine), with no capture configured."""
    media = ('[media]\nenabled = true\nsource = "rtpengine"\n'
             f'rtpengine = "{ng or rtpe.sock}"\nrtpengine_poll_ms = 250\n')
    return LiveLab(tmp_path / "lab", tmp_path / "sidecar.db", extra_config=media,
                   kamailio_defines={"WITH_RTPENGINE": None, "RTPENGINE_SOCK": rtpe.sock})


def test_verdicts_from_rtpengine_counters_without_a_capture(
        tmp_path: Path, db: sqlite3.Connection) -> None:
    """A normal call is billed from the 200 OK, a carrier that sends no RTP is no-media
    (not billed), RTP 4 s after the 200 OK is late media (billed from then)."""
    account(db, "ACME", "10")
    with RtpEngine(tmp_path / "rtpengine") as rtpe, counters_lab(tmp_path, rtpe) as lab:
        call(lab, "uas.xml", talk_ms=3000)
        call(lab, "uas_nomedia.xml", talk_ms=3000)
        call(lab, "uas_late_media.xml", uas_ms=4000, talk_ms=7000)
        wait_for(lambda: len(cdrs(db, "ACME")) == 3)
        log = lab.sidecar_log.read_text(errors="replace")
    normal, dead, late = cdrs(db, "ACME")
    assert "media from rtpengine's counters" in log and "media capture on" not in log
    # Normal: confirmed by the first counts after the 200 OK (polled every 250 ms).
    assert normal["disposition"] == "answered" and normal["fas_verdict"] == "", normal
    assert normal["billable_ms"] == normal["answered_ms"]
    assert 0 <= int(str(normal["media_ms"])) - int(str(normal["answered_ms"])) < 1000
    evidence = json.loads(str(normal["media"]))
    assert evidence["source"] == "rtpengine" and evidence["callee"]["packets"] > 0
    assert Decimal(str(normal["charged"])) > 0
    # No RTP from the carrier: rtpengine answered with zero packets, so it is proven.
    assert dead["disposition"] == "no-media" and dead["fas_verdict"] == "no-media", dead
    assert json.loads(str(dead["media"]))["source"] == "rtpengine"
    assert Decimal(str(dead["charged"])) == 0
    # Late media: billed from the count that first showed it (at most a poll late).
    assert late["fas_verdict"] == "late-media", late
    delay = int(str(late["billable_ms"])) - int(str(late["answered_ms"]))
    assert 3500 < delay < 5500
    assert 1 <= int(str(late["billed_seconds"])) <= 4
    assert balance(db, "ACME") == Decimal("10") - sum(
        Decimal(str(c["charged"])) for c in (normal, late))
    assert all(not chk.problems for chk in verify_ledger(db))


def test_unreachable_rtpengine_is_never_no_media(tmp_path: Path,
                                                 db: sqlite3.Connection) -> None:
    """The sidecar asks a port where no rtpengine listens (Kamailio's own rtpengine relays
    the call): every query fails, is logged and counted, and a call whose carrier sent
    no RTP is billed from the 200 OK with verdict media-not-captured, not no-media."""
    account(db, "ACME", "10")
    nowhere = f"udp:127.0.0.1:{free_port('udp', '127.0.0.1')}"
    with RtpEngine(tmp_path / "rtpengine") as rtpe, \
            counters_lab(tmp_path, rtpe, ng=nowhere) as lab:
        call(lab, "uas_nomedia.xml", talk_ms=3000)
        wait_for(lambda: len(cdrs(db, "ACME")) == 1)
        lab.stop_sidecar()
        log = lab.sidecar_log.read_text(errors="replace")
    (c,) = cdrs(db, "ACME")
    assert c["disposition"] == "answered" and c["fas_verdict"] == "media-not-captured", c
    assert c["billable_ms"] == c["answered_ms"] and Decimal(str(c["charged"])) > 0
    assert Decimal(str(c["credited"])) == 0
    assert "does not answer" in log and "query for" in log and "failed" in log
    assert "'rtpengine_errors': " in log  # counted (the counters logged at the stop)
