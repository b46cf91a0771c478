"""rtpengine's ng control protocol: bencode over UDP (``COOKIE <bencoded dict>``).

The sidecar reads rtpengine's own per-call counters with the ng ``query`` command where
it cannot sniff the media (rtpengine forwards it on another host): how many packets and
bytes each party of a call has sent, and when the last one arrived.

Only what that needs: a bencode encoder/decoder (byte strings, integers, lists,
dictionaries) and a blocking client (:class:`NgClient`) that sends one command and waits
for the reply with the same cookie. :func:`received_at` reads, from a ``query`` reply,
what arrived on the port rtpengine advertised to the carrier (the ``offer`` event's SDP
with ``WITH_RTPENGINE``): the carrier's media. Bad input gets :class:`BencodeError` naming the
offset; an ng ``error`` result raises :class:`NgError` with rtpengine's reason.
``sidecar run`` with ``[media] source = "rtpengine"`` polls with it
(:mod:`sidecar.live.rtpengine_source`).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import TypeAlias

Bencodable: TypeAlias = bytes | str | int | list["Bencodable"] | dict[str, "Bencodable"]
#: Decoded values: byte strings stay bytes (rtpengine's strings are not always UTF-8).
Decoded: TypeAlias = bytes | int | list["Decoded"] | dict[str, "Decoded"]

#: Nesting deeper than this is refused (rtpengine's replies nest about 6 levels).
MAX_DEPTH = 64


class BencodeError(ValueError):
    """Not bencode, or not the subset rtpengine speaks."""


class NgError(RuntimeError):
    """rtpengine answered ``result: error`` (``error-reason`` is the message)."""


def bencode(value: Bencodable) -> bytes:
    """``value`` as bencode (dictionary keys sorted, as the format requires)."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: Bencodable, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, bool):  # a bool is an int in Python: refuse rather than guess
        raise BencodeError("booleans have no bencode form")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, str):
        raw = value.encode()
        out.append(b"%d:%s" % (len(raw), raw))
    elif isinstance(value, bytes):
        out.append(b"%d:%s" % (len(value), value))
    elif isinstance(value, list):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise BencodeError(f"dictionary key {key!r} is not a string")
        out.append(b"d")
        for key in sorted(value, key=lambda k: k.encode()):
            _encode(key, out, depth + 1)
            _encode(value[key], out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"{type(value).__name__} has no bencode form")


def bdecode(data: bytes) -> Decoded:
    """One bencoded value that is the whole of ``data``."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise BencodeError(f"trailing bytes at offset {end}")
    return value


def _decode(data: bytes, pos: int, depth: int) -> tuple[Decoded, int]:
    if depth > MAX_DEPTH:
        raise BencodeError(f"nested deeper than {MAX_DEPTH} levels at offset {pos}")
    if pos >= len(data):
        raise BencodeError(f"truncated at offset {pos}")
    c = data[pos]
    if c == ord("i"):
        end = data.find(b"e", pos + 1)
        if end < 0:
            raise BencodeError(f"unterminated integer at offset {pos}")
        text = data[pos + 1:end]
        if not _is_int(text):
            raise BencodeError(f"bad integer {text[:20]!r} at offset {pos}")
        return int(text), end + 1
    if c == ord("l"):
        items: list[Decoded] = []
        pos += 1
        while True:
            if pos >= len(data):
                raise BencodeError(f"unterminated list at offset {pos}")
            if data[pos] == ord("e"):
                return items, pos + 1
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
    if c == ord("d"):
        out: dict[str, Decoded] = {}
        pos += 1
        while True:
            if pos >= len(data):
                raise BencodeError(f"unterminated dictionary at offset {pos}")
            if data[pos] == ord("e"):
                return out, pos + 1
            key, pos = _decode(data, pos, depth + 1)
            if not isinstance(key, bytes):
                raise BencodeError(f"dictionary key is not a string before offset {pos}")
            try:
                name = key.decode()
            except UnicodeDecodeError as exc:
                raise BencodeError(f"dictionary key is not UTF-8 before offset {pos}") from exc
            out[name], pos = _decode(data, pos, depth + 1)
    if ord("0") <= c <= ord("9"):
        colon = data.find(b":", pos)
        if colon < 0 or not data[pos:colon].isdigit() or colon - pos > 9:
            raise BencodeError(f"bad string length at offset {pos}")
        length = int(data[pos:colon])
        end = colon + 1 + length
        if end > len(data):
            raise BencodeError(f"string of {length} bytes truncated at offset {pos}")
        return data[colon + 1:end], end
    raise BencodeError(f"unexpected byte {bytes([c])!r} at offset {pos}")


def _is_int(text: bytes) -> bool:
    digits = text[1:] if text.startswith(b"-") else text
    return (digits.isdigit() and len(digits) <= 20
            and not (len(digits) > 1 and digits.startswith(b"0")) and text != b"-0")


def text(value: Decoded | None) -> str:
    """A decoded byte string as text (``""`` for anything else)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else ""


class NgClient:
    """A blocking ng client: one command, one reply (matched on a random cookie)."""

    def __init__(self, host: str, port: int, timeout: float = 2.0) -> None:
        self.address = (host, port)
        self.timeout = timeout

    @classmethod
    def from_url(cls, url: str, timeout: float = 2.0) -> NgClient:
        """From Kamailio's ``rtpengine_sock`` form ``udp:HOST:PORT``."""
        rest = url.removeprefix("udp:")
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"rtpengine ng address {url!r}: expected udp:HOST:PORT")
        return cls(host, int(port), timeout)

    def command(self, name: str, **args: Bencodable) -> dict[str, Decoded]:
        """Send ``name`` with ``args``; the reply dictionary (``result`` is ``ok``)."""
        cookie = os.urandom(8).hex().encode()
        message = cookie + b" " + bencode({"command": name, **args})
        deadline = time.monotonic() + self.timeout
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(self.address)
            sock.send(message)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"rtpengine {self.address[0]}:{self.address[1]} did "
                                       f"not answer {name!r} within {self.timeout} s")
                sock.settimeout(left)
                try:
                    data = sock.recv(65535)
                except TimeoutError:
                    continue
                except ConnectionRefusedError as exc:  # ICMP port unreachable
                    raise ConnectionRefusedError(
                        f"rtpengine {self.address[0]}:{self.address[1]} refused {name!r}: "
                        "nothing listens there") from exc
                got, _, body = data.partition(b" ")
                if got != cookie:
                    continue  # a late reply to an earlier command
                reply = bdecode(body)
                if not isinstance(reply, dict):
                    raise BencodeError(f"reply to {name!r} is not a dictionary")
                result = text(reply.get("result"))
                if result == "error":
                    raise NgError(f"rtpengine refused {name!r}: "
                                  f"{text(reply.get('error-reason')) or 'no reason given'}")
                return reply

    def ping(self) -> bool:
        return text(self.command("ping").get("result")) == "pong"

    def query(self, call_id: str, from_tag: str = "") -> dict[str, Decoded]:
        """The ``query`` reply of a call (its tags, streams and counters)."""
        args: dict[str, Bencodable] = {"call-id": call_id}
        if from_tag:
            args["from-tag"] = from_tag
        return self.command("query", **args)


@dataclass(frozen=True)
class PartyCounters:
    """What rtpengine received from one party (one tag) of a call, all streams summed."""

    tag: str
    packets: int
    bytes: int
    last_packet: int  # Unix time of the last packet received from it, 0 if none


def party_counters(reply: dict[str, Decoded]) -> list[PartyCounters]:
    """Per tag (party) of a ``query`` reply: the packets it sent to rtpengine (the
    ``stats`` of its own media streams' RTP endpoints)."""
    tags = reply.get("tags")
    out: list[PartyCounters] = []
    if not isinstance(tags, dict):
        return out
    for tag, info in tags.items():
        packets = size = last = 0
        medias = info.get("medias") if isinstance(info, dict) else None
        for media in medias if isinstance(medias, list) else []:
            streams = media.get("streams") if isinstance(media, dict) else None
            for stream in streams if isinstance(streams, list) else []:
                if not isinstance(stream, dict) or b"RTCP" in _flags(stream):
                    continue
                stats = stream.get("stats")
                if isinstance(stats, dict):
                    packets += _int(stats.get("packets"))
                    size += _int(stats.get("bytes"))
                last = max(last, _int(stream.get("last packet")))
        out.append(PartyCounters(tag, packets, size, last))
    return out


def _flags(stream: dict[str, Decoded]) -> list[bytes]:
    flags = stream.get("flags")
    return [f for f in flags if isinstance(f, bytes)] if isinstance(flags, list) else []


def _int(value: Decoded | None) -> int:
    return value if isinstance(value, int) else 0


def received_at(reply: dict[str, Decoded], port: int,
                address: str = "") -> PartyCounters | None:
    """What rtpengine received on its local RTP ``port`` (and ``address``, if given): the
    port it advertised in the SDP it sent to one party, so the media of that party. For
    the carrier-facing leg that is the port of the ``offer`` event's SDP (rtpengine's
    SDP to the carrier), so the carrier's media, which confirms an answer. None when no
    stream of the call has that local port."""
    tags = reply.get("tags")
    found: list[PartyCounters] = []
    for tag, info in (tags.items() if isinstance(tags, dict) else ()):
        medias = info.get("medias") if isinstance(info, dict) else None
        for media in medias if isinstance(medias, list) else []:
            streams = media.get("streams") if isinstance(media, dict) else None
            for stream in streams if isinstance(streams, list) else []:
                if (not isinstance(stream, dict) or _int(stream.get("local port")) != port
                        or (address and text(stream.get("local address")) != address)):
                    continue
                stats = stream.get("stats")
                stats = stats if isinstance(stats, dict) else {}
                found.append(PartyCounters(tag, _int(stats.get("packets")),
                                           _int(stats.get("bytes")),
                                           _int(stream.get("last packet"))))
    if not found:
        return None
    return PartyCounters(",".join(p.tag for p in found), sum(p.packets for p in found),
                         sum(p.bytes for p in found), max(p.last_packet for p in found))
