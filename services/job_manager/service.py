"""Wiring: the job manager built from settings, its two queues and its sweep."""

from __future__ import annotations

from broker.port import MessageBus
from broker.topology import Topology
from services.job_manager.handlers import JobManager
from services.job_manager.hosts import Host, host_from_record
from services.job_manager.repository import jobs_collection
from services.lifetime import Lifetime
from services.resource_manager import records as resources
from services.settings import Settings
from services.store.port import DocumentStore


class JobManagerService:
    name = "job-manager"

    def __init__(self, settings: Settings, bus: MessageBus, store: DocumentStore, topology: Topology) -> None:
        self._settings = settings
        self._bus = bus
        self._store = store
        self._topology = topology
        self._lifetime = Lifetime()
        self.manager: JobManager | None = None

    async def start(self) -> None:
        self.manager = JobManager(
            bus=self._bus,
            topology=self._topology,
            jobs=await jobs_collection(self._store),
            read_host=self._read_host,
            read_hosts=self._read_hosts,
            lost_timeout=self._settings.lost_timeout,
            start_timeout=self._settings.start_timeout,
        )
        # Hear host changes before the first read of every host, so none falls between the two.
        self._lifetime.hold(
            await self._bus.subscribe(self._topology.host_changes("job-manager"), self.manager.host_router())
        )
        await self.manager.load_hosts()
        self._lifetime.hold(
            await self._bus.subscribe(self._topology.job_manager_commands(), self.manager.command_router())
        )
        self._lifetime.hold(await self._bus.subscribe(self._topology.job_manager_events(), self.manager.event_router()))
        self._lifetime.every(self._settings.job_sweep_interval, self.manager.sweep, what="job sweep")

    async def stop(self) -> None:
        await self._lifetime.close()

    async def _read_host(self, resource_id: str) -> Host | None:
        record = await resources.get_resource(self._store, resource_id)
        return None if record is None else host_from_record(record)

    async def _read_hosts(self) -> list[Host]:
        return [host_from_record(record) for record in await resources.resources_of_user(self._store, None)]
