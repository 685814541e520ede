"""Waiting on jobs, woken by the job manager's ``job.changed`` broadcast, never by polling the store.

Every gateway process subscribes its own broadcast queue of job changes. A long poll
(``GET /api/job/job_info/{id}?wait=N``) waits here until its job ends or goes; a read that misses a job
whose id was minted moments ago (the gateway answers ``POST /api/job/run`` once the command is
confirmed, before the job manager stored it) waits here for that job's first change. The store is
read once, when a waiter wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator

from aiohttp import web

from broker.envelope import Envelope
from broker.router import Router
from schemas.jobs import FINAL_STATES, JobChanged
from services.gateway.context import BUS, TOPOLOGY

Wanted = Callable[[JobChanged], bool]


def ended(change: JobChanged) -> bool:
    return change.deleted or change.state in FINAL_STATES


def any_change(change: JobChanged) -> bool:
    return True


class JobWatcher:
    def __init__(self) -> None:
        self._waiters: dict[str, list[tuple[Wanted, asyncio.Future[JobChanged]]]] = defaultdict(list)
        self.heard = 0
        self.listeners: list[Callable[[JobChanged], None]] = []  # told every change (the event stream)

    @contextlib.contextmanager
    def watching(self, job_id: str, wanted: Wanted) -> Iterator[asyncio.Future[JobChanged]]:
        """A future of the first change of ``job_id`` that is ``wanted``, heard while in this block.

        Enter it before reading the job, so a change between the read and the wait is not missed."""
        future: asyncio.Future[JobChanged] = asyncio.get_running_loop().create_future()
        entry = (wanted, future)
        self._waiters[job_id].append(entry)
        try:
            yield future
        finally:
            future.cancel()
            waiting = self._waiters.get(job_id)
            if waiting is not None:
                with contextlib.suppress(ValueError):
                    waiting.remove(entry)
                if not waiting:
                    del self._waiters[job_id]

    def router(self) -> Router:
        router = Router()
        router.add(JobChanged, self.job_changed)
        return router

    async def job_changed(self, change: JobChanged, envelope: Envelope) -> None:
        """The handler of this gateway's broadcast queue: wake whoever waits for this change."""
        self.heard += 1
        for listener in self.listeners:
            listener(change)
        for wanted, future in self._waiters.get(change.job_id, ()):
            if not future.done() and wanted(change):
                future.set_result(change)


async def until(future: asyncio.Future[JobChanged], timeout: float) -> JobChanged | None:
    """What ``future`` brings within ``timeout`` seconds, or None."""
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(future)
    except TimeoutError:
        return None


WATCHER = web.AppKey("job_watcher", JobWatcher)


async def job_watcher_context(app: web.Application) -> AsyncIterator[None]:
    watcher = app[WATCHER] = JobWatcher()
    subscription = await app[BUS].subscribe(app[TOPOLOGY].gateway_job_changes(), watcher.router())
    yield
    await subscription.cancel()
