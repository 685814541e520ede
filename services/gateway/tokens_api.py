"""``/api/tokens``: an admin lists, makes and revokes API tokens and cluster join tokens.

A token is shown by its public id, never in clear (but once, when made) and never by its hash.
Revoking deletes it: this gateway refuses it at once, every other within two seconds (auth.py).
"""

from __future__ import annotations

import time

from aiohttp import web

from schemas.tokens import CreateTokenBody, TokenCreated, TokenList, TokenView
from services.gateway.auth import forget
from services.gateway.bodies import parse_body
from services.gateway.context import JOIN_TOKENS, TOKENS, require_admin
from services.gateway.errors import ApiError
from services.gateway.jobs_api import parse_time, representable_time
from services.gateway.openapi import documented
from services.gateway.params import TokenListQuery
from services.gateway.resources_api import iso
from services.tokens import (
    TokenRecord,
    check_user_name,
    create_join_token,
    create_token,
    list_tokens,
    parse_duration,
    revoke_token,
    token_id_for,
)

routes = web.RouteTableDef()


def token_view(record: TokenRecord, now: float) -> TokenView:
    return TokenView(
        id=record.id,
        user=record.user,
        admin=record.admin,
        join=record.join,
        created_at=iso(record.created_at) or "",
        expires_at=iso(record.expires_at),
        expired=record.expires_at is not None and record.expires_at <= now,
    )


def expiry(body: CreateTokenBody, now: float) -> float | None:
    if body.expires_in is not None:
        try:
            seconds = parse_duration(str(body.expires_in))
        except ValueError as error:
            raise ApiError(400, f"expires_in: {error}") from None
        return representable_time("expires_in", now + seconds)
    if body.expires_at is not None:
        moment = parse_time("expires_at", str(body.expires_at))
        if moment <= now:
            raise ApiError(400, "expires_at: the time is already past")
        return moment
    return None


@routes.get("/api/tokens")
@documented(
    response=TokenList, query=TokenListQuery, summary="Admin: list API tokens (?join=true: cluster join tokens)"
)
async def get_tokens(request: web.Request) -> web.Response:
    require_admin(request)
    join = request.query.get("join", "false").lower() in ("1", "true", "yes")
    records = await list_tokens(request.app[JOIN_TOKENS if join else TOKENS], join=join)
    now = time.time()
    return web.json_response(TokenList(tokens=[token_view(record, now) for record in records]).model_dump())


@routes.post("/api/tokens")
@documented(body=CreateTokenBody, response=TokenCreated, status=201, summary="Admin: make a token (shown once)")
async def post_token(request: web.Request) -> web.Response:
    require_admin(request)
    body = await parse_body(request, CreateTokenBody)
    now = time.time()
    expires_at = expiry(body, now)
    if body.join:
        token = await create_join_token(request.app[JOIN_TOKENS], expires_at=expires_at)
    else:
        assert body.user is not None
        try:
            check_user_name(body.user)
        except ValueError as error:
            raise ApiError(400, f"user: {error}") from None
        token = await create_token(request.app[TOKENS], user=body.user, admin=body.admin, expires_at=expires_at)
    created = TokenCreated(id=token_id_for(token), token=token, expires_at=iso(expires_at))
    return web.json_response(created.model_dump(), status=201)


@routes.delete("/api/tokens/{token_id}")
@documented(response=TokenView, errors=(404,), summary="Admin: revoke a token or a join token by its id")
async def delete_token(request: web.Request) -> web.Response:
    require_admin(request)
    public_id = request.match_info["token_id"]
    revoked = await revoke_token(request.app[TOKENS], public_id) or await revoke_token(
        request.app[JOIN_TOKENS], public_id
    )
    if revoked is None:
        raise ApiError(404, f"token {public_id} not found")
    forget(request.app, public_id)
    return web.json_response(token_view(revoked, time.time()).model_dump())
