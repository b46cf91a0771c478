"""Kamailio's evapi events (docs/evapi-events.md) as typed values: parsing and checking.

A message that is not valid JSON, not an object, of an unknown ``event`` or missing a
field raises :class:`EventError` naming what is wrong; the caller logs and counts it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class EventError(ValueError):
    """A message from Kamailio that cannot be used."""


@dataclass(frozen=True)
class Dialog:
    call_id: str
    h_entry: int
    h_id: int
    ts_us: int  # Kamailio's clock when the event happened (Unix microseconds)

    @property
    def ts_ms(self) -> int:
        return self.ts_us // 1000


@dataclass(frozen=True)
class Offer:
    dialog: Dialog
    tindex: int
    tlabel: int
    from_user: str
    from_display: str
    pai_user: str
    to_user: str
    ruri: str
    ruri_user: str
    account_code: str
    src_ip: str
    src_port: int
    sdp: str


@dataclass(frozen=True)
class Early:
    """A provisional reply (180 ringing, 183 session progress); ``sdp`` is "" if none."""

    dialog: Dialog
    code: int
    sdp: str


@dataclass(frozen=True)
class Answer:
    """The 2xx to the INVITE. ``route`` names the next hop the call went to."""

    dialog: Dialog
    sdp: str
    route: str = ""


@dataclass(frozen=True)
class MediaUpdate:
    """New SDP in an established dialog (re-INVITE or UPDATE, their 2xx, or an ACK
    answering a late offer). ``side`` is whose SDP it is: "caller", "callee", or "" when
    unknown (matched by the SDP origin line)."""

    dialog: Dialog
    side: str
    sdp: str


@dataclass(frozen=True)
class End:
    dialog: Dialog
    by: str
    reason: str
    start_ts_ms: int


@dataclass(frozen=True)
class Failed:
    dialog: Dialog
    code: int
    reason: str
    route: str = ""


Event = Offer | Early | Answer | MediaUpdate | End | Failed


def _str(doc: dict[str, Any], key: str, default: str | None = "") -> str:
    v = doc.get(key, default)
    if v is None:
        raise EventError(f"missing '{key}'")
    if isinstance(v, int | float) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str):
        raise EventError(f"'{key}' must be a string")
    return v


def _int(doc: dict[str, Any], key: str, default: int | None = 0) -> int:
    v = doc.get(key, default)
    if v is None:
        raise EventError(f"missing '{key}'")
    if isinstance(v, bool):
        raise EventError(f"'{key}' must be a number")
    if isinstance(v, str):
        v = v.strip()
        if not v.lstrip("-").isdigit():
            raise EventError(f"'{key}' must be a number, not '{v[:20]}'")
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return int(v)
    raise EventError(f"'{key}' must be a number")


def _ts_us(doc: dict[str, Any], key: str) -> int:
    v = doc.get(key, 0)
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError as exc:
            raise EventError(f"'{key}' must be a timestamp") from exc
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise EventError(f"'{key}' must be a timestamp")
    return round(float(v) * 1_000_000)


def parse_event(payload: bytes | str) -> Event:
    """Parse one evapi payload into an event, or raise :class:`EventError`."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EventError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise EventError("not a JSON object")
    kind = doc.get("event")
    dialog = Dialog(_str(doc, "call_id", None), _int(doc, "h_entry"), _int(doc, "h_id"),
                    _ts_us(doc, "ts"))
    if not dialog.call_id:
        raise EventError("empty 'call_id'")
    if kind == "offer":
        return Offer(dialog, _int(doc, "tindex", None), _int(doc, "tlabel", None),
                     _str(doc, "from_user"), _str(doc, "from_display"), _str(doc, "pai_user"),
                     _str(doc, "to_user"), _str(doc, "ruri"), _str(doc, "ruri_user"),
                     _str(doc, "account_code"), _str(doc, "src_ip"), _int(doc, "src_port"),
                     _str(doc, "sdp"))
    if kind == "early":
        return Early(dialog, _int(doc, "code"), _str(doc, "sdp"))
    if kind == "answer":
        return Answer(dialog, _str(doc, "sdp"), _str(doc, "route"))
    if kind == "media":
        side = _str(doc, "side")
        if side not in ("caller", "callee", ""):
            raise EventError(f"'side' must be caller or callee, not '{side[:20]}'")
        return MediaUpdate(dialog, side, _str(doc, "sdp"))
    if kind == "end":
        return End(dialog, _str(doc, "by"), _str(doc, "reason"),
                   _ts_us(doc, "start_ts") // 1000)
    if kind == "failed":
        return Failed(dialog, _int(doc, "code"), _str(doc, "reason"), _str(doc, "route"))
    raise EventError(f"unknown event '{str(kind)[:40]}'")
