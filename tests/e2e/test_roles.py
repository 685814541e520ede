"""Seed 002 end to end: ``skybus up`` applies versioned roles to its local host by running their
scripts there for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.harness import Skybus, eventually


@pytest.fixture
async def skybus(tmp_path):
    skybus = await Skybus(
        tmp_path / "data",
        SKYBUS_ROLE_ATTEMPTS="3",
        SKYBUS_ROLE_RETRY_DELAY="0.3",
        SKYBUS_ROLE_SWEEP_INTERVAL="0.2",
        SKYBUS_JOB_SWEEP_INTERVAL="0.2",
    ).start()

    async def local_host_responds() -> bool:
        status, body = await skybus.call("GET", f"/api/resources/{skybus.local_resource_id}")
        return status == 200 and body["responding"]

    await eventually(local_host_responds)
    yield skybus
    assert await skybus.stop() == 0, skybus.log[-30:]


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


async def host(skybus: Skybus) -> dict:
    status, body = await skybus.call("GET", f"/v1/hosts/{skybus.local_resource_id}")
    assert status == 200, body
    return body


async def settled(skybus: Skybus, status: str = "ok", timeout: float = 20) -> dict:
    seen: dict = {}

    async def reached() -> bool:
        nonlocal seen
        seen = await host(skybus)
        return seen["role_status"] == status

    try:
        await eventually(reached, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"host never reached role_status {status}: {seen}") from None
    return seen


async def register(skybus: Skybus, name: str, version: str, marker: Path, **extra: str) -> None:
    body = {"version": version, "display_name": f"Role {name}", "description": f"{name} {version}"}
    status, created = await skybus.call(
        "POST", f"/v1/roles/{name}/versions", json={**body, **scripts(marker, version), **extra}
    )
    assert status == 201, created


async def test_a_role_is_installed_kept_updated_and_removed_by_its_scripts(skybus: Skybus, tmp_path: Path) -> None:
    marker = tmp_path / "roleA.installed"
    host_id = skybus.local_resource_id
    await register(skybus, "roleA", "1.0", marker)
    await register(skybus, "roleA", "2.0", marker)
    status, role = await skybus.call("GET", "/v1/roles/roleA")
    assert status == 200
    assert role == {"name": "roleA", "display_name": "Role roleA", "description": "roleA 1.0", "active_version": "1.0"}

    before = await host(skybus)
    assert before["state"] == "inactive" and before["roles"] == [] and before["role_status"] == "ok"

    # Outcome 1: not present, so installed.
    status, applied = await skybus.call("PUT", f"/v1/hosts/{host_id}/roles/roleA")
    assert status == 200, applied
    assert applied["state"] == "activating" and applied["role_status"] == "converging"
    assert applied["roles"] == ["roleA"]
    done = await settled(skybus)
    assert done["state"] == "active" and done["roles"] == ["roleA"]
    assert marker.read_text() == "1.0\n"
    assert runs(marker) == ["install 1.0 from="]

    # Outcome 2: present at the active version, so nothing runs.
    status, again = await skybus.call("PUT", f"/v1/hosts/{host_id}/roles/roleA")
    assert status == 200 and again["role_status"] == "ok" and again["state"] == "active"
    await settled(skybus)
    assert runs(marker) == ["install 1.0 from="]

    # A new active version changes nothing until the role is reapplied; then outcome 3: updated.
    status, role = await skybus.call("PUT", "/v1/roles/roleA", json={"active_version": "2.0"})
    assert status == 200 and role["active_version"] == "2.0" and role["description"] == "roleA 2.0"
    assert (await host(skybus))["role_status"] == "ok" and marker.read_text() == "1.0\n"
    status, _ = await skybus.call("PUT", f"/v1/hosts/{host_id}/roles/roleA")
    assert status == 200
    await settled(skybus)
    assert marker.read_text() == "2.0\n"
    assert runs(marker) == ["install 1.0 from=", "install 2.0 from=1.0"]
    status, detail = await skybus.call("GET", f"/v1/hosts/{host_id}/roles/roleA")
    assert status == 200 and detail["version"] == "2.0" and detail["status"] == "ok"

    # Removing the last role runs the installed version's remove script; the host is inactive.
    status, removing = await skybus.call("DELETE", f"/v1/hosts/{host_id}/roles/roleA")
    assert status == 200 and removing["roles"] == []
    done = await settled(skybus)
    assert done["state"] == "inactive" and done["roles"] == []
    assert not marker.exists()
    assert runs(marker)[-1] == "remove 2.0"


async def test_a_failing_install_is_retried_then_failed_with_its_output_readable(
    skybus: Skybus, tmp_path: Path
) -> None:
    marker = tmp_path / "broken.installed"
    install = f"echo attempt >> {marker.with_suffix('.log')}; echo 'no disk for you' >&2; exit 7"
    body = {"version": "0.1", "install": install, "remove": "true"}
    status, created = await skybus.call("POST", "/v1/roles/broken/versions", json=body)
    assert status == 201, created
    host_id = skybus.local_resource_id
    status, _ = await skybus.call("PUT", f"/v1/hosts/{host_id}/roles/broken")
    assert status == 200
    seen: set[str] = set()

    async def failed() -> bool:
        seen.add((await host(skybus))["role_status"])
        return "failed" in seen

    await eventually(failed, timeout=30, interval=0.05)
    assert "retrying" in seen
    assert len(runs(marker)) == 3  # SKYBUS_ROLE_ATTEMPTS
    status, detail = await skybus.call("GET", f"/v1/hosts/{host_id}/roles/broken")
    assert status == 200
    assert detail["status"] == "failed" and detail["exit_code"] == 7 and detail["attempts"] == 3
    assert "exited with 7" in detail["error"]
    status, answer = await skybus.call("GET", f"/api/data/{detail['answer_id']}")
    answer = answer if isinstance(answer, dict) else json.loads(answer)
    assert status == 200 and answer["exit_code"] == 7 and "no disk for you" in answer["stderr"]
    assert (await host(skybus))["state"] == "activating"

    # Reapplying a failed role tries again from the start.
    status, again = await skybus.call("PUT", f"/v1/hosts/{host_id}/roles/broken")
    assert status == 200 and again["role_status"] in ("converging", "retrying")
    await eventually(lambda: _has_runs(marker, 4), timeout=20)


async def _has_runs(marker: Path, count: int) -> bool:
    return len(runs(marker)) >= count


async def test_deleting_a_host_removes_its_roles_and_forgets_it_until_its_next_heartbeat(
    skybus: Skybus, tmp_path: Path
) -> None:
    marker = tmp_path / "roleB.installed"
    host_id = skybus.local_resource_id
    await register(skybus, "roleB", "1", marker)
    assert (await skybus.call("DELETE", f"/v1/hosts/{host_id}"))[0] == 204  # inactive: a no-op
    assert (await skybus.call("PUT", f"/v1/hosts/{host_id}/roles/roleB"))[0] == 200
    await settled(skybus)
    assert marker.exists()
    status, _ = await skybus.call("DELETE", f"/v1/hosts/{host_id}")
    assert status == 204

    async def removed_and_back() -> bool:
        status, body = await skybus.call("GET", f"/v1/hosts/{host_id}")
        return not marker.exists() and status == 200 and body["state"] == "inactive" and body["roles"] == []

    await eventually(removed_and_back, timeout=20)
    assert runs(marker) == ["install 1 from=", "remove 1"]
