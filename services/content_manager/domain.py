"""Pure rules of stored content: what a stored item looks like and how a command changes it.
Seed 004's shared rules (refusals, whole settings) are in :mod:`schemas.content_rules`; the
gateway's request parsing and views in :mod:`services.gateway.content_views`.

A stored item (one document of the ``contents`` collection)::

    {id, kind: "resource" | "data", owner, name, path (resources only), blob_id, size, sha256,
     resource: {resource_type, mime_type, pool_name, timeout} (resources only),
     granted_to: [resource ids], created_at, updated_at, applied: [recent message ids]}

``timeout`` is stored as given: null stays null (and is reported as null, as the seed does) and
means :data:`schemas.content_rules.DEFAULT_TIMEOUT` seconds to whoever evaluates the resource.
"""

from __future__ import annotations

from typing import Any

from schemas.content import BlobRef, ResourceSettings

RESOURCE = "resource"
DATA = "data"

APPLIED_KEPT = 32  # message ids remembered per item, to recognise a redelivered command


# Stored items.


def new_item(
    *,
    item_id: str,
    kind: str,
    owner: str,
    name: str | None,
    blob: BlobRef,
    message_id: str,
    now: float,
    path: str | None = None,
    settings: ResourceSettings | None = None,
    granted_to: tuple[str, ...] = (),
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": item_id,
        "kind": kind,
        "owner": owner,
        "name": name,
        "blob_id": blob.blob_id,
        "size": blob.size,
        "sha256": blob.sha256,
        "granted_to": list(dict.fromkeys(granted_to)),
        "created_at": now,
        "updated_at": now,
        "applied": [message_id],
    }
    if kind == RESOURCE:
        # Absent (not null) on data files: the unique index on path covers only documents that have one.
        document["path"] = path
        document["resource"] = settings.model_dump() if settings else None
    return document


def was_applied(document: dict[str, Any], message_id: str) -> bool:
    """A redelivered command finds its own message id in the item it already changed."""
    return message_id in document.get("applied", ())


def applied_with(document: dict[str, Any], message_id: str) -> list[str]:
    return [*document.get("applied", ()), message_id][-APPLIED_KEPT:]


def changes_for(
    document: dict[str, Any],
    *,
    message_id: str,
    now: float,
    blob: BlobRef | None = None,
    filename: str | None = None,
    settings: ResourceSettings | None = None,
) -> dict[str, Any]:
    """One update that points an item at a new blob and/or new settings, and remembers the command."""
    changes: dict[str, Any] = {"updated_at": now, "applied": applied_with(document, message_id)}
    if blob is not None:
        changes.update(blob_id=blob.blob_id, size=blob.size, sha256=blob.sha256, name=filename)
    if settings is not None:
        changes["resource"] = settings.model_dump()
    return changes


def is_expired_claim(blob_created_at: float, now: float, grace: float) -> bool:
    """An upload older than half the orphan grace may already be in the cleaner's hands: refuse it,
    so the cleaner never deletes a blob that a late command is committing."""
    return blob_created_at < now - grace / 2
