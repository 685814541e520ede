"""Running tasks on this host: each in its user's sandbox, under a launcher that outlives the agent.

Guarantees:

* at most once per host: a job is written to the :class:`Ledger` (with the home whose launcher will
  run it) before it is handed to the launcher, and a repeated :class:`SubmitTask` is answered from
  the ledger, never run again; a task is never started after its ``start_by``, nor by a restarted
  agent when its previous incarnation took it but had not handed it over;
* a job outlives the agent: its launcher (:mod:`services.agent.supervisor`) is not the agent's child,
  writes its output to files and its exit status to ``run/<job>.exit``; a restarted agent finds the
  job running (and waits for it) or ended (and reports its real outcome). Only a job whose
  sandbox died with it (killed, the host rebooted) is reported ``lost``;
* an outcome is never lost by the agent: it is written to the ledger before it is published and
  published again (after a broker outage, or after a restart) until the bus confirmed it;
* cancel and ttl stop the whole process group: SIGTERM, then SIGKILL after ``kill_grace`` seconds;
* a task the agent cannot start (a NUL in its command, no sandbox here) ends ``failed``, once.
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
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

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
    OutputStream,
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
from services.agent.output import OutputTails
from services.agent.stage_out import stage_out
from services.agent.supervisor import (
    JOB_ENV,
    JobOptions,
    LauncherGone,
    LaunchError,
    Supervisor,
    Supervisors,
    home_name,
    job_limits,
)

log = logging.getLogger(__name__)

Say = Callable[..., Awaitable[None]]
Ended = dict[str, Any]  # a launcher's exit record: {"status": wait status, "cpu": seconds}
NOT_STARTED_IN_TIME = "not started before its start_by deadline"
ADOPTION_LOOKUP_TIMEOUT = 5.0  # seconds a restarted agent waits to learn which of its jobs still run


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
        options: JobOptions | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.ledger = Ledger(state_dir / "ledger.jsonl")
        self.options = options or JobOptions()
        self.supervisors = Supervisors(state_dir, self.options)
        self._say = say
        self._data = data
        self._kill_grace = kill_grace
        self._slots = asyncio.Semaphore(max_parallel)
        self._report_window = report_window
        self._running: dict[str, tuple[Supervisor, int]] = {}
        self._ended: deque[tuple[float, Path]] = deque()  # work dirs to remove once retention passed
        self._tasks: set[asyncio.Task[None]] = set()
        self._staging_out: dict[str, asyncio.Lock] = {}
        self.output = OutputTails(say, self._output_path)
        self.started_at = time.time()
        watch_children_with_pidfd()  # for the containers' helpers; jobs are the launchers' children

    # Lifetime.

    async def recover(self) -> None:
        """After a restart: adopt what the previous agent left running, report what ended meanwhile,
        and never start what it took but had not handed to a launcher."""
        decided: list[asyncio.Event] = []
        for record in self.ledger.unfinished():
            if record.home is not None:
                decided.append(asyncio.Event())
                self._spawn(self._adopt(record, decided[-1]))
                continue
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
        # The first heartbeat names every job adopted here: the job manager stops any that ended lost.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ADOPTION_LOOKUP_TIMEOUT):
                await asyncio.gather(*(event.wait() for event in decided))

    async def stop(self) -> None:
        """Stop taking work; the jobs run on under their launchers, and the next agent adopts them."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.output.stop()
        await self.supervisors.close()
        self.ledger.close()

    def running_job_ids(self) -> list[str]:
        return list(self._running)

    def _output_path(self, job_id: str, stream: OutputStream) -> Path | None:
        """Where a task running here writes ``stream`` (None once it ended: its output is stored)."""
        running = self._running.get(job_id)
        if running is None:
            return None
        return running[0].home.run(job_id, "out" if stream is OutputStream.STDOUT else "err")

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def workdir(self, job_id: str) -> Path:
        """Where a job's files are: in its home once it was taken, in staging before."""
        record = self.ledger.get(job_id)
        if record is not None and record.home is not None:
            return self.supervisors.home(record.home).work(job_id)
        return self.supervisors.staging(job_id)

    # Handlers (acked once their record is written; the work goes on in a task of its own).

    async def submit_task(self, command: SubmitTask, envelope: Envelope) -> None:
        record = self.ledger.get(command.job_id)
        if record is not None and (record.taken or record.finished):
            # Taken before (running, waiting for a slot, or done): answer from the record, never run again.
            log.info("job %s was already taken here: reporting, not running it again", command.job_id)
            if record.finished:
                self._spawn(self._report(record, caused_by=envelope))
            elif command.job_id in self._running and record.pid is not None:
                await self._say(TaskRunning(job_id=command.job_id, at=time.time(), pid=record.pid), caused_by=envelope)
            return
        if record is not None and record.cancel_requested:
            finished = self.ledger.finished(
                command.job_id, outcome=JobState.CANCELLED, exit_code=None, answer_id=None, error="cancelled"
            )
            self._spawn(self._report(finished, caused_by=envelope))
            return
        refusal = self._refusal(command)
        if refusal is not None:
            outcome, error = refusal
            log.warning("job %s not started: %s", command.job_id, error, extra={"job_id": command.job_id})
            self.ledger.started(command.job_id)
            finished = self.ledger.finished(
                command.job_id, outcome=outcome, exit_code=None, answer_id=None, error=error
            )
            self._spawn(self._report(finished, caused_by=envelope))
            return
        home = home_name(command.user, command.privileged)
        self.ledger.started(command.job_id, home=home, deadline=command.deadline, stage_out=command.stage_out)
        self._spawn(self._run(command, envelope, home))

    def _refusal(self, command: SubmitTask) -> tuple[JobState, str] | None:
        if command.start_by is not None and time.time() > command.start_by:
            return JobState.LOST, NOT_STARTED_IN_TIME
        if "\0" in command.command:
            return JobState.FAILED, "the command contains a NUL byte"
        refusal = self.supervisors.refusal(command.privileged)
        return None if refusal is None else (JobState.FAILED, refusal)

    async def cancel_task(self, command: CancelTask, envelope: Envelope) -> None:
        record = self.ledger.get(command.job_id)
        if record is not None and record.finished:
            return
        self.ledger.cancel_requested(command.job_id)
        running = self._running.get(command.job_id)
        if running is not None:
            supervisor, pid = running
            self._spawn(self._stop_group(supervisor, pid, supervisor.exit_of(command.job_id)))
        elif record is None or record.pid is None:
            # Never started here: nothing to stop, and a later SubmitTask will be refused.
            finished = self.ledger.finished(
                command.job_id, outcome=JobState.CANCELLED, exit_code=None, answer_id=None, error=command.reason
            )
            self._spawn(self._report(finished, caused_by=envelope))

    async def stage_in_files(self, command: StageInFiles, envelope: Envelope) -> None:
        bad = [item.name for item in command.files if not _plain_name(item.name)]
        if bad:
            error = f"not a plain file name: {bad[0]!r} (no '/', no '..', no NUL)"
            await self._say(FilesStagedIn(job_id=command.job_id, ok=False, error=error), caused_by=envelope)
            return
        workdir = self.workdir(command.job_id)
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

    async def stage_out_file(self, command: StageOutFile, envelope: Envelope) -> None:
        """Upload the task's output files, once: asked again (a redelivery, the job manager's sweep),
        it answers what it stored the first time. Its working directory goes once this is done."""
        lock = self._staging_out.setdefault(command.job_id, asyncio.Lock())
        async with lock:
            record = self.ledger.get(command.job_id)
            if record is None or not record.finished:
                errors = {pattern: "this host has no ended task of this job" for pattern in command.patterns}
                await self._say(FileStagedOut(job_id=command.job_id, errors=errors), caused_by=envelope)
                return
            if record.staged_out is None:
                workdir = self.workdir(command.job_id)
                files, errors = await stage_out(self._data, workdir, command.patterns, job_id=command.job_id)
                record = self.ledger.staged_out(command.job_id, files, errors)
                if record.stage_out:
                    self._ended.append((time.time(), workdir))
                    self._purge_due(time.time() - self.options.workdir_retention)
            assert record.staged_out is not None
            staged = FileStagedOut(job_id=command.job_id, **record.staged_out)
            await self._say(staged, caused_by=envelope)
        if not lock.locked():
            self._staging_out.pop(command.job_id, None)

    # The life of one task.

    async def _run(self, command: SubmitTask, envelope: Envelope, home: str) -> None:
        """Accept, run, stage the answer out, report.

        Messages are spent only on what someone could see: a task that starts at once is not
        reported accepted separately (its running report carries the time it was accepted), and a
        task that ends within ``report_window`` is reported once, completed, with both earlier times.
        """
        job_id = command.job_id
        accepted_at: float | None = time.time()
        if self._slots.locked():  # it has to wait for a free slot: say it is accepted meanwhile
            await self._say_eventually(TaskAccepted(job_id=job_id, at=accepted_at), envelope)
            accepted_at = None
        started_at: float | None = None
        ended: Ended | None = None
        error: str | None = None
        async with self._slots:
            record = self.ledger.get(job_id)
            if record is not None and record.finished:  # cancelled while it waited
                return
            if command.start_by is not None and time.time() > command.start_by:
                finished = self.ledger.finished(
                    job_id, outcome=JobState.LOST, exit_code=None, answer_id=None, error=NOT_STARTED_IN_TIME
                )
                await self._report(finished, caused_by=envelope)
                return
            supervisor = self.supervisors.supervisor(home)
            try:
                await supervisor.connect(start=True)
                workdir = self.supervisors.prepare_workdir(home, job_id)
                supervisor.exit_of(job_id)  # before it can end
                env = self.supervisors.job_environment(home, job_id, workdir)
                argv = ["/bin/sh", "-c", command.command]
                pid = await supervisor.run(job_id, argv, env, job_limits(self.options.limits))
            except (LaunchError, LauncherGone, OSError) as failure:
                error = str(failure)
                supervisor.forget(job_id)
            else:
                started_at = time.time()
                self._running[job_id] = (supervisor, pid)
                self.ledger.spawned(job_id, pid)
                running = TaskRunning(job_id=job_id, at=started_at, pid=pid, accepted_at=accepted_at)
                reporting = asyncio.Event()

                async def report_running() -> None:
                    await asyncio.sleep(self._report_window)
                    reporting.set()
                    await self._say_eventually(running, envelope)

                reporter = asyncio.ensure_future(report_running())
                ended, error = await self._wait(supervisor, job_id, pid, command.deadline)
                if reporting.is_set():
                    await reporter
                    accepted_at = started_at = None  # both said already
                else:
                    reporter.cancel()
        times = {"accepted_at": accepted_at, "started_at": started_at}
        await self._finish(job_id, home, ended, error, caused_by=envelope, **times)

    async def _adopt(self, record: TaskRecord, decided: asyncio.Event) -> None:
        """A job the previous agent handed to a launcher: wait for it if it runs, report it if it ended.
        ``decided`` is set once it is known which (and a running one is among the running jobs)."""
        try:
            await self._adopt_or_report(record, decided)
        finally:
            decided.set()

    async def _adopt_or_report(self, record: TaskRecord, decided: asyncio.Event) -> None:
        assert record.home is not None
        job_id, home = record.job_id, self.supervisors.home(record.home)
        ended = _read_exit(home.run(job_id, "exit"))
        if ended is None:
            supervisor = self.supervisors.supervisor(record.home)
            with contextlib.suppress(LauncherGone):
                if await supervisor.connect(start=False):
                    supervisor.exit_of(job_id)
                    running = await supervisor.running()
                    if job_id in running:
                        log.info("job %s still runs: adopted", job_id, extra={"job_id": job_id})
                        self._running[job_id] = (supervisor, running[job_id])
                        decided.set()
                        ended, error = await self._wait(supervisor, job_id, running[job_id], record.deadline)
                        await self._finish(job_id, record.home, ended, error)
                        return
                    supervisor.forget(job_id)
            ended = _read_exit(home.run(job_id, "exit"))  # it may have ended while we asked
        if ended is not None:
            await self._finish(job_id, record.home, ended, None)
            return
        ran = home.run(job_id, "out").exists()  # created by the launcher before it forks
        if record.pid is not None:
            _kill_leftover(record)
        error = "its sandbox ended while it ran (killed, or the host restarted)" if ran else None
        await self._finish(job_id, record.home, None, error or "the agent restarted before it ran", lost=True)

    async def _finish(
        self,
        job_id: str,
        home_name_: str,
        ended: Ended | None,
        error: str | None,
        *,
        lost: bool = False,
        accepted_at: float | None = None,
        started_at: float | None = None,
        caused_by: Envelope | None = None,
    ) -> None:
        self._running.pop(job_id, None)
        self.output.ended(job_id)
        home = self.supervisors.home(home_name_)
        stdout, stderr, exit_file = (home.run(job_id, suffix) for suffix in ("out", "err", "exit"))
        exit_code = None if ended is None else os.waitstatus_to_exitcode(ended["status"])
        if ended is not None and error is None:
            error = _limit_error(ended, exit_code, self.options.limits)
        record = self.ledger.get(job_id)
        if lost:
            outcome = JobState.LOST
        elif record is not None and record.cancel_requested:
            outcome, error = JobState.CANCELLED, error or "cancelled"
        elif error is not None and ended is None:
            outcome = JobState.FAILED
        elif error == "ttl ran out":
            outcome = JobState.CANCELLED
        else:
            outcome = JobState.SUCCEEDED if exit_code == 0 and error is None else JobState.FAILED
        answer_id, answer, stream_ids = None, None, (None, None)
        if ended is not None and stdout.exists() and stderr.exists():
            answer = _small_answer(exit_code, stdout, stderr)
            if answer is None or stdout.stat().st_size or stderr.stat().st_size:  # else nothing to upload
                uploads = [self._store_output(job_id, stdout, "stdout"), self._store_output(job_id, stderr, "stderr")]
                if answer is None:  # too big to travel in a message: stage it out over HTTP
                    uploads.append(self._store_answer(job_id, exit_code, stdout, stderr))
                stored = await asyncio.gather(*uploads)
                stream_ids = stored[0], stored[1]
                if answer is None:
                    answer_id, failure = stored[2]
                    if failure is not None:
                        error = error or f"answer not stored: {failure}"
            if outcome is JobState.FAILED and error is None and "as" in self.options.limits and answer:
                error = _memory_error(answer, self.options.limits["as"])
        finished = self.ledger.finished(
            job_id,
            outcome=outcome,
            exit_code=exit_code,
            answer_id=answer_id,
            error=error,
            accepted_at=accepted_at,
            started_at=started_at,
            answer=answer,
            stdout_id=stream_ids[0],
            stderr_id=stream_ids[1],
        )
        await self._report(finished, caused_by=caused_by)
        for path in (stdout, stderr, exit_file):
            path.unlink(missing_ok=True)
        if not (finished.stage_out and finished.staged_out is None):  # else kept until staged out
            self._ended.append((time.time(), home.work(job_id)))
        self._purge_due(time.time() - self.options.workdir_retention)

    async def _store_output(self, job_id: str, path: Path, stream: str) -> str | None:
        """A stream's whole raw output as a data file of the job's user, streamed from its file;
        None when it is empty (no upload, no message) or could not be stored (logged)."""
        if os.stat(path).st_size == 0:  # a stat of the job's own file (tmpfs): no thread hop for it
            return None
        try:
            return await self._data.upload(_file_chunks(path), name=f"{stream}-{job_id}", job_id=job_id)
        except (DataClientError, OSError) as failure:
            log.error("%s of job %s not stored: %s", stream, job_id, failure, extra={"job_id": job_id})
            return None

    async def _store_answer(
        self, job_id: str, exit_code: int | None, stdout: Path, stderr: Path
    ) -> tuple[str | None, DataClientError | None]:
        try:
            chunks = answer_chunks(exit_code, stdout, stderr)
            return await self._data.upload(chunks, name=f"answer-{job_id}.json", job_id=job_id), None
        except DataClientError as failure:
            log.error("answer of job %s not staged out: %s", job_id, failure, extra={"job_id": job_id})
            return None, failure

    async def _wait(
        self, supervisor: Supervisor, job_id: str, pid: int, deadline: float | None
    ) -> tuple[Ended | None, str | None]:
        exited = supervisor.exit_of(job_id)
        timeout = None if deadline is None else max(0.0, deadline - time.time())
        try:
            return await asyncio.wait_for(asyncio.shield(exited), timeout), None
        except TimeoutError:
            return await self._stop_group(supervisor, pid, exited), "ttl ran out"
        except LauncherGone as gone:
            ended = _read_exit(supervisor.home.run(job_id, "exit"))
            return ended, None if ended else f"{gone} while it ran: it ended with it"
        finally:
            supervisor.forget(job_id)

    async def _stop_group(self, supervisor: Supervisor, pid: int, exited: asyncio.Future[Ended]) -> Ended | None:
        """SIGTERM the job's group, SIGKILL it after the grace; what it left in its group goes too."""
        supervisor.kill(pid, signal.SIGTERM)
        try:
            try:
                ended = await asyncio.wait_for(asyncio.shield(exited), self._kill_grace)
            except TimeoutError:
                supervisor.kill(pid, signal.SIGKILL)
                ended = await asyncio.shield(exited)
        except LauncherGone:
            return None
        supervisor.kill(pid, signal.SIGKILL)
        return ended

    def purge_workdirs(self, older_than: float) -> int:
        """Remove the working directories of jobs ended before ``older_than``, and forget long-reported jobs."""
        self.ledger.forget(time.time() - self.ledger.keep_reported)
        return self._purge_due(older_than)

    def _purge_due(self, older_than: float) -> int:
        due = []
        while self._ended and self._ended[0][0] <= older_than:
            due.append(self._ended.popleft()[1])
        if len(due) == 1 and self.options.workdir_retention <= 0:
            _remove(due)  # usually an empty directory: cheaper than a thread
        elif due:
            self._spawn(asyncio.to_thread(_remove, due))
        return len(due)

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
            stdout_id=record.stdout_id,
            stderr_id=record.stderr_id,
        )
        await self._say_eventually(event, caused_by)
        self.ledger.reported(record.job_id)


def _plain_name(name: str) -> bool:
    """A file name that stays in the job's directory: not empty, no '/', not '.' or '..', no NUL."""
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")


def _read_exit(path: Path) -> Ended | None:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _limit_error(ended: Ended, exit_code: int | None, limits: dict[str, int]) -> str | None:
    """Which limit ended the job, from how it ended: SIGXCPU (or SIGKILL at the hard limit, or a shell
    reporting its child's SIGXCPU) for CPU time, SIGXFSZ for output."""
    cpu, fsize = limits.get("cpu"), limits.get("fsize")
    xcpu, xfsz = int(signal.SIGXCPU), int(signal.SIGXFSZ)
    if cpu is not None and (exit_code in (-xcpu, 128 + xcpu) or (exit_code == -signal.SIGKILL and ended["cpu"] >= cpu)):
        return f"cpu time limit ({cpu} s) exceeded"
    if fsize is not None and exit_code in (-xfsz, 128 + xfsz):
        return f"output limit ({fsize} bytes) exceeded"
    return None


def _memory_error(answer: str, limit: int) -> str | None:
    stderr = json.loads(answer)["stderr"]
    if "Cannot allocate memory" in stderr or "MemoryError" in stderr or "out of memory" in stderr:
        return f"memory limit ({limit // 2**20} MiB) exceeded"
    return None


def _remove(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


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


def _kill_leftover(record: TaskRecord) -> None:
    """Kill the process group a previous agent left, if it still is that job's (pids get reused)."""
    try:
        process = psutil.Process(record.pid)
        if process.environ().get(JOB_ENV) != record.job_id:
            return
        os.killpg(record.pid, signal.SIGKILL)
    except (psutil.Error, ProcessLookupError, PermissionError):
        return


async def _file_chunks(path: Path, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    with path.open("rb") as stream:
        while chunk := await asyncio.to_thread(stream.read, size):
            yield chunk
