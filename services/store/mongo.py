"""The production document store: MongoDB through PyMongo's native async client.

A document's ``id`` is stored as ``_id``; everything else is stored as given. Filters need little
translation because the port's filter language is MongoDB's own subset; sorts and cursors go
through :mod:`services.store._query` so that pagination behaves exactly as in the SQLite adapter.

A unique index ignores documents that lack one of its fields (a partial index on ``$exists``),
which is what SQLite does for NULLs; a plain MongoDB unique index would let only one such document
in. Network trouble (no server selected in time, a dropped connection) raises
:class:`StoreUnavailable`; the client reconnects by itself on the next call.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pymongo import AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, DuplicateKeyError

from services.store._query import (
    check_changes,
    check_collection_name,
    check_field,
    check_new_document,
    decode_cursor,
    encode_cursor,
    fingerprint,
    index_fields,
    index_name,
    parse_filter,
    sort_keys,
    value_at,
)
from services.store.port import (
    Document,
    DuplicateKey,
    Filter,
    NotFound,
    Page,
    Sort,
    StoreUnavailable,
    VersionConflict,
)

_NOTHING: dict[str, Any] = {"_id": {"$in": []}}


def _field(field: str) -> str:
    return "_id" if field == "id" else field


def _equal(value: Any) -> Any:
    """An equality operand; a dict is wrapped so MongoDB cannot read it as operators."""
    return {"$eq": value} if isinstance(value, dict) else value


def _query(filter: Filter | None) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for condition in parse_filter(filter):
        name = _field(condition.field)
        if condition.op == "eq":
            query[name] = _equal(condition.value)
        else:
            query.setdefault(name, {})[f"${condition.op}"] = condition.value
    return query


def _after(keys: Sequence[tuple[str, int]], values: Sequence[Any]) -> dict[str, Any]:
    """Documents that sort strictly after ``values`` (missing and null sort first ascending)."""
    branches: list[dict[str, Any]] = []
    for i, (field, direction) in enumerate(keys):
        clauses: list[dict[str, Any]] = [{_field(prior): _equal(values[j])} for j, (prior, _) in enumerate(keys[:i])]
        value, name = values[i], _field(field)
        if value is None:
            if direction == -1:
                continue
            clauses.append({name: {"$ne": None}})
        elif direction == 1:
            clauses.append({name: {"$gt": value}})
        else:
            clauses.append({"$or": [{name: {"$lt": value}}, {name: None}]})
        branches.append({"$and": clauses})
    return {"$or": branches} if branches else _NOTHING


def _document(raw: dict[str, Any]) -> Document:
    document_id = raw.pop("_id")
    version = raw.pop("version", None)
    return {"id": document_id, "version": version, **raw}


def _sort_value(raw: dict[str, Any], field: str) -> Any:
    return raw["_id"] if field == "id" else value_at(raw, field)


class MongoCollection:
    def __init__(self, name: str, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.name = name
        self._collection = collection

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except DuplicateKeyError as exc:
            raise DuplicateKey(self.name, _duplicate_fields(exc)) from exc
        except ConnectionFailure as exc:
            raise StoreUnavailable(f"MongoDB: {exc}") from exc

    async def create_index(self, fields: Sequence[str], *, unique: bool = False) -> None:
        if not fields:
            raise ValueError("an index needs at least one field")
        for field in fields:
            check_field(field)
        if list(fields) == ["id"]:
            return  # _id has its unique index already
        options: dict[str, Any] = {"name": index_name(fields, unique)}
        if unique:
            options["unique"] = True
            options["partialFilterExpression"] = {_field(field): {"$exists": True} for field in fields}
        with self._errors():
            await self._collection.create_index([(_field(field), 1) for field in fields], **options)

    async def insert(self, document: Document) -> Document:
        document_id, fields = check_new_document(document)
        fields = copy.deepcopy(fields)
        with self._errors():
            await self._collection.insert_one({"_id": document_id, "version": 1, **fields})
        return {"id": document_id, "version": 1, **fields}

    async def get(self, document_id: str) -> Document | None:
        with self._errors():
            raw = await self._collection.find_one({"_id": document_id})
        return _document(raw) if raw is not None else None

    async def find_one(self, filter: Filter) -> Document | None:
        with self._errors():
            raw = await self._collection.find_one(_query(filter))
        return _document(raw) if raw is not None else None

    async def find(
        self, filter: Filter | None = None, *, sort: Sort = (), limit: int | None = None, cursor: str | None = None
    ) -> Page:
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        keys = sort_keys(sort)
        query_id = fingerprint(filter, keys)
        query = _query(filter)
        if cursor is not None:
            query = {"$and": [query, _after(keys, decode_cursor(cursor, query_id, len(keys)))]}
        found = self._collection.find(query, sort=[(_field(field), direction) for field, direction in keys])
        if limit is not None:
            found = found.limit(limit + 1)
        with self._errors():
            raws = await found.to_list()
        next_cursor = None
        if limit is not None and len(raws) > limit:
            raws = raws[:limit]
            next_cursor = encode_cursor([_sort_value(raws[-1], field) for field, _ in keys], query_id)
        return Page([_document(raw) for raw in raws], next_cursor)

    async def count(self, filter: Filter | None = None) -> int:
        with self._errors():
            return await self._collection.count_documents(_query(filter))

    async def update(self, document_id: str, changes: Document, *, expected_version: int | None = None) -> Document:
        check_changes(changes)
        update: dict[str, Any] = {"$inc": {"version": 1}}
        if changes:
            update["$set"] = dict(changes)
        selector: dict[str, Any] = {"_id": document_id}
        if expected_version is not None:
            selector["version"] = expected_version
        with self._errors():
            raw = await self._collection.find_one_and_update(selector, update, return_document=ReturnDocument.AFTER)
            if raw is not None:
                return _document(raw)
            current = await self._collection.find_one({"_id": document_id}, {"version": 1})
        if current is None:
            raise NotFound(f"{self.name}/{document_id}")
        raise VersionConflict(f"{self.name}/{document_id}: at version {current.get('version')}, not {expected_version}")

    async def delete(self, document_id: str, *, expected_version: int | None = None) -> bool:
        selector: dict[str, Any] = {"_id": document_id}
        if expected_version is not None:
            selector["version"] = expected_version
        with self._errors():
            if (await self._collection.delete_one(selector)).deleted_count:
                return True
            if expected_version is None:
                return False
            current = await self._collection.find_one({"_id": document_id}, {"version": 1})
        if current is not None:
            raise VersionConflict(f"{self.name}/{document_id}: at version {current.get('version')}")
        return False

    async def delete_many(self, filter: Filter) -> int:
        with self._errors():
            return (await self._collection.delete_many(_query(filter))).deleted_count


def _duplicate_fields(exc: DuplicateKeyError) -> tuple[str, ...]:
    """The fields of the unique index that ``exc`` names (keyPattern since MongoDB 4.2, else the name)."""
    details = exc.details or {}
    pattern = details.get("keyPattern")
    if isinstance(pattern, dict) and pattern:
        return tuple("id" if key == "_id" else key for key in pattern)
    match = re.search(r"index: (\S+) dup key", str(details.get("errmsg") or exc))
    if match:
        if match[1] == "_id_":
            return ("id",)
        fields = index_fields(match[1])
        if fields:
            return fields
    return ("?",)


class MongoDocumentStore:
    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: AsyncDatabase[dict[str, Any]]) -> None:
        self.client = client
        self.database = database
        self._collections: dict[str, MongoCollection] = {}

    @classmethod
    async def open(cls, url: str, database: str, *, server_selection_timeout: float = 5.0) -> MongoDocumentStore:
        """Connects lazily: an unreachable server shows as :class:`StoreUnavailable` on first use."""
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=int(server_selection_timeout * 1000), appname="skybus"
        )
        return cls(client, client[database])

    def collection(self, name: str) -> MongoCollection:
        if name not in self._collections:
            self._collections[name] = MongoCollection(check_collection_name(name), self.database[name])
        return self._collections[name]

    async def close(self) -> None:
        await self.client.close()
