"""Streaming a stored item's blob to the client, whole and consistent.

Blobs are immutable and a PUT points the metadata at a new one in one versioned update, so a reader
that resolved the metadata streams either the old bytes or the new, never a mix. The replaced blob
is deleted after the update: on disk a reader that has opened it keeps reading it (POSIX unlink),
and a reader that resolved the old metadata but lost the race to open it reads the metadata again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from services.content_manager.records import ContentRecord
from services.gateway.context import BLOBS
from services.gateway.errors import ApiError
from services.store.port import BlobNotFound

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
ATTEMPTS = 3

Resolve = Callable[[], Awaitable[ContentRecord]]


async def stream_item(
    request: web.Request, resolve: Resolve, headers: Callable[[ContentRecord], dict[str, str]]
) -> web.StreamResponse:
    """Resolve the item (raising the API's 404/403), then stream its blob with ``headers(item)``."""
    blobs = request.app[BLOBS]
    if request.method == "HEAD":
        item = await resolve()
        response = web.StreamResponse(headers=headers(item))
        response.content_length = item.size
        await response.prepare(request)
        await response.write_eof()
        return response
    for _ in range(ATTEMPTS):
        item = await resolve()
        chunks = blobs.open(item.blob_id, chunk_size=CHUNK)
        try:
            first = await anext(chunks, b"")
        except BlobNotFound:
            await chunks.aclose()
            continue  # replaced (or deleted) since we read the metadata: read it again
        response = web.StreamResponse(headers=headers(item))
        response.content_length = item.size
        await response.prepare(request)
        try:
            if first:
                await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
        except BlobNotFound:
            # Only a store without unlink semantics (GridFS) loses a blob under a reader: cut the
            # connection, so the client sees a short body and not a complete-looking one.
            log.warning("blob %s of %s was deleted while being sent", item.blob_id, item.id)
            response.force_close()
            return response
        except ConnectionResetError:
            return response  # the client went away
        finally:
            await chunks.aclose()
        await response.write_eof()
        return response
    raise ApiError(503, "The content kept changing while it was being read: try again.")
