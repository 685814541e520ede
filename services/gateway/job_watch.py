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

from services.gateway.context import STORE
from services.job_manager import records as jobs
from services.store.port import DocumentStore, StoreError

# Seconds between reads while somebody waits: one query a tick for all waiters, quick for a few
# (a low latency), slower for many (each read costs more, and the gateway has other work).
MIN_PERIOD, PER_WAITER, MAX_PERIOD = 0.002, 0.0003, 0.02


def period(waiters: int) -> float:
    return min(MAX_PERIOD, MIN_PERIOD + PER_WAITER * waiters)


class JobWatcher:
    def __init__(self, store: DocumentStore) -> None:
        self._store = store
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
                done = await jobs.ended_or_gone(self._store, ids)
            except StoreError:
                continue
            for job_id in done:
                for future in self._waiters.get(job_id, []):
                    if not future.done():
                        future.set_result(None)


WATCHER = web.AppKey("job_watcher", JobWatcher)


async def job_watcher_context(app: web.Application) -> AsyncIterator[None]:
    watcher = app[WATCHER] = JobWatcher(app[STORE])
    task = asyncio.create_task(watcher.run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
