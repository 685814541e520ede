"""Wiring: the job manager built from settings, its two queues and its sweep."""

from __future__ import annotations

from broker.port import MessageBus
from broker.topology import Topology
from services.content_manager.repository import CONTENTS
from services.job_manager.handlers import JobManager
from services.job_manager.hosts import Host, host_from_document
from services.job_manager.repository import jobs_collection
from services.lifetime import Lifetime
from services.resource_manager.repository import resources_collection
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
        self._resources = await resources_collection(self._store)
        self.manager = JobManager(
            bus=self._bus,
            topology=self._topology,
            jobs=await jobs_collection(self._store),
            file_names=self._file_names,
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
        document = await self._resources.get(resource_id)
        return None if document is None else host_from_document(document)

    async def _read_hosts(self) -> list[Host]:
        found = await self._resources.find({}, limit=1_000_000)
        return [host_from_document(document) for document in found.items]

    async def _file_names(self, data_ids: list[str]) -> dict[str, str]:
        """Stored names of a job's files, read (never written) from the data manager's records."""
        found = await self._store.collection(CONTENTS).find({"id": {"$in": data_ids}}, limit=len(data_ids))
        return {item["id"]: item.get("name") or item["id"] for item in found.items}
