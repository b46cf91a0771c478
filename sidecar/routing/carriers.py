"""Carriers as the routing core sees them: a name, a SIP destination, a capacity, and
whether routes may use them now. Pure: the store (:mod:`sidecar.store.carriers`) reads
and writes them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .sip import SipUriError, parse_sip_uri

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: Who took a carrier out of the routes: an operator's command, or route health.
OPERATOR = "operator"
HEALTH = "health"


class CarrierError(ValueError):
    """A carrier that cannot be stored or used as given (name, destination, capacity)."""


def check_carrier_name(name: str) -> str:
    """A carrier's name: 1-64 letters, digits, ``_``, ``.``, ``-`` (it is the route name
    the CDRs and Kamailio carry), starting with a letter or digit."""
    if not _NAME.match(name):
        raise CarrierError(f"'{name}' is not a carrier name: 1 to 64 letters, digits, '_', "
                           "'.' or '-', starting with a letter or digit")
    return name


def check_uri(uri: str) -> str:
    """A carrier's SIP destination, checked and written the one way (:mod:`.sip`)."""
    try:
        return str(parse_sip_uri(uri))
    except SipUriError as exc:
        raise CarrierError(f"SIP destination {exc}") from exc


def check_capacity(value: int | None, what: str) -> int | None:
    """A capacity limit: None (no limit) or a whole number >= 1."""
    if value is not None and value < 1:
        raise CarrierError(f"{what} must be at least 1 (or not given: no limit)")
    return value


@dataclass(frozen=True, slots=True)
class Carrier:
    """A carrier calls can be sent to.

    ``max_calls``: concurrent calls it takes (None: no limit); ``max_cps``: calls it takes
    per second. A disabled carrier (``enabled`` False) is left out of every route list,
    with ``disabled_reason`` since ``disabled_ms`` (Unix ms), by ``disabled_by``
    (:data:`OPERATOR` or :data:`HEALTH`); one pulled by route health comes back at
    ``until_ms`` (None: only by an operator's command).
    """

    name: str
    uri: str
    plan: str = ""  # its buy deck (a plan of kind 'buy')
    max_calls: int | None = None
    max_cps: int | None = None
    enabled: bool = True
    disabled_reason: str = ""
    disabled_ms: int | None = None
    disabled_by: str = ""
    until_ms: int | None = None

    def usable(self, now_ms: int) -> bool:
        """True when routes may use the carrier at ``now_ms``: enabled, or pulled by route
        health until a time that has come."""
        return self.enabled or (self.until_ms is not None and self.until_ms <= now_ms)


@dataclass(frozen=True, slots=True)
class Load:
    """What a carrier carries now: calls up, and calls started in the last second."""

    calls: int = 0
    cps: int = 0


NO_LOAD = Load()


def capacity_problem(carrier: Carrier, load: Load) -> str:
    """Why the carrier cannot take one more call now ('' when it can)."""
    if carrier.max_calls is not None and load.calls >= carrier.max_calls:
        return f"at capacity: {load.calls} calls up (max {carrier.max_calls})"
    if carrier.max_cps is not None and load.cps >= carrier.max_cps:
        return f"at capacity: {load.cps} calls in the last second (max {carrier.max_cps} cps)"
    return ""
