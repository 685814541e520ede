"""What one client may hold open or store: slow bodies, compressed bodies, per-user quotas.

* **Slow headers**: a connection must finish a request's headers within ``header_timeout`` of
  opening (or of its previous response); aiohttp's keep-alive timer closes it otherwise
  (:func:`server_options`).
* **Slow bodies**: while a handler waits for a body, a watchdog fails the read with 408 when no byte
  came for ``body_idle_timeout`` seconds, or when the body averages under ``body_min_rate`` bytes a
  second once it has taken that long (:func:`body_deadline_middleware`).
* **Compressed bodies** expand to ``max_decompressed_bytes`` at most: 413 beyond.
* **Quotas**: a user may have ``max_active_jobs_per_user`` jobs not yet ended, and store
  ``max_stored_bytes_per_user`` bytes of data and content: 429 beyond. Admins are exempt (role
  jobs and fleet work are theirs), and so are agents (a job's answer must not be lost to its
  user's quota). The checks read the counts before accepting, so concurrent requests of one user may
  go past a quota by the requests in flight; they are a brake, not an accounting.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from services.content_manager import records as contents
from services.gateway.context import SETTINGS, STORE, caller
from services.gateway.errors import ApiError, Handler
from services.job_manager import records as jobs
from services.settings import Settings

QUOTA_LEFT = web.RequestKey("quota_left", int)  # set when the user's storage quota, not the upload limit, binds
IDENTITY = {"", "identity"}


class SlowBody(Exception):
    """The body came too slowly: its reader fails with this, the client gets 408."""


def server_options(settings: Settings) -> dict[str, Any]:
    """The aiohttp server's own limits: its keep-alive timer runs from a connection's start and
    closes it when no complete request came by then, which bounds slow headers."""
    return {"keepalive_timeout": settings.header_timeout}


def is_encoded(request: web.Request) -> bool:
    return request.headers.get("Content-Encoding", "").strip().lower() not in IDENTITY


async def _watch_body(request: web.Request, settings: Settings) -> None:
    body = request.content
    started = last_change = time.monotonic()
    seen = body.total_bytes
    tick = max(min(settings.body_idle_timeout / 4, 1.0), 0.01)
    while not body.is_eof():
        await asyncio.sleep(tick)
        now = time.monotonic()
        if body.total_bytes != seen:
            seen, last_change = body.total_bytes, now
        if now - last_change > settings.body_idle_timeout:
            why = f"no byte of the body came for {settings.body_idle_timeout:g} s"
        elif now - started > settings.body_idle_timeout and seen / (now - started) < settings.body_min_rate:
            why = f"the body came slower than {settings.body_min_rate} bytes a second"
        else:
            continue
        body.set_exception(SlowBody(why))
        return


@web.middleware
async def body_deadline_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.body_exists or request.content.is_eof():
        return await handler(request)
    watchdog = asyncio.create_task(_watch_body(request, request.app[SETTINGS]))
    try:
        return await handler(request)
    except SlowBody as error:
        raise ApiError(408, f"request timeout: {error}") from None
    finally:
        watchdog.cancel()


async def check_job_quota(request: web.Request) -> None:
    """429 when the caller already has as many pending or running jobs as the quota allows."""
    principal = caller(request)
    quota = request.app[SETTINGS].max_active_jobs_per_user
    if quota is None or principal.admin or principal.resource_id:
        return
    active = await jobs.count_active_jobs(request.app[STORE], principal.user)
    if active >= quota:
        raise ApiError(
            429,
            f"user {principal.user} has {active} pending or running jobs, the most allowed "
            f"(SKYBUS_MAX_ACTIVE_JOBS_PER_USER={quota}): wait for some to end or cancel them",
        )


async def upload_limit(request: web.Request, limit: int) -> int:
    """The most bytes this upload may be: the upload limit, lowered for a compressed body and to what
    is left of the caller's storage quota (429 when nothing is)."""
    settings = request.app[SETTINGS]
    if is_encoded(request):
        limit = min(limit, settings.max_decompressed_bytes)
    principal = caller(request)
    quota = settings.max_stored_bytes_per_user
    if quota is None or principal.admin or principal.resource_id:
        return limit
    left = quota - await contents.stored_bytes(request.app[STORE], principal.user)
    if left <= 0:
        raise quota_full(principal.user, quota)
    if left < limit:
        request[QUOTA_LEFT] = left
        return left
    return limit


def quota_full(user: str, quota: int) -> ApiError:
    return ApiError(
        429,
        f"user {user} would store more than {quota} bytes (SKYBUS_MAX_STORED_BYTES_PER_USER): delete some data first",
    )


def size_error(request: web.Request, limit: int) -> ApiError:
    """Why an upload of more than ``limit`` bytes is refused: the quota (429) or its size (413)."""
    if QUOTA_LEFT in request:
        return quota_full(caller(request).user, request.app[SETTINGS].max_stored_bytes_per_user or 0)
    if is_encoded(request) and limit == request.app[SETTINGS].max_decompressed_bytes:
        return ApiError(413, f"The upload decompresses (Content-Encoding) to more than {limit} bytes.")
    return ApiError(413, f"The upload is larger than the limit of {limit} bytes.")
