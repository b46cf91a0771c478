"""Loading: the file, the environment's overrides, errors by key path, reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import (
    Config,
    ConfigError,
    load,
    load_config,
    reload_config,
    render_toml,
    restart_needed,
)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


def problems(path: Path | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(path, env or {})
    return err.value.problems


def test_environment_overrides_the_file_and_says_so(tmp_path: Path) -> None:
    p = write(tmp_path, '[database]\npath = "file.db"\n[kamailio]\nevapi_port = 9000\n')
    env = {"SIDECAR_DATABASE__PATH": "/srv/env.db", "sidecar_media__enabled": "true",
           "SIDECAR_RECHARGE__COMMAND": '["pay", "{amount}"]',
           "SIDECAR_KAMAILIO__RPC_TIMEOUT": "0.5", "SIDECAR_DB": "ignored.db",
           "SIDECAR_API_TOKEN": "x" * 40}
    loaded = load(p, env)
    cfg = loaded.config
    assert (cfg.db, cfg.evapi_port, cfg.media_enabled) == ("/srv/env.db", 9000, True)
    assert (cfg.recharge_command, cfg.rpc_timeout) == (("pay", "{amount}"), 0.5)
    assert loaded.origins["database.path"] == "$SIDECAR_DATABASE__PATH"
    assert loaded.origins["kamailio.evapi_port"] == str(p)
    text = render_toml(cfg, loaded.origins)
    assert 'path = "/srv/env.db"  # from $SIDECAR_DATABASE__PATH' in text
    assert f"evapi_port = 9000  # from {p}" in text
    assert "evapi_host = \"127.0.0.1\"  # default" in text
    # Without a file: the defaults and the environment.
    assert load(None, {"SIDECAR_NODE__NAME": "kam7"}).config.node == "kam7"


def test_bad_environment_values_name_the_variable_and_the_key(tmp_path: Path) -> None:
    p = write(tmp_path, "")
    assert problems(p, {"SIDECAR_MEDIA__GRACE_MS": "soon"}) == [
        "$SIDECAR_MEDIA__GRACE_MS: media.grace_ms: must be int, not 'soon'"]
    assert problems(p, {"SIDECAR_MEDIA__GRACEMS": "5"}) == [
        "$SIDECAR_MEDIA__GRACEMS: media.gracems: unknown key (did you mean media.grace_ms?)"]
    assert problems(p, {"SIDECAR_MEDIA__GRACE_MS": "-5"}) == [
        "$SIDECAR_MEDIA__GRACE_MS: media.grace_ms: must be at least 0, not -5"]
    assert problems(p, {"SIDECAR_RECHARGE__COMMAND": "pay {amount}"}) == [
        "$SIDECAR_RECHARGE__COMMAND: recharge.command: must be a JSON list of strings, "
        "not 'pay {amount}'"]


def test_every_problem_of_a_file_is_named_by_its_key_path(tmp_path: Path) -> None:
    p = write(tmp_path, '[media]\ngrace_ms = -5\nenabled = "yes"\n[kamailio]\nevapi_port = 0\n'
                        '[medai]\nx = 1\n[recharge]\ncommand = ["pay", 3]\n'
                        '[database]\nurl = "mysql://u:secret@db/x"\n'
                        '[api]\nlisten = "nowhere"\n[routing]\norder = "random"\n'
                        'min_margin_percent = "-1"\n')
    found = problems(p)
    assert found == [
        f"{p}: database.url: must be a postgresql:// URL, not 'mysql://u:***@db/x'...",
        f"{p}: kamailio.evapi_port: must be at least 1, not 0",
        f"{p}: media.enabled: must be bool, not str",
        f"{p}: media.grace_ms: must be at least 0, not -5",
        f"{p}: recharge.command: must be a list of strings (item 2 is int)",
        f"{p}: api.listen: must be \"HOST:PORT\" (e.g. \"127.0.0.1:8480\"), not 'nowhere'",
        f"{p}: routing.order: must be one of 'cost', 'quality', not 'random'",
        f"{p}: routing.min_margin_percent: must be a finite amount of 0 or more, not '-1'",
        f"{p}: medai: unknown table (did you mean [media]? tables: alerts, api, charging, "
        "database, invoice, kamailio, media, metrics, node, recharge, routing)",
    ]
    assert all("secret" not in line for line in found)
    assert problems(write(tmp_path, "media = 1\n")) == [
        f"{p}: media: must be a table ([media]), not int"]
    assert problems(write(tmp_path, '[database]\npath = "a.db"\nurl = "postgresql://h/b"\n'
                          )) == [f"{p}: database.url: database.path is set too ({p}): give one"]
    assert problems(tmp_path / "none.toml") == [f"{tmp_path / 'none.toml'}: no such "
                                                "configuration file"]
    assert problems(write(tmp_path, "[media\n"))[0].startswith(f"{p}: ")


def test_strict_types_but_an_int_is_a_float(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[kamailio]\nrpc_timeout = 3\n[media]\n"
                                      "silence_share = 1\n"))
    assert cfg.rpc_timeout == 3.0 and isinstance(cfg.rpc_timeout, float)
    assert problems(write(tmp_path, "[node]\nlease_s = 30.0\n")) == [
        f"{tmp_path / 's.toml'}: node.lease_s: must be int, not float"]
    assert problems(write(tmp_path, "[node]\nlease_s = true\n")) == [
        f"{tmp_path / 's.toml'}: node.lease_s: must be int, not bool"]


def test_the_store_is_the_url_else_the_path(tmp_path: Path) -> None:
    assert Config().db == "sidecar.db"
    url = "postgresql://sidecar:pw@db.example/billing?sslmode=require"
    cfg = load_config(write(tmp_path, f'[database]\nurl = "{url}"\n'))
    assert cfg.db == url
    assert "sidecar:***@db.example" in render_toml(cfg) and "pw" not in render_toml(cfg)


def test_reload_names_the_changed_keys_and_those_needing_a_restart(tmp_path: Path) -> None:
    p = write(tmp_path, '[node]\nname = "kam1"\n[kamailio]\nshed_after_ms = 40\n')
    running = load_config(p)
    same, changed = reload_config(p, running)
    assert changed == [] and same == running
    p.write_text('[node]\nname = "kam1"\n[kamailio]\nshed_after_ms = 80\nevapi_port = 9000\n'
                 '[invoice]\ndue_days = 30\n')
    new, changed = reload_config(p, running)
    assert (new.shed_after_ms, new.evapi_port) == (80, 9000)
    assert changed == ["kamailio.evapi_port", "kamailio.shed_after_ms", "invoice.due_days"]
    assert restart_needed(changed) == ["kamailio.evapi_port"]
    p.write_text("[kamailio]\nshed_after_ms = -1\n")
    with pytest.raises(ConfigError, match=r"kamailio\.shed_after_ms: must be at least 0"):
        reload_config(p, running)
