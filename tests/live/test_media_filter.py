"""The automatic capture filter: the ports the live dialogs' SDP named, listed while they
are few, a range over them past that; the range widens at once for a new call and
narrows at most once a second (calls end all the time at high rates)."""

from __future__ import annotations

from sidecar.live.media import MediaPump
from sidecar.supervision.calls import CallControl
from sidecar.supervision.media import MediaSupervisor

from ..charging.harness import Sim
from ..supervision.media_gen import sdp


def _pump() -> tuple[MediaPump, MediaSupervisor]:
    media = MediaSupervisor()
    control = CallControl(Sim().charger, media)
    pump = MediaPump(control, media, interface="lo", peer="", port_range=None,
                     buffer_bytes=1 << 20, on_actions=lambda actions: None)
    return pump, media


def test_few_ports_are_listed_and_many_become_a_range_that_widens_at_once() -> None:
    pump, media = _pump()
    for i in range(3):
        media.offer(f"c{i}", 0, sdp("127.0.0.1", 10_000 + 2 * i))
    assert pump._filter() == ("udp and (dst port 10000 or dst port 10002 or "
                              "dst port 10004)")
    for i in range(3, 80):
        media.offer(f"c{i}", 0, sdp("127.0.0.1", 10_000 + 2 * i))
    assert pump._filter() == "udp and dst portrange 9488-10670"  # 512 ports to spare
    media.offer("next", 0, sdp("127.0.0.1", 10_600))  # within the margin: no change
    assert pump._filter() == "udp and dst portrange 9488-10670"
    media.offer("new", 0, sdp("127.0.0.1", 12_000))  # beyond: widened at once
    assert pump._filter() == "udp and dst portrange 9488-12512"
    media.end("c0", 10)  # the lowest port is gone: the range is kept for now ...
    media.end("new", 10)
    media.end("next", 10)
    assert pump._filter() == "udp and dst portrange 9488-12512"
    pump._range_at -= 1.0  # ... and narrowed once a second has passed
    assert pump._filter() == "udp and dst portrange 9490-10670"
    for i in range(1, 75):
        media.end(f"c{i}", 20)
    assert pump._filter() == ("udp and (dst port 10150 or dst port 10152 or "
                              "dst port 10154 or dst port 10156 or dst port 10158)")
