"""Log lines an operator can follow a job by, as text or as one JSON object per line.

Code logs with ``extra={"job_id": ..., "resource_id": ..., "correlation_id": ...}``; grep for one id
across every service's output to see one job's way through the fleet. As text, the ids a record
carries go at its end as key=value; as JSON (``--log-format json``, ``SKYBUS_LOG_FORMAT=json``), a
line is ``{"time", "level", "logger", "message", ...}`` with every extra the record carries.

A formatter of twenty lines, not python-json-logger: the one thing a library would add here is
configuration we do not need, and the standard library has what the format takes.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

IDS = ("job_id", "resource_id", "correlation_id", "message_id", "queue")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
"""What every record has: the rest of its attributes are the extras its caller passed."""


class IdsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{key}={getattr(record, key)}" for key in IDS if getattr(record, key, None) is not None]
        return f"{line} {' '.join(ids)}" if ids else line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback is a string field, newlines escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in STANDARD and not key.startswith("_"):
                entry.setdefault(key, value)  # an extra never hides one of the four fields above
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: one of {', '.join(FORMATS)}")
    return JsonFormatter() if log_format == "json" else IdsFormatter(TEXT_FORMAT)


class SkybusHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure` installs: the one :func:`use_format` switches."""


def configure(level: str, log_format: str = "text") -> None:
    handler = SkybusHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def use_format(log_format: str) -> None:
    """Switch the handlers :func:`configure` installed to ``log_format`` (a server command's option)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, SkybusHandler):
            handler.setFormatter(formatter(log_format))
