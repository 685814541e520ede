"""Operations: ``/metrics`` (Prometheus), ``/health/live`` and ``/health/ready``, all without a token.

Requests are counted by route *template* (``/api/job/job_info/{job_id}``), never by raw path, so the
label set stays small; a path no route matches counts as ``unmatched``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel
from pydantic.json_schema import SkipJsonSchema

from services.gateway.context import BUS, STORE, TOKENS
from services.gateway.openapi import documented
from services.metrics import Refresh, exposition, jobs_by_state

routes = web.RouteTableDef()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class GatewayMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    refreshers: tuple[Refresh, ...]


METRICS = web.AppKey("metrics", GatewayMetrics)


class Status(BaseModel):
    """What a probe reads: ``ok``, or ``unavailable`` with the reason."""

    status: Literal["ok", "unavailable"]
    reason: str | SkipJsonSchema[None] = None


def gateway_metrics(app: web.Application) -> GatewayMetrics:
    registry = CollectorRegistry()
    return GatewayMetrics(
        registry=registry,
        requests=Counter(
            "skybus_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=registry,
        ),
        latency=Histogram(
            "skybus_http_request_seconds", "Time to answer an HTTP request", ["method", "route"], registry=registry
        ),
        refreshers=(jobs_by_state(registry, app[STORE]),),
    )


def route_of(request: web.Request) -> str:
    route = request.match_info.route
    if route.resource is None:
        return "unmatched"
    return route.resource.canonical


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        route = route_of(request)
        metrics.requests.labels(method=request.method, route=route, status=str(status)).inc()
        metrics.latency.labels(method=request.method, route=route).observe(time.perf_counter() - started)


@routes.get("/metrics")
@documented(
    media="text/plain",
    summary="Prometheus metrics: requests by route and status, latency, jobs by state",
    public=True,
)
async def metrics(request: web.Request) -> web.Response:
    found = request.app[METRICS]
    return await exposition(found.registry, found.refreshers)


@routes.get("/health/live")
@documented(response=Status, summary="Liveness: this gateway's process answers", public=True)
async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def unready_reason(app: web.Application) -> str | None:
    """Why this gateway cannot serve now, or None."""
    if (reason := app[BUS].ready()) is not None:
        return f"bus: {reason}"
    try:
        await app[TOKENS].count({})
    except Exception as error:  # a probe reports any failure of the store, whatever its kind
        return f"store: {error or type(error).__name__}"
    return None


@routes.get("/health/ready")
@documented(
    response=Status,
    also={503: Status},
    summary="Readiness: the bus and the store answer (503 with the reason otherwise)",
    public=True,
)
async def ready(request: web.Request) -> web.Response:
    reason = await unready_reason(request.app)
    if reason is not None:
        return web.json_response({"status": "unavailable", "reason": reason}, status=503)
    return web.json_response({"status": "ok"})
