"""The document-store and blob-store ports.

Documents are JSON-like dicts (str, int, float, bool, None, lists, dicts) with a string ``id``
and a ``version`` the store keeps: 1 on insert, +1 on every update. Times are stored as UTC epoch
seconds (float), so they sort and compare the same way in every adapter.

Filters are a small subset of MongoDB's: ``{"field": value}`` for equality, and
``{"field": {"$in": [...]}}``, ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte``; dotted names reach into
nested documents. Sorts are ``[("field", 1 | -1), ...]``; ``id`` is always the last tie-breaker, so
cursor pagination is stable. A cursor is opaque: pass back what :class:`Page` gave.

Optimistic concurrency: ``update`` and ``delete`` take an ``expected_version``; a stale one raises
:class:`VersionConflict` instead of overwriting a concurrent change.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Document = dict[str, Any]
Filter = dict[str, Any]
Sort = Sequence[tuple[str, int]]


class StoreError(Exception):
    """Base of the errors a store raises."""


class DuplicateKey(StoreError):
    """An insert or update would repeat the value of ``id`` or of a unique index."""

    def __init__(self, collection: str, fields: Sequence[str]) -> None:
        self.collection = collection
        self.fields = tuple(fields)
        super().__init__(f"{collection}: duplicate value for unique {', '.join(self.fields)}")


class NotFound(StoreError):
    """No document has that id."""


class VersionConflict(StoreError):
    """The document changed since the version the caller read."""


class StoreUnavailable(StoreError):
    """The database cannot be reached."""


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Document]
    next_cursor: str | None = None


class Collection(Protocol):
    name: str

    async def create_index(self, fields: Sequence[str], *, unique: bool = False) -> None:
        """Idempotent: declaring the same index twice is a no-op."""

    async def insert(self, document: Document) -> Document:
        """Store a new document (``id`` required) at version 1; :class:`DuplicateKey` if taken."""

    async def get(self, document_id: str) -> Document | None: ...

    async def find_one(self, filter: Filter) -> Document | None: ...

    async def find(
        self, filter: Filter | None = None, *, sort: Sort = (), limit: int | None = None, cursor: str | None = None
    ) -> Page:
        """Matching documents in ``sort`` order (then ``id``), ``limit`` at a time."""

    async def count(self, filter: Filter | None = None) -> int: ...

    async def update(self, document_id: str, changes: Document, *, expected_version: int | None = None) -> Document:
        """Set the top-level fields in ``changes``, bump the version, return the new document.

        :class:`NotFound` if there is no such document, :class:`VersionConflict` if
        ``expected_version`` is given and is not the stored one, :class:`DuplicateKey` if a unique
        index would be broken.
        """

    async def delete(self, document_id: str, *, expected_version: int | None = None) -> bool:
        """True if a document was deleted; :class:`VersionConflict` on a stale version."""

    async def delete_many(self, filter: Filter) -> int: ...


class DocumentStore(Protocol):
    def collection(self, name: str) -> Collection: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BlobInfo:
    id: str
    size: int
    sha256: str
    created_at: float = field(compare=False)


class BlobNotFound(StoreError):
    """No blob has that id."""


class BlobTooLarge(StoreError):
    """The stream went past the size limit; nothing was kept."""


class BlobStore(Protocol):
    """Immutable blobs, streamed in and out in chunks; never read whole into memory."""

    async def put(self, chunks: AsyncIterable[bytes], *, max_size: int | None = None) -> BlobInfo:
        """Store the stream under a new id. On any failure (or :class:`BlobTooLarge`) nothing is kept."""

    def open(self, blob_id: str, *, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        """Stream a blob's bytes; raises :class:`BlobNotFound` on the first iteration if unknown."""

    async def info(self, blob_id: str) -> BlobInfo | None: ...

    async def delete(self, blob_id: str) -> bool: ...

    def list(self, *, created_before: float | None = None) -> AsyncIterator[BlobInfo]:
        """Every blob (older than ``created_before`` if given), for orphan cleanup."""

    async def cleanup_temp(self, max_age: float = 3600.0) -> int:
        """Remove what puts that never finished left behind (a killed process) once ``max_age`` old."""

    async def close(self) -> None: ...
