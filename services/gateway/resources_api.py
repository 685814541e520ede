"""Seed 000: the resource registry under ``/api/resources``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiohttp import web

from schemas.resources import (
    CreateResourceBody,
    DeleteResource,
    HostInfo,
    RegisterResource,
    ResourceCreated,
    ResourceId,
    ResourceView,
)
from services.gateway.bodies import parse_body
from services.gateway.context import STORE, caller, require_owner, send_command
from services.gateway.errors import ApiError
from services.gateway.openapi import COMMAND_ERRORS, documented
from services.gateway.params import FindResourceQuery
from services.resource_manager import records as resources
from services.resource_manager.records import ResourceRecord
from services.security import broker_password_hash, new_agent_credentials

routes = web.RouteTableDef()


def parse_uuid(text: str, what: str = "id") -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ApiError(400, f"malformed {what} {text!r}: expected a UUID") from None


def iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def resource_view(resource: ResourceRecord) -> ResourceView:
    return ResourceView(
        id=resource.id,
        hostname=resource.hostname,
        user=resource.user,
        state=resource.state,
        authorized=resource.authorized,
        responding=resource.responding,
        last_response_time=iso(resource.last_response_time),
        created_at=iso(resource.created_at) or "",
        info=HostInfo(**resource.facts),
    )


async def load_resource(request: web.Request, resource_id: str) -> ResourceRecord:
    resource = await resources.get_resource(request.app[STORE], resource_id)
    if resource is None:
        raise ApiError(404, f"resource {resource_id} not found")
    require_owner(request, resource.user, "this resource")
    return resource


@routes.post("/api/resources")
@routes.post("/api/resources/")
@documented(
    body=CreateResourceBody,
    response=ResourceCreated,
    errors=(409, *COMMAND_ERRORS),
    summary="Register a resource (host)",
)
async def create_resource(request: web.Request) -> web.Response:
    body = await parse_body(request, CreateResourceBody)
    require_owner(request, body.user, "a resource for this user")
    token, token_hash, verify_key = new_agent_credentials()
    resource_id = str(uuid.uuid4())
    await send_command(
        request,
        RegisterResource(
            resource_id=resource_id,
            hostname=body.hostname,
            user=body.user,
            token_hash=token_hash,
            verify_key=verify_key,
            broker_password_hash=broker_password_hash(token),
            shared=caller(request).admin and body.user == caller(request).user,
        ),
    )
    return web.json_response(ResourceCreated(id=resource_id, token=token).model_dump())


@routes.get("/api/resources")
@routes.get("/api/resources/")
@documented(
    response=ResourceId | list[ResourceView],
    query=FindResourceQuery,
    errors=(404,),
    summary="Find a resource by hostname (?hostname=); without it, list your resources",
)
async def find_resource(request: web.Request) -> web.Response:
    hostname = request.query.get("hostname")
    if hostname is None:
        return await list_resources(request)
    resource = await resources.resource_by_hostname(request.app[STORE], hostname)
    principal = caller(request)
    if resource is None or (not principal.admin and resource.user != principal.user):
        raise ApiError(404, f"no resource with hostname {hostname!r}")
    return web.json_response(ResourceId(id=resource.id).model_dump())


async def list_resources(request: web.Request) -> web.Response:
    """Every resource of the caller (of everyone, for an admin), oldest first."""
    principal = caller(request)
    found = await resources.resources_of_user(
        request.app[STORE], None if principal.admin else principal.user, order="created_at"
    )
    return web.json_response([resource_view(resource).model_dump() for resource in found])


@routes.get("/api/resources/{resource_id}")
@documented(response=ResourceView, errors=(400, 404), summary="Information about a resource")
async def get_resource(request: web.Request) -> web.Response:
    resource_id = parse_uuid(request.match_info["resource_id"], "resource id")
    resource = await load_resource(request, resource_id)
    return web.json_response(resource_view(resource).model_dump())


@routes.delete("/api/resources/{resource_id}")
@documented(response=ResourceId, errors=(400, 404, *COMMAND_ERRORS), summary="Delete a resource")
async def delete_resource(request: web.Request) -> web.Response:
    resource_id = parse_uuid(request.match_info["resource_id"], "resource id")
    await load_resource(request, resource_id)
    await send_command(request, DeleteResource(resource_id=resource_id))
    return web.json_response(ResourceId(id=resource_id).model_dump())
