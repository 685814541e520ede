"""``retries``: a job that would end lost runs again (elsewhere when it can), with backoff, under a new
task id for its agent; without retries a lost job stays lost. Handlers called directly."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.jobs import RunJobBody, SubmitTask, TaskCompleted, TaskRunning
from services.job_manager import domain
from services.job_manager.handlers import JobManager
from tests.delivery import deliver
from tests.unit.test_job_manager import HOST_A, HOST_B, add_host, from_host, host_changed, manager, run, state

__all__ = ["manager"]  # the fixture


async def lose_host(manager: JobManager, resource_id: str) -> None:
    """``resource_id`` goes silent long enough for its jobs to be lost at the next sweep."""
    heard = manager.clock()
    await deliver(
        manager.host_changed,
        host_changed(manager, resource_id, "unresponsive", responding=False, last_response_time=heard),
    )
    manager.clock.now += 61  # past its lost timeout (30 s) and the start_by of a job not started yet (60 s)
    await manager.sweep()


def submitted(manager: JobManager) -> list[tuple[str, str | None]]:
    return [(e.payload.job_id, e.resource_id) for _, e in manager.bus.published if isinstance(e.payload, SubmitTask)]


async def test_a_lost_job_with_retries_runs_again_on_another_host_after_its_backoff(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager, retries=2)
    await add_host(manager, HOST_B)
    assert (await state(manager))["resource_id"] == HOST_A
    await deliver(manager.task_running, from_host(TaskRunning(job_id="job-1", at=manager.clock(), pid=1)))
    await lose_host(manager, HOST_A)

    job = await state(manager)
    assert (job["state"], job["attempt"], job["resource_id"], job["lost_on"]) == ("pending", 2, None, [HOST_A])
    assert [(s["state"], s.get("attempt")) for s in job["history"]][-2:] == [("lost", 1), ("pending", 2)]
    assert "has not responded" in job["history"][-2]["error"]
    assert job["retry_at"] == manager.clock() + 1.0

    manager.clock.now += 0.5
    await manager.sweep()
    assert (await state(manager))["state"] == "pending"  # still in its backoff
    manager.clock.now += 0.6
    await manager.sweep()
    job = await state(manager)
    assert (job["state"], job["resource_id"]) == ("staging", HOST_B)
    assert submitted(manager)[-1] == ("job-1.2", HOST_B)  # a task id the agents have never seen


async def test_events_of_an_earlier_attempt_change_nothing(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await add_host(manager, HOST_B)
    await run(manager, retries=1)
    first = (await state(manager))["resource_id"]
    await lose_host(manager, first)
    manager.clock.now += 1.0
    await manager.sweep()
    second = (await state(manager))["resource_id"]
    assert second not in (None, first)

    late = TaskCompleted(job_id="job-1", at=manager.clock(), outcome="succeeded", exit_code=0, answer="{}")
    await deliver(manager.task_completed, from_host(late, first))
    assert (await state(manager))["state"] == "staging"
    done = TaskCompleted(job_id="job-1.2", at=manager.clock(), outcome="succeeded", exit_code=0, answer="{}")
    await deliver(manager.task_completed, from_host(done, second))
    job = await state(manager)
    assert (job["state"], job["attempt"], job["exit_code"]) == ("succeeded", 2, 0)
    finals = [step["state"] for step in job["history"] if step["state"] in {"succeeded", "lost"}]
    assert finals == ["lost", "succeeded"]  # the lost one is an attempt's end, marked with its attempt


async def test_retries_run_out_and_the_job_ends_lost(manager: JobManager) -> None:
    await add_host(manager, HOST_A)  # the only host: each attempt goes to it again
    await run(manager, retries=1)
    await lose_host(manager, HOST_A)
    assert (await state(manager))["attempt"] == 2
    await add_host(manager, HOST_A)  # back
    manager.clock.now += 1.0
    await manager.sweep()
    assert submitted(manager)[-1] == ("job-1.2", HOST_A)
    agent_lost = TaskCompleted(job_id="job-1.2", at=manager.clock(), outcome="lost", error="the agent restarted")
    await deliver(manager.task_completed, from_host(agent_lost, HOST_A))
    job = await state(manager)
    assert (job["state"], job["attempt"], job["error"]) == ("lost", 2, "the agent restarted")


async def test_without_retries_a_lost_job_stays_lost(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await add_host(manager, HOST_B)
    await run(manager)
    await lose_host(manager, (await state(manager))["resource_id"])
    manager.clock.now += 60
    await manager.sweep()
    job = await state(manager)
    assert (job["state"], job["attempt"]) == ("lost", 1) and len(submitted(manager)) == 1


def test_backoff_doubles_up_to_a_minute() -> None:
    assert [domain.retry_backoff(n) for n in (1, 2, 3, 4, 8)] == [1.0, 2.0, 4.0, 8.0, 60.0]


def test_task_ids_name_the_job_and_its_attempt() -> None:
    job_id = "0b9e6a3c-1d2e-4f5a-8b7c-6d5e4f3a2b1c"
    assert domain.task_id({"id": job_id}) == job_id
    assert domain.task_id({"id": job_id, "attempt": 3}) == f"{job_id}.3"
    assert domain.parse_task_id(f"{job_id}.3") == (job_id, 3)
    assert domain.parse_task_id(job_id) == (job_id, 1)


def test_retries_are_bounded() -> None:
    assert RunJobBody(command="true", retries=10).retries == 10
    assert RunJobBody(command="true").retries == 0
    for bad in (-1, 11, "2"):
        with pytest.raises(ValidationError):
            RunJobBody(command="true", retries=bad)
