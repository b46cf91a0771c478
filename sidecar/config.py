"""The live sidecar's configuration file (TOML).

Example (every key optional; these are the defaults)::

    [database]
    path = "sidecar.db"

    [kamailio]
    evapi_host = "127.0.0.1"
    evapi_port = 8448
    rpc_socket = "/run/kamailio/kamailio_rpc.sock"   # jsonrpcs datagram socket
    rpc_timeout = 2.0

    [charging]
    renew_lead_ms = 5000
    min_chunk_seconds = 6

    [alerts]
    webhook = ""            # POSTed JSON for low-balance, budget and suspension alerts

    [recharge]
    command = []            # e.g. ["/usr/local/bin/charge-card", "{account}", "{amount}"]
    webhook = ""            # or POST {"account", "amount", "currency"}; 2xx = paid

    [api]
    listen = "127.0.0.1:8480"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file and key."""


@dataclass(frozen=True)
class Config:
    db: str = "sidecar.db"
    evapi_host: str = "127.0.0.1"
    evapi_port: int = 8448
    rpc_socket: str = "/run/kamailio/kamailio_rpc.sock"
    rpc_timeout: float = 2.0
    renew_lead_ms: int = 5_000
    min_chunk_seconds: int = 6
    alert_webhook: str = ""
    recharge_command: tuple[str, ...] = field(default_factory=tuple)
    recharge_webhook: str = ""
    api_listen: str = "127.0.0.1:8480"
    source: str = "<defaults>"


_KEYS: dict[tuple[str, str], tuple[str, type[Any]]] = {
    ("database", "path"): ("db", str),
    ("kamailio", "evapi_host"): ("evapi_host", str),
    ("kamailio", "evapi_port"): ("evapi_port", int),
    ("kamailio", "rpc_socket"): ("rpc_socket", str),
    ("kamailio", "rpc_timeout"): ("rpc_timeout", float),
    ("charging", "renew_lead_ms"): ("renew_lead_ms", int),
    ("charging", "min_chunk_seconds"): ("min_chunk_seconds", int),
    ("alerts", "webhook"): ("alert_webhook", str),
    ("recharge", "command"): ("recharge_command", list),
    ("recharge", "webhook"): ("recharge_webhook", str),
    ("api", "listen"): ("api_listen", str),
}


def load_config(path: str | Path) -> Config:
    """Read and check a TOML configuration; unknown keys and wrong types are errors."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: no such configuration file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: {exc}") from exc
    values: dict[str, Any] = {"source": str(p)}
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{p}: '{section}' must be a [section]")
        for key, value in table.items():
            spec = _KEYS.get((section, key))
            if spec is None:
                raise ConfigError(f"{p}: unknown key [{section}] {key}")
            name, kind = spec
            if kind is float and isinstance(value, int):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"{p}: [{section}] {key} must be {kind.__name__}, "
                                  f"not {type(value).__name__}")
            if isinstance(value, list):
                if not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"{p}: [{section}] {key} must be a list of strings")
                value = tuple(value)
            values[name] = value
    return Config(**values)
