"""Seed 001 end to end: ``skybus up`` runs real commands on its local agent."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.e2e.harness import Skybus, SkybusProcess, eventually, processes_of, skybus_env

FINAL = {"succeeded", "failed", "cancelled", "lost"}


@pytest.fixture
async def skybus(tmp_path):
    skybus = await Skybus(tmp_path / "data", SKYBUS_KILL_GRACE="1", SKYBUS_JOB_SWEEP_INTERVAL="0.2").start()

    async def local_host_responds() -> bool:
        status, body = await skybus.call("GET", f"/api/resources/{skybus.local_resource_id}")
        return status == 200 and body["responding"]

    await eventually(local_host_responds)
    yield skybus
    assert await skybus.stop() == 0, skybus.log[-30:]


async def upload(skybus: Skybus, name: str, content: bytes) -> str:
    status, body = await skybus.call("POST", f"/api/data?name={name}", data=content)
    assert status == 201, body
    return body["id"]


async def run(skybus: Skybus, **body) -> str:
    status, created = await skybus.call("POST", "/api/job/run", json=body)
    assert status == 201, created
    return created["job_id"]


async def info(skybus: Skybus, job_id: str) -> tuple[int, dict]:
    return await skybus.call("GET", f"/api/job/job_info/{job_id}")


async def wait_state(skybus: Skybus, job_id: str, states: set[str], timeout: float = 20) -> dict:
    seen: dict = {}

    async def reached() -> bool:
        nonlocal seen
        _, seen = await info(skybus, job_id)
        return seen.get("state") in states

    await eventually(reached, timeout=timeout)
    return seen


async def answer(skybus: Skybus, answer_id: str) -> dict:
    status, body = await skybus.call("GET", f"/api/data/{answer_id}")
    assert status == 200
    return json.loads(body) if isinstance(body, str) else body


async def test_a_shell_pipeline_runs_and_its_answer_is_stored(skybus: Skybus) -> None:
    sample = '{\n    "command": "uname -a | wc -l",\n}'  # the seed's sample, trailing comma and all
    status, created = await skybus.call("POST", "/api/job/run", data=sample)
    assert status == 201, created
    job = await wait_state(skybus, created["job_id"], FINAL)
    assert job["state"] == "succeeded" and job["exit_code"] == 0, job
    assert [step["state"] for step in job["history"]] == ["pending", "staging", "accepted", "running", "succeeded"]
    assert job["resource_id"] == skybus.local_resource_id and job["user"] == "admin"
    assert job["started_at"] and job["finished_at"] and job["created_at"]
    result = await answer(skybus, job["answer_id"])
    assert result == {"exit_code": 0, "stdout": "1\n", "stderr": ""}


async def test_a_staged_binary_reads_a_staged_input_file(skybus: Skybus) -> None:
    binary = await upload(skybus, "shout", b'#!/bin/sh\ntr a-z A-Z < "$1"\necho done >&2\n')
    words = await upload(skybus, "words.txt", b"hello fleet\n")
    job_id = await run(skybus, command="./shout words.txt", binary=binary, input_files=[words])
    job = await wait_state(skybus, job_id, FINAL)
    assert job["state"] == "succeeded", job
    assert await answer(skybus, job["answer_id"]) == {"exit_code": 0, "stdout": "HELLO FLEET\n", "stderr": "done\n"}


async def test_a_failing_command_keeps_its_exit_code(skybus: Skybus) -> None:
    job = await wait_state(skybus, await run(skybus, command="echo oops >&2; exit 3"), FINAL)
    assert job["state"] == "failed" and job["exit_code"] == 3
    assert await answer(skybus, job["answer_id"]) == {"exit_code": 3, "stdout": "", "stderr": "oops\n"}


async def test_cancel_stops_the_whole_process_group(skybus: Skybus) -> None:
    job_id = await run(skybus, command="sleep 60 & sleep 60; wait")
    await wait_state(skybus, job_id, {"running"})
    await eventually(lambda: _async(len(processes_of(job_id)) >= 2))
    status, body = await skybus.call("POST", "/api/job/cancel", json={"job_id": job_id})
    assert status == 200 and body == {"job_id": job_id}
    job = await wait_state(skybus, job_id, FINAL)
    assert job["state"] == "cancelled"
    assert processes_of(job_id) == []
    status, body = await skybus.call("POST", "/api/job/cancel", json={"job_id": job_id})
    assert status == 409 and "already finished" in body["error"]


async def test_ttl_stops_the_job_and_then_it_is_gone(skybus: Skybus) -> None:
    job_id = await run(skybus, command="sleep 30", ttl=2)
    await wait_state(skybus, job_id, {"running"})
    started = time.monotonic()

    async def gone() -> bool:
        return (await info(skybus, job_id))[0] == 410

    await eventually(gone, timeout=10)
    assert time.monotonic() - started < 5
    await eventually(lambda: _async(processes_of(job_id) == []), timeout=10)
    assert (await skybus.call("POST", "/api/job/cancel", json={"job_id": job_id}))[0] == 410


async def test_list_delete_and_errors(skybus: Skybus) -> None:
    first = await run(skybus, command="true")
    second = await run(skybus, command="true")
    await wait_state(skybus, second, FINAL)
    status, listed = await skybus.call("GET", "/api/list_jobs")
    assert status == 200 and listed["job_ids"][:2] == [second, first]
    status, listed = await skybus.call("GET", "/api/job/list_jobs?state=succeeded&limit=1")
    assert status == 200 and len(listed["job_ids"]) == 1 and listed["next_cursor"]
    assert (await skybus.call("GET", "/api/job/list_jobs?state=bogus"))[0] == 400

    job = await wait_state(skybus, first, FINAL)
    status, body = await skybus.call("DELETE", "/api/job/delete", json={"job_id": first})
    assert status == 200 and body == {"job_id": first}
    assert (await info(skybus, first))[0] == 410
    assert (await skybus.call("GET", f"/api/data/{job['answer_id']}"))[0] in (404, 410)
    assert first not in (await skybus.call("GET", "/api/list_jobs"))[1]["job_ids"]

    assert (await info(skybus, "not-a-uuid"))[0] == 400
    assert (await info(skybus, str(uuid.uuid4())))[0] == 404
    assert (await skybus.call("POST", "/api/job/run", json={"command": 5}))[0] == 400
    assert (await skybus.call("POST", "/api/job/run", json={}))[0] == 400
    assert (await skybus.call("POST", "/api/job/run", data="{not json"))[0] == 400
    assert (await skybus.call("POST", "/api/job/cancel", json={"job_id": "x"}))[0] == 400


async def _async(value: bool) -> bool:
    return value


async def test_a_users_answer_is_theirs_to_read(skybus: Skybus, tmp_path) -> None:
    tokens = {}
    for user in ("steve", "eve"):
        args = ["token", "create", "--user", user, "--data-dir", str(tmp_path / "data")]
        maker = await SkybusProcess(args, skybus_env()).start()
        assert await maker.wait() == 0
        tokens[user] = (await maker.wait_for_line(r"^SKYBUS_TOKEN=(\S+)$")).group(1)
    status, created = await skybus.call("POST", "/api/job/run", token=tokens["steve"], json={"command": "echo mine"})
    assert status == 201
    status, job = await skybus.call("GET", f"/api/job/job_info/{created['job_id']}?wait=20", token=tokens["steve"])
    assert status == 200 and job["state"] == "succeeded"
    status, body = await skybus.call("GET", f"/api/data/{job['answer_id']}", token=tokens["steve"])
    assert status == 200 and json.loads(body)["stdout"] == "mine\n"
    assert (await skybus.call("GET", f"/api/data/{job['answer_id']}", token=tokens["eve"]))[0] == 403
    assert (await skybus.call("GET", f"/api/job/job_info/{created['job_id']}", token=tokens["eve"]))[0] == 403
