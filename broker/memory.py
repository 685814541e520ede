"""The in-process bus: asyncio queues with RabbitMQ's routing, for ``skybus up`` and fast tests.

It encodes every message with the same codec as the AMQP adapter and routes with the same topic
matching (:mod:`broker.routing`), so code that works here behaves the same on RabbitMQ. It cannot
reach other processes: a fleet on the in-process bus is this one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

from broker import ack, codec
from broker.ack import Action
from broker.envelope import Envelope
from broker.port import (
    BusUnavailable,
    DeadLetter,
    Handler,
    NoRoute,
    QueueKind,
    QueueSpec,
    RequestTimeout,
)
from broker.routing import broadcast_queue_name, topic_matches
from broker.topology import Topology
from schemas.base import MessageTypes, WireModel

log = logging.getLogger(__name__)

# The delivery whose handler runs in this task: what :meth:`MemoryBus.forward` passes on.
_handling: ContextVar[_Delivery | None] = ContextVar("skybus_memory_delivery", default=None)


@dataclass(slots=True)
class _Delivery:
    body: bytes
    exchange: str
    routing_key: str
    reply: asyncio.Future[bytes] | None = None
    attempts: int = 0
    expires_at: float | None = None  # loop time; a request nobody took in time is not run late


@dataclass
class _Queue:
    spec: QueueSpec
    auto_delete: bool = False  # deleted with its subscription (a broadcast queue)
    items: asyncio.Queue[_Delivery] = field(default_factory=asyncio.Queue)


class _MemorySubscription:
    def __init__(self, bus: MemoryBus, queue: _Queue, handler: Handler) -> None:
        self._bus = bus
        self._queue = queue
        self._handler = handler
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._running: set[asyncio.Task[None]] = set()
        self._workers = [asyncio.create_task(self._work()) for _ in range(max(1, queue.spec.prefetch))]

    async def cancel(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        # A cancelled worker stops waiting at once, but the handler it shielded is still running.
        await self._idle.wait()
        self._forget()

    async def abandon(self) -> None:
        """Cancel the handlers still running (a bus closing out of time): their deliveries are lost
        with the process, as everything on the in-process bus is."""
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        self._forget()

    def _forget(self) -> None:
        if self._queue.auto_delete:
            self._bus._queues.pop(self._queue.spec.name, None)
        if self in self._bus._subscriptions:
            self._bus._subscriptions.remove(self)

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.items.get()
            # Once taken, a delivery is finished even if cancel() arrives: a consumer that is
            # stopping completes its in-flight handlers before it lets go.
            self._in_flight += 1
            self._idle.clear()
            task = asyncio.create_task(self._finish(delivery))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            await asyncio.shield(task)

    async def _finish(self, delivery: _Delivery) -> None:
        try:
            await self._handle(delivery)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _handle(self, delivery: _Delivery) -> None:
        spec = self._queue.spec
        if delivery.expires_at is not None and asyncio.get_running_loop().time() > delivery.expires_at:
            self._bus._dead_letter(delivery, spec.name, "expired: no consumer took it in time")
            return
        delivery.attempts += 1
        envelope: Envelope | None = None
        reply: WireModel | Envelope | None = None
        error: Exception | None = None
        try:
            envelope = codec.decode(delivery.body, self._bus.types).delivered_under(delivery.routing_key)
            _handling.set(delivery)
            reply = await self._handler(envelope)
        except Exception as failure:  # the policy tells an expected outcome from a bug
            error = failure
        verdict = ack.decide(
            spec.kind,
            attempts=delivery.attempts,
            delivery_limit=spec.delivery_limit,
            error=error,
            reply=reply,
            is_request=delivery.reply is not None,
        )
        what = f"{envelope.type} {envelope.message_id}" if envelope is not None else "a message"
        ack.report(log, verdict, what, spec.name)
        if verdict.action is Action.DEAD_LETTER:
            self._bus._dead_letter(delivery, spec.name, verdict.reason)
        elif verdict.action is Action.REQUEUE:
            self._queue.items.put_nowait(delivery)
        elif verdict.action is Action.REPLY and envelope is not None and verdict.reply is not None:
            if delivery.reply is not None and not delivery.reply.done():
                answer = ack.reply_envelope(envelope, verdict.reply, replier=self._bus.sender)
                delivery.reply.set_result(codec.encode(answer))


class MemoryBus:
    """Implements :class:`broker.port.MessageBus` inside one event loop. Nothing here outlives the
    process, so a transient message is carried as any other."""

    def __init__(
        self, types: MessageTypes, topology: Topology | None = None, *, sender: str = "", close_timeout: float = 5.0
    ) -> None:
        self.types = types
        self.close_timeout = close_timeout
        self.sender = sender  # the replier named in replies: one bus serves every service of the process
        self.topology = topology or Topology()
        self._queues: dict[str, _Queue] = {}
        self._subscriptions: list[_MemorySubscription] = []
        self._dead: list[DeadLetter] = []
        self._open = False

    async def start(self) -> None:
        self._open = True

    async def close(self) -> None:
        """Let running handlers finish, for ``close_timeout`` at most; then cancel what still runs."""
        try:
            async with asyncio.timeout(self.close_timeout):
                for subscription in list(self._subscriptions):
                    await subscription.cancel()
        except TimeoutError:
            log.warning("closing: handlers still running after %.1fs were cancelled", self.close_timeout)
            for subscription in list(self._subscriptions):
                await subscription.abandon()
        self._open = False

    async def publish(
        self, exchange: str, envelope: Envelope, routing_key: str | None = None, *, transient: bool = False
    ) -> None:
        self._route(exchange, routing_key or envelope.type, codec.encode(envelope), reply=None)

    async def subscribe(self, queue: QueueSpec, handler: Handler) -> _MemorySubscription:
        declared = self._declare(queue)
        subscription = _MemorySubscription(self, declared, handler)
        self._subscriptions.append(subscription)
        return subscription

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
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        key = routing_key or envelope.type
        expires_at = asyncio.get_running_loop().time() + timeout
        if not self._route(exchange, key, codec.encode(envelope), reply=reply, expires_at=expires_at):
            raise NoRoute(f"no queue takes {key!r} on {exchange!r}")
        try:
            body = await asyncio.wait_for(reply, timeout)
        except TimeoutError:
            raise RequestTimeout(f"no reply to {key!r} within {timeout}s") from None
        return codec.decode(body, self.types)

    async def forward(self, exchange: str, envelope: Envelope, routing_key: str, *, transient: bool = False) -> None:
        taken = _handling.get()
        reply = taken.reply if taken is not None else None
        expires_at = taken.expires_at if taken is not None else None
        if not self._route(exchange, routing_key, codec.encode(envelope), reply=reply, expires_at=expires_at):
            raise NoRoute(f"no queue takes {routing_key!r} on {exchange!r}")

    def ready(self) -> str | None:
        return None if self._open else "the in-process bus is closed"

    async def dead_letters(self, max_count: int = 100) -> list[DeadLetter]:
        taken, self._dead = self._dead[:max_count], self._dead[max_count:]
        return taken

    def _declare(self, spec: QueueSpec) -> _Queue:
        if spec.kind is QueueKind.BROADCAST:
            # A queue of this subscription's own, deleted with it: every subscriber gets every message.
            name = broadcast_queue_name(spec.name)
            queue = self._queues[name] = _Queue(replace(spec, name=name), auto_delete=True)
            return queue
        queue = self._queues.get(spec.name)
        if queue is None:
            queue = self._queues[spec.name] = _Queue(spec)
        else:
            queue.spec = spec
        return queue

    def _route(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        reply: asyncio.Future[bytes] | None,
        expires_at: float | None = None,
    ) -> bool:
        if not self._open:
            raise BusUnavailable("the in-process bus is closed")
        routed = False
        for queue in self._queues.values():
            if any(b.exchange == exchange and topic_matches(b.pattern, routing_key) for b in queue.spec.bindings):
                queue.items.put_nowait(_Delivery(body, exchange, routing_key, reply, expires_at=expires_at))
                routed = True
        return routed

    def _dead_letter(self, delivery: _Delivery, queue: str, reason: str) -> None:
        envelope = None
        with contextlib.suppress(codec.UndecodableMessage):
            envelope = codec.decode(delivery.body, self.types)
        self._dead.append(DeadLetter(delivery.body, reason, queue, delivery.exchange, delivery.routing_key, envelope))
        if delivery.reply is not None and not delivery.reply.done():
            delivery.reply.set_exception(RequestTimeout(f"request was dead-lettered: {reason}"))
