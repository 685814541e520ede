"""The agent's HTTP client for the gateway's data API: stage files in, stage answers out."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterable, Callable
from pathlib import Path

import aiohttp


class DataClientError(Exception):
    pass


class GatewayUntrusted(Exception):
    """The gateway's TLS certificate does not verify: no retry can help, its operator must give the
    right CA (``--ca``/``SKYBUS_CA``) or URL."""


def untrusted(url: str, error: aiohttp.ClientSSLError) -> GatewayUntrusted:
    return GatewayUntrusted(f"cannot verify the gateway at {url}: {error} (give its CA with --ca or SKYBUS_CA)")


class DataClient:
    """Downloads and uploads with this host's own token; the gateway lets it touch only its jobs' files."""

    def __init__(self, gateway_url: Callable[[], str], token: str, *, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: what an https:// gateway is verified with (default: the system's trust store)."""
        # A callable: under ``skybus up --port 0`` the URL is known only once the gateway listens.
        self._gateway_url = gateway_url
        self._tls = tls
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session: aiohttp.ClientSession | None = None

    def _base(self) -> str:
        return self._gateway_url().rstrip("/")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
                connector=aiohttp.TCPConnector(ssl=self._tls or True),
            )
        return self._session

    async def download(self, data_id: str, destination: Path, *, executable: bool = False) -> None:
        partial = destination.with_name(destination.name + ".part")
        try:
            async with self._client().get(f"{self._base()}/api/data/{data_id}") as response:
                if response.status != 200:
                    raise DataClientError(f"download of {data_id} failed: {response.status} {await response.text()}")
                with partial.open("wb") as out:
                    async for chunk in response.content.iter_chunked(256 * 1024):
                        out.write(chunk)
            os.chmod(partial, 0o755 if executable else 0o644)
            partial.rename(destination)
        except aiohttp.ClientError as error:
            raise DataClientError(f"download of {data_id} failed: {error!r}") from error
        finally:
            partial.unlink(missing_ok=True)

    async def upload(self, chunks: AsyncIterable[bytes], *, name: str, job_id: str) -> str:
        params = {"name": name, "job_id": job_id}
        try:
            async with self._client().post(f"{self._base()}/api/data", params=params, data=chunks) as response:
                if response.status != 201:
                    raise DataClientError(f"upload of {name} failed: {response.status} {await response.text()}")
                return (await response.json())["id"]
        except aiohttp.ClientError as error:
            raise DataClientError(f"upload of {name} failed: {error!r}") from error

    async def whoami(self) -> dict[str, object] | None:
        """Whom the gateway takes this token for; None if it does not know it (HTTP 401).

        Raises :class:`DataClientError` when the gateway cannot be asked, :class:`GatewayUntrusted`
        when its certificate does not verify."""
        try:
            async with self._client().get(f"{self._base()}/api/whoami") as response:
                if response.status == 401:
                    return None
                if response.status != 200:
                    raise DataClientError(f"whoami failed: {response.status} {await response.text()}")
                return await response.json()
        except aiohttp.ClientSSLError as error:
            raise untrusted(self._base(), error) from error
        except aiohttp.ClientError as error:
            raise DataClientError(f"cannot reach the gateway at {self._base()}: {error!r}") from error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
