"""Wiring: the role manager built from settings, its two queues and its sweep."""

from __future__ import annotations

from broker.port import MessageBus
from broker.topology import Topology
from services.lifetime import Lifetime
from services.role_manager.domain import Backoff
from services.role_manager.handlers import RoleManager
from services.role_manager.repository import role_hosts_collection, roles_collection
from services.settings import Settings
from services.store.port import DocumentStore


class RoleManagerService:
    name = "role-manager"

    def __init__(self, settings: Settings, bus: MessageBus, store: DocumentStore, topology: Topology) -> None:
        self._settings = settings
        self._bus = bus
        self._store = store
        self._topology = topology
        self._lifetime = Lifetime()
        self.manager: RoleManager | None = None

    async def start(self) -> None:
        settings = self._settings
        self.manager = RoleManager(
            bus=self._bus,
            topology=self._topology,
            roles=await roles_collection(self._store),
            hosts=await role_hosts_collection(self._store),
            store=self._store,
            backoff=Backoff(attempts=settings.role_attempts, first_delay=settings.role_retry_delay),
            request_timeout=settings.request_timeout,
        )
        self._lifetime.hold(
            await self._bus.subscribe(self._topology.role_manager_commands(), self.manager.command_router())
        )
        self._lifetime.hold(
            await self._bus.subscribe(self._topology.role_manager_events(), self.manager.event_router())
        )
        self._lifetime.every(settings.role_sweep_interval, self.manager.sweep, what="role sweep")

    async def stop(self) -> None:
        await self._lifetime.close()
