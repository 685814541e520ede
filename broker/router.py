"""Dispatch by payload type: one plain async function per command or event.

A router is itself a :data:`broker.port.Handler`, so one queue subscription serves every message
type a service consumes. A type with no handler is a poison message: it can never succeed here.
A handler is called with its payload, already of the type it was registered for, and the envelope
(``async def task_completed(self, event: TaskCompleted, envelope: Envelope)``). Registered with a
:class:`~broker.serial.Serialized` policy, it runs one message of an entity at a time and a lost
optimistic race is retried (see :mod:`broker.serial`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from broker.envelope import Envelope
from broker.port import PoisonMessage
from broker.serial import Serialized
from schemas.base import WireModel

M = TypeVar("M", bound=WireModel)
Result = WireModel | Envelope | None
TypedHandler = Callable[[M, Envelope], Awaitable[Result]]
Key = Callable[[M, Envelope], str | None]
"""The entity a message is about (None: about no one entity, so retried but not locked)."""


@dataclass(frozen=True, slots=True)
class _Route(Generic[M]):
    handler: TypedHandler[M]
    serialized: Serialized | None
    key: Key[M] | None


class Router:
    def __init__(self) -> None:
        self._routes: dict[type[WireModel], _Route[Any]] = {}

    def add(
        self,
        model: type[M],
        handler: TypedHandler[M],
        *,
        serialized: Serialized | None = None,
        key: Key[M] | None = None,
    ) -> None:
        """Route ``model`` to ``handler``; with ``serialized``, under its policy for the entity ``key`` names."""
        if model in self._routes:
            raise ValueError(f"{model.__name__} already has a handler")
        if key is not None and serialized is None:
            raise ValueError("a key serializes only with a Serialized policy")
        self._routes[model] = _Route(handler, serialized, key)

    @property
    def models(self) -> tuple[type[WireModel], ...]:
        return tuple(self._routes)

    async def __call__(self, envelope: Envelope) -> Result:
        route = self._routes.get(type(envelope.payload))
        if route is None:
            raise PoisonMessage(f"no handler here for {envelope.type!r}")
        payload = envelope.payload
        if route.serialized is None:
            return await route.handler(payload, envelope)
        key = None if route.key is None else route.key(payload, envelope)
        return await route.serialized.run(key, lambda: route.handler(payload, envelope))
