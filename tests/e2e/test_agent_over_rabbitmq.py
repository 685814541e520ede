"""A second host's agent, as its own process, joining ``skybus up`` over the real RabbitMQ."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime

import pytest

from tests.e2e.harness import Skybus, SkybusProcess, eventually, skybus_env

pytestmark = pytest.mark.amqp


def agent_process(amqp_url: str, namespace: str, resource_id: str, token: str) -> SkybusProcess:
    env = skybus_env(SKYBUS_AMQP_URL=amqp_url, SKYBUS_NAMESPACE=namespace)
    return SkybusProcess(["agent", "--resource-id", resource_id, "--token", token], env)


async def test_remote_agent_becomes_responding_then_not(tmp_path, amqp_url: str) -> None:
    namespace = f"e2e-{uuid.uuid4().hex[:8]}"
    skybus = await Skybus(tmp_path / "data", SKYBUS_AMQP_URL=amqp_url, SKYBUS_NAMESPACE=namespace).start()
    agents: list[SkybusProcess] = []
    try:
        status, created = await skybus.call("POST", "/api/resources", json={"hostname": "second", "user": "admin"})
        assert status == 200
        status, impostor = await skybus.call("POST", "/api/resources", json={"hostname": "third", "user": "admin"})
        assert status == 200

        async def view(resource_id: str) -> dict:
            status, body = await skybus.call("GET", f"/api/resources/{resource_id}")
            assert status == 200
            return body

        assert (await view(created["id"]))["responding"] is False
        agents.append(await agent_process(amqp_url, namespace, created["id"], created["token"]).start())
        # The same host id with somebody else's token: its heartbeats must never count.
        agents.append(await agent_process(amqp_url, namespace, impostor["id"], created["token"]).start())

        async def responding() -> bool:
            return (await view(created["id"]))["responding"] is True

        await eventually(responding, timeout=20)
        body = await view(created["id"])
        assert time.time() - datetime.fromisoformat(body["last_response_time"]).timestamp() < 3
        assert body["info"]["hostname"]

        await asyncio.sleep(2.5)  # longer than the responding timeout
        wrong = await view(impostor["id"])
        assert wrong["responding"] is False and wrong["last_response_time"] is None

        assert await agents[0].stop() == 0

        async def silent() -> bool:
            return (await view(created["id"]))["responding"] is False

        await eventually(silent, timeout=10)
    finally:
        for agent in agents:
            await agent.stop()
        assert await skybus.stop() == 0
