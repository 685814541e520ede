"""The agent's task runner with real processes; the gateway's data API replaced by a local double."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from broker.envelope import Envelope
from schemas.jobs import (
    CancelTask,
    FilesStagedIn,
    JobState,
    StagedFile,
    StageInFiles,
    SubmitTask,
    TaskAccepted,
    TaskCompleted,
    TaskRunning,
)
from services.agent.data_client import DataClientError
from services.agent.supervisor import JobOptions
from services.agent.tasks import TaskRunner
from tests.delivery import deliver
from tests.e2e.harness import processes_of


class LocalData:
    """Stands in for the gateway's data API: a dict of bytes."""

    def __init__(self) -> None:
        self.items: dict[str, bytes] = {"in-1": b"input bytes\n"}

    async def download(self, data_id: str, destination: Path, *, executable: bool = False) -> None:
        if data_id not in self.items:
            raise DataClientError(f"download of {data_id} failed: 404")
        destination.write_bytes(self.items[data_id])
        os.chmod(destination, 0o755 if executable else 0o644)

    async def upload(self, chunks, *, name: str, job_id: str) -> str:
        body = b"".join([chunk async for chunk in chunks])
        data_id = f"answer-{len(self.items)}"
        self.items[data_id] = body
        return data_id

    async def close(self) -> None:
        pass


class Said:
    def __init__(self) -> None:
        self.events: list = []

    async def __call__(self, payload, *, caused_by=None, transient=False) -> None:
        self.events.append(payload)

    def of(self, kind: type, job_id: str) -> list:
        return [e for e in self.events if isinstance(e, kind) and e.job_id == job_id]


@pytest.fixture
def said() -> Said:
    return Said()


@pytest.fixture
def data() -> LocalData:
    return LocalData()


@pytest.fixture
def options():
    """Job options whose scratch dir a sandbox's uid can reach (pytest's tmp_path is root's alone)."""
    scratch = Path(tempfile.mkdtemp(prefix="skybus-test-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    scratch.chmod(0o711)
    yield JobOptions(scratch_dir=scratch, workdir_retention=60.0)
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
async def runner(tmp_path, said, data, options):
    runner = TaskRunner(tmp_path / "agent", said, data, kill_grace=0.5, options=options)  # type: ignore[arg-type]
    yield runner
    await runner.stop()


async def completed(said: Said, job_id: str, timeout: float = 10) -> TaskCompleted:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done := said.of(TaskCompleted, job_id):
            return done[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{job_id} did not complete: {said.events}")


def submit(job_id: str, command: str, deadline: float | None = None) -> Envelope:
    return Envelope(SubmitTask(job_id=job_id, command=command, deadline=deadline))


async def test_a_task_runs_once_and_its_answer_is_streamed_json(runner, said, data) -> None:
    await deliver(runner.submit_task, submit("j1", "printf 'out\\377'; echo err >&2; exit 4"))
    done = await completed(said, "j1")
    assert done.outcome is JobState.FAILED and done.exit_code == 4
    assert done.answer_id is None and "answer-3" not in data.items  # small: it travels in the event
    # The whole raw streams are data files too, byte for byte.
    assert data.items[done.stdout_id] == b"out\xff" and data.items[done.stderr_id] == b"err\n"
    answer = json.loads(done.answer)
    assert answer["exit_code"] == 4 and answer["stderr"] == "err\n"
    assert answer["stdout"].encode("utf-8", "surrogateescape") == b"out\xff"
    # It ended within the report window: one message says accepted, running and failed.
    assert said.of(TaskAccepted, "j1") == [] and said.of(TaskRunning, "j1") == []
    assert done.accepted_at <= done.started_at <= done.at

    await deliver(runner.submit_task, submit("j1", "echo again"))
    await asyncio.sleep(0.2)
    assert len(said.of(TaskCompleted, "j1")) == 2  # reported again from the ledger...
    assert runner.ledger.ran() == ["j1"] and said.of(TaskRunning, "j1") == []  # ...but never run again
    spawned = [line for line in runner.ledger.path.read_text().splitlines() if '"spawned"' in line]
    assert len(spawned) == 1


async def test_a_longer_task_reports_running_once_then_its_outcome(runner, said) -> None:
    await deliver(runner.submit_task, submit("long", "sleep 0.3"))
    done = await completed(said, "long")
    [running] = said.of(TaskRunning, "long")
    assert running.accepted_at is not None and said.of(TaskAccepted, "long") == []
    assert done.accepted_at is None and done.started_at is None
    assert said.events.index(running) < said.events.index(done)


async def test_a_task_over_the_parallel_limit_is_accepted_then_waits(tmp_path, said, data, options) -> None:
    runner = TaskRunner(tmp_path / "agent", said, data, max_parallel=1, options=options)  # type: ignore[arg-type]
    await deliver(runner.submit_task, submit("first", "sleep 0.3"))
    await deliver(runner.submit_task, submit("second", "true"))
    second = await completed(said, "second")
    first = await completed(said, "first")
    assert len(said.of(TaskAccepted, "second")) == 1 and said.of(TaskAccepted, "first") == []
    assert second.started_at >= first.at - 0.05
    await runner.stop()


async def test_the_ledger_survives_a_restart(tmp_path, said, data, options) -> None:
    first = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    await deliver(first.submit_task, submit("j1", "true"))
    await completed(said, "j1")
    await first.stop()
    second = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    await deliver(second.submit_task, submit("j1", "true"))
    await asyncio.sleep(0.2)
    assert second.ledger.ran() == ["j1"] and len(said.of(TaskCompleted, "j1")) == 2
    await second.stop()


async def test_cancel_kills_the_whole_process_group(runner, said) -> None:
    await deliver(runner.submit_task, submit("j2", "sleep 30 & sleep 30; wait"))
    while len(processes_of("j2")) < 3:
        await asyncio.sleep(0.02)
    await deliver(runner.cancel_task, Envelope(CancelTask(job_id="j2")))
    done = await completed(said, "j2")
    assert done.outcome is JobState.CANCELLED
    assert processes_of("j2") == []


async def test_a_task_that_ignores_sigterm_is_killed(runner, said) -> None:
    await deliver(runner.submit_task, submit("j3", "trap '' TERM; sleep 30"))
    while not processes_of("j3"):
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await deliver(runner.cancel_task, Envelope(CancelTask(job_id="j3")))
    assert (await completed(said, "j3")).outcome is JobState.CANCELLED
    assert time.monotonic() - started < 3 and processes_of("j3") == []


async def test_deadline_stops_the_task(runner, said) -> None:
    await deliver(runner.submit_task, submit("j4", "sleep 30", deadline=time.time() + 0.3))
    done = await completed(said, "j4")
    assert done.outcome is JobState.CANCELLED and done.error == "ttl ran out"
    assert processes_of("j4") == []


async def test_cancel_before_submit_refuses_the_task(runner, said) -> None:
    await deliver(runner.cancel_task, Envelope(CancelTask(job_id="j5")))
    assert (await completed(said, "j5")).outcome is JobState.CANCELLED
    await deliver(runner.submit_task, submit("j5", "touch ran"))
    await asyncio.sleep(0.2)
    assert said.of(TaskRunning, "j5") == [] and len(said.of(TaskCompleted, "j5")) == 2
    assert not (runner.workdir("j5") / "ran").exists()


async def test_a_restart_kills_and_reports_what_the_dead_agent_ran(tmp_path, said, data, options) -> None:
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, "SKYBUS_JOB_ID": "j6"},
        start_new_session=True,
    )
    first = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    first.ledger.started("j6")
    first.ledger.spawned("j6", orphan.pid)
    first.ledger.close()  # the agent dies here

    second = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    await second.recover()
    done = await completed(said, "j6")
    assert done.outcome is JobState.LOST and "restarted" in done.error
    assert orphan.wait(timeout=5) == -9
    await second.stop()


async def test_stage_in_downloads_into_the_working_directory(runner, said) -> None:
    files = [StagedFile(data_id="in-1", name="input.txt")]
    await deliver(runner.stage_in_files, Envelope(StageInFiles(job_id="j7", files=files)))
    assert said.of(FilesStagedIn, "j7") == [FilesStagedIn(job_id="j7", ok=True)]
    await deliver(runner.submit_task, submit("j7", "cat input.txt"))
    assert (await completed(said, "j7")).outcome is JobState.SUCCEEDED

    missing = [StagedFile(data_id="nope", name="x")]
    await deliver(runner.stage_in_files, Envelope(StageInFiles(job_id="j8", files=missing)))
    [event] = said.of(FilesStagedIn, "j8")
    assert event.ok is False and "404" in event.error


async def test_jobs_do_not_see_the_agents_secrets(runner, said, data, monkeypatch) -> None:
    monkeypatch.setenv("SKYBUS_TOKEN", "tok-3f9a77")
    await deliver(runner.submit_task, submit("j9", "env"))
    done = await completed(said, "j9")
    stdout = json.loads(done.answer)["stdout"]
    assert "SKYBUS_JOB_ID=j9" in stdout and "tok-3f9a77" not in stdout


async def test_a_big_answer_is_streamed_out_over_http_not_sent_in_the_event(runner, said, data) -> None:
    await deliver(runner.submit_task, submit("big", "head -c 300000 /dev/zero | tr '\\0' a; printf '\\377' >&2"))
    done = await completed(said, "big")
    assert done.answer is None and done.answer_id in data.items
    answer = json.loads(data.items[done.answer_id])
    assert answer["stdout"] == "a" * 300000 and answer["stderr"].encode("utf-8", "surrogateescape") == b"\xff"
    small = json.loads(_small_answer_of("x", "y"))
    assert list(small) == ["exit_code", "stdout", "stderr"]


def _small_answer_of(out: str, err: str) -> str:
    import tempfile

    from services.agent.tasks import _small_answer

    folder = Path(tempfile.mkdtemp())
    (folder / "o").write_text(out)
    (folder / "e").write_text(err)
    return _small_answer(0, folder / "o", folder / "e")


async def test_the_ledger_is_compacted_at_start_and_still_refuses_a_rerun(tmp_path, said, data, options) -> None:
    first = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    for n in range(5):
        await deliver(first.submit_task, submit(f"c{n}", "echo answer"))
        await completed(said, f"c{n}")
    await first.stop()
    before = (tmp_path / "agent" / "ledger.jsonl").read_text().count("\n")
    second = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    lines = (tmp_path / "agent" / "ledger.jsonl").read_text().splitlines()
    assert len(lines) == 5 < before and all('"answer": null' in line for line in lines)
    await deliver(second.submit_task, submit("c0", "echo again"))
    await asyncio.sleep(0.2)
    assert second.ledger.ran() == [f"c{n}" for n in range(5)] and said.of(TaskRunning, "c0") == []
    await second.stop()

    from services.agent.ledger import Ledger

    forgetful = Ledger(tmp_path / "agent" / "ledger.jsonl", keep_reported=-1)
    assert forgetful.records == {}
    forgetful.close()


async def test_a_task_redelivered_while_it_waits_for_a_slot_is_not_run_twice(tmp_path, said, data, options) -> None:
    runner = TaskRunner(tmp_path / "agent", said, data, max_parallel=1, options=options)  # type: ignore[arg-type]
    await deliver(runner.submit_task, submit("busy", "sleep 0.3"))
    await deliver(runner.submit_task, submit("waits", "echo once >> ../../once.txt"))
    await deliver(runner.submit_task, submit("waits", "echo once >> ../../once.txt"))  # redelivered while waiting
    await completed(said, "waits")
    await asyncio.sleep(0.1)
    assert (runner.supervisors.home("u-anonymous").root / "once.txt").read_text() == "once\n"
    assert len(said.of(TaskCompleted, "waits")) == 1
    await runner.stop()


async def test_a_restart_reports_lost_what_was_waiting_for_a_slot(tmp_path, said, data, options) -> None:
    first = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    first.ledger.started("queued")  # taken, never spawned: the agent died while it waited
    first.ledger.close()
    second = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    await second.recover()
    done = await completed(said, "queued")
    assert done.outcome is JobState.LOST and "before it ran" in done.error
    await deliver(second.submit_task, submit("queued", "true"))
    await asyncio.sleep(0.1)
    assert second.ledger.get("queued").pid is None
    await second.stop()
