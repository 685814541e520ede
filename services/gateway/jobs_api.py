"""Seed 001: jobs under ``/api/job/`` (and ``/api/list_jobs``, as the seed's sample calls it)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from schemas.jobs import (
    CancelJob,
    DeleteJob,
    JobCreated,
    JobIdBody,
    JobInfo,
    JobList,
    JobState,
    JobSummary,
    RunJob,
    RunJobBody,
)
from services.content_manager import records as contents
from services.gateway.bodies import parse_body, read_fields, validate
from services.gateway.context import SETTINGS, STORE, caller, publish_command, require_owner, send_command
from services.gateway.errors import ApiError
from services.gateway.ids import minted_at, uuid7
from services.gateway.job_watch import WATCHER, any_change, ended, until
from services.gateway.limits import check_job_quota
from services.gateway.openapi import COMMAND_ERRORS, documented
from services.gateway.params import JobIdQuery, JobInfoQuery, ListJobsQuery, RunJobHeaders
from services.gateway.resources_api import iso, parse_uuid
from services.job_manager import records as jobs
from services.job_manager.records import JobRecord
from services.resource_manager import records as resources

routes = web.RouteTableDef()

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def job_info(job: JobRecord) -> JobInfo:
    return JobInfo(
        job_id=job.id,
        state=job.state,
        answer_id=job.answer_id,
        command=job.command,
        user=job.user,
        resource_id=job.resource_id,
        binary=job.binary,
        input_files=list(job.input_files),
        ttl=job.ttl,
        created_at=iso(job.created_at) or "",
        started_at=iso(job.started_at),
        finished_at=iso(job.finished_at),
        exit_code=job.exit_code,
        error=job.error,
        history=[history_step(step) for step in job.history],
        attempt=job.attempt,
        retries=job.retries,
        stdout_id=job.stdout_id,
        stderr_id=job.stderr_id,
        output_files=list(job.output_files),
        outputs=dict(job.outputs),
        output_errors=dict(job.output_errors),
    )


def history_step(step: Mapping[str, Any]) -> dict[str, str | int]:
    shown: dict[str, str | int] = {"state": step["state"], "at": iso(step["at"]) or ""}
    if "attempt" in step:
        shown["attempt"] = step["attempt"]
    return shown


FRESH = 30.0
"""Seconds during which a job id the gateway minted may not be stored yet: a miss waits for the job."""


async def load_job(request: web.Request, job_id: str) -> JobRecord:
    """The caller's job: 404 unknown, 403 another user's, 410 deleted or past its ttl."""
    store = request.app[STORE]
    job = await jobs.get_job(store, job_id)
    if job is None and (born := minted_at(job_id)) is not None and 0 <= time.time() - born < FRESH:
        # 201 was answered once the command was confirmed: the job manager may not have stored it yet.
        with request.app[WATCHER].watching(job_id, any_change) as known:
            job = await jobs.get_job(store, job_id)
            if job is None and await until(known, request.app[SETTINGS].request_timeout) is not None:
                job = await jobs.get_job(store, job_id)
    if job is None:
        raise ApiError(404, f"job {job_id} not found")
    require_owner(request, job.user, "this job")
    if job.deleted:
        raise ApiError(410, f"job {job_id} is gone ({job.deleted_reason})")
    if job.is_expired(datetime.now(UTC).timestamp()):
        raise ApiError(410, f"job {job_id} is gone (its ttl ran out)")
    return job


async def check_files(request: web.Request, body: RunJobBody) -> None:
    """Every file the job names exists and the caller may use it."""
    wanted = ([body.binary] if body.binary else []) + body.input_files
    if not wanted:
        return
    items = await contents.get_items(request.app[STORE], wanted)
    principal = caller(request)
    for data_id in wanted:
        item = items.get(data_id)
        if item is None:
            raise ApiError(400, f"unknown data id {data_id}: upload it with POST /api/data first")
        if not item.may_change(user=principal.user, admin=principal.admin):
            raise ApiError(403, f"data {data_id} belongs to another user")


async def pinned_host(request: web.Request, body: RunJobBody) -> str | None:
    store = request.app[STORE]
    if body.resource_id:
        host = await resources.get_resource(store, body.resource_id)
        if host is None:
            raise ApiError(400, f"unknown resource {body.resource_id}")
    elif body.hostname:
        host = await resources.resource_by_hostname(store, body.hostname)
        if host is None:
            raise ApiError(400, f"no resource with hostname {body.hostname!r}")
    else:
        return None
    principal = caller(request)
    if not (principal.admin or host.shared or host.user == principal.user):
        raise ApiError(403, f"host {host.hostname} takes only its own user's jobs")
    # A host that is not authorized yet (it joined and waits for an admin) is like one that is not
    # responding: the job waits pending, and placement takes it there once it may take jobs.
    return host.id


IDEMPOTENCY = uuid.UUID("6f1c1f3e-2f1d-4d8e-9a53-8a3c1b0e7d21")


def idempotent_job_id(request: web.Request) -> str | None:
    """With an ``Idempotency-Key`` header, the same id for the same key and user, so a client that
    retries after a timeout gets its first job back instead of a second one."""
    key = request.headers.get("Idempotency-Key")
    if not key:
        return None
    if len(key) > 255:
        raise ApiError(400, "Idempotency-Key is longer than 255 characters")
    return str(uuid.uuid5(IDEMPOTENCY, f"{caller(request).user}\0{key}"))


@routes.post("/api/job/run")
@documented(
    body=RunJobBody,
    response=JobCreated,
    status=201,
    headers=RunJobHeaders,
    errors=(409, 429, *COMMAND_ERRORS),
    summary="Run a command on a host",
)
async def run_job(request: web.Request) -> web.Response:
    body = await parse_body(request, RunJobBody)
    if body.privileged and not caller(request).admin:
        raise ApiError(403, "only an admin may run a privileged (unsandboxed) job")
    await check_job_quota(request)
    await check_files(request, body)
    resource_id = await pinned_host(request, body)
    job_id = idempotent_job_id(request)
    command = RunJob(
        job_id=job_id or uuid7(),
        user=caller(request).user,
        command=body.command,
        binary=body.binary,
        input_files=body.input_files,
        ttl=body.ttl,
        resource_id=resource_id,
        privileged=body.privileged,
        retries=body.retries,
        output_files=body.output_files,
    )
    if job_id is None:
        await publish_command(request, command)  # the job manager stores it; a read waits for it (load_job)
    else:
        await send_command(request, command)  # the reply says whether the key was used for another job
    return web.json_response(JobCreated(job_id=command.job_id).model_dump(), status=201)


MAX_WAIT = 60.0


@routes.get("/api/job/job_info/{job_id}")
@documented(
    response=JobInfo,
    query=JobInfoQuery,
    errors=(400, 404, 410),
    summary="State and answer of a job; ?wait=N answers once it ends (N ≤ 60 s)",
)
async def get_job_info(request: web.Request) -> web.Response:
    job_id = parse_uuid(request.match_info["job_id"], "job id")
    wait = request.query.get("wait")
    if wait is None:
        return web.json_response(job_info(await load_job(request, job_id)).model_dump(mode="json"))
    try:
        seconds = float(wait)
    except ValueError:
        raise ApiError(400, "wait must be a number of seconds") from None
    if not 0 <= seconds <= MAX_WAIT:
        raise ApiError(400, f"wait must be between 0 and {MAX_WAIT:g} seconds")
    with request.app[WATCHER].watching(job_id, ended) as end:  # before the read: no change slips between
        job = await load_job(request, job_id)
        if not job.is_final and await until(end, seconds) is not None:
            job = await load_job(request, job_id)
    return web.json_response(job_info(job).model_dump(mode="json"))


def parse_time(name: str, text: str) -> float:
    try:
        return representable_time(name, float(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{name} must be an ISO 8601 time or epoch seconds, not {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def representable_time(name: str, seconds: float) -> float:
    """``seconds`` since the epoch, if it is a date (years 1 to 9999) that answers can show; else 400."""
    try:
        datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, ValueError, OSError):
        raise ApiError(400, f"{name}: {seconds!r} seconds since 1970 is no date (years 1 to 9999)") from None
    return seconds


@routes.get("/api/job/list_jobs")
@routes.get("/api/list_jobs")
@documented(
    response=JobList,
    query=ListJobsQuery,
    errors=(400,),
    summary="List jobs, newest first (state, user, resource_id, since, until, limit, cursor; detail=1 adds rows)",
)
async def list_jobs(request: web.Request) -> web.Response:
    query = request.query
    principal = caller(request)
    known = {"state", "user", "resource_id", "since", "until", "limit", "cursor", "detail"}
    if unknown := sorted(set(query) - known):
        raise ApiError(400, f"unknown filter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    user = query.get("user")
    if user is not None and user != principal.user and not principal.admin:
        raise ApiError(403, "only an admin may list another user's jobs")
    if user is not None or not principal.admin:
        user = user or principal.user
    states = None
    if (state := query.get("state")) is not None:
        states = state.split(",")
        if bad := [s for s in states if s not in JobState.__members__.values()]:
            raise ApiError(400, f"unknown state {bad[0]!r}; states: {', '.join(JobState)}")
    resource_id = query.get("resource_id")
    if resource_id is not None:
        resource_id = parse_uuid(resource_id, "resource_id")
    since = None if (text := query.get("since")) is None else parse_time("since", text)
    until = None if (text := query.get("until")) is None else parse_time("until", text)
    try:
        limit = int(query.get("limit", DEFAULT_PAGE))
    except ValueError:
        raise ApiError(400, "limit must be an integer") from None
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, f"limit must be between 1 and {MAX_PAGE}")
    try:
        page = await jobs.find_jobs(
            request.app[STORE],
            user=user,
            states=states,
            resource_id=resource_id,
            created_since=since,
            created_until=until,
            limit=limit,
            cursor=query.get("cursor"),
        )
    except ValueError as error:
        raise ApiError(400, f"bad cursor: {error}") from None
    body = JobList(job_ids=[job.id for job in page.items], next_cursor=page.next_cursor)
    if query.get("detail") in ("1", "true"):
        body.jobs = await job_summaries(request, page.items)
        return web.json_response(body.model_dump(mode="json"))
    return web.json_response(body.model_dump(exclude={"jobs"}))


async def job_summaries(request: web.Request, found: list[JobRecord]) -> list[JobSummary]:
    hostnames: dict[str, str | None] = {}
    for resource_id in {job.resource_id for job in found if job.resource_id}:
        host = await resources.get_resource(request.app[STORE], resource_id)
        hostnames[resource_id] = host.hostname if host else None
    return [
        JobSummary(
            job_id=job.id,
            state=job.state,
            command=job.command,
            user=job.user,
            resource_id=job.resource_id,
            hostname=hostnames.get(job.resource_id) if job.resource_id else None,
            exit_code=job.exit_code,
            created_at=iso(job.created_at) or "",
            finished_at=iso(job.finished_at),
        )
        for job in found
    ]


async def job_id_from(request: web.Request) -> str:
    fields = await read_fields(request)
    if not fields and "job_id" in request.query:
        fields = {"job_id": request.query["job_id"]}
    return validate(JobIdBody, fields).job_id


@routes.post("/api/job/cancel")
@documented(
    body=JobIdBody,
    body_optional=True,
    query=JobIdQuery,
    response=JobCreated,
    errors=(404, 409, 410, *COMMAND_ERRORS),
    summary="Cancel a job (409 if it already finished)",
)
async def cancel_job(request: web.Request) -> web.Response:
    job_id = await job_id_from(request)
    await load_job(request, job_id)
    await send_command(request, CancelJob(job_id=job_id))
    return web.json_response({"job_id": job_id})


@routes.delete("/api/job/delete")
@routes.delete("/api/job/cancel")  # the seed's sample deletes with this URL
@documented(
    body=JobIdBody,
    body_optional=True,
    query=JobIdQuery,
    response=JobCreated,
    errors=(404, 410, *COMMAND_ERRORS),
    summary="Delete a job (cancelling it first) and its answer",
)
async def delete_job(request: web.Request) -> web.Response:
    job_id = await job_id_from(request)
    await load_job(request, job_id)
    await send_command(request, DeleteJob(job_id=job_id))
    return web.json_response({"job_id": job_id})
