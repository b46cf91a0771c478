"""The sidecar's log output: text for a terminal, or one JSON object per line.

JSON lines (``sidecar run --log-format json``, python-json-logger) carry ``ts`` (UTC, ms),
``level``, ``logger``, ``msg`` (``exc`` with a traceback) and the fields a log call gives
with ``extra=``. The lines about calls use fixed names (:data:`CALL_FIELDS`), so a log
pipeline can select and count them without parsing messages:

- ``call``: the call's reference (SIP Call-ID); ``account``: its account code;
- ``decision``: ``allow``, ``reject``, ``end`` (the sidecar ends the call), ``cdr``,
  ``fraud`` (a rule tripped on the account); ``code``: the SIP code answered;
- ``reason``: why (the refusal's or the end's reason, a FAS verdict);
- ``latency_ms``: Kamailio's timestamp on the offer to the answer sent (queueing
  included), or how late ``dlg.end_dlg`` was sent after the deadline;
- ``node``: the node (its Kamailio) that carries the call.

The fields are built only when the line's level is enabled (the callers test
``isEnabledFor`` first): a disabled line costs nothing on the per-call path.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonEncoder
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

#: The fields of the lines about calls, in the order they are documented.
CALL_FIELDS = ("call", "account", "decision", "code", "reason", "latency_ms", "node")

_ENCODER = JsonEncoder()  # made once, not per line


def _serialize(log_data: dict[str, Any], **_: Any) -> str:
    return _ENCODER.encode(log_data)


#: LogRecord's own attributes: anything else on a record came with ``extra=``.
_RECORD_ATTRS = frozenset((*RESERVED_ATTRS, "taskName"))


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: ts, level, logger, msg, (exc with the traceback,) then
    the record's ``extra=`` fields; python-json-logger serialises it (its encoder takes
    what plain JSON does not: dates, exceptions, dataclasses ...)."""

    def __init__(self) -> None:
        super().__init__("%(message)s", json_serializer=_serialize)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        # The library's generic merge of the record's attributes costs twice the rest of
        # a line; per-call lines are frequent, so the fields are taken directly.
        log_data["ts"] = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                          + f".{int(record.msecs):03d}Z")
        log_data["level"] = record.levelname.lower()
        log_data["logger"] = record.name
        log_data["msg"] = record.message
        if message_dict:  # exc_info, stack_info
            log_data.update(("exc" if k == "exc_info" else k, v)
                            for k, v in message_dict.items())
        attrs = record.__dict__
        if attrs.keys() - _RECORD_ATTRS:
            for key, value in attrs.items():
                if key not in _RECORD_ATTRS:
                    log_data[key] = value


def setup_logging(fmt: str, level: str) -> None:
    """Log to stderr as ``text`` or ``json`` lines from ``level`` up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
