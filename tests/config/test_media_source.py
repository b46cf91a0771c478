"""``[media] source`` and the rtpengine keys: checked, with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_config, ng_address


def test_rtpengine_source_loads(tmp_path: Path) -> None:
    p = tmp_path / "sidecar.toml"
    p.write_text('[media]\nenabled = true\nsource = "rtpengine"\n'
                 'rtpengine = "udp:[::1]:2223"\nrtpengine_poll_ms = 500\n'
                 'rtpengine_max_qps = 50\n')
    cfg = load_config(p)
    assert (cfg.media_source, cfg.media_rtpengine) == ("rtpengine", "udp:[::1]:2223")
    assert (cfg.media_rtpengine_poll_ms, cfg.media_rtpengine_max_qps) == (500, 50)
    assert load_config(None).media_source == "capture"


def test_bad_source_keys_are_refused_naming_each(tmp_path: Path) -> None:
    p = tmp_path / "sidecar.toml"
    p.write_text('[media]\nsource = "sniff"\nrtpengine = "127.0.0.1:2223"\n'
                 'rtpengine_poll_ms = 5\nrtpengine_max_qps = 0\n')
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert err.value.problems == [
        f"{p}: media.source: must be one of 'capture', 'rtpengine', not 'sniff'",
        f'{p}: media.rtpengine: must be "udp:HOST:PORT" (e.g. "udp:127.0.0.1:2223"), '
        "not '127.0.0.1:2223'",
        f"{p}: media.rtpengine_poll_ms: must be at least 20, not 5",
        f"{p}: media.rtpengine_max_qps: must be at least 1, not 0",
    ]


@pytest.mark.parametrize(("text", "parsed"), [
    ("udp:127.0.0.1:2223", ("127.0.0.1", 2223)),
    ("udp:rtpe.example:22222", ("rtpe.example", 22222)),
    ("udp:[2001:db8::5]:2223", ("2001:db8::5", 2223)),
    ("udp:127.0.0.1:0", None), ("udp:127.0.0.1", None), ("tcp:127.0.0.1:2223", None),
    ("udp::2223", None), ("udp:host:70000", None),
])
def test_ng_address(text: str, parsed: tuple[str, int] | None) -> None:
    assert ng_address(text) == parsed
