"""Live output and output files on the real RabbitMQ: a separate agent process under its own
confined broker user signs what it sends, the gateway checks it, the job manager stages out."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.e2e.fleet import Fleet
from tests.e2e.test_jobs_fleet import fleet, job_info, wait_final  # noqa: F401  (the fixture)

pytestmark = pytest.mark.amqp


async def test_follow_and_output_files_across_processes(fleet: Fleet) -> None:  # noqa: F811
    command = "echo first; printf '\\377\\000' > out.bin; sleep 3; echo second; echo late >&2"
    body = {"command": command, "output_files": ["*.bin"]}
    status, created = await fleet.call("POST", "/api/job/run", json=body)
    assert status == 201, created
    job_id = created["job_id"]
    async with aiohttp.ClientSession() as session:
        url = f"{fleet.url}/api/job/logs/{job_id}?follow=1"
        async with session.get(url, headers={"Authorization": f"Bearer {fleet.token}"}) as response:
            assert response.status == 200
            seen = b""
            async with asyncio.timeout(20):
                while b"first\n" not in seen:
                    seen += await response.content.readany()
            assert (await job_info(fleet, job_id))["state"] == "running", fleet.logs()
            async with asyncio.timeout(30):
                seen += await response.content.read()
    assert seen == b"first\nsecond\nlate\n"
    job = (await wait_final(fleet, [job_id]))[job_id]
    assert job["state"] == "succeeded" and list(job["outputs"]) == ["out.bin"], job
    status, content = await fleet.call("GET", f"/api/data/{job['outputs']['out.bin']}")
    assert (status, content) == (200, b"\xff\x00")
