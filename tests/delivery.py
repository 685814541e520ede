"""Calling a typed handler in a test as its router does: with the envelope's payload and the envelope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from broker.envelope import Envelope

R = TypeVar("R")


async def deliver(handler: Callable[[Any, Envelope], Awaitable[R]], envelope: Envelope) -> R:
    """``handler(envelope.payload, envelope)``, as :class:`broker.router.Router` calls it."""
    return await handler(envelope.payload, envelope)
