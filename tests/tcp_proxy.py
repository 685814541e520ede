"""A TCP proxy a test puts between a client and RabbitMQ, to break the network without root.

``stall()`` holds every byte in both directions (a dead peer that never answers nor resets: what a
broker killed with ``kill -9`` behind a lost host looks like), ``restore()`` lets them flow again,
``cut()`` closes every proxied connection at once. As in aio-pika's own tests::

    async with TcpProxy("127.0.0.1", 5672) as proxy:
        bus = AmqpBus(proxy.url(amqp_url), ...)
        proxy.stall()
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from yarl import URL

CHUNK = 64 * 1024


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.listen_port = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
        await self.cut()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    def url(self, amqp_url: str) -> str:
        """``amqp_url`` through the proxy."""
        return str(URL(amqp_url).with_host("127.0.0.1").with_port(self.listen_port))

    def stall(self) -> None:
        self._flowing.clear()

    def restore(self) -> None:
        self._flowing.set()

    async def cut(self) -> None:
        """Close every connection through the proxy (new ones are still accepted)."""
        links, self._links = set(self._links), set()
        for link in links:
            link.cancel()
        await asyncio.gather(*links, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        link = asyncio.current_task()
        assert link is not None
        self._links.add(link)
        server_writer: asyncio.StreamWriter | None = None
        try:
            server_reader, server_writer = await asyncio.open_connection(self.host, self.port)
            await asyncio.gather(self._pump(client_reader, server_writer), self._pump(server_reader, client_writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._links.discard(link)
            for writer in (client_writer, server_writer):
                if writer is not None:
                    writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(CHUNK):
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()
        writer.transport.abort()  # one side closed: close the other, as a dropped connection does
