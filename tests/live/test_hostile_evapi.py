"""The real ``sidecar run`` process against a fake Kamailio evapi server that sends hostile
input: broken numbers, NaN and 1e400 written as raw JSON text, lone surrogates, deep
nesting, wrong types, huge strings, garbage payloads and broken netstrings. The process
must log and ignore every bad message, never die, and keep answering valid offers.

No Kamailio is needed: the RPC socket does not exist, so ``dlg.list`` fails at every
(re)connection and the sidecar carries on. The sidecar is stopped with SIGTERM by its PID,
also when the test fails."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from sidecar.charging.model import AccountKind
from sidecar.kamailio.events import EventError, Offer, parse_event
from sidecar.kamailio.netstring import Decoder, encode
from sidecar.store.accounts import SqliteLedger, add_account
from sidecar.store.db import connect
from sidecar.store.decks import import_deck

pytestmark = pytest.mark.timeout(120)

DECK = """destination;code;rate_usd;increment;effective_from
Germany Fixed;4930;0.0600;1/1;2020-01-01
"""
DIALLED = "4930123456"
PROBE_TLABEL = 777_001  # probes and the final checks use their own tlabels
REPLY_TIMEOUT = 5.0


def _sidecar_command() -> list[str]:
    script = Path(sys.executable).with_name("sidecar")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sidecar"]


def offer(call_id: str, tindex: int, tlabel: int) -> dict[str, object]:
    return {"event": "offer", "call_id": call_id, "h_entry": 7, "h_id": tindex + 1,
            "ts": time.time(), "tindex": tindex, "tlabel": tlabel, "from_user": "alice",
            "from_display": "Alice", "from_domain": "example.org", "pai_user": "",
            "to_user": DIALLED, "ruri": f"sip:{DIALLED}@127.0.0.1;ac=ACME",
            "ruri_user": DIALLED, "account_code": "ACME", "src_ip": "127.0.0.1",
            "src_port": 5070, "sdp": "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 6000 RTP/AVP 8\r\n"}


def frame(doc: dict[str, object]) -> bytes:
    return encode(json.dumps(doc).encode())


def with_raw(doc: dict[str, object], key: str, literal: str) -> bytes:
    """``doc`` as JSON with ``key``'s value written as the raw text ``literal``."""
    return json.dumps(doc | {key: "@@raw@@"}).replace('"@@raw@@"', literal).encode()


def verdict(payload: bytes) -> tuple[int, int] | bool:
    """What the sidecar's parser makes of a payload: an offer's (tindex, tlabel), True for
    another event, False for a refused message."""
    try:
        ev = parse_event(payload)
    except EventError:
        return False
    except Exception:  # the unit tests' business; here: the sidecar must survive it
        return False
    return (ev.tindex, ev.tlabel) if isinstance(ev, Offer) else True


class FakeEvapi:
    """Kamailio's side of evapi: a TCP server the sidecar connects to. A client that asks
    for the events kept while it was away (``sync``) is told there were none (``synced``)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.conn: socket.socket | None = None
        self.decoder = Decoder()
        self.replies: list[dict[str, object]] = []  # every auth the sidecar sent
        self.other: list[dict[str, object]] = []  # anything else it sent
        self.connections = 0

    def accept(self, timeout: float) -> None:
        self.listener.settimeout(timeout)
        self.conn, _ = self.listener.accept()
        self.decoder = Decoder()
        self.connections += 1

    def send(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(data)

    def wait_reply(self, tindex: int, tlabel: int, timeout: float = REPLY_TIMEOUT
                   ) -> dict[str, object] | None:
        """Read until the auth for (tindex, tlabel) arrives; None after ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = len(self.replies)
        while True:
            for r in self.replies[seen:]:
                if r.get("tindex") == tindex and r.get("tlabel") == tlabel:
                    return r
            seen = len(self.replies)
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                return None

    def pump(self, timeout: float) -> None:
        """Read (and answer ``sync``) for at most ``timeout`` seconds."""
        self._read(timeout)

    def _read(self, timeout: float) -> bool:
        assert self.conn is not None
        self.conn.settimeout(timeout)
        try:
            data = self.conn.recv(65536)
        except TimeoutError:
            return True
        except OSError:  # reset: the sidecar is gone
            return False
        if not data:
            return False
        for payload in self.decoder.feed(data):
            doc = json.loads(payload)
            assert isinstance(doc, dict), payload
            if doc.get("event") == "auth":
                self.replies.append(doc)
            else:
                self.other.append(doc)
                if doc.get("event") == "sync":
                    self.send(frame({"event": "synced", "replayed": 0}))
        assert self.decoder.errors == 0, "the sidecar sent a malformed frame"
        return True

    def reconnect(self, timeout: float = 10.0) -> None:
        """End the connection the way Kamailio would on restart, after the sidecar has read
        everything sent (it closes its side once it has seen our FIN), then accept its
        reconnection."""
        assert self.conn is not None
        with contextlib.suppress(OSError):  # the sidecar may have closed already
            self.conn.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + timeout
        while self._read(max(0.01, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise AssertionError("the sidecar did not close the connection")
        self.conn.close()
        self.accept(timeout)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    evapi: FakeEvapi
    log_path: Path
    next_tindex: int = 1000
    allowed: set[tuple[int, int]] = field(default_factory=set)  # replies that may come

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def reconciled(self, timeout: float = 10.0) -> None:
        """Wait (answering ``sync``) until the sidecar has tried ``dlg.list`` once more for
        the current connection: with no Kamailio it logs the failure and carries on."""
        want = self.evapi.connections
        deadline = time.monotonic() + timeout
        while self.log().count("reconcile: dlg.list failed") < want:
            self.alive()
            assert time.monotonic() < deadline, "no reconciliation:\n" + self.log()[-3000:]
            self.evapi.pump(0.05)

    def alive(self) -> None:
        assert self.proc.poll() is None, "sidecar died:\n" + self.log()[-3000:]

    def send(self, data: bytes) -> None:
        try:
            self.evapi.send(data)
        except OSError as exc:  # the sidecar went away: say why
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            raise AssertionError(f"sidecar connection lost ({exc}), exit code "
                                 f"{self.proc.poll()}:\n{self.log()[-3000:]}") from exc

    def probe(self, attempts: int = 5) -> None:
        """A valid offer with a fresh tindex/tlabel is allowed, echoing both. An offer that
        waited too long behind the hostile backlog (by its Kamailio timestamp) may be shed
        with a fast 503 under the sidecar's overload policy: that is an answer too, and
        the offer is tried again with a fresh transaction."""
        for _ in range(attempts):
            self.next_tindex += 1
            tindex, call_id = self.next_tindex, f"probe-{self.next_tindex}@test"
            self.allowed.add((tindex, PROBE_TLABEL))
            self.send(frame(offer(call_id, tindex, PROBE_TLABEL)))
            reply = self.evapi.wait_reply(tindex, PROBE_TLABEL)
            if reply is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
                raise AssertionError(f"no answer to a valid offer (sidecar exit code "
                                     f"{self.proc.poll()}):\n{self.log()[-3000:]}")
            self.alive()
            if reply.get("action") == "reject" and reply.get("code") == 503:
                time.sleep(0.05)
                continue
            assert reply.get("action") == "allow", f"{reply}:\n{self.log()[-3000:]}"
            max_duration = reply.get("max_duration")
            assert isinstance(max_duration, int) and max_duration > 0, reply
            assert reply == {"event": "auth", "tindex": tindex, "tlabel": PROBE_TLABEL,
                             "call_id": call_id, "action": "allow",
                             "max_duration": max_duration, "account": "ACME"}, reply
            return
        raise AssertionError(f"{attempts} valid offers in a row shed with 503:\n"
                             f"{self.log()[-3000:]}")

    def unexpected_replies(self) -> list[dict[str, object]]:
        return [r for r in self.evapi.replies
                if (r.get("tindex"), r.get("tlabel")) not in self.allowed]


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Running]:
    db = tmp_path / "sidecar.db"
    conn = connect(db)
    (tmp_path / "deck.csv").write_text(DECK)
    import_deck(conn, "retail", tmp_path / "deck.csv", as_of=datetime(2020, 1, 1, tzinfo=UTC))
    now_ms = int(time.time() * 1000)
    add_account(conn, "ACME", "retail", AccountKind.PREPAID, now_ms=now_ms)
    SqliteLedger(conn).topup("ACME", Decimal("1000"), now_ms, "test")
    conn.close()

    evapi = FakeEvapi()
    cfg = tmp_path / "sidecar.toml"
    cfg.write_text(f'[database]\npath = "{db}"\n'
                   f'[kamailio]\nevapi_host = "127.0.0.1"\nevapi_port = {evapi.port}\n'
                   f'rpc_socket = "{tmp_path / "kamailio_rpc.sock"}"\nrpc_timeout = 0.2\n')
    log_path = tmp_path / "sidecar.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([*_sidecar_command(), "--db", str(db), "run", "--config",
                                 str(cfg), "--log-level", "info"],
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
    running = Running(proc, evapi, log_path)
    try:
        evapi.accept(timeout=20)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        evapi.close()


# --- hostile input ---------------------------------------------------------------------

BAD_LITERALS = [
    "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1.5", "-1", "4294967296",
    "4294967295.5", "65536", "1" + "0" * 5000, "1" * 4000, "1e-400", "true", "null", "[]",
    "{}", '"x"', '"\\ud800"', '"a\\udfff"', '"\\udc00\\ud800"', '"nan"', '"1e400"', '"--5"',
    '"\u00b2"', "[" * 100_000, "[" * 2000 + "]" * 2000, '{"a":' * 500 + "1" + "}" * 500,
    '"' + "a" * 70_000 + '"', '"' + "\\u0000" * 2000 + '"',
    '"synced"', '{"event":"synced","replayed":' + "[" * 100_000,
]
KINDS = ["offer", "early", "answer", "media", "end", "failed", "auth", "sync", "synced"]
KEYS = ["event", "call_id", "h_entry", "h_id", "ts", "tindex", "tlabel", "from_user",
        "from_display", "pai_user", "to_user", "ruri", "ruri_user", "account_code", "src_ip",
        "src_port", "sdp", "code", "side", "by", "reason", "start_ts", "route"]
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=30)  # surrogates too
WRONG_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), ANY_TEXT,
    st.lists(st.integers(), max_size=3), st.dictionaries(ANY_TEXT, st.integers(), max_size=2))


@st.composite
def hostile_payload(draw: st.DrawFn) -> bytes:
    """A Kamailio-shaped event with broken fields, or no event at all."""
    choice = draw(st.integers(0, 3))
    if choice == 3:
        return draw(st.binary(max_size=300))
    doc = offer("hostile@test", draw(st.integers(2000, 2999)), draw(st.integers(0, 999)))
    doc |= {"event": draw(st.sampled_from(KINDS)), "code": 180, "side": "caller",
            "by": "caller", "reason": "bye", "start_ts": time.time() - 5}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=3)):
        doc[key] = draw(WRONG_VALUES)
    if choice == 0:  # the NaN and Infinity Python writes for floats are kept as they are
        return json.dumps(doc).encode()
    if choice == 1:
        return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return with_raw(doc, draw(st.sampled_from(KEYS)), draw(st.sampled_from(BAD_LITERALS)))


BROKEN_FRAMING = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.sampled_from([b"xx:abc,", b"5:abc", b"5:abcdefgh,", b"99999999999:", b"-1:{},",
                     b"2:{}}", b"1048577:", b"12:{}", b"0:,,,,", b":::,", b"3:[1],",
                     b"100000:" + b"[" * 5000]),
)


def test_hostile_evapi_input_never_ends_the_sidecar(sidecar: Running) -> None:
    s = sidecar
    s.reconciled()  # no Kamailio: dlg.list fails, is logged, and the sidecar carries on
    s.probe()

    # The measured defects, one frame each, then a valid offer still answered.
    base = offer("defect@test", 1, 1)
    defects = [with_raw(base, "ts", "1e400"), with_raw(base, "ts", "NaN"),
               with_raw(base, "h_entry", "1e400"), b"[" * 100_000,
               b'{"event":"synced","replayed":' + b"[" * 100_000,
               with_raw({"event": "synced"}, "replayed", "1e400"),
               with_raw(base, "call_id", '"\\ud800"'), with_raw(base, "tindex", "1.5")]
    for payload in defects:
        assert verdict(payload) is False
        s.send(encode(payload))
    s.probe()
    s.alive()
    refused = len(defects) - 1  # the well-formed "synced" is ignored before parsing

    examples = 0

    @settings(max_examples=30, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate])  # no shrinking: bounded in time
    @given(st.lists(hostile_payload(), min_size=1, max_size=8),
           st.lists(BROKEN_FRAMING, max_size=2))
    def batch(payloads: list[bytes], broken: list[bytes]) -> None:
        nonlocal refused, examples
        examples += 1
        for payload in payloads:
            v = verdict(payload)
            if v is False:
                # a well-formed "synced" out of turn is the evapi client's to ignore
                refused += b'"synced"' not in payload
            elif isinstance(v, tuple):
                s.allowed.add(v)
            s.send(encode(payload))
        if broken:  # the stream cannot be trusted after these: a new connection
            s.send(b"".join(broken))
            s.evapi.reconnect()
            s.reconciled()
        s.probe()
        s.alive()
        assert not s.unexpected_replies(), (s.unexpected_replies(), payloads, broken)

    batch()
    assert examples >= 10

    # An offer whose tindex is 1.5 is not answered at all (never as tindex 1), nor is one
    # whose call_id holds a lone surrogate; the next valid offer is.
    s.send(encode(with_raw(offer("half@test", 1, 31_337), "tindex", "1.5")))
    s.send(encode(with_raw(offer("x", 2, 31_338), "call_id", '"\\ud800"')))
    s.send(encode(with_raw(offer("x", 3, 31_339), "call_id", '"ab\\udfffcd"')))
    s.probe()  # replies come in order: an answer to the frames above would be here by now
    s.alive()
    assert not [r for r in s.evapi.replies if r.get("tlabel") in (31_337, 31_338, 31_339)
                ], s.evapi.replies
    assert not s.unexpected_replies(), s.unexpected_replies()
    refused += 3

    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=15) == 0, s.log()[-3000:]
    log = s.log()
    assert log.count("ignored evapi message") >= refused
    assert "'tindex' must be an integer, not 1.5" in log
    assert "'call_id' is not valid Unicode" in log
    assert "'ts' must be a Unix time" in log
    assert "nested deeper than 32 levels" in log
    assert "Traceback" not in log and "failed to handle" not in log, log[-5000:]
    stopped = re.search(r"sidecar stopped: (\{.*\})", log)
    assert stopped is not None, log[-3000:]
    bad = re.search(r"'bad_events': (\d+)", stopped.group(1))
    assert bad is not None and int(bad.group(1)) >= refused, stopped.group(1)
