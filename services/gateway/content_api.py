"""Seed 004: the content resource manager under ``/resources``.

Errors here have seed 004's shape (``services.gateway.errors.timestamped_error``). A resource path
names one resource for the whole fleet (the seed: "This path uniquely identifies a deployed
resource"); a user lists, reads and changes only their own resources, an admin all of them.
Each response about one resource also carries its item id in ``X-Skybus-Id``, the id a job names
as its ``binary`` or ``input_files``.

Route order matters: the fixed ``.applicationserver/info`` and the ``contents/`` and ``metadata/``
routes come before the catch-all ``{path}``.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from schemas.content import (
    ApplicationServerInfo,
    DeleteContent,
    PatchContent,
    ReplaceContent,
    ResourceInfo,
    ResourcePath,
    ResourceSettingsPatch,
    StoreContent,
)
from schemas.content_rules import UNKNOWN, ContentError
from services.content_manager import records as contents
from services.content_manager.records import ContentRecord
from services.gateway import content_views as views
from services.gateway.context import SETTINGS, STORE, caller, send_command
from services.gateway.downloads import stream_item
from services.gateway.errors import ApiError
from services.gateway.openapi import COMMAND_ERRORS, Form, documented
from services.gateway.params import ResourceForm, ResourcePatchForm
from services.gateway.uploads import Upload, read_form, releasing
from services.version import VERSION

routes = web.RouteTableDef()

ID_HEADER = "X-Skybus-Id"
FILE_PART = "resource"
INFO_PART = "resourceInfo"
NO_FILE = f"Required request part '{FILE_PART}' is not present"


def _refused(error: ContentError) -> ApiError:
    return ApiError(error.status, error.message)


def url_path(request: web.Request) -> str:
    try:
        return views.check_path(request.match_info["path"])
    except ContentError as error:
        raise _refused(error) from None


async def load_resource(request: web.Request, path: str, *, to_change: bool = False) -> ContentRecord:
    document = await contents.item_at(request.app[STORE], path)
    if document is None:
        raise ApiError(404, UNKNOWN)
    principal = caller(request)
    allowed = (
        document.may_change(user=principal.user, admin=principal.admin)
        if to_change
        else document.may_read(user=principal.user, admin=principal.admin, resource_id=principal.resource_id)
    )
    if not allowed:
        raise ApiError(403, "The resource belongs to another user.")
    return document


async def read_upload(request: web.Request) -> Upload:
    return await read_form(
        request,
        is_file=lambda part: part.name == FILE_PART,
        text_parts={INFO_PART},
        limit=request.app[SETTINGS].max_upload_bytes,
    )


@routes.get("/resources/.applicationserver/info")
@documented(response=ApplicationServerInfo, summary="Health check of the resource manager", public=True)
async def application_server_info(request: web.Request) -> web.Response:
    return web.json_response(ApplicationServerInfo(name="resource-manager", version=VERSION).model_dump())


@routes.get("/resources/contents/{path:.+}")
@documented(
    media="*/*",
    errors=(400, 404),
    summary="The raw content of a resource, with the Content-Type of its mimeType",
)
async def get_contents(request: web.Request) -> web.StreamResponse:
    path = url_path(request)

    def headers(document: ContentRecord) -> dict[str, str]:
        mime_type = (document.settings or {})["mime_type"]
        return {"Content-Type": views.content_type(mime_type, path, document.name), ID_HEADER: document.id}

    return await stream_item(request, lambda: load_resource(request, path), headers)


@routes.get("/resources/metadata/{path:.+}")
@documented(response=ResourceInfo, errors=(400, 404), summary="The ResourceInfo of a resource")
async def get_metadata(request: web.Request) -> web.Response:
    document = await load_resource(request, url_path(request))
    info = views.resource_info(document)
    return web.json_response(info.model_dump(), headers={ID_HEADER: document.id})


@routes.get("/resources")
@routes.get("/resources/")
@documented(
    response=dict[str, ResourceInfo],
    summary="Every resource of the caller (of everyone, for an admin), keyed by resourcePath",
)
async def list_resources(request: web.Request) -> web.Response:
    principal = caller(request)
    owner = None if principal.admin else principal.user
    listing = {
        document.path: views.resource_info(document).model_dump()
        async for document in contents.items_of(request.app[STORE], owner)
    }
    return web.json_response(listing)


@routes.post("/resources")
@routes.post("/resources/")
@documented(
    body=Form(ResourceForm),
    response=ResourcePath,
    status=201,
    errors=(409, 429, *COMMAND_ERRORS),
    summary="Deploy a resource (multipart: resource, resourceInfo)",
)
async def create_resource(request: web.Request) -> web.Response:
    upload = await read_upload(request)
    async with releasing(request, upload):
        try:
            path, settings = views.full_settings(views.parse_resource_info(upload.fields.get(INFO_PART)))
        except ContentError as error:
            raise _refused(error) from None
        if upload.blob is None:
            raise ApiError(400, NO_FILE)
        item_id = str(uuid.uuid4())
        command = StoreContent(
            item_id=item_id,
            path=path,
            owner=caller(request).user,
            filename=upload.filename,
            blob=upload.ref(),
            settings=settings,
        )
        await send_command(request, command)
    return web.json_response(ResourcePath(resourcePath=path).model_dump(), status=201, headers={ID_HEADER: item_id})


@routes.put("/resources/{path:.+}")
@documented(
    body=Form(ResourceForm),
    status=202,
    errors=(404, 429, *COMMAND_ERRORS),
    summary="Replace a resource's content and ResourceInfo (multipart: resource, resourceInfo)",
)
async def replace_resource(request: web.Request) -> web.Response:
    path = url_path(request)
    document = await load_resource(request, path, to_change=True)  # 404 or 403 before the upload is read
    upload = await read_upload(request)
    async with releasing(request, upload):
        try:
            _, settings = views.full_settings(views.parse_resource_info(upload.fields.get(INFO_PART)), url_path=path)
        except ContentError as error:
            raise _refused(error) from None
        if upload.blob is None:
            raise ApiError(400, NO_FILE)
        command = ReplaceContent(item_id=document.id, filename=upload.filename, blob=upload.ref(), settings=settings)
        await send_command(request, command)
    return web.Response(status=202)


@routes.patch("/resources/{path:.+}")
@documented(
    body=Form(ResourcePatchForm),
    status=202,
    errors=(404, 429, *COMMAND_ERRORS),
    summary="Change a resource's content, some ResourceInfo fields, or both",
)
async def patch_resource(request: web.Request) -> web.Response:
    path = url_path(request)
    document = await load_resource(request, path, to_change=True)
    upload = await read_upload(request)
    async with releasing(request, upload):
        changes = ResourceSettingsPatch()
        if INFO_PART in upload.fields:
            try:
                changes = views.settings_patch(views.parse_resource_info(upload.fields[INFO_PART]), url_path=path)
            except ContentError as error:
                raise _refused(error) from None
        elif upload.blob is None:
            raise ApiError(400, f"Nothing to modify: send a '{FILE_PART}' part, a '{INFO_PART}' part or both.")
        command = PatchContent(
            item_id=document.id,
            filename=upload.filename if upload.blob else None,
            blob=upload.ref() if upload.blob else None,
            changes=changes,
        )
        await send_command(request, command)
    return web.Response(status=202)


@routes.delete("/resources/{path:.+}")
@documented(status=202, errors=(400, 404, *COMMAND_ERRORS), summary="Delete a resource")
async def delete_resource(request: web.Request) -> web.Response:
    document = await load_resource(request, url_path(request), to_change=True)
    await send_command(request, DeleteContent(item_id=document.id))
    return web.Response(status=202)
