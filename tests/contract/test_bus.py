"""The bus contract: one suite that every adapter of :class:`broker.port.MessageBus` passes.

:class:`BusContract` holds the tests. A concrete class per adapter provides two fixtures: ``bus``
(started, in the test's own topology) and ``inject`` (puts raw bytes on an exchange, past the
codec). The AMQP class adds what only a real broker can show: connections that drop and come back,
messages that outlive their consumer, dead letters that RabbitMQ made by itself.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar

import aio_pika
import msgpack
import pytest
from yarl import URL

from broker import amqp_batch, amqp_logs, codec
from broker.amqp import CONTENT_TYPE, AmqpBus
from broker.envelope import Envelope
from broker.memory import MemoryBus
from broker.port import (
    Binding,
    BusUnavailable,
    DeadLetter,
    Drop,
    MessageBus,
    NoRoute,
    PoisonMessage,
    QueueKind,
    QueueSpec,
    RequestTimeout,
)
from broker.topology import Topology
from schemas.base import MessageTypes, WireModel
from tests.rabbit import Vhost, rabbitmqctl, unique_namespace
from tests.tcp_proxy import TcpProxy


class Ping(WireModel):
    message_type: ClassVar[str] = "contract.ping"

    n: int


class Pong(WireModel):
    message_type: ClassVar[str] = "contract.pong"

    n: int


class Stranger(WireModel):
    """A well-formed message of a type the bus under test does not know."""

    message_type: ClassVar[str] = "contract.stranger"

    n: int


TYPES = MessageTypes(Ping, Pong)
# The kinds of queue that competing consumers share, with retries and the delivery limit.
COMPETING = [QueueKind.SHARED, QueueKind.AGENT, QueueKind.TRANSIENT]
# The sender name of the bus under test: what its replies carry.
REPLIER = "contract-test"

Inject = Callable[[str, str, bytes], Awaitable[None]]


def ping(n: int) -> Envelope:
    return Envelope(Ping(n=n), sender="contract")


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


async def take_dead_letters(bus: MessageBus, count: int, timeout: float = 5.0) -> list[DeadLetter]:
    """Poll the dead-letter queue until ``count`` letters were taken."""
    taken: list[DeadLetter] = []

    async def poll() -> None:
        while len(taken) < count:
            taken.extend(await bus.dead_letters())
            if len(taken) < count:
                await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"expected {count} dead letters within {timeout}s, got {taken}") from None
    return taken


async def expires_unhandled(bus: MessageBus, topology: Topology, spec: QueueSpec, n: int) -> None:
    """A request ``ping(n)`` that ends up in ``spec``'s queue while nobody consumes it times out, is
    never handled later, and is dead-lettered as expired."""
    await (await bus.subscribe(spec, Recorder())).cancel()  # the queue stays, with no consumer
    with pytest.raises(RequestTimeout):
        await bus.request(topology.commands, ping(n), timeout=0.3)
    await asyncio.sleep(0.4)
    late = Recorder()
    await bus.subscribe(spec, late)
    dead = await take_dead_letters(bus, 1)
    assert late.numbers() == []
    assert "expired" in dead[0].reason and dead[0].envelope.payload.n == n


def far_future(envelope: Envelope) -> bytes:
    """``envelope`` encoded with a time no datetime can hold (``at: 1e20``)."""
    raw = msgpack.unpackb(codec.encode(envelope))
    raw["at"] = 1e20
    return msgpack.packb(raw)


async def _pong(envelope: Envelope) -> Pong:
    return Pong(n=envelope.payload.n)


class Recorder:
    """A handler that records every delivery, then does what ``then`` says (if anything)."""

    def __init__(self, then: Callable[[Envelope], Awaitable[WireModel | None]] | None = None) -> None:
        self.seen: list[Envelope] = []
        self.then = then

    async def __call__(self, envelope: Envelope) -> WireModel | None:
        self.seen.append(envelope)
        if self.then is not None:
            return await self.then(envelope)
        return None

    def numbers(self) -> list[int]:
        return [envelope.payload.n for envelope in self.seen]

    def ids(self) -> set[str]:
        return {envelope.message_id for envelope in self.seen}


class BusContract:
    """Every adapter of the bus port passes these. Concrete classes provide ``bus`` and ``inject``."""

    @pytest.fixture
    def topology(self) -> Topology:
        return Topology(namespace=unique_namespace("contract"))

    def spec(
        self, topology: Topology, purpose: str, *bindings: Binding, kind: QueueKind = QueueKind.SHARED, **options: int
    ) -> QueueSpec:
        return QueueSpec(topology.queue_name("contract", purpose), bindings, kind=kind, **options)

    async def test_ready_says_why_not_once_closed(self, bus: MessageBus) -> None:
        assert bus.ready() is None
        await bus.close()
        assert bus.ready() is not None

    async def test_topic_patterns_route_like_rabbitmq(self, bus: MessageBus, topology: Topology) -> None:
        one_word, any_words = Recorder(), Recorder()
        await bus.subscribe(self.spec(topology, "star", Binding(topology.commands, "job.*"), prefetch=1), one_word)
        await bus.subscribe(self.spec(topology, "hash", Binding(topology.events, "host.#"), prefetch=1), any_words)

        sent = [
            (topology.commands, "job.run"),  # 0: job.*
            (topology.commands, "job.run.now"),  # 1: * is exactly one word
            (topology.commands, "job"),  # 2: * is not zero words
            (topology.events, "host"),  # 3: # may be zero words
            (topology.events, "host.heartbeat.cpu"),  # 4: # may be several words
            (topology.events, "hosts.heartbeat"),  # 5: no match
            (topology.commands, "host.heartbeat"),  # 6: right key, wrong exchange
        ]
        for n, (exchange, key) in enumerate(sent):
            await bus.publish(exchange, ping(n), key)
        # Markers behind everything else: once they are in, anything routed wrongly would be too.
        await bus.publish(topology.commands, ping(99), "job.marker")
        await bus.publish(topology.events, ping(99), "host.marker")
        await eventually(lambda: 99 in one_word.numbers() and 99 in any_words.numbers(), "the markers")

        assert one_word.numbers() == [0, 99]
        assert any_words.numbers() == [3, 4, 99]

    async def test_a_handler_sees_the_key_a_message_came_under(self, bus: MessageBus, topology: Topology) -> None:
        """The key is the delivery's, not anything in the body: what a manager checks an agent event's
        sender against (``services.security.routed_from_its_host``)."""
        recorder = Recorder()
        await bus.subscribe(self.spec(topology, "keys", Binding(topology.agent_events, "*.ping")), recorder)
        await bus.publish(topology.agent_events, ping(1), "host-a.ping")
        await eventually(lambda: bool(recorder.seen), "the ping")
        assert recorder.seen[0].routing_key == "host-a.ping"

    @pytest.mark.parametrize("kind", [QueueKind.SHARED, QueueKind.AGENT])
    async def test_a_retried_message_keeps_the_key_it_came_under(
        self, bus: MessageBus, topology: Topology, kind: QueueKind
    ) -> None:
        """A classic queue's retry is republished by the consumer (through the default exchange, under
        the queue's name): the handler still sees the key the sender used."""
        keys: list[str | None] = []

        async def fail_once(envelope: Envelope) -> None:
            keys.append(envelope.routing_key)
            if len(keys) == 1:
                raise RuntimeError("once")

        spec = self.spec(topology, "retried", Binding(topology.agent_events, "*.ping"), kind=kind)
        await bus.subscribe(spec, fail_once)
        await bus.publish(topology.agent_events, ping(1), "host-a.ping")
        await eventually(lambda: len(keys) == 2, "the retry")
        assert keys == ["host-a.ping", "host-a.ping"]

    async def test_fan_out_to_every_bound_queue(self, bus: MessageBus, topology: Topology) -> None:
        recorders = [Recorder() for _ in range(3)]
        for i, recorder in enumerate(recorders):
            await bus.subscribe(self.spec(topology, f"fan{i}", Binding(topology.events, "job.completed")), recorder)

        sent = ping(1)
        await bus.publish(topology.events, sent, "job.completed")
        await eventually(lambda: all(recorder.seen for recorder in recorders), "every queue")

        for recorder in recorders:
            assert [envelope.message_id for envelope in recorder.seen] == [sent.message_id]
            assert recorder.seen[0].payload == Ping(n=1)
            assert recorder.seen[0].sender == "contract"

    @pytest.mark.parametrize("kind", COMPETING)
    async def test_competing_consumers_share_one_queue(
        self, bus: MessageBus, topology: Topology, kind: QueueKind
    ) -> None:
        async def work(envelope: Envelope) -> None:
            await asyncio.sleep(0.005)

        first, second = Recorder(work), Recorder(work)
        spec = self.spec(topology, "shared", Binding(topology.commands, "contract.ping"), kind=kind, prefetch=1)
        await bus.subscribe(spec, first)
        await bus.subscribe(spec, second)

        for n in range(20):
            await bus.publish(topology.commands, ping(n))
        await eventually(lambda: len(first.seen) + len(second.seen) >= 20, "all 20 messages")

        assert first.seen and second.seen, (first.numbers(), second.numbers())
        assert sorted(first.numbers() + second.numbers()) == list(range(20))

    @pytest.mark.parametrize("kind", COMPETING)
    async def test_failure_is_retried_then_dead_lettered_with_the_reason(
        self, bus: MessageBus, topology: Topology, kind: QueueKind
    ) -> None:
        attempts: collections.Counter[int] = collections.Counter()

        async def flaky(envelope: Envelope) -> None:
            n = envelope.payload.n
            attempts[n] += 1
            if n == 1 and attempts[n] < 2:
                raise RuntimeError("flaky once")
            if n == 2:
                raise RuntimeError("always broken")

        spec = self.spec(
            topology, "retry", Binding(topology.commands, "contract.ping"), kind=kind, prefetch=1, delivery_limit=3
        )
        await bus.subscribe(spec, flaky)
        broken = ping(2)
        await bus.publish(topology.commands, ping(1))
        await bus.publish(topology.commands, broken)

        (letter,) = await take_dead_letters(bus, 1)
        await eventually(lambda: attempts[1] == 2, "the flaky message to succeed")
        assert attempts == {1: 2, 2: 3}
        assert "always broken" in letter.reason
        assert letter.queue == spec.name
        assert letter.exchange == topology.commands
        assert letter.routing_key == "contract.ping"
        assert letter.envelope is not None
        assert letter.envelope.message_id == broken.message_id
        assert letter.envelope.payload == Ping(n=2)
        assert codec.decode(letter.body, TYPES).message_id == broken.message_id
        assert await bus.dead_letters() == []

    async def test_poison_message_is_dead_lettered_at_once(self, bus: MessageBus, topology: Topology) -> None:
        async def refuse(envelope: Envelope) -> None:
            raise PoisonMessage("job id is not a UUID")

        handler = Recorder(refuse)
        spec = self.spec(topology, "poison", Binding(topology.commands, "contract.ping"), delivery_limit=5)
        await bus.subscribe(spec, handler)
        sent = ping(3)
        await bus.publish(topology.commands, sent)

        (letter,) = await take_dead_letters(bus, 1)
        assert handler.numbers() == [3]
        assert "job id is not a UUID" in letter.reason
        assert letter.queue == spec.name
        assert letter.envelope is not None and letter.envelope.message_id == sent.message_id

    async def test_drop_acks_without_redelivery(self, bus: MessageBus, topology: Topology) -> None:
        async def drop_first(envelope: Envelope) -> None:
            if envelope.payload.n == 1:
                raise Drop("already done")

        handler = Recorder(drop_first)
        spec = self.spec(topology, "drop", Binding(topology.commands, "contract.ping"), prefetch=1)
        await bus.subscribe(spec, handler)
        await bus.publish(topology.commands, ping(1))
        await bus.publish(topology.commands, ping(2))
        await eventually(lambda: 2 in handler.numbers(), "the second message")
        # A redelivery of the dropped message would be queued before this one.
        await bus.publish(topology.commands, ping(3))
        await eventually(lambda: 3 in handler.numbers(), "the third message")

        assert handler.numbers() == [1, 2, 3]
        assert await bus.dead_letters() == []

    async def test_undecodable_and_unknown_messages_are_dead_lettered_and_consuming_goes_on(
        self, bus: MessageBus, topology: Topology, inject: Inject
    ) -> None:
        handler = Recorder()
        spec = self.spec(topology, "garbage", Binding(topology.commands, "contract.#"), prefetch=1)
        await bus.subscribe(spec, handler)

        await inject(topology.commands, "contract.garbage", b"\x93not an envelope")
        await bus.publish(topology.commands, Envelope(Stranger(n=5)))
        await bus.publish(topology.commands, ping(7))
        await eventually(lambda: handler.seen, "the good message after the bad ones")

        letters = {letter.routing_key: letter for letter in await take_dead_letters(bus, 2)}
        assert handler.numbers() == [7]
        garbage, stranger = letters["contract.garbage"], letters["contract.stranger"]
        assert "undecodable" in garbage.reason
        assert garbage.body == b"\x93not an envelope"
        assert garbage.envelope is None
        assert "unknown message type 'contract.stranger'" in stranger.reason
        assert stranger.envelope is None
        assert {garbage.queue, stranger.queue} == {spec.name}

    async def test_an_envelope_from_the_far_future_is_dead_lettered_at_once_with_why(
        self, bus: MessageBus, topology: Topology, inject: Inject
    ) -> None:
        handler = Recorder()
        spec = self.spec(topology, "overflow", Binding(topology.commands, "contract.#"), prefetch=1, delivery_limit=8)
        await bus.subscribe(spec, handler)

        far = far_future(ping(1))
        await inject(topology.commands, "contract.ping", far)
        await bus.publish(topology.commands, ping(2))
        await eventually(lambda: handler.seen, "the good message after the bad one")

        (letter,) = await take_dead_letters(bus, 1)
        assert handler.numbers() == [2]
        assert letter.body == far and letter.envelope is None
        assert "undecodable" in letter.reason and "1e+20" in letter.reason
        assert (letter.queue, letter.routing_key) == (spec.name, "contract.ping")

    async def test_request_gets_the_handlers_reply(self, bus: MessageBus, topology: Topology) -> None:
        async def double(envelope: Envelope) -> Pong:
            await asyncio.sleep(0.001 * (envelope.payload.n % 3))
            return Pong(n=envelope.payload.n * 2)

        await bus.subscribe(self.spec(topology, "rpc", Binding(topology.commands, "contract.*")), double)

        request = ping(21)
        reply = await bus.request(topology.commands, request, timeout=5)
        assert reply.payload == Pong(n=42)
        assert reply.sender == REPLIER  # the bus that answered, not the requester ("contract")
        assert reply.causation_id == request.message_id
        assert reply.correlation_id == request.message_id

        replies = await asyncio.gather(*(bus.request(topology.commands, ping(n), timeout=5) for n in range(20)))
        assert [reply.payload.n for reply in replies] == [2 * n for n in range(20)]

    @pytest.mark.parametrize("kind", COMPETING)
    async def test_a_request_that_failed_once_is_answered_on_its_retry(
        self, bus: MessageBus, topology: Topology, kind: QueueKind
    ) -> None:
        tries: collections.Counter[int] = collections.Counter()

        async def flaky(envelope: Envelope) -> Pong:
            tries[envelope.payload.n] += 1
            if tries[envelope.payload.n] == 1:
                raise RuntimeError("flaky once")
            return Pong(n=envelope.payload.n)

        spec = self.spec(topology, "rpc-retry", Binding(topology.commands, "contract.*"), kind=kind)
        await bus.subscribe(spec, flaky)

        reply = await bus.request(topology.commands, ping(6), timeout=5)
        assert reply.payload == Pong(n=6) and tries[6] == 2

    async def test_every_broadcast_subscriber_gets_its_own_copy(
        self, bus: MessageBus, other_bus: MessageBus, topology: Topology
    ) -> None:
        spec = self.spec(topology, "gateway-events", Binding(topology.events, "job.*"), kind=QueueKind.BROADCAST)
        here, there, also_here = Recorder(), Recorder(), Recorder()
        await bus.subscribe(spec, here)
        await other_bus.subscribe(spec, there)
        await bus.subscribe(spec, also_here)

        for n in range(3):
            await bus.publish(topology.events, ping(n), "job.changed")
        await eventually(lambda: all(len(r.seen) >= 3 for r in (here, there, also_here)), "three copies each")
        await asyncio.sleep(0.1)  # time for a wrong extra delivery to show

        assert here.numbers() == there.numbers() == also_here.numbers() == [0, 1, 2]

    async def test_a_failing_broadcast_handler_drops_the_message(self, bus: MessageBus, topology: Topology) -> None:
        async def fail_first(envelope: Envelope) -> None:
            if envelope.payload.n == 1:
                raise RuntimeError("cannot notify")

        handler = Recorder(fail_first)
        spec = self.spec(topology, "notify", Binding(topology.events, "job.*"), kind=QueueKind.BROADCAST, prefetch=1)
        await bus.subscribe(spec, handler)
        await bus.publish(topology.events, ping(1), "job.changed")
        await bus.publish(topology.events, ping(2), "job.changed")
        await eventually(lambda: 2 in handler.numbers(), "the second message")
        await asyncio.sleep(0.2)  # time for a wrong redelivery to show

        assert handler.numbers() == [1, 2]
        assert await bus.dead_letters() == []

    async def test_a_broadcast_queue_goes_with_its_subscription(self, bus: MessageBus, topology: Topology) -> None:
        spec = self.spec(topology, "listening", Binding(topology.commands, "contract.*"), kind=QueueKind.BROADCAST)
        subscription = await bus.subscribe(spec, Recorder(_pong))
        assert (await bus.request(topology.commands, ping(1), timeout=5)).payload == Pong(n=1)
        await subscription.cancel()

        with pytest.raises(NoRoute):
            await bus.request(topology.commands, ping(2), timeout=5)

    async def test_request_without_reply_times_out(self, bus: MessageBus, topology: Topology) -> None:
        handler = Recorder()  # returns None: nothing to answer
        await bus.subscribe(self.spec(topology, "silent", Binding(topology.commands, "contract.ping")), handler)

        with pytest.raises(RequestTimeout):
            await bus.request(topology.commands, ping(1), timeout=0.2)
        assert handler.numbers() == [1]

    async def test_request_nobody_took_in_time_expires_unhandled(self, bus: MessageBus, topology: Topology) -> None:
        spec = self.spec(topology, "late", Binding(topology.commands, "contract.ping"))
        await expires_unhandled(bus, topology, spec, 7)

    async def test_request_to_nowhere_raises_no_route(self, bus: MessageBus, topology: Topology) -> None:
        await bus.subscribe(self.spec(topology, "elsewhere", Binding(topology.commands, "job.*")), Recorder())

        with pytest.raises(NoRoute):
            await bus.request(topology.commands, ping(1), routing_key="nobody.home", timeout=5)

    async def test_a_reply_may_be_a_whole_envelope_sent_as_it_is(self, bus: MessageBus, topology: Topology) -> None:
        async def signed(envelope: Envelope) -> Envelope:
            answer = envelope.caused(Pong(n=envelope.payload.n), sender="answerer", resource_id="host-1")
            return answer.with_signature(b"signed by the answerer")

        await bus.subscribe(self.spec(topology, "signed", Binding(topology.commands, "contract.ping")), signed)

        request = ping(3)
        reply = await bus.request(topology.commands, request, timeout=5)
        assert reply.payload == Pong(n=3) and reply.signature == b"signed by the answerer"
        assert (reply.sender, reply.resource_id, reply.causation_id) == ("answerer", "host-1", request.message_id)

    async def test_a_forwarded_request_is_answered_by_the_next_consumer(
        self, bus: MessageBus, other_bus: MessageBus, topology: Topology
    ) -> None:
        async def proxy(envelope: Envelope) -> WireModel | None:
            if envelope.payload.n < 0:
                try:
                    await other_bus.forward(topology.agent_commands, envelope, "nobody.contract.ping")
                except NoRoute:
                    return Pong(n=0)
            await other_bus.forward(topology.agent_commands, envelope, f"host-{envelope.payload.n % 2}.contract.ping")
            return None

        async def answer(envelope: Envelope) -> Pong:
            return Pong(n=envelope.payload.n * 10)

        await other_bus.subscribe(self.spec(topology, "proxy", Binding(topology.commands, "contract.ping")), proxy)
        for host in ("host-0", "host-1"):
            await bus.subscribe(self.spec(topology, host, Binding(topology.agent_commands, f"{host}.#")), answer)

        request = ping(4)
        reply = await bus.request(topology.commands, request, timeout=5)
        assert reply.payload == Pong(n=40) and reply.causation_id == request.message_id
        replies = await asyncio.gather(*(bus.request(topology.commands, ping(n), timeout=5) for n in range(1, 20)))
        assert [reply.payload.n for reply in replies] == [10 * n for n in range(1, 20)]
        assert (await bus.request(topology.commands, ping(-1), timeout=5)).payload == Pong(n=0)

    async def forward_pings_to_host(self, bus: MessageBus, topology: Topology) -> None:
        """A proxy on ``bus`` that forwards every ping on the commands exchange to ``host``."""

        async def proxy(envelope: Envelope) -> None:
            await bus.forward(topology.agent_commands, envelope, "host.contract.ping")

        await bus.subscribe(self.spec(topology, "proxy", Binding(topology.commands, "contract.ping")), proxy)

    async def test_a_forwarded_request_expires_with_the_original(
        self, bus: MessageBus, other_bus: MessageBus, topology: Topology
    ) -> None:
        await self.forward_pings_to_host(other_bus, topology)
        await expires_unhandled(
            bus, topology, self.spec(topology, "host", Binding(topology.agent_commands, "host.#")), 9
        )

    async def test_forwarding_what_is_not_a_request_publishes_it(
        self, bus: MessageBus, other_bus: MessageBus, topology: Topology
    ) -> None:
        await self.forward_pings_to_host(other_bus, topology)
        received = Recorder()
        await bus.subscribe(self.spec(topology, "host", Binding(topology.agent_commands, "host.#")), received)

        sent = ping(5)
        await bus.publish(topology.commands, sent)
        await eventually(lambda: received.numbers() == [5], "the forwarded message")
        assert received.seen[0].message_id == sent.message_id

    async def test_close_lets_the_running_handler_finish(self, bus: MessageBus, topology: Topology) -> None:
        started, finished = asyncio.Event(), []

        async def slow(envelope: Envelope) -> None:
            started.set()
            await asyncio.sleep(0.2)
            finished.append(envelope.payload.n)

        await bus.subscribe(self.spec(topology, "slow", Binding(topology.commands, "contract.ping")), slow)
        await bus.publish(topology.commands, ping(1))
        await asyncio.wait_for(started.wait(), 5)
        await bus.close()

        assert finished == [1]

    async def test_close_cancels_a_handler_that_outlives_the_close_timeout(
        self, bus: MessageBus, topology: Topology
    ) -> None:
        started, cancelled = asyncio.Event(), []

        async def hang(envelope: Envelope) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(envelope.payload.n)
                raise

        await bus.subscribe(self.spec(topology, "hang", Binding(topology.commands, "contract.ping")), hang)
        await bus.publish(topology.commands, ping(1))
        await asyncio.wait_for(started.wait(), 5)
        bus.close_timeout = 1  # type: ignore[attr-defined]  # both adapters take it; the port does not name it

        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.wait_for(bus.close(), 10)
        assert loop.time() - began < 2
        assert cancelled == [1]

    async def test_publish_after_close_raises_bus_unavailable(self, bus: MessageBus, topology: Topology) -> None:
        await bus.close()

        with pytest.raises(BusUnavailable):
            await bus.publish(topology.events, ping(1))
        with pytest.raises(BusUnavailable):
            await bus.publish(topology.events, ping(2), transient=True)

    async def test_transient_messages_reach_a_transient_queue_and_need_no_route(
        self, bus: MessageBus, topology: Topology
    ) -> None:
        handler = Recorder()
        spec = self.spec(topology, "heartbeats", Binding(topology.events, "host.*"), kind=QueueKind.TRANSIENT)
        await bus.subscribe(spec, handler)

        await bus.publish(topology.events, ping(1), "nobody.listens", transient=True)  # no NoRoute: no confirm
        for n in range(2, 5):
            await bus.publish(topology.events, ping(n), "host.heartbeat", transient=True)
        await eventually(lambda: len(handler.seen) >= 3, "the transient messages")
        assert handler.numbers() == [2, 3, 4]

    async def test_a_transient_request_is_answered(self, bus: MessageBus, topology: Topology) -> None:
        spec = self.spec(topology, "live", Binding(topology.commands, "contract.*"), kind=QueueKind.TRANSIENT)
        await bus.subscribe(spec, _pong)

        assert (await bus.request(topology.commands, ping(8), timeout=5, transient=True)).payload == Pong(n=8)
        with pytest.raises(NoRoute):
            await bus.request(topology.commands, ping(9), routing_key="nobody.home", timeout=5, transient=True)


class TestMemoryBus(BusContract):
    @pytest.fixture
    async def bus(self, topology: Topology) -> AsyncIterator[MemoryBus]:
        bus = MemoryBus(TYPES, topology, sender=REPLIER)
        await bus.start()
        yield bus
        await bus.close()

    @pytest.fixture
    def other_bus(self, bus: MemoryBus) -> MemoryBus:
        """Another process's bus: in-process, the same one."""
        return bus

    @pytest.fixture
    def inject(self, bus: MemoryBus) -> Inject:
        async def inject(exchange: str, routing_key: str, body: bytes) -> None:
            bus._route(exchange, routing_key, body, reply=None)

        return inject


@pytest.mark.amqp
class TestAmqpBus(BusContract):
    @staticmethod
    async def started(amqp_url: str, topology: Topology, sender: str) -> AsyncIterator[AmqpBus]:
        bus = AmqpBus(amqp_url, TYPES, topology, publish_timeout=10, sender=sender)
        await bus.start()
        yield bus
        await bus.close()

    @pytest.fixture
    async def bus(self, amqp_url: str, topology: Topology) -> AsyncIterator[AmqpBus]:
        async for bus in self.started(amqp_url, topology, "contract-test"):
            yield bus

    @pytest.fixture
    async def other_bus(self, amqp_url: str, topology: Topology) -> AsyncIterator[AmqpBus]:
        """Another process's bus: connections of its own."""
        async for bus in self.started(amqp_url, topology, "contract-test-other"):
            yield bus

    @pytest.fixture
    async def inject(self, amqp_url: str) -> AsyncIterator[Inject]:
        connections: list[aio_pika.abc.AbstractConnection] = []

        async def inject(exchange: str, routing_key: str, body: bytes) -> None:
            if not connections:
                connections.append(await aio_pika.connect(amqp_url))
            async with connections[0].channel() as channel:
                target = await channel.get_exchange(exchange, ensure=False)
                message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                await target.publish(message, routing_key)

        yield inject
        for connection in connections:
            await connection.close()

    async def test_dropped_connections_recover_and_lose_no_confirmed_message(
        self, bus: AmqpBus, topology: Topology, amqp_vhost: Vhost
    ) -> None:
        async def echo(envelope: Envelope) -> Pong:
            return Pong(n=envelope.payload.n)

        handler = Recorder()
        await bus.subscribe(self.spec(topology, "drop", Binding(topology.events, "contract.#"), prefetch=20), handler)
        await bus.subscribe(self.spec(topology, "echo", Binding(topology.commands, "contract.ping")), echo)
        assert (await bus.request(topology.commands, ping(1), timeout=5)).payload == Pong(n=1)
        confirmed: list[str] = []

        async def publish(n: int) -> None:
            envelope = ping(n)
            await bus.publish(topology.events, envelope)
            confirmed.append(envelope.message_id)

        await asyncio.gather(*(publish(n) for n in range(100)))
        await eventually(lambda: len(handler.seen) >= 50, "consuming to be under way")

        dropping = asyncio.create_task(asyncio.to_thread(amqp_vhost.close_all_connections, "test"))
        n = 100
        while not dropping.done():  # publishing while the broker drops us
            await asyncio.gather(*(publish(n + i) for i in range(10)))
            n += 10
        assert await dropping >= 2, "the publisher's and the consumer's connections were both dropped"
        await asyncio.gather(*(publish(n + i) for i in range(100)))  # and after

        await eventually(lambda: set(confirmed) <= handler.ids(), "every confirmed message", timeout=20)
        assert len(confirmed) == n + 100
        assert (await bus.request(topology.commands, ping(2), timeout=5)).payload == Pong(n=2)

    async def test_a_connection_loss_does_not_cut_a_running_handler_short(
        self, bus: AmqpBus, topology: Topology, amqp_vhost: Vhost
    ) -> None:
        started, dropped, finished = asyncio.Event(), asyncio.Event(), []

        async def outlive_the_connection(envelope: Envelope) -> None:
            started.set()
            await dropped.wait()
            finished.append(envelope.message_id)

        spec = self.spec(topology, "cut", Binding(topology.commands, "contract.ping"))
        await bus.subscribe(spec, outlive_the_connection)
        sent = ping(1)
        await bus.publish(topology.commands, sent)
        await asyncio.wait_for(started.wait(), 5)
        assert await asyncio.to_thread(amqp_vhost.close_all_connections, "test") >= 2
        dropped.set()

        # The first run went on to its end; its ack was lost with the connection, so the message
        # comes back once the consumer has reconnected, and runs again.
        await eventually(lambda: len(finished) >= 2, "the first run to end and the redelivery", timeout=15)
        assert set(finished) == {sent.message_id}

    async def test_a_pending_request_fails_at_once_when_its_connection_drops(
        self, bus: AmqpBus, other_bus: AmqpBus, topology: Topology, amqp_vhost: Vhost
    ) -> None:
        started, answer = asyncio.Event(), asyncio.Event()

        async def slow(envelope: Envelope) -> Pong:
            started.set()
            await answer.wait()
            return Pong(n=envelope.payload.n)

        await other_bus.subscribe(self.spec(topology, "slow-rpc", Binding(topology.commands, "contract.*")), slow)
        pending = asyncio.create_task(bus.request(topology.commands, ping(1), timeout=30))
        try:
            await asyncio.wait_for(started.wait(), 5)
            loop = asyncio.get_running_loop()
            cut_at = loop.time()
            await asyncio.to_thread(amqp_vhost.close_all_connections, "test")

            with pytest.raises(BusUnavailable, match="connection was lost"):
                await asyncio.wait_for(pending, 10)
            assert loop.time() - cut_at < 5, "failed at once, not at its 30 s timeout"
        finally:
            answer.set()
        # The bus recovers: the next request is answered.
        assert (await bus.request(topology.commands, ping(2), timeout=10)).payload == Pong(n=2)

    async def test_close_returns_in_bounded_time_when_the_network_stalls(
        self, topology: Topology, amqp_url: str
    ) -> None:
        target = URL(amqp_url)
        async with TcpProxy(target.host or "127.0.0.1", target.port or 5672) as proxy:
            bus = AmqpBus(proxy.url(amqp_url), TYPES, topology, publish_timeout=30, sender=REPLIER, close_timeout=2)
            await bus.start()
            started, stalled, finished = asyncio.Event(), asyncio.Event(), []

            async def follow_up(envelope: Envelope) -> None:
                started.set()
                await stalled.wait()
                # A publish, then an ack, into a network that holds every byte: neither ever completes.
                await bus.publish(topology.events, ping(envelope.payload.n + 1), "contract.followed")
                finished.append(envelope.payload.n)

            await bus.subscribe(self.spec(topology, "stalled", Binding(topology.commands, "contract.ping")), follow_up)
            await bus.publish(topology.commands, ping(1))
            await asyncio.wait_for(started.wait(), 5)
            proxy.stall()
            stalled.set()

            loop = asyncio.get_running_loop()
            began = loop.time()
            await asyncio.wait_for(bus.close(), 10)
            assert loop.time() - began < 3, "close() is bounded by its close_timeout (2 s)"
            assert finished == []  # the handler was still publishing when time ran out

    async def test_a_broadcast_subscription_comes_back_after_a_dropped_connection(
        self, bus: AmqpBus, topology: Topology, amqp_vhost: Vhost
    ) -> None:
        handler = Recorder()
        spec = self.spec(topology, "listening", Binding(topology.events, "job.*"), kind=QueueKind.BROADCAST)
        await bus.subscribe(spec, handler)
        await bus.publish(topology.events, ping(1), "job.changed")
        await eventually(lambda: handler.numbers() == [1], "the first broadcast")

        assert await asyncio.to_thread(amqp_vhost.close_all_connections, "test") >= 2

        async def heard_again() -> bool:
            # What is published before the queue is declared again is lost for it, by design.
            await bus.publish(topology.events, ping(2), "job.changed")
            await asyncio.sleep(0.1)
            return 2 in handler.numbers()

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not await heard_again():
            assert loop.time() < deadline, "the broadcast queue was not declared and consumed again"

    async def test_an_unreachable_broker_raises_bus_unavailable_then_recovers(
        self, topology: Topology, amqp_url: str, amqp_vhost: Vhost
    ) -> None:
        bus = AmqpBus(amqp_url, TYPES, topology, publish_timeout=1, sender="contract-test")
        await bus.start()
        handler = Recorder()
        await bus.subscribe(self.spec(topology, "outage", Binding(topology.commands, "contract.ping")), handler)
        try:
            # Guest may no longer use the vhost: every reconnection attempt is refused.
            await asyncio.to_thread(rabbitmqctl, "clear_permissions", "-p", amqp_vhost.name, "guest")
            try:
                await asyncio.to_thread(amqp_vhost.close_all_connections, "test")
                with pytest.raises(BusUnavailable):
                    await bus.publish(topology.commands, ping(1))
                with pytest.raises(BusUnavailable):
                    await bus.request(topology.commands, ping(2), timeout=1)
                with pytest.raises(BusUnavailable):
                    await bus.publish(topology.commands, ping(4), transient=True)
            finally:
                await asyncio.to_thread(rabbitmqctl, "set_permissions", "-p", amqp_vhost.name, "guest", *[".*"] * 3)
            await bus.publish(topology.commands, ping(3))
            await eventually(lambda: 3 in handler.numbers(), "the message published once the broker was back")
        finally:
            await bus.close()

    async def test_each_kind_declares_its_own_kind_of_queue(
        self, bus: AmqpBus, topology: Topology, amqp_vhost: Vhost
    ) -> None:
        for kind in QueueKind:
            spec = self.spec(topology, kind.value, Binding(topology.events, "job.*"), kind=kind)
            await bus.subscribe(spec, Recorder())

        columns = ("name", "type", "durable", "auto_delete", "exclusive")
        listing = await asyncio.to_thread(rabbitmqctl, "list_queues", "-p", amqp_vhost.name, *columns)
        queues = {}
        for line in listing.splitlines():
            name, *rest = line.split("\t")
            if name.startswith(topology.queue_name("contract", "")):
                queues[name.removeprefix(topology.queue_name("contract", ""))] = tuple(rest)

        broadcast = [name for name in queues if name.startswith("broadcast.")]
        assert len(broadcast) == 1, queues  # named by the spec, with a suffix of its own
        assert queues.pop(broadcast[0]) == ("classic", "false", "true", "true")
        assert queues == {
            "shared": ("quorum", "true", "false", ""),  # a quorum queue is never exclusive: no column
            "agent": ("classic", "true", "false", "false"),
            "transient": ("classic", "false", "false", "false"),
        }

    async def test_an_outage_is_logged_once_and_its_end_too(
        self, topology: Topology, amqp_url: str, amqp_vhost: Vhost, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)

        def ours() -> list[tuple[int, str]]:
            return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "broker.amqp"]

        bus = AmqpBus(amqp_url, TYPES, topology, publish_timeout=1, sender="outage-test")
        await bus.start()
        handler = Recorder()
        await bus.subscribe(self.spec(topology, "outage-log", Binding(topology.commands, "contract.ping")), handler)
        try:
            await asyncio.to_thread(rabbitmqctl, "clear_permissions", "-p", amqp_vhost.name, "guest")
            try:
                await asyncio.to_thread(amqp_vhost.close_all_connections, "test")
                await asyncio.sleep(3.5)  # three refused reconnection attempts a connection, at least
            finally:
                await asyncio.to_thread(rabbitmqctl, "set_permissions", "-p", amqp_vhost.name, "guest", *[".*"] * 3)
            await bus.publish(topology.commands, ping(1))
            await eventually(lambda: handler.seen, "a message once the broker is back", timeout=15)
            await eventually(lambda: any("restored" in message for _, message in ours()), "the recovery line")
        finally:
            await bus.close()

        assert [level for level, message in ours() if "connection lost" in message] == [logging.WARNING]
        assert [level for level, message in ours() if "restored" in message] == [logging.INFO]
        assert not [r.msg for r in caplog.records if r.levelno >= logging.ERROR], "an outage is no error"
        # Theirs: once each per outage (reconnecting connections can start a second "outage" apiece).
        theirs = [r.msg for r in caplog.records if r.name in amqp_logs.RECONNECT_LOGGERS]
        assert len(theirs) <= 2 * len(amqp_logs.RECONNECT_LOGGERS), theirs

    async def test_an_agent_queue_declared_as_a_quorum_queue_before_is_consumed_as_it_is(
        self, bus: AmqpBus, topology: Topology, amqp_url: str
    ) -> None:
        spec = self.spec(topology, "old-agent", Binding(topology.agent_commands, "old.#"), kind=QueueKind.AGENT)
        connection = await aio_pika.connect(amqp_url)
        async with connection, connection.channel() as channel:  # as the adapter declared it before
            arguments = {"x-queue-type": "quorum", "x-dead-letter-exchange": topology.dead, "x-delivery-limit": 7}
            await channel.declare_queue(spec.name, durable=True, arguments=arguments)
        handler = Recorder()
        await bus.subscribe(spec, handler)

        await bus.publish(topology.agent_commands, ping(1), "old.contract.ping")
        await eventually(lambda: handler.numbers() == [1], "the message on the old queue")

    async def test_messages_wait_in_the_queue_for_a_restarted_consumer(
        self, bus: AmqpBus, topology: Topology, amqp_url: str
    ) -> None:
        spec = self.spec(topology, "durable", Binding(topology.commands, "contract.ping"))
        subscription = await bus.subscribe(spec, Recorder())
        await subscription.cancel()
        sent = [ping(n) for n in range(5)]
        for envelope in sent:
            await bus.publish(topology.commands, envelope)
        await bus.close()

        restarted = AmqpBus(amqp_url, TYPES, topology, sender="contract-test")
        await restarted.start()
        try:
            handler = Recorder()
            await restarted.subscribe(spec, handler)
            await eventually(lambda: len(handler.seen) >= 5, "the messages published while nobody consumed")
            assert handler.ids() == {envelope.message_id for envelope in sent}
        finally:
            await restarted.close()

    async def test_dead_letters_made_by_rabbitmq_carry_its_reason(
        self, bus: AmqpBus, topology: Topology, amqp_url: str
    ) -> None:
        """What the broker dead-letters by itself (the crash safety net) is read from ``x-death``."""
        name = topology.queue_name("contract", "expiring")
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(
                name, arguments={"x-message-ttl": 0, "x-dead-letter-exchange": topology.dead}, auto_delete=True
            )
            await queue.bind(topology.commands, "contract.ping")
            sent = ping(4)
            await bus.publish(topology.commands, sent)
            (letter,) = await take_dead_letters(bus, 1)

        assert letter.reason == "dead-lettered by RabbitMQ: expired"
        assert letter.queue == name
        assert letter.exchange == topology.commands
        assert letter.routing_key == "contract.ping"
        assert letter.envelope is not None and letter.envelope.message_id == sent.message_id

    # Publisher-side batching: what only the AMQP adapter does.

    async def take_raw(
        self,
        amqp_url: str,
        topology: Topology,
        purpose: str,
        send: Callable[[], Awaitable[None]],
        *,
        expect: int = 0,
    ) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Bind a plain queue of our own to ``contract.ping`` on commands, run ``send``, and return the
        AMQP messages that arrived (at least ``expect`` of them, waiting up to 5 s), read past the
        adapter."""
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(topology.queue_name("contract", purpose), auto_delete=True)
            await queue.bind(topology.commands, "contract.ping")
            await send()
            messages: list[aio_pika.abc.AbstractIncomingMessage] = []

            async def drain() -> None:
                while (message := await queue.get(no_ack=True, fail=False)) is not None:
                    messages.append(message)

            deadline = asyncio.get_running_loop().time() + 5
            await drain()
            while len(messages) < expect and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
                await drain()
            return messages

    async def test_concurrent_publishes_travel_as_fewer_messages(
        self, bus: AmqpBus, topology: Topology, amqp_url: str
    ) -> None:
        sent = [ping(n) for n in range(200)]

        async def send() -> None:
            await asyncio.gather(*(bus.publish(topology.commands, envelope) for envelope in sent))
            await bus.publish(topology.commands, ping(999))  # alone: a plain message

        messages = await self.take_raw(amqp_url, topology, "wire", send)

        *batched, alone = messages
        assert 1 < len(batched) <= 10, [len(amqp_batch.unpack(m.body)) for m in batched]
        assert all(message.content_type == amqp_batch.BATCH_CONTENT_TYPE for message in batched)
        assert all(message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for message in batched)
        carried = [codec.decode(body, TYPES) for m in batched for body in amqp_batch.unpack(m.body)]
        assert [envelope.message_id for envelope in carried] == [envelope.message_id for envelope in sent]
        assert alone.content_type == CONTENT_TYPE and codec.decode(alone.body, TYPES).payload == Ping(n=999)
        assert (bus.batches.messages, bus.batches.envelopes) == (len(messages), 201)

    async def test_a_transient_publish_is_not_persisted_nor_batched(
        self, bus: AmqpBus, topology: Topology, amqp_url: str
    ) -> None:
        async def send() -> None:
            await asyncio.gather(*(bus.publish(topology.commands, ping(n), transient=True) for n in range(5)))
            await bus.publish(topology.commands, ping(99))  # confirmed

        messages = await self.take_raw(amqp_url, topology, "transient-wire", send, expect=6)

        # Transient and confirmed publishes go on channels of their own: no order between the two.
        modes = {codec.decode(m.body, TYPES).payload.n: m.delivery_mode for m in messages}
        transient, persistent = aio_pika.DeliveryMode.NOT_PERSISTENT, aio_pika.DeliveryMode.PERSISTENT
        assert modes == {**dict.fromkeys(range(5), transient), 99: persistent}
        assert (bus.batches.messages, bus.batches.envelopes) == (1, 1)  # only the confirmed one went through it

    async def test_every_envelope_of_a_batch_is_handled_once(self, bus: AmqpBus, topology: Topology) -> None:
        handler = Recorder()
        await bus.subscribe(
            self.spec(topology, "once", Binding(topology.commands, "contract.ping"), prefetch=8), handler
        )

        sent = [ping(n) for n in range(300)]
        await asyncio.gather(*(bus.publish(topology.commands, envelope) for envelope in sent))
        await eventually(lambda: len(handler.seen) >= 300, "every envelope")
        await asyncio.sleep(0.3)  # time for a wrong redelivery to show

        assert bus.batches.messages < 20
        assert sorted(handler.numbers()) == list(range(300))
        assert await bus.dead_letters() == []

    async def test_a_failing_envelope_of_a_batch_is_retried_alone_then_dead_lettered(
        self, bus: AmqpBus, topology: Topology
    ) -> None:
        attempts: collections.Counter[int] = collections.Counter()

        async def flaky(envelope: Envelope) -> None:
            n = envelope.payload.n
            attempts[n] += 1
            if n == 1 and attempts[n] < 2:
                raise RuntimeError("flaky once")
            if n == 2:
                raise RuntimeError("always broken")

        spec = self.spec(topology, "retry-batch", Binding(topology.commands, "contract.ping"), delivery_limit=3)
        await bus.subscribe(spec, flaky)
        sent = [ping(n) for n in range(10)]
        await asyncio.gather(*(bus.publish(topology.commands, envelope) for envelope in sent))
        assert bus.batches.messages == 1

        (letter,) = await take_dead_letters(bus, 1)
        await eventually(lambda: attempts[1] == 2, "the flaky envelope to succeed")
        await asyncio.sleep(0.3)  # time for a wrong rerun of the siblings to show
        assert attempts == {0: 1, 1: 2, 2: 3, **{n: 1 for n in range(3, 10)}}
        assert "delivery limit 3 reached" in letter.reason and "always broken" in letter.reason
        assert (letter.queue, letter.exchange, letter.routing_key) == (spec.name, topology.commands, "contract.ping")
        assert letter.envelope is not None and letter.envelope.message_id == sent[2].message_id
        assert codec.decode(letter.body, TYPES).message_id == sent[2].message_id
        assert await bus.dead_letters() == []

    async def test_a_poison_envelope_of_a_batch_is_dead_lettered_alone(self, bus: AmqpBus, topology: Topology) -> None:
        async def refuse_three(envelope: Envelope) -> None:
            if envelope.payload.n == 3:
                raise PoisonMessage("three is not a job")

        handler = Recorder(refuse_three)
        spec = self.spec(topology, "poison-batch", Binding(topology.commands, "contract.ping"))
        await bus.subscribe(spec, handler)
        sent = [ping(n) for n in range(6)]
        await asyncio.gather(*(bus.publish(topology.commands, envelope) for envelope in sent))
        assert bus.batches.messages == 1

        (letter,) = await take_dead_letters(bus, 1)
        await asyncio.sleep(0.3)
        assert sorted(handler.numbers()) == list(range(6))
        assert "three is not a job" in letter.reason
        assert (letter.queue, letter.exchange, letter.routing_key) == (spec.name, topology.commands, "contract.ping")
        assert letter.envelope is not None and letter.envelope.message_id == sent[3].message_id
        assert await bus.dead_letters() == []

    async def test_undecodable_envelopes_of_a_batch_are_dead_lettered_each_alone(
        self, bus: AmqpBus, topology: Topology, amqp_url: str
    ) -> None:
        handler = Recorder()
        spec = self.spec(topology, "garbage-batch", Binding(topology.commands, "contract.#"))
        await bus.subscribe(spec, handler)
        good, stranger = ping(1), Envelope(Stranger(n=5))
        bodies = [codec.encode(good), b"\x93not an envelope", codec.encode(stranger)]
        connection = await aio_pika.connect(amqp_url)
        async with connection, connection.channel() as channel:
            exchange = await channel.get_exchange(topology.commands, ensure=False)
            for body in (amqp_batch.pack(bodies), b"\x00\x00\x01"):  # a batch, then no batch at all
                message = aio_pika.Message(body, content_type=amqp_batch.BATCH_CONTENT_TYPE)
                await exchange.publish(message, "contract.mixed")

        letters = await take_dead_letters(bus, 3)
        assert handler.ids() == {good.message_id}
        by_body = {letter.body: letter for letter in letters}
        assert "undecodable" in by_body[bodies[1]].reason and by_body[bodies[1]].envelope is None
        assert "unknown message type 'contract.stranger'" in by_body[bodies[2]].reason
        assert "undecodable batch" in by_body[b"\x00\x00\x01"].reason
        assert {(letter.queue, letter.routing_key) for letter in letters} == {(spec.name, "contract.mixed")}

    async def test_a_bad_envelope_of_a_batch_goes_alone_and_its_good_sibling_is_handled_once(
        self, bus: AmqpBus, topology: Topology, amqp_url: str
    ) -> None:
        handler = Recorder()
        spec = self.spec(topology, "overflow-batch", Binding(topology.commands, "contract.#"), delivery_limit=8)
        await bus.subscribe(spec, handler)
        good, bad = ping(1), far_future(ping(2))
        connection = await aio_pika.connect(amqp_url)
        async with connection, connection.channel() as channel:
            exchange = await channel.get_exchange(topology.commands, ensure=False)
            batch = amqp_batch.pack([codec.encode(good), bad])
            await exchange.publish(aio_pika.Message(batch, content_type=amqp_batch.BATCH_CONTENT_TYPE), "contract.ping")

        (letter,) = await take_dead_letters(bus, 1)
        await asyncio.sleep(0.3)  # time for a wrong redelivery of the batch to show
        assert handler.ids() == {good.message_id} and len(handler.seen) == 1
        assert letter.body == bad and letter.envelope is None
        assert "undecodable" in letter.reason and "1e+20" in letter.reason
        assert (letter.queue, letter.routing_key) == (spec.name, "contract.ping")
        assert await bus.dead_letters() == []

    async def test_a_batch_dead_lettered_by_rabbitmq_reads_back_as_one_letter_per_envelope(
        self, bus: AmqpBus, topology: Topology, amqp_url: str
    ) -> None:
        name = topology.queue_name("contract", "expiring-batch")
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(
                name, arguments={"x-message-ttl": 0, "x-dead-letter-exchange": topology.dead}, auto_delete=True
            )
            await queue.bind(topology.commands, "contract.ping")
            sent = [ping(n) for n in range(4)]
            await asyncio.gather(*(bus.publish(topology.commands, envelope) for envelope in sent))
            assert bus.batches.messages == 1
            letters = await take_dead_letters(bus, 4)

        assert [letter.envelope.message_id for letter in letters] == [envelope.message_id for envelope in sent]
        assert {(letter.reason, letter.queue, letter.routing_key) for letter in letters} == {
            ("dead-lettered by RabbitMQ: expired", name, "contract.ping")
        }

    async def test_batches_survive_dropped_connections_and_lose_no_confirmed_envelope(
        self, bus: AmqpBus, topology: Topology, amqp_vhost: Vhost
    ) -> None:
        async def slowish(envelope: Envelope) -> None:
            await asyncio.sleep(0.001)

        handler = Recorder(slowish)
        spec = self.spec(topology, "drop-batch", Binding(topology.events, "contract.#"), prefetch=4)
        await bus.subscribe(spec, handler)
        confirmed: list[str] = []
        failed: list[BaseException] = []

        async def wave(first: int, count: int) -> None:
            async def publish(n: int) -> None:
                envelope = ping(n)
                await bus.publish(topology.events, envelope)
                confirmed.append(envelope.message_id)

            for outcome in await asyncio.gather(*(publish(first + i) for i in range(count)), return_exceptions=True):
                if isinstance(outcome, BaseException):
                    failed.append(outcome)

        await wave(0, 500)
        await eventually(lambda: len(handler.seen) >= 50, "consuming to be under way")
        dropping = asyncio.create_task(asyncio.to_thread(amqp_vhost.close_all_connections, "test"))
        n = 500
        while not dropping.done():  # publishing while the broker drops us, batches in flight
            await wave(n, 100)
            n += 100
        assert await dropping >= 2, "the publisher's and the consumer's connections were both dropped"
        await wave(n, 500)
        n += 500

        await eventually(lambda: set(confirmed) <= handler.ids(), "every confirmed envelope", timeout=30)
        assert not failed and len(confirmed) == n
        assert bus.batches.messages < n / 5
        assert await bus.dead_letters() == []
