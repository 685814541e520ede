"""Handlers of the resource manager: one plain async function per command or event.

Delivery: at least once. Each handler stores its change before it returns (and so before the
message is acked) and is safe to run twice: a redelivered registration (or adoption) finds its own
record, a redelivered authorization finds the host authorized, a redelivered delete finds nothing
left, and a replayed heartbeat is older than the stored one.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.envelope import Envelope
from broker.port import Drop, MessageBus, NoRoute
from broker.router import Router
from broker.serial import Serialized
from broker.topology import Topology
from schemas.base import Accepted, Rejected, WireModel
from schemas.jobs import AGENT_COMMANDS, AgentCommand, AgentCommandRefused
from schemas.pool import NODE_QUERIES, NodeQuery
from schemas.resources import (
    AuthorizeResource,
    DeleteResource,
    Heartbeat,
    HostChange,
    HostChanged,
    HostDeleted,
    RegisterResource,
)
from services.resource_manager import domain
from services.resource_manager.broker_users import BrokerUsers
from services.resource_manager.repository import responding_hosts
from services.security import broker_username, routed_from_its_host, signed_by
from services.store.port import Collection, DuplicateKey, NotFound, VersionConflict

log = logging.getLogger(__name__)

SENDER = "resource-manager"
CONFLICT_RETRIES = 5
CACHE_SECONDS = 1.0
HEARTBEAT_CACHE_SECONDS = 300.0
"""A heartbeat needs a host's verify key and its stored transitions, which only change through this
manager (its own writes refresh the cache) or a twin (its adoption fails the signature check here,
which reads the host again; its transitions are found on the next write)."""


@dataclass(slots=True)
class Liveness:
    """What this process heard of one host lately; only transitions reach the store."""

    heard_at: float
    """When the newest heartbeat arrived here (this process's clock)."""
    sent_at: float
    """When the agent sent it (a replay is older)."""
    written_at: float
    """When ``last_response_time`` was last stored."""
    heard: bool = True
    """False for a host read from the store at start and not heard since (``heard_at`` is then when
    this process started judging it)."""


@dataclass
class ResourceManager:
    bus: MessageBus
    topology: Topology
    resources: Collection
    responding_timeout: float
    liveness_write_interval: float = 30.0
    """Seconds between stores of a responding host's ``last_response_time`` (transitions are stored at once)."""
    clock: Callable[[], float] = time.time
    broker_users: BrokerUsers | None = None
    """Gives each agent a broker user of its own (None: agents use the URL they are given)."""
    rejected_events: Counter[str] = field(default_factory=Counter)
    proofs: Counter[str] = field(default_factory=Counter)
    """Agent events taken, by what proved their host: ``signature``, or ``broker user`` (heartbeats)."""
    _recent: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    _liveness: dict[str, Liveness] = field(default_factory=dict)
    _started_at: float | None = None
    per_resource: Serialized = field(default_factory=lambda: Serialized(VersionConflict, attempts=CONFLICT_RETRIES))
    """One registration or authorization of a resource at a time in this process; one that lost a
    versioned write (to a heartbeat, or a twin) runs again at once, reading afresh, instead of a requeue."""

    def router(self) -> Router:
        router = Router()
        router.add(RegisterResource, self.register_resource, serialized=self.per_resource, key=resource_of)
        router.add(AuthorizeResource, self.authorize_resource, serialized=self.per_resource, key=resource_of)
        router.add(DeleteResource, self.delete_resource)
        for command in AGENT_COMMANDS:
            router.add(command, self.forward_to_agent)
        for query in NODE_QUERIES:
            router.add(query, self.forward_query)
        return router

    def heartbeat_router(self) -> Router:
        router = Router()
        router.add(Heartbeat, self.heartbeat)
        return router

    # Commands.

    async def register_resource(self, command: RegisterResource, envelope: Envelope) -> WireModel:
        document = domain.new_resource(
            resource_id=command.resource_id,
            hostname=command.hostname,
            user=command.user,
            token_hash=command.token_hash,
            verify_key=command.verify_key,
            now=self.clock(),
            authorized=command.authorized,
            joined=command.joined,
            shared=command.shared,
        )
        try:
            document = await self.resources.insert(document)
        except DuplicateKey:
            return await self._registered_before(command, envelope)
        await self._grant_broker_user(command.resource_id, command)
        await self._tell(document, "registered", envelope)
        how = "joined (unauthorized)" if command.joined else f"registered for {command.user}"
        log.info("resource %s (%s) %s", command.resource_id, command.hostname, how)
        return Accepted(id=command.resource_id)

    async def _registered_before(self, command: RegisterResource, envelope: Envelope) -> WireModel:
        """The id or the hostname is taken: by this very registration (a redelivery, or an agent that
        joins again with its saved credentials), by a registration a joining agent adopts, or by
        another host (a clash). A document that vanished meanwhile raises: the command is retried."""
        stored = await self.resources.get(command.resource_id)
        if stored is None:
            stored = await self.resources.find_one({"hostname": command.hostname})
        if stored is None:
            raise VersionConflict(f"the resource that {command.hostname!r} clashed with is gone; register again")
        if domain.is_same_registration(stored, hostname=command.hostname, token_hash=command.token_hash):
            await self._grant_broker_user(stored["id"], command)  # the first delivery may have died before it
            await self._tell(stored, "registered", envelope)  # the first delivery may have died before it
            return Accepted(id=stored["id"])
        if not command.joined:
            return Rejected(status=400, error=f"hostname {command.hostname!r} is already registered")
        if stored["hostname"] != command.hostname:
            return Rejected(status=409, error=f"resource id {command.resource_id} is taken by another host")
        if not domain.may_adopt(stored, hostname=command.hostname, proof=command.registration_token_hash):
            return Rejected(status=409, error=_clash(command))
        # A concurrent write (the admin's own agent heartbeating first) raises VersionConflict: the
        # command runs again (per_resource) and finds the host in use.
        changes = domain.adoption(token_hash=command.token_hash, verify_key=command.verify_key)
        adopted = await self.resources.update(stored["id"], changes, expected_version=stored["version"])
        self._remember(adopted)
        await self._grant_broker_user(stored["id"], command)  # the adopting agent's password, under the kept id
        await self._tell(adopted, "adopted", envelope)
        log.info(
            "resource %s (%s) adopted by the agent that joined as %s",
            stored["id"],
            command.hostname,
            command.resource_id,
            extra={"resource_id": stored["id"]},
        )
        return Accepted(id=stored["id"])

    async def authorize_resource(self, command: AuthorizeResource, envelope: Envelope) -> WireModel:
        stored = await self.resources.get(command.resource_id)
        if stored is None:
            return Rejected(status=404, error=f"resource {command.resource_id} not found")
        if stored["authorized"]:
            await self._tell(stored, "authorized", envelope)  # the first delivery may have died before it
            return Accepted(id=command.resource_id)
        # A concurrent write (a heartbeat) raises VersionConflict: the command runs again (per_resource).
        try:
            updated = await self.resources.update(
                command.resource_id, {"authorized": True}, expected_version=stored["version"]
            )
        except NotFound:
            return Rejected(status=404, error=f"resource {command.resource_id} not found")
        self._remember(updated)
        await self._tell(updated, "authorized", envelope)
        log.info("resource %s authorized", command.resource_id, extra={"resource_id": command.resource_id})
        return Accepted(id=command.resource_id)

    async def delete_resource(self, command: DeleteResource, envelope: Envelope) -> WireModel:
        self._recent.pop(command.resource_id, None)
        self._liveness.pop(command.resource_id, None)
        # Revoked first: a delete redelivered after a crash finds no record but revokes again.
        if self.broker_users is not None:
            await self.broker_users.revoke(command.resource_id)
        if not await self.resources.delete(command.resource_id):
            return Rejected(status=404, error=f"resource {command.resource_id} not found")
        await self.bus.publish(
            self.topology.events, envelope.caused(HostDeleted(resource_id=command.resource_id), sender=SENDER)
        )
        log.info("deleted resource %s", command.resource_id)
        return Accepted(id=command.resource_id)

    async def _grant_broker_user(self, resource_id: str, command: RegisterResource) -> None:
        """Provision the agent's own broker user; a management API that fails raises, and the
        registration is retried (it finds its record and provisions again)."""
        if self.broker_users is not None and command.broker_password_hash:
            await self.broker_users.grant(resource_id, command.broker_password_hash)

    # The proxy of seed 000: components address a resource id, never an agent.

    async def forward_to_agent(self, command: AgentCommand, envelope: Envelope) -> None:
        """Forward a command, payload untouched, to its host's agent; refuse at once if it cannot take it."""
        resource = await self._resource(envelope.resource_id) if envelope.resource_id else None
        reason = None
        if resource is None:
            reason = "unknown resource"
        elif not resource["authorized"]:
            reason = "host is not authorized"
        elif not resource["responding"]:
            reason = "host is not responding"
        if reason is not None:
            refusal = AgentCommandRefused(
                resource_id=envelope.resource_id or "",
                command_type=envelope.type,
                job_id=command.job_id,
                reason=reason,
            )
            await self.bus.publish(self.topology.events, envelope.caused(refusal, sender=SENDER))
            raise Drop(f"{envelope.type} for {envelope.resource_id} refused: {reason}")
        await self.bus.publish(
            self.topology.agent_commands,
            envelope,
            routing_key=self.topology.agent_routing_key(resource["id"], envelope.type),
        )

    async def forward_query(self, query: NodeQuery, envelope: Envelope) -> WireModel | None:
        """Pass a live query of seed 003 on to its node's agent, which answers the asker directly.

        The refusals come from here, at once and unsigned: 404 for a node nobody registered, 409
        for one that is not authorized or not responding (so the asker does not wait for a 504).
        """
        node_id = envelope.resource_id or ""
        resource = await self._resource(node_id) if node_id else None
        if resource is None:
            return Rejected(status=404, error=f"node {node_id} not found")
        if not resource["authorized"]:
            return Rejected(status=409, error=f"node {node_id} is not authorized yet")
        if not resource["responding"]:
            return Rejected(status=409, error=f"node {node_id} is not responding: its agent is not running")
        try:
            await self.bus.forward(
                self.topology.agent_commands, envelope, self.topology.agent_routing_key(node_id, envelope.type)
            )
        except NoRoute:
            return Rejected(status=409, error=f"node {node_id} is not responding: no agent listens for it")
        return None

    async def _resource(
        self, resource_id: str, *, fresh: bool = False, max_age: float = CACHE_SECONDS
    ) -> dict[str, Any] | None:
        """A host's record, read at most once a second per host on the hot path (every task event
        and forwarded command needs it). A verify key changes only when a joining agent adopts a host
        no agent has spoken for yet, and a host that just stopped responding (or was just authorized
        by a twin process) is refused a second late at worst."""
        now = time.monotonic()
        cached = self._recent.get(resource_id)
        if cached is not None and not fresh and now - cached[0] < max_age:
            return cached[1]
        resource = await self.resources.get(resource_id)
        if resource is None:
            self._recent.pop(resource_id, None)
        else:
            self._remember(resource)
        return resource

    def _remember(self, resource: dict[str, Any]) -> None:
        """What this process wrote or read last about a host: its own writes are never stale here."""
        self._recent[resource["id"]] = (time.monotonic(), resource)

    # Heartbeats: verified here, kept in memory; only transitions are stored and published.

    async def heartbeat(self, beat: Heartbeat, envelope: Envelope) -> None:
        """One signed heartbeat. Every copy of this manager hears each one (a broadcast queue), so each
        knows every host's liveness; a transition written twice by two copies is written once (the
        second finds it done) and published at most twice, which consumers take as one."""
        resource = await self._verified_sender(envelope, max_age=HEARTBEAT_CACHE_SECONDS, broker_may_vouch=True)
        now, sent_at = self.clock(), envelope.time.timestamp()
        seen = self._liveness.get(resource["id"])
        if (seen is not None and sent_at <= seen.sent_at) or not domain.is_fresh_heartbeat(resource, sent_at):
            raise Drop(f"stale heartbeat from {resource['id']}")
        if seen is None:
            seen = self._liveness[resource["id"]] = Liveness(now, sent_at, resource.get("last_response_time") or 0.0)
        seen.heard_at, seen.sent_at, seen.heard = now, sent_at, True
        change, changes = domain.heartbeat_changes(resource, beat, now=now)
        if change is None and not changes and now - seen.written_at < self.liveness_write_interval:
            return
        changes.update(last_response_time=now, last_heartbeat_sent_at=sent_at)
        updated = await self._write(resource, changes)
        if updated is None:
            return
        seen.written_at = now
        if change is not None:
            log.info("resource %s %s", resource["id"], change, extra={"resource_id": resource["id"]})
            await self._tell(updated, change, envelope, running_jobs=beat.running_jobs)

    async def _write(self, resource: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any] | None:
        """Store ``changes`` with the version read; after a twin's write, read again and retry once."""
        for _ in range(2):
            try:
                updated = await self.resources.update(resource["id"], changes, expected_version=resource["version"])
            except NotFound:
                return None
            except VersionConflict:
                fresh = await self._resource(resource["id"], fresh=True)
                if fresh is None:
                    return None
                resource = fresh
                continue
            self._remember(updated)
            return updated
        return None

    async def _verified_sender(
        self, envelope: Envelope, *, max_age: float = CACHE_SECONDS, broker_may_vouch: bool = False
    ) -> dict[str, Any]:
        """The resource that sent ``envelope``, or Drop. Its proof is its Ed25519 signature; for a
        heartbeat (``broker_may_vouch``), the broker's word does as well: a message whose validated
        ``user_id`` is the host's own broker user came from a connection that logged in with a password
        derived from the host's token, the secret the signature is derived from too, and RabbitMQ refuses
        any other ``user_id``. That spares the signature check (most of a beat's cost) for agents on
        their own broker users; with shared credentials, or a message a service republished, the
        signature is checked as before."""
        if not envelope.resource_id or not envelope.signature:
            self.rejected_events["unsigned"] += 1
            raise Drop(f"unsigned agent event {envelope.type} {envelope.message_id}")
        if not routed_from_its_host(envelope):
            self.rejected_events["wrong routing key"] += 1
            log.warning(
                "agent event %s claiming resource %s came under key %s",
                envelope.type,
                envelope.resource_id,
                envelope.routing_key,
                extra={"resource_id": envelope.resource_id, "message_id": envelope.message_id},
            )
            raise Drop(f"agent event {envelope.type} of {envelope.resource_id} came under key {envelope.routing_key}")
        resource = await self._resource(envelope.resource_id, max_age=max_age)
        if resource is not None and broker_may_vouch and envelope.publisher == broker_username(resource["id"]):
            self.proofs["broker user"] += 1
            return resource
        if resource is not None and not signed_by(envelope, resource["verify_key"]):
            resource = await self._resource(envelope.resource_id, fresh=True)  # adopted since it was read?
        if resource is None:
            self.rejected_events["unknown resource"] += 1
            raise Drop(f"agent event from unknown resource {envelope.resource_id}")
        if not signed_by(envelope, resource["verify_key"]):
            self.rejected_events["bad signature"] += 1
            log.warning(
                "forged agent event %s claiming resource %s",
                envelope.type,
                envelope.resource_id,
                extra={"resource_id": envelope.resource_id, "message_id": envelope.message_id},
            )
            raise Drop(f"bad signature on {envelope.type} from {envelope.resource_id}")
        self.proofs["signature"] += 1
        return resource

    async def _tell(
        self, resource: dict[str, Any], change: HostChange, cause: Envelope | None, *, running_jobs: list[str] = ()
    ) -> None:
        event = HostChanged(
            resource_id=resource["id"],
            change=change,
            at=self.clock(),
            version=resource["version"],
            user=resource["user"],
            authorized=resource["authorized"],
            joined=resource.get("joined", False),
            shared=resource.get("shared", True),
            responding=resource["responding"],
            verify_key=resource["verify_key"],
            last_response_time=resource.get("last_response_time"),
            agent_started_at=resource.get("agent_started_at"),
            running_jobs=list(running_jobs),
        )
        if cause is not None:
            envelope = cause.caused(event, sender=SENDER, resource_id=resource["id"])
        else:
            envelope = Envelope(event, sender=SENDER, resource_id=resource["id"])
        await self.bus.publish(self.topology.events, envelope)

    # Periodic.

    async def sweep_silent_hosts(self) -> int:
        """Mark hosts whose heartbeats stopped as not responding; return how many.

        Liveness is this process's memory, so the sweep reads the store only once, at its first pass:
        a host stored as responding that this process has not heard yet is given ``responding_timeout``
        from then before it is judged."""
        now = self.clock()
        if self._started_at is None:
            self._started_at = now
            for resource in await responding_hosts(self.resources):
                if resource["id"] not in self._liveness:
                    self._remember(resource)
                    sent = resource.get("last_heartbeat_sent_at") or 0.0
                    written = resource["last_response_time"] or 0.0
                    self._liveness[resource["id"]] = Liveness(now, sent, written, heard=False)
        marked = 0
        for resource_id, seen in list(self._liveness.items()):
            if now - seen.heard_at <= self.responding_timeout:
                continue
            del self._liveness[resource_id]  # heard again, it is a transition
            resource = await self._resource(resource_id, fresh=True)
            if resource is None or not resource["responding"]:
                continue
            changes: dict[str, Any] = {"responding": False}
            if seen.heard:  # the stored time may be older (it is written now and then)
                changes["last_response_time"] = seen.heard_at
            updated = await self._write(resource, changes)
            if updated is None or updated["responding"]:
                continue
            marked += 1
            await self._tell(updated, "unresponsive", None)
            log.info("resource %s stopped responding", resource_id, extra={"resource_id": resource_id})
        return marked


def resource_of(command: RegisterResource | AuthorizeResource, envelope: Envelope) -> str:
    return command.resource_id


def _clash(command: RegisterResource) -> str:
    if command.registration_token_hash is None:
        return (
            f"hostname {command.hostname!r} is in use by another host: to adopt a registration of this "
            "hostname, join with the token POST /api/resources gave it (skybus agent --registration-token), "
            "or join under another hostname (--hostname)"
        )
    return f"hostname {command.hostname!r} is in use by another host, or the registration token is not its own"
