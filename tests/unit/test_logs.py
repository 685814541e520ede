import io
import json
import logging
import sys
from datetime import UTC, datetime

import pytest

from services.logs import IdsFormatter, JsonFormatter, SkybusHandler, formatter, use_format


def test_ids_go_at_the_end_of_the_line() -> None:
    formatter = IdsFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "job %s done", ("j1",), None)
    record.job_id, record.resource_id = "j1", "r1"
    assert formatter.format(record) == "INFO job j1 done job_id=j1 resource_id=r1"
    plain = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    assert formatter.format(plain) == "INFO hello"


def test_json_is_one_object_a_line_with_the_extras_the_code_passes() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("skybus.x", logging.WARNING, __file__, 1, "job %s\nfailed", ("j1",), None)
    record.job_id, record.resource_id, record.when = "j1", "r1", datetime(2026, 1, 2, tzinfo=UTC)
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "skybus.x" and entry["message"] == "job j1\nfailed"
    assert entry["job_id"] == "j1" and entry["resource_id"] == "r1" and entry["when"].startswith("2026-01-02")
    assert datetime.fromisoformat(entry["time"]).tzinfo is not None
    assert not {"args", "msg", "levelno", "pathname", "exc_info"} & set(entry)


def test_json_keeps_a_traceback_on_its_line_and_its_own_fields_over_an_extra() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    record.level = "spoofed"
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exc_info"] and entry["level"] == "ERROR"


def test_use_format_switches_the_skybus_handler_only() -> None:
    root = logging.getLogger()
    ours, theirs = SkybusHandler(io.StringIO()), logging.StreamHandler(io.StringIO())
    theirs_formatter = theirs.formatter
    root.addHandler(ours)
    root.addHandler(theirs)
    try:
        use_format("json")
        assert isinstance(ours.formatter, JsonFormatter) and theirs.formatter is theirs_formatter
        use_format("text")
        assert isinstance(ours.formatter, IdsFormatter)
    finally:
        root.removeHandler(ours)
        root.removeHandler(theirs)
    with pytest.raises(ValueError, match="unknown log format"):
        formatter("xml")
