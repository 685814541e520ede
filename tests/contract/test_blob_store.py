"""The blob-store contract: one suite that every adapter passes.

:class:`BlobStoreContract` holds the tests; each adapter's subclass supplies ``blobs`` (a store on
fresh storage) and ``leftovers`` (everything the adapter's storage holds, temporary or not, so a
test can check that a failed put left nothing behind).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from services.store.disk_blobs import DiskBlobStore
from services.store.gridfs_blobs import GridFsBlobStore
from services.store.port import BlobInfo, BlobNotFound, BlobStore, BlobTooLarge, StoreUnavailable
from tests.store_fixtures import blob_root_fixture, mongo_database_fixture, mongo_url_fixture  # noqa: F401

Leftovers = Callable[[], Awaitable[list[str]]]
KiB, MiB = 1024, 1024 * 1024


def payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


async def stream(data: bytes, piece: int = 64 * KiB) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


async def read_all(blobs: BlobStore, blob_id: str, **options: Any) -> list[bytes]:
    return [chunk async for chunk in blobs.open(blob_id, **options)]


async def listed(blobs: BlobStore, **options: Any) -> list[BlobInfo]:
    return [info async for info in blobs.list(**options)]


class BlobStoreContract:
    async def test_put_then_open_roundtrips_a_multi_mib_stream(self, blobs: BlobStore) -> None:
        data = payload(3 * MiB + 123)
        info = await blobs.put(stream(data, 64 * KiB + 7), max_size=8 * MiB)
        assert info.size == len(data)
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert abs(info.created_at - time.time()) < 60
        assert await blobs.info(info.id) == info
        chunks = await read_all(blobs, info.id, chunk_size=256 * KiB)
        assert len(chunks) >= 12
        assert max(len(chunk) for chunk in chunks) <= 256 * KiB
        assert b"".join(chunks) == data
        assert b"".join(await read_all(blobs, info.id, chunk_size=MiB)) == data

    async def test_each_put_gets_a_new_id(self, blobs: BlobStore) -> None:
        first = await blobs.put(stream(b"same"))
        second = await blobs.put(stream(b"same"))
        assert first.id != second.id
        assert first.sha256 == second.sha256
        assert {info.id for info in await listed(blobs)} == {first.id, second.id}

    async def test_an_empty_blob(self, blobs: BlobStore) -> None:
        info = await blobs.put(stream(b""))
        assert (info.size, info.sha256) == (0, hashlib.sha256(b"").hexdigest())
        assert b"".join(await read_all(blobs, info.id)) == b""

    async def test_exactly_max_size_is_allowed(self, blobs: BlobStore) -> None:
        info = await blobs.put(stream(payload(100 * KiB), 10 * KiB), max_size=100 * KiB)
        assert info.size == 100 * KiB

    async def test_too_large_leaves_nothing(self, blobs: BlobStore, leftovers: Leftovers) -> None:
        with pytest.raises(BlobTooLarge):
            await blobs.put(stream(payload(2 * MiB + 1), 64 * KiB), max_size=2 * MiB)
        assert await listed(blobs) == []
        assert await leftovers() == []

    async def test_a_failing_source_leaves_nothing(self, blobs: BlobStore, leftovers: Leftovers) -> None:
        async def broken() -> AsyncIterator[bytes]:
            async for chunk in stream(payload(2 * MiB)):
                yield chunk
            raise RuntimeError("the client went away")

        with pytest.raises(RuntimeError, match="went away"):
            await blobs.put(broken())
        assert await listed(blobs) == []
        assert await leftovers() == []

    async def test_a_cancelled_put_leaves_nothing(self, blobs: BlobStore, leftovers: Leftovers) -> None:
        halfway = asyncio.Event()

        async def stalls() -> AsyncIterator[bytes]:
            async for chunk in stream(payload(2 * MiB)):
                yield chunk
            halfway.set()
            await asyncio.Event().wait()
            yield b"never"

        put = asyncio.create_task(blobs.put(stalls()))
        await asyncio.wait_for(halfway.wait(), 10)
        put.cancel()
        with pytest.raises(asyncio.CancelledError):
            await put
        assert await listed(blobs) == []
        assert await leftovers() == []

    @pytest.mark.parametrize("blob_id", [str(uuid.uuid4()), "../../etc/passwd", "", "not-a-uuid"])
    async def test_an_unknown_id(self, blobs: BlobStore, blob_id: str) -> None:
        with pytest.raises(BlobNotFound):
            await read_all(blobs, blob_id)
        assert await blobs.info(blob_id) is None
        assert await blobs.delete(blob_id) is False

    async def test_delete(self, blobs: BlobStore, leftovers: Leftovers) -> None:
        kept = await blobs.put(stream(b"kept"))
        gone = await blobs.put(stream(payload(300 * KiB)))
        assert await blobs.delete(gone.id) is True
        assert await blobs.delete(gone.id) is False
        assert await blobs.info(gone.id) is None
        with pytest.raises(BlobNotFound):
            await read_all(blobs, gone.id)
        assert await listed(blobs) == [kept]
        assert b"".join(await read_all(blobs, kept.id)) == b"kept"
        assert len(await leftovers()) >= 1

    async def test_list_created_before(self, blobs: BlobStore) -> None:
        old = await blobs.put(stream(b"old"))
        await asyncio.sleep(0.05)
        new = await blobs.put(stream(b"new"))
        assert old.created_at < new.created_at
        assert await listed(blobs, created_before=new.created_at) == [old]
        assert await listed(blobs, created_before=old.created_at) == []
        assert sorted(await listed(blobs), key=lambda info: info.created_at) == [old, new]
        assert [info.created_at for info in await listed(blobs, created_before=new.created_at)] == [old.created_at]


class TestDiskBlobStore(BlobStoreContract):
    @pytest.fixture
    async def blobs(self, blob_root: Path) -> AsyncIterator[DiskBlobStore]:
        store = DiskBlobStore(blob_root)
        yield store
        await store.close()

    @pytest.fixture
    def leftovers(self, blob_root: Path) -> Leftovers:
        def scan() -> list[str]:
            return sorted(str(path.relative_to(blob_root)) for path in blob_root.rglob("*") if path.is_file())

        async def files() -> list[str]:
            return await asyncio.to_thread(scan)

        return files

    async def test_a_reader_keeps_reading_a_deleted_blob(self, blobs: DiskBlobStore) -> None:
        data = payload(MiB)
        info = await blobs.put(stream(data))
        reader = blobs.open(info.id, chunk_size=64 * KiB)
        first = await anext(reader)
        assert await blobs.delete(info.id) is True
        rest = [chunk async for chunk in reader]
        assert first + b"".join(rest) == data

    async def test_the_file_name_carries_the_checksum(self, blobs: DiskBlobStore, leftovers: Leftovers) -> None:
        info = await blobs.put(stream(b"hello"))
        assert await leftovers() == [f"{info.id[0:2]}/{info.id[2:4]}/{info.id}.{info.sha256}"]

    async def test_cleanup_temp_removes_only_stale_partial_files(self, blobs: DiskBlobStore, blob_root: Path) -> None:
        temporary = blob_root / ".tmp"
        temporary.mkdir()
        stale, fresh = temporary / f"{uuid.uuid4()}.part", temporary / f"{uuid.uuid4()}.part"
        stale.write_bytes(b"left by a killed process")
        fresh.write_bytes(b"an upload in progress")
        two_hours_ago = time.time() - 7200
        os.utime(stale, (two_hours_ago, two_hours_ago))
        kept = await blobs.put(stream(b"kept"))
        assert await blobs.cleanup_temp(max_age=3600) == 1
        assert not stale.exists() and fresh.exists()
        assert await blobs.info(kept.id) == kept


@pytest.mark.mongo
class TestGridFsBlobStore(BlobStoreContract):
    @pytest.fixture
    async def blobs(self, mongo_url: str, mongo_database: str) -> AsyncIterator[GridFsBlobStore]:
        store = await GridFsBlobStore.connect(mongo_url, mongo_database)
        yield store
        await store.close()

    @pytest.fixture
    async def leftovers(self, mongo_url: str, mongo_database: str) -> AsyncIterator[Leftovers]:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
        database = client[mongo_database]

        async def documents() -> list[str]:
            files = [f"file {doc['_id']}" async for doc in database["blobs.files"].find({}, {"_id": 1})]
            chunks = [f"chunk {doc['files_id']}/{doc['n']}" async for doc in database["blobs.chunks"].find({})]
            return files + chunks

        yield documents
        await client.close()


async def test_gridfs_unreachable_is_store_unavailable() -> None:
    blobs = await GridFsBlobStore.connect("mongodb://127.0.0.1:1/", "skybus", server_selection_timeout=0.1)
    try:
        with pytest.raises(StoreUnavailable):
            await blobs.put(stream(b"data"))  # and the abort that follows fails quietly
    finally:
        await blobs.close()
