"""Netstring framing (``LEN:payload,``) as evapi uses it: a sans-IO decoder.

The decoder never raises on bad input: a frame whose length is not digits, too long, or
not closed by a comma is counted as an error and skipped, and decoding resumes at the
next plausible frame.
"""

from __future__ import annotations

import re

MAX_FRAME = 1 << 20  # evapi events are a few KB; a megabyte means the stream is garbage

# Where decoding resumes after a broken frame: the byte after a comma that is followed by
# a digit. "Digit" is what ``chr(b).isdigit()`` says of a byte: ASCII 0-9, and also the
# Latin-1 superscripts 2, 3 and 1 (a frame cannot start there: it is skipped in turn).
_RESUME = re.compile(rb",[0-9\xb2\xb3\xb9]")


def encode(payload: bytes) -> bytes:
    """Frame one message."""
    return b"%d:%s," % (len(payload), payload)


class Decoder:
    """Feed bytes, get complete payloads.

    Whole frames are cut straight out of the bytes fed (one copy per payload); only an
    incomplete frame at the end is kept, and it is looked at again only once enough
    bytes have arrived to complete it, so a large frame that arrives in many pieces
    costs linear time.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()  # the start of an incomplete frame
        self._need = 0  # bytes _buf must hold before it is worth decoding again
        self.max_frame = max_frame
        self.errors = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[bytes]:
        buf = self._buf
        if buf:
            buf += chunk
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            buf.clear()
        else:
            data = chunk if type(chunk) is bytes else bytes(chunk)
        out: list[bytes] = []
        size = len(data)
        pos = 0
        while pos < size:
            colon = data.find(b":", pos, pos + 12)
            if colon < 0:
                if size - pos >= 12 or not data[pos:].isdigit():
                    pos = self._resume(data, pos)
                    continue
                self._need = size - pos + 1  # a length still arriving
                break
            head = data[pos:colon]
            if not head.isdigit():
                pos = self._resume(data, pos)
                continue
            n = int(head)
            if n > self.max_frame:
                pos = self._resume(data, pos)
                continue
            end = colon + 1 + n
            if size <= end:
                self._need = end + 1 - pos  # payload still arriving
                break
            if data[end] != 44:  # ","
                pos = self._resume(data, pos)
                continue
            out.append(data[colon + 1:end])
            pos = end + 1
        if pos < size:
            buf += data[pos:]
        return out

    def _resume(self, data: bytes, pos: int) -> int:
        """Count an error; where the next frame could start (after ``pos``), or the end:
        at a digit after a comma."""
        self.errors += 1
        m = _RESUME.search(data, pos)
        return len(data) if m is None else m.start() + 1
