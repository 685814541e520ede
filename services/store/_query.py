"""What both document-store adapters must agree on: filter parsing, sort keys, cursors, index names.

A filter is parsed once into :class:`Condition` triples that each adapter renders in its own query
language, so the two cannot drift on what a filter means. Field names are checked against a strict
pattern because the SQLite adapter inlines JSON paths into SQL (an expression index is only used
when the query repeats its expression literally, so the path cannot be a bound parameter).

A cursor is the urlsafe base64 of ``{"k": [sort values..., id], "q": <query fingerprint>}``: the
next page starts strictly after that key, so documents inserted or deleted between pages never
cause a repeat or a gap among the others. The fingerprint rejects a cursor handed to another query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.store.port import Document, Filter, Sort

FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
OPERATORS = {"$in": "in", "$ne": "ne", "$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}
MANAGED = ("id", "version")


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    op: str  # eq, in, ne, gt, gte, lt, lte
    value: Any


def check_field(field: str) -> str:
    if not isinstance(field, str) or not FIELD.match(field):
        raise ValueError(f"not a valid field name: {field!r}")
    if field.split(".", 1)[0] in MANAGED and field not in MANAGED:
        raise ValueError(f"{field!r}: id and version have no sub-fields")
    return field


def check_collection_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"not a valid collection name: {name!r}")
    return name


def parse_filter(filter: Filter | None) -> list[Condition]:
    conditions: list[Condition] = []
    for field, value in (filter or {}).items():
        check_field(field)
        if isinstance(value, dict) and any(isinstance(key, str) and key.startswith("$") for key in value):
            for key, operand in value.items():
                if key not in OPERATORS:
                    raise ValueError(f"{field}: unsupported operator {key!r}")
                op = OPERATORS[key]
                if op == "in" and not isinstance(operand, list | tuple | set | frozenset):
                    raise ValueError(f"{field}: $in takes a list")
                if op in ("gt", "gte", "lt", "lte") and isinstance(operand, dict | list):
                    raise ValueError(f"{field}: ${op} takes a number, a string or a boolean")
                conditions.append(Condition(field, op, list(operand) if op == "in" else operand))
        else:
            conditions.append(Condition(field, "eq", value))
    return conditions


def sort_keys(sort: Sort) -> list[tuple[str, int]]:
    """The sort with ``id`` as the last key (ascending unless the caller sorted on it already)."""
    keys: list[tuple[str, int]] = []
    for field, direction in sort:
        check_field(field)
        if direction not in (1, -1):
            raise ValueError(f"{field}: sort direction must be 1 or -1, not {direction!r}")
        keys.append((field, direction))
        if field == "id":
            return keys
    keys.append(("id", 1))
    return keys


def check_changes(changes: Document) -> Document:
    for key in changes:
        if key in MANAGED:
            raise ValueError(f"{key!r} is kept by the store and cannot be changed")
        if not isinstance(key, str) or not NAME.match(key):
            raise ValueError(f"update sets top-level fields only, not {key!r}")
    return changes


def check_new_document(document: Document) -> tuple[str, Document]:
    """The id and the other fields of a document to insert (any ``version`` given is ignored)."""
    document_id = document.get("id")
    if not isinstance(document_id, str) or not document_id:
        raise ValueError("a document needs a non-empty string id")
    return document_id, {key: value for key, value in document.items() if key not in MANAGED}


def fingerprint(filter: Filter | None, keys: Sequence[tuple[str, int]]) -> str:
    text = json.dumps([filter or {}, list(keys)], sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def encode_cursor(values: Sequence[Any], query: str) -> str:
    text = json.dumps({"k": list(values), "q": query}, separators=(",", ":"), allow_nan=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, query: str, size: int) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        values, owner = data["k"], data["q"]
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        raise ValueError("not a cursor this store gave") from exc
    if owner != query or not isinstance(values, list) or len(values) != size:
        raise ValueError("the cursor belongs to another query (filter or sort changed)")
    if not all(value is None or isinstance(value, str | int | float) for value in values):
        raise ValueError("not a cursor this store gave")  # forged: a sort value is never a list or an object
    if not isinstance(values[-1], str):
        raise ValueError("not a cursor this store gave")  # the last value is the id
    return values


def index_name(fields: Sequence[str], unique: bool, prefix: str = "") -> str:
    """``ux:a.b,c`` for a unique index on ``a.b`` and ``c``; :func:`index_fields` reads it back."""
    return f"{'ux' if unique else 'ix'}:{prefix}{','.join(fields)}"


def index_fields(name: str) -> tuple[str, ...] | None:
    kind, _, rest = name.partition(":")
    if kind not in ("ux", "ix") or not rest:
        return None
    return tuple(rest.rpartition(":")[2].split(","))


def value_at(document: Document, field: str) -> Any:
    """The value at a dotted path, None when any part is missing (as both databases see it)."""
    value: Any = document
    for part in field.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value
