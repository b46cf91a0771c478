"""The live sidecar's configuration file (TOML).

Example (every key optional; these are the defaults)::

    [node]
    name = "<host name>"    # this Kamailio node's name: one sidecar per name is active,
                            # a second one is its hot standby (`sidecar run --node NAME`)
    lease_s = 30            # this node's calls' reservations are renewed while it runs;
                            # once a lease has run out, another node settles the call
                            # (charged its paid time at most)

    [database]
    path = "sidecar.db"     # the SQLite store (one node), or instead:
    # url = "postgresql://sidecar@db.example/billing?sslmode=verify-full"
    #                       # PostgreSQL, shared by several nodes ($PGPASSWORD or
    #                       # ~/.pgpass for the password: the URL is never logged)
    journal = ""            # settlements kept while the store fails; "" = PATH.journal
                            # (better on another filesystem than the database)
    commit_delay_ms = 50    # group commit: commands arriving meanwhile share a transaction

    [kamailio]
    evapi_host = "127.0.0.1"
    evapi_port = 8448
    rpc_socket = "/run/kamailio/kamailio_rpc.sock"   # jsonrpcs datagram socket
    rpc_timeout = 2.0
    shed_after_ms = 40      # overload: an offer that waited longer gets a fast 503 (0: never)

    [charging]
    renew_lead_ms = 5000
    min_chunk_seconds = 6

    [media]
    enabled = false         # watch RTP: answer confirmed by media, FAS caught
    enforce = true          # media decides billing; false: verdicts recorded only
    interface = ""          # capture interface, e.g. "eth0"; "" = the route towards peer
    peer = ""               # a media peer's address (carrier, media gateway)
    ports = "auto"          # BPF filter: "auto" (the dialogs' SDP ports) or "10000-20000"
    grace_ms = 2000         # callee media this soon after the 200 OK: billed from the 200
    silence_share = 0.95    # callee silent in this share of the call: FAS (credited)
    end_without_media_s = 0 # end answered calls with no callee media after this (0: never)
    buffer_mb = 64          # kernel capture buffer

    [alerts]
    webhook = ""            # POSTed JSON for low-balance, budget and suspension alerts

    [recharge]
    command = []            # e.g. ["/usr/local/bin/charge-card", "{account}", "{amount}"]
    webhook = ""            # or POST {"account", "amount", "currency"}; 2xx = paid

    [metrics]
    listen = "127.0.0.1:9464"   # `sidecar run` serves /metrics (Prometheus), /health/live
                                # and /health/ready here; "" = off

    [api]
    listen = "127.0.0.1:8480"
    token_file = ""         # file holding the bearer token (else $SIDECAR_API_TOKEN)

    [invoice]
    provider_name = ""      # who issues the invoices
    provider_address = ""   # multi-line postal address
    provider_tax_number = ""
    provider_email = ""
    payment_details = ""    # bank account / how to pay, printed under the totals
    tax_label = "Tax"       # e.g. "VAT"
    template_dir = ""       # templates here replace the shipped ones of the same name
    due_days = 14
    detail_csv_over = 500   # more calls than this: call detail goes to a CSV, not the PDF
"""

from __future__ import annotations

import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file and key."""


@dataclass(frozen=True)
class Config:
    db: str = "sidecar.db"
    journal: str = ""
    commit_delay_ms: int = 50
    evapi_host: str = "127.0.0.1"
    evapi_port: int = 8448
    rpc_socket: str = "/run/kamailio/kamailio_rpc.sock"
    rpc_timeout: float = 2.0
    shed_after_ms: int = 40
    renew_lead_ms: int = 5_000
    min_chunk_seconds: int = 6
    media_enabled: bool = False
    media_enforce: bool = True
    media_interface: str = ""
    media_peer: str = ""
    media_ports: str = "auto"
    media_grace_ms: int = 2_000
    media_silence_share: float = 0.95
    media_end_without_media_s: int = 0
    media_buffer_mb: int = 64
    alert_webhook: str = ""
    recharge_command: tuple[str, ...] = field(default_factory=tuple)
    recharge_webhook: str = ""
    metrics_listen: str = "127.0.0.1:9464"
    api_listen: str = "127.0.0.1:8480"
    api_token_file: str = ""
    invoice_provider_name: str = ""
    invoice_provider_address: str = ""
    invoice_provider_tax_number: str = ""
    invoice_provider_email: str = ""
    invoice_payment_details: str = ""
    invoice_tax_label: str = "Tax"
    invoice_template_dir: str = ""
    invoice_due_days: int = 14
    invoice_detail_csv_over: int = 500
    node: str = field(default_factory=socket.gethostname)
    lease_s: int = 30
    source: str = "<defaults>"


_KEYS: dict[tuple[str, str], tuple[str, type[Any]]] = {
    ("database", "path"): ("db", str),
    ("database", "journal"): ("journal", str),
    ("database", "commit_delay_ms"): ("commit_delay_ms", int),
    ("kamailio", "evapi_host"): ("evapi_host", str),
    ("kamailio", "evapi_port"): ("evapi_port", int),
    ("kamailio", "rpc_socket"): ("rpc_socket", str),
    ("kamailio", "rpc_timeout"): ("rpc_timeout", float),
    ("kamailio", "shed_after_ms"): ("shed_after_ms", int),
    ("charging", "renew_lead_ms"): ("renew_lead_ms", int),
    ("charging", "min_chunk_seconds"): ("min_chunk_seconds", int),
    ("media", "enabled"): ("media_enabled", bool),
    ("media", "enforce"): ("media_enforce", bool),
    ("media", "interface"): ("media_interface", str),
    ("media", "peer"): ("media_peer", str),
    ("media", "ports"): ("media_ports", str),
    ("media", "grace_ms"): ("media_grace_ms", int),
    ("media", "silence_share"): ("media_silence_share", float),
    ("media", "end_without_media_s"): ("media_end_without_media_s", int),
    ("media", "buffer_mb"): ("media_buffer_mb", int),
    ("alerts", "webhook"): ("alert_webhook", str),
    ("recharge", "command"): ("recharge_command", list),
    ("recharge", "webhook"): ("recharge_webhook", str),
    ("metrics", "listen"): ("metrics_listen", str),
    ("api", "listen"): ("api_listen", str),
    ("api", "token_file"): ("api_token_file", str),
    ("invoice", "provider_name"): ("invoice_provider_name", str),
    ("invoice", "provider_address"): ("invoice_provider_address", str),
    ("invoice", "provider_tax_number"): ("invoice_provider_tax_number", str),
    ("invoice", "provider_email"): ("invoice_provider_email", str),
    ("invoice", "payment_details"): ("invoice_payment_details", str),
    ("invoice", "tax_label"): ("invoice_tax_label", str),
    ("invoice", "template_dir"): ("invoice_template_dir", str),
    ("invoice", "due_days"): ("invoice_due_days", int),
    ("invoice", "detail_csv_over"): ("invoice_detail_csv_over", int),
    ("node", "name"): ("node", str),
    ("node", "lease_s"): ("lease_s", int),
    ("database", "url"): ("db", str),
}

# Integer keys that make no sense below a bound (a negative due date, a negative count).
_MINIMUM = {"lease_s": 3, "shed_after_ms": 0, "commit_delay_ms": 0, "invoice_due_days": 0,
            "invoice_detail_csv_over": 0, "media_grace_ms": 0, "media_end_without_media_s": 0,
            "media_buffer_mb": 1}


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
            if name in _MINIMUM and value < _MINIMUM[name]:
                raise ConfigError(f"{p}: [{section}] {key} must be at least {_MINIMUM[name]}")
            if name == "media_silence_share" and not 0 < value <= 1:
                raise ConfigError(f"{p}: [{section}] {key} must be a share in (0, 1]")
            if (section, key) == ("database", "url"):
                if "path" in table:
                    raise ConfigError(f"{p}: [database] has both path and url: give one")
                if not value.startswith(("postgresql://", "postgres://")):
                    raise ConfigError(f"{p}: [database] url must be a postgresql:// URL, "
                                      f"not {value[:20]!r}...")
            if name == "node" and (problem := node_name_problem(value)):
                raise ConfigError(f"{p}: [{section}] {key} {problem}")
            if name == "media_ports" and not _port_range_ok(value):
                raise ConfigError(f"{p}: [{section}] {key} must be \"auto\" or a range "
                                  f"like \"10000-20000\", not {value!r}")
            if name == "metrics_listen" and value and listen_address(value) is None:
                raise ConfigError(f"{p}: [{section}] {key} must be \"HOST:PORT\" (e.g. "
                                  f"\"127.0.0.1:9464\") or \"\" (off), not {value!r}")
            values[name] = value
    return Config(**values)


def listen_address(text: str) -> tuple[str, int] | None:
    """``"HOST:PORT"`` (``"[::1]:9464"`` for IPv6) as (host, port); None if it is not one
    (a port outside 1-65535, no host, no port)."""
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if (not sep or not host or not port.isdigit() or any(c in host for c in " []/")
            or (":" in host and not bracketed)):
        return None
    number = int(port)
    return (host, number) if 1 <= number <= 65535 else None


def port_range(text: str) -> tuple[int, int] | None:
    """``"10000-20000"`` as (10000, 20000); None for ``"auto"``."""
    if text == "auto":
        return None
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def _port_range_ok(text: str) -> bool:
    try:
        r = port_range(text)
    except ValueError:
        return False
    return r is None or 1 <= r[0] <= r[1] <= 65535


#: A node name: what names the leader lock (a file name part, a lock key), so a short,
#: plain word.
NODE_NAME_MAX = 64
_NODE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def node_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a node (one active sidecar per node), or None if it can:
    1 to 64 letters, digits, ``-``, ``_`` or ``.``, not ``.`` or ``..``."""
    if not name:
        return "must not be empty"
    if len(name) > NODE_NAME_MAX:
        return f"must be at most {NODE_NAME_MAX} characters, not {len(name)}"
    if not _NODE_NAME.fullmatch(name) or name in (".", ".."):
        return f"must be letters, digits, '-', '_' or '.' only, not {name!r}"
    return None
