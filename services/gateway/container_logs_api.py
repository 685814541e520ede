"""``GET /nodes/{node}/containers/{container}/jobs/{job}/logs``: a seed 003 container job's output.

A container job is not a job of the job manager (seed 001): it is a process an admin started in a
container, which the node's agent tracks by its own uuid, so ``/api/job/logs/{id}`` does not know
it. Its log is read here with the same shape: the raw bytes (``application/octet-stream``,
chunked), stdout and stderr together as the process wrote them, ``?follow=1`` until the job ends.

Each read is a live query to the node's agent (:class:`ReadContainerJobLog`, through the resource
manager, answered signed, as every seed 003 call is) of at most one chunk from an offset. A
follower asks again at once while there is more, and every :data:`POLL` seconds while the job runs
and wrote nothing new: container jobs are an admin's few long-running processes, and this costs two
messages per poll and nothing once nobody follows. The agent keeps an ended job's log until its
container is deleted, so it can be read after the job ended.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from schemas.pool import ContainerJobLog, ReadContainerJobLog
from services.gateway.errors import ApiError
from services.gateway.logs_api import parse_follow
from services.gateway.openapi import NODE_ERRORS, documented
from services.gateway.params import ContainerJobLogsQuery
from services.gateway.pool_api import CONTAINER, ask_node

routes = web.RouteTableDef()

POLL = 0.5  # seconds between two reads of a running job that wrote nothing new


@routes.get(CONTAINER + "/jobs/{job_id}/logs")
@documented(
    query=ContainerJobLogsQuery,
    media="application/octet-stream",
    errors=(400, 404, *NODE_ERRORS),
    summary="A container job's raw output, stdout and stderr together (chunked bytes); ?follow=1 until it "
    "ends; kept after it ends, until its container is deleted",
)
async def container_job_logs(request: web.Request) -> web.StreamResponse:
    if unknown := sorted(set(request.query) - {"follow"}):
        raise ApiError(400, f"unknown parameter(s) {', '.join(unknown)}; known: follow (a container job has one log)")
    follow = parse_follow(request)
    answer = await _read(request, 0)  # 404, 403 and 504 before anything is sent
    response = web.StreamResponse(
        headers={"Content-Type": "application/octet-stream", "X-Content-Type-Options": "nosniff"}
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    offset = 0
    try:
        while True:
            data = answer.raw()
            if data:
                await response.write(data)
            offset += len(data)
            if offset >= answer.size:
                if not (follow and answer.running):
                    break
                await asyncio.sleep(POLL)
            answer = await _read(request, offset)
    except ApiError:
        pass  # the node stopped answering, or the container went: the body ends where it was
    except ConnectionResetError:
        return response  # the client went away
    await response.write_eof()
    return response


async def _read(request: web.Request, offset: int) -> ContainerJobLog:
    job_id = request.match_info["job_id"]
    return await ask_node(
        request, ReadContainerJobLog, ContainerJobLog, in_container=True, job_id=job_id, offset=offset
    )
