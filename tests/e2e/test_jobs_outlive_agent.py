"""A job outlives its agent: stop (SIGTERM) or kill (SIGKILL) the agent while the job runs, start it
again, and the job ends with its real outcome and answer, with nothing of it left behind.

Both ways an agent runs: inside ``skybus up`` (restarted on the same data dir) and as ``skybus agent``
against RabbitMQ.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from tests.e2e.fleet import Fleet
from tests.e2e.harness import Skybus, SkybusProcess, eventually, processes_of

COMMAND = "sleep 3; echo done"


@pytest.fixture
def scratch():
    """Where the agents keep their jobs: a directory a sandbox's uid can reach, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="skybus-e2e-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def stop_or_kill(process: SkybusProcess, how: signal.Signals) -> None:
    if how is signal.SIGKILL:
        await process.kill()
    else:
        assert await process.stop() == 0, process.log[-20:]


async def ended(call, job_id: str, timeout: float = 40) -> dict:
    info: dict = {}

    async def final() -> bool:
        nonlocal info
        status, info = await call("GET", f"/api/job/job_info/{job_id}")
        return status == 200 and info["state"] in {"succeeded", "failed", "cancelled", "lost"}

    await eventually(final, timeout=timeout, interval=0.2)
    return info


async def running(call, job_id: str) -> None:
    async def started() -> bool:
        status, info = await call("GET", f"/api/job/job_info/{job_id}")
        return status == 200 and info["state"] == "running" and bool(processes_of(job_id))

    await eventually(started, timeout=20, interval=0.05)


async def answer_of(call, info: dict) -> dict:
    status, body = await call("GET", f"/api/data/{info['answer_id']}")
    assert status == 200, body
    return body if isinstance(body, dict) else json.loads(body)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_job_outlives_a_restart_of_skybus_up(tmp_path, scratch, how) -> None:
    data = tmp_path / "data"
    first = await Skybus(data, SKYBUS_SCRATCH_DIR=str(scratch)).start()
    try:
        status, created = await first.call("POST", "/api/job/run", json={"command": COMMAND})
        assert status == 201, created
        job_id = created["job_id"]
        await running(first.call, job_id)
    finally:
        await stop_or_kill(first, how)
    assert processes_of(job_id), "the job died with skybus up"
    second = await Skybus(data, SKYBUS_SCRATCH_DIR=str(scratch)).start()
    second.token = first.token
    try:
        info = await ended(second.call, job_id)
        assert info["state"] == "succeeded", info
        assert (await answer_of(second.call, info))["stdout"] == "done\n"
    finally:
        assert await second.stop() == 0
    await asyncio.sleep(0.5)
    assert processes_of(job_id) == []


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_job_outlives_a_restart_of_skybus_agent(tmp_path, scratch, amqp_url: str, how) -> None:
    fleet = Fleet(tmp_path / "data", amqp_url, SKYBUS_SCRATCH_DIR=str(scratch), SKYBUS_JOB_SWEEP_INTERVAL="0.3")
    try:
        await fleet.start()
        status, created = await fleet.call("POST", "/api/job/run", json={"command": COMMAND})
        assert status == 201, created
        job_id = created["job_id"]
        await running(fleet.call, job_id)
        await stop_or_kill(fleet.processes["agent"], how)
        assert processes_of(job_id), "the job died with its agent"
        await fleet.start_agent()
        info = await ended(fleet.call, job_id)
        assert info["state"] == "succeeded", (info, fleet.logs())
        assert (await answer_of(fleet.call, info))["stdout"] == "done\n"
    finally:
        await fleet.stop()
    await asyncio.sleep(0.5)
    assert processes_of(job_id) == []
