"""Wiring: the resource manager built from settings, its queues and its sweeper."""

from __future__ import annotations

import logging

from broker.port import MessageBus
from broker.topology import Topology
from services.lifetime import Lifetime
from services.resource_manager.broker_users import BrokerUsers, amqp_vhost
from services.resource_manager.handlers import ResourceManager
from services.resource_manager.repository import resources_collection
from services.settings import Settings
from services.store.port import DocumentStore

log = logging.getLogger(__name__)


class ResourceManagerService:
    name = "resource-manager"

    def __init__(self, settings: Settings, bus: MessageBus, store: DocumentStore, topology: Topology) -> None:
        self._settings = settings
        self._bus = bus
        self._store = store
        self._topology = topology
        self._lifetime = Lifetime()
        self.manager: ResourceManager | None = None
        self._broker_users: BrokerUsers | None = None

    async def start(self) -> None:
        settings = self._settings
        if settings.amqp_url and settings.broker_admin_url:
            self._broker_users = BrokerUsers(settings.broker_admin_url, amqp_vhost(settings.amqp_url), self._topology)
        elif settings.amqp_url:
            log.warning(
                "no SKYBUS_BROKER_ADMIN_URL: agents get no broker user of their own and use the AMQP URL "
                "they are given, whose permissions are theirs"
            )
        self.manager = ResourceManager(
            bus=self._bus,
            topology=self._topology,
            resources=await resources_collection(self._store),
            responding_timeout=self._settings.responding_timeout,
            liveness_write_interval=self._settings.liveness_write_interval,
            broker_users=self._broker_users,
        )
        self._lifetime.hold(
            await self._bus.subscribe(self._topology.resource_manager_commands(), self.manager.router())
        )
        self._lifetime.hold(
            await self._bus.subscribe(self._topology.resource_manager_heartbeats(), self.manager.heartbeat_router())
        )
        interval = max(0.2, self._settings.responding_timeout / 4)
        self._lifetime.every(interval, self.manager.sweep_silent_hosts, what="sweep of silent hosts")

    async def stop(self) -> None:
        await self._lifetime.close()
        if self._broker_users is not None:
            await self._broker_users.close()
