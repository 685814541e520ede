"""Wiring: the resource manager built from settings, its queues and its sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from broker.port import MessageBus, Subscription
from broker.topology import Topology
from services.resource_manager.handlers import ResourceManager
from services.resource_manager.repository import resources_collection
from services.settings import Settings
from services.store.port import DocumentStore, StoreError

log = logging.getLogger(__name__)


class ResourceManagerService:
    name = "resource-manager"

    def __init__(self, settings: Settings, bus: MessageBus, store: DocumentStore, topology: Topology) -> None:
        self._settings = settings
        self._bus = bus
        self._store = store
        self._topology = topology
        self._subscriptions: list[Subscription] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.manager: ResourceManager | None = None

    async def start(self) -> None:
        self.manager = ResourceManager(
            bus=self._bus,
            topology=self._topology,
            resources=await resources_collection(self._store),
            responding_timeout=self._settings.responding_timeout,
        )
        self._subscriptions = [
            await self._bus.subscribe(self._topology.resource_manager_commands(), self.manager.router()),
            await self._bus.subscribe(self._topology.resource_manager_agent_events(), self.manager.agent_event),
        ]
        self._sweeper = asyncio.create_task(self._sweep_forever(self.manager))

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for subscription in self._subscriptions:
            await subscription.cancel()
        self._subscriptions = []

    async def _sweep_forever(self, manager: ResourceManager) -> None:
        interval = max(0.2, self._settings.responding_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await manager.sweep_silent_hosts()
            except StoreError as error:  # the store is down: try again next round
                log.warning("sweep of silent hosts failed: %r", error)
