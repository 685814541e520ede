"""Roles on the real RabbitMQ with every service a separate process: a role manager killed with
SIGKILL in the middle of applying roles leaves every host converged, each script run once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e.fleet import Fleet
from tests.e2e.harness import eventually

pytestmark = pytest.mark.amqp


@pytest.fixture
async def fleet(tmp_path, amqp_url: str):
    fleet = Fleet(
        tmp_path / "data",
        amqp_url,
        SKYBUS_JOB_SWEEP_INTERVAL="0.3",
        SKYBUS_ROLE_SWEEP_INTERVAL="0.3",
        SKYBUS_ROLE_RETRY_DELAY="0.5",
    )
    try:
        yield await fleet.start()
    finally:
        await fleet.stop()


async def host(fleet: Fleet) -> dict:
    status, body = await fleet.call("GET", f"/v1/hosts/{fleet.agent_id}")
    assert status == 200, body
    return body


@pytest.mark.parametrize("kill_after", [0.0, 0.05, 0.4])
async def test_a_sigkilled_role_manager_converges_after_restart_running_each_script_once(
    fleet: Fleet, tmp_path: Path, kill_after: float
) -> None:
    log = tmp_path / "runs.log"
    names = ["alpha", "beta", "gamma"]
    for name in names:
        for version in ("1", "2"):
            body = {
                "version": version,
                "install": f"echo 'begin {name}' >> {log}; sleep 0.2; echo 'install {name} {version}' >> {log}",
                "remove": f"echo 'remove {name} {version}' >> {log}",
            }
            status, created = await fleet.call("POST", f"/v1/roles/{name}/versions", json=body)
            assert status == 201, created

    async def apply(name: str) -> int:
        status, _ = await fleet.call("PUT", f"/v1/hosts/{fleet.agent_id}/roles/{name}")
        return status

    async def kill_and_restart() -> None:
        await asyncio.sleep(kill_after)
        fleet.processes["role-manager"].process.kill()
        await fleet.processes["role-manager"].process.wait()
        await asyncio.sleep(0.5)
        await fleet.start_service("role-manager")

    # The PUTs that reach the role manager before it dies answer 200; the others wait for its
    # successor (their commands stay queued) or time out (504) and are sent again.
    statuses = await asyncio.gather(kill_and_restart(), *(apply(name) for name in names))
    for name, status in zip(names, statuses[1:], strict=True):
        if status != 200:
            assert status == 504, status
            assert await apply(name) == 200

    async def converged() -> bool:
        seen = await host(fleet)
        return seen["role_status"] == "ok" and seen["roles"] == names and seen["state"] == "active"

    await eventually(converged, timeout=60, interval=0.2)
    runs = installs(log)
    assert sorted(runs) == [f"install {name} 1" for name in names], runs

    # After the restart, the next change (an update to version 2) still runs once per host and role.
    for name in names:
        status, _ = await fleet.call("PUT", f"/v1/roles/{name}", json={"active_version": "2"})
        assert status == 200
        assert await apply(name) == 200
    await eventually(converged, timeout=60, interval=0.2)
    runs = installs(log)
    assert sorted(runs[3:]) == [f"install {name} 2" for name in names], runs


def installs(log: Path) -> list[str]:
    """The scripts' runs, checked to be one at a time on the host: each begin is followed by its end."""
    lines = log.read_text().splitlines()
    begins, ends = lines[0::2], lines[1::2]
    assert len(begins) == len(ends), lines
    for begin, end in zip(begins, ends, strict=True):
        assert begin.startswith("begin ") and end.startswith(f"install {begin.split()[1]} "), lines
    return ends
