"""Kamailio's evapi events (docs/evapi-events.md) as typed values: parsing and checking.

A message that is not valid JSON, not an object, of an unknown ``event``, missing a field,
or with a field out of its limits (a number not finite, not integral where an integer is
meant or out of range; a string too long or not valid Unicode; nesting too deep) raises
:class:`EventError` naming the field and what is wrong; the caller logs and counts it.
Nothing else escapes :func:`parse_event`, whatever the input.
"""

from __future__ import annotations

import json
import json.scanner
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from .netstring import MAX_FRAME


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
    """The dialog ended. ``account``/``callee``/``caller``: the dialog variables set at
    authorization, so a sidecar that never saw the call answered (it ended while no
    sidecar was connected) can still settle it; ``route``: the carrier that took it."""

    dialog: Dialog
    by: str
    reason: str
    start_ts_ms: int
    account: str = ""
    callee: str = ""
    caller: str = ""
    route: str = ""


@dataclass(frozen=True)
class Failed:
    dialog: Dialog
    code: int
    reason: str
    route: str = ""


@dataclass(frozen=True)
class Attempt:
    """A carrier of the sidecar's route list refused the call or did not answer
    (least-cost routing): ``code`` its final reply (408: no answer in time), ``route`` the
    carrier. On a 408 or a 5xx Kamailio goes on to the next carrier of the list."""

    dialog: Dialog
    code: int
    reason: str
    route: str


Event = Offer | Early | Answer | MediaUpdate | End | Failed | Attempt


# Limits (docs/evapi-events.md, "Validation"). Kamailio's own values sit far inside them;
# anything outside is a broken or hostile message and is refused as a whole.
MAX_U32 = 2**32 - 1  # h_entry, h_id, tindex, tlabel
MAX_PORT = 65_535
MIN_CODE, MAX_CODE = 100, 699  # SIP reply codes
MAX_TS = 2**33  # seconds: timestamps are 0 (none) or a Unix time before the year 2242
MAX_TEXT = 1024  # characters in a call id, user, URI, account code, reason, route ...
MAX_SDP = 65_536  # characters in an SDP body
MAX_DEPTH = 32  # JSON nesting (events are flat objects)
MAX_DIGITS = 10  # a number sent as a string of digits (2**32 - 1 has 10)


def _show(v: object) -> str:
    """A short, printable rendering of a refused value for the message."""
    if isinstance(v, str):
        return ascii(v[:20]) + ("..." if len(v) > 20 else "")
    if isinstance(v, float) or (isinstance(v, int) and -10**20 < v < 10**20):
        return repr(v)
    if isinstance(v, int):
        return "a huge integer"
    return f"a JSON {_JSON_TYPE.get(type(v), type(v).__name__)}"


_JSON_TYPE = {dict: "object", list: "array", str: "string", type(None): "null"}


def _str(doc: dict[str, Any], key: str, default: str | None = "",
         limit: int = MAX_TEXT) -> str:
    v = doc.get(key, default)
    if type(v) is not str:
        if v is None:
            raise EventError(f"missing '{key}'")
        if type(v) is int:
            v = str(v)
        elif type(v) is float and math.isfinite(v):
            v = repr(v)
        else:
            raise EventError(f"'{key}' must be a string, not {_show(v)}")
    if len(v) > limit:
        raise EventError(f"'{key}' is longer than {limit} characters ({len(v)})")
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EventError(f"'{key}' is not valid Unicode (lone surrogate "
                             f"at character {exc.start})") from None
    return v


def _int(doc: dict[str, Any], key: str, default: int | None = 0, lo: int = 0,
         hi: int = MAX_U32) -> int:
    """An integer field: a JSON integer, an integral finite float (3.0) or a string of
    ASCII digits, within ``lo..hi``; absent means ``default`` (``None``: required)."""
    v = doc.get(key, default)
    if type(v) is not int:
        if v is None:
            raise EventError(f"missing '{key}'")
        if type(v) is float:
            if not v.is_integer():  # also false for inf and nan
                raise EventError(f"'{key}' must be an integer, not {_show(v)}")
            if not lo <= v <= hi:
                raise EventError(f"'{key}' must be in {lo}..{hi}, not {_show(v)}")
            return int(v)
        if type(v) is str:
            s = v.strip()
            if not (s.isascii() and s.isdigit() and len(s) <= MAX_DIGITS):
                raise EventError(f"'{key}' must be a number, not {_show(v)}")
            v = int(s)
        else:
            raise EventError(f"'{key}' must be a number, not {_show(v)}")
    if not lo <= v <= hi:
        raise EventError(f"'{key}' must be in {lo}..{hi}, not {_show(v)}")
    return v


def _ts_us(doc: dict[str, Any], key: str) -> int:
    """A timestamp in seconds (number or numeric string) as Unix microseconds; absent or
    0 means none (0). Refused unless finite and in ``0 <= ts < MAX_TS``."""
    v = doc.get(key, 0)
    if type(v) is not float and type(v) is not int:
        if type(v) is str and len(v) <= 40:
            try:
                v = float(v)
            except ValueError:
                raise EventError(f"'{key}' must be a timestamp, not {_show(v)}") from None
        else:
            raise EventError(f"'{key}' must be a timestamp, not {_show(v)}")
    if not 0 <= v < MAX_TS:  # false for nan too
        raise EventError(f"'{key}' must be a Unix time in seconds in 0..2**33, "
                         f"not {_show(v)}")
    return round(float(v) * 1_000_000)


def _refuse_constant(name: str) -> None:
    raise EventError(f"not JSON: {name} is not a number")


class _Decoder(json.JSONDecoder):
    """A ``json.JSONDecoder`` whose ``decode`` goes straight to the C scanner when the text
    is one JSON value with nothing around it, as an evapi event always is. Anything else
    (whitespace around the value, extra data, no value) takes the standard path, which
    raises the standard error."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._scan: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
            cast(Any, self))

    def decode(self, s: str, _w: Any = None) -> Any:
        try:
            value, end = self._scan(s, 0)
            if end == len(s):
                return value
        except StopIteration:
            pass
        return super().decode(s) if _w is None else super().decode(s, _w)


_DECODER = _Decoder(parse_constant=_refuse_constant)
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.S)
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")


def _too_deep(text: str) -> bool:
    """True when the brackets outside strings nest deeper than MAX_DEPTH (or do not
    balance). Each pass drops the innermost pairs, so a document nested at most
    MAX_DEPTH deep is empty after MAX_DEPTH passes, and a pass that drops nothing
    leaves brackets that never close. Linear work in C, no recursion."""
    outside = _JSON_STRING.sub("", text).encode("utf-8", "surrogatepass")
    b = outside.translate(None, _NOT_BRACKET)
    for _ in range(MAX_DEPTH):
        if not b:
            return False
        n = len(b)
        b = b.replace(b"[]", b"").replace(b"{}", b"")
        if len(b) == n:
            return True
    return bool(b)


def parse_event(payload: bytes | str) -> Event:
    """Parse one evapi payload into an event, or raise :class:`EventError`."""
    if len(payload) > MAX_FRAME:
        raise EventError(f"longer than {MAX_FRAME} bytes")
    if isinstance(payload, bytes):
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventError(f"not JSON: not UTF-8 ({exc.reason} at byte {exc.start})"
                             ) from None
        # Strict UTF-8 decodes no surrogate, so only a \u escape can make one.
        plain = b"\\u" not in payload
    else:
        text = payload
        plain = text.isascii() and "\\u" not in text
    # Only a payload with many brackets can nest deeply: the scan is skipped for the rest.
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(text):
        raise EventError(f"not JSON: brackets nested deeper than {MAX_DEPTH} levels "
                         "or unbalanced")
    try:
        doc = _DECODER.decode(text)
    except EventError:
        raise
    except ValueError as exc:
        raise EventError(f"not JSON: {exc}") from None
    except RecursionError:
        raise EventError("not JSON: nested too deeply") from None
    except MemoryError:
        raise EventError("not JSON: too large to decode") from None
    if not isinstance(doc, dict):
        raise EventError("not a JSON object")
    if plain:
        ev = _plain_event(doc, len(text))
        if ev is not None:
            return ev
    return _checked_event(doc)


def _checked_event(doc: dict[str, Any]) -> Event:
    """The event in ``doc``, every field checked one by one; the first fault raises."""
    kind = doc.get("event")
    dialog = Dialog(_str(doc, "call_id", None), _int(doc, "h_entry"), _int(doc, "h_id"),
                    _ts_us(doc, "ts"))
    if not dialog.call_id:
        raise EventError("empty 'call_id'")
    if kind == "offer":
        return Offer(dialog, _int(doc, "tindex", None), _int(doc, "tlabel", None),
                     _str(doc, "from_user"), _str(doc, "from_display"), _str(doc, "pai_user"),
                     _str(doc, "to_user"), _str(doc, "ruri"), _str(doc, "ruri_user"),
                     _str(doc, "account_code"), _str(doc, "src_ip"),
                     _int(doc, "src_port", 0, 0, MAX_PORT), _str(doc, "sdp", limit=MAX_SDP))
    if kind == "early":
        return Early(dialog, _code(doc), _str(doc, "sdp", limit=MAX_SDP))
    if kind == "answer":
        return Answer(dialog, _str(doc, "sdp", limit=MAX_SDP), _str(doc, "route"))
    if kind == "media":
        side = _str(doc, "side")
        if side not in ("caller", "callee", ""):
            raise EventError(f"'side' must be caller or callee, not {_show(side)}")
        return MediaUpdate(dialog, side, _str(doc, "sdp", limit=MAX_SDP))
    if kind == "end":
        return End(dialog, _str(doc, "by"), _str(doc, "reason"),
                   _ts_us(doc, "start_ts") // 1000, _str(doc, "account"), _str(doc, "callee"),
                   _str(doc, "caller"), _str(doc, "route"))
    if kind == "failed":
        return Failed(dialog, _code(doc), _str(doc, "reason"), _str(doc, "route"))
    if kind == "attempt":
        return Attempt(dialog, _code(doc), _str(doc, "reason"), _str(doc, "route"))
    if isinstance(kind, str):
        raise EventError(f"unknown event {_show(kind)}")
    raise EventError("missing 'event'" if kind is None else
                     f"'event' must be a string, not {_show(kind)}")


# --- the common case, checked in bulk ----------------------------------------------------
# An event as Kamailio sends it has every field it names, of the type it names, far
# inside the limits. For a payload with no \u escape (so no string can hold a lone
# surrogate) such an event is checked in bulk below; anything else (a field absent, of
# another type, out of range, too long) returns None, and the field by field checks of
# _checked_event decide, with their messages.

_COMMON = operator.itemgetter("call_id", "h_entry", "h_id", "ts")
_OFFER_INTS = operator.itemgetter("tindex", "tlabel", "src_port")
_OFFER_TEXT = operator.itemgetter("from_user", "from_display", "pai_user", "to_user", "ruri",
                                  "ruri_user", "account_code", "src_ip")
_EARLY = operator.itemgetter("code", "sdp")
_ANSWER = operator.itemgetter("sdp", "route")
_MEDIA = operator.itemgetter("side", "sdp")
_END_TEXT = operator.itemgetter("by", "reason", "account", "callee", "caller")
_FAILED = operator.itemgetter("code", "reason", "route")
_new = object.__new__


def _texts_fit(texts: tuple[Any, ...], payload_len: int) -> bool:
    """True when every value is a string of at most MAX_TEXT characters (a string is
    shorter than the payload that holds it, so a short payload needs no count)."""
    try:
        joined = "".join(texts)
    except TypeError:
        return False
    return (payload_len <= MAX_TEXT or len(joined) <= MAX_TEXT
            or max(map(len, texts)) <= MAX_TEXT)


def _plain_event(doc: dict[str, Any], payload_len: int) -> Event | None:
    """The event in ``doc`` when every field is present, of its JSON type and in range
    (its strings free of lone surrogates, as the caller made sure); else None. The
    values are those _checked_event would return."""
    try:
        call_id, h_entry, h_id, ts = _COMMON(doc)
    except KeyError:
        return None
    if not (type(call_id) is str and call_id and type(h_entry) is int and type(h_id) is int
            and 0 <= h_entry <= MAX_U32 and 0 <= h_id <= MAX_U32
            and (type(ts) is float or type(ts) is int) and 0 <= ts < MAX_TS
            and (payload_len <= MAX_TEXT or len(call_id) <= MAX_TEXT)):
        return None
    # Frozen dataclasses built without their __init__ (one object.__setattr__ per
    # field): the same objects, for a fraction of the cost.
    dialog = _new(Dialog)
    dialog.__dict__.update(call_id=call_id, h_entry=h_entry, h_id=h_id,
                           ts_us=round(float(ts) * 1_000_000))
    kind = doc.get("event")
    try:
        if kind == "offer":
            tindex, tlabel, src_port = _OFFER_INTS(doc)
            texts = _OFFER_TEXT(doc)
            sdp = doc["sdp"]
            if not (type(tindex) is int and type(tlabel) is int and type(src_port) is int
                    and 0 <= tindex <= MAX_U32 and 0 <= tlabel <= MAX_U32
                    and 0 <= src_port <= MAX_PORT and _texts_fit(texts, payload_len)
                    and type(sdp) is str and len(sdp) <= MAX_SDP):
                return None
            ev: Event = _new(Offer)
            (from_user, from_display, pai_user, to_user, ruri, ruri_user, account_code,
             src_ip) = texts
            ev.__dict__.update(
                dialog=dialog, tindex=tindex, tlabel=tlabel, from_user=from_user,
                from_display=from_display, pai_user=pai_user, to_user=to_user, ruri=ruri,
                ruri_user=ruri_user, account_code=account_code, src_ip=src_ip,
                src_port=src_port, sdp=sdp)
            return ev
        if kind == "early":
            code, sdp = _EARLY(doc)
            if not (type(code) is int and MIN_CODE <= code <= MAX_CODE
                    and type(sdp) is str and len(sdp) <= MAX_SDP):
                return None
            ev = _new(Early)
            ev.__dict__.update(dialog=dialog, code=code, sdp=sdp)
            return ev
        if kind == "answer":
            sdp, route = _ANSWER(doc)
            if not (type(sdp) is str and len(sdp) <= MAX_SDP and type(route) is str
                    and (payload_len <= MAX_TEXT or len(route) <= MAX_TEXT)):
                return None
            ev = _new(Answer)
            ev.__dict__.update(dialog=dialog, sdp=sdp, route=route)
            return ev
        if kind == "end":
            texts = (*_END_TEXT(doc), doc.get("route", ""))  # route: absent before LCR
            start_ts = doc["start_ts"]
            if not ((type(start_ts) is float or type(start_ts) is int)
                    and 0 <= start_ts < MAX_TS and _texts_fit(texts, payload_len)):
                return None
            by, reason, account, callee, caller, route = texts
            ev = _new(End)
            ev.__dict__.update(dialog=dialog, by=by, reason=reason,
                               start_ts_ms=round(float(start_ts) * 1_000_000) // 1000,
                               account=account, callee=callee, caller=caller, route=route)
            return ev
        if kind == "failed":
            code, reason, route = _FAILED(doc)
            if not (type(code) is int and MIN_CODE <= code <= MAX_CODE
                    and _texts_fit((reason, route), payload_len)):
                return None
            ev = _new(Failed)
            ev.__dict__.update(dialog=dialog, code=code, reason=reason, route=route)
            return ev
        if kind == "media":
            side, sdp = _MEDIA(doc)
            if not ((side == "caller" or side == "callee" or side == "")
                    and type(side) is str and type(sdp) is str and len(sdp) <= MAX_SDP):
                return None
            ev = _new(MediaUpdate)
            ev.__dict__.update(dialog=dialog, side=side, sdp=sdp)
            return ev
    except KeyError:
        return None
    return None
def _code(doc: dict[str, Any]) -> int:
    """A SIP reply code in 100..699; absent means unknown (0)."""
    if "code" not in doc:
        return 0
    return _int(doc, "code", None, MIN_CODE, MAX_CODE)
