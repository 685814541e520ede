"""A small REST client of the gateway on aiohttp (already a dependency: no second HTTP stack to install).

Every failure leaves as :class:`ApiFailure` with one line a person can read: the gateway's own error
message when it sent one (``{"error"}`` or seed 004's ``[{"message"}]``), else what went wrong on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import aiohttp

from services.client.config import CA_ENV, ClientConfig
from services.tls import client_context

CHUNK = 256 * 1024
LONG_POLL_SLACK = 30.0
"""Seconds a read may wait beyond the longest long poll (60 s) before the client gives up."""

Progress = Callable[[int], None]


class ApiFailure(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def error_message(body: Any, fallback: str) -> str:
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if isinstance(body, dict):
        for key in ("message", "error"):
            if isinstance(body.get(key), str) and body[key]:
                return body[key]
    return fallback


class Api:
    """``async with Api(config) as api``: one connection pool for one command."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60 + LONG_POLL_SLACK)
        tls = client_context(Path(self.config.ca)) if self.config.ca else True  # True: the system's trust store
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.config.token}"},
            timeout=timeout,
            connector=aiohttp.TCPConnector(ssl=tls),
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use Api in `async with`"
        return self._session

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """Network failures as one line that names the gateway."""
        try:
            yield
        except aiohttp.ClientSSLError as error:
            hint = "" if self.config.ca else f" (give its CA with `skybus login --ca FILE` or {CA_ENV})"
            raise ApiFailure(f"cannot verify skybus at {self.config.url}: {error}{hint}") from None
        except aiohttp.ClientError as error:
            raise ApiFailure(f"cannot reach skybus at {self.config.url}: {error or type(error).__name__}") from None
        except TimeoutError:
            raise ApiFailure(f"no answer from skybus at {self.config.url} in time") from None

    async def _checked(self, response: aiohttp.ClientResponse) -> None:
        if response.status < 400:
            return
        text = await response.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = None
        fallback = text.strip().splitlines()[0][:200] if text.strip() else response.reason or "error"
        raise ApiFailure(f"{response.status}: {error_message(body, fallback)}", response.status)

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer (None for an empty one)."""
        with self._reaching():
            async with self.session.request(method, self.config.url + path, **kwargs) as response:
                await self._checked(response)
                text = await response.text()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise ApiFailure(f"{method} {path}: the gateway answered something that is not JSON") from None

    async def upload(self, path: Path, *, name: str | None = None, progress: Progress | None = None) -> str:
        """Stream a file to ``POST /api/data``; its id."""
        size = (await asyncio.to_thread(path.stat)).st_size
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        body = await self.call(
            "POST",
            "/api/data",
            params={"name": name or path.name},
            data=_chunks(path, progress),
            headers=headers,
        )
        return str(body["id"])

    async def download(
        self, path: str, into: IO[bytes], *, progress: Callable[[int | None], Progress] | None = None
    ) -> None:
        """Stream ``GET path`` into a file; ``progress(total)`` makes the callback for its chunks."""
        with self._reaching():
            async with self.session.get(self.config.url + path) as response:
                await self._checked(response)
                advance = progress(response.content_length) if progress else None
                async for chunk in response.content.iter_chunked(CHUNK):
                    await asyncio.to_thread(into.write, chunk)
                    if advance:
                        advance(len(chunk))

    async def stream(self, path: str, write: Callable[[bytes], None], **params: str) -> None:
        """``GET path`` chunk by chunk into ``write`` as the bytes come, with no read timeout: a
        followed job may stay silent for as long as it likes."""
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=None)
        with self._reaching():
            async with self.session.get(self.config.url + path, params=params, timeout=timeout) as response:
                await self._checked(response)
                async for chunk in response.content.iter_any():
                    write(chunk)

    async def read(self, path: str) -> bytes:
        with self._reaching():
            async with self.session.get(self.config.url + path) as response:
                await self._checked(response)
                return await response.read()


async def _chunks(path: Path, progress: Progress | None) -> AsyncIterator[bytes]:
    file = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(file.read, CHUNK):
            yield chunk
            if progress:
                progress(len(chunk))
    finally:
        file.close()
