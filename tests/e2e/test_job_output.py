"""Live output, stored stdout/stderr and output files, end to end through ``skybus up`` and its agent."""

# ruff: noqa: F811  (the skybus fixture of test_jobs, imported to be shared)

from __future__ import annotations

import asyncio
import time

import aiohttp
import psutil
import pytest

from tests.e2e.harness import Skybus, eventually
from tests.e2e.test_jobs import run, skybus  # noqa: F401  (the fixture)

pytestmark = pytest.mark.e2e

ALL_BYTES = bytes(range(256))


def printf_of(data: bytes) -> str:
    return "printf '" + "".join(f"\\{byte:03o}" for byte in data) + "'"


async def job_info(skybus: Skybus, job_id: str, wait: float | None = None) -> dict:
    path = f"/api/job/job_info/{job_id}" + (f"?wait={wait}" if wait else "")
    status, body = await skybus.call("GET", path)
    assert status == 200, body
    return body


async def logs(skybus: Skybus, job_id: str, query: str = "", token: str | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        url = f"{skybus.url}/api/job/logs/{job_id}{query}"
        async with session.get(url, headers=skybus.headers(token)) as response:
            return response.status, await response.read()


async def test_follow_shows_output_as_it_comes_then_the_stored_rest_byte_exact(skybus: Skybus) -> None:
    command = f"echo first; {printf_of(ALL_BYTES)} >&2; sleep 3; echo second"
    job_id = await run(skybus, command=command)
    async with aiohttp.ClientSession() as session:
        url = f"{skybus.url}/api/job/logs/{job_id}?follow=1&stream=stdout"
        async with session.get(url, headers=skybus.headers()) as response:
            assert response.status == 200 and response.headers.get("Transfer-Encoding") == "chunked"
            seen = b""
            async with asyncio.timeout(10):
                while b"first\n" not in seen:
                    seen += await response.content.readany()
            assert (await job_info(skybus, job_id))["state"] == "running"  # seen before it ended
            async with asyncio.timeout(20):
                seen += await response.content.read()
    assert seen == b"first\nsecond\n"
    job = await job_info(skybus, job_id, wait=10)
    assert job["state"] == "succeeded" and job["stdout_id"] and job["stderr_id"]
    # Ended: from the stored files; both streams by default, stdout then stderr.
    assert await logs(skybus, job_id, "?stream=stderr") == (200, ALL_BYTES)
    assert await logs(skybus, job_id) == (200, b"first\nsecond\n" + ALL_BYTES)
    assert await logs(skybus, job_id, "?follow=1&stream=stderr") == (200, ALL_BYTES)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{skybus.url}/api/data/{job['stderr_id']}", headers=skybus.headers()) as response:
            assert await response.read() == ALL_BYTES
    # What a running job wrote so far, without follow; and both streams live in the order they came.
    job_id = await run(skybus, command="echo out; sleep 0.3; echo err >&2; sleep 5")
    await eventually(lambda: _running(skybus, job_id))
    await asyncio.sleep(0.6)
    assert await logs(skybus, job_id) == (200, b"out\nerr\n")
    assert await logs(skybus, job_id, "?stream=stdout") == (200, b"out\n")
    status, body = await skybus.call("GET", f"/api/job/logs/{job_id}?stream=both")
    assert status == 400 and "stream" in body["error"]
    status, body = await skybus.call("GET", "/api/job/logs/00000000-0000-4000-8000-000000000000")
    assert status == 404 and "error" in body


async def _running(skybus: Skybus, job_id: str) -> bool:
    return (await job_info(skybus, job_id))["state"] == "running"


async def test_a_big_stdout_is_stored_as_a_file_and_served_streamed(skybus: Skybus) -> None:
    size = 20 * 1000 * 1000
    job_id = await run(skybus, command=f"head -c {size} /dev/zero | tr '\\0' x")
    job = await job_info(skybus, job_id, wait=60)
    assert job["state"] == "succeeded" and job["stdout_id"] and job["stderr_id"] is None
    status, info = await skybus.call("GET", f"/api/data/{job['stdout_id']}/info")
    assert status == 200 and info["size"] == size and info["owner"] == "admin"
    process = psutil.Process(skybus.process.pid)
    before = process.memory_info().rss
    received = 0
    async with aiohttp.ClientSession() as session:
        url = f"{skybus.url}/api/job/logs/{job_id}?stream=stdout"
        async with session.get(url, headers=skybus.headers()) as response:
            assert response.headers.get("Transfer-Encoding") == "chunked"  # streamed, not one body
            async for chunk in response.content.iter_chunked(1 << 20):
                assert chunk.strip(b"x") == b""
                received += len(chunk)
    assert received == size
    assert process.memory_info().rss - before < size // 2  # never held whole


async def test_output_files_become_the_users_data_files(skybus: Skybus) -> None:
    status, created = await skybus.call("POST", "/api/tokens", json={"user": "steve"})
    assert status == 201, created
    steve = created["token"]
    status, created = await skybus.call("POST", "/api/tokens", json={"user": "mallory"})
    mallory = created["token"]
    command = "mkdir -p res && printf 'one\\377' > a.txt && echo two > b.txt && echo three > res/c.bin"
    body = {"command": command, "output_files": ["*.txt", "res/*.bin", "nothing*"]}
    status, created = await skybus.call("POST", "/api/job/run", token=steve, json=body)
    assert status == 201, created
    job_id = created["job_id"]
    started = time.monotonic()
    while True:
        status, job = await skybus.call("GET", f"/api/job/job_info/{job_id}?wait=10", token=steve)
        if job["state"] in ("succeeded", "failed", "cancelled", "lost") or time.monotonic() - started > 30:
            break
    assert job["state"] == "succeeded", job
    assert set(job["outputs"]) == {"a.txt", "b.txt", "res/c.bin"}
    assert job["output_errors"] == {"nothing*": "no file matches"}
    async with aiohttp.ClientSession() as session:
        for name, content in (("a.txt", b"one\xff"), ("res/c.bin", b"three\n")):
            url = f"{skybus.url}/api/data/{job['outputs'][name]}"
            async with session.get(url, headers=skybus.headers(steve)) as response:
                assert response.status == 200 and await response.read() == content
            async with session.get(url, headers=skybus.headers(mallory)) as response:
                assert response.status == 403
    status, _ = await skybus.call("GET", f"/api/job/logs/{job_id}", token=mallory)
    assert status == 403
    for bad in ("/etc/passwd", "../up", "a/../../b"):
        status, body = await skybus.call("POST", "/api/job/run", json={"command": "true", "output_files": [bad]})
        assert status == 400 and "output_files" in body["error"], body
