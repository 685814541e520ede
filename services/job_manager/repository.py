"""The job manager's store access: the ``jobs`` collection, which only it writes (others read it through records.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from services.store.port import Collection, DocumentStore, Filter, Sort

JOBS = "jobs"


async def jobs_collection(store: DocumentStore) -> Collection:
    jobs = store.collection(JOBS)
    await jobs.create_index(["created_at"])
    await jobs.create_index(["user", "created_at"])
    await jobs.create_index(["state", "created_at"])
    await jobs.create_index(["resource_id", "state"])
    await jobs.create_index(["expires_at"])
    await jobs.create_index(["answer_id"])  # a small answer is read by its id (records.answer_by_id)
    return jobs


async def each(
    collection: Collection, filter: Filter, *, sort: Sort = (), page: int = 500
) -> AsyncIterator[dict[str, Any]]:
    """Every matching document, a page at a time."""
    cursor = None
    while True:
        found = await collection.find(filter, sort=sort, limit=page, cursor=cursor)
        for document in found.items:
            yield document
        if found.next_cursor is None:
            return
        cursor = found.next_cursor
