"""Item 8: slow headers and slow bodies are cut off, a compressed body cannot expand past a limit,
and users have quotas on jobs not yet ended and on bytes stored."""

from __future__ import annotations

import asyncio
import gzip
import io
import time
from pathlib import Path

from services.gateway.app import GatewayService
from tests.security.stack import Secure, open_secure


async def start_upload(
    secure: Secure, length: int, first: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw POST /api/data whose headers promise ``length`` bytes of body, of which ``first`` is sent."""
    server = secure.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = (
        f"POST /api/data?name=slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secure.tokens['steve']}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    )
    writer.write(head.encode() + first)
    await writer.drain()
    return reader, writer


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server said before it closed the connection; fails if it kept it open."""
    return await asyncio.wait_for(reader.read(), seconds)


async def test_slow_headers_are_cut_off(tmp_path: Path) -> None:
    secure, close = await open_secure(tmp_path, header_timeout=0.5, port=0)
    gateway = GatewayService(secure.settings, secure.bus, secure.store, secure.topology)
    await gateway.start()
    try:
        connections = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(40)]
        for _, writer in connections:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            await writer.drain()
        started = time.monotonic()
        await asyncio.gather(*(closed_within(reader, 5.0) for reader, _ in connections))
        assert time.monotonic() - started < 3.0
        for _, writer in connections:
            writer.close()
    finally:
        await gateway.stop()
        await close()


async def test_a_slow_upload_is_cut_off_with_408(tmp_path: Path) -> None:
    secure, close = await open_secure(tmp_path, body_idle_timeout=0.4, body_min_rate=1000)
    try:
        reader, writer = await start_upload(secure, 100_000)

        async def trickle() -> None:
            for _ in range(100):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.1)

        dripping = asyncio.create_task(trickle())
        answer = await closed_within(reader, 5.0)
        dripping.cancel()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"slower than 1000 bytes a second" in answer
    finally:
        await close()


async def test_a_silent_upload_is_cut_off_with_408(tmp_path: Path) -> None:
    secure, close = await open_secure(tmp_path, body_idle_timeout=0.3)
    try:
        reader, writer = await start_upload(secure, 1000, b"abc")
        answer = await closed_within(reader, 5.0)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        await close()


async def test_a_gzip_body_may_not_expand_past_the_limit(tmp_path: Path) -> None:
    secure, close = await open_secure(tmp_path, max_decompressed_bytes=64 * 1024)
    try:
        bomb = gzip.compress(b"\0" * (900 * 1024))
        assert len(bomb) < 64 * 1024
        status, body = await secure.call("POST", "/api/data?name=bomb", data=bomb, headers={"Content-Encoding": "gzip"})
        assert status == 413, body
        assert "decompresses" in body["error"]
        assert not list((tmp_path / "blobs").glob("*/*/*"))  # nothing stored
        small = gzip.compress(b"hello" * 100)
        status, body = await secure.call("POST", "/api/data?name=ok", data=small, headers={"Content-Encoding": "gzip"})
        assert status == 201, body
    finally:
        await close()


async def test_a_user_has_a_quota_of_jobs_not_yet_ended(tmp_path: Path) -> None:
    secure, close = await open_secure(tmp_path, max_active_jobs_per_user=2)
    try:
        for _ in range(2):
            status, body = await secure.call(
                "POST", "/api/job/run", json={"command": "true"}, headers={"Idempotency-Key": str(time.time_ns())}
            )
            assert status == 201, body
        status, body = await secure.call("POST", "/api/job/run", json={"command": "true"})
        assert status == 429, body
        assert "SKYBUS_MAX_ACTIVE_JOBS_PER_USER=2" in body["error"]
        assert (await secure.call("POST", "/api/job/run", "alice", json={"command": "true"}))[0] == 201
        for _ in range(3):
            assert (await secure.call("POST", "/api/job/run", "admin", json={"command": "true"}))[0] == 201
    finally:
        await close()


async def test_a_user_has_a_quota_of_stored_bytes(tmp_path: Path) -> None:
    secure, close = await open_secure(tmp_path, max_stored_bytes_per_user=1000)
    try:
        assert (await secure.call("POST", "/api/data?name=a", data=b"a" * 600))[0] == 201
        status, body = await secure.call("POST", "/api/data?name=b", data=b"b" * 600)
        assert status == 429, body
        assert "SKYBUS_MAX_STORED_BYTES_PER_USER" in body["error"]
        assert (await secure.call("POST", "/api/data?name=c", data=b"c" * 400))[0] == 201
        status, body = await secure.call("POST", "/api/data?name=d", data=b"d")
        assert status == 429, body
        assert (await secure.call("POST", "/api/data?name=e", "admin", data=b"e" * 2000))[0] == 201
        response = await secure.client.post(
            "/resources", data={"resourceInfo": "{}", "resource": io.BytesIO(b"x")}, headers=secure.auth()
        )
        body = await response.json()
        assert response.status == 429 and body[0]["status"] == 429, body
    finally:
        await close()
