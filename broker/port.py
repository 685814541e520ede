"""The bus port: what services may ask of a message bus, whatever carries it.

Guarantees every adapter gives (the contract suite in ``tests/contract/test_bus.py`` checks them):

* ``publish`` returns only once the bus holds the message (a publisher confirm on AMQP), so a
  confirmed message survives a broker connection loss.
* A subscribed handler runs at least once per message routed to its queue. The message is
  acknowledged only after the handler returns, so a handler must store its state change first and
  must be safe to run twice.
* The handler's outcome decides the acknowledgement:

  - returns normally: acked; if the message was a request, what it returned is the reply (a
    payload, sent in an envelope caused by the request, or a whole :class:`Envelope`, sent as it
    is: an agent signs its answers);
  - raises :class:`Drop`: an expected domain outcome, logged and acked;
  - raises :class:`PoisonMessage`: dead-lettered at once with the reason;
  - raises anything else: requeued and redelivered, and dead-lettered with the last error as the
    reason once it has been delivered ``delivery_limit`` times.

* A body that does not decode into a known wire model is dead-lettered with the reason and the
  consumer goes on.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from broker.envelope import Envelope
from schemas.base import WireModel

Handler = Callable[[Envelope], Awaitable[WireModel | Envelope | None]]


class BusError(Exception):
    """Base of the errors the bus raises to its callers."""


class BusUnavailable(BusError):
    """The broker cannot be reached (or did not confirm) within the publish deadline."""


class NoRoute(BusError):
    """A request was routed to no queue: nobody is there to answer it."""


class RequestTimeout(BusError):
    """A request got no reply within its timeout."""


class Drop(Exception):
    """Raised by a handler for an expected outcome that needs no retry: the message is acked."""


class PoisonMessage(Exception):
    """Raised by a handler for a message that can never succeed: it is dead-lettered at once."""


@dataclass(frozen=True, slots=True)
class Binding:
    exchange: str
    pattern: str


class QueueKind(enum.Enum):
    SHARED = "shared"
    AGENT = "agent"
    BROADCAST = "broadcast"
    TRANSIENT = "transient"


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A durable queue shared by every consumer that subscribes to it (competing consumers)."""

    name: str
    bindings: tuple[Binding, ...]
    prefetch: int = 32
    delivery_limit: int = 5
    kind: QueueKind = QueueKind.SHARED


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the bus gave up on, with why."""

    body: bytes
    reason: str
    queue: str
    exchange: str
    routing_key: str
    envelope: Envelope | None = field(default=None, compare=False)


class Subscription(Protocol):
    async def cancel(self) -> None:
        """Stop taking deliveries, then wait for the handlers already running to finish."""


class MessageBus(Protocol):
    async def start(self) -> None:
        """Connect and declare the exchanges of the topology."""

    async def close(self) -> None:
        """Cancel every subscription (finishing in-flight handlers), then disconnect."""

    async def publish(
        self, exchange: str, envelope: Envelope, routing_key: str | None = None, *, transient: bool = False
    ) -> None:
        """Publish persistently; return once the broker confirmed. Routing key defaults to the type."""

    async def subscribe(self, queue: QueueSpec, handler: Handler) -> Subscription:
        """Declare ``queue`` with its bindings and consume it with ``handler``."""

    async def request(
        self,
        exchange: str,
        envelope: Envelope,
        *,
        routing_key: str | None = None,
        timeout: float = 10.0,
        reply_exchange: str | None = None,
    ) -> Envelope:
        """Publish a command and wait for the reply of the handler that consumes it.

        A request that no consumer has taken within ``timeout`` expires unhandled (and is
        dead-lettered as expired), so a caller that gave up never has its command run behind its back.

        ``reply_exchange``: the reply comes back over this (topic) exchange instead of AMQP's direct
        reply-to, published under ``<reply's resource id>.reply.<this requester>``. An answerer whose
        broker user may write only keys that start with its own id on that exchange (an agent, on
        ``agent-events``) can answer so, where direct reply-to would need write on the default
        exchange, and with it every queue by name. Anyone who may write there can also send a reply:
        the requester checks who signed it.
        """

    async def forward(self, exchange: str, envelope: Envelope, routing_key: str) -> None:
        """Pass the request the running handler took on to another queue, untouched, with its reply
        address: the consumer there answers the original requester directly, and the handler that
        forwarded it returns None. The forwarded request expires as a request does (with the
        original's time to live). Called from a handler of a message that is not a request, it is
        a plain :meth:`publish`. Either way it raises :class:`NoRoute` when no queue takes it.
        """

    async def dead_letters(self, max_count: int = 100) -> list[DeadLetter]:
        """Take (and remove) up to ``max_count`` messages from the dead-letter queue."""
