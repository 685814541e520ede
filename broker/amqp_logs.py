"""One broker outage, logged once: the AMQP adapter's outage and recovery lines, and a filter that
quiets aio-pika's and aiormq's own reconnection loggers.

Left alone, a broker restart logs an ERROR per connection from aiormq ("Unexpected connection close
from remote"), an ERROR per channel from aio-pika's callbacks, and a WARNING per connection per
reconnection attempt (one a second until the broker is back). :class:`Outage` says it once instead:
a WARNING when the first connection of a bus drops, an INFO when the last one is back. The
:class:`OnceAnOutage` filter lets through the first record at INFO or above of each of those loggers
per outage, an ERROR demoted to a WARNING, and drops the rest until a connection is restored (their
DEBUG records stay as they are). The filter is process-wide, as logging is.
"""

from __future__ import annotations

import logging
import time

# The loggers of aio-pika and aiormq that speak on every reconnection attempt.
RECONNECT_LOGGERS = ("aiormq.connection", "aio_pika.robust_connection", "aio_pika.tools")


class OnceAnOutage(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._spoken: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return True
        if record.name in self._spoken:
            return False
        self._spoken.add(record.name)
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True

    def reset(self) -> None:
        """A connection is back: the next outage may speak once more."""
        self._spoken.clear()


_FILTER = OnceAnOutage()


def quiet_reconnect_loggers() -> OnceAnOutage:
    """Install the filter on aio-pika's and aiormq's reconnection loggers (once per process)."""
    for name in RECONNECT_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    return _FILTER


class Outage:
    """Which connections of one bus are down, and since when; logs the outage and the recovery once."""

    def __init__(self, log: logging.Logger, name: str) -> None:
        self._log = log
        self._name = name
        self._down: set[str] = set()
        self._since = 0.0

    @property
    def ongoing(self) -> bool:
        return bool(self._down)

    def lost(self, purpose: str, error: BaseException | None) -> None:
        if not self._down:
            self._since = time.monotonic()
            self._log.warning("%s: RabbitMQ connection lost (%s: %r); reconnecting", self._name, purpose, error)
        self._down.add(purpose)

    def restored(self, purpose: str) -> None:
        _FILTER.reset()
        if purpose not in self._down:
            return
        self._down.discard(purpose)
        if not self._down:
            self._log.info("%s: RabbitMQ connection restored after %.1fs", self._name, time.monotonic() - self._since)
