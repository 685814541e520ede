"""Jobs on the real RabbitMQ with every service a separate process, and what survives a SIGKILL."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from tests.e2e.fleet import Fleet
from tests.e2e.harness import SkybusProcess, eventually, processes_of

pytestmark = pytest.mark.amqp

FINAL = {"succeeded", "failed", "cancelled", "lost"}


@pytest.fixture
async def fleet(tmp_path, amqp_url: str):
    fleet = Fleet(
        tmp_path / "data",
        amqp_url,
        SKYBUS_KILL_GRACE="1",
        SKYBUS_JOB_SWEEP_INTERVAL="0.3",
        SKYBUS_LOST_TIMEOUT="3",
    )
    try:
        yield await fleet.start()
    finally:
        await fleet.stop()


async def job_info(fleet: Fleet, job_id: str) -> dict:
    status, body = await fleet.call("GET", f"/api/job/job_info/{job_id}")
    assert status == 200, body
    return body


async def wait_final(fleet: Fleet, job_ids: list[str], timeout: float = 60) -> dict[str, dict]:
    infos: dict[str, dict] = {}

    async def all_final() -> bool:
        for job_id in job_ids:
            if infos.get(job_id, {}).get("state") not in FINAL:
                infos[job_id] = await job_info(fleet, job_id)
        return all(info["state"] in FINAL for info in infos.values())

    await eventually(all_final, timeout=timeout, interval=0.3)
    return infos


async def test_jobs_flow_through_separate_processes(fleet: Fleet) -> None:
    status, body = await fleet.call("POST", "/api/data?name=shout", data=b'#!/bin/sh\ntr a-z A-Z < "$1"\n')
    assert status == 201, body
    binary = body["id"]
    status, body = await fleet.call("POST", "/api/data?name=in.txt", data=b"over the bus\n")
    words = body["id"]
    jobs = {}
    for name, request in {
        "pipeline": {"command": "uname -a | wc -l"},
        "staged": {"command": "./shout in.txt", "binary": binary, "input_files": [words]},
        "exit3": {"command": "exit 3"},
        "cancelled": {"command": "sleep 60"},
        "expires": {"command": "sleep 60", "ttl": 2},
    }.items():
        status, created = await fleet.call("POST", "/api/job/run", json=request)
        assert status == 201, created
        jobs[name] = created["job_id"]

    async def running() -> bool:
        return (await job_info(fleet, jobs["cancelled"]))["state"] == "running"

    await eventually(running, timeout=30)
    assert (await fleet.call("POST", "/api/job/cancel", json={"job_id": jobs["cancelled"]}))[0] == 200

    async def expired() -> bool:
        return (await fleet.call("GET", f"/api/job/job_info/{jobs['expires']}"))[0] == 410

    await eventually(expired, timeout=15)
    del jobs["expires"]
    infos = await wait_final(fleet, list(jobs.values()))
    assert {name: infos[job_id]["state"] for name, job_id in jobs.items()} == {
        "pipeline": "succeeded",
        "staged": "succeeded",
        "exit3": "failed",
        "cancelled": "cancelled",
    }, fleet.logs()
    answers = {}
    for name, job_id in jobs.items():
        status, raw = await fleet.call("GET", f"/api/data/{infos[job_id]['answer_id']}")
        assert status == 200
        answers[name] = json.loads(raw)
    assert answers["pipeline"]["stdout"] == "1\n"
    assert answers["staged"]["stdout"] == "OVER THE BUS\n"
    assert answers["exit3"]["exit_code"] == 3


async def test_sigkilled_job_manager_loses_no_job_and_runs_none_twice(fleet: Fleet) -> None:
    total = 500
    job_ids: dict[int, str] = {}
    killed = asyncio.Event()

    async def submit(n: int) -> None:
        while True:  # a client retries with the same key until it gets its job
            try:
                status, body = await fleet.call(
                    "POST", "/api/job/run", json={"command": f"echo {n}"}, headers={"Idempotency-Key": f"job-{n}"}
                )
            except OSError:
                status, body = 0, None
            if status == 201:
                job_ids[n] = body["job_id"]
                return
            assert status in (0, 503, 504), body
            await asyncio.sleep(0.2)

    async def killer() -> None:
        await eventually(lambda: _now(len(job_ids) >= total // 2), timeout=120, interval=0.01)
        fleet.processes["job-manager"].process.kill()
        killed.set()
        await asyncio.sleep(1.0)
        await fleet.start_service("job-manager")

    semaphore = asyncio.Semaphore(16)

    async def limited(n: int) -> None:
        async with semaphore:
            await submit(n)

    await asyncio.gather(killer(), *(limited(n) for n in range(total)))
    assert killed.is_set() and len(set(job_ids.values())) == total
    infos = await wait_final(fleet, list(job_ids.values()), timeout=180)
    for info in infos.values():
        finals = [step for step in info["history"] if step["state"] in FINAL]
        assert len(finals) == 1, info
    assert Counter(info["state"] for info in infos.values()) == {"succeeded": total}, fleet.logs()

    entries = [json.loads(line) for line in fleet.agent_ledger.read_text().splitlines()]
    started = Counter(entry["job_id"] for entry in entries if entry["event"] == "started")
    assert set(started) == set(job_ids.values()) and set(started.values()) == {1}
    for n, job_id in job_ids.items():
        status, raw = await fleet.call("GET", f"/api/data/{infos[job_id]['answer_id']}")
        assert status == 200 and json.loads(raw)["stdout"] == f"{n}\n"


async def test_jobs_of_a_killed_agent_become_lost(fleet: Fleet) -> None:
    job_ids = []
    for _ in range(3):
        status, created = await fleet.call("POST", "/api/job/run", json={"command": "sleep 30"})
        assert status == 201, created
        job_ids.append(created["job_id"])

    async def all_running() -> bool:
        states = [(await job_info(fleet, job_id))["state"] for job_id in job_ids]
        return states == ["running"] * len(job_ids)

    await eventually(all_running, timeout=30)
    fleet.processes["agent"].process.kill()
    infos = await wait_final(fleet, job_ids, timeout=30)
    for info in infos.values():
        assert info["state"] == "lost" and "has not responded" in info["error"], info
    assert all(processes_of(job_id) for job_id in job_ids)  # orphans of the dead agent, still running

    await fleet.start_agent()  # the restarted agent adopts them; the job manager has it stop what ended lost

    async def orphans_gone() -> bool:
        return not any(processes_of(job_id) for job_id in job_ids)

    await eventually(orphans_gone, timeout=15)
    assert [(await job_info(fleet, job_id))["state"] for job_id in job_ids] == ["lost"] * 3


async def test_a_broker_connection_drop_neither_restarts_nor_loses_running_jobs(fleet: Fleet, amqp_vhost) -> None:
    job_ids = []
    for n in range(3):
        status, created = await fleet.call("POST", "/api/job/run", json={"command": f"sleep 3; echo {n}"})
        assert status == 201, created
        job_ids.append(created["job_id"])

    async def all_running() -> bool:
        states = [(await job_info(fleet, job_id))["state"] for job_id in job_ids]
        return states == ["running"] * len(job_ids)

    await eventually(all_running, timeout=30)
    assert amqp_vhost.close_all_connections("fault test") > 0  # every service and the agent lose the broker
    infos = await wait_final(fleet, job_ids, timeout=60)
    assert [info["state"] for info in infos.values()] == ["succeeded"] * 3, fleet.logs()
    entries = [json.loads(line) for line in fleet.agent_ledger.read_text().splitlines()]
    assert Counter(e["job_id"] for e in entries if e["event"] == "started") == Counter(job_ids)
    for n, job_id in enumerate(job_ids):
        status, raw = await fleet.call("GET", f"/api/data/{infos[job_id]['answer_id']}")
        assert status == 200 and json.loads(raw)["stdout"] == f"{n}\n"


async def _now(value: bool) -> bool:
    return value


async def test_an_agent_with_a_token_the_gateway_does_not_know_refuses_to_start(fleet: Fleet) -> None:
    args = ["agent", "--resource-id", fleet.agent_id, "--token", "not-the-token"]
    impostor = await SkybusProcess(args, fleet.env).start()
    assert await impostor.wait() == 1
    assert any("does not know this token" in line for line in impostor.log), impostor.log
