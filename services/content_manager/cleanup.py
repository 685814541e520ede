"""The orphan cleaner: what a crash or an abandoned request leaves behind, deleted once it is old.

An orphan is a blob that no item refers to: an upload whose command never came (the client or the
gateway died, the request timed out and was never handled), or a replaced or deleted item's blob
whose deletion a crash interrupted. Only blobs older than the grace period are considered, and the
manager refuses to commit a claim older than half of it (:func:`domain.is_expired_claim`), so the
cleaner never deletes a blob that a late command is committing. Safe beside the handlers and beside
a twin cleaner: deleting a blob twice is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.content_manager.repository import is_referenced
from services.store.port import BlobStore, Collection

log = logging.getLogger(__name__)

TOMBSTONE_TTL = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Cleanup:
    blobs: int
    temp_files: int
    tombstones: int


async def collect_orphans(
    contents: Collection, tombstones: Collection, blobs: BlobStore, *, grace: float, now: float
) -> Cleanup:
    """Delete unreferenced blobs older than ``grace``, stale partial uploads, and week-old tombstones."""
    removed = 0
    async for blob in blobs.list(created_before=now - grace):
        if not await is_referenced(contents, blob.id) and await blobs.delete(blob.id):
            log.info("deleted orphan blob %s (%d bytes)", blob.id, blob.size)
            removed += 1
    temp_files = await blobs.cleanup_temp(max_age=grace)
    pruned = await tombstones.delete_many({"deleted_at": {"$lt": now - TOMBSTONE_TTL}})
    return Cleanup(blobs=removed, temp_files=temp_files, tombstones=pruned)
