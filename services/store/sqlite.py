"""The embedded document store: one SQLite file, a table per collection.

Each table holds ``id TEXT PRIMARY KEY, version INTEGER, doc TEXT`` with the document (minus id and
version) as JSON; filters, sorts and indexes reach into it with ``json_extract``. Every write is one
autocommitted statement, so it is atomic on its own: the optimistic update is
``UPDATE ... WHERE id = ? AND version = ?``, and no transaction ever spans an ``await`` (the tasks
sharing the one connection would otherwise interleave inside it).

Several processes may open the same file (``skybus up`` and the ``skybus token`` command): WAL lets
readers run beside the writer, and a busy timeout makes a writer wait for the lock instead of
failing. ``synchronous=NORMAL`` in WAL mode survives a crash of the process, never corrupts the
file, but may lose the last commits on a power cut; pass ``synchronous="FULL"`` to fsync each one.

Type rules follow MongoDB's where they matter: a number never equals a string or a boolean,
equality with None matches a missing field or null, ``$ne`` matches a missing field, and range
operators only match values of the operand's type.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any

import aiosqlite

from services.files import create_private
from services.store._query import (
    Condition,
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

_COLUMNS = ("id", "version")
_RANGE = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_TYPES = {"num": "('integer', 'real')", "str": "('text')", "json": "('object', 'array')", "bool": "('true', 'false')"}
_UNAVAILABLE = ("locked", "busy", "unable to open", "disk i/o", "readonly", "no active connection")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "num"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict | list | tuple):
        return "json"
    raise TypeError(f"cannot filter on a {type(value).__name__}")


def _column(field: str) -> str:
    return field if field in _COLUMNS else f"json_extract(doc, '$.{field}')"


def _typed(field: str, kind: str, comparison: str) -> str:
    """``comparison`` restricted to stored values of ``kind`` (the columns have one type each)."""
    if field == "id":
        return comparison if kind == "str" else "0"
    if field == "version":
        return comparison if kind == "num" else "0"
    return f"({comparison} AND json_type(doc, '$.{field}') IN {_TYPES[kind]})"


def _bind(kind: str, value: Any) -> Any:
    if kind == "bool":
        return int(value)
    if kind == "json":
        return _dumps(value)
    return value


def _equal_any(field: str, values: Sequence[Any], params: list[Any]) -> str:
    """The field equals one of ``values`` (same kind, or each checked on its own)."""
    column = _column(field)
    parts: list[str] = []
    groups: dict[str, list[Any]] = {}
    for value in values:
        groups.setdefault(_kind(value), []).append(value)
    for kind, group in groups.items():
        if kind == "null":
            parts.append(f"{column} IS NULL")
        elif kind == "bool" and field not in _COLUMNS:
            names = ", ".join(sorted({f"'{str(value).lower()}'" for value in group}))
            parts.append(f"json_type(doc, '$.{field}') IN ({names})")
        else:
            params.extend(_bind(kind, value) for value in group)
            marks = ", ".join("?" * len(group))
            parts.append(_typed(field, kind, f"{column} IN ({marks})" if len(group) > 1 else f"{column} = ?"))
    return f"({' OR '.join(parts)})" if parts else "0"


def _condition(condition: Condition, params: list[Any]) -> str:
    field, op, value = condition.field, condition.op, condition.value
    column = _column(field)
    if op == "eq":
        return _equal_any(field, [value], params)
    if op == "in":
        return _equal_any(field, value, params)
    if op == "ne":
        if value is None:
            return f"{column} IS NOT NULL"
        return f"NOT COALESCE({_equal_any(field, [value], params)}, 0)"
    kind = _kind(value)
    if kind == "null":  # MongoDB: $gte/$lte null match null and missing, $gt/$lt null match nothing
        return f"{column} IS NULL" if op in ("gte", "lte") else "0"
    params.append(_bind(kind, value))
    return _typed(field, kind, f"{column} {_RANGE[op]} ?")


def _after(keys: Sequence[tuple[str, int]], values: Sequence[Any], params: list[Any]) -> str:
    """Rows that sort strictly after ``values`` (SQLite orders NULL first ascending, last descending)."""
    branches: list[str] = []
    for i, (field, direction) in enumerate(keys):
        parts: list[str] = []
        for prefix_field, _ in keys[:i]:
            parts.append(f"{_column(prefix_field)} IS ?")
        value = values[i]
        column = _column(field)
        if value is None:
            if direction == -1:
                continue
            parts.append(f"{column} IS NOT NULL")
        else:
            parts.append(f"{column} > ?" if direction == 1 else f"({column} < ? OR {column} IS NULL)")
        params.extend(values[:i])
        if value is not None:
            params.append(value)
        branches.append(f"({' AND '.join(parts)})")
    return f"({' OR '.join(branches)})" if branches else "0"


def _document(row: Sequence[Any]) -> Document:
    return {"id": row[0], "version": row[1], **json.loads(row[2])}


class SqliteCollection:
    def __init__(self, store: SqliteDocumentStore, name: str) -> None:
        self.name = name
        self._store = store
        self._table = f'"{name}"'
        self._ready = False

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._errors():
            if not self._ready:
                await self._store.db.execute_fetchall(
                    f"CREATE TABLE IF NOT EXISTS {self._table} "
                    "(id TEXT PRIMARY KEY, version INTEGER NOT NULL, doc TEXT NOT NULL)"
                )
                self._ready = True
            return list(await self._store.db.execute_fetchall(sql, params))

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError as exc:
            message = str(exc)
            if "UNIQUE constraint failed" not in message:
                raise
            if "index '" in message:
                fields = index_fields(message.split("index '", 1)[1].rstrip("'")) or ("?",)
            else:
                fields = tuple(part.split(".", 1)[-1] for part in message.split(": ", 1)[1].split(", "))
            raise DuplicateKey(self.name, fields) from exc
        except (sqlite3.OperationalError, ValueError) as exc:
            if any(word in str(exc).lower() for word in _UNAVAILABLE):
                raise StoreUnavailable(f"{self._store.path}: {exc}") from exc
            raise

    async def create_index(self, fields: Sequence[str], *, unique: bool = False) -> None:
        if not fields:
            raise ValueError("an index needs at least one field")
        for field in fields:
            check_field(field)
        name = index_name(fields, unique, prefix=f"{self.name}:")
        expressions = ", ".join(_column(field) for field in fields)
        unique_word = "UNIQUE " if unique else ""
        await self._run(f'CREATE {unique_word}INDEX IF NOT EXISTS "{name}" ON {self._table} ({expressions})')

    async def insert(self, document: Document) -> Document:
        document_id, fields = check_new_document(document)
        text = _dumps(fields)
        await self._run(f"INSERT INTO {self._table} (id, version, doc) VALUES (?, 1, ?)", (document_id, text))
        return {"id": document_id, "version": 1, **json.loads(text)}

    async def get(self, document_id: str) -> Document | None:
        rows = await self._run(f"SELECT id, version, doc FROM {self._table} WHERE id = ?", (document_id,))
        return _document(rows[0]) if rows else None

    async def find_one(self, filter: Filter) -> Document | None:
        params: list[Any] = []
        where = self._where(filter, params)
        rows = await self._run(f"SELECT id, version, doc FROM {self._table} WHERE {where} LIMIT 1", params)
        return _document(rows[0]) if rows else None

    async def find(
        self, filter: Filter | None = None, *, sort: Sort = (), limit: int | None = None, cursor: str | None = None
    ) -> Page:
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        keys = sort_keys(sort)
        query = fingerprint(filter, keys)
        params: list[Any] = []
        where = self._where(filter, params)
        if cursor is not None:
            where = f"{where} AND {_after(keys, decode_cursor(cursor, query, len(keys)), params)}"
        selected = ", ".join(_column(field) for field, _ in keys)
        order = ", ".join(f"{_column(field)} {'ASC' if direction == 1 else 'DESC'}" for field, direction in keys)
        sql = f"SELECT id, version, doc, {selected} FROM {self._table} WHERE {where} ORDER BY {order}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit + 1)
        rows = await self._run(sql, params)
        next_cursor = None
        if limit is not None and len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1][3:], query)
        return Page([_document(row) for row in rows], next_cursor)

    async def count(self, filter: Filter | None = None) -> int:
        params: list[Any] = []
        where = self._where(filter, params)
        rows = await self._run(f"SELECT COUNT(*) FROM {self._table} WHERE {where}", params)
        return int(rows[0][0])

    async def update(self, document_id: str, changes: Document, *, expected_version: int | None = None) -> Document:
        check_changes(changes)
        params: list[Any] = []
        assignments = "version = version + 1"
        if changes:
            paths = ", ".join(f"'$.{key}', json(?)" for key in changes)
            assignments = f"doc = json_set(doc, {paths}), {assignments}"
            params.extend(_dumps(value) for value in changes.values())
        sql = f"UPDATE {self._table} SET {assignments} WHERE id = ?"
        params.append(document_id)
        if expected_version is not None:
            sql += " AND version = ?"
            params.append(expected_version)
        rows = await self._run(f"{sql} RETURNING id, version, doc", params)
        if rows:
            return _document(rows[0])
        raise await self._why_not(document_id, expected_version)

    async def delete(self, document_id: str, *, expected_version: int | None = None) -> bool:
        sql = f"DELETE FROM {self._table} WHERE id = ?"
        params: list[Any] = [document_id]
        if expected_version is not None:
            sql += " AND version = ?"
            params.append(expected_version)
        if await self._run(f"{sql} RETURNING id", params):
            return True
        if expected_version is not None and await self.get(document_id) is not None:
            raise VersionConflict(f"{self.name}/{document_id}: not at version {expected_version}")
        return False

    async def delete_many(self, filter: Filter) -> int:
        params: list[Any] = []
        where = self._where(filter, params)
        return len(await self._run(f"DELETE FROM {self._table} WHERE {where} RETURNING id", params))

    def _where(self, filter: Filter | None, params: list[Any]) -> str:
        conditions = [_condition(condition, params) for condition in parse_filter(filter)]
        return " AND ".join(conditions) if conditions else "1"

    async def _why_not(self, document_id: str, expected_version: int | None) -> Exception:
        rows = await self._run(f"SELECT version FROM {self._table} WHERE id = ?", (document_id,))
        if not rows:
            return NotFound(f"{self.name}/{document_id}")
        return VersionConflict(f"{self.name}/{document_id}: at version {rows[0][0]}, not {expected_version}")


class SqliteDocumentStore:
    """One connection (one worker thread, via aiosqlite) shared by every task of the process."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self.db = db
        self.path = path
        self._collections: dict[str, SqliteCollection] = {}

    @classmethod
    async def open(
        cls, path: str | PathLike[str], *, busy_timeout: float = 10.0, synchronous: str = "NORMAL"
    ) -> SqliteDocumentStore:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"not a synchronous mode: {synchronous!r}")
        if str(path) != ":memory:":
            # SQLite gives the -wal and -shm files the database file's mode: 0600 from the start.
            await asyncio.to_thread(create_private, Path(path))
        try:
            db = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"{path}: {exc}") from exc
        try:
            await db.execute_fetchall("PRAGMA journal_mode=WAL")
            await db.execute_fetchall(f"PRAGMA synchronous={synchronous.upper()}")
        except sqlite3.OperationalError as exc:
            await db.close()
            raise StoreUnavailable(f"{path}: {exc}") from exc
        return cls(db, str(path))

    def collection(self, name: str) -> SqliteCollection:
        if name not in self._collections:
            self._collections[name] = SqliteCollection(self, check_collection_name(name))
        return self._collections[name]

    async def close(self) -> None:
        await self.db.close()
