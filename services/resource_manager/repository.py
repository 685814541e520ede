"""The resource manager's store access: ``resources``, which only it writes (others read it through records.py)."""

from __future__ import annotations

from typing import Any

from services.store.port import Collection, DocumentStore

RESOURCES = "resources"


async def resources_collection(store: DocumentStore) -> Collection:
    collection = store.collection(RESOURCES)
    await collection.create_index(["hostname"], unique=True)
    await collection.create_index(["responding", "last_response_time"])
    await collection.create_index(["token_hash"])  # the gateway finds an agent by its token
    await collection.create_index(["user", "hostname"])  # the gateway lists a user's nodes
    return collection


async def responding_hosts(resources: Collection) -> list[dict[str, Any]]:
    """Hosts stored as responding."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await resources.find({"responding": True}, limit=500, cursor=cursor)
        found.extend(page.items)
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor
