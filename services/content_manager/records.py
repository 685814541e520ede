"""The content manager's read surface: typed records of stored content (seed 004's resources and
the data files of jobs) and the queries others may run. Nothing outside this package imports
anything else from it. Only the content manager writes these documents.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.content_manager.domain import DATA
from services.content_manager.repository import CONTENTS, PAGE, resource_at, resources_of
from services.store.port import DocumentStore


@dataclass(frozen=True, slots=True)
class ContentRecord:
    """One stored item. ``path`` and ``settings`` (the ResourceInfo fields, by their Python names)
    are None on data files."""

    id: str
    kind: str
    owner: str
    name: str | None
    path: str | None
    blob_id: str
    size: int
    sha256: str | None
    settings: Mapping[str, Any] | None
    granted_to: Collection[str]
    created_at: float | None
    updated_at: float | None

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ContentRecord:
        return cls(
            id=document["id"],
            kind=document.get("kind", DATA),
            owner=document["owner"],
            name=document.get("name"),
            path=document.get("path"),
            blob_id=document.get("blob_id", ""),
            size=document.get("size", 0),
            sha256=document.get("sha256"),
            settings=document.get("resource"),
            granted_to=document.get("granted_to", ()),
            created_at=document.get("created_at"),
            updated_at=document.get("updated_at"),
        )

    def may_read(self, *, user: str, admin: bool, resource_id: str | None) -> bool:
        """The owner and admins, and an agent whose host the item was granted to (a job's file)."""
        if admin or self.owner == user:
            return True
        return resource_id is not None and resource_id in self.granted_to

    def may_change(self, *, user: str, admin: bool) -> bool:
        return admin or self.owner == user


async def get_item(store: DocumentStore, item_id: str) -> ContentRecord | None:
    document = await store.collection(CONTENTS).get(item_id)
    return None if document is None else ContentRecord.from_document(document)


async def get_items(store: DocumentStore, item_ids: Sequence[str]) -> dict[str, ContentRecord]:
    """The stored items among ``item_ids``, by id (unknown ids are simply absent)."""
    if not item_ids:
        return {}
    found = await store.collection(CONTENTS).find({"id": {"$in": list(item_ids)}}, limit=len(item_ids))
    return {document["id"]: ContentRecord.from_document(document) for document in found.items}


async def item_at(store: DocumentStore, path: str) -> ContentRecord | None:
    """The resource stored at a seed 004 resource path."""
    document = await resource_at(store.collection(CONTENTS), path)
    return None if document is None else ContentRecord.from_document(document)


async def items_of(store: DocumentStore, owner: str | None) -> AsyncIterator[ContentRecord]:
    """Every resource in path order, a page at a time; only ``owner``'s unless it is None (admin)."""
    async for document in resources_of(store.collection(CONTENTS), owner):
        yield ContentRecord.from_document(document)


async def data_files_of(store: DocumentStore, owner: str | None, *, limit: int) -> list[ContentRecord]:
    """Plain data files (job inputs, binaries, answers), newest first; only ``owner``'s unless None (admin)."""
    query: dict[str, Any] = {"kind": DATA}
    if owner is not None:
        query["owner"] = owner
    page = await store.collection(CONTENTS).find(query, sort=[("created_at", -1)], limit=limit)
    return [ContentRecord.from_document(document) for document in page.items]


async def stored_bytes(store: DocumentStore, owner: str) -> int:
    """The bytes of everything ``owner`` stores (data files and seed 004 resources), a page at a time."""
    contents = store.collection(CONTENTS)
    total, cursor = 0, None
    while True:
        page = await contents.find({"owner": owner}, limit=PAGE, cursor=cursor)
        total += sum(int(document.get("size", 0)) for document in page.items)
        if page.next_cursor is None:
            return total
        cursor = page.next_cursor
