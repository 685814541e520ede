"""End-to-end jobs per second and latency: skybus (every service its own process, RabbitMQ, one
agent) against Celery (prefork, 2 processes, the same RabbitMQ, rpc:// results) running the same
command, measured in the same run.

    .venv/bin/pip install -e '.[bench]' && .venv/bin/python bench/jobs.py [--jobs 1000] [--latency 100]
    .venv/bin/python bench/jobs.py --replicas 2    # jobs/s with 2 processes of every service beside 1

skybus: REST submit → ``succeeded`` seen through ``GET /api/job/job_info?wait=60`` (long polling).
Celery: ``apply_async``
→ ``AsyncResult.get()``. Throughput keeps ``--in-flight`` jobs outstanding; latency submits one job
at a time and waits for it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.fleet import Fleet  # noqa: E402
from tests.rabbit import fresh_vhost  # noqa: E402

COMMAND = "true"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def skybus_throughput(fleet: Fleet, jobs: int, in_flight: int) -> float:
    headers = {"Authorization": f"Bearer {fleet.token}"}
    connector = aiohttp.TCPConnector(limit=in_flight * 2)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        semaphore = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with semaphore:
                async with session.post(fleet.url + "/api/job/run", json={"command": COMMAND}) as response:
                    assert response.status == 201, await response.text()
                    job_id = (await response.json())["job_id"]
                async with session.get(f"{fleet.url}/api/job/job_info/{job_id}?wait=60") as response:
                    state = (await response.json())["state"]
                assert state == "succeeded", state

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(jobs)))
        return jobs / (time.perf_counter() - started)


async def skybus_latency(fleet: Fleet, jobs: int) -> list[float]:
    headers = {"Authorization": f"Bearer {fleet.token}"}
    latencies = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(jobs):
            started = time.perf_counter()
            async with session.post(fleet.url + "/api/job/run", json={"command": COMMAND}) as response:
                job_id = (await response.json())["job_id"]
            async with session.get(f"{fleet.url}/api/job/job_info/{job_id}?wait=60") as response:
                assert (await response.json())["state"] == "succeeded"
            latencies.append(time.perf_counter() - started)
    return latencies


def celery_measure(url: str, jobs: int, in_flight: int, latency_jobs: int) -> tuple[float, list[float]]:
    env = {**os.environ, "BENCH_AMQP_URL": url}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_baseline", "worker", "--pool=prefork", "--concurrency=2",
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=REPO / "bench", env=env,
    )  # fmt: skip
    os.environ["BENCH_AMQP_URL"] = url
    sys.path.insert(0, str(REPO / "bench"))
    import celery_baseline

    try:
        celery_baseline.run.apply_async((COMMAND,)).get(timeout=60)  # the worker is up
        started = time.perf_counter()
        pending = []
        done = 0
        for _ in range(jobs):
            pending.append(celery_baseline.run.apply_async((COMMAND,)))
            if len(pending) >= in_flight:
                assert pending.pop(0).get(timeout=60) == 0
                done += 1
        for result in pending:
            assert result.get(timeout=60) == 0
        rate = jobs / (time.perf_counter() - started)
        latencies = []
        for _ in range(latency_jobs):
            t = time.perf_counter()
            celery_baseline.run.apply_async((COMMAND,)).get(timeout=60)
            latencies.append(time.perf_counter() - t)
        return rate, latencies
    finally:
        worker.terminate()
        worker.wait(timeout=30)


# --replicas: throughput with one replica of every manager and gateway beside ``--replicas`` of each.


async def replicas_throughput(url: str, replicas: int, jobs: int, in_flight: int) -> dict[int, float]:
    """jobs/s of a fleet with one process of each manager and gateway, then with ``replicas`` of each
    (competing consumers on the managers' queues; clients speak to the first gateway)."""
    rates = {}
    for count in sorted({1, replicas}):
        data = Path(tempfile.mkdtemp(prefix="skybus-bench-"))
        fleet = Fleet(data, url, replicas=count, SKYBUS_LOG_LEVEL="WARNING")
        try:
            await fleet.start()
            await skybus_throughput(fleet, 50, 8)  # warm up
            rates[count] = await skybus_throughput(fleet, jobs, in_flight)
        finally:
            await fleet.stop()
            shutil.rmtree(data, ignore_errors=True)
    return rates


async def print_replicas(args: argparse.Namespace) -> None:
    with fresh_vhost("skybus-bench") as vhost:
        rates = await replicas_throughput(vhost.url, args.replicas, args.jobs, args.in_flight)
    print(f"{args.jobs} jobs of {COMMAND!r}, {args.in_flight} in flight")
    for count, rate in rates.items():
        print(f"skybus, {count} replica{'s' if count > 1 else ''} of each service: {rate:8.1f} jobs/s")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=1, help="compare one replica of each service with this many")
    args = parser.parse_args()
    if args.replicas > 1:
        await print_replicas(args)
        return

    with fresh_vhost("skybus-bench") as vhost:
        data = Path(tempfile.mkdtemp(prefix="skybus-bench-"))
        fleet = Fleet(data, vhost.url, SKYBUS_LOG_LEVEL="WARNING")
        try:
            await fleet.start()
            await skybus_throughput(fleet, 50, 8)  # warm up
            rate = await skybus_throughput(fleet, args.jobs, args.in_flight)
            latencies = await skybus_latency(fleet, args.latency)
        finally:
            await fleet.stop()
            shutil.rmtree(data, ignore_errors=True)
        celery_rate, celery_latencies = await asyncio.to_thread(
            celery_measure, vhost.url, args.jobs, args.in_flight, args.latency
        )

    print(f"{args.jobs} jobs of {COMMAND!r}, {args.in_flight} in flight; latency: {args.latency} jobs one at a time")
    print(f"skybus : {rate:8.1f} jobs/s   p50 {statistics.median(latencies) * 1000:6.1f} ms"
          f"   p99 {percentile(latencies, 0.99) * 1000:6.1f} ms")  # fmt: skip
    print(f"celery : {celery_rate:8.1f} jobs/s   p50 {statistics.median(celery_latencies) * 1000:6.1f} ms"
          f"   p99 {percentile(celery_latencies, 0.99) * 1000:6.1f} ms")  # fmt: skip
    print(f"skybus / celery throughput: {rate / celery_rate:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
