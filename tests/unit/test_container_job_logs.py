"""A container job's log outlives its record, for the last few ended jobs of a container only."""

from __future__ import annotations

import os
from pathlib import Path

from services.agent import containers
from services.agent.containers import KEEP_ENDED_LOGS


def test_an_ended_jobs_log_stays_and_only_the_latest_ended_logs_are_kept(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for n in range(KEEP_ENDED_LOGS + 2):
        (jobs / f"ended-{n:03}.log").write_bytes(b"x")
        os.utime(jobs / f"ended-{n:03}.log", (n, n))
    (jobs / "running.json").write_text("{}")
    (jobs / "running.log").write_bytes(b"still writing")
    os.utime(jobs / "running.log", (0, 0))  # older than all: kept, its job still runs
    (jobs / "done.json").write_text("{}")
    (jobs / "done.log").write_bytes(b"the end")

    containers._forget_job(jobs / "done.json")

    assert not (jobs / "done.json").exists() and (jobs / "done.log").read_bytes() == b"the end"
    assert (jobs / "running.log").exists() and (jobs / "running.json").exists()
    kept = sorted(path.name for path in jobs.glob("ended-*.log"))
    assert len(kept) == KEEP_ENDED_LOGS - 1 and kept[0] == "ended-003.log"  # done.log is the newest
