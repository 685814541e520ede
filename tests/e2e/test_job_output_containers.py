"""Seed 003's container jobs keep their output: read and followed like a job's, at the job's own URL."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.containers import kill_containers, need_bubblewrap
from tests.e2e.harness import Skybus

pytestmark = pytest.mark.e2e

GAP = 1.5  # seconds between the job's two lines


async def test_a_container_jobs_log_is_followed_live_and_kept_after_it_ends(tmp_path: Path) -> None:
    need_bubblewrap()
    data = tmp_path / "data"
    skybus = await Skybus(data).start()
    try:
        containers = f"/nodes/{skybus.local_resource_id}/containers"
        body = {"id": "logs", "hostname": "logs", "flist": "", "hostNetworking": False, "nics": [], "ports": []}
        assert await skybus.call("POST", containers, json=body) == (204, "")
        script = f"echo one; sleep {GAP}; echo two >&2; printf '\\377\\000'"
        process = {"name": "/bin/sh", "pwd": "/", "args": ["-c", script], "env": []}
        async with aiohttp.ClientSession() as session:
            started = await session.post(
                skybus.url + f"{containers}/logs/processes", json=process, headers=skybus.headers()
            )
            assert started.status == 202
            job_url = skybus.url + started.headers["Location"]

            async with session.get(job_url + "/logs?follow=1", headers=skybus.headers()) as followed:
                assert followed.status == 200 and followed.content_type == "application/octet-stream"
                first = await followed.content.readuntil(b"\n")
                seen_at = time.monotonic()
                status, jobs = await skybus.call("GET", f"{containers}/logs/jobs")
                assert first == b"one\n" and status == 200 and len(jobs) == 1  # seen while it runs
                rest = await followed.content.read()
            assert time.monotonic() - seen_at > GAP / 2  # the follow waited for the end
            assert first + rest == b"one\ntwo\n\xff\x00"

            assert await skybus.call("GET", f"{containers}/logs/jobs") == (200, [])  # ended, and forgotten
            async with session.get(job_url + "/logs", headers=skybus.headers()) as stored:
                assert stored.status == 200 and await stored.read() == b"one\ntwo\n\xff\x00"  # the log stays

            status, error = await skybus.call("GET", f"{started.headers['Location']}/logs?stream=stdout")
            assert status == 400 and "follow" in error["error"]
            status, error = await skybus.call("GET", f"{containers}/logs/jobs/{uuid.uuid4()}/logs")
            assert status == 404 and "not found" in error["error"]
            status, error = await skybus.call("GET", f"{containers}/nope/jobs/{uuid.uuid4()}/logs")
            assert status == 404, error
    finally:
        kill_containers(data)
        assert await skybus.stop() == 0, skybus.log[-20:]
