"""Faults injected into a running fleet, and the check that no job was lost, stuck or run twice.

Shared by ``tests/chaos`` (short runs, in CI) and ``bench/chaos.py`` (longer runs, a table). Every
job appends its id to a marks file as it starts (``echo $SKYBUS_JOB_ID >> marks``), so the marks
tell what ran, whatever the services believe. Jobs are submitted privileged (the fleet's token is
an admin's) so they may write the marks file outside their work dir.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.chaos.proxy import TcpProxy
from tests.e2e.fleet import Fleet

FINAL = {"succeeded", "failed", "cancelled", "lost"}
FLEET_ENV = {"SKYBUS_KILL_GRACE": "1", "SKYBUS_JOB_SWEEP_INTERVAL": "0.3", "SKYBUS_LOST_TIMEOUT": "3"}

Inject = Callable[[], Awaitable[None]]


@dataclass
class Outcome:
    fault: str
    jobs: int
    states: Counter[str] = field(default_factory=Counter)
    ran_twice: list[str] = field(default_factory=list)
    finals_not_one: list[str] = field(default_factory=list)
    succeeded_unmarked: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    retried: int = 0
    """Jobs that ran more than one attempt (``retries``): each attempt has a task id, and so a mark, of its own."""
    recovery: float = 0.0
    """Seconds from the end of the fault until every job was in a final state."""

    @property
    def sound(self) -> bool:
        return not (self.ran_twice or self.finals_not_one or self.succeeded_unmarked or self.stuck)

    def row(self) -> str:
        states = " ".join(f"{state}={n}" for state, n in sorted(self.states.items()))
        return (f"{self.fault:<28} {self.jobs:>5}  {states:<30} {len(self.ran_twice):>9} {len(self.stuck):>5}"
                f" {self.recovery:>9.1f}s")  # fmt: skip


HEADER = f"{'fault':<28} {'jobs':>5}  {'final states':<30} {'run twice':>9} {'stuck':>5} {'recovery':>10}"


class Chaos:
    def __init__(self, fleet: Fleet, proxy: TcpProxy | None, marks: Path) -> None:
        self.fleet = fleet
        self.proxy = proxy
        self.marks = marks
        self._submitted = 0

    # Faults.

    def network(self, kind: str, seconds: float = 0.0) -> Inject:
        """``drop`` (every connection reset once), ``cut`` (reset and refused) or ``stall`` (no byte moves)."""

        async def inject() -> None:
            assert self.proxy is not None, "network faults need the fleet behind a TcpProxy"
            getattr(self.proxy, kind)()
            if seconds:
                await asyncio.sleep(seconds)
                self.proxy.restore()

        return inject

    @staticmethod
    def after(seconds: float, inject: Inject) -> Inject:
        """``inject`` once ``seconds`` have passed since half the jobs were in (so that they run)."""

        async def later() -> None:
            await asyncio.sleep(seconds)
            await inject()

        return later

    @staticmethod
    def nothing() -> Inject:
        async def inject() -> None:
            return None

        return inject

    def kill(self, name: str, down: float = 0.5) -> Inject:
        """SIGKILL the process ``name`` and start it again after ``down`` seconds."""

        async def inject() -> None:
            await self.fleet.processes[name].kill()
            await asyncio.sleep(down)
            if name == "agent":
                await self.fleet.start_agent()
            else:
                await self.fleet.start_service(name)

        return inject

    def pause(self, name: str, seconds: float = 2.0) -> Inject:
        """SIGSTOP the process ``name`` for ``seconds``, then SIGCONT."""

        async def inject() -> None:
            process = self.fleet.processes[name].process
            assert process is not None
            os.kill(process.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(seconds)
            finally:
                os.kill(process.pid, signal.SIGCONT)

        return inject

    # One run.

    async def run(self, fault: str, inject: Inject, *, jobs: int = 20, in_flight: int = 8, settle: float = 60.0,
                  seconds: float = 0.3, retries: int = 0) -> Outcome:  # fmt: skip
        """Submit ``jobs`` jobs, inject the fault once half are in, and wait for every job to end."""
        job_ids: list[str] = []
        half = asyncio.Event()
        semaphore = asyncio.Semaphore(in_flight)
        first = self._submitted
        self._submitted += jobs
        connector = aiohttp.TCPConnector(limit=in_flight * 2)
        async with aiohttp.ClientSession(connector=connector, headers=self._headers()) as session:

            async def one(n: int) -> None:
                async with semaphore:
                    job_ids.append(await self._submit(session, n, seconds, retries))
                if len(job_ids) >= jobs // 2:
                    half.set()

            async def fault_then_end() -> float:
                await half.wait()
                await inject()
                return time.monotonic()

            *_, fault_ended = await asyncio.gather(*(one(n) for n in range(first, first + jobs)), fault_then_end())
            infos = await self._wait_final(session, job_ids, settle)
        outcome = Outcome(fault, jobs, recovery=max(0.0, time.monotonic() - fault_ended))
        self._judge(outcome, infos)
        return outcome

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.fleet.token}"}

    async def _submit(self, session: aiohttp.ClientSession, n: int, seconds: float, retries: int) -> str:
        """A client that retries with its Idempotency-Key, on every gateway in turn, until it has its job."""
        command = f'echo "$SKYBUS_JOB_ID" >> {self.marks}; sleep {seconds:g}'
        body = {"command": command, "privileged": True, "retries": retries}
        headers = {"Idempotency-Key": f"chaos-{n}"}
        for attempt in range(600):
            url = self.fleet.urls[(n + attempt) % len(self.fleet.urls)]
            try:
                async with session.post(url + "/api/job/run", json=body, headers=headers) as response:
                    if response.status == 201:
                        return (await response.json())["job_id"]
                    assert response.status in (502, 503, 504), await response.text()
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"job {n} was never accepted")

    async def _wait_final(self, session: aiohttp.ClientSession, job_ids: list[str], settle: float) -> dict[str, Any]:
        infos: dict[str, Any] = {}
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            for job_id in job_ids:
                if infos.get(job_id, {}).get("state") in FINAL:
                    continue
                try:
                    async with session.get(f"{self.fleet.url}/api/job/job_info/{job_id}") as response:
                        if response.status == 200:
                            infos[job_id] = await response.json()
                except (TimeoutError, aiohttp.ClientError):
                    pass
            if all(infos.get(job_id, {}).get("state") in FINAL for job_id in job_ids):
                break
            await asyncio.sleep(0.3)
        return {job_id: infos.get(job_id, {"state": "unknown", "history": []}) for job_id in job_ids}

    def _judge(self, outcome: Outcome, infos: dict[str, Any]) -> None:
        marks = Counter(self.marks.read_text().split()) if self.marks.exists() else Counter()
        for job_id, info in infos.items():
            outcome.states[info["state"]] += 1
            if info["state"] not in FINAL:
                outcome.stuck.append(job_id)
                continue
            # A lost attempt that was retried carries its attempt number: it is not the job's end.
            if sum(step["state"] in FINAL and "attempt" not in step for step in info["history"]) != 1:
                outcome.finals_not_one.append(job_id)
            attempt = info.get("attempt", 1)
            outcome.retried += attempt > 1
            tasks = [job_id, *(f"{job_id}.{n}" for n in range(2, attempt + 1))]
            if any(marks[task] > 1 for task in tasks):
                outcome.ran_twice.append(job_id)
            job_id = tasks[-1]  # what the last attempt's mark is under
            if info["state"] == "succeeded" and marks[job_id] != 1:
                outcome.succeeded_unmarked.append(job_id)
