"""Publisher-side batching for the AMQP adapter: publishes pending together travel as one message.

Every AMQP message costs each process it crosses about the same, whatever its size (framing in
aiormq and pamqp, a publisher confirm, a delivery, an ack, the quorum queue's own bookkeeping), so
:meth:`broker.amqp.AmqpBus.publish` hands its envelopes to a :class:`BatchPublisher`, which gathers
the publishes pending at the same time for one exchange and routing key into one AMQP message:

* A publish never waits for company. A lane (one exchange and routing key) sends what it gathered
  on the next turn of the event loop, unless a partial batch of that lane is still waiting for its
  confirm: then what comes meanwhile waits for that confirm and leaves as the next batch. A lone
  publish thus goes out at once; a busy lane sends fewer, fuller messages. A batch that reaches
  :data:`MAX_ITEMS` envelopes or :data:`MAX_BYTES` leaves at once, whatever is in flight.
* Each ``publish`` returns once the message that carries its envelope is confirmed, or raises what
  that message's publish raised (``BusUnavailable``, ``NoRoute``): the port's guarantee is unchanged.
* One envelope goes out as a plain message, exactly as without batching. Several go out as one
  message of content type :data:`BATCH_CONTENT_TYPE` whose body is :func:`pack` of their encoded
  bodies. The consumer (:class:`broker.amqp.AmqpSubscription`) takes both forms.

Requests, replies and dead letters never travel in batches. A subscription runs the handler once
per envelope of a batch, at most ``prefetch`` handlers at a time whatever the batches, and each
envelope gets the outcome it would get alone: one that fails is republished alone to the back of
the queue (default exchange, confirmed), with the deliveries it failed so far in
``x-skybus-attempts`` so that the delivery limit counts them; one that is poison or undecodable is
dead-lettered alone with its reason; one dropped needs nothing more. The batch's message is acked
once every envelope is settled that way, or requeued whole if one could not be (the broker
unreachable): a redelivered batch runs its handlers again, which at-least-once allows, as it does
when a consumer dies halfway through one. A batch that the broker dead-letters by itself (its
safety-net delivery limit) reads back from :meth:`broker.amqp.AmqpBus.dead_letters` as one letter
per envelope, so that call may return a few more than ``max_count``.

The batch body is framing, not an encoding: each item is a 4-byte big-endian length followed by the
envelope's bytes exactly as :func:`broker.codec.encode` made them.
"""

from __future__ import annotations

import asyncio
import copy
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiormq

from broker.envelope import Envelope

Properties = aiormq.spec.Basic.Properties

BATCH_CONTENT_TYPE = "application/vnd.skybus.batch"
# Envelopes, and bytes of envelopes, after which a batch leaves without waiting for its lane.
MAX_ITEMS = 64
MAX_BYTES = 256 * 1024
# Partial batches of one lane awaiting their confirm before the next one waits for them.
MAX_IN_FLIGHT = 1

_LENGTH = struct.Struct(">I")
_PERSISTENT = 2  # AMQP delivery mode

# Publishes one message and waits for its confirm: (exchange, routing key, body, properties, deadline).
Send = Callable[[str, str, bytes, Properties, float], Awaitable[None]]


def pack(bodies: Sequence[bytes]) -> bytes:
    parts: list[bytes] = []
    for body in bodies:
        parts.append(_LENGTH.pack(len(body)))
        parts.append(body)
    return b"".join(parts)


def unpack(body: bytes) -> list[bytes]:
    """The envelope bodies of a batch; ValueError if ``body`` is not one."""
    items: list[bytes] = []
    offset, end = 0, len(body)
    while offset < end:
        if offset + _LENGTH.size > end:
            raise ValueError(f"batch truncated in the length of item {len(items)}")
        (size,) = _LENGTH.unpack_from(body, offset)
        offset += _LENGTH.size
        if offset + size > end:
            raise ValueError(f"batch truncated in item {len(items)}")
        items.append(body[offset : offset + size])
        offset += size
    if not items:
        raise ValueError("empty batch")
    return items


@dataclass(slots=True, eq=False)
class _Batch:
    deadline: float  # loop time: the first publish's deadline
    envelopes: list[Envelope] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    size: int = 0


@dataclass(slots=True, eq=False)
class _Lane:
    open: _Batch | None = None
    in_flight: int = 0  # batches sent and not yet confirmed
    scheduled: bool = False  # a flush is due on the next loop turn


class BatchPublisher:
    """Gathers publishes per (exchange, routing key) and sends each batch with ``send``: one envelope as
    a plain message with the ``properties`` of it, several as a batch."""

    def __init__(
        self,
        send: Send,
        properties: Callable[[Envelope], Properties],
        *,
        sender: str,
        timeout: float,
        max_items: int = MAX_ITEMS,
        max_bytes: int = MAX_BYTES,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._send = send
        self._properties = properties
        self._sender = sender
        self._timeout = timeout
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._max_in_flight = max_in_flight
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.messages = 0  # AMQP messages confirmed
        self.envelopes = 0  # envelopes they carried

    async def publish(self, exchange: str, routing_key: str, envelope: Envelope, body: bytes) -> None:
        """Return once the message carrying ``envelope`` (encoded as ``body``) is confirmed."""
        loop = asyncio.get_running_loop()
        key = (exchange, routing_key)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        batch = lane.open
        if batch is not None and batch.bodies and batch.size + len(body) > self._max_bytes:
            lane.open = None
            self._start(key, lane, batch)
            batch = None
        if batch is None:
            batch = lane.open = _Batch(loop.time() + self._timeout)
            self._schedule(key, lane)
        waiter: asyncio.Future[None] = loop.create_future()
        batch.envelopes.append(envelope)
        batch.bodies.append(body)
        batch.waiters.append(waiter)
        batch.size += len(body)
        if len(batch.bodies) >= self._max_items or batch.size >= self._max_bytes:
            lane.open = None
            self._start(key, lane, batch)
        # A caller that stops waiting does not take its envelope out of the batch: it may be sent.
        await waiter

    async def drain(self) -> None:
        """Send every open batch now and wait until each batch sent so far is settled."""
        for key, lane in list(self._lanes.items()):
            if lane.open is not None:
                batch, lane.open = lane.open, None
                self._start(key, lane, batch)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _schedule(self, key: tuple[str, str], lane: _Lane) -> None:
        if not lane.scheduled and lane.in_flight < self._max_in_flight:
            lane.scheduled = True
            # Behind the tasks already woken in this turn (say, by the confirm of the last batch):
            # what they publish right away still makes this batch.
            asyncio.get_running_loop().call_soon(self._flush, key, lane)

    def _flush(self, key: tuple[str, str], lane: _Lane) -> None:
        lane.scheduled = False
        if lane.open is not None and lane.in_flight < self._max_in_flight:
            batch, lane.open = lane.open, None
            self._start(key, lane, batch)

    def _start(self, key: tuple[str, str], lane: _Lane, batch: _Batch) -> None:
        lane.in_flight += 1
        task = asyncio.create_task(self._run(key, lane, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: tuple[str, str], lane: _Lane, batch: _Batch) -> None:
        try:
            if len(batch.bodies) == 1:
                body, properties = batch.bodies[0], self._properties(batch.envelopes[0])
            else:
                types = {envelope.type for envelope in batch.envelopes}
                body = pack(batch.bodies)
                properties = Properties(
                    content_type=BATCH_CONTENT_TYPE,
                    delivery_mode=_PERSISTENT,
                    message_type=types.pop() if len(types) == 1 else None,
                    app_id=self._sender or None,
                    user_id=self._properties(batch.envelopes[0]).user_id,
                )
            await self._send(key[0], key[1], body, properties, batch.deadline)
        except asyncio.CancelledError:
            for waiter in batch.waiters:
                waiter.cancel()
            raise
        except Exception as error:
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_exception(_copy(error))
        else:
            self.messages += 1
            self.envelopes += len(batch.bodies)
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)
        finally:
            lane.in_flight -= 1
            if lane.open is not None:
                self._schedule(key, lane)
            elif not lane.in_flight and not lane.scheduled and self._lanes.get(key) is lane:
                del self._lanes[key]


def _copy(error: Exception) -> Exception:
    """One exception per waiter, so that tracebacks do not pile up on a shared instance."""
    try:
        clone = copy.copy(error)
    except Exception:
        return error
    clone.__cause__ = error.__cause__
    clone.__suppress_context__ = error.__suppress_context__
    return clone
