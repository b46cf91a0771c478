"""Netstring framing (``LEN:payload,``) as evapi uses it: a sans-IO decoder.

The decoder never raises on bad input: a frame whose length is not digits, too long, or
not closed by a comma is counted as an error and skipped, and decoding resumes at the
next plausible frame.
"""

from __future__ import annotations

MAX_FRAME = 1 << 20  # evapi events are a few KB; a megabyte means the stream is garbage


def encode(payload: bytes) -> bytes:
    """Frame one message."""
    return b"%d:%s," % (len(payload), payload)


class Decoder:
    """Feed bytes, get complete payloads."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame
        self.errors = 0

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            colon = buf.find(b":", 0, 12)
            if colon < 0:
                if len(buf) >= 12 or not buf.isdigit():
                    self._skip()
                    continue
                break  # a length still arriving
            head = bytes(buf[:colon])
            if not head.isdigit():
                self._skip()
                continue
            n = int(head)
            if n > self.max_frame:
                self._skip()
                continue
            end = colon + 1 + n
            if len(buf) <= end:
                break  # payload still arriving
            if buf[end] != ord(","):
                self._skip()
                continue
            out.append(bytes(buf[colon + 1:end]))
            del buf[:end + 1]
        return out

    def _skip(self) -> None:
        """Drop bytes up to the next place a frame could start (a digit after a comma)."""
        self.errors += 1
        buf = self._buf
        i = 1
        while i < len(buf):
            if buf[i - 1] == ord(",") and chr(buf[i]).isdigit():
                break
            i += 1
        del buf[:i]
