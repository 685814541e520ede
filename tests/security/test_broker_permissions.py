"""An agent's own broker credentials, against the real RabbitMQ (and its management API).

Each test provisions two agents, A and B, as the resource manager does, on a vhost of its own, and
speaks AMQP as agent A with A's own user: what the issue did with the one shared broker URL must be
refused, and A's own work must still go through. Every user made here is deleted.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractChannel
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed
from yarl import URL

from broker import codec
from broker.amqp import AmqpBus
from broker.envelope import Envelope
from broker.topology import Topology
from schemas.jobs import JobState, RunJob, SubmitTask, TaskCompleted
from schemas.pool import NodeMemory, ReadMemory
from schemas.registry import all_message_types
from schemas.resources import DeleteResource, Heartbeat, HostFacts, RegisterResource
from services.agent.agent import Agent
from services.resource_manager.broker_users import BrokerUsers
from services.resource_manager.handlers import ResourceManager
from services.resource_manager.repository import resources_collection
from services.security import (
    broker_password,
    broker_password_hash,
    broker_username,
    hash_token,
    new_token,
    signed_by,
    verify_key,
)
from services.settings import Settings
from services.store.sqlite import SqliteDocumentStore
from services.wiring import make_agent_bus
from tests.delivery import deliver
from tests.rabbit import Vhost, fresh_vhost, unavailable, unique_namespace

pytestmark = pytest.mark.amqp

ADMIN_URL = os.environ.get("SKYBUS_TEST_BROKER_ADMIN_URL") or "http://guest:guest@127.0.0.1:15672"


@dataclass
class Fleet:
    vhost: Vhost
    topology: Topology
    services: AmqpBus
    users: BrokerUsers
    a: str
    a_token: str
    b: str

    def agent_url(self, resource_id: str, token: str) -> str:
        """The vhost's URL with no user: the agent puts in its own."""
        url = URL(self.vhost.url).with_user(None).with_password(None)
        return str(url.with_user(broker_username(resource_id)).with_password(broker_password(token)))


async def management_reachable() -> bool:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            async with session.get(str(URL(ADMIN_URL).with_user(None).with_password(None) / "api" / "overview")) as r:
                return r.status in (200, 401)
    except (aiohttp.ClientError, TimeoutError):
        return False


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    if not await management_reachable():
        unavailable("the RabbitMQ management API is not reachable (rabbitmq-plugins enable rabbitmq_management)")
    with fresh_vhost("skybus-sec") as vhost:
        topology = Topology(unique_namespace("sec"))
        services = AmqpBus(vhost.url, all_message_types(), topology, sender="services")
        await services.start()  # declares the exchanges, as the services do
        users = BrokerUsers(ADMIN_URL, vhost.name, topology)
        a, b = str(uuid.uuid4()), str(uuid.uuid4())
        a_token, b_token = new_token(), new_token()
        try:
            await users.grant(a, broker_password_hash(a_token))
            await users.grant(b, broker_password_hash(b_token))
            # The agents' durable queues exist, as they do once their agents ran; B's has a consumer.
            await services.subscribe(topology.agent_queue(b), _ignore)
            await (await services.subscribe(topology.agent_queue(a), _ignore)).cancel()
            yield Fleet(vhost, topology, services, users, a, a_token, b)
        finally:
            await services.close()
            await users.revoke(a)
            await users.revoke(b)
            await users.close()


async def _ignore(envelope: Envelope) -> None:
    return None


async def as_agent_a(fleet: Fleet, action: Callable[[AbstractChannel], Awaitable[object]]) -> None:
    """Run ``action`` on a channel of agent A's own connection (confirms on, so a refused publish
    is seen)."""
    connection = await aio_pika.connect(fleet.agent_url(fleet.a, fleet.a_token))
    try:
        channel = await connection.channel(publisher_confirms=True)
        await action(channel)
    finally:
        await connection.close()


async def refused(fleet: Fleet, action: Callable[[AbstractChannel], Awaitable[object]]) -> str:
    with pytest.raises(ChannelAccessRefused) as refusal:
        await as_agent_a(fleet, action)
    return str(refusal.value)


def publishing(exchange: str, routing_key: str, envelope: Envelope) -> Callable[[AbstractChannel], Awaitable[object]]:
    async def publish(channel: AbstractChannel) -> None:
        target = channel.default_exchange if exchange == "" else await channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(codec.encode(envelope)), routing_key=routing_key)

    return publish


def completed(job_id: str, resource_id: str) -> Envelope:
    outcome = TaskCompleted(job_id=job_id, at=time.time(), outcome=JobState.SUCCEEDED, exit_code=0)
    return Envelope(outcome, sender=f"agent:{resource_id}", resource_id=resource_id)


async def test_cannot_consume_another_agents_queue(fleet: Fleet) -> None:
    queue_of_b = fleet.topology.agent_queue(fleet.b).name

    async def take(channel: AbstractChannel) -> None:
        queue = await channel.get_queue(queue_of_b, ensure=False)
        await queue.get(fail=False)

    async def consume(channel: AbstractChannel) -> None:
        queue = await channel.get_queue(queue_of_b, ensure=False)
        await queue.consume(_ignore_message)

    assert queue_of_b in await refused(fleet, take)
    assert queue_of_b in await refused(fleet, consume)


async def _ignore_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    return None


@pytest.mark.parametrize("key", ["#", "*.agent.*", "{b}.agent.*", "{b}.#"])
async def test_cannot_bind_to_others_commands(fleet: Fleet, key: str) -> None:
    key = key.format(b=fleet.b)
    own = fleet.topology.agent_queue(fleet.a)

    async def bind(channel: AbstractChannel) -> None:
        queue = await channel.declare_queue(own.name, passive=True)
        await queue.bind(fleet.topology.agent_commands, key)

    assert "access to topic" in await refused(fleet, bind)


async def test_cannot_make_a_queue_of_its_own_choosing(fleet: Fleet) -> None:
    async def spy(channel: AbstractChannel) -> None:
        await channel.declare_queue(f"{fleet.topology.namespace}.spy", exclusive=True)

    await refused(fleet, spy)


async def test_cannot_publish_commands_to_managers(fleet: Fleet) -> None:
    run = Envelope(RunJob(job_id=str(uuid.uuid4()), user="admin", command="id"), sender="gateway")
    assert "access to exchange" in await refused(fleet, publishing(fleet.topology.commands, "job.run", run))


async def test_cannot_publish_trusted_events(fleet: Fleet) -> None:
    unsigned = completed(str(uuid.uuid4()), fleet.b)
    assert "access to exchange" in await refused(fleet, publishing(fleet.topology.events, "task.completed", unsigned))


async def test_cannot_speak_for_another_host(fleet: Fleet) -> None:
    forged = completed(str(uuid.uuid4()), fleet.b)
    key = fleet.topology.agent_routing_key(fleet.b, "task.completed")
    assert "access to topic" in await refused(fleet, publishing(fleet.topology.agent_events, key, forged))


async def test_cannot_send_a_task_to_another_agent(fleet: Fleet) -> None:
    submit = Envelope(
        SubmitTask(job_id=str(uuid.uuid4()), command="id"), sender="resource-manager", resource_id=fleet.b
    )
    key = fleet.topology.agent_routing_key(fleet.b, submit.type)
    assert "access to topic" in await refused(fleet, publishing(fleet.topology.agent_commands, key, submit))
    # Nor straight into its queue by name, through the default exchange.
    queue_of_b = fleet.topology.agent_queue(fleet.b).name
    assert "amq.default" in await refused(fleet, publishing("", queue_of_b, submit))


async def test_cannot_publish_as_another_broker_user(fleet: Fleet) -> None:
    """RabbitMQ validates ``user_id``: A cannot name B's broker user on what it publishes (which the
    resource manager takes as proof of a heartbeat's host), even under a routing key of its own."""
    facts = HostFacts(hostname="a", os_family="linux", arch="x86_64", os_info="Debian 12")
    beat = Envelope(Heartbeat(facts=facts), sender=f"agent:{fleet.a}", resource_id=fleet.a)
    key = fleet.topology.agent_routing_key(fleet.a, beat.type)

    async def publish_as_b(channel: AbstractChannel) -> None:
        exchange = await channel.get_exchange(fleet.topology.agent_events, ensure=False)
        await exchange.publish(aio_pika.Message(codec.encode(beat), user_id=broker_username(fleet.b)), routing_key=key)

    with pytest.raises(ChannelPreconditionFailed, match="user_id"):
        await as_agent_a(fleet, publish_as_b)


async def test_does_its_own_work(fleet: Fleet, tmp_path: Path) -> None:
    """A's agent, on its own confined bus: consumes its queues, heartbeats under its id, and answers a
    live query end to end (asked with the reply over agent-events, as the gateway asks)."""
    settings = Settings(
        amqp_url=str(URL(fleet.vhost.url).with_user(None).with_password(None)), namespace=fleet.topology.namespace
    )
    bus = make_agent_bus(settings, resource_id=fleet.a, token=fleet.a_token)
    await bus.start()
    beats: asyncio.Queue[Envelope] = asyncio.Queue()

    async def heard(envelope: Envelope) -> None:
        await beats.put(envelope)

    await fleet.services.subscribe(fleet.topology.resource_manager_heartbeats(), heard)
    agent = Agent(
        bus,
        fleet.topology,
        resource_id=fleet.a,
        token=fleet.a_token,
        heartbeat_interval=0.2,
        state_dir=tmp_path / "agent",
        gateway_url=lambda: "http://127.0.0.1:9",
    )
    await agent.start()
    try:
        beat = await asyncio.wait_for(beats.get(), 10)
        assert isinstance(beat.payload, Heartbeat) and beat.resource_id == fleet.a
        assert signed_by(beat, verify_key(fleet.a_token))
        assert beat.publisher == broker_username(fleet.a)  # the broker's validated user id reaches the consumer

        query = Envelope(ReadMemory(deadline=time.time() + 10), sender="gateway", resource_id=fleet.a)
        answer = await fleet.services.request(
            fleet.topology.agent_commands,
            query,
            routing_key=fleet.topology.agent_routing_key(fleet.a, query.type),
            timeout=10,
            reply_exchange=fleet.topology.agent_events,
        )
        assert isinstance(answer.payload, NodeMemory)
        assert answer.causation_id == query.message_id and signed_by(answer, verify_key(fleet.a_token))

        # A command for A reaches A's durable queue, which A consumes.
        consumers = await queue_consumers(fleet, fleet.topology.agent_queue(fleet.a).name)
        assert consumers == 1
    finally:
        await agent.stop()
        await bus.close()


async def queue_consumers(fleet: Fleet, queue: str) -> int:
    base = URL(ADMIN_URL)
    url = base.with_user(None).with_password(None) / "api" / "queues" / fleet.vhost.name / queue
    auth = aiohttp.encode_basic_auth(base.user or "", base.password or "")
    async with aiohttp.ClientSession(headers={"Authorization": auth}) as session:
        for _ in range(100):  # the management API counts consumers a moment after they start
            async with session.get(url) as response:
                assert response.status == 200
                consumers = (await response.json()).get("consumers")
            if consumers:
                return consumers
            await asyncio.sleep(0.1)
    return 0


async def test_a_deleted_resource_loses_its_broker_user(fleet: Fleet, tmp_path: Path) -> None:
    """Through the resource manager's own handlers: registered, A's agent connects; deleted, its user
    is gone and its connection closed."""
    store = await SqliteDocumentStore.open(tmp_path / "rm.db")
    manager = ResourceManager(
        bus=fleet.services,
        topology=fleet.topology,
        resources=await resources_collection(store),
        responding_timeout=5,
        broker_users=fleet.users,
    )
    resource_id, token = str(uuid.uuid4()), new_token()
    try:
        registration = RegisterResource(
            resource_id=resource_id,
            hostname="doomed",
            user="steve",
            token_hash=hash_token(token),
            verify_key=verify_key(token),
            broker_password_hash=broker_password_hash(token),
        )
        await deliver(manager.register_resource, Envelope(registration, sender="gateway"))
        connection = await aio_pika.connect(fleet.agent_url(resource_id, token))
        assert await management_user_exists(broker_username(resource_id))

        await deliver(manager.delete_resource, Envelope(DeleteResource(resource_id=resource_id), sender="gateway"))
        assert not await management_user_exists(broker_username(resource_id))
        with pytest.raises((aio_pika.exceptions.AMQPError, RuntimeError)):  # closed by the broker
            await asyncio.wait_for(connection.channel(), 5)
        with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
            await aio_pika.connect(fleet.agent_url(resource_id, token))
    finally:
        await fleet.users.revoke(resource_id)
        await store.close()


async def management_user_exists(user: str) -> bool:
    base = URL(ADMIN_URL)
    url = base.with_user(None).with_password(None) / "api" / "users" / user
    auth = aiohttp.encode_basic_auth(base.user or "", base.password or "")
    async with aiohttp.ClientSession(headers={"Authorization": auth}) as session:
        async with session.get(url) as response:
            return response.status == 200
