"""Dispatch by payload type: one plain async function per command or event.

A router is itself a :data:`broker.port.Handler`, so one queue subscription serves every message
type a service consumes. A type with no handler is a poison message: it can never succeed here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from broker.envelope import Envelope
from broker.port import PoisonMessage
from schemas.base import WireModel

M = TypeVar("M", bound=WireModel)
TypedHandler = Callable[[Envelope], Awaitable[WireModel | Envelope | None]]


class Router:
    def __init__(self) -> None:
        self._handlers: dict[type[WireModel], TypedHandler] = {}

    def add(self, model: type[WireModel], handler: TypedHandler) -> None:
        if model in self._handlers:
            raise ValueError(f"{model.__name__} already has a handler")
        self._handlers[model] = handler

    @property
    def models(self) -> tuple[type[WireModel], ...]:
        return tuple(self._handlers)

    async def __call__(self, envelope: Envelope) -> WireModel | Envelope | None:
        handler = self._handlers.get(type(envelope.payload))
        if handler is None:
            raise PoisonMessage(f"no handler here for {envelope.type!r}")
        return await handler(envelope)
