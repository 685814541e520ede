"""Blobs in GridFS (PyMongo's async bucket), for when the state lives in MongoDB.

Each blob is one GridFS file whose ``_id`` (and filename) is a random UUID string, with
``metadata.sha256`` and ``metadata.created_at`` (epoch seconds, as everywhere in the store).
GridFS writes the chunks first and the files document last, so a blob becomes visible only once it
is whole. A failed, oversized or cancelled put aborts the upload, which deletes the chunks written
so far; chunks that outlive a put (its process died, or the abort itself could not reach the server)
have no files document, and :meth:`GridFsBlobStore.cleanup_temp` removes them once they are old.

A reader streams chunk by chunk; unlike a file on disk, a blob deleted while it is being read
cannot be read to its end (:class:`BlobNotFound` is raised at the first missing chunk).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from gridfs import AsyncGridFSBucket
from gridfs.asynchronous.grid_file import AsyncGridIn
from gridfs.errors import CorruptGridFile, NoFile
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, PyMongoError

from services.store.port import BlobInfo, BlobNotFound, BlobTooLarge, StoreUnavailable

log = logging.getLogger(__name__)


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except ConnectionFailure as exc:
        raise StoreUnavailable(f"MongoDB: {exc}") from exc


def _info(file: dict[str, Any]) -> BlobInfo:
    metadata = file.get("metadata") or {}
    created_at = metadata.get("created_at")
    if created_at is None:
        created_at = file["uploadDate"].replace(tzinfo=UTC).timestamp()
    return BlobInfo(str(file["_id"]), int(file["length"]), metadata.get("sha256", ""), float(created_at))


class GridFsBlobStore:
    def __init__(
        self,
        database: AsyncDatabase[dict[str, Any]],
        *,
        bucket_name: str = "blobs",
        client: AsyncMongoClient[dict[str, Any]] | None = None,
    ) -> None:
        self._bucket = AsyncGridFSBucket(database, bucket_name=bucket_name)
        self._files = database[f"{bucket_name}.files"]
        self._chunks = database[f"{bucket_name}.chunks"]
        self._files_name = f"{bucket_name}.files"
        self._client = client  # closed with the store when the store opened it

    @classmethod
    async def connect(
        cls, url: str, database: str, *, bucket_name: str = "blobs", server_selection_timeout: float = 5.0
    ) -> GridFsBlobStore:
        """A store with a client of its own (``open`` is taken: it reads a blob)."""
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=int(server_selection_timeout * 1000), appname="skybus"
        )
        return cls(client[database], bucket_name=bucket_name, client=client)

    async def put(self, chunks: AsyncIterable[bytes], *, max_size: int | None = None) -> BlobInfo:
        blob_id = str(uuid.uuid4())
        upload = self._bucket.open_upload_stream_with_id(blob_id, blob_id)
        sha256 = hashlib.sha256()
        size = 0
        try:
            with _unavailable():
                async for chunk in chunks:
                    size += len(chunk)
                    if max_size is not None and size > max_size:
                        raise BlobTooLarge(f"the blob is larger than {max_size} bytes")
                    sha256.update(chunk)
                    await upload.write(bytes(chunk))
                info = BlobInfo(blob_id, size, sha256.hexdigest(), time.time())
                await upload.set("metadata", {"sha256": info.sha256, "created_at": info.created_at})
                await upload.close()
            return info
        except BaseException:
            await self._abort(upload)
            raise

    @staticmethod
    async def _abort(upload: AsyncGridIn) -> None:
        """Delete what the upload wrote; shielded, so a second cancellation cannot stop it halfway."""
        try:
            await asyncio.shield(upload.abort())
        except PyMongoError as exc:
            log.warning("could not remove the chunks of failed upload %s (cleanup_temp will): %s", upload._id, exc)

    async def open(self, blob_id: str, *, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        with _unavailable():
            try:
                download = await self._bucket.open_download_stream(blob_id)
            except NoFile:
                raise BlobNotFound(blob_id) from None
            try:
                while True:
                    try:
                        data = await download.read(chunk_size)
                    except CorruptGridFile as exc:
                        raise BlobNotFound(f"{blob_id} was deleted while being read") from exc
                    if not data:
                        break
                    yield data
            finally:
                await download.close()

    async def info(self, blob_id: str) -> BlobInfo | None:
        with _unavailable():
            file = await self._files.find_one({"_id": blob_id})
        return _info(file) if file is not None else None

    async def delete(self, blob_id: str) -> bool:
        with _unavailable():
            try:
                await self._bucket.delete(blob_id)
            except NoFile:
                return False
        return True

    async def list(self, *, created_before: float | None = None) -> AsyncIterator[BlobInfo]:
        query = {} if created_before is None else {"metadata.created_at": {"$lt": created_before}}
        with _unavailable():
            async for file in self._files.find(query):
                yield _info(file)

    async def cleanup_temp(self, max_age: float = 3600.0) -> int:
        """Remove the chunks of uploads that never finished, once their newest chunk is ``max_age`` old.

        The age comes from the chunks' ObjectIds (made when each batch of chunks was written), so an
        upload still in progress, however long, keeps its chunks. Returns how many uploads it removed.
        """
        cutoff = ObjectId.from_datetime(datetime.now(UTC) - timedelta(seconds=max_age))
        pipeline = [
            {"$match": {"n": 0, "_id": {"$lt": cutoff}}},
            {"$lookup": {"from": self._files_name, "localField": "files_id", "foreignField": "_id", "as": "file"}},
            {"$match": {"file": {"$size": 0}}},
            {"$project": {"files_id": 1}},
        ]
        removed = 0
        with _unavailable():
            candidates = [doc["files_id"] async for doc in await self._chunks.aggregate(pipeline)]
            for files_id in candidates:
                newest = await self._chunks.find_one({"files_id": files_id}, {"_id": 1}, sort=[("n", -1)])
                if newest is not None and newest["_id"] < cutoff:
                    await self._chunks.delete_many({"files_id": files_id})
                    removed += 1
        return removed

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
