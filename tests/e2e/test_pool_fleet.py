"""Seed 003 on the real RabbitMQ, every service its own process: the answer of a separate agent
process comes back signed over direct reply-to; a stopped agent is 409, a hung one 504."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.containers import kill_containers, need_bubblewrap
from tests.e2e.fleet import Fleet
from tests.e2e.harness import eventually

pytestmark = pytest.mark.amqp

NODE_TIMEOUT = 2.0


async def fleet_for(tmp_path: Path, amqp_url: str, **env: str) -> Fleet:
    return await Fleet(
        tmp_path / "data",
        amqp_url,
        SKYBUS_NODE_TIMEOUT=str(NODE_TIMEOUT),
        SKYBUS_ALLOW_REBOOT="true",
        SKYBUS_REBOOT_COMMAND=f"date >> {tmp_path / 'rebooted'}",
        **env,
    ).start()


async def test_a_stopped_agent_makes_its_node_halted_and_its_calls_409(tmp_path: Path, amqp_url: str) -> None:
    need_bubblewrap()
    fleet = await fleet_for(tmp_path, amqp_url)
    try:
        node = f"/nodes/{fleet.agent_id}"
        status, [memory] = await fleet.call("GET", f"{node}/mem")
        assert status == 200 and memory["total"] > 0, fleet.logs()
        assert await fleet.call("POST", f"{node}/containers", json={"id": "amqp"}) == (204, b"")
        assert await fleet.call("GET", f"{node}/containers") == (
            200,
            [{"flist": "", "hostname": "amqp", "id": "amqp", "status": "running"}],
        )
        assert await fleet.call("POST", f"{node}/reboot") == (204, b"")
        assert (tmp_path / "rebooted").exists()

        assert await fleet.processes["agent"].stop() == 0

        async def halted() -> bool:
            _, nodes = await fleet.call("GET", "/nodes")
            return nodes == [{"hostname": "fleet-host", "id": fleet.agent_id, "status": "halted"}]

        await eventually(halted, timeout=15)
        for method, path in (("GET", f"{node}/mem"), ("GET", f"{node}/containers"), ("POST", f"{node}/reboot")):
            started = time.monotonic()
            status, body = await fleet.call(method, path)
            assert status == 409 and "not responding" in body["error"], body
            assert time.monotonic() - started < 1  # refused at once, not timed out
    finally:
        kill_containers(tmp_path)
        await fleet.stop()


async def test_a_hung_agent_is_504_within_the_timeout_and_does_not_act_late(tmp_path: Path, amqp_url: str) -> None:
    fleet = await fleet_for(tmp_path, amqp_url, SKYBUS_RESPONDING_TIMEOUT="60")  # hung, it still counts as responding
    agent = fleet.processes["agent"].process
    assert agent is not None
    try:
        node = f"/nodes/{fleet.agent_id}"
        assert (await fleet.call("GET", f"{node}/mem"))[0] == 200
        agent.send_signal(signal.SIGSTOP)
        for method, path in (("GET", f"{node}/mem"), ("POST", f"{node}/reboot")):
            started = time.monotonic()
            status, body = await fleet.call(method, path)
            took = time.monotonic() - started
            assert status == 504 and body == {"error": f"node {fleet.agent_id} did not answer within 2s"}, body
            assert NODE_TIMEOUT <= took < NODE_TIMEOUT + 1.5
        agent.send_signal(signal.SIGCONT)
        await asyncio.sleep(1.0)  # it now takes the queries it got while stopped: past their deadline
        assert (await fleet.call("GET", f"{node}/mem"))[0] == 200
        assert not (tmp_path / "rebooted").exists()  # the reboot nobody waits for any more did not happen
        assert any("past its deadline" in line for line in fleet.processes["agent"].log), fleet.logs()
    finally:
        agent.send_signal(signal.SIGCONT)
        await fleet.stop()
