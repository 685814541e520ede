"""Bearer-token authentication on every route but the public ones.

A bearer token is a user's API token, or else an agent's resource token (the one
``POST /api/resources`` returned, or the one a joined agent made), found by its SHA-256 among the
resource manager's resources; an unauthorized host's token is not taken. An agent is never an admin
and may only use the routes in :data:`AGENT_PREFIXES`.

A user's token found is remembered (by its hash) for :data:`REMEMBER_SECONDS`, and never past its
expiry, so a client's calls do not each read the store and a token revoked elsewhere (the CLI,
another gateway) is refused within that time; one revoked through this gateway is forgotten at once
(:func:`forget`). A host's token is looked up on every call, so a deleted host's is refused at once.

The routes in :data:`QUERY_TOKEN_PATHS` also take the token as a ``?token=`` query parameter when no
``Authorization`` header comes: a browser's ``EventSource`` cannot send one. A token in a URL may be
kept in a proxy's log, so nothing else takes it there.

The routes in :data:`JOIN_PATHS` take a cluster join token and nothing else; a join token is taken
nowhere else.
"""

from __future__ import annotations

import time

from aiohttp import web

from services.gateway.context import JOIN_TOKENS, PRINCIPAL, STORE, TOKENS
from services.gateway.errors import ApiError, Handler
from services.resource_manager import records as resources
from services.security import hash_token
from services.store.port import DocumentStore
from services.tokens import Principal, is_join_token, principal_for, token_id

PUBLIC_PATHS: set[str] = {
    "/health",
    "/openapi.json",
    "/resources/.applicationserver/info",
    "/metrics",
    "/health/live",
    "/health/ready",
    # The web UI's page and files (services/gateway/ui_routes.py): the page asks for a token.
    "/ui",
    "/ui/",
    "/ui/index.html",
    "/ui/app.js",
    "/ui/app.css",
}
AGENT_PREFIXES: tuple[str, ...] = ("/api/data", "/api/whoami")
JOIN_PATHS: set[str] = {"/api/join"}
QUERY_TOKEN_PATHS: set[str] = {"/api/events"}
REMEMBER_SECONDS = 2.0
REMEMBER_AT_MOST = 10_000
REMEMBERED = web.AppKey("remembered_tokens", dict[str, tuple[float, Principal]])


async def agent_principal_for(store: DocumentStore, token: str) -> Principal | None:
    resource = await resources.resource_by_token_hash(store, hash_token(token))
    if resource is None or not resource.authorized:
        return None
    return Principal(user=f"agent:{resource.id}", admin=False, resource_id=resource.id)


def forget(app: web.Application, public_id: str) -> None:
    """Drop a revoked token from this gateway's memory at once (others forget it within seconds)."""
    remembered = app[REMEMBERED]
    for token_hash in [key for key in remembered if token_id(key) == public_id]:
        del remembered[token_hash]


def agent_may_use(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in AGENT_PREFIXES)


async def known_principal(app: web.Application, token: str) -> Principal:
    """Whom a token speaks for (401 if nobody); a user's from memory when seen in the last seconds."""
    now = time.monotonic()
    remembered = app[REMEMBERED]
    token_hash = hash_token(token)
    known = remembered.get(token_hash)
    if known is not None and known[0] > now:
        return known[1]
    principal = await principal_for(app[TOKENS], token)
    if principal is not None:
        if len(remembered) >= REMEMBER_AT_MOST:
            remembered.clear()
        until = now + REMEMBER_SECONDS
        if principal.expires_at is not None:
            until = min(until, now + principal.expires_at - time.time())
        remembered[token_hash] = (until, principal)
        return principal
    principal = await agent_principal_for(app[STORE], token)
    if principal is None:
        raise ApiError(401, "invalid token")
    return principal


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    if not header and request.path in QUERY_TOKEN_PATHS and "token" in request.query:
        header = f"Bearer {request.query['token']}"
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    if request.path in JOIN_PATHS:
        if not await is_join_token(request.app[JOIN_TOKENS], token.strip()):
            raise ApiError(401, "invalid join token: make one with `skybus token create --join`")
        return await handler(request)  # no principal: a join token speaks for no user and no host
    principal = await known_principal(request.app, token.strip())
    if principal.resource_id is not None and not agent_may_use(request.path):
        raise ApiError(403, f"an agent token may only use {', '.join(AGENT_PREFIXES)}")
    request[PRINCIPAL] = principal
    return await handler(request)
