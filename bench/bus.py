"""How many messages a second go through the bus port over AMQP, against raw aio-pika doing the same.

Both variants run in one process and one event loop, with the same settings: a durable quorum queue
(same arguments), persistent messages, publisher confirms, the same prefetch and the same number of
publishes in flight, manual ack after the handler. The port variant publishes typed envelopes (msgpack,
about 200 bytes) through :class:`broker.amqp.AmqpBus` and decodes them before its handler; the raw
variant publishes bytes of the same size and acks them. The in-process :class:`broker.memory.MemoryBus`
runs the same load for scale.

    .venv/bin/python bench/bus.py [--messages 20000] [--url amqp://...]

Each run gets a fresh queue (a quorum queue is fastest when new), raw and port take turns going
first, and the best and the median of the rounds are printed, with the Python CPU time each message
cost this process. Everything lives in a namespace of its own (``bench-<random>``) in the URL's
vhost, and is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aio_pika

from broker import codec
from broker.amqp import CONTENT_TYPE, CRASH_ALLOWANCE, AmqpBus
from broker.envelope import Envelope
from broker.memory import MemoryBus
from broker.port import Binding, MessageBus, QueueSpec
from broker.topology import Topology
from schemas.base import MessageTypes, WireModel

ROUTING_KEY = "bench.job.state"


class JobStateChanged(WireModel):
    message_type: ClassVar[str] = "bench.job.state"

    job_id: str
    state: str
    attempt: int
    note: str


TYPES = MessageTypes(JobStateChanged)


# One payload for every message, as the raw variant sends one body; each publish through the port
# still wraps it in a new envelope (new message id and time) and encodes it.
PAYLOAD = JobStateChanged(job_id=str(uuid.uuid4()), state="running", attempt=1, note="started on host-0001")


def event() -> Envelope:
    return Envelope(PAYLOAD, sender="bench")


class Counter:
    """Counts handled messages and says when a target is reached."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = asyncio.Event()

    def expect(self, target: int) -> None:
        self.count, self.target = 0, target
        self.done.clear()

    def hit(self) -> None:
        self.count += 1
        if self.count == self.target:
            self.done.set()


class Rate(NamedTuple):
    per_second: float
    cpu_us: float  # this process's CPU time per message, in microseconds


async def drive(publish: Callable[[int], Awaitable[None]], counter: Counter, messages: int, window: int) -> Rate:
    """Publish ``messages`` with ``window`` publishes in flight, until the last one is handled."""
    counter.expect(messages)
    started, cpu = time.perf_counter(), time.process_time()

    async def lane(first: int) -> None:
        for i in range(first, messages, window):
            await publish(i)

    await asyncio.gather(*(lane(first) for first in range(min(window, messages))))
    await counter.done.wait()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Rate(messages / elapsed, cpu / messages * 1e6)


async def run_port(bus: MessageBus, topology: Topology, queue: str, args: argparse.Namespace) -> Rate:
    counter = Counter()

    async def handle(envelope: Envelope) -> None:
        counter.hit()

    spec = QueueSpec(queue, (Binding(topology.events, ROUTING_KEY),), prefetch=args.prefetch)
    subscription = await bus.subscribe(spec, handle)

    async def publish(i: int) -> None:
        await bus.publish(topology.events, event(), ROUTING_KEY)

    await drive(publish, counter, args.warmup, args.window)
    rate = await drive(publish, counter, args.messages, args.window)
    await subscription.cancel()
    return rate


async def run_amqp_port(url: str, topology: Topology, queue: str, args: argparse.Namespace) -> Rate:
    bus = AmqpBus(url, TYPES, topology, sender="bench")
    await bus.start()
    try:
        return await run_port(bus, topology, queue, args)
    finally:
        await bus.close()
        await delete_queues(url, queue)


async def run_raw(url: str, topology: Topology, name: str, args: argparse.Namespace) -> Rate:
    """The same load with aio-pika alone: no envelope, no codec, no port."""
    counter = Counter()
    body = codec.encode(event())
    publisher = await aio_pika.connect_robust(url)
    consumer = await aio_pika.connect_robust(url)
    try:
        channel = await publisher.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(topology.events, aio_pika.ExchangeType.TOPIC, durable=True)
        consuming = await consumer.channel(publisher_confirms=False)
        await consuming.set_qos(prefetch_count=args.prefetch)
        queue = await consuming.declare_queue(
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": topology.dead,
                "x-delivery-limit": QueueSpec("", ()).delivery_limit + CRASH_ALLOWANCE,
            },
        )
        await queue.bind(exchange, ROUTING_KEY)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            counter.hit()
            await message.ack()

        tag = await queue.consume(on_message)

        async def publish(i: int) -> None:
            message = aio_pika.Message(
                body,
                content_type=CONTENT_TYPE,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(uuid.uuid4()),
                type=ROUTING_KEY,
            )
            await exchange.publish(message, ROUTING_KEY)

        await drive(publish, counter, args.warmup, args.window)
        rate = await drive(publish, counter, args.messages, args.window)
        await queue.cancel(tag)
        return rate
    finally:
        await consumer.close()
        await publisher.close()
        await delete_queues(url, name)


async def delete_queues(url: str, *names: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)


async def delete_topology(url: str, topology: Topology) -> None:
    await delete_queues(url, topology.dead_letter_queue)
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for exchange in topology.exchanges:
            await channel.exchange_delete(exchange)


async def main(args: argparse.Namespace) -> None:
    topology = Topology(namespace=f"bench-{uuid.uuid4().hex[:8]}")
    size = len(codec.encode(event()))
    print(
        f"{args.messages} messages of {size} bytes, prefetch {args.prefetch}, {args.window} publishes in flight, "
        f"{args.rounds} alternating rounds; persistent, confirmed, durable quorum queue"
    )
    raw_rates, port_rates = [], []
    try:
        for i in range(args.rounds):
            # Each run on a fresh queue, and alternating which goes first, so neither has the broker's
            # better moments to itself.
            raw_queue, port_queue = (topology.queue_name("bench", f"{kind}-{i}") for kind in ("raw", "port"))
            if i % 2 == 0:
                raw_rates.append(await run_raw(args.url, topology, raw_queue, args))
            port_rates.append(await run_amqp_port(args.url, topology, port_queue, args))
            if i % 2 == 1:
                raw_rates.append(await run_raw(args.url, topology, raw_queue, args))
    finally:
        await delete_topology(args.url, topology)

    memory = MemoryBus(TYPES, topology)
    await memory.start()
    memory_rate = await run_port(memory, topology, "memory", args)
    await memory.close()

    raw, port = max(r.per_second for r in raw_rates), max(r.per_second for r in port_rates)
    raw_median = statistics.median(r.per_second for r in raw_rates)
    port_median = statistics.median(r.per_second for r in port_rates)
    print(f"raw aio-pika : {raw:7.0f} msg/s  {describe(raw_rates)}")
    print(f"AmqpBus port : {port:7.0f} msg/s  {describe(port_rates)}")
    print(f"port / raw   : {port / raw:7.2f}        (medians {port_median / raw_median:.2f})")
    print(f"MemoryBus    : {memory_rate.per_second:7.0f} msg/s  ({memory_rate.cpu_us:.0f} us CPU/msg)")


def describe(rates: list[Rate]) -> str:
    runs = ", ".join(f"{r.per_second:.0f}" for r in rates)
    cpu = statistics.median(r.cpu_us for r in rates)
    return f"(rounds {runs}; {cpu:.0f} us of Python CPU per message)"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--prefetch", type=int, default=256)
    parser.add_argument("--window", type=int, default=256, help="publishes in flight")
    parser.add_argument("--rounds", type=int, default=2, help="alternating raw/port runs")
    parser.add_argument("--url", default=os.environ.get("SKYBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    args = parser.parse_args()
    args.warmup = min(2000, max(1, args.messages // 10))
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
