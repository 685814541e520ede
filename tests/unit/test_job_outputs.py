"""The job manager's side of output files: stage out after the command, then end; never stuck."""

# ruff: noqa: F811  (the fixture of test_job_manager, imported to be shared)

from __future__ import annotations

import pytest

from broker.envelope import Envelope
from broker.port import Drop
from schemas.base import Accepted, Rejected
from schemas.content import DeleteContent
from schemas.jobs import DeleteJob, FileStagedOut, JobChanged, JobState, StageOutFile, SubmitTask, TaskCompleted
from services.job_manager.handlers import RESEND_AFTER, STAGE_OUT_LIMIT, JobManager
from tests.delivery import deliver
from tests.unit.test_job_manager import HOST_A, HOST_B, add_host, from_host, host_changed, manager, run, state  # noqa: F401


def completed(**fields) -> TaskCompleted:
    values = {"job_id": "job-1", "at": 2.0, "outcome": JobState.SUCCEEDED, "exit_code": 0, "started_at": 1.0,
              "accepted_at": 1.0, "stdout_id": "out-1"}  # fmt: skip
    values.update(fields)
    return TaskCompleted(**values)


async def test_output_files_are_staged_out_before_the_job_ends(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager, output_files=["*.csv", "report.txt"])
    [submit] = manager.bus.payloads(SubmitTask)
    assert submit.stage_out is True
    await deliver(manager.task_completed, from_host(completed()))
    job = await state(manager)
    assert job["state"] == "running" and job["finishing"]["outcome"] == "succeeded"
    [ask] = manager.bus.payloads(StageOutFile)
    assert ask == StageOutFile(job_id="job-1", patterns=["*.csv", "report.txt"])
    assert not [c for c in manager.bus.payloads(JobChanged) if c.state is JobState.SUCCEEDED]

    await deliver(manager.task_completed, from_host(completed()))  # a redelivery asks again, changes nothing
    assert len(manager.bus.payloads(StageOutFile)) == 2 and (await state(manager))["version"] == job["version"]

    staged = FileStagedOut(job_id="job-1", files={"a.csv": "d-1"}, errors={"report.txt": "no file matches"})
    await deliver(manager.file_staged_out, from_host(staged))
    job = await state(manager)
    assert job["state"] == "succeeded" and job["exit_code"] == 0 and job["stdout_id"] == "out-1"
    assert job["outputs"] == {"a.csv": "d-1"} and job["output_errors"] == {"report.txt": "no file matches"}
    await deliver(manager.file_staged_out, from_host(staged))  # a redelivery after the end: nothing moves
    assert (await state(manager))["version"] == job["version"]


async def test_file_staged_out_from_another_host_or_unsigned_is_refused(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await add_host(manager, HOST_B)
    await run(manager, output_files=["x"], resource_id=HOST_A)
    await deliver(manager.task_completed, from_host(completed()))
    await deliver(manager.file_staged_out, from_host(FileStagedOut(job_id="job-1", files={"x": "evil"}), HOST_B))
    with pytest.raises(Drop):
        await deliver(manager.file_staged_out, from_host(FileStagedOut(job_id="job-1"), token="not the host's token"))
    assert (await state(manager))["state"] == "running"


async def test_a_lost_stage_out_is_asked_again_then_given_up_without_sticking(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager, output_files=["x"])
    await deliver(manager.task_completed, from_host(completed(at=manager.clock())))
    manager.clock.now += RESEND_AFTER + 1
    await add_host(manager, HOST_A)  # still responding
    await manager.sweep()
    assert len(manager.bus.payloads(StageOutFile)) == 2
    manager.clock.now += STAGE_OUT_LIMIT
    await deliver(manager.host_changed, host_changed(manager, HOST_A, "responding", last_response_time=manager.clock()))
    await manager.sweep()
    job = await state(manager)
    assert job["state"] == "succeeded" and "not staged out" in job["output_errors"]["x"]


async def test_a_job_that_did_not_run_to_its_end_lists_why_it_has_no_outputs(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager, output_files=["x"])
    await deliver(
        manager.task_completed, from_host(completed(outcome=JobState.FAILED, exit_code=None, error="no sandbox"))
    )
    job = await state(manager)
    assert job["state"] == "failed" and job["output_errors"] == {"x": "the command did not run to its end"}
    assert manager.bus.payloads(StageOutFile) == []


async def test_a_job_without_output_files_ends_at_once_and_sends_no_stage_out(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager)
    assert manager.bus.payloads(SubmitTask)[0].stage_out is False
    await deliver(manager.task_completed, from_host(completed()))
    assert (await state(manager))["state"] == "succeeded" and manager.bus.payloads(StageOutFile) == []


def forgotten(manager: JobManager) -> list[str]:
    return [command.item_id for command in manager.bus.payloads(DeleteContent)]


async def test_deleting_a_job_forgets_its_stdout_and_stderr_once_and_keeps_its_outputs(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager, output_files=["*.csv"])
    await deliver(manager.task_completed, from_host(completed(stderr_id="err-1")))
    await deliver(manager.file_staged_out, from_host(FileStagedOut(job_id="job-1", files={"a.csv": "d-1"})))
    assert await deliver(manager.delete_job, Envelope(DeleteJob(job_id="job-1"))) == Accepted(id="job-1")
    assert sorted(forgotten(manager)) == ["err-1", "out-1"]  # a.csv's d-1 is the user's: it stays
    again = await deliver(manager.delete_job, Envelope(DeleteJob(job_id="job-1")))
    assert isinstance(again, Rejected) and again.status == 410 and len(forgotten(manager)) == 2


async def test_the_log_of_a_job_deleted_while_it_ran_is_forgotten_when_it_comes(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager, output_files=["x"])
    await deliver(manager.delete_job, Envelope(DeleteJob(job_id="job-1")))
    late = completed(outcome=JobState.CANCELLED, exit_code=-15, stderr_id="err-1")
    await deliver(manager.task_completed, from_host(late))  # the command ran to its end: its files are asked for
    assert forgotten(manager) == []
    await deliver(manager.file_staged_out, from_host(FileStagedOut(job_id="job-1", files={"x": "d-1"})))
    await deliver(manager.file_staged_out, from_host(FileStagedOut(job_id="job-1", files={"x": "d-1"})))  # redelivered
    await deliver(manager.task_completed, from_host(late))
    assert sorted(forgotten(manager)) == ["err-1", "out-1"]
    job = await state(manager)
    assert job["deleted"] is True and job["outputs"] == {"x": "d-1"}


async def test_a_job_whose_ttl_ran_out_forgets_its_log(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager, ttl=10)
    await deliver(manager.task_completed, from_host(completed()))
    manager.clock.now += 11
    await manager.sweep()
    await manager.sweep()
    assert forgotten(manager) == ["out-1"] and (await state(manager))["deleted_reason"] == "its ttl ran out"
