"""``GET /api/job/logs/{job_id}``: a job's stdout and stderr, live (``follow=1``) or as stored.

The body is the raw bytes the job wrote (``application/octet-stream``, chunked), never decoded:
``stream=stdout`` or ``stream=stderr`` for one of them; by default both, in the order they came
while the job ran and, for what is read from the stored files of an ended job, stdout then stderr.
Without ``follow``: what there is so far (a running job's agent is asked, for at most
:data:`SO_FAR_WAIT` seconds). With it: until the job ends, then the rest from the stored files.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web

from schemas.jobs import JobState, OutputStream
from services.gateway.errors import ApiError
from services.gateway.job_output import (
    ASK_AGAIN_AFTER,
    OUTPUT_HUB,
    RENEW_EVERY,
    Follower,
    new_follower,
    stored_output,
)
from services.gateway.job_watch import WATCHER, any_change
from services.gateway.jobs_api import load_job
from services.gateway.openapi import documented
from services.gateway.params import JobLogsQuery
from services.gateway.resources_api import parse_uuid
from services.job_manager.records import JobRecord

routes = web.RouteTableDef()

SO_FAR_WAIT = 3.0
TICK = 1.0  # seconds between two looks at a follower that heard nothing (renewals, gaps)
RUNNING = (JobState.ACCEPTED, JobState.RUNNING)


def parse_streams(request: web.Request) -> tuple[OutputStream, ...]:
    query = request.query
    if unknown := sorted(set(query) - {"follow", "stream"}):
        raise ApiError(400, f"unknown parameter(s) {', '.join(unknown)}; known: follow, stream")
    name = query.get("stream")
    if name is None:
        return (OutputStream.STDOUT, OutputStream.STDERR)
    if name not in OutputStream.__members__.values():
        raise ApiError(400, f"stream must be stdout or stderr, not {name!r}")
    return (OutputStream(name),)


def parse_follow(request: web.Request) -> bool:
    text = request.query.get("follow", "0").lower()
    if text not in ("0", "1", "true", "false", ""):
        raise ApiError(400, f"follow must be 1 or 0, not {text!r}")
    return text in ("1", "true")


@routes.get("/api/job/logs/{job_id}")
@documented(
    query=JobLogsQuery,
    media="application/octet-stream",
    errors=(400, 403, 404, 410),
    summary="A job's raw stdout and stderr (chunked bytes): ?stream=stdout|stderr (default both, in the "
    "order received), ?follow=1 streams them live until the job ends; without it, what there is so far",
)
async def job_logs(request: web.Request) -> web.StreamResponse:
    job_id = parse_uuid(request.match_info["job_id"], "job id")
    streams = parse_streams(request)
    follow = parse_follow(request)
    job = await load_job(request, job_id)  # 404, 403, 410 before anything is sent
    headers = {"Content-Type": "application/octet-stream", "X-Content-Type-Options": "nosniff"}
    response = web.StreamResponse(headers=headers)
    response.enable_chunked_encoding()
    await response.prepare(request)
    positions = dict.fromkeys(OutputStream, 0)
    try:
        job = await _live(request, response, job, streams, positions, follow=follow)
        if job is not None and job.is_final:
            for stream in streams:
                async for chunk in stored_output(request.app, job, stream, positions[stream]):
                    await response.write(chunk)
    except ApiError:
        pass  # the job went (deleted, its ttl ran out) while it was followed: job_info says so
    except ConnectionResetError:
        return response  # the client went away
    await response.write_eof()
    return response


async def _live(
    request: web.Request,
    response: web.StreamResponse,
    job: JobRecord,
    streams: tuple[OutputStream, ...],
    positions: dict[OutputStream, int],
    *,
    follow: bool,
) -> JobRecord | None:
    """Send what the running job writes, until it ends (follow) or all it wrote so far came; the
    job as it is then (None if it went)."""
    watcher = request.app[WATCHER]
    while True:
        with watcher.watching(job.id, any_change) as changed:
            job = await load_job(request, job.id)  # after the watch began: no change slips between
            if job.is_final:
                return job
            if job.state in RUNNING and job.resource_id is not None:
                follower = await new_follower(request.app, job, streams)
                if follower is not None:
                    follower.positions.update(positions)
                    done = await _follow(request, response, follower, changed, follow=follow)
                    positions.update(follower.positions)
                    if not follow and done:
                        return job
            if not follow:
                return job
            await changed  # pending or staging: wait for it to run (or end)


async def _follow(
    request: web.Request, response: web.StreamResponse, follower: Follower, changed: asyncio.Future, *, follow: bool
) -> bool:
    """Write what the follower gets until the job changes (follow) or it caught up (not): True when
    it caught up."""
    hub = request.app[OUTPUT_HUB]
    started = time.monotonic()
    with hub.following(follower):
        await hub.ask(follower)
        while True:
            waiting = asyncio.ensure_future(follower.wake.wait())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK):
                    await asyncio.wait([waiting, changed], return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            follower.wake.clear()
            for _, data in follower.drain():
                await response.write(data)
            if changed.done():
                return False
            if not follow and follower.caught_up():
                return True
            now = time.monotonic()
            if not follow and now - started > SO_FAR_WAIT:
                return False
            if (follower.gap and now - follower.asked_at > ASK_AGAIN_AFTER) or now - follower.asked_at > RENEW_EVERY:
                await hub.ask(follower)
