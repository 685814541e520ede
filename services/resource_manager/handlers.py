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
from dataclasses import dataclass, field, replace
from typing import Any

from broker.envelope import Envelope
from broker.port import Drop, MessageBus, NoRoute
from broker.router import Router
from broker.topology import Topology
from schemas.base import Accepted, Rejected, WireModel
from schemas.jobs import AGENT_COMMANDS, AgentCommandRefused
from schemas.pool import NODE_QUERIES
from schemas.resources import (
    AuthorizeResource,
    DeleteResource,
    Heartbeat,
    HostDeleted,
    HostResponding,
    HostUnresponsive,
    RegisterResource,
)
from services.resource_manager import domain
from services.resource_manager.repository import silent_candidates
from services.security import signed_by
from services.store.port import Collection, DuplicateKey, NotFound, VersionConflict

log = logging.getLogger(__name__)

SENDER = "resource-manager"
CACHE_SECONDS = 1.0


@dataclass
class ResourceManager:
    bus: MessageBus
    topology: Topology
    resources: Collection
    responding_timeout: float
    clock: Callable[[], float] = time.time
    rejected_events: Counter[str] = field(default_factory=Counter)
    _recent: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    def router(self) -> Router:
        router = Router()
        router.add(RegisterResource, self.register_resource)
        router.add(AuthorizeResource, self.authorize_resource)
        router.add(DeleteResource, self.delete_resource)
        for command in AGENT_COMMANDS:
            router.add(command, self.forward_to_agent)
        for query in NODE_QUERIES:
            router.add(query, self.forward_query)
        return router

    # Commands.

    async def register_resource(self, envelope: Envelope) -> WireModel:
        command = envelope.payload
        assert isinstance(command, RegisterResource)
        document = domain.new_resource(
            resource_id=command.resource_id,
            hostname=command.hostname,
            user=command.user,
            token_hash=command.token_hash,
            verify_key=command.verify_key,
            now=self.clock(),
            authorized=command.authorized,
            joined=command.joined,
        )
        try:
            await self.resources.insert(document)
        except DuplicateKey:
            return await self._registered_before(command)
        how = "joined (unauthorized)" if command.joined else f"registered for {command.user}"
        log.info("resource %s (%s) %s", command.resource_id, command.hostname, how)
        return Accepted(id=command.resource_id)

    async def _registered_before(self, command: RegisterResource) -> WireModel:
        """The id or the hostname is taken: by this very registration (a redelivery, or an agent that
        joins again with its saved credentials), by a registration a joining agent adopts, or by
        another host (a clash). A document that vanished meanwhile raises: the command is retried."""
        stored = await self.resources.get(command.resource_id)
        if stored is None:
            stored = await self.resources.find_one({"hostname": command.hostname})
        if stored is None:
            raise VersionConflict(f"the resource that {command.hostname!r} clashed with is gone; register again")
        if domain.is_same_registration(stored, hostname=command.hostname, token_hash=command.token_hash):
            return Accepted(id=stored["id"])
        if not command.joined:
            return Rejected(status=400, error=f"hostname {command.hostname!r} is already registered")
        if stored["hostname"] != command.hostname:
            return Rejected(status=409, error=f"resource id {command.resource_id} is taken by another host")
        if not domain.may_adopt(stored, hostname=command.hostname):
            return Rejected(status=409, error=f"hostname {command.hostname!r} is in use by another host")
        # A concurrent write (the admin's own agent heartbeating first) raises VersionConflict: the
        # command is redelivered and finds the host in use.
        changes = domain.adoption(token_hash=command.token_hash, verify_key=command.verify_key)
        self._remember(await self.resources.update(stored["id"], changes, expected_version=stored["version"]))
        log.info(
            "resource %s (%s) adopted by the agent that joined as %s",
            stored["id"],
            command.hostname,
            command.resource_id,
            extra={"resource_id": stored["id"]},
        )
        return Accepted(id=stored["id"])

    async def authorize_resource(self, envelope: Envelope) -> WireModel:
        command = envelope.payload
        assert isinstance(command, AuthorizeResource)
        stored = await self.resources.get(command.resource_id)
        if stored is None:
            return Rejected(status=404, error=f"resource {command.resource_id} not found")
        if stored["authorized"]:
            return Accepted(id=command.resource_id)
        # A concurrent write (a heartbeat) raises VersionConflict: the command is redelivered.
        try:
            updated = await self.resources.update(
                command.resource_id, {"authorized": True}, expected_version=stored["version"]
            )
        except NotFound:
            return Rejected(status=404, error=f"resource {command.resource_id} not found")
        self._remember(updated)
        log.info("resource %s authorized", command.resource_id, extra={"resource_id": command.resource_id})
        return Accepted(id=command.resource_id)

    async def delete_resource(self, envelope: Envelope) -> WireModel:
        command = envelope.payload
        assert isinstance(command, DeleteResource)
        self._recent.pop(command.resource_id, None)
        if not await self.resources.delete(command.resource_id):
            return Rejected(status=404, error=f"resource {command.resource_id} not found")
        await self.bus.publish(
            self.topology.events, envelope.caused(HostDeleted(resource_id=command.resource_id), sender=SENDER)
        )
        log.info("deleted resource %s", command.resource_id)
        return Accepted(id=command.resource_id)

    # The proxy of seed 000: components address a resource id, never an agent.

    async def forward_to_agent(self, envelope: Envelope) -> None:
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
                job_id=getattr(envelope.payload, "job_id", None),
                reason=reason,
            )
            await self.bus.publish(self.topology.events, envelope.caused(refusal, sender=SENDER))
            raise Drop(f"{envelope.type} for {envelope.resource_id} refused: {reason}")
        await self.bus.publish(
            self.topology.agent_commands,
            envelope,
            routing_key=self.topology.agent_routing_key(resource["id"], envelope.type),
        )

    async def forward_query(self, envelope: Envelope) -> WireModel | None:
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

    async def _resource(self, resource_id: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """A host's record, read at most once a second per host on the hot path (every task event
        and forwarded command needs it). A verify key changes only when a joining agent adopts a host
        no agent has spoken for yet, and a host that just stopped responding (or was just authorized
        by a twin process) is refused a second late at worst."""
        now = time.monotonic()
        cached = self._recent.get(resource_id)
        if cached is not None and not fresh and now - cached[0] < CACHE_SECONDS:
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

    # Agent events: check the signature, then act and republish as trusted.

    async def agent_event(self, envelope: Envelope) -> None:
        """The handler of the untrusted agent-events queue: verify, keep host state, republish."""
        resource = await self._verified_sender(envelope)
        if isinstance(envelope.payload, Heartbeat):
            await self.heartbeat(envelope, resource)
        await self.bus.publish(self.topology.events, replace(envelope, signature=None))

    async def _verified_sender(self, envelope: Envelope) -> dict:
        if not envelope.resource_id or not envelope.signature:
            self.rejected_events["unsigned"] += 1
            raise Drop(f"unsigned agent event {envelope.type} {envelope.message_id}")
        resource = await self._resource(envelope.resource_id)
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
        return resource

    async def heartbeat(self, envelope: Envelope, resource: dict) -> None:
        beat = envelope.payload
        assert isinstance(beat, Heartbeat)
        resource = await self._resource(resource["id"], fresh=True) or resource
        sent_at = envelope.time.timestamp()
        if not domain.is_fresh_heartbeat(resource, sent_at):
            raise Drop(f"stale heartbeat from {resource['id']}")
        was_responding = resource["responding"]
        # A concurrent write raises VersionConflict: the heartbeat is redelivered and read again.
        updated = await self.resources.update(
            resource["id"],
            {
                "responding": True,
                "last_response_time": self.clock(),
                "last_heartbeat_sent_at": sent_at,
                "facts": beat.facts.model_dump(),
            },
            expected_version=resource["version"],
        )
        self._remember(updated)
        if not was_responding:
            await self.bus.publish(
                self.topology.events,
                envelope.caused(HostResponding(resource_id=resource["id"]), sender=SENDER),
            )

    # Periodic.

    async def sweep_silent_hosts(self) -> int:
        """Mark hosts whose heartbeats stopped as not responding; return how many."""
        now = self.clock()
        marked = 0
        for resource in await silent_candidates(self.resources, now - self.responding_timeout):
            if not domain.has_gone_silent(resource, now, self.responding_timeout):
                continue
            try:
                updated = await self.resources.update(
                    resource["id"], {"responding": False}, expected_version=resource["version"]
                )
            except VersionConflict:
                continue  # a heartbeat arrived meanwhile
            self._remember(updated)
            marked += 1
            await self.bus.publish(
                self.topology.events,
                Envelope(
                    HostUnresponsive(resource_id=resource["id"], last_response_time=resource["last_response_time"]),
                    sender=SENDER,
                    resource_id=resource["id"],
                ),
            )
            log.info("resource %s stopped responding", resource["id"])
        return marked
