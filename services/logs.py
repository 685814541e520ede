"""Log lines an operator can follow a job by: the ids a record carries go at its end as key=value.

Code logs with ``extra={"job_id": ..., "resource_id": ..., "correlation_id": ...}``; grep for one id
across every service's output to see one job's way through the fleet.
"""

from __future__ import annotations

import logging
import sys

IDS = ("job_id", "resource_id", "correlation_id", "message_id", "queue")


class IdsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{key}={getattr(record, key)}" for key in IDS if getattr(record, key, None) is not None]
        return f"{line} {' '.join(ids)}" if ids else line


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(IdsFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
