"""Wiring: the content manager built from settings, its queue, its blob store and its orphan cleaner."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from broker.port import MessageBus, Subscription
from broker.topology import Topology
from services.content_manager.handlers import ContentManager
from services.content_manager.repository import contents_collection, tombstones_collection
from services.settings import Settings
from services.store.factory import open_blob_store
from services.store.port import BlobStore, DocumentStore, StoreError

log = logging.getLogger(__name__)


class ContentManagerService:
    name = "content-manager"

    def __init__(self, settings: Settings, bus: MessageBus, store: DocumentStore, topology: Topology) -> None:
        self._settings = settings
        self._bus = bus
        self._store = store
        self._topology = topology
        self._blobs: BlobStore | None = None
        self._subscription: Subscription | None = None
        self._cleaner: asyncio.Task[None] | None = None
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
        self._subscription = await self._bus.subscribe(self._topology.content_manager_commands(), self.manager.router())
        self._cleaner = asyncio.create_task(self._clean_forever(self.manager))

    async def stop(self) -> None:
        if self._cleaner:
            self._cleaner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleaner
        if self._subscription:
            await self._subscription.cancel()
            self._subscription = None
        if self._blobs:
            await self._blobs.close()
            self._blobs = None

    async def _clean_forever(self, manager: ContentManager) -> None:
        while True:
            await asyncio.sleep(self._settings.content_cleanup_interval)
            try:
                cleanup = await manager.collect_orphans()
            except StoreError as error:  # the store is down: try again next round
                log.warning("orphan cleanup failed: %r", error)
                continue
            if cleanup.blobs or cleanup.temp_files:
                log.info("orphan cleanup: %s", cleanup)
