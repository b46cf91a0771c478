"""SIPp's statistics time series and response-time file, read back by the lab (SIPp calling
SIPp directly on 127.0.0.1, no Kamailio)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.lab.sipp import Sipp, read_stat_rows

pytestmark = pytest.mark.timeout(60)


def test_stat_rows_and_every_response_time(tmp_path: Path) -> None:
    sipp = Sipp(tmp_path / "sipp")
    with sipp.start_uas("uas.xml", calls=3, timeout_s=20) as uas:
        uac = sipp.start_uac(f"127.0.0.1:{uas.sip_port}", "uac.xml", calls=3, duration_ms=200,
                             timeout_s=20, extra=["-r", "10", "-trace_rtt", "-rtt_freq", "1"])
        with uac:
            result = uac.wait()
        uas.wait()
    assert result.calls_ok, result.output_tail()
    rows = read_stat_rows(uac.files["stat"])
    assert len(rows) >= 2  # -fd 1: a row a second, and a last one at the end
    assert rows[-1]["SuccessfulCall(C)"] == "3" and rows[-1] == result.stats
    assert uac.scenario is not None and uac.scenario.name == "uac.xml"
    rtt = uac.rtt_file()
    assert rtt is not None and rtt.name == f"uac_{uac.pid}_rtt.csv"
    lines = rtt.read_text().splitlines()
    assert lines[0].split(";")[:3] == ["Date_ms", "response_time_ms", "rtd_no"]
    names = sorted(line.split(";")[2] for line in lines[1:])
    # uac.xml's two timers, once per call: nothing left behind in SIPp's buffer.
    assert names == ["setup"] * 3 + ["talk"] * 3
    assert uas.rtt_file() is None  # not asked for


def test_stat_rows_of_a_missing_or_empty_file(tmp_path: Path) -> None:
    assert read_stat_rows(tmp_path / "none.csv") == []
    (tmp_path / "header.csv").write_text("StartTime;SuccessfulCall(C);\n")
    assert read_stat_rows(tmp_path / "header.csv") == []
    (tmp_path / "cut.csv").write_text("A;B;C;D;\n1;2;3;4;\n5;6")
    assert read_stat_rows(tmp_path / "cut.csv") == [{"A": "1", "B": "2", "C": "3", "D": "4",
                                                     "": ""}]


def test_a_port_taken_before_sipp_binds_it_is_picked_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A media block found free can be taken by another socket before SIPp binds it: the
    lab starts SIPp again on other ports instead of failing the test that asked for it."""
    import socket

    from sidecar.lab import PortInUseError, free_port_block
    from sidecar.lab import sipp as sipp_module

    taken = free_port_block()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", taken + 2))  # SIPp's video RTP port
    picks = iter([taken])
    monkeypatch.setattr(sipp_module, "free_port_block",
                        lambda host="127.0.0.1": next(picks, None) or free_port_block(host))
    try:
        sipp = Sipp(tmp_path / "sipp")
        with sipp.start_uas("uas.xml", calls=1, timeout_s=20) as uas:
            assert uas.media_port != taken
            uac = sipp.start_uac(f"127.0.0.1:{uas.sip_port}", "uac.xml", duration_ms=200,
                                 timeout_s=20)
            with uac:
                result = uac.wait()
            assert uas.wait().calls_ok
        assert result.calls_ok, result.output_tail()
        # Asked for explicitly, a taken port is the caller's error, named, not picked again.
        with pytest.raises(PortInUseError, match=f"SIPp .* media: UDP port 127.0.0.1:{taken + 2}"):
            sipp.start_uas("uas.xml", media_port=taken, timeout_s=5)
    finally:
        blocker.close()


#: Binds SIPp's ports in SIPp's order (SIP, audio RTP, then video RTP) but slowly, and exits
#: as SIPp does when the video RTP port is taken: the window in which the SIP and audio
#: ports are bound by it, the video port by another socket, and it is about to exit.
SLOW_BINDER = """\
import socket, sys, time
def arg(flag):
    return sys.argv[sys.argv.index(flag) + 1]
host, sip, media = arg("-i"), int(arg("-p")), int(arg("-mp"))
held = []
for port in (sip, media, media + 2):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError as exc:
        print(f"Unable to bind video RTP socket (IP={host}, port={port}), errno = {exc.errno}"
              " (Address already in use)", flush=True)
        sys.exit(254)
    held.append(sock)
    time.sleep(0.5)
time.sleep(30)
"""


def test_a_process_that_bound_some_ports_and_exits_is_not_taken_for_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race above made certain: SIPp takes 0.5 s between two binds. Its start waits
    until SIPp itself holds all its ports, not merely until each port is bound by someone
    (the socket that took the video port is bound too)."""
    import socket
    import sys

    from sidecar.lab import free_port_block
    from sidecar.lab import sipp as sipp_module

    fake = tmp_path / "slow-sipp"
    fake.write_text(f"#!{sys.executable}\n{SLOW_BINDER}")
    fake.chmod(0o755)
    taken = free_port_block()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", taken + 2))
    picks = iter([taken])
    monkeypatch.setattr(sipp_module, "free_port_block",
                        lambda host="127.0.0.1": next(picks, None) or free_port_block(host))
    try:
        sipp = Sipp(tmp_path / "sipp", sipp_bin=str(fake))
        with sipp.start_uas("uas.xml", calls=1, timeout_s=20) as uas:
            assert uas.media_port != taken
            assert uas.running()
    finally:
        blocker.close()
