"""Seed 002 under ``/v1``: roles with their active version, hosts with their state and roles.

Reads go through the managers' records: a host is a resource of seed 000 (the resource manager's
registry and heartbeats: ``info``, ``responding``) seen through the role manager's record of its
roles (``state``, ``roles``, ``role_status``). Writes are commands to the role manager, admin only.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from schemas.roles import (
    SCRIPT_LIMIT,
    ActivateRoleVersion,
    ActivateVersionBody,
    ApplyRole,
    DeleteHostRoles,
    HostView,
    RegisterRoleVersion,
    RemoveRole,
    RoleDetail,
    RoleVersionBody,
    RoleVersionView,
    RoleView,
    check_name,
)
from services.content_manager import records as contents
from services.gateway.bodies import parse_body
from services.gateway.context import BLOBS, STORE, caller, require_admin, send_command
from services.gateway.errors import ApiError
from services.gateway.openapi import COMMAND_ERRORS, documented
from services.gateway.resources_api import iso
from services.resource_manager import records as resources
from services.resource_manager.records import ResourceRecord
from services.role_manager import records as roles
from services.role_manager.records import RoleHostRecord, RoleRecord, RoleVersionRecord
from services.store.port import BlobNotFound

routes = web.RouteTableDef()


def role_name(request: web.Request) -> str:
    name = request.match_info["role_name"]
    try:
        return check_name(name, "a role name")
    except ValueError as error:
        raise ApiError(400, str(error)) from None


async def load_role(request: web.Request, name: str) -> RoleRecord:
    role = await roles.get_role(request.app[STORE], name)
    if role is None:
        raise ApiError(404, f"role {name} not found")
    return role


def role_view(role: RoleRecord) -> dict[str, str]:
    active = role.version(role.active_version)
    return {
        "name": role.name,
        "display_name": (active and active.display_name) or role.name,
        "description": active.description if active else "",
        "active_version": role.active_version,
    }


# Roles.


@routes.get("/v1/roles")
@documented(response=list[RoleView], summary="Every role, with its active version (seed 002)")
async def list_roles(request: web.Request) -> web.Response:
    return web.json_response([role_view(role) for role in await roles.all_roles(request.app[STORE])])


@routes.get("/v1/roles/{role_name}")
@documented(response=RoleView, errors=(400, 404), summary="One role")
async def get_role(request: web.Request) -> web.Response:
    return web.json_response(role_view(await load_role(request, role_name(request))))


@routes.put("/v1/roles/{role_name}")
@documented(
    body=ActivateVersionBody,
    response=RoleView,
    errors=(404, *COMMAND_ERRORS),
    summary="Set the active version of a role",
)
async def activate_version(request: web.Request) -> web.Response:
    require_admin(request)
    name = role_name(request)
    body = await parse_body(request, ActivateVersionBody)
    await load_role(request, name)
    await send_command(request, ActivateRoleVersion(name=name, version=body.active_version))
    return web.json_response(role_view(await load_role(request, name)))


@routes.post("/v1/roles/{role_name}/versions")
@documented(
    body=RoleVersionBody,
    response=RoleVersionView,
    status=201,
    errors=(409, *COMMAND_ERRORS),
    summary="Register a version of a role (the first is active)",
)
async def register_version(request: web.Request) -> web.Response:
    require_admin(request)
    name = role_name(request)
    body = await parse_body(request, RoleVersionBody)
    install = body.install if body.install is not None else await content_text(request, body.install_content_id)
    remove = body.remove if body.remove is not None else await content_text(request, body.remove_content_id)
    await send_command(
        request,
        RegisterRoleVersion(
            name=name,
            version=body.version,
            display_name=body.display_name or name,
            description=body.description,
            install=install,
            remove=remove,
        ),
    )
    role = await load_role(request, name)
    version = role.version(body.version)
    if version is None:
        raise ApiError(502, f"version {body.version} of role {name} was accepted but is not stored")
    return web.json_response(version_view(role, version), status=201)


@routes.get("/v1/roles/{role_name}/versions")
@documented(response=list[RoleVersionView], errors=(400, 404), summary="Every version of a role")
async def list_versions(request: web.Request) -> web.Response:
    role = await load_role(request, role_name(request))
    return web.json_response([version_view(role, version) for version in role.versions])


def version_view(role: RoleRecord, version: RoleVersionRecord) -> dict[str, Any]:
    return RoleVersionView(
        name=role.name,
        version=version.version,
        display_name=version.display_name,
        description=version.description,
        active=role.active_version == version.version,
        created_at=iso(version.created_at) or "",
    ).model_dump()


async def content_text(request: web.Request, content_id: str | None) -> str:
    """A script stored as a content item (seed 004), copied as text: a version never changes."""
    item = await contents.get_item(request.app[STORE], content_id or "")
    if item is None:
        raise ApiError(400, f"content {content_id} not found")
    principal = caller(request)
    if not item.may_change(user=principal.user, admin=principal.admin):
        raise ApiError(400, f"content {content_id} belongs to another user")
    if item.size > SCRIPT_LIMIT:
        raise ApiError(400, f"content {content_id} is {item.size} bytes; a script is at most {SCRIPT_LIMIT}")
    chunks = []
    try:
        async for chunk in request.app[BLOBS].open(item.blob_id):
            chunks.append(chunk)
    except BlobNotFound:
        raise ApiError(400, f"content {content_id} has no stored bytes") from None
    try:
        return b"".join(chunks).decode()
    except UnicodeDecodeError:
        raise ApiError(400, f"content {content_id} is not UTF-8 text") from None


# Hosts.


def host_view(resource: ResourceRecord, host: RoleHostRecord) -> dict[str, Any]:
    """Seed 002's host: ``responding``, ``last_response_time`` and ``role_status`` only when authorized."""
    facts = resource.facts
    info: dict[str, Any] = {
        "hostname": resource.hostname or facts.get("hostname"),  # the name it registered or joined under
        "os_family": facts.get("os_family"),
        "arch": facts.get("arch"),
        "os_info": facts.get("os_info"),
    }
    view: dict[str, Any] = {
        "id": resource.id,
        "state": host.state.value,
        "info": info,
        "roles": list(host.assigned_roles),
    }
    if resource.authorized:
        info["responding"] = resource.responding
        info["last_response_time"] = iso(resource.last_response_time)
        view["role_status"] = host.role_status.value
    return view


def forgotten(resource: ResourceRecord, host: RoleHostRecord) -> bool:
    """A host deleted through ``DELETE /v1/hosts/{id}`` is not listed until it is seen again."""
    deleted_at = host.deleted_at
    heard = resource.last_response_time
    return deleted_at is not None and (heard is None or heard <= deleted_at)


def visible(request: web.Request, resource: ResourceRecord) -> bool:
    principal = caller(request)
    return principal.admin or resource.user == principal.user


@routes.get("/v1/hosts")
@documented(response=list[HostView], summary="Every host you may see, with its state and roles (seed 002)")
async def list_hosts(request: web.Request) -> web.Response:
    store = request.app[STORE]
    principal = caller(request)
    found = await resources.resources_of_user(store, None if principal.admin else principal.user, order="created_at")
    hosts = await roles.role_hosts(store, [resource.id for resource in found])
    views = [
        host_view(resource, hosts.get(resource.id, roles.NO_ROLES))
        for resource in found
        if not forgotten(resource, hosts.get(resource.id, roles.NO_ROLES))
    ]
    return web.json_response(views)


async def load_host(request: web.Request) -> tuple[ResourceRecord, RoleHostRecord]:
    host_id = request.match_info["host_id"]
    store = request.app[STORE]
    resource = await resources.get_resource(store, host_id)
    host = await roles.role_host(store, host_id)
    if resource is None or not visible(request, resource) or forgotten(resource, host):
        raise ApiError(404, f"host {host_id} not found")
    return resource, host


@routes.get("/v1/hosts/{host_id}")
@documented(response=HostView, errors=(404,), summary="One host")
async def get_host(request: web.Request) -> web.Response:
    return web.json_response(host_view(*await load_host(request)))


@routes.delete("/v1/hosts/{host_id}")
@documented(
    status=204,
    errors=(404, *COMMAND_ERRORS),
    summary="Remove every role of a host and forget it until it is seen again (no-op if inactive)",
)
async def delete_host(request: web.Request) -> web.Response:
    principal = require_admin(request)
    resource, _ = await load_host(request)
    await send_command(request, DeleteHostRoles(host_id=resource.id, requested_by=principal.user))
    return web.Response(status=204)


@routes.put("/v1/hosts/{host_id}/roles/{role_name}")
@documented(
    response=HostView,
    errors=(400, 404, *COMMAND_ERRORS),
    summary="Apply a role to a host at the role's active version",
)
async def apply_role(request: web.Request) -> web.Response:
    principal = require_admin(request)
    name = role_name(request)
    resource, _ = await load_host(request)
    await load_role(request, name)
    await send_command(
        request,
        ApplyRole(host_id=resource.id, name=name, requested_by=principal.user, authorize=not resource.authorized),
    )
    return web.json_response(host_view(*await load_host(request)))


@routes.delete("/v1/hosts/{host_id}/roles/{role_name}")
@documented(response=HostView, errors=(400, 404, *COMMAND_ERRORS), summary="Remove a role from a host")
async def remove_role(request: web.Request) -> web.Response:
    principal = require_admin(request)
    name = role_name(request)
    resource, _ = await load_host(request)
    await send_command(request, RemoveRole(host_id=resource.id, name=name, requested_by=principal.user))
    return web.json_response(host_view(*await load_host(request)))


@routes.get("/v1/hosts/{host_id}/roles/{role_name}")
@documented(
    response=RoleDetail,
    errors=(400, 404),
    summary="Where a role stands on a host, and its script's last output (answer_id)",
)
async def role_on_host(request: web.Request) -> web.Response:
    name = role_name(request)
    _, host = await load_host(request)
    entry = host.roles.get(name)
    if entry is None:
        raise ApiError(404, f"role {name} is not on host {request.match_info['host_id']}")
    detail = RoleDetail(
        version=entry.version,
        target_version=entry.target,
        status=entry.status,
        attempts=entry.attempts,
        job_id=entry.job_id,
        last_job_id=entry.last_job_id,
        answer_id=entry.answer_id,
        exit_code=entry.exit_code,
        error=entry.error,
        retry_at=iso(entry.retry_at),
    )
    return web.json_response(detail.model_dump())
