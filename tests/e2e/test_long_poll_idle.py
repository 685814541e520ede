"""The gateway's long poll is woken by the job manager's broadcast, not by polling the store: 200
clients waiting on running jobs cost the gateway process next to nothing."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.e2e.fleet import Fleet
from tests.rabbit import fresh_vhost

pytestmark = [pytest.mark.e2e, pytest.mark.amqp]

WAITERS = 200


async def test_200_waiting_clients_cost_the_gateway_under_5_percent_of_a_core() -> None:
    with fresh_vhost() as vhost:
        data = Path(tempfile.mkdtemp(prefix="skybus-idle-"))
        fleet = Fleet(data, vhost.url, SKYBUS_MAX_PARALLEL_TASKS="256", SKYBUS_LOG_LEVEL="WARNING")
        try:
            await fleet.start()
            headers = {"Authorization": f"Bearer {fleet.token}"}
            connector = aiohttp.TCPConnector(limit=WAITERS * 2)
            async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

                async def submit() -> str:
                    body = {"command": "sleep 12"}
                    async with session.post(fleet.url + "/api/job/run", json=body) as response:
                        assert response.status == 201, await response.text()
                        return (await response.json())["job_id"]

                async def wait(job_id: str) -> str:
                    async with session.get(f"{fleet.url}/api/job/job_info/{job_id}?wait=60") as response:
                        return (await response.json())["state"]

                job_ids = await asyncio.gather(*(submit() for _ in range(WAITERS)))
                waits = [asyncio.create_task(wait(job_id)) for job_id in job_ids]
                await asyncio.sleep(3)  # every job taken and started, every client waiting
                assert not any(w.done() for w in waits)
                gateway = psutil.Process(fleet.processes["gateway"].process.pid)  # type: ignore[union-attr]
                before, started = gateway.cpu_times(), time.monotonic()
                await asyncio.sleep(5)
                after, elapsed = gateway.cpu_times(), time.monotonic() - started
                busy = (after.user + after.system - before.user - before.system) / elapsed
                assert not any(w.done() for w in waits)
                print(f"gateway CPU with {WAITERS} clients waiting: {busy * 100:.2f}% of a core")
                assert busy < 0.05, f"the gateway used {busy * 100:.1f}% of a core while {WAITERS} clients waited"
                states = await asyncio.gather(*waits)  # and each wait ends when its job does
                assert states == ["succeeded"] * WAITERS
        finally:
            await fleet.stop()
            shutil.rmtree(data, ignore_errors=True)
