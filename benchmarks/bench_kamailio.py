"""Live benchmark: real Kamailio + SIPp, with and without the sidecar authorizing calls.

    python benchmarks/bench_kamailio.py [--rate 400] [--seconds 15] [--latency-rate 200]

1. Kamailio alone (FAIL_OPEN, no sidecar) at --rate calls/s, 1 s calls.
2. The same load with the sidecar authorizing and charging every call.
3. Authorization latency at --latency-rate calls/s, from the sidecar's side.
Prints completed calls/s, failures and CPU seconds of Kamailio and the sidecar.
SIPp here sends signalling only (no RTP) so that SIPp itself is not the bottleneck.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sidecar.charging.model import AccountKind
from sidecar.lab import KAMAILIO_DIR, free_port
from sidecar.lab.kamailio import KamailioProcess, KamailioSettings
from sidecar.lab.live import HOST, LiveLab
from sidecar.lab.sipp import Sipp
from sidecar.store.accounts import SqliteLedger, add_account
from sidecar.store.db import connect
from sidecar.store.decks import import_deck

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(root_pid: int) -> float:
    """User+system CPU of a process and its direct children (Kamailio's workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid == root_pid or ppid == root_pid:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def no_media(scenario: str, out_dir: Path) -> Path:
    text = (KAMAILIO_DIR / "sipp" / scenario).read_text()
    out = out_dir / scenario.replace(".xml", "_nomedia_load.xml")
    out.write_text("\n".join(ln for ln in text.splitlines() if "play_pcap_audio" not in ln))
    return out


def load(sipp: Sipp, target: str, uas_port: int, scn: tuple[Path, Path], rate: int,
         seconds: int, account: str) -> tuple[int, int, float]:
    total = rate * seconds
    uas = sipp.start_uas(scn[1], port=uas_port, calls=total, timeout_s=seconds + 40,
                         trace_messages=False)
    t0 = time.monotonic()
    uac = sipp.start_uac(target, scn[0], account_code=account, dialled="4930123456",
                         duration_ms=1000, calls=total, timeout_s=seconds + 40,
                         extra=["-r", str(rate), "-l", str(rate * 4)], trace_messages=False)
    with uas, uac:
        r = uac.wait(seconds + 60)
        elapsed = time.monotonic() - t0
        uas.stop()
    return r.successful_calls, r.failed_calls, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=int, default=400)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--latency-rate", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-kam-") as tmp:
        d = Path(tmp)
        scn = (no_media("uac.xml", d), no_media("uas.xml", d))
        db = d / "bench.db"
        conn = connect(db)
        (d / "deck.csv").write_text("destination;code;rate_usd;increment;effective_from\n"
                                    "Germany Fixed;4930;0.0095;1/1;2026-01-01\n")
        import_deck(conn, "bench", d / "deck.csv", as_of=datetime(2026, 1, 1, tzinfo=UTC))
        now = int(time.time() * 1000)
        add_account(conn, "LOAD", "bench", AccountKind.PREPAID, now_ms=now)
        SqliteLedger(conn).topup("LOAD", Decimal("1000000"), now)
        conn.close()

        # 1. Kamailio alone.
        uas_port = free_port("udp", HOST)
        settings = KamailioSettings(
            sip_ip=HOST, sip_port=free_port("udp", HOST), evapi_ip=HOST,
            evapi_port=free_port("tcp", HOST), dest=f"sip:{HOST}:{uas_port}", children=4,
            fail_open=True)
        with KamailioProcess(d / "alone", settings) as kam:
            c0 = cpu_seconds(kam.pid or 0)
            ok, failed, elapsed = load(Sipp(d / "sipp-alone", host=HOST),
                                       f"{HOST}:{settings.sip_port}", uas_port, scn, args.rate,
                                       args.seconds, "LOAD")
            kcpu = cpu_seconds(kam.pid or 0) - c0
        alone = ok / elapsed
        print(f"Kamailio alone:        {ok:,} calls ok, {failed} failed in {elapsed:.1f} s = "
              f"{alone:,.0f} calls/s; Kamailio CPU {kcpu:.1f} s")

        # 2. With the sidecar authorizing every call.
        with LiveLab(d / "with", db) as lab:
            assert lab.kam.pid and lab._sidecar
            c0, s0 = cpu_seconds(lab.kam.pid), cpu_seconds(lab._sidecar.pid)
            ok2, failed2, elapsed2 = load(lab.sipp, lab.target, lab.uas_port, scn, args.rate,
                                          args.seconds, "LOAD")
            kcpu2 = cpu_seconds(lab.kam.pid) - c0
            scpu = cpu_seconds(lab._sidecar.pid) - s0
        withs = ok2 / elapsed2
        print(f"Kamailio + sidecar:    {ok2:,} calls ok, {failed2} failed in {elapsed2:.1f} s = "
              f"{withs:,.0f} calls/s; Kamailio CPU {kcpu2:.1f} s, sidecar CPU {scpu:.1f} s")
        print(f"throughput cost of the sidecar at {args.rate} calls/s: "
              f"{(1 - withs / alone) * 100:+.1f}% (target: at most 10%)")

        # 3. Authorization latency at a steady rate, from the sidecar's side.
        db2 = d / "latency.db"
        with contextlib.suppress(FileNotFoundError):
            db2.unlink()
        db2.write_bytes(db.read_bytes())
        with LiveLab(d / "latency", db2) as lab:
            load(lab.sipp, lab.target, lab.uas_port, scn, args.latency_rate, 10, "LOAD")
            lab.stop_sidecar()
            log = lab.sidecar_log.read_text()
        m = re.findall(r'"msg": "(auth latency[^"]*)"', log)
        print(f"at {args.latency_rate} calls/s: {m[-1] if m else 'no latency summary in log'}")


if __name__ == "__main__":
    main()
