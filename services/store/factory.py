"""Builds the stores from settings: MongoDB and GridFS when ``mongo_url`` is set, else the embedded
SQLite file and blob directory under ``data_dir``."""

from __future__ import annotations

import asyncio

from services.files import private_dir
from services.settings import Settings
from services.store.port import BlobStore, DocumentStore


async def open_document_store(settings: Settings) -> DocumentStore:
    if settings.mongo_url:
        from services.store.mongo import MongoDocumentStore

        return await MongoDocumentStore.open(settings.mongo_url, settings.mongo_database)
    from services.store.sqlite import SqliteDocumentStore

    await asyncio.to_thread(private_dir, settings.data_dir)
    return await SqliteDocumentStore.open(settings.data_dir / "skybus.db")


async def open_blob_store(settings: Settings) -> BlobStore:
    if settings.mongo_url:
        from services.store.gridfs_blobs import GridFsBlobStore

        return await GridFsBlobStore.connect(settings.mongo_url, settings.mongo_database)
    from services.store.disk_blobs import DiskBlobStore

    await asyncio.to_thread(private_dir, settings.data_dir)
    root = await asyncio.to_thread(private_dir, settings.data_dir / "blobs")
    return DiskBlobStore(root)
