"""The AMQP adapter: aio-pika against RabbitMQ.

What it puts on the broker (names from :class:`broker.topology.Topology`):

* every exchange of the topology is a durable topic exchange; ``dead`` is bound with ``#`` to the
  one durable quorum dead-letter queue;
* a subscribed queue has ``dead`` as its ``x-dead-letter-exchange`` and is, by its spec's kind
  (:class:`broker.port.QueueKind`): ``SHARED`` a durable quorum queue; ``AGENT`` a durable classic
  queue; ``TRANSIENT`` a non-durable classic queue; ``BROADCAST`` an exclusive, auto-delete classic
  queue per subscription, named ``<spec name>.<unique suffix>``.

A quorum queue counts deliveries itself (``x-delivery-count``); a failed message of a classic queue
is republished, confirmed, to the back of its queue with the attempts so far in
``x-skybus-attempts`` (and its reply address and time to live), then acked.

The adapter dead-letters by itself, so the reason travels with the message: it republishes the
original body, confirmed, to ``dead`` with ``x-skybus-*`` headers, then acks the original. The
queue's ``x-delivery-limit`` sits a little above the spec's and is only a safety net for a handler
that kills its process before the adapter can count; what the broker dead-letters that way carries
``x-death`` instead, and :meth:`AmqpBus.dead_letters` reads the reason from there.

Two robust connections, one that publishes (a confirm channel; requests and their direct reply-to
consumer on a second one) and one that consumes (a channel per subscription, prefetch from the
spec), so flow control on a busy publisher never holds back acks. Both reconnect by themselves and
restore their exchanges, queues, bindings and consumers. A publish caught by a connection loss is
retried on the new connection until ``publish_timeout``: a lost confirm may mean the broker got the
message, so a retry can duplicate it, as at-least-once allows. A handler runs in a task of its own,
so a connection loss does not cut it in half: its ack fails and the broker redelivers the message.

A request may ask for its reply over a topic exchange instead of direct reply-to
(``reply_exchange``): the requester consumes an exclusive, auto-delete queue ``<ns>.replies.<id>``
bound with ``#.reply.<id>``, and its ``reply_to`` reads ``<exchange>|reply.<id>``; the answerer
publishes the reply there under ``<reply's resource id>.reply.<id>``.

A **confined** bus (``confined=True``: an agent, whose broker user may touch only its own queues
and keys) declares no exchange (the services did) and no dead-letter queue, retries a failed
envelope through the exchange and routing key it came by (its queues are the only ones bound to
its keys) rather than through the default exchange, and never answers over direct reply-to, which
would need write on the default exchange.

Publishes pending at the same time for one exchange and routing key travel as one AMQP message,
and each envelope of it gets the outcome it would get alone: see :mod:`broker.amqp_batch`. The
consuming side is :mod:`broker.amqp_consume`; what both halves share is :mod:`broker.amqp_wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection, AbstractRobustQueue
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import (
    ChannelClosed,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
)
from yarl import URL

from broker import ack, codec
from broker.amqp_batch import BATCH_CONTENT_TYPE, BatchPublisher, unpack
from broker.amqp_consume import AmqpSubscription
from broker.amqp_logs import Outage, quiet_reconnect_loggers
from broker.amqp_wire import ATTEMPTS, CONTENT_TYPE, EXCHANGE, HANDLING, LOST, QUEUE, REASON, ROUTING_KEY, is_lost
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
from broker.routing import broadcast_queue_name
from broker.topology import Topology
from schemas.base import MessageTypes, WireModel

log = logging.getLogger(__name__)

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
# Separates the exchange from the routing key's tail in a reply address (no exchange name has one).
REPLY_ADDRESS_SEPARATOR = "|"

# The broker's own delivery limit lets a message crash its consumer this many more times than the
# adapter lets a handler fail before it is dead-lettered without a reason of ours.
CRASH_ALLOWANCE = 2
# Seconds close() may take, whatever the broker does.
CLOSE_TIMEOUT = 5.0
# Seconds between reconnection attempts, unless the URL says otherwise (``?reconnect_interval=``).
RECONNECT_INTERVAL = 1.0
_PERSISTENT = aio_pika.DeliveryMode.PERSISTENT.value
_TRANSIENT = aio_pika.DeliveryMode.NOT_PERSISTENT.value
_MAX_PAUSE = 1.0


class AmqpBus:
    """Implements :class:`broker.port.MessageBus` over RabbitMQ (quorum queues, publisher confirms)."""

    def __init__(
        self,
        url: str,
        types: MessageTypes,
        topology: Topology | None = None,
        *,
        publish_timeout: float = 15.0,
        sender: str = "",
        confined: bool = False,
        close_timeout: float = CLOSE_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context`` verifies an ``amqps://`` broker; without it aiormq builds one from the
        system's store (or the URL's ``?cafile=``)."""
        self.url = url
        self.ssl_context = ssl_context
        self.confined = confined
        self.close_timeout = close_timeout
        self._instance = uuid.uuid4().hex
        self._reply_addresses: dict[str, str] = {}
        self.types = types
        self.topology = topology or Topology()
        self.publish_timeout = publish_timeout
        self.sender = sender
        # A confined bus (an agent under its own broker user) names that user on what it publishes; the
        # broker refuses a message whose user_id is not the connection's user, so consumers may trust it.
        self.user_id = URL(url).user if confined else None
        self._publisher: AbstractRobustConnection | None = None
        self._consumer: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._dead_queue: AbstractRobustQueue | None = None
        self._rpc_channel: AbstractRobustChannel | None = None
        self._transient_channel: AbstractRobustChannel | None = None  # no confirms: fire and forget
        self._rpc_lock = asyncio.Lock()
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        # Requests the broker confirmed: their reply can come only on the reply channel they went out on.
        self._sent: set[str] = set()
        self._exchanges: set[str] = set()
        self._subscriptions: set[AmqpSubscription] = set()
        self._closed = False
        self._outage = Outage(log, sender or "skybus")
        quiet_reconnect_loggers()
        self.batches = BatchPublisher(
            self._send_batch,
            lambda envelope: self._properties(envelope, correlation_id=envelope.correlation_id),
            sender=sender,
            timeout=publish_timeout,
        )

    # Lifetime.

    async def start(self) -> None:
        self._closed = False
        try:
            self._publisher = await self._connect("publish")
            self._consumer = await self._connect("consume")
        except (TimeoutError, *LOST) as error:
            await self._disconnect()
            raise BusUnavailable(f"cannot reach RabbitMQ: {error!r}") from error
        self._channel = await self._publisher.channel(publisher_confirms=True)
        self._transient_channel = await self._publisher.channel(publisher_confirms=False)
        if self.confined:
            return
        for exchange in self.topology.exchanges:
            await self._declare_exchange(exchange)
        self._dead_queue = await self._channel.declare_queue(
            self.topology.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await self._dead_queue.bind(self.topology.dead, "#")

    async def close(self) -> None:
        """Drain, then disconnect, within ``close_timeout`` whatever the broker does (a dead or stalled
        connection must not keep a stopping process alive): what is still running when the time is
        up, handlers included, is cancelled, and what they had not acked is redelivered elsewhere."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_timeout
        # Handlers still running may publish (replies, dead letters, follow-up events): the
        # connections stay up until every subscription has drained, or until a quarter of the time
        # is left for disconnecting.
        try:
            async with asyncio.timeout_at(deadline - self.close_timeout / 4):
                await asyncio.gather(*(subscription.cancel() for subscription in list(self._subscriptions)))
                await self.batches.drain()
        except TimeoutError:
            log.warning(
                "closing: handlers or publishes still running after %.1fs were cancelled; "
                "their messages will be redelivered",
                self.close_timeout * 3 / 4,
            )
        self._closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BusUnavailable("the bus is closing"))
        await self._disconnect(max(0.0, deadline - loop.time()))

    async def _connect(self, purpose: str) -> AbstractRobustConnection:
        options: dict[str, Any] = {}
        if "reconnect_interval" not in URL(self.url).query:
            options["reconnect_interval"] = RECONNECT_INTERVAL
        name = f"{self.sender or 'skybus'} {purpose}"
        connection = await aio_pika.connect_robust(
            self.url,
            timeout=self.publish_timeout,
            client_properties={"connection_name": name},
            ssl_context=self.ssl_context,
            **options,
        )
        connection.close_callbacks.add(lambda _, error: self._lost(purpose, error))
        connection.reconnect_callbacks.add(lambda _: self._outage.restored(purpose))
        return connection

    def _lost(self, purpose: str, error: BaseException | None) -> None:
        if not self._closed:
            self._outage.lost(purpose, error)

    async def _disconnect(self, timeout: float | None = None) -> None:
        connections = [c for c in (self._consumer, self._publisher) if c is not None]
        self._publisher = self._consumer = None
        self._channel = self._rpc_channel = self._transient_channel = None
        self._dead_queue = None
        self._exchanges.clear()
        await asyncio.gather(*(_close(connection, timeout) for connection in connections))

    async def _declare_exchange(self, name: str) -> None:
        if name not in self._exchanges and not self.confined:
            await self._open_channel().declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
            self._exchanges.add(name)

    def _open_channel(self) -> AbstractRobustChannel:
        if self._channel is None or self._closed:
            raise BusUnavailable("the bus is not started or already closed")
        return self._channel

    # Publishing.

    async def publish(
        self, exchange: str, envelope: Envelope, routing_key: str | None = None, *, transient: bool = False
    ) -> None:
        self._open_channel()  # BusUnavailable at once when closed
        key = routing_key or envelope.type
        if transient:
            properties = self._properties(envelope, correlation_id=envelope.correlation_id, persistent=False)
            await self._fire(exchange, key, codec.encode(envelope), properties)
            return
        await self.batches.publish(exchange, key, envelope, codec.encode(envelope))

    async def _fire(
        self, exchange: str, routing_key: str, body: bytes, properties: aiormq.spec.Basic.Properties
    ) -> None:
        """Publish on the channel without confirms: no waiting for the broker, no retry, no NoRoute.
        BusUnavailable at once while the connection is down: a transient message is worthless late."""
        channel = self._transient_channel
        if channel is None or channel.is_closed or self._closed:
            raise BusUnavailable(f"not connected: transient {routing_key!r} not sent")
        try:
            async with asyncio.timeout(self.publish_timeout):
                underlay = await channel.get_underlay_channel()
                await underlay.basic_publish(body, exchange=exchange, routing_key=routing_key, properties=properties)
        except Exception as error:
            if isinstance(error, TimeoutError) or is_lost(error):
                raise BusUnavailable(f"transient {routing_key!r} not sent: {error!r}") from error
            raise

    async def _send_batch(
        self, exchange: str, routing_key: str, body: bytes, properties: aiormq.spec.Basic.Properties, deadline: float
    ) -> None:
        await self._send(self._open_channel(), exchange, routing_key, body, properties, deadline=deadline)

    async def request(
        self,
        exchange: str,
        envelope: Envelope,
        *,
        routing_key: str | None = None,
        timeout: float = 10.0,
        reply_exchange: str | None = None,
        transient: bool = False,
    ) -> Envelope:
        channel = await self._rpc()
        key = routing_key or envelope.type
        reply_to = DIRECT_REPLY_TO if reply_exchange is None else await self._reply_address(channel, reply_exchange)
        # The AMQP correlation id of a request is its message id: the reply carries it back.
        properties = self._properties(
            envelope, correlation_id=envelope.message_id, reply_to=reply_to, persistent=not transient
        )
        # A request nobody took within its timeout expires in the queue rather than running late,
        # after its caller has given up (RabbitMQ dead-letters it with reason "expired").
        properties.expiration = _milliseconds(timeout)
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[envelope.message_id] = reply
        try:
            # Direct reply-to refuses a request from a channel that is not consuming replies yet.
            await self._send(channel, exchange, key, codec.encode(envelope), properties, mandatory=True, restored=True)
            self._sent.add(envelope.message_id)
            try:
                body = await asyncio.wait_for(reply, timeout)
            except TimeoutError:
                raise RequestTimeout(f"no reply to {key!r} within {timeout}s") from None
        finally:
            self._pending.pop(envelope.message_id, None)
            self._sent.discard(envelope.message_id)
        return codec.decode(body, self.types)

    async def forward(self, exchange: str, envelope: Envelope, routing_key: str, *, transient: bool = False) -> None:
        request = HANDLING.get()
        persistent = not transient
        if request is None or not request.reply_to:
            properties = self._properties(envelope, correlation_id=envelope.correlation_id, persistent=persistent)
        else:
            # The requester matches its reply by this correlation id, on the reply-to of its own channel.
            properties = self._properties(
                envelope, correlation_id=request.correlation_id, reply_to=request.reply_to, persistent=persistent
            )
            if request.expiration is not None:
                properties.expiration = _milliseconds(request.expiration)
        channel = self._open_channel()
        await self._send(channel, exchange, routing_key, codec.encode(envelope), properties, mandatory=True)

    async def _rpc(self) -> AbstractRobustChannel:
        """The channel that publishes requests and consumes their replies (direct reply-to needs both
        on one channel). Opened on the first request; the robust channel re-consumes after a reconnect."""
        if self._rpc_channel is not None:
            return self._rpc_channel
        async with self._rpc_lock:
            if self._rpc_channel is None:
                if self._publisher is None or self._closed:
                    raise BusUnavailable("the bus is not started or already closed")
                try:
                    async with asyncio.timeout(self.publish_timeout):
                        await self._publisher.ready()
                        channel = await self._publisher.channel(publisher_confirms=True)
                        replies = await channel.declare_queue(DIRECT_REPLY_TO, passive=True)
                        await replies.consume(self._on_reply, no_ack=True)
                        channel.close_callbacks.add(self._on_reply_channel_lost)
                except Exception as error:
                    if isinstance(error, TimeoutError) or is_lost(error):
                        raise BusUnavailable(f"cannot consume replies: {error!r}") from error
                    raise
                self._rpc_channel = channel
        return self._rpc_channel

    async def _reply_address(self, channel: AbstractRobustChannel, exchange: str) -> str:
        """The ``reply_to`` of a request answered over ``exchange``: this bus's exclusive reply queue,
        bound to it on the first such request (the robust channel restores both after a reconnect)."""
        address = self._reply_addresses.get(exchange)
        if address is not None:
            return address
        async with self._rpc_lock:
            if exchange not in self._reply_addresses:
                tail = f"reply.{self._instance}"
                try:
                    async with asyncio.timeout(self.publish_timeout):
                        queue = await channel.declare_queue(
                            self.topology.queue_name("replies", self._instance), exclusive=True, auto_delete=True
                        )
                        await queue.bind(exchange, f"#.{tail}")
                        if not self._reply_addresses:
                            await queue.consume(self._on_reply, no_ack=True)
                except Exception as error:
                    if isinstance(error, TimeoutError) or is_lost(error):
                        raise BusUnavailable(f"cannot consume replies on {exchange!r}: {error!r}") from error
                    raise
                self._reply_addresses[exchange] = f"{exchange}{REPLY_ADDRESS_SEPARATOR}{tail}"
        return self._reply_addresses[exchange]

    def _on_reply_channel_lost(self, _channel: object, error: BaseException | None) -> None:
        """A reply channel dies with its connection, and a reply to it is lost with it: every request
        already sent on it fails now rather than at its timeout. One still being sent goes out on the
        restored channel, with the new one's reply address."""
        lost = BusUnavailable(f"the connection was lost before the reply, the request may have run: {error!r}")
        for message_id in list(self._sent):
            reply = self._pending.get(message_id)
            if reply is not None and not reply.done():
                reply.set_exception(lost)
        self._sent.clear()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        reply = self._pending.get(message.correlation_id or "")
        if reply is not None and not reply.done():
            reply.set_result(message.body)

    def _properties(
        self, envelope: Envelope, *, correlation_id: str | None, reply_to: str | None = None, persistent: bool = True
    ) -> aiormq.spec.Basic.Properties:
        return aiormq.spec.Basic.Properties(
            content_type=CONTENT_TYPE,
            delivery_mode=_PERSISTENT if persistent else _TRANSIENT,
            message_id=envelope.message_id,
            message_type=envelope.type,
            correlation_id=correlation_id,
            reply_to=reply_to,
            app_id=self.sender or None,
            user_id=self.user_id,
        )

    async def _send(
        self,
        channel: AbstractRobustChannel,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        *,
        mandatory: bool = False,
        restored: bool = False,
        deadline: float | None = None,
    ) -> None:
        """Publish and wait for the broker's confirm, across reconnections, until ``publish_timeout``
        (or until ``deadline``, a loop time).

        ``restored``: wait until the channel has restored its queues and consumers, not just opened.
        """
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.publish_timeout
        pause = 0.05
        while True:
            try:
                if restored or channel.is_closed:
                    # Wait until reconnected and restored (for requests: consuming replies again).
                    async with asyncio.timeout_at(deadline):
                        await channel.ready()
                underlay = await channel.get_underlay_channel()
                result = await underlay.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=mandatory,
                    timeout=max(0.0, deadline - loop.time()),
                )
            except TimeoutError:
                raise BusUnavailable(
                    f"RabbitMQ did not confirm {routing_key!r} on {exchange!r} within {self.publish_timeout}s"
                ) from None
            except asyncio.CancelledError:
                # aiormq cancels a pending confirm when its channel dies; only a cancellation of
                # this task itself ends the publish.
                task = asyncio.current_task()
                if self._closed or (task is not None and task.cancelling()):
                    raise
                error: BaseException = ConnectionError("confirm cancelled with its channel")
            except ChannelNotFoundEntity as failure:
                # The channel died of a missing exchange: ours, or that of another publish on it.
                if f"'{exchange}'" in str(failure):
                    raise NoRoute(f"exchange {exchange!r} does not exist") from failure
                error = failure
            except Exception as failure:
                if not is_lost(failure):
                    raise
                error = failure
            else:
                if isinstance(result, DeliveredMessage):
                    raise NoRoute(f"no queue takes {routing_key!r} on {exchange!r}")
                return
            if self._closed:
                raise BusUnavailable("the bus is closed") from error
            # Said once for the whole outage by the connection's own callbacks, not once per publish.
            log.debug("publish of %r to %r failed (%r), retrying", routing_key, exchange, error)
            await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
            pause = min(pause * 2, _MAX_PAUSE)

    # Consuming.

    async def subscribe(self, queue: QueueSpec, handler: Handler) -> AmqpSubscription:
        if self._consumer is None or self._closed:
            raise BusUnavailable("the bus is not started or already closed")
        channel: AbstractRobustChannel | None = None
        try:
            async with asyncio.timeout(self.publish_timeout):
                for binding in queue.bindings:
                    await self._declare_exchange(binding.exchange)
                await self._consumer.ready()
                channel = await self._consumer.channel(publisher_confirms=False)
                await channel.set_qos(prefetch_count=queue.prefetch)
                try:
                    declared = await channel.declare_queue(**self._queue_declaration(queue))
                except ChannelPreconditionFailed as error:
                    if queue.kind not in (QueueKind.AGENT, QueueKind.TRANSIENT):
                        raise
                    channel, declared = await self._take_as_it_is(queue, channel, error)
                for binding in queue.bindings:
                    await declared.bind(binding.exchange, binding.pattern)
                # A broadcast queue's name is the spec's with a suffix: the subscription knows the real one.
                subscription = AmqpSubscription(self, replace(queue, name=declared.name), handler, channel, declared)
                await subscription.start()
        except Exception as error:
            if channel is not None:
                with contextlib.suppress(*LOST, ChannelClosed):
                    await channel.close()
            if isinstance(error, TimeoutError) or is_lost(error):
                raise BusUnavailable(f"cannot subscribe {queue.name!r}: {error!r}") from error
            raise
        self._subscriptions.add(subscription)
        return subscription

    async def _take_as_it_is(
        self, spec: QueueSpec, refused: AbstractRobustChannel, error: ChannelPreconditionFailed
    ) -> tuple[AbstractRobustChannel, AbstractRobustQueue]:
        """Consume a named queue that exists with other arguments than its kind's (an agent's queue
        declared as a quorum queue before agents had classic ones) as it is, so that an upgrade does not
        stop the agent; the operator deletes it to have it declared anew."""
        log.warning(
            "queue %r exists with other arguments than a %s queue (%s): consumed as it is; delete it "
            "while nobody consumes it to have it declared anew",
            spec.name,
            spec.kind.value,
            error,
        )
        with contextlib.suppress(*LOST, ChannelClosed):
            await refused.close()
        if self._consumer is None:
            raise BusUnavailable("the bus closed while subscribing")
        channel = await self._consumer.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=spec.prefetch)
        return channel, await channel.declare_queue(spec.name, passive=True)

    def _queue_declaration(self, spec: QueueSpec) -> dict[str, Any]:
        """The ``queue.declare`` of ``spec``'s kind (see :class:`broker.port.QueueKind`)."""
        arguments: dict[str, Any] = {"x-dead-letter-exchange": self.topology.dead}
        if spec.kind is QueueKind.SHARED:
            arguments |= {"x-queue-type": "quorum", "x-delivery-limit": spec.delivery_limit + CRASH_ALLOWANCE}
            return {"name": spec.name, "durable": True, "arguments": arguments}
        arguments["x-queue-type"] = "classic"
        if spec.kind is QueueKind.AGENT:
            return {"name": spec.name, "durable": True, "arguments": arguments}
        if spec.kind is QueueKind.TRANSIENT:
            return {"name": spec.name, "durable": False, "auto_delete": False, "arguments": arguments}
        # BROADCAST: the robust channel redeclares it under the same name after a reconnection.
        name = broadcast_queue_name(spec.name)
        return {"name": name, "durable": False, "exclusive": True, "auto_delete": True, "arguments": arguments}

    async def _reply(self, request: AbstractIncomingMessage, envelope: Envelope, payload: WireModel | Envelope) -> None:
        answer = ack.reply_envelope(envelope, payload, replier=self.sender)
        properties = self._properties(answer, correlation_id=request.correlation_id, persistent=False)
        reply_to = request.reply_to or ""
        exchange, separator, tail = reply_to.partition(REPLY_ADDRESS_SEPARATOR)
        if reply_to.startswith(DIRECT_REPLY_TO) or not separator:
            if self.confined:
                log.error(
                    "not answering %s %s over direct reply-to: this bus is confined", envelope.type, envelope.message_id
                )
                return
            exchange, routing_key = "", reply_to
        else:
            routing_key = f"{answer.resource_id}.{tail}" if answer.resource_id else tail
        # mandatory=False: RabbitMQ 3.10 returns a mandatory message to amq.rabbitmq.reply-to even
        # though it delivered it (and a reply nobody waits for any more is no error).
        await self._send(self._open_channel(), exchange, routing_key, codec.encode(answer), properties)

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        queue: str,
        reason: str,
        *,
        body: bytes | None = None,
        envelope: Envelope | None = None,
    ) -> None:
        """Republish ``message`` (or one envelope of its batch: ``body``, decoded as ``envelope`` if it
        could be) to the dead-letter exchange with why, confirmed; the caller acks the message."""
        exchange, routing_key = _origin(message)
        headers = {REASON: reason, QUEUE: queue, EXCHANGE: exchange, ROUTING_KEY: routing_key}
        properties = _republished(message, headers, whole=body is None, envelope=envelope)
        body = message.body if body is None else body
        await self._send(self._open_channel(), self.topology.dead, routing_key, body, properties)

    async def _retry_alone(
        self,
        message: AbstractIncomingMessage,
        queue: str,
        body: bytes,
        envelope: Envelope,
        attempts: int,
        *,
        whole: bool = False,
    ) -> None:
        """Republish one envelope of a batch (or the ``whole`` message, with its reply address), alone
        and confirmed, to the back of ``queue`` with the failed attempts so far; the caller acks."""
        exchange, routing_key = _origin(message)
        headers = {ATTEMPTS: attempts, EXCHANGE: exchange, ROUTING_KEY: routing_key}
        properties = _republished(message, headers, whole=whole, envelope=envelope)
        if self.confined:  # no write on the default exchange; its keys reach only its own queues
            await self._send(self._open_channel(), exchange, routing_key, body, properties)
            return
        await self._send(self._open_channel(), "", queue, body, properties)

    def ready(self) -> str | None:
        if self._closed or self._publisher is None or self._consumer is None:
            return "not connected to RabbitMQ (not started, or closed)"
        if self._publisher.is_closed or self._consumer.is_closed:
            return "the connection to RabbitMQ is down; reconnecting"
        return None

    async def dead_letters(self, max_count: int = 100) -> list[DeadLetter]:
        queue = self._dead_queue
        if queue is None or self._closed:
            raise BusUnavailable("the bus is not started or already closed")
        taken: list[DeadLetter] = []
        try:
            async with asyncio.timeout(self.publish_timeout):
                while len(taken) < max_count:
                    message = await queue.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    taken.extend(self._read_dead_letters(message))
                    await message.ack()
        except Exception as error:
            if not isinstance(error, TimeoutError) and not is_lost(error):
                raise
            # What was taken but not acked stays in the queue for the next call.
            if not taken:
                raise BusUnavailable(f"cannot read the dead-letter queue: {error!r}") from error
        return taken

    def _read_dead_letters(self, message: AbstractIncomingMessage) -> list[DeadLetter]:
        """The letter, or one per envelope of a batch that the broker dead-lettered whole."""
        bodies = [message.body]
        if message.content_type == BATCH_CONTENT_TYPE:
            with contextlib.suppress(ValueError):
                bodies = unpack(message.body)
        headers: Mapping[str, Any] = message.headers or {}
        if REASON in headers:
            reason = _text(headers[REASON])
            queue, exchange, routing_key = (_text(headers.get(name)) for name in (QUEUE, EXCHANGE, ROUTING_KEY))
        else:
            # Dead-lettered by the broker itself (the safety-net delivery limit): read ``x-death``.
            deaths = headers.get("x-death") or [{}]
            death: Mapping[str, Any] = deaths[0]
            keys = death.get("routing-keys") or [message.routing_key or ""]
            reason = f"dead-lettered by RabbitMQ: {_text(death.get('reason')) or 'unknown reason'}"
            queue, exchange, routing_key = _text(death.get("queue")), _text(death.get("exchange")), _text(keys[0])
            if ATTEMPTS in headers:  # an envelope retried alone out of its batch
                exchange, routing_key = _text(headers.get(EXCHANGE)), _text(headers.get(ROUTING_KEY))
        letters = []
        for body in bodies:
            envelope = None
            with contextlib.suppress(codec.UndecodableMessage):
                envelope = codec.decode(body, self.types)
            letters.append(DeadLetter(body, reason, queue, exchange, routing_key, envelope))
        return letters


async def _close(connection: AbstractRobustConnection, timeout: float | None) -> None:
    """Close ``connection``, politely within ``timeout``, else by stopping its reader and writer."""
    underlay = connection.transport.connection if connection.transport is not None else None
    try:
        async with asyncio.timeout(timeout):
            await connection.close()
    except TimeoutError:
        log.warning("RabbitMQ did not answer the close of %s in time: the connection is dropped", connection)
        _abort(underlay)
    except (*LOST, ChannelClosed):
        pass


def _abort(connection: aiormq.abc.AbstractConnection | None) -> None:
    """Stop the reader and writer tasks of an aiormq connection that cannot close politely (the
    network is stalled); the writer's own cleanup closes the socket. aiormq has no public way to
    do this, hence the private attributes, looked up defensively."""
    for task in (getattr(connection, "_reader_task", None), getattr(connection, "_writer_task", None)):
        if task is not None:
            task.cancel()


def _republished(
    message: AbstractIncomingMessage, headers: dict[str, Any], *, whole: bool = False, envelope: Envelope | None
) -> aiormq.spec.Basic.Properties:
    """The properties to republish ``message`` whole (with its reply address, time to live and
    delivery mode), or one envelope of its batch (``envelope`` if it decoded), with ``headers``."""
    if not whole:
        ids = (envelope.message_id, envelope.type, envelope.correlation_id) if envelope else (None, None, None)
        return aiormq.spec.Basic.Properties(
            content_type=CONTENT_TYPE,
            delivery_mode=_PERSISTENT,
            message_id=ids[0],
            message_type=ids[1],
            correlation_id=ids[2],
            app_id=message.app_id,
            headers=headers,
        )
    return aiormq.spec.Basic.Properties(
        content_type=message.content_type,
        delivery_mode=message.delivery_mode.value if message.delivery_mode else _PERSISTENT,
        message_id=message.message_id,
        message_type=message.type,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=_milliseconds(message.expiration),
        app_id=message.app_id,
        headers=headers,
    )


def _milliseconds(seconds: float | None) -> str | None:
    return None if seconds is None else str(max(1, int(seconds * 1000)))


def _origin(message: AbstractIncomingMessage) -> tuple[str, str]:
    """The exchange and routing key ``message`` was first published with, even if retried alone."""
    headers: Mapping[str, Any] = message.headers or {}
    if ATTEMPTS in headers:
        return _text(headers.get(EXCHANGE)), _text(headers.get(ROUTING_KEY))
    return message.exchange or "", message.routing_key or ""


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
