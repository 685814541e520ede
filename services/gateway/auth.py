"""Bearer-token authentication on every route but the public ones."""

from __future__ import annotations

from aiohttp import web

from services.gateway.context import PRINCIPAL, TOKENS
from services.gateway.errors import ApiError, Handler
from services.tokens import principal_for

PUBLIC_PATHS: set[str] = {"/health", "/openapi.json"}


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    principal = await principal_for(request.app[TOKENS], token.strip())
    if principal is None:
        raise ApiError(401, "invalid token")
    request[PRINCIPAL] = principal
    return await handler(request)
