"""A carrier's SIP destination: the ``sip:`` / ``sips:`` URI calls are sent to.

Checked once, when the carrier is added, so that Kamailio is never handed a destination
it cannot parse::

    sip:gw1.carrier.example            sips:198.51.100.7:5061
    sip:+4930@[2001:db8::1]:5080;transport=tcp

A user part is allowed (some carriers want a technical prefix there); the host is a
domain name, an IPv4 address or a bracketed IPv6 address; the port 1-65535; parameters
``name`` or ``name=value`` (``transport`` one of udp, tcp, tls, sctp, ws, wss). Headers
(``?...``), spaces and anything else are refused with what is wrong.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_USER = re.compile(r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+$")
_PARAM = re.compile(r"^[A-Za-z0-9\-_.!~*'()%]+$")
TRANSPORTS = ("udp", "tcp", "tls", "sctp", "ws", "wss")


class SipUriError(ValueError):
    """A SIP destination that cannot be used."""


@dataclass(frozen=True)
class SipUri:
    """A checked SIP destination."""

    scheme: str  # sip or sips
    user: str
    host: str  # as written (IPv6 in brackets)
    port: int | None
    params: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        out = f"{self.scheme}:"
        if self.user:
            out += f"{self.user}@"
        out += self.host
        if self.port is not None:
            out += f":{self.port}"
        for name, value in self.params:
            out += f";{name}={value}" if value else f";{name}"
        return out


def _host(text: str, uri: str) -> str:
    if text.startswith("["):
        if not text.endswith("]"):
            raise SipUriError(f"'{uri}': unclosed '[' in the IPv6 host")
        try:
            ipaddress.IPv6Address(text[1:-1])
        except ValueError as exc:
            raise SipUriError(f"'{uri}': '{text[1:-1]}' is not an IPv6 address") from exc
        return text
    if not text:
        raise SipUriError(f"'{uri}': no host")
    if all(part.isdigit() for part in text.split(".")) and text.count(".") == 3:
        try:
            ipaddress.IPv4Address(text)
        except ValueError as exc:
            raise SipUriError(f"'{uri}': '{text}' is not an IPv4 address") from exc
        return text
    name = text[:-1] if text.endswith(".") else text
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise SipUriError(f"'{uri}': '{text}' is not a host name, IPv4 or [IPv6] address")
    if name.split(".")[-1].isdigit():
        raise SipUriError(f"'{uri}': '{text}' is not a host name, IPv4 or [IPv6] address")
    return text


def parse_sip_uri(text: str) -> SipUri:
    """Check a carrier's SIP destination; raise :class:`SipUriError` saying what is wrong."""
    uri = text.strip()
    if not uri:
        raise SipUriError("empty SIP destination (expected e.g. sip:gw1.carrier.example)")
    if any(ch.isspace() for ch in uri):
        raise SipUriError(f"'{uri}': spaces are not allowed in a SIP URI")
    scheme, colon, rest = uri.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        raise SipUriError(f"'{uri}': a SIP destination starts with sip: or sips: "
                          "(e.g. sip:gw1.carrier.example:5060)")
    if "?" in rest:
        raise SipUriError(f"'{uri}': headers (?...) are not allowed in a carrier's destination")
    user = ""
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if not user or not _USER.match(user):
            raise SipUriError(f"'{uri}': '{user}' is not a valid user part")
    hostport, *raw_params = rest.split(";")
    port: int | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        host_text, tail = (hostport, "") if end < 0 else (hostport[:end + 1], hostport[end + 1:])
        if tail:
            if not tail.startswith(":"):
                raise SipUriError(f"'{uri}': unexpected '{tail}' after the host")
            port_text: str | None = tail[1:]
        else:
            port_text = None
    else:
        host_text, sep, after = hostport.partition(":")
        port_text = after if sep else None
    host = _host(host_text, uri)
    if port_text is not None:
        if not port_text.isdigit() or not port_text.isascii() or not 1 <= int(port_text) <= 65535:
            raise SipUriError(f"'{uri}': port '{port_text}' is not a number from 1 to 65535")
        port = int(port_text)
    params: list[tuple[str, str]] = []
    for raw in raw_params:
        name, _, value = raw.partition("=")
        if not name or not _PARAM.match(name) or (value and not _PARAM.match(value)) \
                or (raw.endswith("=") and not value):
            raise SipUriError(f"'{uri}': ';{raw}' is not a valid URI parameter")
        if name.lower() == "transport" and value.lower() not in TRANSPORTS:
            raise SipUriError(f"'{uri}': transport '{value}' is not one of "
                              f"{', '.join(TRANSPORTS)}")
        params.append((name, value))
    return SipUri(scheme.lower(), user, host, port, tuple(params))
