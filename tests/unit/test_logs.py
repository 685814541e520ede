import logging

from services.logs import IdsFormatter


def test_ids_go_at_the_end_of_the_line() -> None:
    formatter = IdsFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "job %s done", ("j1",), None)
    record.job_id, record.resource_id = "j1", "r1"
    assert formatter.format(record) == "INFO job j1 done job_id=j1 resource_id=r1"
    plain = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    assert formatter.format(plain) == "INFO hello"
