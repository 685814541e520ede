"""Running tasks on this host: one process group each, output to disk, an answer staged out.

Guarantees:

* at most once per host: a job is written to the :class:`Ledger` before its process is spawned,
  and a repeated :class:`SubmitTask` is answered from the ledger, never run again;
* an outcome is never lost by the agent: it is written to the ledger before it is published and
  published again (after a broker outage, or after a restart) until the bus confirmed it;
* cancel and ttl stop the whole process group: SIGTERM, then SIGKILL after ``kill_grace`` seconds;
* a job that was running when the agent died is killed at the next start and reported ``lost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from broker.envelope import Envelope
from broker.port import BusError
from schemas.base import WireModel
from schemas.jobs import (
    ANSWER_INLINE_LIMIT,
    CancelTask,
    FilesStagedIn,
    FileStagedOut,
    JobState,
    StageInFiles,
    StageOutFile,
    SubmitTask,
    TaskAccepted,
    TaskCompleted,
    TaskRunning,
)
from services.agent.answer import answer_chunks
from services.agent.children import watch_children_with_pidfd
from services.agent.data_client import DataClient, DataClientError
from services.agent.ledger import Ledger, TaskRecord

log = logging.getLogger(__name__)

Say = Callable[..., Awaitable[None]]
JOB_ENV = "SKYBUS_JOB_ID"


class TaskRunner:
    def __init__(
        self,
        state_dir: Path,
        say: Say,
        data: DataClient,
        *,
        kill_grace: float = 5.0,
        max_parallel: int = 64,
        report_window: float = 0.05,
    ) -> None:
        self.state_dir = state_dir
        self.ledger = Ledger(state_dir / "ledger.jsonl")
        self._say = say
        self._data = data
        self._kill_grace = kill_grace
        self._slots = asyncio.Semaphore(max_parallel)
        self._report_window = report_window
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.started_at = time.time()
        watch_children_with_pidfd()

    # Lifetime.

    async def recover(self) -> None:
        """After a restart: what ran under the previous agent is gone; say so, and resend outcomes."""
        for record in self.ledger.unfinished():
            if record.pid is not None:
                _kill_leftover(record)
            self.ledger.finished(
                record.job_id,
                outcome=JobState.LOST,
                exit_code=None,
                answer_id=None,
                error="the agent restarted while the task ran" if record.pid else "the agent restarted before it ran",
            )
        for record in self.ledger.unreported():
            self._spawn(self._report(record))

    async def stop(self) -> None:
        """Stop taking work; tasks keep running until the process exits (a restart reports them lost)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.ledger.close()

    def running_job_ids(self) -> list[str]:
        return list(self._processes)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _workdir(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / job_id / "work"

    # Handlers (acked once their record is written; the work goes on in a task of its own).

    async def submit_task(self, envelope: Envelope) -> None:
        command = envelope.payload
        assert isinstance(command, SubmitTask)
        record = self.ledger.get(command.job_id)
        if record is not None and (record.taken or record.finished):
            # Taken before (running, waiting for a slot, or done): answer from the record, never run again.
            log.info("job %s was already taken here: reporting, not running it again", command.job_id)
            if record.finished:
                self._spawn(self._report(record, caused_by=envelope))
            elif command.job_id in self._processes and record.pid is not None:
                await self._say(TaskRunning(job_id=command.job_id, at=time.time(), pid=record.pid), caused_by=envelope)
            return
        if record is not None and record.cancel_requested:
            finished = self.ledger.finished(
                command.job_id, outcome=JobState.CANCELLED, exit_code=None, answer_id=None, error="cancelled"
            )
            self._spawn(self._report(finished, caused_by=envelope))
            return
        self.ledger.started(command.job_id)
        self._spawn(self._run(command, envelope))

    async def cancel_task(self, envelope: Envelope) -> None:
        command = envelope.payload
        assert isinstance(command, CancelTask)
        record = self.ledger.get(command.job_id)
        if record is not None and record.finished:
            return
        self.ledger.cancel_requested(command.job_id)
        process = self._processes.get(command.job_id)
        if process is not None:
            self._spawn(self._stop_group(process))
        elif record is None or record.pid is None:
            # Never started here: nothing to stop, and a later SubmitTask will be refused.
            finished = self.ledger.finished(
                command.job_id, outcome=JobState.CANCELLED, exit_code=None, answer_id=None, error=command.reason
            )
            self._spawn(self._report(finished, caused_by=envelope))

    async def stage_in_files(self, envelope: Envelope) -> None:
        command = envelope.payload
        assert isinstance(command, StageInFiles)
        workdir = self._workdir(command.job_id)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            for item in command.files:
                target = workdir / item.name
                if target.exists():
                    continue  # staged by an earlier delivery
                await self._data.download(item.data_id, target, executable=item.executable)
        except (DataClientError, OSError) as error:
            await self._say(FilesStagedIn(job_id=command.job_id, ok=False, error=str(error)), caused_by=envelope)
            return
        await self._say(FilesStagedIn(job_id=command.job_id, ok=True), caused_by=envelope)

    async def stage_out_file(self, envelope: Envelope) -> None:
        command = envelope.payload
        assert isinstance(command, StageOutFile)
        workdir = self._workdir(command.job_id).resolve()
        source = (workdir / command.path).resolve()
        if not source.is_relative_to(workdir) or not source.is_file():
            event = FileStagedOut(job_id=command.job_id, data_id=None, ok=False, error=f"no file {command.path!r}")
            await self._say(event, caused_by=envelope)
            return
        try:
            data_id = await self._data.upload(_file_chunks(source), name=source.name, job_id=command.job_id)
        except DataClientError as error:
            event = FileStagedOut(job_id=command.job_id, data_id=None, ok=False, error=str(error))
        else:
            event = FileStagedOut(job_id=command.job_id, data_id=data_id, ok=True)
        await self._say(event, caused_by=envelope)

    # The life of one task.

    async def _run(self, command: SubmitTask, envelope: Envelope) -> None:
        """Accept, run, stage the answer out, report.

        Messages are spent only on what someone could see: a task that starts at once is not
        reported accepted separately (its running report carries the time it was accepted), and a
        task that ends within ``report_window`` is reported once, completed, with both earlier times.
        """
        job_id = command.job_id
        job_dir = self.state_dir / "jobs" / job_id
        workdir = job_dir / "work"
        workdir.mkdir(parents=True, exist_ok=True)
        stdout, stderr = job_dir / "stdout", job_dir / "stderr"
        accepted_at: float | None = time.time()
        if self._slots.locked():  # it has to wait for a free slot: say it is accepted meanwhile
            await self._say_eventually(TaskAccepted(job_id=job_id, at=accepted_at), envelope)
            accepted_at = None
        started_at: float | None = None
        error: str | None = None
        exit_code: int | None = None
        async with self._slots:
            with stdout.open("wb") as out, stderr.open("wb") as err:
                try:
                    process = await asyncio.create_subprocess_exec(
                        "/bin/sh", "-c", command.command,
                        cwd=workdir, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
                        env=_job_environment(job_id, workdir), start_new_session=True,
                    )  # fmt: skip
                except OSError as failure:
                    process = None
                    error = f"could not start /bin/sh: {failure}"
            if process is not None:
                started_at = time.time()
                self._processes[job_id] = process
                self.ledger.spawned(job_id, process.pid)
                running = TaskRunning(job_id=job_id, at=started_at, pid=process.pid, accepted_at=accepted_at)
                reporting = asyncio.Event()

                async def report_running() -> None:
                    await asyncio.sleep(self._report_window)
                    reporting.set()
                    await self._say_eventually(running, envelope)

                reporter = asyncio.ensure_future(report_running())
                exit_code, error = await self._wait(process, command.deadline)
                self._processes.pop(job_id, None)
                if reporting.is_set():
                    await reporter
                    accepted_at = started_at = None  # both said already
                else:
                    reporter.cancel()
        record = self.ledger.get(job_id)
        if record is not None and record.cancel_requested:
            outcome, error = JobState.CANCELLED, error or "cancelled"
        elif error is not None:
            outcome = JobState.CANCELLED if error == "ttl ran out" else JobState.FAILED
        else:
            outcome = JobState.SUCCEEDED if exit_code == 0 else JobState.FAILED
        answer_id, answer = None, _small_answer(exit_code, stdout, stderr)
        if answer is None:  # too big to travel in a message: stage it out over HTTP
            try:
                answer_id = await self._data.upload(
                    answer_chunks(exit_code, stdout, stderr), name=f"answer-{job_id}.json", job_id=job_id
                )
            except DataClientError as failure:
                log.error("answer of job %s not staged out: %s", job_id, failure, extra={"job_id": job_id})
                error = error or f"answer not stored: {failure}"
        finished = self.ledger.finished(
            job_id,
            outcome=outcome,
            exit_code=exit_code,
            answer_id=answer_id,
            error=error,
            accepted_at=accepted_at,
            started_at=started_at,
            answer=answer,
        )
        await self._report(finished, caused_by=envelope)
        stdout.unlink(missing_ok=True)
        stderr.unlink(missing_ok=True)

    async def _wait(self, process: asyncio.subprocess.Process, deadline: float | None) -> tuple[int | None, str | None]:
        timeout = None if deadline is None else max(0.0, deadline - time.time())
        try:
            code = await asyncio.wait_for(asyncio.shield(process.wait()), timeout)
        except TimeoutError:
            await self._stop_group(process)
            return process.returncode, "ttl ran out"
        return code, None

    async def _stop_group(self, process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), self._kill_grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        # The shell may be gone while children it left in the group live on.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def purge_workdirs(self, older_than: float) -> int:
        """Remove the working directories of finished jobs last touched before ``older_than``."""
        removed = 0
        jobs = self.state_dir / "jobs"
        for job_dir in jobs.iterdir() if jobs.exists() else ():
            record = self.ledger.get(job_dir.name)
            if record is not None and not record.finished:
                continue
            with contextlib.suppress(OSError):
                if job_dir.stat().st_mtime < older_than:
                    shutil.rmtree(job_dir)
                    removed += 1
        return removed

    # Reporting.

    async def _say_eventually(self, event: WireModel, caused_by: Envelope | None = None) -> None:
        """Publish, retrying through a broker outage: the agent's outcomes must reach the fleet."""
        pause = 0.5
        while True:
            try:
                await self._say(event, caused_by=caused_by)
                return
            except BusError as error:
                log.warning("could not publish %s yet (%r); retrying", event.message_type, error)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _report(self, record: TaskRecord, caused_by: Envelope | None = None) -> None:
        event = TaskCompleted(
            job_id=record.job_id,
            at=record.finished_at or time.time(),
            outcome=JobState(record.outcome),
            exit_code=record.exit_code,
            answer_id=record.answer_id,
            error=record.error,
            accepted_at=record.accepted_at,
            started_at=record.started_at,
            answer=record.answer,
        )
        await self._say_eventually(event, caused_by)
        self.ledger.reported(record.job_id)


def _small_answer(exit_code: int | None, stdout: Path, stderr: Path) -> str | None:
    """The answer document, if it is small enough to travel inside TaskCompleted (the same JSON
    that :func:`answer_chunks` streams for a big one). Reads at most a few KiB."""
    if stdout.stat().st_size + stderr.stat().st_size > ANSWER_INLINE_LIMIT:
        return None
    text = json.dumps(
        {
            "exit_code": exit_code,
            "stdout": stdout.read_bytes().decode("utf-8", "surrogateescape"),
            "stderr": stderr.read_bytes().decode("utf-8", "surrogateescape"),
        }
    )
    return text if len(text) <= ANSWER_INLINE_LIMIT else None


def _job_environment(job_id: str, workdir: Path) -> dict[str, str]:
    """The agent's environment without its own secrets, plus the job's id."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYBUS_")}
    env[JOB_ENV] = job_id
    env["PWD"] = str(workdir)
    return env


def _kill_leftover(record: TaskRecord) -> None:
    """Kill the process group a previous agent left, if it still is that job's (pids get reused)."""
    try:
        process = psutil.Process(record.pid)
        if process.environ().get(JOB_ENV) != record.job_id:
            return
        os.killpg(record.pid, signal.SIGKILL)
    except (psutil.Error, ProcessLookupError, PermissionError):
        return


async def _file_chunks(path: Path, size: int = 256 * 1024):
    with path.open("rb") as stream:
        while chunk := await asyncio.to_thread(stream.read, size):
            yield chunk
