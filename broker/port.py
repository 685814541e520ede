"""The bus port: what services may ask of a message bus, whatever carries it.

Guarantees every adapter gives (the contract suite in ``tests/contract/test_bus.py`` checks them):

* ``publish`` returns only once the bus holds the message (a publisher confirm on AMQP), so a
  confirmed message survives a broker connection loss. A ``transient=True`` publish does not: it
  is sent non-persistent, without waiting for a confirm, and may be lost (heartbeats, live
  queries).
* A subscribed handler runs at least once per confirmed message routed to its queue, if the queue
  is ``SHARED`` or ``AGENT`` (a ``BROADCAST`` or ``TRANSIENT`` queue may lose messages: see
  :class:`QueueKind`). The message is acknowledged only after the handler returns, so a handler
  must store its state change first and must be safe to run twice.
* ``close`` returns within a bounded time whatever the broker does (each adapter's
  ``close_timeout``, 5 s by default): a handler still running then is cancelled, and its message,
  not acked, is redelivered (on RabbitMQ; the in-process bus loses it with the process).
* The handler's outcome decides the acknowledgement:

  - returns normally: acked; if the message was a request, what it returned is the reply (a
    payload, sent in an envelope caused by the request, or a whole :class:`Envelope`, sent as it
    is: an agent signs its answers);
  - raises :class:`Drop`: an expected domain outcome, logged and acked;
  - raises :class:`PoisonMessage`: dead-lettered at once with the reason;
  - raises anything else: requeued and redelivered, and dead-lettered with the last error as the
    reason once it has been delivered ``delivery_limit`` times; on a ``BROADCAST`` queue, logged
    and dropped instead.

  One policy decides this for every adapter: :mod:`broker.ack`. A reply is sent by the replier
  (its ``sender`` is the answering bus's).
* A body that does not decode into a known wire model (whatever is wrong with it) is dead-lettered
  at once with the reason, alone even when it came in a batch, and the consumer goes on.
* What each kind of queue keeps, and what it costs, is :class:`QueueKind`'s docstring.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
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


class QueueKind(Enum):
    """What a queue is for, and so what it costs the broker and what it keeps.

    * ``SHARED``: a manager's queue. Durable quorum queue, consumed by every copy of the manager as
      competing consumers; nothing confirmed is lost; the full ack policy with the delivery limit.
    * ``AGENT``: one agent's own queue. Durable classic queue (1 broker file handle, a quorum queue
      holds 3), otherwise as ``SHARED``: the adapter counts failed deliveries itself (a classic queue
      has no ``x-delivery-count``). A message survives a broker restart but not the loss of the
      broker node that holds it (the job manager's sweep re-sends a lost command). A consumer that
      kills its process on a message gets it again with no limit (a quorum queue would stop it).
    * ``BROADCAST``: a notification every process hears (nameko's BROADCAST). Each subscription
      gets a queue of its own (exclusive, auto-delete, not durable, named ``spec.name`` plus a
      unique suffix), so every subscriber gets its own copy of every message. What is published
      while a process does not listen (not yet subscribed, reconnecting) is lost for it: by design.
      A handler that fails is logged and the message dropped: no retry, no delivery limit.
    * ``TRANSIENT``: cheap traffic that is worthless once late (heartbeats, live queries). A classic
      queue with a fixed name, shared by competing consumers, neither durable nor auto-delete; its
      messages are lost with a broker restart. Failures are retried and dead-lettered as on
      ``SHARED``.

    On every kind a poison or undecodable message is dead-lettered at once with the reason.
    """

    SHARED = "shared"
    AGENT = "agent"
    BROADCAST = "broadcast"
    TRANSIENT = "transient"


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue, its bindings, and what kind of queue it is (see :class:`QueueKind`)."""

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
        """Cancel every subscription (finishing in-flight handlers), then disconnect.

        Returns within the adapter's close timeout whatever the broker does: a handler still running
        then is cancelled, and what it had not acked is redelivered to another consumer.
        """

    async def publish(
        self, exchange: str, envelope: Envelope, routing_key: str | None = None, *, transient: bool = False
    ) -> None:
        """Publish persistently; return once the broker confirmed. Routing key defaults to the type.

        ``transient``: fire and forget. Not persistent, no publisher confirm, so no :class:`NoRoute`
        either (a message no queue takes is silently dropped) and no retry across a reconnection:
        :class:`BusUnavailable` at once while the broker is unreachable, and a message may be lost
        even when this returns. For what is worthless late and replaced soon (a heartbeat).
        """

    async def subscribe(self, queue: QueueSpec, handler: Handler) -> Subscription:
        """Declare ``queue`` with its bindings and consume it with ``handler``."""

    async def request(
        self,
        exchange: str,
        envelope: Envelope,
        *,
        routing_key: str | None = None,
        timeout: float = 10.0,
        transient: bool = False,
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
        the requester checks who signed it. (The in-process bus has no exchanges to protect: it
        answers in place.)
        Raises :class:`NoRoute` when no queue takes it, :class:`RequestTimeout` when no reply came in
        time, and :class:`BusUnavailable` at once when the connection that would carry the reply is
        lost while it waits (the command may or may not have run). ``transient``: the request is not
        persisted (a live query); it is still confirmed, so :class:`NoRoute` still holds.
        """

    async def forward(self, exchange: str, envelope: Envelope, routing_key: str, *, transient: bool = False) -> None:
        """Pass the request the running handler took on to another queue, untouched, with its reply
        address: the consumer there answers the original requester directly, and the handler that
        forwarded it returns None. The forwarded request expires as a request does (with the
        original's time to live). Called from a handler of a message that is not a request, it is
        a plain :meth:`publish`. Either way it raises :class:`NoRoute` when no queue takes it.
        ``transient``: not persisted, as for :meth:`request` (still confirmed).
        """

    def ready(self) -> str | None:
        """Why the bus cannot carry messages now (not started, closed, the broker unreachable), or None."""

    async def dead_letters(self, max_count: int = 100) -> list[DeadLetter]:
        """Take (and remove) up to ``max_count`` messages from the dead-letter queue."""
