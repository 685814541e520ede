"""What running a job costs the agent: unsandboxed, a fresh bwrap per job, and the long-lived sandbox.

    .venv/bin/python bench/sandbox.py [--jobs 300] [--rounds 3]

Each variant runs ``/bin/sh -c true`` jobs one after another on one event loop, output to files,
the end learnt without a thread (a pidfd, or the launcher's exit line):

* ``unsandboxed``: ``subprocess.Popen`` and a pidfd, as an agent without a sandbox would;
* ``fresh bwrap``: the same, with the job sandbox's bubblewrap command line around each job;
* ``launcher``: :class:`services.agent.supervisor.Supervisor` asks the user's launcher, started once
  inside the same sandbox, to run the job; the job's working directory is made as the agent makes it.

CPU is the agent process's plus what it waits for (bwrap and the jobs, or the launcher and the
jobs), from psutil; wall is the time per job. Printed: the best and the median of the rounds.
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
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.agent.supervisor import JobOptions, Supervisor, Supervisors

Job = Callable[[int], Awaitable[None]]


def cpu_of(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
    return total


async def popen_and_pidfd(argv: list[str], out: Path, **extra: object) -> None:
    with out.open("wb") as stream:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=stream, stderr=stream, start_new_session=True, **extra
        )  # type: ignore[call-overload]
    fd = os.pidfd_open(process.pid)
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    loop.add_reader(fd, ended.set_result, None)
    try:
        await ended
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    process.wait()


async def measure(name: str, job: Job, jobs: int, processes: list[psutil.Process]) -> tuple[float, float]:
    for n in range(5):  # warm up
        await job(-n - 1)
    cpu, wall = cpu_of(processes), time.perf_counter()
    for n in range(jobs):
        await job(n)
    return (cpu_of(processes) - cpu) * 1000 / jobs, (time.perf_counter() - wall) * 1000 / jobs


async def main(jobs: int, rounds: int) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="skybus-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    me = psutil.Process()
    limits = {"fsize": 16 * 1024**3, "nproc": 4096}  # the defaults: the launcher's own, inherited
    supervisors = Supervisors(scratch / "state", JobOptions(scratch_dir=scratch, limits=limits))
    supervisor: Supervisor = supervisors.supervisor("u-bench")
    await supervisor.connect(start=True)
    # bwrap's two processes and the launcher: every process whose command line names the socket.
    sandbox_processes = [
        p for p in psutil.process_iter(["cmdline"]) if str(supervisor.home.socket) in (p.info["cmdline"] or [])
    ]
    home = supervisor.home
    uid = supervisors.owner("u-bench")
    as_sandbox_user = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
    sandbox = supervisors._sandbox_argv(home.root)  # the very command line a launcher runs in

    async def unsandboxed(n: int) -> None:
        await popen_and_pidfd(["/bin/sh", "-c", "true"], home.root / "plain.out")

    async def fresh_bwrap(n: int) -> None:
        await popen_and_pidfd([*sandbox, "/bin/sh", "-c", "true"], home.root / "run" / "fresh.out", **as_sandbox_user)

    async def long_lived(n: int) -> None:
        job_id = f"job-{n}"
        workdir = supervisors.prepare_workdir("u-bench", job_id)
        exited = supervisor.exit_of(job_id)
        env = supervisors.job_environment("u-bench", job_id, workdir)
        await supervisor.run(job_id, ["/bin/sh", "-c", "true"], env, {})
        await exited
        supervisor.forget(job_id)
        for suffix in ("out", "err", "exit"):
            home.run(job_id, suffix).unlink()
        workdir.rmdir()

    variants: list[tuple[str, Job, list[psutil.Process]]] = [
        ("unsandboxed (Popen + pidfd)", unsandboxed, [me]),
        ("fresh bwrap per job", fresh_bwrap, [me]),
        ("long-lived sandbox (launcher)", long_lived, [me, *sandbox_processes]),
    ]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
    for _ in range(rounds):
        for name, job, processes in variants:
            results[name].append(await measure(name, job, jobs, processes))
    print(f"{jobs} `true` jobs per round, {rounds} rounds; CPU = agent + what it waits for (ms per job)")
    print(f"{'variant':32} {'CPU best':>9} {'CPU median':>11} {'wall best':>10} {'wall median':>12}")
    for name, figures in results.items():
        cpu = [c for c, _ in figures]
        wall = [w for _, w in figures]
        cpu_figures = f"{min(cpu):9.3f} {statistics.median(cpu):11.3f}"
        print(f"{name:32} {cpu_figures} {min(wall):10.3f} {statistics.median(wall):12.3f}")
    await supervisors.close()
    await asyncio.sleep(0.2)  # the launcher leaves once no agent is connected
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.jobs, arguments.rounds))
