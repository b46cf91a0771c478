"""The [media] configuration: defaults, values, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_config, port_range


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


def test_media_is_off_by_default_and_reads_its_keys(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).media_enabled is False
    c = load_config(write(tmp_path, '[media]\nenabled = true\npeer = "10.0.0.1"\n'
                                    'ports = "10000-20000"\ngrace_ms = 1500\n'
                                    "silence_share = 0.9\nend_without_media_s = 30\n"
                                    "enforce = false\n"))
    assert c.media_enabled and c.media_peer == "10.0.0.1" and c.media_grace_ms == 1500
    assert port_range(c.media_ports) == (10000, 20000) and port_range("auto") is None
    assert c.media_silence_share == 0.9 and c.media_end_without_media_s == 30
    assert c.media_enforce is False


@pytest.mark.parametrize(("text", "needle"), [
    ('[media]\nports = "lots"\n', 'media.ports: must be "auto" or a range'),
    ('[media]\nports = "20000-10000"\n', "media.ports: must be"),
    ("[media]\nsilence_share = 1.5\n", "media.silence_share: must be at most 1"),
    ("[media]\ngrace_ms = -1\n", "media.grace_ms: must be at least 0, not -1"),
    ('[media]\nenabled = "yes"\n', "media.enabled: must be bool, not str"),
    ("[media]\ninterfaces = 1\n", "media.interfaces: unknown key (did you mean media.interface?)"),
])
def test_bad_media_settings_are_named(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert needle in str(e.value) and "s.toml" in str(e.value)
