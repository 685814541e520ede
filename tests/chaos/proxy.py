"""A TCP proxy a test controls, to fail the network between services and RabbitMQ without root.

    proxy = await TcpProxy("127.0.0.1", 5672).start()   # services connect to proxy.url(amqp_url)
    proxy.drop()      # reset every open connection once; new ones pass
    proxy.cut()       # reset every open connection and refuse new ones, until restore()
    proxy.stall()     # keep connections open but move no byte (a partition), until restore()
    proxy.restore()

The ``bus`` branch brings ``tests/tcp_proxy.py`` (stall, restore, and a cut that still accepts new
connections: this ``drop``) for the bus's own tests; this one adds refusing new connections, which a
fleet that reconnects needs to be kept off the broker. Once both are on main they can become one.

A refused connection is accepted and closed at once (the client sees a reset, as from a broker that
went away); a stalled one holds what it reads and delivers it, in order, on restore.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress

from yarl import URL

CHUNK = 65536


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.refusing = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, amqp_url: str) -> str:
        """``amqp_url`` with its host and port replaced by this proxy's."""
        return str(URL(amqp_url).with_host(self.host).with_port(self.port))

    @property
    def connections(self) -> int:
        return len(self._links)

    def drop(self) -> int:
        """Reset every open connection; returns how many."""
        links = list(self._links)
        for client, server in links:
            _reset(client)
            _reset(server)
        self._links.clear()
        return len(links)

    def cut(self) -> int:
        self.refusing = True
        return self.drop()

    def stall(self) -> None:
        self._flowing.clear()

    def restore(self) -> None:
        self.refusing = False
        self._flowing.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.restore()
        self.drop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            _reset(client_writer)
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(client_writer)
            return
        link = (client_writer, server_writer)
        self._links.add(link)
        for reader, writer in ((client_reader, server_writer), (server_reader, client_writer)):
            task = asyncio.create_task(self._pump(reader, writer, link))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                await self._flowing.wait()
                if link not in self._links:
                    return
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if link in self._links:
                self._links.discard(link)
                for side in link:
                    _reset(side)


def _reset(writer: asyncio.StreamWriter) -> None:
    with suppress(OSError, RuntimeError):
        transport = writer.transport
        if not transport.is_closing():
            transport.abort()
