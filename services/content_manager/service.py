"""Wiring: the content manager built from settings, its queue, its blob store and its orphan cleaner."""

from __future__ import annotations

import logging

from broker.port import MessageBus
from broker.topology import Topology
from services.content_manager.handlers import ContentManager
from services.content_manager.repository import contents_collection, tombstones_collection
from services.lifetime import Lifetime
from services.settings import Settings
from services.store.factory import open_blob_store
from services.store.port import BlobStore, DocumentStore

log = logging.getLogger(__name__)


class ContentManagerService:
    name = "content-manager"

    def __init__(self, settings: Settings, bus: MessageBus, store: DocumentStore, topology: Topology) -> None:
        self._settings = settings
        self._bus = bus
        self._store = store
        self._topology = topology
        self._blobs: BlobStore | None = None
        self._lifetime = Lifetime()
        self.manager: ContentManager | None = None

    async def start(self) -> None:
        self._blobs = await open_blob_store(self._settings)
        self.manager = ContentManager(
            contents=await contents_collection(self._store),
            tombstones=await tombstones_collection(self._store),
            blobs=self._blobs,
            orphan_grace=self._settings.content_orphan_grace,
            bus=self._bus,
            topology=self._topology,
        )
        self._lifetime.hold(await self._bus.subscribe(self._topology.content_manager_commands(), self.manager.router()))
        self._lifetime.every(self._settings.content_cleanup_interval, self._clean, what="orphan cleanup")

    async def stop(self) -> None:
        await self._lifetime.close()
        if self._blobs:
            await self._blobs.close()
            self._blobs = None

    async def _clean(self) -> None:
        assert self.manager is not None
        cleanup = await self.manager.collect_orphans()
        if cleanup.blobs or cleanup.temp_files:
            log.info("orphan cleanup: %s", cleanup)
