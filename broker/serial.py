"""One message of an entity at a time, and a lost optimistic race retried: a router option.

A manager writes each document with the version it read, so two messages about one entity handled
at once in one process would only race each other into a conflict. :class:`Serialized` keeps them
apart: in this process, the work for one key runs one at a time (work for other keys runs
concurrently). A twin process is kept apart by the versions alone: when it wrote first, the work
raises the caller's conflict exception and is run again at once, after a short backoff and with a
fresh read, instead of a requeue to the end of the queue. After ``attempts`` runs the conflict
propagates (the bus then requeues the message).

What an entity is and which exception means a lost race, the caller says: the broker knows no store.
A lock lives only while some work of its key runs or waits (a weak map), so idle entities cost
nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import TypeVar
from weakref import WeakValueDictionary

T = TypeVar("T")


class Serialized:
    def __init__(
        self,
        conflict: type[Exception] | tuple[type[Exception], ...],
        *,
        attempts: int = 5,
        backoff: float = 0.001,
    ) -> None:
        """``conflict``: what a lost race raises. ``attempts``: runs in all, at least one. The n-th
        retry waits ``n * backoff`` seconds, holding no lock."""
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.conflict = conflict
        self.attempts = attempts
        self.backoff = backoff
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()

    async def run(self, key: str | None, work: Callable[[], Awaitable[T]]) -> T:
        """``work()`` under the lock of ``key`` (None: no lock), run again on a conflict."""
        # Held here while any run of this key goes on: that is what keeps it in the weak map.
        guard: AbstractAsyncContextManager[object] = nullcontext() if key is None else self._lock(key)
        attempt = 1
        while True:
            try:
                async with guard:
                    return await work()
            except self.conflict:
                if attempt >= self.attempts:
                    raise
            await asyncio.sleep(self.backoff * attempt)  # not holding the lock
            attempt += 1

    @property
    def locked_keys(self) -> int:
        """How many keys have a lock now: those with work running or waiting."""
        return len(self._locks)

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock
