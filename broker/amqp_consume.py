"""The consuming side of the AMQP adapter: one subscription per queue, on a channel of its own.

Each delivery runs in a task of its own (aiormq cancels its delivery tasks when a channel dies, and
a handler must not be cut in half by a connection loss), at most ``prefetch`` handlers at a time
whether envelopes came alone or in batches (:mod:`broker.amqp_batch`). The handler's outcome
decides the ack exactly as :mod:`broker.port` says; see :class:`broker.amqp.AmqpBus` for the
dead-lettering and the republishing it asks of the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue
from aiormq.exceptions import ChannelClosed

from broker import codec
from broker.amqp_batch import BATCH_CONTENT_TYPE, unpack
from broker.amqp_wire import ATTEMPTS, HANDLING, LOST, is_lost
from broker.envelope import Envelope
from broker.port import BusUnavailable, Drop, Handler, PoisonMessage, QueueSpec
from schemas.base import WireModel

if TYPE_CHECKING:
    from broker.amqp import AmqpBus

log = logging.getLogger("broker.amqp")

# Seconds a stopping subscription waits for the broker to confirm its basic.cancel.
CANCEL_TIMEOUT = 5.0


class AmqpSubscription:
    """One consumer of a quorum queue, on a channel of its own; a task per delivery, up to prefetch."""

    def __init__(
        self,
        bus: AmqpBus,
        spec: QueueSpec,
        handler: Handler,
        channel: AbstractRobustChannel,
        queue: AbstractRobustQueue,
    ) -> None:
        self._bus = bus
        self._spec = spec
        self._handler = handler
        self._channel = channel
        self._queue = queue
        self._consumer_tag: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        # Handlers running at once, whether their envelopes came alone or in batches.
        self._slots = asyncio.Semaphore(max(1, spec.prefetch))

    async def start(self) -> None:
        self._consumer_tag = await self._queue.consume(self._on_message)

    async def cancel(self) -> None:
        self._stopping = True
        tag, self._consumer_tag = self._consumer_tag, None
        if tag is not None:
            try:
                # The robust queue forgets the consumer first, so it is not restored even if the
                # broker is unreachable now and the cancel itself cannot get through.
                await asyncio.wait_for(self._queue.cancel(tag), CANCEL_TIMEOUT)
            except Exception as error:
                if not isinstance(error, TimeoutError) and not is_lost(error):
                    raise
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        # Anything delivered after the cancel and never started goes back to the queue.
        with contextlib.suppress(*LOST, ChannelClosed):
            await self._channel.close()
        self._bus._subscriptions.discard(self)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            return
        # A task of our own: aiormq cancels its delivery tasks when the channel dies, and a
        # handler must not be cut in half by a connection loss.
        task = asyncio.create_task(self._process(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            await self._consume(message)
        except Exception:
            # A bug or a broker refusal in the adapter itself, not in the handler: requeue, and let
            # the queue's own delivery limit end a loop.
            log.exception("could not process %s %s", message.type, message.message_id)
            await self._settle(message.nack(requeue=True), message)

    async def _consume(self, message: AbstractIncomingMessage) -> None:
        if message.content_type == BATCH_CONTENT_TYPE:
            await self._consume_batch(message)
            return
        HANDLING.set(message)
        outcome = await self._judge(message.body, _delivery_count(message) + _attempts(message))
        if outcome.dead is not None:
            await self._give_up(message, outcome.dead)
            return
        if outcome.retry:
            await self._settle(message.nack(requeue=True), message)
            return
        if outcome.reply is not None and message.reply_to and outcome.envelope is not None:
            try:
                await self._bus._reply(message, outcome.envelope, outcome.reply)
            except BusUnavailable as error:
                # Requeued, not acked: the request comes back and is answered again.
                log.warning("could not reply to %s %s: %s", message.type, message.message_id, error)
                await self._settle(message.nack(requeue=True), message)
                return
        await self._settle(message.ack(), message)

    async def _consume_batch(self, message: AbstractIncomingMessage) -> None:
        try:
            bodies = unpack(message.body)
        except ValueError as error:
            await self._give_up(message, f"undecodable batch: {error}")
            return
        attempts = _delivery_count(message) + _attempts(message)
        settled = await asyncio.gather(
            *(self._settle_item(message, body, attempts) for body in bodies), return_exceptions=True
        )
        failures = [result for result in settled if result is not True]
        if failures:
            for failure in failures:
                if isinstance(failure, BaseException):
                    log.error("could not settle an envelope of a batch", exc_info=failure)
            log.warning("%d of %d envelopes of a batch not settled: the batch is requeued", len(failures), len(bodies))
            await self._settle(message.nack(requeue=True), message)
            return
        await self._settle(message.ack(), message)

    async def _settle_item(self, message: AbstractIncomingMessage, body: bytes, attempts: int) -> bool:
        """Run the handler on one envelope of a batch and settle it alone: True once it needs nothing
        more from the batch's message than its ack."""
        outcome = await self._judge(body, attempts)
        try:
            if outcome.dead is not None:
                await self._bus._dead_letter(
                    message, self._spec.name, outcome.dead, body=body, envelope=outcome.envelope
                )
            elif outcome.retry and outcome.envelope is not None:
                await self._bus._retry_alone(message, self._spec.name, body, outcome.envelope, attempts + 1)
        except BusUnavailable as error:
            log.warning("could not settle an envelope of batch %s: %s", message.delivery_tag, error)
            return False
        return True

    async def _judge(self, body: bytes, attempts: int) -> _Outcome:
        """Decode and handle one envelope that failed ``attempts`` times before; say what to do with it."""
        try:
            envelope = codec.decode(body, self._bus.types)
        except codec.UndecodableMessage as error:
            return _Outcome(None, dead=f"undecodable: {error}")
        try:
            async with self._slots:
                reply = await self._handler(envelope)
        except Drop as outcome:
            log.info("dropped %s %s: %s", envelope.type, envelope.message_id, outcome)
        except PoisonMessage as error:
            return _Outcome(envelope, dead=f"poison: {error}")
        except Exception as error:
            attempts += 1
            if attempts >= self._spec.delivery_limit:
                log.error(
                    "giving up on %s %s after %d deliveries: %r", envelope.type, envelope.message_id, attempts, error
                )
                return _Outcome(envelope, dead=f"delivery limit {attempts} reached: {error!r}")
            log.warning("handler failed on %s %s (attempt %d): %r", envelope.type, envelope.message_id, attempts, error)
            return _Outcome(envelope, retry=True)
        else:
            return _Outcome(envelope, reply=reply)
        return _Outcome(envelope)

    async def _give_up(self, message: AbstractIncomingMessage, reason: str) -> None:
        try:
            await self._bus._dead_letter(message, self._spec.name, reason)
        except BusUnavailable as error:
            log.warning("could not dead-letter %s: %s; requeued", message.message_id, error)
            await self._settle(message.nack(requeue=True), message)
            return
        await self._settle(message.ack(), message)

    @staticmethod
    async def _settle(outcome: Any, message: AbstractIncomingMessage) -> None:
        """Ack or nack; if the channel died meanwhile, the broker redelivers the message anyway."""
        try:
            await outcome
        except Exception as error:
            if not is_lost(error):
                raise
            log.warning("could not settle %s (%r); the broker will redeliver it", message.message_id, error)


class _Outcome(NamedTuple):
    """What a handler's run on one envelope asks of the bus: nothing more than an ack (the default),
    a retry, or a dead letter with the reason."""

    envelope: Envelope | None
    reply: WireModel | Envelope | None = None
    retry: bool = False
    dead: str | None = None


def _attempts(message: AbstractIncomingMessage) -> int:
    """Failed deliveries of an envelope before it was retried alone out of its batch."""
    count = (message.headers or {}).get(ATTEMPTS)
    return count if isinstance(count, int) else 0


def _delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times a quorum queue delivered this message before (``x-delivery-count``)."""
    count = (message.headers or {}).get("x-delivery-count")
    return count if isinstance(count, int) else 0
