"""The agent's lifetime: consume its own queue, heartbeat with host facts, sign what it says.

Agent events go to the untrusted exchange; only the resource manager reads it and republishes an
event once the signature checks out against this host's verify key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from broker import codec
from broker.envelope import Envelope
from broker.port import BusError, MessageBus, Subscription
from broker.router import Router
from broker.topology import Topology
from schemas.base import WireModel
from schemas.resources import Heartbeat
from services.agent.facts import read_host_facts
from services.security import signing_key

log = logging.getLogger(__name__)


class Agent:
    name = "agent"

    def __init__(
        self,
        bus: MessageBus,
        topology: Topology,
        *,
        resource_id: str,
        token: str,
        heartbeat_interval: float,
    ) -> None:
        self._bus = bus
        self._topology = topology
        self.resource_id = resource_id
        self._key = signing_key(token)
        self._heartbeat_interval = heartbeat_interval
        self._subscription: Subscription | None = None
        self._heartbeats: asyncio.Task[None] | None = None
        self.router = Router()

    async def start(self) -> None:
        self._subscription = await self._bus.subscribe(self._topology.agent_queue(self.resource_id), self.router)
        self._heartbeats = asyncio.create_task(self._heartbeat_forever())
        log.info("agent for resource %s started", self.resource_id)

    async def stop(self) -> None:
        if self._heartbeats:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats
        if self._subscription:
            await self._subscription.cancel()

    async def say(self, payload: WireModel, *, caused_by: Envelope | None = None) -> None:
        """Publish a signed event for this host on the untrusted agent-events exchange."""
        sender = f"agent:{self.resource_id}"
        if caused_by is not None:
            envelope = caused_by.caused(payload, sender=sender, resource_id=self.resource_id)
        else:
            envelope = Envelope(payload, sender=sender, resource_id=self.resource_id)
        signature = self._key.sign(codec.signed_bytes(envelope))
        await self._bus.publish(self._topology.agent_events, envelope.with_signature(signature))

    async def _heartbeat_forever(self) -> None:
        while True:
            try:
                await self.say(Heartbeat(facts=await asyncio.to_thread(read_host_facts)))
            except BusError as error:  # the bus is down: the next beat tries again
                log.warning("heartbeat not sent: %r", error)
            await asyncio.sleep(self._heartbeat_interval)
