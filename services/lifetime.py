"""What a running manager holds, its queue subscriptions and its periodic work, closed in one call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from broker.port import BusError, Subscription
from services.store.port import StoreError, VersionConflict

log = logging.getLogger(__name__)


class Lifetime:
    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []

    def hold(self, subscription: Subscription) -> None:
        self._subscriptions.append(subscription)

    def every(self, seconds: float, work: Callable[[], Awaitable[object]], *, what: str) -> None:
        """Run ``work`` every ``seconds``; a failure is logged and the next round tries again."""

        async def repeat() -> None:
            while True:
                await asyncio.sleep(seconds)
                try:
                    await work()
                except (StoreError, VersionConflict, BusError) as error:  # a dependency is down: next round
                    log.warning("%s failed: %r", what, error)
                except Exception:
                    log.exception("%s failed", what)

        self._tasks.append(asyncio.create_task(repeat(), name=what))

    async def close(self) -> None:
        """Stop the periodic work, then the consumers (letting in-flight handlers finish)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for subscription in self._subscriptions:
            await subscription.cancel()
        self._tasks, self._subscriptions = [], []
