"""The local journal: settlements, top-ups and fraud events the store could not take, kept
on disk until it can.

One JSON object per line, appended and ``fsync``'d before the core is told the money is
safe. When the store is back the entries are applied (each at most once: a CDR's call
reference is unique, a top-up and a fraud event carry a key) and the file is emptied. A
torn last line (a crash mid-write) is skipped with a warning. Keep the journal on another filesystem
than the database: a full disk then still leaves room to journal.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

from ..charging.commands import CarrierHealth, Flag, Settle, StoreCommand, TierPrice, Topup
from ..charging.model import Cdr, Disposition

log = logging.getLogger("sidecar.journal")

_CDR_FIELDS = {f.name: f for f in dataclasses.fields(Cdr)}
_DECIMAL_FIELDS = {n for n, f in _CDR_FIELDS.items() if f.type in ("Decimal", Decimal)}
_OPT_DECIMAL_FIELDS = {n for n, f in _CDR_FIELDS.items() if f.type == "Decimal | None"}


class JournalError(OSError):
    """The journal could not be written."""


def default_journal(db: str | os.PathLike[str], node: str = "") -> Path:
    """The journal beside the SQLite database, unless configured elsewhere; for a
    PostgreSQL store (a URL), ``sidecar-NODE.journal`` in the working directory (each node
    keeps its own: configure ``[database] journal`` to put it elsewhere)."""
    if str(db).startswith(("postgresql://", "postgres://")):
        return Path(f"sidecar-{node or 'node'}.journal")
    return Path(f"{db}.journal")


def encode(cmd: StoreCommand) -> dict[str, Any]:
    """A settlement, a top-up or a fraud event as a JSON-ready object (money as exact
    strings)."""
    if isinstance(cmd, Settle):
        cdr = {k: (str(v) if isinstance(v, Decimal) else v.value if isinstance(v, Enum) else v)
               for k, v in dataclasses.asdict(cmd.cdr).items()}
        doc: dict[str, Any] = {"kind": "settle", "seq": cmd.seq, "now_ms": cmd.now_ms,
                               "cdr": cdr}
        if cmd.tiers:  # the resellers' prices: money as exact strings
            doc["tiers"] = [[None if v is None else str(v) if isinstance(v, Decimal) else v
                             for v in t] for t in cmd.tiers]
        return doc
    if isinstance(cmd, Topup):
        return {"kind": "topup", "seq": cmd.seq, "now_ms": cmd.now_ms, "account": cmd.account,
                "amount": str(cmd.amount), "note": cmd.note, "key": cmd.key}
    if isinstance(cmd, Flag):
        return {"kind": "flag", "seq": cmd.seq, "now_ms": cmd.now_ms, "account": cmd.account,
                "rule": cmd.rule, "action": cmd.action, "reason": cmd.reason,
                "evidence": cmd.evidence, "key": cmd.key}
    if isinstance(cmd, CarrierHealth):
        return {"kind": "carrier_health", "seq": cmd.seq, "now_ms": cmd.now_ms,
                "carrier": cmd.carrier, "event": cmd.kind, "actor": cmd.actor,
                "reason": cmd.reason, "evidence": cmd.evidence, "until_ms": cmd.until_ms}
    raise TypeError(f"{type(cmd).__name__} is not journaled")


_TIER_MONEY = frozenset(i for i, name in enumerate(TierPrice._fields) if name in (
    "rate", "usage", "connection_fee", "surcharge", "minimum_uplift", "cost", "credited",
    "margin"))


def _tier(raw: list[Any]) -> TierPrice:
    """A reseller's price of a journaled settlement."""
    values: list[Any] = [Decimal(v) if i in _TIER_MONEY and v is not None else v
                         for i, v in enumerate(raw)]
    return TierPrice(*values)


def decode(doc: dict[str, Any]) -> StoreCommand:
    """The command a journal line holds (raises ValueError/KeyError/TypeError if bad)."""
    if doc["kind"] == "settle":
        raw = doc["cdr"]
        values: dict[str, Any] = {}
        for k, v in raw.items():
            if k not in _CDR_FIELDS:
                continue
            if k in _DECIMAL_FIELDS:
                values[k] = Decimal(v)
            elif k in _OPT_DECIMAL_FIELDS:
                values[k] = None if v is None else Decimal(v)
            elif k == "disposition":
                values[k] = Disposition(v)
            else:
                values[k] = v
        return Settle(int(doc["seq"]), Cdr(**values), int(doc["now_ms"]),
                      tiers=tuple(_tier(t) for t in doc.get("tiers", ())))
    if doc["kind"] == "topup":
        return Topup(int(doc["seq"]), str(doc["account"]), Decimal(doc["amount"]),
                     str(doc["note"]), str(doc["key"]), int(doc["now_ms"]))
    if doc["kind"] == "flag":
        return Flag(int(doc["seq"]), str(doc["account"]), str(doc["rule"]),
                    str(doc["action"]), str(doc["reason"]), str(doc["evidence"]),
                    str(doc["key"]), int(doc["now_ms"]))
    if doc["kind"] == "carrier_health":
        until = doc["until_ms"]
        return CarrierHealth(int(doc["seq"]), str(doc["carrier"]), str(doc["event"]),
                             str(doc["actor"]), str(doc["reason"]), str(doc["evidence"]),
                             None if until is None else int(until), int(doc["now_ms"]))
    raise ValueError(f"unknown journal entry kind {doc['kind']!r}")


class Journal:
    """An append-only file of commands waiting for the store."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, cmds: Sequence[StoreCommand], run: str) -> None:
        """Write ``cmds`` and ``fsync`` them; raises :class:`JournalError` if that fails
        (then nothing can be assumed written)."""
        data = b"".join(json.dumps({**encode(c), "run": run}, separators=(",", ":")).encode()
                        + b"\n" for c in cmds)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise JournalError(exc.errno, f"journal {self.path}: {exc.strerror}") from exc

    def entries(self) -> list[tuple[str, StoreCommand]]:
        """Every readable entry, oldest first, with the run that wrote it."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        out: list[tuple[str, StoreCommand]] = []
        for n, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                out.append((str(doc.get("run", "")), decode(doc)))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("journal %s line %d unreadable, skipped: %s", self.path, n, exc)
        return out

    def __len__(self) -> int:
        return len(self.entries())

    def clear(self) -> None:
        """Empty the journal once every entry is in the store."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_TRUNC)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.path.unlink(missing_ok=True)
