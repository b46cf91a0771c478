"""Record ``b2bua_direct_media.pcap``: one conversation, two dialogs, the same packets.

A B2BUA with direct media, built in the lab from the real Kamailio and SIPp (see
``README.md`` here)::

    phone A (uac.xml) --leg-in--> Kamailio 1 --> PBX inbound  (pbx_uas.xml)
    PBX outbound (pbx_uac.xml) --leg-out--> Kamailio 2 --> phone B (uas.xml)
    RTP: phone A <------------------ direct -----------------> phone B

Both Kamailios run the shipped ``kamailio/kamailio.cfg`` with ``FAIL_OPEN`` (no sidecar)
and without its overload control (its probes would be in the capture), each relaying to
its own destination. The PBX is two SIPps: its inbound side answers the
customer with an SDP naming phone B's media address, its outbound side offers phone A's
media address to phone B, so each dialog (Call-IDs of their own) names the same two
phones, and every RTP packet between them is evidence for both.

Timeline: phone A's INVITE; the PBX's outbound INVITE follows (about 0.1 s later);
phone B answers it after 0.2 s and starts its speech; the PBX answers the inbound leg
``ANSWER_AFTER_MS`` after its INVITE; phone A starts its speech at its ACK and hangs up
``TALK_A_MS`` later; the PBX hangs up the outbound leg ``TALK_PBX_MS`` after its ACK
(about 0.3 s after phone A's BYE).

As root (tcpdump and SIPp's ``play_pcap_audio`` need raw sockets), from the repository
root::

    .venv/bin/python pcaps/b2bua/record.py              # into pcaps/b2bua/
    .venv/bin/python pcaps/b2bua/record.py --out /tmp/x --keep-work

Every process (two Kamailios, four SIPps, tcpdump) is stopped by its PID, also on
failure. ``expected.json`` beside the capture is not written here: it states what the
call must show, and a re-recording must show it again
(``tests/supervision/test_b2bua_lab_capture.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sidecar.lab import free_port, free_port_block
from sidecar.lab.kamailio import KamailioProcess, KamailioSettings
from sidecar.lab.record import MAX_CAPTURE_BYTES, RecordError, Tcpdump
from sidecar.lab.sipp import Sipp, SippResult

HERE = Path(__file__).resolve().parent
FILE_NAME = "b2bua_direct_media.pcap"
HOST = "127.0.0.1"
DIALLED = "4930123456"
#: Phone A (the customer) and the PBX's number on its outbound leg; the R-URI's ``ac``
#: parameter names the account of each leg.
CALLER_A, ACCOUNT_A = "15551230001", "ACME"
CALLER_PBX, ACCOUNT_PBX = "15551239999", "PBX"
ANSWER_AFTER_MS = 700
TALK_A_MS = 4500
TALK_PBX_MS = 5200
PBX_START_DELAY_S = 0.1


@dataclass(frozen=True)
class Recorded:
    """The capture and what each SIPp counted."""

    path: Path
    size: int
    results: dict[str, SippResult]
    media_ports: dict[str, int]  # phone_a, phone_b: the media port of each phone


def _ports(count: int) -> list[int]:
    out: list[int] = []
    while len(out) < count:
        port = free_port("udp", HOST)
        if port not in out:
            out.append(port)
    return out


def _media_blocks(count: int, taken: set[int]) -> list[int]:
    """Bases of ``count`` blocks of 4 free UDP ports (SIPp uses p and p+2), distinct from
    each other and from ``taken``."""
    out: list[int] = []
    for _ in range(200):
        base = free_port_block(HOST)
        block = set(range(base, base + 4))
        if not block & taken:
            taken |= block
            out.append(base)
            if len(out) == count:
                return out
    raise RecordError("no free media port blocks distinct from the lab's other ports")


def record(out_dir: Path, work_dir: Path, *, timeout_s: float = 40.0) -> Recorded:
    """Record the call into ``out_dir/b2bua_direct_media.pcap`` (logs in ``work_dir``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    k1_port, k2_port, pbx_in_port, pbx_out_port, a_port, b_port = _ports(6)
    taken = {k1_port, k2_port, pbx_in_port, pbx_out_port, a_port, b_port}
    a_media, b_media, pbx_in_media, pbx_out_media = _media_blocks(4, taken)

    def kamailio(name: str, port: int, dest_port: int) -> KamailioProcess:
        return KamailioProcess(work_dir / name, KamailioSettings(
            sip_ip=HOST, sip_port=port, evapi_ip=HOST, evapi_port=free_port("tcp", HOST),
            dest=f"sip:{HOST}:{dest_port}", fail_open=True, children=2,
            # the capture holds the calls alone: no overload probes (OVERLOAD_DELAY_MS)
            extra_defines={"OVERLOAD_DELAY_MS": 0}))

    ports = sorted({k1_port, k2_port, pbx_in_port, pbx_out_port, a_port, b_port,
                    a_media, a_media + 2, b_media, b_media + 2})
    bpf = f"udp and host {HOST} and (" + " or ".join(f"port {p}" for p in ports) + ")"
    path = out_dir / FILE_NAME
    tmp = out_dir / f".{FILE_NAME}.part"
    sipp = Sipp(work_dir / "sipp", host=HOST)
    with contextlib.ExitStack() as stack:
        k1 = stack.enter_context(kamailio("kamailio1", k1_port, pbx_in_port))
        k2 = stack.enter_context(kamailio("kamailio2", k2_port, b_port))
        capture = stack.enter_context(Tcpdump(tmp, bpf, work_dir / "tcpdump.log"))
        phone_b = stack.enter_context(sipp.start_uas(
            "uas.xml", port=b_port, media_port=b_media, timeout_s=timeout_s, name="phone-b"))
        pbx_in = stack.enter_context(sipp.start_uas(
            HERE / "pbx_uas.xml", port=pbx_in_port, media_port=pbx_in_media,
            duration_ms=ANSWER_AFTER_MS, timeout_s=timeout_s, name="pbx-in",
            extra=["-key", "peer_ip", HOST, "-key", "peer_port", str(b_media)]))
        phone_a = stack.enter_context(sipp.start_uac(
            f"{HOST}:{k1_port}", "uac.xml", dialled=DIALLED, caller=CALLER_A,
            account_code=ACCOUNT_A, port=a_port, media_port=a_media, duration_ms=TALK_A_MS,
            timeout_s=timeout_s, name="phone-a"))
        time.sleep(PBX_START_DELAY_S)
        pbx_out = stack.enter_context(sipp.start_uac(
            f"{HOST}:{k2_port}", HERE / "pbx_uac.xml", dialled=DIALLED, caller=CALLER_PBX,
            account_code=ACCOUNT_PBX, port=pbx_out_port, media_port=pbx_out_media,
            duration_ms=TALK_PBX_MS, timeout_s=timeout_s, name="pbx-out",
            extra=["-key", "peer_ip", HOST, "-key", "peer_port", str(a_media)]))
        results = {"phone-a": phone_a.wait(), "pbx-out": pbx_out.wait()}
        results |= {"pbx-in": pbx_in.wait(timeout_s), "phone-b": phone_b.wait(timeout_s)}
        time.sleep(0.3)  # the last packets reach the capture
        capture.stop()
        failed = [name for name, r in results.items() if not r.calls_ok]
        if failed:
            raise RecordError(
                f"the call did not go as scripted ({', '.join(failed)} failed)\n"
                + "\n".join(results[n].output_tail() for n in failed)
                + "\nkamailio 1:\n" + k1.log_tail(20) + "\nkamailio 2:\n" + k2.log_tail(20))
    size = tmp.stat().st_size if tmp.exists() else 0
    if size <= 24 or size >= MAX_CAPTURE_BYTES:
        tmp.unlink(missing_ok=True)
        raise RecordError(f"capture of {size} bytes: empty or not under 1 MB (filter {bpf})")
    tmp.replace(path)
    return Recorded(path, size, results, {"phone_a": a_media, "phone_b": b_media})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Record pcaps/b2bua/" + FILE_NAME)
    parser.add_argument("--out", type=Path, default=HERE, help=f"directory (default {HERE})")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the work directory (Kamailio and SIPp logs and traces)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="b2buarec-"))  # short: Kamailio's UNIX sockets
    ok = False
    try:
        rec = record(args.out, work)
        ok = True
    finally:
        if ok and not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    print(f"{rec.path}: {rec.size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
