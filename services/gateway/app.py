"""The gateway's app factory and its lifetime as a service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import BaseModel

from broker.port import MessageBus
from broker.topology import Topology
from services.gateway import (
    container_logs_api,
    content_api,
    data_api,
    jobs_api,
    join_api,
    logs_api,
    ops_api,
    pool_api,
    resources_api,
    roles_api,
    tokens_api,
)
from services.gateway.access_log import ACCESS_LOGGER, AccessLogger
from services.gateway.auth import REMEMBERED, auth_middleware
from services.gateway.context import BLOBS, BUS, JOIN_TOKENS, SETTINGS, STORE, TOKENS, TOPOLOGY, caller
from services.gateway.errors import error_middleware
from services.gateway.events_api import install_event_stream
from services.gateway.job_output import output_hub_context
from services.gateway.job_watch import job_watcher_context
from services.gateway.limits import body_deadline_middleware, server_options
from services.gateway.openapi import build_openapi, documented
from services.gateway.ui_routes import install_ui
from services.settings import Settings
from services.store.factory import open_blob_store
from services.store.port import BlobStore, DocumentStore
from services.tls import server_context
from services.tokens import join_tokens_collection, tokens_collection
from services.version import VERSION

log = logging.getLogger(__name__)

meta_routes = web.RouteTableDef()


@meta_routes.get("/health")
@documented(response=ops_api.Status, summary="Liveness of this gateway", public=True)
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class WhoAmI(BaseModel):
    user: str
    admin: bool
    resource_id: str | None = None


@meta_routes.get("/api/whoami")
@documented(response=WhoAmI, summary="Whom this token speaks for (a user, or the agent of a host)")
async def whoami(request: web.Request) -> web.Response:
    principal = caller(request)
    return web.json_response(
        WhoAmI(user=principal.user, admin=principal.admin, resource_id=principal.resource_id).model_dump()
    )


@meta_routes.get("/openapi.json")
@documented(summary="This document: the API in OpenAPI 3.1", public=True)
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(build_openapi(request.app, title="skybus", version=VERSION))


async def _blob_store_lifetime(app: web.Application) -> AsyncIterator[None]:
    """Open the blob store from the settings for the app's lifetime (when the caller gave none)."""
    blobs = await open_blob_store(app[SETTINGS])
    app[BLOBS] = blobs
    yield
    await blobs.close()


async def create_app(
    settings: Settings, bus: MessageBus, store: DocumentStore, topology: Topology, *, blobs: BlobStore | None = None
) -> web.Application:
    middlewares = [ops_api.metrics_middleware, error_middleware, body_deadline_middleware, auth_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=1024**2)
    app[SETTINGS] = settings
    app[BUS] = bus
    app[STORE] = store
    app[TOPOLOGY] = topology
    app[TOKENS] = await tokens_collection(store)
    app[REMEMBERED] = {}
    app[JOIN_TOKENS] = join_tokens_collection(store)
    app[ops_api.METRICS] = ops_api.gateway_metrics(app)
    if blobs is not None:
        app[BLOBS] = blobs
    else:
        app.cleanup_ctx.append(_blob_store_lifetime)
    app.add_routes(meta_routes)
    app.add_routes(resources_api.routes)
    app.add_routes(join_api.routes)
    app.add_routes(content_api.routes)
    app.add_routes(data_api.routes)
    app.add_routes(jobs_api.routes)
    app.add_routes(logs_api.routes)
    app.add_routes(roles_api.routes)
    app.add_routes(pool_api.routes)
    app.add_routes(container_logs_api.routes)
    app.add_routes(ops_api.routes)
    app.add_routes(tokens_api.routes)
    app.cleanup_ctx.append(job_watcher_context)
    app.cleanup_ctx.append(output_hub_context)
    install_event_stream(app)  # after the job watcher, which feeds it
    install_ui(app)
    return app


class GatewayService:
    name = "gateway"

    def __init__(self, settings: Settings, bus: MessageBus, store: DocumentStore, topology: Topology) -> None:
        self._settings = settings
        self._bus = bus
        self._store = store
        self._topology = topology
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = await create_app(self._settings, self._bus, self._store, self._topology)
        self._runner = web.AppRunner(
            app,
            access_log=ACCESS_LOGGER if self._settings.access_log else None,
            access_log_class=AccessLogger,
            shutdown_timeout=10.0,
            **server_options(self._settings),
        )
        await self._runner.setup()
        tls = self._settings.tls_cert and self._settings.tls_key
        context = server_context(self._settings.tls_cert, self._settings.tls_key) if tls else None
        site = web.TCPSite(self._runner, self._settings.host, self._settings.port, ssl_context=context)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._settings.port
        log.info("gateway listening on %s://%s:%s", self.scheme, self._settings.host, self.port)

    @property
    def scheme(self) -> str:
        return "https" if self._settings.tls_cert else "http"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def url(self) -> str:
        """Where this gateway is reached from this machine (agents stage files through it)."""
        if self._settings.public_url:
            return self._settings.public_url
        host = self._settings.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port or self._settings.port}"
