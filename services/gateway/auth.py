"""Bearer-token authentication on every route but the public ones.

A bearer token is a user's API token, or else an agent's resource token (the one
``POST /api/resources`` returned, or the one a joined agent made), found by its SHA-256 among the
resource manager's resources; an unauthorized host's token is not taken. An agent is never an admin
and may only use the routes in :data:`AGENT_PREFIXES`.

The routes in :data:`JOIN_PATHS` take a cluster join token and nothing else; a join token is taken
nowhere else.
"""

from __future__ import annotations

from aiohttp import web

from services.gateway.context import JOIN_TOKENS, PRINCIPAL, STORE, TOKENS
from services.gateway.errors import ApiError, Handler
from services.resource_manager.repository import RESOURCES
from services.security import hash_token
from services.store.port import DocumentStore
from services.tokens import Principal, is_join_token, principal_for

PUBLIC_PATHS: set[str] = {"/health", "/openapi.json", "/resources/.applicationserver/info"}
AGENT_PREFIXES: tuple[str, ...] = ("/api/data", "/api/whoami")
JOIN_PATHS: set[str] = {"/api/join"}


async def agent_principal_for(store: DocumentStore, token: str) -> Principal | None:
    resource = await store.collection(RESOURCES).find_one({"token_hash": hash_token(token)})
    if resource is None or not resource.get("authorized", False):
        return None
    return Principal(user=f"agent:{resource['id']}", admin=False, resource_id=resource["id"])


def agent_may_use(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in AGENT_PREFIXES)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    if request.path in JOIN_PATHS:
        if not await is_join_token(request.app[JOIN_TOKENS], token.strip()):
            raise ApiError(401, "invalid join token: make one with `skybus token create --join`")
        return await handler(request)  # no principal: a join token speaks for no user and no host
    principal = await principal_for(request.app[TOKENS], token.strip())
    if principal is None:
        principal = await agent_principal_for(request.app[STORE], token.strip())
    if principal is None:
        raise ApiError(401, "invalid token")
    if principal.resource_id is not None and not agent_may_use(request.path):
        raise ApiError(403, f"an agent token may only use {', '.join(AGENT_PREFIXES)}")
    request[PRINCIPAL] = principal
    return await handler(request)
