"""The resource manager's handlers, called directly: a real SQLite store, a bus that records."""

from __future__ import annotations

from dataclasses import replace

import pytest

from broker import codec
from broker.envelope import Envelope
from broker.port import Drop
from broker.topology import Topology
from schemas.base import Accepted, Rejected
from schemas.resources import (
    AuthorizeResource,
    DeleteResource,
    Heartbeat,
    HostChanged,
    HostDeleted,
    HostFacts,
    RegisterResource,
)
from services.resource_manager.handlers import ResourceManager
from services.resource_manager.repository import resources_collection
from services.security import broker_username, hash_token, new_agent_credentials, signing_key
from services.store.sqlite import SqliteDocumentStore
from tests.delivery import deliver

FACTS = HostFacts(hostname="web-1", os_family="linux", arch="x86_64", os_info="Debian 12")


class RecordingBus:
    def __init__(self) -> None:
        self.published: list[tuple[str, Envelope]] = []
        self.routing_keys: dict[str, str | None] = {}  # by message id
        self.forwarded: list[tuple[str, str, Envelope]] = []

    async def publish(
        self, exchange: str, envelope: Envelope, routing_key: str | None = None, *, transient: bool = False
    ) -> None:
        self.published.append((exchange, envelope))
        self.routing_keys[envelope.message_id] = routing_key

    async def forward(self, exchange: str, envelope: Envelope, routing_key: str) -> None:
        self.forwarded.append((exchange, routing_key, envelope))

    async def request(self, exchange: str, envelope: Envelope, *, routing_key=None, timeout: float = 10.0) -> Envelope:
        self.published.append((exchange, envelope))
        return envelope.caused(Accepted(id=getattr(envelope.payload, "item_id", None)))

    def payloads(self, kind: type) -> list:
        return [e.payload for _, e in self.published if isinstance(e.payload, kind)]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def manager(tmp_path):
    store = await SqliteDocumentStore.open(tmp_path / "rm.db")
    manager = ResourceManager(
        bus=RecordingBus(),  # type: ignore[arg-type]
        topology=Topology("t"),
        resources=await resources_collection(store),
        responding_timeout=15.0,
        clock=Clock(),
    )
    yield manager
    await store.close()


def registration(hostname: str = "web-1") -> tuple[RegisterResource, str]:
    token, token_hash, verify_key = new_agent_credentials()
    command = RegisterResource(
        resource_id=f"id-{hostname}", hostname=hostname, user="steve", token_hash=token_hash, verify_key=verify_key
    )
    return command, token


def signed(envelope: Envelope, token: str) -> Envelope:
    return envelope.with_signature(signing_key(token).sign(codec.signed_bytes(envelope)))


async def registered(manager: ResourceManager, hostname: str = "web-1") -> tuple[str, str]:
    command, token = registration(hostname)
    assert await deliver(manager.register_resource, Envelope(command)) == Accepted(id=command.resource_id)
    [registered] = manager.bus.payloads(HostChanged)
    assert registered.change == "registered" and registered.resource_id == command.resource_id
    manager.bus.published.clear()
    return command.resource_id, token


async def test_register_stores_only_hashes(manager: ResourceManager) -> None:
    resource_id, token = await registered(manager)
    stored = await manager.resources.get(resource_id)
    assert stored["hostname"] == "web-1" and stored["user"] == "steve"
    assert stored["state"] == "inactive" and stored["responding"] is False
    assert token not in str(stored)


async def test_redelivered_register_is_accepted_once(manager: ResourceManager) -> None:
    command, _ = registration()
    envelope = Envelope(command)
    assert await deliver(manager.register_resource, envelope) == Accepted(id=command.resource_id)
    assert await deliver(manager.register_resource, envelope) == Accepted(id=command.resource_id)
    assert await manager.resources.count() == 1


async def test_hostname_taken_is_rejected(manager: ResourceManager) -> None:
    await registered(manager)
    other, _ = registration()
    other = other.model_copy(update={"resource_id": "another"})
    reply = await deliver(manager.register_resource, Envelope(other))
    assert isinstance(reply, Rejected) and reply.status == 400 and "already registered" in reply.error


async def test_delete_then_again_is_404_and_publishes_once(manager: ResourceManager) -> None:
    resource_id, _ = await registered(manager)
    assert await deliver(manager.delete_resource, Envelope(DeleteResource(resource_id=resource_id))) == Accepted(
        id=resource_id
    )
    again = await deliver(manager.delete_resource, Envelope(DeleteResource(resource_id=resource_id)))
    assert isinstance(again, Rejected) and again.status == 404
    assert manager.bus.payloads(HostDeleted) == [HostDeleted(resource_id=resource_id)]


async def test_a_heartbeat_is_stored_only_on_a_transition_and_never_republished(manager: ResourceManager) -> None:
    resource_id, token = await registered(manager)
    beat = signed(Envelope(Heartbeat(facts=FACTS, agent_started_at=5.0), resource_id=resource_id), token)
    await deliver(manager.heartbeat, codec.decode(codec.encode(beat), manager_types()))
    stored = await manager.resources.get(resource_id)
    assert stored["responding"] is True and stored["last_response_time"] == manager.clock()
    assert stored["facts"]["os_family"] == "linux"
    [(exchange, changed)] = manager.bus.published  # the transition, not the heartbeat
    assert exchange == "t.events" and changed.causation_id == beat.message_id
    assert changed.payload.change == "responding" and changed.payload.responding is True
    assert changed.payload.version == stored["version"] and changed.payload.verify_key == stored["verify_key"]

    # More beats of a responding host: kept in memory; stored now and then, never published.
    manager.bus.published.clear()
    for _ in range(7):
        manager.clock.now += 5
        await deliver(
            manager.heartbeat,
            signed(Envelope(Heartbeat(facts=FACTS, agent_started_at=5.0), resource_id=resource_id), token),
        )
    assert manager.bus.published == []
    assert (await manager.resources.get(resource_id))["version"] == stored["version"] + 1  # 1 write in 35 s

    # A restarted agent is a transition.
    manager.clock.now += 1
    restarted = Heartbeat(facts=FACTS, agent_started_at=manager.clock.now, running_jobs=["j1"])
    await deliver(manager.heartbeat, signed(Envelope(restarted, resource_id=resource_id), token))
    [changed] = manager.bus.payloads(HostChanged)
    assert changed.change == "restarted" and changed.running_jobs == ["j1"]


@pytest.mark.parametrize("forgery", ["unsigned", "wrong token", "other host", "unknown host"])
async def test_forged_events_are_dropped_and_counted(manager: ResourceManager, forgery: str) -> None:
    resource_id, token = await registered(manager)
    victim_id, _ = await registered(manager, "web-2")
    beat = Envelope(Heartbeat(facts=FACTS), resource_id=resource_id)
    if forgery == "unsigned":
        event = beat
    elif forgery == "wrong token":
        event = signed(beat, "not-the-token")
    elif forgery == "other host":
        event = replace(signed(beat, token), resource_id=victim_id)
    else:
        event = signed(replace(beat, resource_id="no-such-host"), token)
    with pytest.raises(Drop):
        await deliver(manager.heartbeat, event)
    assert sum(manager.rejected_events.values()) == 1
    for rid in (resource_id, victim_id):
        assert (await manager.resources.get(rid))["responding"] is False
    assert manager.bus.published == []


@pytest.mark.parametrize("publisher", ["its own broker user", "its own broker user, unsigned", "another", "none"])
async def test_a_heartbeat_is_proven_by_its_hosts_broker_user_or_else_by_its_signature(
    manager: ResourceManager, publisher: str
) -> None:
    """The broker's validated user id vouches for a heartbeat of the host whose broker user it is, so
    its signature is not checked (here it would not verify); any other publisher needs the signature."""
    resource_id, _ = await registered(manager)
    other_id, _ = await registered(manager, "web-2")
    beat = Envelope(Heartbeat(facts=FACTS), resource_id=resource_id)
    if publisher != "its own broker user, unsigned":
        beat = signed(beat, "not-the-token")
    who = {"another": broker_username(other_id), "none": None}.get(publisher, broker_username(resource_id))
    key = manager.topology.agent_routing_key(resource_id, Heartbeat.message_type)
    event = beat.delivered_under(key, publisher=who)
    if publisher == "its own broker user":
        await deliver(manager.heartbeat, event)
        assert (await manager.resources.get(resource_id))["responding"] is True
        assert manager.proofs == {"broker user": 1} and not manager.rejected_events
        return
    with pytest.raises(Drop):
        await deliver(manager.heartbeat, event)
    assert sum(manager.rejected_events.values()) == 1 and not manager.proofs
    assert (await manager.resources.get(resource_id))["responding"] is False


async def test_replayed_heartbeat_is_dropped(manager: ResourceManager) -> None:
    resource_id, token = await registered(manager)
    beat = signed(Envelope(Heartbeat(facts=FACTS), resource_id=resource_id), token)
    await deliver(manager.heartbeat, beat)
    with pytest.raises(Drop, match="stale"):
        await deliver(manager.heartbeat, beat)


async def test_sweep_marks_silent_hosts_once(manager: ResourceManager) -> None:
    resource_id, token = await registered(manager)
    silent_id, _ = await registered(manager, "web-2")
    await manager.resources.update(silent_id, {"responding": True, "last_response_time": manager.clock.now - 100})
    await deliver(manager.heartbeat, signed(Envelope(Heartbeat(facts=FACTS), resource_id=resource_id), token))
    manager.clock.now += 10
    assert await manager.sweep_silent_hosts() == 0
    manager.clock.now += 10
    assert await manager.sweep_silent_hosts() == 1
    assert await manager.sweep_silent_hosts() == 0
    stored = await manager.resources.get(resource_id)
    assert stored["responding"] is False and stored["last_response_time"] == manager.clock.now - 20
    # A host stored as responding but not heard since this process started is judged from its start.
    manager.clock.now += 10
    assert await manager.sweep_silent_hosts() == 1
    assert (await manager.resources.get(silent_id))["last_response_time"] == manager.clock.now - 130
    [responding, changed, _] = manager.bus.payloads(HostChanged)
    assert responding.change == "responding"
    assert changed.change == "unresponsive" and changed.resource_id == resource_id and not changed.responding


def manager_types():
    from schemas.registry import all_message_types

    return all_message_types()


async def test_commands_for_an_agent_are_forwarded_untouched_or_refused_at_once(manager: ResourceManager) -> None:
    from schemas.jobs import AgentCommandRefused, SubmitTask

    resource_id, token = await registered(manager)
    command = Envelope(SubmitTask(job_id="j1", command="true"), resource_id=resource_id)
    with pytest.raises(Drop, match="not responding"):
        await deliver(manager.forward_to_agent, codec.decode(codec.encode(command), manager_types()))
    [(exchange, refusal)] = manager.bus.published
    assert exchange == "t.events" and refusal.payload == AgentCommandRefused(
        resource_id=resource_id, command_type="agent.submit_task", job_id="j1", reason="host is not responding"
    )

    await deliver(manager.heartbeat, signed(Envelope(Heartbeat(facts=FACTS), resource_id=resource_id), token))
    manager.bus.published.clear()
    received = codec.decode(codec.encode(command), manager_types())
    await deliver(manager.forward_to_agent, received)
    [(exchange, forwarded)] = manager.bus.published
    assert exchange == "t.agent-commands" and forwarded.message_id == command.message_id
    assert codec.encode_payload(forwarded) == received.payload_bytes  # the payload, byte for byte

    with pytest.raises(Drop, match="unknown resource"):
        await deliver(manager.forward_to_agent, Envelope(SubmitTask(job_id="j2", command="true"), resource_id="nobody"))


# Hosts that join with a cluster join token, adoption, and authorization.


def joining(
    hostname: str = "web-1", resource_id: str = "joiner", *, proof: str | None = None
) -> tuple[RegisterResource, str]:
    """A join command; ``proof`` is the token of the registration it adopts, if any."""
    token, token_hash, verify_key = new_agent_credentials()
    command = RegisterResource(
        resource_id=resource_id,
        hostname=hostname,
        user="",
        token_hash=token_hash,
        verify_key=verify_key,
        authorized=False,
        joined=True,
        registration_token_hash=None if proof is None else hash_token(proof),
    )
    return command, token


async def test_a_joined_host_is_unauthorized_and_joining_again_is_the_same_host(manager: ResourceManager) -> None:
    command, _ = joining()
    assert await deliver(manager.register_resource, Envelope(command)) == Accepted(id="joiner")
    assert await deliver(manager.register_resource, Envelope(command)) == Accepted(
        id="joiner"
    )  # redelivered or rejoined
    stored = await manager.resources.get("joiner")
    assert stored["authorized"] is False and stored["joined"] is True and stored["user"] == ""
    assert await manager.resources.count() == 1


@pytest.mark.parametrize("first", ["joined", "heartbeated"])
async def test_a_hostname_in_use_is_a_409_for_a_joining_host(manager: ResourceManager, first: str) -> None:
    if first == "joined":
        taken, _ = joining(resource_id="first")
        await deliver(manager.register_resource, Envelope(taken))
    else:  # registered by an admin, and its agent already spoke with the admin's token
        resource_id, token = await registered(manager)
        await deliver(manager.heartbeat, signed(Envelope(Heartbeat(facts=FACTS), resource_id=resource_id), token))
    before = (await manager.resources.find({}, limit=10)).items
    reply = await deliver(manager.register_resource, Envelope(joining(resource_id="second")[0]))
    assert isinstance(reply, Rejected) and reply.status == 409 and "in use" in reply.error
    assert (await manager.resources.find({}, limit=10)).items == before


async def test_a_joining_host_cannot_take_an_id_in_use(manager: ResourceManager) -> None:
    resource_id, _ = await registered(manager, "web-2")
    reply = await deliver(manager.register_resource, Envelope(joining("web-1", resource_id=resource_id)[0]))
    assert isinstance(reply, Rejected) and reply.status == 409 and "id" in reply.error
    assert await manager.resources.count() == 1


async def test_a_joining_host_adopts_a_registration_no_agent_used(manager: ResourceManager) -> None:
    resource_id, admins_token = await registered(manager)
    command, token = joining(proof=admins_token)
    assert await deliver(manager.register_resource, Envelope(command)) == Accepted(id=resource_id)
    assert await deliver(manager.register_resource, Envelope(command)) == Accepted(
        id=resource_id
    )  # retried after a crash
    stored = await manager.resources.get(resource_id)
    assert stored["authorized"] is True and stored["joined"] is True and stored["user"] == "steve"
    assert stored["token_hash"] == command.token_hash and await manager.resources.count() == 1

    # The joined agent speaks for the host; the token the admin was given no longer does.
    with pytest.raises(Drop, match="bad signature"):
        await deliver(
            manager.heartbeat, signed(Envelope(Heartbeat(facts=FACTS), resource_id=resource_id), admins_token)
        )
    await deliver(manager.heartbeat, signed(Envelope(Heartbeat(facts=FACTS), resource_id=resource_id), token))
    assert (await manager.resources.get(resource_id))["responding"] is True

    # Adopted once: another agent joining as the same hostname is refused.
    reply = await deliver(manager.register_resource, Envelope(joining(resource_id="another")[0]))
    assert isinstance(reply, Rejected) and reply.status == 409


async def test_a_plain_registration_of_a_joined_hostname_is_still_a_400(manager: ResourceManager) -> None:
    await deliver(manager.register_resource, Envelope(joining()[0]))
    reply = await deliver(manager.register_resource, Envelope(registration()[0]))
    assert isinstance(reply, Rejected) and reply.status == 400


async def test_an_unauthorized_host_heartbeats_but_takes_no_commands(manager: ResourceManager) -> None:
    from schemas.jobs import AgentCommandRefused, SubmitTask

    command, token = joining()
    await deliver(manager.register_resource, Envelope(command))
    await deliver(manager.heartbeat, signed(Envelope(Heartbeat(facts=FACTS), resource_id="joiner"), token))
    stored = await manager.resources.get("joiner")
    assert stored["responding"] is True and stored["facts"]["hostname"] == "web-1"
    manager.bus.published.clear()
    with pytest.raises(Drop, match="not authorized"):
        await deliver(manager.forward_to_agent, Envelope(SubmitTask(job_id="j1", command="true"), resource_id="joiner"))
    [(_, refusal)] = manager.bus.published
    assert isinstance(refusal.payload, AgentCommandRefused) and refusal.payload.reason == "host is not authorized"

    assert await deliver(manager.authorize_resource, Envelope(AuthorizeResource(resource_id="joiner"))) == Accepted(
        id="joiner"
    )
    manager.bus.published.clear()
    await deliver(manager.forward_to_agent, Envelope(SubmitTask(job_id="j1", command="true"), resource_id="joiner"))
    [(exchange, _)] = manager.bus.published
    assert exchange == "t.agent-commands"


async def test_authorize_is_idempotent_and_404_for_an_unknown_host(manager: ResourceManager) -> None:
    await deliver(manager.register_resource, Envelope(joining()[0]))
    envelope = Envelope(AuthorizeResource(resource_id="joiner"))
    assert await deliver(manager.authorize_resource, envelope) == Accepted(id="joiner")
    version = (await manager.resources.get("joiner"))["version"]
    assert await deliver(manager.authorize_resource, envelope) == Accepted(id="joiner")  # redelivered: nothing to do
    stored = await manager.resources.get("joiner")
    assert stored["authorized"] is True and stored["version"] == version
    unknown = await deliver(manager.authorize_resource, Envelope(AuthorizeResource(resource_id="nobody")))
    assert isinstance(unknown, Rejected) and unknown.status == 404


async def test_authorize_is_routed_by_the_commands_router(manager: ResourceManager) -> None:
    await deliver(manager.register_resource, Envelope(joining()[0]))
    envelope = codec.decode(codec.encode(Envelope(AuthorizeResource(resource_id="joiner"))), manager_types())
    assert await manager.router()(envelope) == Accepted(id="joiner")
    assert (await manager.resources.get("joiner"))["authorized"] is True


async def test_authorize_racing_a_heartbeat_is_done_by_the_redelivery(manager: ResourceManager, monkeypatch) -> None:
    from services.store.port import VersionConflict

    await deliver(manager.register_resource, Envelope(joining()[0]))
    stale = await manager.resources.get("joiner")
    await manager.resources.update("joiner", {"responding": True})  # a heartbeat's write lands in between
    reads = iter([stale])
    real_get = manager.resources.get
    monkeypatch.setattr(manager.resources, "get", lambda rid: _first_or(reads, real_get, rid))
    envelope = Envelope(AuthorizeResource(resource_id="joiner"))
    with pytest.raises(VersionConflict):  # not acked: the bus redelivers it
        await deliver(manager.authorize_resource, envelope)
    assert (await real_get("joiner"))["authorized"] is False
    assert await deliver(manager.authorize_resource, envelope) == Accepted(id="joiner")
    assert (await real_get("joiner"))["authorized"] is True


async def test_adoption_racing_the_admins_agent_loses_on_redelivery(manager: ResourceManager, monkeypatch) -> None:
    from services.store.port import VersionConflict

    resource_id, admins_token = await registered(manager)
    stale = await manager.resources.get(resource_id)
    await deliver(manager.heartbeat, signed(Envelope(Heartbeat(facts=FACTS), resource_id=resource_id), admins_token))
    reads = iter([stale])
    real_find_one = manager.resources.find_one
    monkeypatch.setattr(manager.resources, "find_one", lambda filter: _first_or(reads, real_find_one, filter))
    envelope = Envelope(joining(proof=admins_token)[0])
    with pytest.raises(VersionConflict):
        await deliver(manager.register_resource, envelope)
    reply = await deliver(manager.register_resource, envelope)
    assert isinstance(reply, Rejected) and reply.status == 409
    assert (await manager.resources.get(resource_id))["token_hash"] != envelope.payload.token_hash


async def _first_or(reads, fallback, *args):
    return next(reads, None) or await fallback(*args)


async def test_live_queries_are_forwarded_with_their_reply_address_or_refused_at_once(manager: ResourceManager) -> None:
    from schemas.pool import ReadMemory

    resource_id, token = await registered(manager)
    query = Envelope(ReadMemory(deadline=0.0), resource_id=resource_id)
    refusal = await deliver(manager.forward_query, query)
    assert isinstance(refusal, Rejected) and refusal.status == 409 and "not responding" in refusal.error
    unknown = await deliver(manager.forward_query, replace(query, resource_id="nobody"))
    assert isinstance(unknown, Rejected) and unknown.status == 404 and "node nobody not found" in unknown.error
    assert manager.bus.forwarded == []

    await deliver(manager.heartbeat, signed(Envelope(Heartbeat(facts=FACTS), resource_id=resource_id), token))
    received = codec.decode(codec.encode(query), manager_types())
    assert await deliver(manager.forward_query, received) is None  # the agent answers, not the resource manager
    [(exchange, key, forwarded)] = manager.bus.forwarded
    assert (exchange, key) == ("t.agent-commands", f"{resource_id}.node.read_memory")
    assert forwarded is received

    await manager.resources.update(resource_id, {"authorized": False})
    manager._recent.clear()
    unauthorized = await deliver(manager.forward_query, received)
    assert isinstance(unauthorized, Rejected) and unauthorized.status == 409 and "not authorized" in unauthorized.error
