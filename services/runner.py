"""Run a set of services in one process until SIGINT or SIGTERM, then stop them in reverse order.

Stopping a service stops its consumers first and lets in-flight handlers finish, so a signal never
cuts a handler between its state change and its ack.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def run_until_signalled(
    services: Sequence[Service], *, on_ready: Callable[[], Awaitable[None]] | None = None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started: list[Service] = []
    try:
        for service in services:
            await service.start()
            started.append(service)
        if on_ready is not None:
            await on_ready()
        await stop.wait()
        log.info("signal received: stopping")
    finally:
        for service in reversed(started):
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %s failed", service.name)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
