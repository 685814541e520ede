"""The consuming side of the AMQP adapter: one subscription per queue, on a channel of its own.

Each delivery runs in a task of its own (aiormq cancels its delivery tasks when a channel dies, and
a handler must not be cut in half by a connection loss), at most ``prefetch`` handlers at a time
whether envelopes came alone or in batches (:mod:`broker.amqp_batch`). The handler's outcome
decides the ack as the one policy of :mod:`broker.ack` says; see :class:`broker.amqp.AmqpBus` for the
dead-lettering and the republishing it asks of the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue
from aiormq.exceptions import ChannelClosed

from broker import ack, codec
from broker.ack import Action
from broker.amqp_batch import BATCH_CONTENT_TYPE, unpack
from broker.amqp_wire import ATTEMPTS, HANDLING, LOST, delivered_key, is_lost
from broker.envelope import Envelope
from broker.port import BusUnavailable, Handler, QueueKind, QueueSpec
from schemas.base import WireModel

if TYPE_CHECKING:
    from broker.amqp import AmqpBus

log = logging.getLogger("broker.amqp")

# Seconds a stopping subscription waits for the broker to confirm its basic.cancel.
CANCEL_TIMEOUT = 5.0
# Seconds an ack or a nack may take before it is given up (the broker redelivers what it never got).
SETTLE_TIMEOUT = 5.0


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
        # A broadcast is a notification to this process alone, lost with it anyway: taken without acks,
        # which spares a frame per message both ways (every gateway hears every job change).
        no_ack = self._spec.kind is QueueKind.BROADCAST
        self._consumer_tag = await self._queue.consume(self._on_message, no_ack=no_ack)

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
        with contextlib.suppress(*LOST, ChannelClosed, TimeoutError):
            await asyncio.wait_for(self._channel.close(), CANCEL_TIMEOUT)
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
        attempts = self._attempts(message)
        envelope, verdict = await self._judge(
            message.body, attempts, delivered_key(message), message.user_id, is_request=bool(message.reply_to)
        )
        if verdict.action is Action.DEAD_LETTER:
            await self._give_up(message, verdict.reason)
            return
        if verdict.action is Action.REQUEUE:
            await self._requeue(message, envelope, attempts)
            return
        if verdict.action is Action.REPLY and envelope is not None and verdict.reply is not None:
            try:
                await self._bus._reply(message, envelope, verdict.reply)
            except BusUnavailable as error:
                # Requeued, not acked: the request comes back and is answered again.
                log.warning("could not reply to %s %s: %s", message.type, message.message_id, error)
                await self._settle(message.nack(requeue=True), message)
                return
        await self._settle(message.ack(), message)

    async def _requeue(self, message: AbstractIncomingMessage, envelope: Envelope | None, attempts: int) -> None:
        """Deliver ``message`` again later. A quorum queue counts the nack itself; on a classic queue
        the message goes back republished, confirmed, with the attempts so far in a header."""
        if self._spec.kind is QueueKind.SHARED or envelope is None:
            await self._settle(message.nack(requeue=True), message)
            return
        try:
            await self._bus._retry_alone(message, self._spec.name, message.body, envelope, attempts, whole=True)
        except BusUnavailable as error:
            log.warning("could not requeue %s %s: %s", message.type, message.message_id, error)
            await self._settle(message.nack(requeue=True), message)
            return
        await self._settle(message.ack(), message)

    async def _consume_batch(self, message: AbstractIncomingMessage) -> None:
        try:
            bodies = unpack(message.body)
        except ValueError as error:
            log.error("undecodable batch %s from %s: %s", message.message_id, self._spec.name, error)
            await self._give_up(message, f"undecodable batch: {error}")
            return
        attempts = self._attempts(message)
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
        envelope, verdict = await self._judge(body, attempts, delivered_key(message), message.user_id, is_request=False)
        try:
            if verdict.action is Action.DEAD_LETTER:
                await self._bus._dead_letter(message, self._spec.name, verdict.reason, body=body, envelope=envelope)
            elif verdict.action is Action.REQUEUE and envelope is not None:
                await self._bus._retry_alone(message, self._spec.name, body, envelope, attempts)
        except BusUnavailable as error:
            log.warning("could not settle an envelope of batch %s: %s", message.delivery_tag, error)
            return False
        return True

    async def _judge(
        self, body: bytes, attempts: int, routing_key: str, publisher: str | None, *, is_request: bool
    ) -> tuple[Envelope | None, ack.Verdict]:
        """Decode and handle one envelope on its ``attempts``-th delivery under ``routing_key`` (which
        the handler sees as ``envelope.routing_key``); the policy says what next."""
        envelope: Envelope | None = None
        reply: WireModel | Envelope | None = None
        error: Exception | None = None
        try:
            envelope = codec.decode(body, self._bus.types).delivered_under(routing_key, publisher=publisher)
            async with self._slots:
                reply = await self._handler(envelope)
        except Exception as failure:  # the policy tells an expected outcome from a bug
            error = failure
        spec = self._spec
        verdict = ack.decide(
            spec.kind,
            attempts=attempts,
            delivery_limit=spec.delivery_limit,
            error=error,
            reply=reply,
            is_request=is_request,
        )
        what = f"{envelope.type} {envelope.message_id}" if envelope is not None else "a message"
        ack.report(log, verdict, what, spec.name)
        return envelope, verdict

    def _attempts(self, message: AbstractIncomingMessage) -> int:
        """This delivery's number: failed deliveries before it (counted by a quorum queue, or by us in
        a header when we republished it; a classic queue only says it redelivered), plus one."""
        before = _attempts(message)
        if self._spec.kind is QueueKind.SHARED:
            before += _delivery_count(message)
        elif message.redelivered:
            before += 1
        return before + 1

    async def _give_up(self, message: AbstractIncomingMessage, reason: str) -> None:
        try:
            await self._bus._dead_letter(message, self._spec.name, reason)
        except BusUnavailable as error:
            log.warning("could not dead-letter %s: %s; requeued", message.message_id, error)
            await self._settle(message.nack(requeue=True), message)
            return
        await self._settle(message.ack(), message)

    @staticmethod
    async def _settle(outcome: Awaitable[Any], message: AbstractIncomingMessage) -> None:
        """Ack or nack, within :data:`SETTLE_TIMEOUT`; if the channel died meanwhile (or hangs), the
        broker redelivers the message anyway. A message taken without an ack needs none."""
        if message.processed:  # no_ack: settled when it was delivered
            if inspect.iscoroutine(outcome):
                outcome.close()
            return
        try:
            await asyncio.wait_for(outcome, SETTLE_TIMEOUT)
        except Exception as error:
            if not isinstance(error, TimeoutError) and not is_lost(error):
                raise
            log.warning("could not settle %s (%r); the broker will redeliver it", message.message_id, error)


def _attempts(message: AbstractIncomingMessage) -> int:
    """Failed deliveries of an envelope before it was retried alone out of its batch."""
    count = (message.headers or {}).get(ATTEMPTS)
    return count if isinstance(count, int) else 0


def _delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times a quorum queue delivered this message before (``x-delivery-count``)."""
    count = (message.headers or {}).get("x-delivery-count")
    return count if isinstance(count, int) else 0
