"""The job manager's handlers and sweep, called directly: real SQLite, a bus that records."""

from __future__ import annotations

import asyncio

import pytest

from broker import codec
from broker.envelope import Envelope
from broker.port import Drop
from broker.topology import Topology
from schemas.base import Accepted, Rejected
from schemas.content import DeleteContent
from schemas.jobs import (
    AgentCommandRefused,
    CancelJob,
    CancelTask,
    DeleteJob,
    FilesStagedIn,
    JobChanged,
    JobFinished,
    JobState,
    RunJob,
    StageJobFiles,
    SubmitTask,
    TaskAccepted,
    TaskCompleted,
    TaskRunning,
)
from schemas.resources import HostChanged, HostDeleted
from services.job_manager.handlers import JobManager, answer_id_of
from services.job_manager.hosts import Host, HostView
from services.job_manager.repository import jobs_collection
from services.security import new_token, signing_key, verify_key
from services.store.sqlite import SqliteDocumentStore
from tests.delivery import deliver
from tests.unit.test_resource_manager import Clock, RecordingBus

HOST_A = "aaaaaaaa-0000-4000-8000-000000000001"
HOST_B = "bbbbbbbb-0000-4000-8000-000000000002"
TOKENS = {HOST_A: new_token(), HOST_B: new_token()}


@pytest.fixture
async def manager(tmp_path):
    store = await SqliteDocumentStore.open(tmp_path / "jm.db")
    clock = Clock()
    records: dict[str, Host] = {}  # what the resource manager's records would answer

    async def read_host(resource_id: str) -> Host | None:
        return records.get(resource_id)

    async def read_hosts() -> list[Host]:
        return list(records.values())

    manager = JobManager(
        bus=RecordingBus(),  # type: ignore[arg-type]
        topology=Topology("t"),
        jobs=await jobs_collection(store),
        read_host=read_host,
        read_hosts=read_hosts,
        lost_timeout=30.0,
        start_timeout=60.0,
        clock=clock,
    )
    manager.records = records  # type: ignore[attr-defined]
    yield manager
    await store.close()


def host_changed(manager: JobManager, resource_id: str, change: str = "registered", **fields) -> Envelope:
    """The resource manager's event for a host (each one a newer version of its record)."""
    known = manager.hosts.get(resource_id)
    state = {"authorized": True, "responding": True, "last_response_time": manager.clock(), "user": "admin"}
    if known is not None:
        state.update(
            authorized=known.authorized, responding=known.responding, last_response_time=known.last_response_time
        )
    state.update(fields)
    version = (known.version if known is not None else 0) + 1
    event = HostChanged(
        resource_id=resource_id, change=change, at=manager.clock(), version=version, joined=False,
        verify_key=verify_key(TOKENS[resource_id]), **state,
    )  # fmt: skip
    manager.records[resource_id] = host_from_event(event)  # stored before it was published
    return Envelope(event, sender="resource-manager", resource_id=resource_id)


def host_from_event(event: HostChanged) -> Host:
    view = HostView()
    return view.apply(event)[1]


async def add_host(manager: JobManager, resource_id: str, *, responding: bool = True, authorized: bool = True) -> None:
    await deliver(
        manager.host_changed, host_changed(manager, resource_id, responding=responding, authorized=authorized)
    )


async def run(manager: JobManager, job_id: str = "job-1", **fields) -> Envelope:
    envelope = Envelope(RunJob(job_id=job_id, user="steve", command="true", **fields))
    assert await deliver(manager.run_job, envelope) == Accepted(id=job_id)
    return envelope


def from_host(payload, resource_id: str = HOST_A, *, token: str | None = None) -> Envelope:
    """An event as the agent of ``resource_id`` sends it: signed with its token."""
    envelope = Envelope(payload, resource_id=resource_id, sender=f"agent:{resource_id}")
    key = signing_key(token or TOKENS[resource_id])
    return envelope.with_signature(key.sign(codec.signed_bytes(envelope)))


async def state(manager: JobManager, job_id: str = "job-1") -> dict:
    return await manager.jobs.get(job_id)


async def test_a_job_is_placed_and_submitted_straight_to_its_agent(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager)
    job = await state(manager)
    assert job["state"] == "staging" and job["resource_id"] == HOST_A
    assert job["start_by"] == job["dispatched_at"] + 60.0
    sent = {type(e.payload): (x, manager.bus.routing_keys[e.message_id], e) for x, e in manager.bus.published}
    assert set(sent) == {SubmitTask, JobChanged}  # two messages, and nothing waited on
    exchange, key, submitted = sent[SubmitTask]
    assert (exchange, key, submitted.resource_id) == ("t.agent-commands", f"{HOST_A}.agent.submit_task", HOST_A)
    exchange, _, changed = sent[JobChanged]
    assert exchange == "t.events" and changed.payload.state == "staging" and changed.payload.user == "steve"


async def test_fewest_running_jobs_wins(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await add_host(manager, HOST_B)
    for n in range(4):
        await run(manager, f"job-{n}")
    placed = [(await state(manager, f"job-{n}"))["resource_id"] for n in range(4)]
    assert sorted(placed) == sorted([HOST_A, HOST_B] * 2)


async def test_redelivered_run_keeps_one_job(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    envelope = await run(manager)
    assert await deliver(manager.run_job, envelope) == Accepted(id="job-1")
    assert await manager.jobs.count() == 1
    assert (await state(manager))["history"][-1]["state"] == "staging"


async def test_no_host_waits_pending_then_is_placed_by_the_sweep(manager: JobManager) -> None:
    await run(manager)
    assert (await state(manager))["state"] == "pending"
    await manager.sweep()
    assert (await state(manager))["state"] == "pending"
    manager.records[HOST_A] = Host(HOST_A, "admin", True, False, True, "", True, manager.clock(), None, 1)
    manager.clock.now += 31  # the periodic re-read of every host finds it (its event was missed)
    await manager.sweep()
    assert (await state(manager))["resource_id"] == HOST_A


async def test_a_host_that_comes_up_takes_the_waiting_jobs_at_once(manager: JobManager) -> None:
    await run(manager)
    await add_host(manager, HOST_A)
    assert (await state(manager))["resource_id"] == HOST_A


async def test_pinned_job_waits_for_its_host(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await add_host(manager, HOST_B, responding=False)
    await run(manager, resource_id=HOST_B)
    assert (await state(manager))["state"] == "pending"
    await deliver(manager.host_changed, host_changed(manager, HOST_B, "responding", responding=True))
    assert (await state(manager))["resource_id"] == HOST_B


async def test_a_pending_job_whose_pinned_host_is_deleted_is_lost_not_pending_forever(manager: JobManager) -> None:
    await add_host(manager, HOST_B, responding=False)
    await run(manager, "job-1", resource_id=HOST_B)
    await run(manager, "job-2", resource_id=HOST_B)
    await deliver(manager.host_deleted, Envelope(HostDeleted(resource_id=HOST_B)))
    job = await state(manager, "job-1")
    assert job["state"] == "lost" and "was deleted" in job["error"]
    assert (await state(manager, "job-2"))["state"] == "lost"
    # and one that arrives after its host went (the gateway checked it just before) is lost at once
    await run(manager, "job-3", resource_id=HOST_B)
    await manager.sweep()
    assert (await state(manager, "job-3"))["state"] == "lost"


async def test_an_unauthorized_host_is_never_chosen(manager: JobManager) -> None:
    await add_host(manager, HOST_A, authorized=False)
    await run(manager, "anywhere")
    await run(manager, "pinned", resource_id=HOST_A)
    await manager.sweep()
    for job_id in ("anywhere", "pinned"):
        job = await state(manager, job_id)
        assert job["state"] == "pending" and job["resource_id"] is None
    assert {type(e.payload) for _, e in manager.bus.published} == {JobChanged}

    await deliver(manager.host_changed, host_changed(manager, HOST_A, "authorized", authorized=True))  # an admin did
    assert {(await state(manager, job_id))["resource_id"] for job_id in ("anywhere", "pinned")} == {HOST_A}


def test_choose_host_takes_only_authorized_responding_hosts() -> None:
    from services.job_manager.domain import choose_host

    def host(resource_id: str, *, authorized: bool, responding: bool) -> Host:
        return Host(resource_id, "u", authorized, False, responding, "", True, None, None, 1)

    hosts = [
        host("a", authorized=False, responding=True),
        host("b", authorized=True, responding=False),
        host("c", authorized=True, responding=True),
    ]
    assert choose_host(hosts, {"c": 9}) == "c"
    assert choose_host(hosts[:2], {}) is None


async def test_placement_skips_an_unauthorized_host_for_an_authorized_one(manager: JobManager) -> None:
    await add_host(manager, HOST_A, authorized=False)  # the lower id, and idle: it would win
    await add_host(manager, HOST_B)
    for n in range(3):
        await run(manager, f"job-{n}")
    assert {(await state(manager, f"job-{n}"))["resource_id"] for n in range(3)} == {HOST_B}


async def test_lifecycle_is_recorded_once_in_order(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager)
    t = manager.clock()
    for event in (
        TaskAccepted(job_id="job-1", at=t + 1),
        TaskAccepted(job_id="job-1", at=t + 1),
        TaskRunning(job_id="job-1", at=t + 2, pid=42),
        TaskCompleted(job_id="job-1", at=t + 3, outcome=JobState.SUCCEEDED, exit_code=0, answer_id="ans-1"),
        TaskCompleted(job_id="job-1", at=t + 9, outcome=JobState.FAILED, exit_code=1, answer_id="ans-2"),
        TaskRunning(job_id="job-1", at=t + 10, pid=42),
    ):
        await manager.event_router()(from_host(event))
    job = await state(manager)
    assert [step["state"] for step in job["history"]] == ["pending", "staging", "accepted", "running", "succeeded"]
    assert job["answer_id"] == "ans-1" and job["exit_code"] == 0
    assert (job["started_at"], job["finished_at"]) == (t + 2, t + 3)


async def test_running_before_accepted_still_records_both(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager)
    await deliver(manager.task_running, from_host(TaskRunning(job_id="job-1", at=5.0, pid=1)))
    assert [s["state"] for s in (await state(manager))["history"]][-2:] == ["accepted", "running"]


async def test_another_host_cannot_report_on_a_job(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await add_host(manager, HOST_B)
    await run(manager, resource_id=HOST_A)
    forged = TaskCompleted(job_id="job-1", at=1.0, outcome=JobState.SUCCEEDED, exit_code=0)
    await deliver(manager.task_completed, from_host(forged, HOST_B))
    assert (await state(manager))["state"] == "staging"


@pytest.mark.parametrize("forgery", ["unsigned", "another token", "unknown host"])
async def test_an_event_not_signed_by_its_host_is_dropped_and_counted(manager: JobManager, forgery: str) -> None:
    await add_host(manager, HOST_A)
    await run(manager)
    done = TaskCompleted(job_id="job-1", at=1.0, outcome=JobState.SUCCEEDED, exit_code=0, answer="{}")
    if forgery == "unsigned":
        event = Envelope(done, resource_id=HOST_A)
    elif forgery == "another token":
        event = from_host(done, token=TOKENS[HOST_B])
    else:
        event = from_host(done, HOST_B)  # a host this manager never heard of, nor its records
    with pytest.raises(Drop):
        await manager.event_router()(event)
    assert sum(manager.rejected_events.values()) == 1
    assert (await state(manager))["state"] == "staging"


async def test_a_host_adopted_since_it_was_heard_of_is_read_again(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager)
    new_owner = new_token()  # a joining agent adopted the host: its key changed, the event is not here yet
    manager.records[HOST_A] = Host(HOST_A, "admin", True, True, True, verify_key(new_owner), True, None, None, 9)
    done = TaskCompleted(job_id="job-1", at=1.0, outcome=JobState.SUCCEEDED, exit_code=0)
    await deliver(manager.task_completed, from_host(done, token=new_owner))
    assert (await state(manager))["state"] == "succeeded"


async def test_cancel(manager: JobManager) -> None:
    await run(manager, "waiting")
    assert await deliver(manager.cancel_job, Envelope(CancelJob(job_id="waiting"))) == Accepted(id="waiting")
    assert (await state(manager, "waiting"))["state"] == "cancelled"
    again = await deliver(manager.cancel_job, Envelope(CancelJob(job_id="waiting")))
    assert isinstance(again, Rejected) and again.status == 409
    missing = await deliver(manager.cancel_job, Envelope(CancelJob(job_id="nope")))
    assert isinstance(missing, Rejected) and missing.status == 404

    await add_host(manager, HOST_A)
    await run(manager, "busy")
    await deliver(manager.cancel_job, Envelope(CancelJob(job_id="busy")))
    cancels = [e for _, e in manager.bus.published if isinstance(e.payload, CancelTask)]
    assert len(cancels) == 1 and cancels[0].resource_id == HOST_A
    assert (await state(manager, "busy"))["cancel_requested"] is True
    done = TaskCompleted(job_id="busy", at=9.0, outcome=JobState.CANCELLED, exit_code=-15)
    await deliver(manager.task_completed, from_host(done))
    assert (await state(manager, "busy"))["state"] == "cancelled"


async def test_delete_cancels_and_forgets_the_answer(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager, "done")
    done = TaskCompleted(job_id="done", at=9.0, outcome=JobState.SUCCEEDED, exit_code=0, answer_id="ans")
    await deliver(manager.task_completed, from_host(done))
    assert await deliver(manager.delete_job, Envelope(DeleteJob(job_id="done"))) == Accepted(id="done")
    assert (await state(manager, "done"))["deleted"] is True
    assert [e.payload for _, e in manager.bus.published if isinstance(e.payload, DeleteContent)] == [
        DeleteContent(item_id="ans")
    ]
    gone = await deliver(manager.delete_job, Envelope(DeleteJob(job_id="done")))
    assert isinstance(gone, Rejected) and gone.status == 410

    await run(manager, "busy")
    await deliver(manager.delete_job, Envelope(DeleteJob(job_id="busy")))
    assert any(isinstance(e.payload, CancelTask) and e.payload.job_id == "busy" for _, e in manager.bus.published)
    late = TaskCompleted(job_id="busy", at=9.0, outcome=JobState.CANCELLED, answer_id="ans-busy")
    await deliver(manager.task_completed, from_host(late))
    assert DeleteContent(item_id="ans-busy") in [e.payload for _, e in manager.bus.published]


async def test_ttl_runs_out(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager, ttl=10)
    manager.clock.now += 11
    await manager.sweep()
    job = await state(manager)
    assert job["deleted"] is True and job["deleted_reason"] == "its ttl ran out"
    assert any(isinstance(e.payload, CancelTask) for _, e in manager.bus.published)


async def test_silent_host_makes_its_jobs_lost(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager)
    await deliver(manager.task_running, from_host(TaskRunning(job_id="job-1", at=1.0, pid=1)))
    heard = manager.clock()
    manager.clock.now += 15
    await deliver(
        manager.host_changed, host_changed(manager, HOST_A, "unresponsive", responding=False, last_response_time=heard)
    )
    manager.clock.now += 14
    await manager.sweep()
    assert (await state(manager))["state"] == "running"
    manager.clock.now += 2
    await manager.sweep()
    job = await state(manager)
    assert job["state"] == "lost" and "has not responded for over 30s" in job["error"]


async def test_a_job_its_silent_host_never_started_is_lost_only_once_no_agent_may_start_it(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager)
    job = await state(manager)
    await deliver(
        manager.host_changed,
        host_changed(manager, HOST_A, "unresponsive", responding=False, last_response_time=manager.clock()),
    )
    manager.clock.now = job["start_by"]  # silent for 60 s, but an agent back now could still start it
    await manager.sweep()
    assert (await state(manager))["state"] == "staging"
    manager.clock.now += 0.1  # from here on, no agent starts it (SubmitTask.start_by)
    await manager.sweep()
    assert (await state(manager))["state"] == "lost"


async def test_refused_dispatch_is_placed_again(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager)
    refusal = AgentCommandRefused(resource_id=HOST_A, command_type="agent.submit_task", job_id="job-1", reason="x")
    await deliver(manager.command_refused, Envelope(refusal))
    assert (await state(manager))["resource_id"] is None
    await manager.sweep()
    assert (await state(manager))["resource_id"] == HOST_A
    assert [s["state"] for s in (await state(manager))["history"]] == ["pending", "staging"]


async def test_files_are_staged_before_the_task_is_submitted(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager, binary="bin-1", input_files=["in-1"])
    staged = [e.payload for _, e in manager.bus.published if isinstance(e.payload, StageJobFiles)]
    assert len(staged) == 1 and staged[0].resource_id == HOST_A
    assert (staged[0].data_ids, staged[0].binary) == (["bin-1", "in-1"], "bin-1")  # the content manager names them
    assert not any(isinstance(e.payload, SubmitTask) for _, e in manager.bus.published)
    await deliver(manager.files_staged_in, from_host(FilesStagedIn(job_id="job-1", ok=True)))
    assert any(isinstance(e.payload, SubmitTask) for _, e in manager.bus.published)

    await run(manager, "job-2", binary="bin-1")
    await deliver(manager.files_staged_in, from_host(FilesStagedIn(job_id="job-2", ok=False, error="404")))
    job = await state(manager, "job-2")
    assert job["state"] == "failed" and "staging files failed: 404" in job["error"]


async def test_concurrent_events_of_one_job_are_taken_one_at_a_time(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager)
    router = manager.event_router()
    await asyncio.gather(
        router(from_host(TaskCompleted(job_id="job-1", at=3.0, outcome=JobState.SUCCEEDED, exit_code=0))),
        router(from_host(TaskRunning(job_id="job-1", at=2.0, pid=1))),
        router(from_host(TaskAccepted(job_id="job-1", at=1.0))),
    )
    job = await state(manager)
    assert job["state"] == "succeeded" and job["history"][-1]["state"] == "succeeded"
    assert [s["state"] for s in job["history"]].count("succeeded") == 1
    assert manager.per_job.locked_keys == 0


async def test_one_message_can_carry_several_steps(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager, "quick")
    done = TaskCompleted(
        job_id="quick", at=3.0, outcome=JobState.SUCCEEDED, exit_code=0, accepted_at=1.0, started_at=2.0
    )
    await deliver(manager.task_completed, from_host(done))
    job = await state(manager, "quick")
    assert [(s["state"], s["at"]) for s in job["history"][2:]] == [
        ("accepted", 1.0),
        ("running", 2.0),
        ("succeeded", 3.0),
    ]
    assert (job["accepted_at"], job["started_at"], job["finished_at"]) == (1.0, 2.0, 3.0)

    await run(manager, "slow")
    await deliver(manager.task_running, from_host(TaskRunning(job_id="slow", at=5.0, pid=9, accepted_at=4.0)))
    job = await state(manager, "slow")
    assert [(s["state"], s["at"]) for s in job["history"][2:]] == [("accepted", 4.0), ("running", 5.0)]


async def test_a_small_answer_is_kept_in_the_jobs_record_without_asking_anyone(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager)
    manager.bus.published.clear()
    done = from_host(TaskCompleted(job_id="job-1", at=3.0, outcome=JobState.SUCCEEDED, exit_code=0, answer="{}"))
    await deliver(manager.task_completed, done)
    await deliver(manager.task_completed, done)
    job = await state(manager)
    assert job["answer"] == "{}" and job["answer_id"] == answer_id_of("job-1")
    [changed] = [e.payload for _, e in manager.bus.published]  # one message: the change, and no request
    assert changed == JobChanged(
        job_id="job-1", user="steve", state="succeeded", at=3.0, exit_code=0, answer_id=answer_id_of("job-1")
    )
    await deliver(manager.delete_job, Envelope(DeleteJob(job_id="job-1")))
    job = await state(manager)
    assert job["answer"] is None and job["deleted"] is True  # the answer goes with its job
    assert not [e for _, e in manager.bus.published if isinstance(e.payload, DeleteContent)]
    assert manager.bus.payloads(JobChanged)[-1].deleted is True


async def test_every_change_of_a_job_is_broadcast(manager: JobManager) -> None:
    await run(manager)
    await add_host(manager, HOST_A)
    await deliver(manager.task_running, from_host(TaskRunning(job_id="job-1", at=5.0, pid=9)))
    await deliver(
        manager.task_completed, from_host(TaskCompleted(job_id="job-1", at=6.0, outcome="failed", exit_code=2))
    )
    states = [(c.state, c.exit_code) for c in manager.bus.payloads(JobChanged)]
    assert states == [("pending", None), ("staging", None), ("running", None), ("failed", 2)]


async def test_asking_again_for_a_finished_job_tells_its_end_again(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    envelope = await run(manager, origin="role-manager")
    await deliver(
        manager.task_completed, from_host(TaskCompleted(job_id="job-1", at=6.0, outcome="succeeded", exit_code=0))
    )
    assert len(manager.bus.payloads(JobFinished)) == 1
    assert await deliver(manager.run_job, envelope) == Accepted(id="job-1")  # the role manager missed the end
    assert [f.state for f in manager.bus.payloads(JobFinished)] == ["succeeded", "succeeded"]
    assert await manager.jobs.count() == 1


async def test_a_run_redelivered_after_placement_sends_the_task_again(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    envelope = await run(manager)
    manager.bus.published.clear()  # as if the job manager died before its SubmitTask left
    assert await deliver(manager.run_job, envelope) == Accepted(id="job-1")
    assert {type(e.payload) for _, e in manager.bus.published} == {SubmitTask, JobChanged}


async def test_a_users_own_host_takes_only_that_users_jobs_and_the_shared_fleet_anyones(manager: JobManager) -> None:
    await deliver(
        manager.host_changed, host_changed(manager, HOST_A, user="alice", shared=False)
    )  # alice registered it
    await run(manager, "bobs")  # steve's job, pinned nowhere: not on alice's host
    assert (await state(manager, "bobs"))["state"] == "pending"
    await manager.jobs.insert({**(await state(manager, "bobs")), "id": "alices", "user": "alice", "version": 0})
    await manager.sweep()
    assert (await state(manager, "alices"))["resource_id"] == HOST_A
    assert (await state(manager, "bobs"))["resource_id"] is None
    await add_host(manager, HOST_B)  # the shared fleet takes anyone's
    assert (await state(manager, "bobs"))["resource_id"] == HOST_B


async def test_a_job_that_ended_lost_is_stopped_when_its_agent_comes_back_still_running_it(manager: JobManager) -> None:
    await add_host(manager, HOST_A)
    await run(manager)
    await deliver(manager.task_running, from_host(TaskRunning(job_id="job-1", at=1.0, pid=1)))
    heard = manager.clock()
    await deliver(
        manager.host_changed, host_changed(manager, HOST_A, "unresponsive", responding=False, last_response_time=heard)
    )
    manager.clock.now += 31
    await manager.sweep()
    assert (await state(manager))["state"] == "lost"
    manager.bus.published.clear()
    back = host_changed(manager, HOST_A, "responding", responding=True, running_jobs=["job-1"])
    await deliver(manager.host_changed, back)
    [cancel] = manager.bus.payloads(CancelTask)
    assert cancel.job_id == "job-1" and "ended lost" in cancel.reason
