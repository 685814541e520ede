"""An outage is said once: the adapter's own lines and the filter on aio-pika's and aiormq's loggers."""

from __future__ import annotations

import logging

import pytest

from broker.amqp_logs import OnceAnOutage, Outage


def record(name: str, level: int, message: str = "reconnecting") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_the_filter_lets_one_record_a_logger_through_per_outage_as_a_warning_at_most() -> None:
    quiet = OnceAnOutage()
    first = record("aiormq.connection", logging.ERROR)
    assert quiet.filter(first) and (first.levelno, first.levelname) == (logging.WARNING, "WARNING")
    assert not quiet.filter(record("aiormq.connection", logging.WARNING))
    assert quiet.filter(record("aio_pika.robust_connection", logging.INFO))  # another logger: its first
    assert quiet.filter(record("aiormq.connection", logging.DEBUG))  # debug is left alone

    quiet.reset()  # a connection is back
    assert quiet.filter(record("aiormq.connection", logging.WARNING))


def test_an_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "test.outage")
    outage = Outage(logging.getLogger("test.outage"), "gateway")
    outage.lost("publish", ConnectionError("reset"))
    outage.lost("consume", ConnectionError("reset"))
    outage.lost("publish", ConnectionError("refused"))
    outage.restored("publish")
    assert outage.ongoing
    outage.restored("consume")
    outage.restored("consume")

    lines = [(r.levelno, r.getMessage().split(":")[1].strip()) for r in caplog.records]
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]
    assert lines[0][1].startswith("RabbitMQ connection lost") and lines[1][1].startswith("RabbitMQ connection restored")
    assert not outage.ongoing
