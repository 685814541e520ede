"""End-to-end jobs per second, latency, CPU and messages per job: skybus against Celery, same run.

    .venv/bin/pip install -e '.[bench]' && .venv/bin/python bench/jobs.py [--jobs 1000] [--latency 100]
        [--modes fleet,privileged,embedded] [--replicas 2]

* ``fleet``: every skybus service its own process on RabbitMQ, one agent, jobs sandboxed (the default);
* ``privileged``: the same fleet, jobs submitted ``privileged`` (no sandbox), to show the sandbox's cost;
* ``embedded``: ``skybus up`` (one process: the in-process bus and SQLite);
* Celery: prefork with 2 processes on the same RabbitMQ, rpc:// results, the same command.

skybus: REST submit → ``succeeded`` seen through ``GET /api/job/job_info?wait=60`` (long polling);
Celery: ``apply_async`` → ``AsyncResult.get()``. Throughput keeps ``--in-flight`` jobs outstanding;
latency submits one job at a time and waits for it. CPU is psutil's user+system time of each process
and the children it reaped (the jobs' shells), over the throughput run, per job. Messages are what
RabbitMQ counted as published in the vhost (its management API) over the throughput run, per job.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.fleet import Fleet, free_port  # noqa: E402
from tests.e2e.harness import SkybusProcess, eventually, skybus_env  # noqa: E402
from tests.rabbit import fresh_vhost  # noqa: E402

COMMAND = "true"
STATS_INTERVAL = 5.5  # RabbitMQ's management statistics are refreshed every 5 s


@dataclass
class Result:
    name: str
    rate: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    messages: float | None = None

    def line(self) -> str:
        p50 = statistics.median(self.latencies) * 1000
        p99 = percentile(self.latencies, 0.99) * 1000
        return f"{self.name:20s} {self.rate:8.1f} jobs/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# Measuring.


def broker_pid() -> int | None:
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "beam.smp" in cmdline and "rabbit boot" in cmdline:
            try:
                if process.environ().get("RABBITMQ_NODENAME", "rabbit@").startswith("rabbit@"):
                    return process.pid
            except psutil.Error:
                continue
    return None


def cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system + times.children_user + times.children_system


def launchers() -> list[int]:
    """The agent's long-lived sandboxes (a launcher per user, and the bwrap that holds it)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "launcher" in cmdline and ("bwrap" in cmdline or "python" in cmdline):
            found.append(process.pid)
    return found


def published(vhost: str) -> int | None:
    """What RabbitMQ counted as published in ``vhost`` (None without the management API)."""
    request = urllib.request.Request(f"http://127.0.0.1:15672/api/vhosts/{urllib.parse.quote(vhost, safe='')}")
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response).get("message_stats", {}).get("publish", 0)
    except OSError:
        return None


async def measured(
    result: Result, pids: Callable[[], dict[str, list[int]]], vhost: str | None, jobs: int, run: Awaitable[float]
) -> None:
    """Run the throughput phase, charging every process's CPU and the broker's messages to it."""
    groups = pids()
    before = {name: sum(cpu_seconds(pid) for pid in group) for name, group in groups.items()}
    sent_before = published(vhost) if vhost else None
    if sent_before is not None:
        await asyncio.sleep(STATS_INTERVAL)
        sent_before = published(vhost)
    result.rate = await run
    groups = pids()  # a sandbox started during the run is charged from zero
    after = {name: sum(cpu_seconds(pid) for pid in group) for name, group in groups.items()}
    result.cpu_ms = {name: (after[name] - before.get(name, 0.0)) * 1000 / jobs for name in after}
    if sent_before is not None:
        await asyncio.sleep(STATS_INTERVAL)
        sent_after = published(vhost)  # type: ignore[arg-type]
        result.messages = (sent_after - sent_before) / jobs if sent_after is not None else None


# skybus.


async def skybus_throughput(url: str, token: str, jobs: int, in_flight: int, body: dict) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=in_flight * 2)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        semaphore = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with semaphore:
                async with session.post(url + "/api/job/run", json=body) as response:
                    assert response.status == 201, await response.text()
                    job_id = (await response.json())["job_id"]
                async with session.get(f"{url}/api/job/job_info/{job_id}?wait=60") as response:
                    state = (await response.json())["state"]
                assert state == "succeeded", state

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(jobs)))
        return jobs / (time.perf_counter() - started)


async def skybus_latency(url: str, token: str, jobs: int, body: dict) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    latencies = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(jobs):
            started = time.perf_counter()
            async with session.post(url + "/api/job/run", json=body) as response:
                job_id = (await response.json())["job_id"]
            async with session.get(f"{url}/api/job/job_info/{job_id}?wait=60") as response:
                assert (await response.json())["state"] == "succeeded"
            latencies.append(time.perf_counter() - started)
    return latencies


BENCH_ENV = {"SKYBUS_LOG_LEVEL": "WARNING", "SKYBUS_HEARTBEAT_INTERVAL": "5", "SKYBUS_RESPONDING_TIMEOUT": "15"}


async def skybus_fleet(args: argparse.Namespace, vhost, name: str, body: dict) -> Result:
    data = Path(tempfile.mkdtemp(prefix="skybus-bench-"))
    fleet = Fleet(data, vhost.url, **BENCH_ENV)
    result = Result(name)
    try:
        await fleet.start()
        await skybus_throughput(fleet.url, fleet.token, 50, 8, body)  # warm up (and start the sandbox)

        def pids() -> dict[str, list[int]]:
            groups = {n: [p.process.pid] for n, p in fleet.processes.items()}  # type: ignore[union-attr]
            groups["agent"] += launchers()
            groups["rabbitmq"] = [pid] if (pid := broker_pid()) else []
            groups["client (bench)"] = [os.getpid()]
            return groups

        run = skybus_throughput(fleet.url, fleet.token, args.jobs, args.in_flight, body)
        await measured(result, pids, vhost.name, args.jobs, run)
        result.latencies = await skybus_latency(fleet.url, fleet.token, args.latency, body)
    finally:
        await fleet.stop()
        shutil.rmtree(data, ignore_errors=True)
    return result


async def skybus_embedded(args: argparse.Namespace) -> Result:
    data = Path(tempfile.mkdtemp(prefix="skybus-bench-up-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = skybus_env(**BENCH_ENV, SKYBUS_DATA_DIR=str(data), SKYBUS_PORT=str(port))
    up = await SkybusProcess(["up"], env).start()
    result = Result("skybus embedded")
    try:
        token = (await up.wait_for_line(r"SKYBUS_TOKEN=(\S+)", timeout=60)).group(1)

        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as session, session.get(url + "/health") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout=60)
        body = {"command": COMMAND}
        await skybus_throughput(url, token, 50, 8, body)

        def pids() -> dict[str, list[int]]:
            return {"skybus up": [up.process.pid], "sandbox": launchers(), "client (bench)": [os.getpid()]}  # type: ignore[union-attr]

        await measured(result, pids, None, args.jobs, skybus_throughput(url, token, args.jobs, args.in_flight, body))
        result.latencies = await skybus_latency(url, token, args.latency, body)
    finally:
        await up.stop()
        shutil.rmtree(data, ignore_errors=True)
    return result


# Celery.


def celery_worker(url: str) -> subprocess.Popen:
    env = {**os.environ, "BENCH_AMQP_URL": url}
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_baseline", "worker", "--pool=prefork", "--concurrency=2",
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=REPO / "bench", env=env,
    )  # fmt: skip


def celery_throughput(jobs: int, in_flight: int) -> float:
    import celery_baseline

    started = time.perf_counter()
    pending = []
    for _ in range(jobs):
        pending.append(celery_baseline.run.apply_async((COMMAND,)))
        if len(pending) >= in_flight:
            assert pending.pop(0).get(timeout=60) == 0
    for result in pending:
        assert result.get(timeout=60) == 0
    return jobs / (time.perf_counter() - started)


def celery_latency(jobs: int) -> list[float]:
    import celery_baseline

    latencies = []
    for _ in range(jobs):
        started = time.perf_counter()
        celery_baseline.run.apply_async((COMMAND,)).get(timeout=60)
        latencies.append(time.perf_counter() - started)
    return latencies


async def celery(args: argparse.Namespace, vhost) -> Result:
    os.environ["BENCH_AMQP_URL"] = vhost.url
    sys.path.insert(0, str(REPO / "bench"))
    import celery_baseline

    worker = celery_worker(vhost.url)
    result = Result("celery")
    try:
        await asyncio.to_thread(lambda: celery_baseline.run.apply_async((COMMAND,)).get(timeout=60))

        def pids() -> dict[str, list[int]]:
            workers = [worker.pid, *(c.pid for c in psutil.Process(worker.pid).children(recursive=True))]
            return {"workers": workers, "rabbitmq": [pid] if (pid := broker_pid()) else [],
                    "client (bench)": [os.getpid()]}  # fmt: skip

        run = asyncio.to_thread(celery_throughput, args.jobs, args.in_flight)
        await measured(result, pids, vhost.name, args.jobs, run)
        result.latencies = await asyncio.to_thread(celery_latency, args.latency)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    return result


# --replicas: jobs/s with N processes of every manager and gateway, beside one.


async def replicas_rate(args: argparse.Namespace, vhost, replicas: int) -> float:
    data = Path(tempfile.mkdtemp(prefix="skybus-bench-replicas-"))
    fleet = Fleet(data, vhost.url, replicas=replicas, **BENCH_ENV)  # type: ignore[call-arg]
    try:
        await fleet.start()
        body = {"command": COMMAND}
        await skybus_throughput(fleet.url, fleet.token, 50, 8, body)
        return await skybus_throughput(fleet.url, fleet.token, args.jobs, args.in_flight, body)
    finally:
        await fleet.stop()
        shutil.rmtree(data, ignore_errors=True)


def report(args: argparse.Namespace, results: list[Result], baseline: Result) -> None:
    print(f"\n{args.jobs} jobs of {COMMAND!r}, {args.in_flight} in flight; latency: {args.latency} jobs one at a time")
    for result in [*results, baseline]:
        print(result.line())
    for result in results:
        print(f"{result.name} / celery throughput: {result.rate / baseline.rate:.2f}")
    print("\nCPU ms per job (throughput run), by process:")
    for result in [*results, baseline]:
        parts = "  ".join(f"{name} {ms:.2f}" for name, ms in result.cpu_ms.items())
        total = sum(ms for name, ms in result.cpu_ms.items())
        print(f"  {result.name:20s} total {total:6.2f}   {parts}")
    print("\nAMQP messages published per job (RabbitMQ's count, throughput run):")
    for result in [*results, baseline]:
        if result.messages is not None:
            print(f"  {result.name:20s} {result.messages:.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency", type=int, default=100)
    parser.add_argument("--modes", default="fleet,privileged,embedded")
    parser.add_argument("--replicas", type=int, default=0, help="also jobs/s with N copies of every service")
    args = parser.parse_args()
    modes = args.modes.split(",")

    with fresh_vhost("skybus-bench") as vhost:
        results = []
        if "fleet" in modes:
            results.append(await skybus_fleet(args, vhost, "skybus fleet", {"command": COMMAND}))
        if "privileged" in modes:
            body = {"command": COMMAND, "privileged": True}
            results.append(await skybus_fleet(args, vhost, "skybus fleet, priv.", body))
        if "embedded" in modes:
            results.append(await skybus_embedded(args))
        baseline = await celery(args, vhost)
        report(args, results, baseline)
        if args.replicas > 1:
            one = await replicas_rate(args, vhost, 1)
            many = await replicas_rate(args, vhost, args.replicas)
            print(f"\nreplicas: 1 of each service {one:.1f} jobs/s; {args.replicas} of each {many:.1f} jobs/s")


if __name__ == "__main__":
    asyncio.run(main())
