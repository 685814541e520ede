"""Data files for jobs under ``/api/data``: upload, download, describe, delete any stored item by id.

Every item the content manager stores (a plain data file or a seed 004 resource) has a UUID id; a
job's ``binary``, ``input_files`` and ``answer_id`` are such ids. Users reach their own items (an
admin all). An agent, with its resource token, reads the items granted to its host (``data.grant``,
sent when a job's files are staged onto it) and uploads new ones, which it owns and may read.
Errors are ``{"error": ...}``.
"""

from __future__ import annotations

import hashlib
import uuid

from aiohttp import BodyPartReader, web

from schemas.content import DataId, DataInfo, DataList, DeleteContent, StoreData
from schemas.content_rules import ContentError
from services.content_manager import records as contents
from services.content_manager.records import ContentRecord
from services.gateway.content_views import check_name
from services.gateway.context import SETTINGS, STORE, caller, send_command
from services.gateway.downloads import stream_item
from services.gateway.errors import ApiError
from services.gateway.openapi import COMMAND_ERRORS, Form, documented
from services.gateway.params import DataListQuery, DataUploadForm, DataUploadQuery
from services.gateway.resources_api import iso, parse_uuid
from services.gateway.uploads import read_multipart, read_raw, releasing
from services.job_manager import records as jobs

routes = web.RouteTableDef()

FILE_PART = "file"
NAME_PART = "name"


def _is_file(part: BodyPartReader) -> bool:
    return part.name == FILE_PART or (part.filename is not None and part.name != NAME_PART)


async def load_item(request: web.Request, *, to_change: bool = False) -> ContentRecord:
    item_id = parse_uuid(request.match_info["item_id"], "data id")
    document = await contents.get_item(request.app[STORE], item_id)
    if document is None:
        answer = await load_answer(request, item_id)
        raise AnswerFound(answer)
    principal = caller(request)
    allowed = (
        document.may_change(user=principal.user, admin=principal.admin)
        if to_change
        else document.may_read(user=principal.user, admin=principal.admin, resource_id=principal.resource_id)
    )
    if not allowed:
        raise ApiError(403, f"data {item_id} belongs to another user")
    return document


class AnswerFound(Exception):
    """The id is no data item but a job's small answer, kept in the job's record."""

    def __init__(self, answer: jobs.JobAnswer) -> None:
        self.answer = answer


async def load_answer(request: web.Request, answer_id: str) -> jobs.JobAnswer:
    """A job's small answer, for its user (or an admin): the answer id of ``job_info`` works as a data id."""
    answer = await jobs.answer_by_id(request.app[STORE], answer_id)
    if answer is None:
        raise ApiError(404, f"data {answer_id} not found")
    principal = caller(request)
    if not principal.admin and principal.user != answer.user:
        raise ApiError(403, f"data {answer_id} belongs to another user")
    return answer


def answer_info(answer: jobs.JobAnswer) -> DataInfo:
    body = answer.text.encode()
    at = iso(answer.at) or ""
    return DataInfo(
        id=answer.answer_id,
        kind="data",
        name=f"answer-{answer.job_id}.json",
        path=None,
        size=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
        owner=answer.user,
        granted_to=[],
        created_at=at,
        updated_at=at,
    )


def data_info(document: ContentRecord) -> DataInfo:
    return DataInfo(
        id=document.id,
        kind=document.kind,
        name=document.name,
        path=document.path,
        size=document.size,
        sha256=document.sha256,
        owner=document.owner,
        granted_to=list(document.granted_to),
        created_at=iso(document.created_at) or "",
        updated_at=iso(document.updated_at) or "",
    )


async def owner_of_job_on_host(request: web.Request, job_id: str, resource_id: str) -> str:
    """What an agent uploads for a job it runs (its answer, a staged-out file) belongs to the job's user."""
    job = await jobs.get_job_of_task(request.app[STORE], job_id)  # an agent knows a job by its task id
    if job is None or job.resource_id != resource_id:
        raise ApiError(403, f"this host does not run job {job_id}")
    return job.user


@routes.post("/api/data")
@routes.post("/api/data/")
@documented(
    body=Form(DataUploadForm, raw=True),
    query=DataUploadQuery,
    response=DataId,
    status=201,
    errors=(403, 429, *COMMAND_ERRORS),
    summary="Upload a data file (raw body, or multipart with a file part)",
)
async def upload_data(request: web.Request) -> web.Response:
    limit = request.app[SETTINGS].max_upload_bytes
    if request.content_type == "multipart/form-data":
        upload = await read_multipart(request, is_file=_is_file, text_parts={NAME_PART}, limit=limit)
    else:
        upload = await read_raw(request, limit=limit)
    async with releasing(request, upload):
        if upload.blob is None:
            raise ApiError(400, f"no file in the multipart body: send it as a part named {FILE_PART!r}")
        try:
            name = check_name(request.query.get(NAME_PART) or upload.fields.get(NAME_PART) or upload.filename)
        except ContentError as error:
            raise ApiError(error.status, error.message) from None
        principal = caller(request)
        owner = principal.user
        if principal.resource_id and (job_id := request.query.get("job_id")):
            owner = await owner_of_job_on_host(request, job_id, principal.resource_id)
        item_id = str(uuid.uuid4())
        await send_command(
            request,
            StoreData(
                item_id=item_id,
                owner=owner,
                name=name,
                blob=upload.ref(),
                granted_to=(principal.resource_id,) if principal.resource_id else (),
            ),
        )
    return web.json_response(DataId(id=item_id).model_dump(), status=201)


DATA_PAGE = 100
MAX_DATA_PAGE = 1000


@routes.get("/api/data")
@routes.get("/api/data/")
@documented(
    response=DataList,
    query=DataListQuery,
    errors=(400,),
    summary="Your data files (everyone's, for an admin), newest first (?limit=)",
)
async def list_data(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", DATA_PAGE))
    except ValueError:
        raise ApiError(400, "limit must be an integer") from None
    if not 1 <= limit <= MAX_DATA_PAGE:
        raise ApiError(400, f"limit must be between 1 and {MAX_DATA_PAGE}")
    principal = caller(request)
    owner = None if principal.admin else principal.user
    found = await contents.data_files_of(request.app[STORE], owner, limit=limit)
    return web.json_response(DataList(items=[data_info(item) for item in found]).model_dump())


@routes.get("/api/data/{item_id}")
@documented(
    media="application/octet-stream",
    errors=(400, 403, 404),
    summary="Download a data file (any stored item) by id",
)
async def download_data(request: web.Request) -> web.StreamResponse:
    def headers(document: ContentRecord) -> dict[str, str]:
        return {"Content-Type": "application/octet-stream"}

    try:
        return await stream_item(request, lambda: load_item(request), headers)
    except AnswerFound as found:
        return web.Response(body=found.answer.text.encode(), content_type="application/octet-stream")


@routes.get("/api/data/{item_id}/info")
@documented(response=DataInfo, errors=(400, 403, 404), summary="What is stored under an id")
async def data_info_route(request: web.Request) -> web.Response:
    try:
        return web.json_response(data_info(await load_item(request)).model_dump())
    except AnswerFound as found:
        return web.json_response(answer_info(found.answer).model_dump())


@routes.delete("/api/data/{item_id}")
@documented(
    response=DataId,
    errors=(400, 403, 404, 409, *COMMAND_ERRORS),
    summary="Delete a data file (any stored item) by id",
)
async def delete_data(request: web.Request) -> web.Response:
    try:
        document = await load_item(request, to_change=True)
    except AnswerFound as found:
        raise ApiError(
            409, f"this is the answer of job {found.answer.job_id}: it goes with its job (DELETE /api/job/delete)"
        ) from None
    await send_command(request, DeleteContent(item_id=document.id))
    return web.json_response(DataId(id=document.id).model_dump())
