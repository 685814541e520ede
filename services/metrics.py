"""Prometheus metrics shared by the gateway and the managers, and a tiny ``/metrics`` server for a
manager run alone (``SKYBUS_METRICS_PORT``; off by default).

Each process keeps its own :class:`CollectorRegistry` (no module-level registry: two apps in one test
process do not share counters). Gauges read from the store are refreshed when scraped, never polled.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from services.job_manager import records as jobs
from services.store.port import DocumentStore

log = logging.getLogger(__name__)

Refresh = Callable[[], Awaitable[None]]


def jobs_by_state(registry: CollectorRegistry, store: DocumentStore) -> Refresh:
    """``skybus_jobs{state=...}``, counted from the job manager's records at each scrape."""
    gauge = Gauge("skybus_jobs", "Stored jobs by state (deleted ones left out)", ["state"], registry=registry)

    async def refresh() -> None:
        for state, count in (await jobs.count_by_state(store)).items():
            gauge.labels(state=state.value).set(count)

    return refresh


async def exposition(registry: CollectorRegistry, refreshers: Sequence[Refresh]) -> web.Response:
    for refresh in refreshers:
        await refresh()
    response = web.Response(body=generate_latest(registry))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


class MetricsServer:
    """``GET /metrics`` on its own port, for a service that has no HTTP server of its own."""

    name = "metrics"

    def __init__(self, host: str, port: int, registry: CollectorRegistry, refreshers: Sequence[Refresh]) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._refreshers = list(refreshers)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("metrics on http://%s:%s/metrics", self._host, self.port)

    async def _metrics(self, request: web.Request) -> web.Response:
        return await exposition(self._registry, self._refreshers)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
