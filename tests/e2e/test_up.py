"""``skybus up`` as a user runs it: a subprocess on a free port with a fresh data dir."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

from tests.e2e.harness import Skybus, SkybusProcess, eventually, skybus_env


async def test_up_serves_seed_000_with_its_local_agent(tmp_path) -> None:
    skybus = await Skybus(tmp_path / "data").start()
    try:
        assert skybus.token, skybus.lines
        assert any("curl" in line and skybus.url in line for line in skybus.lines)

        async def local_host_responds() -> bool:
            status, body = await skybus.call("GET", f"/api/resources/{skybus.local_resource_id}")
            return status == 200 and body["responding"] is True

        await eventually(local_host_responds)
        status, local = await skybus.call("GET", f"/api/resources/{skybus.local_resource_id}")
        age = time.time() - datetime.fromisoformat(local["last_response_time"]).timestamp()
        assert 0 <= age < 5 and local["info"]["os_family"] == "linux"

        status, created = await skybus.call(
            "POST", "/api/resources", data='{"hostname": "my first one", "user": "steve"}'
        )
        assert status == 200 and set(created) == {"id", "token"}
        assert (await skybus.call("POST", "/api/resources", json={"hostname": "my first one", "user": "x"}))[0] == 400
        assert (await skybus.call("POST", "/api/resources", json={"user": "x"}))[0] == 400
        status, found = await skybus.call("GET", "/api/resources/?hostname=my%20first%20one")
        assert status == 200 and found == {"id": created["id"]}
        assert (await skybus.call("GET", "/api/resources/?hostname=nobody"))[0] == 404
        status, info = await skybus.call("GET", f"/api/resources/{created['id']}")
        assert status == 200 and info["hostname"] == "my first one" and info["responding"] is False
        assert (await skybus.call("GET", f"/api/resources/{uuid.uuid4()}"))[0] == 404
        assert (await skybus.call("GET", "/api/resources/not-a-uuid"))[0] == 400
        assert (await skybus.call("DELETE", f"/api/resources/{created['id']}"))[0] == 200
        assert (await skybus.call("DELETE", f"/api/resources/{created['id']}"))[0] == 404
        assert (await skybus.call("GET", f"/api/resources/{created['id']}", token="wrong"))[0] == 401
    finally:
        assert await skybus.stop() == 0, skybus.log[-20:]


async def test_restart_keeps_resources_and_tokens(tmp_path) -> None:
    data = tmp_path / "data"
    first = await Skybus(data).start()
    try:
        status, created = await first.call("POST", "/api/resources", json={"hostname": "kept", "user": "admin"})
        assert status == 200
    finally:
        assert await first.stop() == 0
    second = await Skybus(data).start()
    try:
        assert second.token is None  # printed once, at first start
        assert any("skybus token create" in line for line in second.lines)
        assert second.local_resource_id == first.local_resource_id
        status, body = await second.call("GET", f"/api/resources/{created['id']}", token=first.token)
        assert status == 200 and body["hostname"] == "kept"

        async def local_host_responds_again() -> bool:
            _, body = await second.call("GET", f"/api/resources/{first.local_resource_id}", token=first.token)
            return body["responding"] is True and (
                time.time() - datetime.fromisoformat(body["last_response_time"]).timestamp() < 2
            )

        await eventually(local_host_responds_again)
    finally:
        assert await second.stop() == 0


async def test_token_create_makes_a_working_user_token(tmp_path) -> None:
    data = tmp_path / "data"
    skybus = await Skybus(data).start()
    try:
        args = ["token", "create", "--user", "steve", "--data-dir", str(data)]
        maker = await SkybusProcess(args, skybus_env()).start()
        assert await maker.wait() == 0
        steve = (await maker.wait_for_line(r"^SKYBUS_TOKEN=(\S+)$")).group(1)
        status, _ = await skybus.call("POST", "/api/resources", token=steve, json={"hostname": "s1", "user": "steve"})
        assert status == 200
        status, _ = await skybus.call("GET", f"/api/resources/{skybus.local_resource_id}", token=steve)
        assert status == 403
    finally:
        assert await skybus.stop() == 0


async def test_agent_on_the_in_process_bus_says_why_it_cannot_run(tmp_path) -> None:
    agent = await SkybusProcess(["agent", "--resource-id", "x", "--token", "y"], skybus_env()).start()
    assert await agent.wait() == 2
    assert any("SKYBUS_AMQP_URL" in line for line in agent.log)


async def test_token_create_refuses_names_reserved_for_agents(tmp_path) -> None:
    args = ["token", "create", "--user", "agent:1234", "--data-dir", str(tmp_path / "data")]
    maker = await SkybusProcess(args, skybus_env()).start()
    assert await maker.wait() == 2
    assert any("reserved for agents" in line for line in maker.log)
