"""Uploads streamed into the blob store, and who owns the blob until a manager takes it.

A body is never held whole in memory: a file part (or a raw body) goes to ``BlobStore.put`` chunk by
chunk as it arrives, and only small text parts are read whole (up to :data:`TEXT_PART_LIMIT`). The
size limit is checked twice: against Content-Length before anything is read, and by counting while
streaming (a chunked body has no length), in which case the store keeps nothing.

Until the owning manager has committed the blob's reference, the blob is the gateway's: a request
refused before or by the manager deletes it (:func:`releasing`). A request whose outcome is unknown
(the bus timed out) keeps it: the manager may have committed it, and if it did not, the manager's
orphan cleanup deletes it after the grace period.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from schemas.content import BlobRef
from services.gateway.content_views import upload_file_name
from services.gateway.context import BLOBS
from services.gateway.errors import ApiError
from services.gateway.limits import is_encoded, size_error, upload_limit
from services.store.port import BlobInfo, BlobStore, BlobTooLarge, StoreError

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
TEXT_PART_LIMIT = 64 * 1024
MULTIPART_SLACK = 1024 * 1024  # room for the boundaries and text parts beside the file


@dataclass
class Upload:
    blob: BlobInfo | None = None
    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)

    def ref(self) -> BlobRef:
        assert self.blob is not None
        return BlobRef(blob_id=self.blob.id, size=self.blob.size, sha256=self.blob.sha256)


def check_length(request: web.Request, limit: int) -> None:
    if request.content_length is not None and request.content_length > limit and not is_encoded(request):
        raise size_error(request, limit)


async def _put(request: web.Request, chunks: AsyncIterator[bytes], limit: int) -> BlobInfo:
    try:
        return await request.app[BLOBS].put(chunks, max_size=limit)
    except BlobTooLarge:
        raise size_error(request, limit) from None
    except ConnectionError:
        raise ApiError(400, "The upload was cut short.") from None


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK):
        yield chunk


async def _read_text(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(CHUNK):
        data += chunk
        if len(data) > TEXT_PART_LIMIT:
            raise ApiError(413, f"The part {part.name!r} is larger than {TEXT_PART_LIMIT} bytes.")
    try:
        return data.decode(part.get_charset("utf-8"))
    except (UnicodeDecodeError, LookupError):
        raise ApiError(400, f"The part {part.name!r} is not text.") from None


async def _drain(part: BodyPartReader) -> None:
    while await part.read_chunk(CHUNK):
        pass


async def read_form(
    request: web.Request, *, is_file: Callable[[BodyPartReader], bool], text_parts: set[str], limit: int
) -> Upload:
    """A multipart body (see :func:`read_multipart`), or a urlencoded form of text fields only, which
    is what most HTTP clients send when a form has no file (a PATCH of the metadata alone)."""
    if request.content_type == "application/x-www-form-urlencoded":
        return await _read_urlencoded(request, text_parts)
    if request.content_type != "multipart/form-data":
        raise ApiError(400, "Current request is not a multipart request")
    return await read_multipart(request, is_file=is_file, text_parts=text_parts, limit=limit)


async def _read_urlencoded(request: web.Request, text_parts: set[str]) -> Upload:
    check_length(request, TEXT_PART_LIMIT)
    body = await request.content.read(TEXT_PART_LIMIT + 1)
    if len(body) > TEXT_PART_LIMIT:
        raise ApiError(413, f"A form without a file may be at most {TEXT_PART_LIMIT} bytes.")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "Malformed form body.") from None
    return Upload(fields={name: value for name, value in pairs if name in text_parts})


async def read_multipart(
    request: web.Request, *, is_file: Callable[[BodyPartReader], bool], text_parts: set[str], limit: int
) -> Upload:
    """Stream the one file part into the blob store and read the named text parts; skip the rest."""
    limit = await upload_limit(request, limit)
    check_length(request, limit + MULTIPART_SLACK)
    blobs = request.app[BLOBS]
    upload = Upload()
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "Nested multipart bodies are not supported.")
            if is_file(part):
                if upload.blob is not None:
                    raise ApiError(400, f"More than one {part.name!r} part.")
                upload.blob = await _put(request, _part_chunks(part), limit)
                # Some clients (aiohttp among them) percent-encode the file name.
                upload.filename = upload_file_name(unquote(part.filename) if part.filename else None)
            elif part.name in text_parts:
                upload.fields[part.name] = await _read_text(part)
            else:
                await _drain(part)
    except (ValueError, HttpProcessingError) as error:  # aiohttp's parser raises both (a part's bad headers)
        await release(blobs, upload.blob)
        raise ApiError(400, f"Malformed multipart body: {error}") from None
    except ConnectionError:
        await release(blobs, upload.blob)
        raise ApiError(400, "The upload was cut short.") from None
    except BaseException:
        await release(blobs, upload.blob)
        raise
    return upload


async def read_raw(request: web.Request, *, limit: int) -> Upload:
    limit = await upload_limit(request, limit)
    check_length(request, limit)
    return Upload(blob=await _put(request, request.content.iter_chunked(CHUNK), limit))


async def release(blobs: BlobStore, blob: BlobInfo | None) -> None:
    if blob is None:
        return
    try:
        await blobs.delete(blob.id)
    except StoreError as error:
        log.warning("could not delete refused upload %s (the orphan cleanup will): %r", blob.id, error)


@asynccontextmanager
async def releasing(request: web.Request, upload: Upload) -> AsyncIterator[None]:
    """Delete the upload's blob if the request is refused (a 4xx, before or by the manager)."""
    try:
        yield
    except ApiError as error:
        if error.status < 500:
            await release(request.app[BLOBS], upload.blob)
        raise
