"""What the gateway's handlers share: typed app keys, the caller, and sending a command."""

from __future__ import annotations

from aiohttp import web

from broker.envelope import Envelope
from broker.port import MessageBus
from broker.topology import Topology
from schemas.base import Accepted, Rejected, WireModel
from services.gateway.errors import ApiError
from services.settings import Settings
from services.store.port import BlobStore, Collection, DocumentStore
from services.tokens import Principal

SETTINGS = web.AppKey("settings", Settings)
BUS = web.AppKey("bus", MessageBus)
STORE = web.AppKey("store", DocumentStore)
BLOBS = web.AppKey("blobs", BlobStore)
TOPOLOGY = web.AppKey("topology", Topology)
TOKENS = web.AppKey("tokens", Collection)
JOIN_TOKENS = web.AppKey("join_tokens", Collection)
PRINCIPAL = web.RequestKey("principal", Principal)  # set by the auth middleware

SENDER = "gateway"


def caller(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def require_admin(request: web.Request) -> Principal:
    principal = caller(request)
    if not principal.admin:
        raise ApiError(403, "this needs an admin token")
    return principal


def require_owner(request: web.Request, owner: str, what: str) -> Principal:
    principal = caller(request)
    if not principal.admin and principal.user != owner:
        raise ApiError(403, f"{what} belongs to another user")
    return principal


async def send_command(request: web.Request, command: WireModel) -> Accepted:
    """Send a command to its owning manager and wait for the stored outcome (read-your-writes)."""
    app = request.app
    envelope = Envelope(command, sender=SENDER)
    reply = await app[BUS].request(app[TOPOLOGY].commands, envelope, timeout=app[SETTINGS].request_timeout)
    if isinstance(reply.payload, Rejected):
        raise ApiError(reply.payload.status, reply.payload.error)
    if not isinstance(reply.payload, Accepted):
        raise ApiError(502, f"unexpected reply {reply.type!r}")
    return reply.payload


async def publish_command(request: web.Request, command: WireModel) -> None:
    """Send a command to its owning manager without waiting for it: returns once the broker has it."""
    app = request.app
    await app[BUS].publish(app[TOPOLOGY].commands, Envelope(command, sender=SENDER))
