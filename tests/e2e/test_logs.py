"""``skybus up --log-format json``: every line on stderr is a JSON object, the ids ride as fields, and
the gateway's access log names method, path, status, time and user but never a token; ``--no-access-log``
turns it off."""

from __future__ import annotations

import json

import pytest

from tests.e2e.harness import Skybus, eventually

pytestmark = pytest.mark.e2e

SECRET = "not-for-the-log"


async def test_json_lines_and_an_access_log_without_secrets(tmp_path) -> None:
    skybus = await Skybus(tmp_path / "data", "--log-format", "json").start()
    try:
        assert (await skybus.call("GET", f"/v1/roles?token={SECRET}"))[0] == 200
        assert (await skybus.call("GET", "/v1/roles", token=SECRET))[0] == 401
        assert (await skybus.call("POST", "/api/resources", json={"hostname": "h1", "user": "steve"}))[0] == 200

        async def responding() -> bool:  # the resource manager logs it with the resource_id as an extra
            status, local = await skybus.call("GET", f"/api/resources/{skybus.local_resource_id}")
            return status == 200 and local["responding"] is True

        await eventually(responding)
    finally:
        assert await skybus.stop() == 0
    entries = [json.loads(line) for line in skybus.log if line.strip()]  # fails on any line that is not JSON
    assert entries and all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    assert any(entry.get("resource_id") == skybus.local_resource_id for entry in entries)  # an id the code passed
    access = [entry for entry in entries if entry["logger"] == "skybus.access"]
    roles = [entry for entry in access if entry["path"] == "/v1/roles"]
    assert [(entry["method"], entry["status"], entry["user"]) for entry in roles] == [
        ("GET", 200, "admin"),
        ("GET", 401, None),
    ]
    assert all(entry["level"] == "INFO" and entry["duration_ms"] >= 0 for entry in roles)
    assert any(entry["path"] == "/api/resources" and entry["status"] == 200 for entry in access)
    assert skybus.token and not any(SECRET in line or skybus.token in line for line in skybus.log)


async def test_no_access_log_and_text_by_default(tmp_path) -> None:
    skybus = await Skybus(tmp_path / "data", "--no-access-log").start()
    try:
        assert (await skybus.call("GET", "/v1/roles"))[0] == 200
    finally:
        await skybus.stop()
    assert skybus.log and not any(line.startswith("{") for line in skybus.log)
    assert not any("skybus.access" in line or "/v1/roles" in line for line in skybus.log)
