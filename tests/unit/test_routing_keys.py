"""A manager acts on an agent event only when its signature and the routing key it came under name one
host (issue 11, item 4): ``<resource_id>.<type>``, the one key that host's broker user may publish it
under. Handlers called through their routers, with the key as the bus would set it."""

from __future__ import annotations

import pytest

from broker.envelope import Envelope
from broker.port import Drop
from broker.topology import Topology
from schemas.jobs import JobState, TaskCompleted
from schemas.resources import Heartbeat
from services.job_manager.handlers import JobManager
from services.resource_manager.handlers import ResourceManager
from tests.unit.test_job_manager import HOST_A, HOST_B, add_host, from_host, run, state
from tests.unit.test_job_manager import manager as job_manager  # noqa: F401  (a fixture)
from tests.unit.test_resource_manager import FACTS, registered, signed
from tests.unit.test_resource_manager import manager as resource_manager  # noqa: F401  (a fixture)

key = Topology.agent_routing_key


@pytest.mark.parametrize("under", ["another host's key", "another type's key", "a command's key"])
async def test_a_heartbeat_under_a_key_not_its_hosts_is_dropped_and_counted(
    resource_manager: ResourceManager,  # noqa: F811
    under: str,
) -> None:
    resource_id, token = await registered(resource_manager)
    victim_id, _ = await registered(resource_manager, "web-2")
    beat = signed(Envelope(Heartbeat(facts=FACTS), resource_id=resource_id), token)
    wrong = {
        "another host's key": key(victim_id, beat.type),
        "another type's key": key(resource_id, "task.completed"),
        "a command's key": beat.type,
    }[under]
    with pytest.raises(Drop, match="came under key"):
        await resource_manager.heartbeat_router()(beat.delivered_under(wrong))
    assert resource_manager.rejected_events == {"wrong routing key": 1}
    assert (await resource_manager.resources.get(resource_id))["responding"] is False

    await resource_manager.heartbeat_router()(beat.delivered_under(key(resource_id, beat.type)))
    assert (await resource_manager.resources.get(resource_id))["responding"] is True


async def test_a_task_event_signed_by_one_host_and_sent_under_anothers_key_is_dropped(
    job_manager: JobManager,  # noqa: F811
) -> None:
    """Host B replays A's genuinely signed event under its own key, the only one its broker user may use."""
    await add_host(job_manager, HOST_A)
    await add_host(job_manager, HOST_B)
    await run(job_manager, resource_id=HOST_A)
    done = from_host(TaskCompleted(job_id="job-1", at=1.0, outcome=JobState.SUCCEEDED, exit_code=0, answer="{}"))
    with pytest.raises(Drop, match="came under key"):
        await job_manager.event_router()(done.delivered_under(key(HOST_B, done.type)))
    assert job_manager.rejected_events == {"wrong routing key": 1}
    assert (await state(job_manager))["state"] == "staging"

    await job_manager.event_router()(done.delivered_under(key(HOST_A, done.type)))
    assert (await state(job_manager))["state"] == "succeeded"
