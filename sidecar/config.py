"""The live sidecar's configuration: one schema, a TOML file, environment overrides.

The schema is :class:`Config`, declared once: each field is one key of the TOML file
(``[media] grace_ms`` is ``media.grace_ms``) with its type, default, limits and
description. Parsing and validation (pydantic, strict: a TOML ``"14"`` is not an int),
the environment overrides, the documented example (``sidecar config example``), the key
table in the README (checked by ``tests/config``) and the invoice settings' defaults
(:class:`sidecar.invoices.InvoiceSettings`) all follow from it.

The rest of the code reads the flat attributes (``config.media_grace_ms``). Every key is
optional. Unknown tables and keys are refused, naming the key path and the closest known
key. Errors name where the value came from (the file, or ``$SIDECAR_...``) and the key
path: ``sidecar.toml: media.grace_ms: must be at least 0, not -5``.

**Environment overrides.** ``SIDECAR_<TABLE>__<KEY>`` (two underscores between the table
and the key; any case) overrides ``[table] key`` of the file, e.g.
``SIDECAR_DATABASE__PATH=/srv/sidecar.db``, ``SIDECAR_KAMAILIO__EVAPI_PORT=8450``,
``SIDECAR_MEDIA__ENABLED=true``, ``SIDECAR_RECHARGE__COMMAND='["charge", "{account}"]'``
(a list is JSON). A ``SIDECAR_X__Y`` naming no key is an error like an unknown key in
the file. (``$SIDECAR_DB`` and ``$SIDECAR_API_TOKEN``, with no double underscore, are the
command line's own variables, not overrides.)

**Reload.** :func:`reload_config` reads the file again and says which key paths changed;
:func:`restart_needed` which of those a running ``sidecar run`` cannot apply in place.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import socket
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Environment variables that override keys: ``SIDECAR_MEDIA__GRACE_MS``.
ENV_PREFIX = "SIDECAR_"
ENV_NESTING = "__"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names where (the file or the
    environment variable) and the key path, one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Key:
    """What the schema says of one field: its TOML key path, what it means, its limits
    (pydantic's ``ge``/``le``/``gt``), a check of its own (a problem text or None),
    whether it is a secret (masked when printed) and whether a running ``sidecar run``
    must restart to apply a change of it."""

    path: str
    doc: str
    limits: Mapping[str, int | float] = dataclasses.field(default_factory=dict)
    check: Callable[[Any], str | None] | None = None
    secret: bool = False
    restart: bool = True

    @property
    def table(self) -> str:
        return self.path.partition(".")[0]

    @property
    def name(self) -> str:
        return self.path.partition(".")[2]


_META = "sidecar.config"


def _key(path: str, default: Any = dataclasses.MISSING, *, doc: str,
         factory: Callable[[], Any] | None = None, check: Callable[[Any], str | None] | None
         = None, secret: bool = False, restart: bool = True, **limits: int | float) -> Any:
    meta = {_META: Key(path, doc, limits, check, secret, restart)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --- checks of single values (used by the schema below and by other code) -----------------

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


def _ports_problem(value: str) -> str | None:
    return None if _port_range_ok(value) else (
        f'must be "auto" or a range like "10000-20000", not {value!r}')


#: Where ``sidecar run`` learns of the calls' media (``[media] source``).
MEDIA_SOURCES = ("capture", "rtpengine")


def _source_problem(value: str) -> str | None:
    return None if value in MEDIA_SOURCES else (
        f"must be one of {', '.join(repr(s) for s in MEDIA_SOURCES)}, not {value!r}")


def ng_address(text: str) -> tuple[str, int] | None:
    """rtpengine's ng address in Kamailio's ``rtpengine_sock`` form ``"udp:HOST:PORT"``
    as (host, port); None if it is not one."""
    if not text.startswith("udp:"):
        return None
    host, sep, port = text[4:].rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or " " in host or not port.isdigit():
        return None
    number = int(port)
    return (host, number) if 1 <= number <= 65535 else None


def _ng_problem(value: str) -> str | None:
    return None if ng_address(value) else (
        f'must be "udp:HOST:PORT" (e.g. "udp:127.0.0.1:2223"), not {value!r}')


def _listen_problem(value: str) -> str | None:
    return None if not value or listen_address(value) else (
        f'must be "HOST:PORT" (e.g. "127.0.0.1:9464") or "" (off), not {value!r}')


def _api_listen_problem(value: str) -> str | None:
    return None if listen_address(value) else (
        f'must be "HOST:PORT" (e.g. "127.0.0.1:8480"), not {value!r}')


def _url_problem(value: str) -> str | None:
    return None if not value or value.startswith(("postgresql://", "postgres://")) else (
        f"must be a postgresql:// URL, not {mask_url(value)[:20]!r}...")


#: How least-cost routing orders the carriers (``[routing] order``).
ROUTING_ORDERS = ("cost", "quality")


def _order_problem(value: str) -> str | None:
    return None if value in ROUTING_ORDERS else (
        f"must be one of {', '.join(repr(s) for s in ROUTING_ORDERS)}, not {value!r}")


def _amount_problem(value: str) -> str | None:
    """An amount given as text (exact): a plain decimal number, 0 or more."""
    try:
        d = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return f'must be a decimal amount as a string (e.g. "0.005"), not {value!r}'
    if not d.is_finite() or d < 0:
        return f"must be a finite amount of 0 or more, not {value!r}"
    return None


# --- the schema ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """The live sidecar's configuration: every field is one key of the TOML file."""

    # [node]
    node: str = _key("node.name", factory=socket.gethostname, check=node_name_problem,
                     doc="this Kamailio node's name (default: the host name): one sidecar "
                         "per name is active, a second one is its hot standby")
    lease_s: int = _key("node.lease_s", 30, ge=3,
                        doc="this node's reservations are renewed while it runs; once a "
                            "lease has run out, another node settles the call (its paid "
                            "time at most)")
    # [database]
    db_path: str = _key("database.path", "sidecar.db",
                        doc="the SQLite store (one node); or url instead")
    db_url: str = _key("database.url", "", check=_url_problem, secret=True,
                       doc="a PostgreSQL store shared by several nodes, "
                           "postgresql://USER@HOST/DB?sslmode=verify-full (the password "
                           "from $PGPASSWORD or ~/.pgpass; masked when printed)")
    journal: str = _key("database.journal", "",
                        doc="settlements kept while the store fails (\"\": PATH.journal, "
                            "or ./sidecar-NODE.journal with url); better on another "
                            "filesystem than the database")
    commit_delay_ms: int = _key("database.commit_delay_ms", 50, ge=0,
                                doc="group commit: commands arriving meanwhile share a "
                                    "transaction")
    # [kamailio]
    evapi_host: str = _key("kamailio.evapi_host", "127.0.0.1", doc="Kamailio's evapi address")
    evapi_port: int = _key("kamailio.evapi_port", 8448, ge=1, le=65535,
                           doc="Kamailio's evapi port")
    rpc_socket: str = _key("kamailio.rpc_socket", "/run/kamailio/kamailio_rpc.sock",
                           doc="Kamailio's jsonrpcs datagram socket (dlg.end_dlg, dlg.list)")
    rpc_timeout: float = _key("kamailio.rpc_timeout", 2.0, gt=0, restart=False,
                              doc="seconds to wait for a JSON-RPC answer")
    shed_after_ms: int = _key("kamailio.shed_after_ms", 40, ge=0, restart=False,
                              doc="overload: an offer that waited longer gets a fast 503 "
                                  "(0: never)")
    # [charging]
    renew_lead_ms: int = _key("charging.renew_lead_ms", 5_000, ge=0, restart=False,
                              doc="the next chunk is reserved this long before the "
                                  "current one runs out")
    min_chunk_seconds: int = _key("charging.min_chunk_seconds", 6, ge=1, restart=False,
                                  doc="the smallest chunk, when calls share a small balance")
    float_chunks: int = _key("charging.float_chunks", 50, ge=0, restart=False,
                             doc="a node's float on a reseller is topped up by this many "
                                 "chunks (or what it drains in 2 s, if more); 0: no floats")
    float_low_chunks: int = _key("charging.float_low_chunks", 10, ge=0, restart=False,
                                 doc="a float holding fewer chunks than this asks for more")
    float_idle_ms: int = _key("charging.float_idle_ms", 10_000, ge=1, restart=False,
                              doc="a float nothing drew on this long is given back")
    # [media]
    media_enabled: bool = _key("media.enabled", False,
                               doc="watch RTP: answer confirmed by media, FAS caught")
    media_enforce: bool = _key("media.enforce", True,
                               doc="media decides billing; false: verdicts recorded only")
    media_interface: str = _key("media.interface", "",
                                doc="capture interface, e.g. \"eth0\"; \"\": the route "
                                    "towards peer")
    media_peer: str = _key("media.peer", "",
                           doc="a media peer's address (carrier, media gateway)")
    media_ports: str = _key("media.ports", "auto", check=_ports_problem,
                            doc="BPF filter: \"auto\" (the dialogs' SDP ports) or "
                                "\"10000-20000\"")
    media_grace_ms: int = _key("media.grace_ms", 2_000, ge=0, restart=False,
                               doc="callee media this soon after the 200 OK: billed from "
                                   "the 200 OK")
    media_silence_share: float = _key("media.silence_share", 0.95, gt=0, le=1,
                                      restart=False,
                                      doc="callee silent in this share of the call: FAS "
                                          "(credited)")
    media_end_without_media_s: int = _key("media.end_without_media_s", 0, ge=0,
                                          restart=False,
                                          doc="end answered calls with no callee media "
                                              "after this (0: never)")
    media_buffer_mb: int = _key("media.buffer_mb", 64, ge=1, doc="kernel capture buffer")
    media_source: str = _key("media.source", "capture", check=_source_problem,
                             doc="\"capture\": sniff the RTP (interface, peer, ports); "
                                 "\"rtpengine\": read rtpengine's per-call counters (ng "
                                 "query) where the media cannot be sniffed: answer, no "
                                 "media and late media judged, not ringback or silence")
    media_rtpengine: str = _key("media.rtpengine", "udp:127.0.0.1:2223", check=_ng_problem,
                                doc="rtpengine's ng address (Kamailio's RTPENGINE_SOCK), "
                                    "with source = \"rtpengine\"")
    media_rtpengine_poll_ms: int = _key("media.rtpengine_poll_ms", 250, ge=20, le=5_000,
                                        doc="each answered call without callee media yet "
                                            "is queried this often (late media is billed "
                                            "up to this much late)")
    media_rtpengine_max_qps: int = _key("media.rtpengine_max_qps", 200, ge=1,
                                        doc="at most this many ng queries per second in "
                                            "all (more calls: each is queried less often)")
    # [alerts]
    alert_webhook: str = _key("alerts.webhook", "", secret=True, restart=False,
                              doc="POSTed JSON for low-balance, budget, fraud and "
                                  "suspension alerts (\"\": logged only)")
    # [recharge]
    recharge_command: tuple[str, ...] = _key(
        "recharge.command", factory=tuple, restart=False,
        doc="auto-recharge program, an argv list (never a shell), e.g. "
            "[\"/usr/local/bin/charge-card\", \"{account}\", \"{amount}\", \"{currency}\"]")
    recharge_webhook: str = _key("recharge.webhook", "", secret=True, restart=False,
                                 doc="or POST {\"account\", \"amount\", \"currency\"}; "
                                     "2xx = paid")
    # [metrics]
    metrics_listen: str = _key("metrics.listen", "127.0.0.1:9464", check=_listen_problem,
                               doc="/metrics (Prometheus), /health/live and /health/ready "
                                   "of `sidecar run`; \"\" = off")
    # [api]: `sidecar api`
    api_listen: str = _key("api.listen", "127.0.0.1:8480", restart=False,
                           check=_api_listen_problem, doc="`sidecar api` listens here")
    api_token_file: str = _key("api.token_file", "", restart=False,
                               doc="file holding the API's bearer token (else "
                                   "$SIDECAR_API_TOKEN)")
    # [invoice]: `sidecar invoice`, `sidecar api`
    invoice_provider_name: str = _key("invoice.provider_name", "", restart=False,
                                      doc="who issues the invoices")
    invoice_provider_address: str = _key("invoice.provider_address", "", restart=False,
                                         doc="multi-line postal address")
    invoice_provider_tax_number: str = _key("invoice.provider_tax_number", "", restart=False,
                                            doc="the provider's tax number")
    invoice_provider_email: str = _key("invoice.provider_email", "", restart=False,
                                       doc="the provider's e-mail address")
    invoice_payment_details: str = _key("invoice.payment_details", "", restart=False,
                                        doc="bank account / how to pay, printed under the "
                                            "totals")
    invoice_tax_label: str = _key("invoice.tax_label", "Tax", restart=False,
                                  doc="the tax line's label, e.g. \"VAT\"")
    invoice_template_dir: str = _key("invoice.template_dir", "", restart=False,
                                     doc="templates here replace the shipped ones of the "
                                         "same name")
    invoice_due_days: int = _key("invoice.due_days", 14, ge=0, restart=False,
                                 doc="payment due this many days after the invoice date")
    invoice_detail_csv_over: int = _key("invoice.detail_csv_over", 500, ge=0, restart=False,
                                        doc="more calls than this: the call detail goes to "
                                            "a CSV, not the PDF")

    routing_order: str = _key("routing.order", "cost", check=_order_problem, restart=False,
                              doc='least-cost routing: "cost" (cheapest first) or "quality" '
                                  "(cost weighed by ASR, ACD, PDD and FAS score)")
    routing_min_margin_per_minute: str = _key(
        "routing.min_margin_per_minute", "0", check=_amount_problem, restart=False,
        doc="a carrier is used only if it leaves at least this per minute (sell currency)")
    routing_min_margin_percent: str = _key(
        "routing.min_margin_percent", "0", check=_amount_problem, restart=False,
        doc="... and at least this percentage of the sell price")
    routing_reference_seconds: int = _key(
        "routing.reference_seconds", 60, ge=1, le=86_400, restart=False,
        doc="margins compare buy and sell prices of a call this long (fees, increments)")
    routing_max_routes: int = _key("routing.max_routes", 0, ge=0, le=100, restart=False,
                                   doc="the most carriers a call tries (0: every one that "
                                       "qualifies)")
    routing_no_route_code: int = _key("routing.no_route_code", 503, ge=400, le=699,
                                      restart=False,
                                      doc="the SIP code of a call no carrier may take")
    routing_health_window_s: int = _key(
        "routing.health_window_s", 3600, ge=60, restart=False,
        doc="route health judges each carrier on its calls of this many seconds")
    routing_health_min_attempts: int = _key(
        "routing.health_min_attempts", 20, ge=1, restart=False,
        doc="a carrier with fewer calls in the window is not judged")
    routing_health_max_fas_score: int = _key(
        "routing.health_max_fas_score", 50, ge=1, le=100, restart=False,
        doc="a carrier whose FAS score reaches this is pulled")
    routing_health_min_asr: float = _key(
        "routing.health_min_asr", 0.15, ge=0, le=1, restart=False,
        doc="a carrier whose ASR falls below this is pulled")
    routing_health_cooldown_s: int = _key(
        "routing.health_cooldown_s", 900, ge=1, restart=False,
        doc="a pulled carrier comes back after this many seconds")

    #: Where it was read from (not a key).
    source: str = "<defaults>"

    @property
    def db(self) -> str:
        """The store: ``database.url`` if given, else ``database.path``."""
        return self.db_url or self.db_path


def schema() -> list[tuple[dataclasses.Field[Any], Key]]:
    """Every key of the schema with its field, in the order declared."""
    return list(_schema())


@cache
def _schema() -> tuple[tuple[dataclasses.Field[Any], Key], ...]:
    return tuple((f, f.metadata[_META]) for f in dataclasses.fields(Config)
                 if _META in f.metadata)


@cache
def _types() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def key_of(field_name: str) -> str:
    """The key path of a :class:`Config` field: ``media.grace_ms`` for
    ``media_grace_ms``; the name itself for a field that is no key (``source``)."""
    return next((k.path for f, k in _schema() if f.name == field_name), field_name)


def default_of(f: dataclasses.Field[Any]) -> Any:
    """A field's default value."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _type_name(tp: Any) -> str:
    return "a list of strings" if tp == tuple[str, ...] else getattr(tp, "__name__", str(tp))


# --- validation with pydantic (models generated from the schema) --------------------------

@cache
def _file_model() -> Any:
    """The pydantic model of the whole file: one model per table, both refusing unknown
    keys, strict (no "14" for an int; an int is taken for a float)."""
    from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, create_model

    strict = ConfigDict(extra="forbid", strict=True)
    tables: dict[str, dict[str, Any]] = {}
    for f, key in _schema():
        tp = _types()[f.name]
        extra: list[Any] = []
        if tp == tuple[str, ...]:
            extra.append(BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v))
        if key.check is not None:
            extra.append(AfterValidator(_checked(key.check)))
        opts: dict[str, Any] = {"description": key.doc, **key.limits}
        if f.default_factory is not dataclasses.MISSING:
            opts["default_factory"] = f.default_factory
        else:
            opts["default"] = f.default
        info = Field(**opts)
        ann = Annotated[tp, *extra] if extra else tp
        tables.setdefault(key.table, {})[key.name] = (ann, info)
    models = {t: create_model(f"{t.title()}Table", __config__=strict, **fs)
              for t, fs in tables.items()}
    return create_model("ConfigFile", __config__=strict,  # type: ignore[call-overload]
                        **{t: (m, Field(default_factory=m)) for t, m in models.items()})


def _checked(check: Callable[[Any], str | None]) -> Callable[[Any], Any]:
    def run(value: Any) -> Any:
        problem = check(value)
        if problem:
            raise ValueError(problem)
        return value
    return run


def _problem(err: Mapping[str, Any]) -> tuple[str, str]:
    """A pydantic error as (key path, what is wrong), in the project's words."""
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    items = [p for p in err["loc"] if isinstance(p, int)]
    path = ".".join(loc)
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    keys = {k.path: k for _, k in _schema()}
    tables = sorted({k.table for k in keys.values()})
    if kind == "extra_forbidden":
        if len(loc) == 1:
            near = difflib.get_close_matches(path, tables, 1)
            hint = f"did you mean [{near[0]}]? " if near else ""
            return path, f"unknown table ({hint}tables: {', '.join(tables)})"
        near = difflib.get_close_matches(path, list(keys), 1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        return path, f"unknown key{hint}"
    if kind == "model_type" or (len(loc) == 1 and kind.endswith("_type")):
        return path, f"must be a table ([{path}]), not {type(value).__name__}"
    key = keys.get(path)
    if key is None:
        return path, str(err.get("msg", "invalid"))
    tp = _types()[next(f.name for f, k in _schema() if k.path == path)]
    if items and kind.endswith("_type"):
        return path, (f"must be {_type_name(tp)} (item {items[0] + 1} is "
                      f"{type(value).__name__})")
    if kind.endswith("_type") or kind in ("int_from_float", "bool_parsing", "int_parsing",
                                          "float_parsing", "string_too_long"):
        shown = type(value).__name__
        return path, f"must be {_type_name(tp)}, not {shown}"
    shown = mask_url(str(value)) if key.secret else repr(value)
    if kind == "greater_than_equal":
        return path, f"must be at least {ctx['ge']}, not {shown}"
    if kind == "less_than_equal":
        return path, f"must be at most {ctx['le']}, not {shown}"
    if kind == "greater_than":
        return path, f"must be more than {ctx['gt']}, not {shown}"
    if kind == "value_error":
        return path, str(ctx.get("error", err.get("msg", "invalid")))
    return path, str(err.get("msg", "invalid"))


def _env_overrides(environ: Mapping[str, str]) -> Iterator[tuple[str, str, str]]:
    """(variable, key path, text) of each ``SIDECAR_TABLE__KEY`` variable."""
    for var, text in sorted(environ.items()):
        up = var.upper()
        if up.startswith(ENV_PREFIX) and ENV_NESTING in up:
            table, _, key = up[len(ENV_PREFIX):].partition(ENV_NESTING)
            yield var, f"{table.lower()}.{key.lower()}", text


def _env_value(var: str, path: str, text: str) -> Any:
    """An environment variable's text as the key's type (lax: "8450", "true", a JSON
    list); ConfigError naming the variable and the key when it is not one."""
    from pydantic import TypeAdapter, ValidationError

    types = {k.path: _types()[f.name] for f, k in _schema()}
    if path not in types:
        near = difflib.get_close_matches(path, list(types), 1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError([f"${var}: {path}: unknown key{hint}"])
    tp = types[path]
    if tp is str:
        return text
    try:
        if tp == tuple[str, ...]:
            return TypeAdapter(tp).validate_json(text)
        return TypeAdapter(tp).validate_python(text.strip())
    except ValidationError as exc:
        shape = "a JSON list of strings" if tp == tuple[str, ...] else _type_name(tp)
        raise ConfigError([f"${var}: {path}: must be {shape}, not {text!r}"]) from exc


@dataclass(frozen=True)
class Loaded:
    """A configuration with where each key's value came from (the file, ``$VAR``); keys
    not in ``origins`` have their default."""

    config: Config
    origins: dict[str, str]


def load(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Loaded:
    """The configuration from ``path`` (None: defaults only) and the environment's
    overrides, checked whole; ConfigError listing every problem."""
    from pydantic import ValidationError

    environ = os.environ if environ is None else environ
    doc: dict[str, Any] = {}
    where = "<defaults>"
    if path is not None:
        p = Path(path)
        where = str(p)
        try:
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError([f"{p}: no such configuration file"]) from exc
        except IsADirectoryError as exc:
            raise ConfigError([f"{p}: is a directory, not a configuration file"]) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError([f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
                              ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{p}: {exc}"]) from exc
    origins = {f"{t}.{k}": where for t, table in doc.items() if isinstance(table, dict)
               for k in table}
    problems: list[str] = []
    for var, key_path, text in _env_overrides(environ):
        try:
            value = _env_value(var, key_path, text)
        except ConfigError as exc:
            problems += exc.problems
            continue
        table, _, key = key_path.partition(".")
        if not isinstance(doc.setdefault(table, {}), dict):
            doc[table] = {}
        doc[table][key] = value
        origins[key_path] = f"${var}"
    if problems:
        raise ConfigError(problems)
    try:
        parsed = _file_model().model_validate(doc)
    except ValidationError as exc:
        for err in exc.errors():
            key_path, what = _problem(err)
            problems.append(f"{origins.get(key_path, where)}: {key_path}: {what}")
        raise ConfigError(problems) from None
    if "database.path" in origins and "database.url" in origins:
        raise ConfigError([f"{origins['database.url']}: database.url: database.path is set "
                           f"too ({origins['database.path']}): give one"])
    values = {f.name: getattr(getattr(parsed, k.table), k.name) for f, k in _schema()}
    return Loaded(Config(**values, source=where), origins)


def load_config(path: str | Path | None) -> Config:
    """Read and check a TOML configuration (None: the defaults), with the environment's
    ``SIDECAR_TABLE__KEY`` overrides; unknown keys and wrong types are errors."""
    return load(path).config


# --- reload ---------------------------------------------------------------------------

def changed_keys(old: Config, new: Config) -> list[str]:
    """The key paths whose values differ between two configurations."""
    return [k.path for f, k in _schema() if getattr(old, f.name) != getattr(new, f.name)]


def restart_needed(changed: list[str]) -> list[str]:
    """Of ``changed`` key paths, those a running ``sidecar run`` cannot apply in place
    (a new evapi port, another database ...): it must be restarted for them."""
    restart = {k.path for _, k in _schema() if k.restart}
    return [p for p in changed if p in restart]


def reload_config(path: str | Path, current: Config) -> tuple[Config, list[str]]:
    """For SIGHUP: the configuration read again from ``path`` (with the environment's
    overrides) and the key paths that changed from ``current``, in schema order.

    Raises ConfigError (the running configuration stays) when the file is not usable.
    ``node.name`` shows as changed when ``current`` came from ``--node`` and the file
    names another node or none: compare after applying the same option. Use
    :func:`restart_needed` on the list to tell which changes need a restart."""
    new = load_config(path)
    return new, changed_keys(current, new)


# --- printing -------------------------------------------------------------------------

def mask_url(text: str) -> str:
    """A URL with its password (``user:PASS@``, ``?password=``) replaced by ``***``;
    anything else unchanged."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if not parts.scheme or not parts.netloc:
        return text
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in pairs):
            query = urlencode([(k, "***" if k.lower() == "password" else v)
                               for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def effective(cfg: Config, *, mask: bool = True) -> dict[str, dict[str, Any]]:
    """The configuration as its TOML tables (secrets masked unless ``mask`` is False)."""
    out: dict[str, dict[str, Any]] = {}
    for f, k in _schema():
        value = getattr(cfg, f.name)
        if mask and k.secret and isinstance(value, str):
            value = mask_url(value)
        out.setdefault(k.table, {})[k.name] = list(value) if isinstance(value, tuple) else value
    return out


def toml_value(value: Any) -> str:
    """A value as TOML text (strings in JSON's escapes, which TOML reads alike)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def render_toml(cfg: Config, origins: Mapping[str, str] | None = None) -> str:
    """The effective configuration as TOML, each value commented with where it came from
    (``origins``: the file or ``$VAR``; else the default)."""
    lines: list[str] = []
    for table, keys in effective(cfg).items():
        lines += [*([""] if lines else []), f"[{table}]"]
        for key, value in keys.items():
            origin = (origins or {}).get(f"{table}.{key}")
            note = f"from {origin}" if origin else "default"
            lines.append(f"{key} = {toml_value(value)}  # {note}")
    return "\n".join(lines) + "\n"


def example_toml() -> str:
    """The documented example: every table and key with its default and meaning."""
    lines = ["# The sidecar's configuration (sidecar run --config FILE). Every key is",
             "# optional; these are the defaults. Environment overrides:",
             "# SIDECAR_<TABLE>__<KEY>, e.g. SIDECAR_DATABASE__PATH."]
    table = ""
    for f, k in _schema():
        if k.table != table:
            table = k.table
            lines += ["", f"[{table}]"]
        default = default_of(f)
        if k.path == "node.name":
            lines.append(f"# name = \"<host name>\"  # {k.doc}")
            continue
        text = f"{k.name} = {toml_value(default)}"
        if k.path == "database.url":
            text = "# url = \"postgresql://sidecar@db.example/billing?sslmode=verify-full\""
        lines.append(f"{text}  # {k.doc}")
    return "\n".join(lines) + "\n"


def reference_markdown() -> str:
    """The README's table of keys: key, type, default, limits, meaning."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f, k in _schema():
        tp = _types()[f.name]
        default = ("the host name" if k.path == "node.name" else
                   f"`{toml_value(default_of(f))}`")
        limits = ", ".join(f"{'>=' if n == 'ge' else '<=' if n == 'le' else '>'} {v}"
                           for n, v in k.limits.items())
        kind = _type_name(tp).replace("a list of strings", "list of strings")
        kind = f"{kind} ({limits})" if limits else kind
        doc = k.doc.replace("|", "\\|")
        rows.append(f"| `{k.path}` | {kind} | {default} | {doc} |")
    return "\n".join(rows) + "\n"
