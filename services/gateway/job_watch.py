"""Long polling for ``GET /api/job/job_info/{id}?wait=N``: answer when the job ends, not before.

One loop per gateway reads every awaited job in one query a few times a second, however many
clients wait, instead of each client polling over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

from aiohttp import web

from schemas.jobs import FINAL_STATES
from services.gateway.context import STORE
from services.job_manager.repository import JOBS
from services.store.port import Collection, StoreError

# Seconds between reads while somebody waits: one query a tick for all waiters, quick for a few
# (a low latency), slower for many (each read costs more, and the gateway has other work).
ENDED = sorted(FINAL_STATES)
MIN_PERIOD, PER_WAITER, MAX_PERIOD = 0.002, 0.0003, 0.02


def period(waiters: int) -> float:
    return min(MAX_PERIOD, MIN_PERIOD + PER_WAITER * waiters)


class JobWatcher:
    def __init__(self, jobs: Collection) -> None:
        self._jobs = jobs
        self._waiters: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._wake = asyncio.Event()

    async def wait(self, job_id: str, timeout: float) -> None:
        """Return when the job is final or gone, or after ``timeout`` seconds, whichever is first."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[job_id].append(future)
        self._wake.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, timeout)
        finally:
            waiting = self._waiters.get(job_id)
            if waiting is not None:
                with contextlib.suppress(ValueError):
                    waiting.remove(future)
                if not waiting:
                    del self._waiters[job_id]

    async def run(self) -> None:
        while True:
            if not self._waiters:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(period(len(self._waiters)))
            ids = list(self._waiters)
            if not ids:
                continue
            try:
                # Only the jobs that ended (or went) come back: most waiters' jobs are still running,
                # and their documents are neither read out of the store nor parsed.
                ended = await self._jobs.find({"id": {"$in": ids}, "state": {"$in": ENDED}}, limit=len(ids))
                gone = await self._jobs.find({"id": {"$in": ids}, "deleted": True}, limit=len(ids))
            except StoreError:
                continue
            for job in [*ended.items, *gone.items]:
                for future in self._waiters.get(job["id"], []):
                    if not future.done():
                        future.set_result(None)


WATCHER = web.AppKey("job_watcher", JobWatcher)


async def job_watcher_context(app: web.Application) -> AsyncIterator[None]:
    watcher = app[WATCHER] = JobWatcher(app[STORE].collection(JOBS))
    task = asyncio.create_task(watcher.run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
