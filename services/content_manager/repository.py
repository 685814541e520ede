"""The content manager's store access. It alone writes these collections; others read them through records.py.

* ``contents``: every stored item (seed 004 resources and data files), by id; ``path`` is unique
  among the documents that have one (resources).
* ``content_tombstones``: the ids of deleted items, kept for a week, so that a store command
  redelivered after its item was deleted does not bring the item back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from services.content_manager.domain import RESOURCE
from services.store.port import Collection, DocumentStore

CONTENTS = "contents"
TOMBSTONES = "content_tombstones"
PAGE = 500


async def contents_collection(store: DocumentStore) -> Collection:
    collection = store.collection(CONTENTS)
    await collection.create_index(["path"], unique=True)
    await collection.create_index(["kind", "owner", "path"])
    await collection.create_index(["blob_id"])
    return collection


async def tombstones_collection(store: DocumentStore) -> Collection:
    collection = store.collection(TOMBSTONES)
    await collection.create_index(["deleted_at"])
    return collection


async def resource_at(contents: Collection, path: str) -> dict[str, Any] | None:
    return await contents.find_one({"path": path})


async def resources_of(contents: Collection, owner: str | None) -> AsyncIterator[dict[str, Any]]:
    """Every resource in path order, a page at a time; only ``owner``'s unless it is None (admin)."""
    query: dict[str, Any] = {"kind": RESOURCE}
    if owner is not None:
        query["owner"] = owner
    cursor = None
    while True:
        page = await contents.find(query, sort=[("path", 1)], limit=PAGE, cursor=cursor)
        for document in page.items:
            yield document
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


async def is_referenced(contents: Collection, blob_id: str) -> bool:
    return await contents.find_one({"blob_id": blob_id}) is not None
