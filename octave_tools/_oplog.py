"""Structured logs for operators: one JSON object per line, and one line per tool call.

The JSON formatter sits behind the RedactingFilter the server installs on its handler,
so keys and store passwords are masked before a line is formatted. A call's line carries
ids, lengths and figures only: never the text, the key or an audio URL.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .observe import CallRecord, Sink

__all__ = ["CALL_FIELDS", "CallLog", "JsonFormatter"]

# Fields a call's log line carries beyond time, level, logger and event.
CALL_FIELDS = (
    "tool",
    "request_id",
    "key",
    "model",
    "engine",
    "outcome",
    "latency_ms",
    "credits",
    "characters",
    "parts",
)
_MAX_FIELD_CHARS = 200


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "event", ...call fields, "exception"?}`` per record."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name in CALL_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value[:_MAX_FIELD_CHARS] if isinstance(value, str) else value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


class CallLog(Sink):
    """An ``observe`` sink: one INFO line per finished tool call (``octave_tools.calls``)."""

    def __init__(self) -> None:
        self._log = logging.getLogger("octave_tools.calls")

    def call_finished(self, record: CallRecord) -> None:
        if not self._log.isEnabledFor(logging.INFO):
            return
        fields = {
            "tool": record.tool,
            "request_id": record.request_id,
            "key": record.key,
            "model": record.model,
            "engine": record.engine,
            "outcome": record.outcome,
            "latency_ms": round(record.seconds * 1000, 1),
            "credits": record.credits,
            "characters": record.characters,
            "parts": record.parts or None,
        }
        self._log.info(
            "%s %s %s in %.0f ms",
            record.tool,
            record.outcome,
            record.model or "-",
            record.seconds * 1000,
            extra=fields,
        )
