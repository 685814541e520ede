"""On the real RabbitMQ, with an agent's own broker credentials: an event genuinely signed by another
host (a replay) but published under the agent's own key, the only one the broker lets it use, is
dropped and counted by the manager; the agent's own event under its own key is taken.

The broker keeps the key honest (``test_broker_permissions``), the signature the body; the manager
checks that both name one host (``services.security.routed_from_its_host``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aio_pika
import pytest

from broker import codec
from broker.envelope import Envelope
from schemas.resources import Heartbeat, HostFacts, RegisterResource
from services.resource_manager.handlers import ResourceManager
from services.resource_manager.repository import resources_collection
from services.security import broker_password_hash, hash_token, new_token, signing_key, verify_key
from services.store.sqlite import SqliteDocumentStore
from tests.delivery import deliver
from tests.security.test_broker_permissions import Fleet
from tests.security.test_broker_permissions import fleet as fleet  # a fixture

pytestmark = pytest.mark.amqp


def heartbeat(resource_id: str, token: str) -> Envelope:
    facts = HostFacts(hostname=resource_id[:8], os_family="linux", arch="x86_64", os_info="test")
    payload = Heartbeat(facts=facts, agent_started_at=time.time())
    beat = Envelope(payload, sender=f"agent:{resource_id}", resource_id=resource_id)
    return beat.with_signature(signing_key(token).sign(codec.signed_bytes(beat)))


async def test_another_hosts_signed_event_under_the_agents_own_key_is_dropped(
    fleet: Fleet,
    tmp_path: Path,
) -> None:
    store = await SqliteDocumentStore.open(tmp_path / "rm.db")
    manager = ResourceManager(
        bus=fleet.services,
        topology=fleet.topology,
        resources=await resources_collection(store),
        responding_timeout=30,
        broker_users=fleet.users,
    )
    victim, victim_token = str(uuid.uuid4()), new_token()
    try:
        for rid, token, name in ((fleet.a, fleet.a_token, "host-a"), (victim, victim_token, "victim")):
            registration = RegisterResource(
                resource_id=rid,
                hostname=name,
                user="steve",
                token_hash=hash_token(token),
                verify_key=verify_key(token),
                broker_password_hash=broker_password_hash(token),
            )
            await deliver(manager.register_resource, Envelope(registration, sender="gateway"))
        await fleet.services.subscribe(fleet.topology.resource_manager_heartbeats(), manager.heartbeat_router())

        replayed = heartbeat(victim, victim_token)  # as the victim signed it
        own = heartbeat(fleet.a, fleet.a_token)
        connection = await aio_pika.connect(fleet.agent_url(fleet.a, fleet.a_token))
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(fleet.topology.agent_events, ensure=False)
            own_key = fleet.topology.agent_routing_key(fleet.a, "host.heartbeat")
            for envelope in (replayed, own):  # both confirmed: the broker lets A use its own key
                await exchange.publish(aio_pika.Message(codec.encode(envelope)), routing_key=own_key)
        finally:
            await connection.close()

        async with asyncio.timeout(10):
            while not (await store_says_responding(manager, fleet.a) and manager.rejected_events):
                await asyncio.sleep(0.05)
        assert manager.rejected_events == {"wrong routing key": 1}
        assert not await store_says_responding(manager, victim)
    finally:
        await fleet.users.revoke(victim)
        await store.close()


async def store_says_responding(manager: ResourceManager, resource_id: str) -> bool:
    stored = await manager.resources.get(resource_id)
    return bool(stored and stored["responding"])
