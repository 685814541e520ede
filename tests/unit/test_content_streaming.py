"""Uploads and downloads stream, an abandoned upload leaves nothing, and a PUT is atomic for readers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterable, AsyncIterator

import aiohttp
import pytest

from services.gateway import downloads
from services.store.port import BlobNotFound
from tests.content_stack import (
    LIMIT,
    ContentStack,
    content_stack_fixture,  # noqa: F401
    info_for,
    resource_form,
)

KiB = 1024


def spy_on_puts(stack: ContentStack, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of every chunk the gateway hands the blob store."""
    sizes: list[int] = []
    put = stack.blobs.put

    async def recording_put(chunks: AsyncIterable[bytes], *, max_size: int | None = None):
        async def recorded() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                sizes.append(len(chunk))
                yield chunk

        return await put(recorded(), max_size=max_size)

    monkeypatch.setattr(stack.blobs, "put", recording_put)
    return sizes


async def test_a_multipart_upload_reaches_the_store_in_pieces(
    content_stack: ContentStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = spy_on_puts(content_stack, monkeypatch)
    data = bytes(range(256)) * (900 * KiB // 256)
    assert (await content_stack.post(info_for(), data)).status == 201
    assert sum(sizes) == len(data)
    assert len(sizes) >= 4 and max(sizes) <= 256 * KiB


async def test_a_raw_upload_reaches_the_store_in_pieces(
    content_stack: ContentStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = spy_on_puts(content_stack, monkeypatch)
    response = await content_stack.client.post("/api/data", data=b"r" * (900 * KiB), headers=content_stack.steve)
    assert response.status == 201
    assert sum(sizes) == 900 * KiB and len(sizes) >= 4 and max(sizes) <= 256 * KiB


async def chunked(total: int, piece: int = 64 * KiB) -> AsyncIterator[bytes]:
    for start in range(0, total, piece):
        yield b"z" * min(piece, total - start)


async def test_a_chunked_body_over_the_limit_is_413_and_leaves_nothing(content_stack: ContentStack) -> None:
    response = await content_stack.client.post("/api/data", data=chunked(LIMIT + 1), headers=content_stack.steve)
    assert response.status == 413
    assert await response.json() == {"error": f"The upload is larger than the limit of {LIMIT} bytes."}
    assert await content_stack.blob_ids() == [] and content_stack.temp_files() == []
    assert await content_stack.manager.contents.count() == 0


async def abandon(stack: ContentStack, path: str, headers: dict[str, str], body: bytes) -> None:
    """Send the headers and part of the body, then hang up."""
    server = stack.client.server
    _reader, writer = await asyncio.open_connection(server.host, server.port)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"POST {path} HTTP/1.1\r\nHost: test\r\n{head}Content-Length: {LIMIT}\r\n\r\n".encode() + body)
    await writer.drain()
    for _ in range(100):  # until the server has started writing the blob
        if stack.temp_files():
            break
        await asyncio.sleep(0.01)
    assert stack.temp_files(), "the upload never reached the blob store"
    writer.close()
    await writer.wait_closed()


async def nothing_left(stack: ContentStack) -> None:
    for _ in range(200):
        if not stack.temp_files() and not await stack.blob_ids():
            break
        await asyncio.sleep(0.01)
    assert stack.temp_files() == [] and await stack.blob_ids() == []
    assert await stack.manager.contents.count() == 0


async def test_an_abandoned_raw_upload_leaves_nothing(content_stack: ContentStack) -> None:
    headers = {**content_stack.steve, "Content-Type": "application/octet-stream"}
    await abandon(content_stack, "/api/data", headers, b"x" * (300 * KiB))
    await nothing_left(content_stack)


async def test_an_abandoned_multipart_upload_leaves_nothing(content_stack: ContentStack) -> None:
    boundary = "b0undary"
    headers = {**content_stack.steve, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    start = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="resource"; filename="add.wl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    await abandon(content_stack, "/resources", headers, start + b"x" * (300 * KiB))
    await nothing_left(content_stack)


async def test_put_is_atomic_for_concurrent_readers(
    content_stack: ContentStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers racing a series of PUTs each get one version whole, never a mix or a short body."""
    monkeypatch.setattr(downloads, "CHUNK", 16 * KiB)  # many chunks per read, so a mix could show
    size = 512 * KiB
    versions = [bytes([65 + n]) * size for n in range(8)]
    assert (await content_stack.post(info_for("hot.bin"), versions[0])).status == 201
    seen: list[bytes] = []
    done = asyncio.Event()

    async def reader() -> None:
        while not done.is_set():
            response = await content_stack.client.get("/resources/contents/hot.bin", headers=content_stack.steve)
            assert response.status == 200, await response.text()
            seen.append(await response.read())

    async def writer() -> None:
        for version in versions[1:]:
            form = resource_form(info_for("hot.bin"), version)
            response = await content_stack.client.put("/resources/hot.bin", data=form, headers=content_stack.steve)
            assert response.status == 202
            await asyncio.sleep(0.01)
        done.set()

    await asyncio.gather(writer(), *(reader() for _ in range(6)))
    assert len(seen) >= 12
    for body in seen:
        assert body in versions, f"a mixed or short body: {len(body)} bytes starting {body[:1]!r}"
    assert len(await content_stack.blob_ids()) == 1


async def test_a_reader_that_loses_the_race_to_a_replace_reads_the_metadata_again(
    content_stack: ContentStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await content_stack.post(info_for("r.bin"), b"current")).status == 201
    opened: list[str] = []
    real_open = content_stack.blobs.open

    def open_losing_the_first_race(blob_id: str, **kwargs):
        opened.append(blob_id)
        if len(opened) == 1:
            return real_open(str(uuid.uuid4()), **kwargs)  # as if replaced and deleted just now
        return real_open(blob_id, **kwargs)

    monkeypatch.setattr(content_stack.blobs, "open", open_losing_the_first_race)
    response = await content_stack.client.get("/resources/contents/r.bin", headers=content_stack.steve)
    assert response.status == 200 and await response.read() == b"current"
    assert len(opened) == 2


async def test_a_blob_lost_mid_stream_cuts_the_body_short(
    content_stack: ContentStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without unlink semantics (GridFS) a replaced blob can vanish under a reader: the client must
    see a broken body, never a complete-looking one."""
    assert (await content_stack.post(info_for("g.bin"), b"0123456789")).status == 201

    async def vanishing(blob_id: str, **kwargs) -> AsyncIterator[bytes]:
        yield b"01234"
        raise BlobNotFound(blob_id)

    monkeypatch.setattr(content_stack.blobs, "open", vanishing)
    response = await content_stack.client.get("/resources/contents/g.bin", headers=content_stack.steve)
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
