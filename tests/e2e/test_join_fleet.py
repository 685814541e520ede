"""A host that joins with the cluster join token, on the real RabbitMQ with every service a process:
it heartbeats but takes no job until it is authorized, and keeps its identity across restarts."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

import pytest

from broker.amqp import AmqpBus
from broker.envelope import Envelope
from broker.topology import Topology
from schemas.base import Accepted
from schemas.registry import all_message_types
from schemas.resources import AuthorizeResource
from tests.e2e.fleet import Fleet
from tests.e2e.harness import SkybusProcess, eventually

pytestmark = pytest.mark.amqp


@pytest.fixture
async def fleet(tmp_path, amqp_url: str):
    fleet = Fleet(tmp_path / "data", amqp_url, SKYBUS_JOB_SWEEP_INTERVAL="0.3")
    try:
        yield await fleet.start()
    finally:
        await fleet.stop()


async def authorize(fleet: Fleet, resource_id: str) -> None:
    """What the role manager does when an admin assigns the host a role."""
    topology = Topology(fleet.env["SKYBUS_NAMESPACE"])
    bus = AmqpBus(fleet.env["SKYBUS_AMQP_URL"], all_message_types(), topology, sender="test")
    await bus.start()
    try:
        reply = await bus.request(topology.commands, Envelope(AuthorizeResource(resource_id=resource_id)), timeout=10)
    finally:
        await bus.close()
    assert reply.payload == Accepted(id=resource_id)


async def test_a_joined_host_takes_jobs_once_authorized_and_keeps_its_id(fleet: Fleet) -> None:
    maker = await SkybusProcess(["token", "create", "--join"], fleet.env).start()
    assert await maker.wait() == 0, maker.log
    join_token = (await maker.wait_for_line(r"^SKYBUS_JOIN_TOKEN=(\S+)$")).group(1)
    args = ["agent", "--join-token", join_token, "--hostname", "joined-host"]
    agent = await SkybusProcess(args, fleet.env).start()
    try:
        found: dict = {}

        async def joined() -> bool:
            nonlocal found
            status, found = await fleet.call("GET", "/api/resources?hostname=joined-host")
            return status == 200

        await eventually(joined, timeout=30)
        resource_id = found["id"]
        credentials = fleet.data_dir / "agent-join" / "credentials.json"

        async def saved_as_joined() -> bool:  # the agent saves it once the join's answer is back
            return credentials.exists() and json.loads(credentials.read_text()).get("joined") is True

        await eventually(saved_as_joined, timeout=10)
        saved = json.loads(credentials.read_text())
        assert saved["resource_id"] == resource_id

        async def view() -> dict:
            status, body = await fleet.call("GET", f"/api/resources/{resource_id}")
            assert status == 200, body
            return body

        async def responding() -> bool:
            return (await view())["responding"] is True

        await eventually(responding, timeout=30)
        host = await view()
        assert host["authorized"] is False and host["user"] == ""

        status, created = await fleet.call("POST", "/api/job/run", json={"command": "true", "resource_id": resource_id})
        assert status == 201, created
        job_id = created["job_id"]
        await asyncio.sleep(2.0)  # several placement sweeps, with the host responding all along
        status, info = await fleet.call("GET", f"/api/job/job_info/{job_id}")
        assert info["state"] == "pending" and info["resource_id"] is None, info
        assert (await view())["responding"] is True

        await authorize(fleet, resource_id)
        assert (await view())["authorized"] is True

        async def succeeded() -> bool:
            _, info = await fleet.call("GET", f"/api/job/job_info/{job_id}")
            assert info["state"] in ("pending", "staging", "accepted", "running", "succeeded"), info
            return info["state"] == "succeeded"

        await eventually(succeeded, timeout=30, interval=0.2)
        _, info = await fleet.call("GET", f"/api/job/job_info/{job_id}")
        assert info["resource_id"] == resource_id and info["exit_code"] == 0

        # Restarted, the agent joins again with the credentials it saved: the same host.
        assert await agent.stop() == 0
        restarted_at = time.time()
        agent = await SkybusProcess(args, fleet.env).start()

        async def heard_since_restart() -> bool:
            body = await view()
            heard = body["last_response_time"]
            return body["responding"] and heard is not None and datetime.fromisoformat(heard).timestamp() > restarted_at

        await eventually(heard_since_restart, timeout=30)
        assert (await fleet.call("GET", "/api/resources?hostname=joined-host"))[1] == {"id": resource_id}
        assert (await view())["authorized"] is True
        assert json.loads((fleet.data_dir / "agent-join" / "credentials.json").read_text()) == saved
        assert any(f"joined as resource {resource_id}" in line for line in agent.log), agent.log[-20:]
    finally:
        await agent.stop()
