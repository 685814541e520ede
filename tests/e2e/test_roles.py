"""Seed 002 end to end: versioned roles applied by running their scripts for real, on the local
host of ``skybus up`` and on a host whose agent joined the fleet with the cluster's join token
(``skybus up`` on RabbitMQ, ``skybus agent --join-token`` as its own process)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Skybus, SkybusProcess, eventually, skybus_env

ROLE_TIMINGS = {
    "SKYBUS_ROLE_ATTEMPTS": "3",
    "SKYBUS_ROLE_RETRY_DELAY": "0.3",
    "SKYBUS_ROLE_SWEEP_INTERVAL": "0.2",
    "SKYBUS_JOB_SWEEP_INTERVAL": "0.2",
}


@dataclass
class Target:
    """A running skybus and the host whose roles a test changes."""

    skybus: Skybus
    host_id: str

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await self.skybus.call(method, path.replace("{host}", self.host_id), **kwargs)


async def responding(skybus: Skybus, host_id: str) -> None:
    async def check() -> bool:
        status, body = await skybus.call("GET", f"/api/resources/{host_id}")
        return status == 200 and body["responding"]

    await eventually(check, timeout=30)


async def joined_agent(skybus: Skybus, tmp_path: Path, amqp_url: str, namespace: str) -> tuple[SkybusProcess, str]:
    """A second host: an agent that joins with a join token and shows up unauthorized."""
    maker = SkybusProcess(["token", "create", "--join"], skybus_env(SKYBUS_DATA_DIR=str(tmp_path / "data")))
    await maker.start()
    assert await maker.wait() == 0, maker.log
    join_token = (await maker.wait_for_line(r"^SKYBUS_JOIN_TOKEN=(\S+)$")).group(1)
    hostname = f"joined-{uuid.uuid4().hex[:6]}"
    env = skybus_env(
        SKYBUS_AMQP_URL=amqp_url,
        SKYBUS_NAMESPACE=namespace,
        SKYBUS_DATA_DIR=str(tmp_path / "joined-host"),
        SKYBUS_PUBLIC_URL=skybus.url,
    )
    agent = await SkybusProcess(["agent", "--join-token", join_token, "--hostname", hostname], env).start()
    found: dict = {}

    async def listed() -> bool:
        nonlocal found
        status, hosts = await skybus.call("GET", "/v1/hosts")
        found = next((h for h in hosts if h["info"]["hostname"] == hostname), {}) if status == 200 else {}
        return bool(found)

    try:
        await eventually(listed, timeout=30)
    except AssertionError:
        await agent.stop()  # the fixture never gets it to stop
        tail = "\n".join([*agent.log[-30:], "--- skybus up", *skybus.log[-30:]])
        raise AssertionError(f"the joined host {hostname} was never listed:\n{tail}") from None
    return agent, found["id"]


@pytest.fixture(params=["local", pytest.param("joined", marks=pytest.mark.amqp)])
async def target(request, tmp_path):
    env = dict(ROLE_TIMINGS)
    if request.param == "joined":
        amqp_url = request.getfixturevalue("amqp_url")
        namespace = f"roles-{uuid.uuid4().hex[:8]}"
        env.update(SKYBUS_AMQP_URL=amqp_url, SKYBUS_NAMESPACE=namespace)
    skybus = await Skybus(tmp_path / "data", **env).start()
    agent = None
    try:
        if request.param == "local":
            host_id = skybus.local_resource_id
        else:
            agent, host_id = await joined_agent(skybus, tmp_path, amqp_url, namespace)
            await check_unauthorized(skybus, host_id)
        yield Target(skybus, host_id)
    finally:
        if agent is not None:
            assert await agent.stop() == 0, agent.log[-30:]
        assert await skybus.stop() == 0, skybus.log[-30:]


async def check_unauthorized(skybus: Skybus, host_id: str) -> None:
    """A joined host is listed, inactive, without the fields the seed hides; it takes no jobs."""
    status, host = await skybus.call("GET", f"/v1/hosts/{host_id}")
    assert status == 200, host
    assert host["state"] == "inactive" and host["roles"] == [] and "role_status" not in host
    assert "responding" not in host["info"] and "last_response_time" not in host["info"]
    status, resource = await skybus.call("GET", f"/api/resources/{host_id}")
    assert status == 200 and resource["authorized"] is False
    await responding(skybus, host_id)  # it heartbeats all the same


def scripts(marker: Path, version: str) -> dict[str, str]:
    """Scripts that log each run and leave the installed version in a marker file."""
    log = marker.with_suffix(".log")
    return {
        "install": f'echo "install {version} from=$SKYBUS_ROLE_PREVIOUS_VERSION" >> {log}; echo {version} > {marker}',
        "remove": f'echo "remove {version}" >> {log}; rm -f {marker}',
    }


def runs(marker: Path) -> list[str]:
    log = marker.with_suffix(".log")
    return log.read_text().splitlines() if log.exists() else []


async def host(target: Target) -> dict:
    status, body = await target.call("GET", "/v1/hosts/{host}")
    assert status == 200, body
    return body


async def settled(target: Target, status: str = "ok", timeout: float = 20) -> dict:
    seen: dict = {}

    async def reached() -> bool:
        nonlocal seen
        seen = await host(target)
        return seen["role_status"] == status

    try:
        await eventually(reached, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"host never reached role_status {status}: {seen}") from None
    return seen


async def register(target: Target, name: str, version: str, marker: Path, **extra: str) -> None:
    body = {"version": version, "display_name": f"Role {name}", "description": f"{name} {version}"}
    status, created = await target.call(
        "POST", f"/v1/roles/{name}/versions", json={**body, **scripts(marker, version), **extra}
    )
    assert status == 201, created


async def test_a_role_is_installed_kept_updated_and_removed_by_its_scripts(target: Target, tmp_path: Path) -> None:
    marker = tmp_path / "roleA.installed"
    await register(target, "roleA", "1.0", marker)
    await register(target, "roleA", "2.0", marker)
    status, role = await target.call("GET", "/v1/roles/roleA")
    assert status == 200
    assert role == {"name": "roleA", "display_name": "Role roleA", "description": "roleA 1.0", "active_version": "1.0"}

    before = await host(target)
    assert before["state"] == "inactive" and before["roles"] == [] and before.get("role_status", "ok") == "ok"

    # Outcome 1: not present, so installed.
    status, applied = await target.call("PUT", "/v1/hosts/{host}/roles/roleA")
    assert status == 200, applied
    assert applied["state"] == "activating" and applied["role_status"] == "converging"
    assert applied["roles"] == ["roleA"]
    done = await settled(target)
    assert done["state"] == "active" and done["roles"] == ["roleA"]
    assert marker.read_text() == "1.0\n"
    assert runs(marker) == ["install 1.0 from="]

    # Outcome 2: present at the active version, so nothing runs.
    status, again = await target.call("PUT", "/v1/hosts/{host}/roles/roleA")
    assert status == 200 and again["role_status"] == "ok" and again["state"] == "active"
    await settled(target)
    assert runs(marker) == ["install 1.0 from="]

    # A new active version changes nothing until the role is reapplied; then outcome 3: updated.
    status, role = await target.call("PUT", "/v1/roles/roleA", json={"active_version": "2.0"})
    assert status == 200 and role["active_version"] == "2.0" and role["description"] == "roleA 2.0"
    assert (await host(target))["role_status"] == "ok" and marker.read_text() == "1.0\n"
    status, _ = await target.call("PUT", "/v1/hosts/{host}/roles/roleA")
    assert status == 200
    await settled(target)
    assert marker.read_text() == "2.0\n"
    assert runs(marker) == ["install 1.0 from=", "install 2.0 from=1.0"]
    status, detail = await target.call("GET", "/v1/hosts/{host}/roles/roleA")
    assert status == 200 and detail["version"] == "2.0" and detail["status"] == "ok"

    # Removing the last role runs the installed version's remove script; the host is inactive.
    status, removing = await target.call("DELETE", "/v1/hosts/{host}/roles/roleA")
    assert status == 200 and removing["roles"] == []
    done = await settled(target)
    assert done["state"] == "inactive" and done["roles"] == []
    assert not marker.exists()
    assert runs(marker)[-1] == "remove 2.0"


async def test_a_failing_install_is_retried_then_failed_with_its_output_readable(
    target: Target, tmp_path: Path
) -> None:
    marker = tmp_path / "broken.installed"
    install = f"echo attempt >> {marker.with_suffix('.log')}; echo 'no disk for you' >&2; exit 7"
    body = {"version": "0.1", "install": install, "remove": "true"}
    status, created = await target.call("POST", "/v1/roles/broken/versions", json=body)
    assert status == 201, created
    status, _ = await target.call("PUT", "/v1/hosts/{host}/roles/broken")
    assert status == 200
    seen: set[str] = set()

    async def failed() -> bool:
        seen.add((await host(target))["role_status"])
        return "failed" in seen

    await eventually(failed, timeout=30, interval=0.05)
    assert "retrying" in seen
    assert len(runs(marker)) == 3  # SKYBUS_ROLE_ATTEMPTS
    status, detail = await target.call("GET", "/v1/hosts/{host}/roles/broken")
    assert status == 200
    assert detail["status"] == "failed" and detail["exit_code"] == 7 and detail["attempts"] == 3
    assert "exited with 7" in detail["error"]
    status, answer = await target.call("GET", f"/api/data/{detail['answer_id']}")
    answer = answer if isinstance(answer, dict) else json.loads(answer)
    assert status == 200 and answer["exit_code"] == 7 and "no disk for you" in answer["stderr"]
    assert (await host(target))["state"] == "activating"

    # Reapplying a failed role tries again from the start.
    status, again = await target.call("PUT", "/v1/hosts/{host}/roles/broken")
    assert status == 200 and again["role_status"] in ("converging", "retrying")
    await eventually(lambda: _has_runs(marker, 4), timeout=20)


async def _has_runs(marker: Path, count: int) -> bool:
    return len(runs(marker)) >= count


async def test_deleting_a_host_removes_its_roles_and_forgets_it_until_its_next_heartbeat(
    target: Target, tmp_path: Path
) -> None:
    marker = tmp_path / "roleB.installed"
    await register(target, "roleB", "1", marker)
    assert (await target.call("DELETE", "/v1/hosts/{host}"))[0] == 204  # inactive: a no-op
    assert (await target.call("PUT", "/v1/hosts/{host}/roles/roleB"))[0] == 200
    await settled(target)
    assert marker.exists()
    status, _ = await target.call("DELETE", "/v1/hosts/{host}")
    assert status == 204

    async def removed_and_back() -> bool:
        status, body = await target.call("GET", "/v1/hosts/{host}")
        return not marker.exists() and status == 200 and body["state"] == "inactive" and body["roles"] == []

    await eventually(removed_and_back, timeout=20)
    assert runs(marker) == ["install 1 from=", "remove 1"]
