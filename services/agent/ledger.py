"""What this agent has run, kept on disk so that no job runs twice on this host.

An append-only JSON-lines file. A job is written as ``started`` before its process is spawned, so a
redelivered or repeated :class:`SubmitTask` finds it and is answered from the record instead of
running the command again, even across agent restarts. ``finished`` is written before the outcome
is published, so an outcome that could not be sent survives a restart and is sent again.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class TaskRecord:
    job_id: str
    started_at: float
    pid: int | None = None
    outcome: str | None = None  # succeeded | failed | cancelled, once finished
    exit_code: int | None = None
    answer_id: str | None = None
    error: str | None = None
    finished_at: float | None = None
    reported: bool = False
    cancel_requested: bool = field(default=False)
    taken: bool = False  # a SubmitTask was taken for it: it must never be run again
    accepted_at: float | None = None  # when not reported on their own: said with the outcome
    started_at: float | None = None
    answer: str | None = None  # a small answer, sent with the outcome
    home: str | None = None  # the home (user) whose launcher runs it: where a restarted agent finds it
    deadline: float | None = None  # when its ttl runs out, for a restarted agent that adopts it
    stdout_id: str | None = None  # the data files of its whole output, once stored
    stderr_id: str | None = None
    stage_out: bool = False  # it has output files: its working directory is kept until they are staged out
    staged_out: dict[str, dict[str, str]] | None = None  # {"files": {path: id}, "errors": {...}}, once done

    @property
    def finished(self) -> bool:
        return self.outcome is not None


KEEP_REPORTED = 7 * 24 * 3600.0  # seconds a reported job is remembered (against a very late duplicate)


class Ledger:
    def __init__(self, path: Path, *, keep_reported: float = KEEP_REPORTED) -> None:
        self.path = path
        self.keep_reported = keep_reported
        self.records: dict[str, TaskRecord] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with path.open() as lines:
                for line in lines:
                    if line.strip():
                        self._apply(json.loads(line))
            self._compact(time.time() - keep_reported)
        self._file = path.open("a", buffering=1)

    def _compact(self, forget_before: float) -> None:
        """Rewrite the file at start: one line per job still worth knowing, reported answers dropped,
        jobs reported long ago forgotten. Written aside and renamed, so a crash leaves one or the other."""
        kept = {
            job_id: record
            for job_id, record in self.records.items()
            if not (record.reported and (record.finished_at or 0) < forget_before)
        }
        partial = self.path.with_name(self.path.name + ".compacting")
        with partial.open("w") as out:
            for record in kept.values():
                if record.reported:
                    record.answer = None  # delivered: nothing will send it again
                out.write(json.dumps({"event": "record", **asdict(record)}) + "\n")
            out.flush()
            os.fsync(out.fileno())
        partial.replace(self.path)
        self.records = kept

    def _apply(self, entry: dict[str, Any]) -> None:
        job_id = entry["job_id"]
        if entry["event"] == "record":  # a compacted line: the whole record
            fields = {k: v for k, v in entry.items() if k != "event"}
            self.records[job_id] = TaskRecord(**fields)
            return
        if entry["event"] == "started":
            known = self.records.get(job_id)
            record = self.records[job_id] = TaskRecord(job_id=job_id, started_at=entry["at"], taken=True)
            record.home, record.deadline = entry.get("home"), entry.get("deadline")
            record.stage_out = bool(entry.get("stage_out"))
            record.cancel_requested = bool(known and known.cancel_requested)
            return
        record = self.records.get(job_id)
        if record is None:
            record = self.records[job_id] = TaskRecord(job_id=job_id, started_at=entry["at"])
        if entry["event"] == "spawned":
            record.pid = entry["pid"]
        elif entry["event"] == "finished":
            keys = ("outcome", "exit_code", "answer_id", "error", "accepted_at", "started_at", "answer", "stdout_id",
                    "stderr_id")  # fmt: skip
            for key in keys:
                setattr(record, key, entry.get(key))
            record.finished_at = entry["at"]
        elif entry["event"] == "reported":
            record.reported = True
            record.answer = None  # delivered: nothing will send it again
        elif entry["event"] == "cancel":
            record.cancel_requested = True
        elif entry["event"] == "staged_out":
            record.staged_out = {"files": entry["files"], "errors": entry["errors"]}

    def _write(self, entry: dict[str, Any]) -> None:
        self._apply(entry)
        self._file.write(json.dumps(entry) + "\n")

    def get(self, job_id: str) -> TaskRecord | None:
        return self.records.get(job_id)

    def started(
        self, job_id: str, *, home: str | None = None, deadline: float | None = None, stage_out: bool = False
    ) -> TaskRecord:
        entry: dict[str, Any] = {"event": "started", "job_id": job_id, "at": time.time()}
        if home is not None:
            entry.update(home=home, deadline=deadline)
        if stage_out:
            entry["stage_out"] = True
        self._write(entry)
        return self.records[job_id]

    def spawned(self, job_id: str, pid: int) -> None:
        self._write({"event": "spawned", "job_id": job_id, "pid": pid, "at": time.time()})

    def cancel_requested(self, job_id: str) -> None:
        self._write({"event": "cancel", "job_id": job_id, "at": time.time()})

    def finished(
        self,
        job_id: str,
        *,
        outcome: str,
        exit_code: int | None,
        answer_id: str | None,
        error: str | None,
        accepted_at: float | None = None,
        started_at: float | None = None,
        answer: str | None = None,
        stdout_id: str | None = None,
        stderr_id: str | None = None,
    ) -> TaskRecord:
        entry = {"event": "finished", "job_id": job_id, "at": time.time(), "outcome": outcome}
        entry.update(exit_code=exit_code, answer_id=answer_id, error=error)
        if stdout_id is not None or stderr_id is not None:
            entry.update(stdout_id=stdout_id, stderr_id=stderr_id)
        if accepted_at is not None or started_at is not None:
            entry.update(accepted_at=accepted_at, started_at=started_at)
        if answer is not None:
            entry["answer"] = answer
        self._write(entry)
        return self.records[job_id]

    def staged_out(self, job_id: str, files: dict[str, str], errors: dict[str, str]) -> TaskRecord:
        self._write({"event": "staged_out", "job_id": job_id, "at": time.time(), "files": files, "errors": errors})
        return self.records[job_id]

    def reported(self, job_id: str) -> None:
        self._write({"event": "reported", "job_id": job_id, "at": time.time()})

    def forget(self, reported_before: float) -> int:
        """Drop from memory the jobs reported before ``reported_before`` (the file forgets them at the
        next start): what keeps a long-running agent's ledger from growing with every job."""
        old = [job_id for job_id, r in self.records.items() if r.reported and (r.finished_at or 0) < reported_before]
        for job_id in old:
            del self.records[job_id]
        return len(old)

    def unfinished(self) -> list[TaskRecord]:
        """Jobs taken and not finished: after a restart, what the previous agent left running or waiting."""
        return [r for r in self.records.values() if r.taken and not r.finished]

    def unreported(self) -> list[TaskRecord]:
        return [r for r in self.records.values() if r.finished and not r.reported]

    def ran(self) -> list[str]:
        """Every job this host ever took, in order: what the fault tests count."""
        return [job_id for job_id, record in self.records.items() if record.taken]

    def close(self) -> None:
        self._file.close()

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def as_dict(self, job_id: str) -> dict[str, Any]:
        return asdict(self.records[job_id])
