"""Reading a request body into its pydantic model.

The seeds' sample calls use ``curl --data '{...}'``, which sends curl's default form content type
with a JSON body, so a body is read as JSON whatever its Content-Type says, and as form fields
(``hostname=...&user=...``) when it is not JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from aiohttp import web
from pydantic import BaseModel, ValidationError

from services.gateway.errors import ApiError

M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 1024 * 1024
MAX_DEPTH = 64
"""Arrays and objects a JSON body may nest: deeper ones are refused before they reach a model, the
bus's codec or the store, each of which recurses."""


async def read_fields(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiError(400, f"body is not UTF-8 text (byte {error.start})") from None
    stripped = text.strip()
    if not stripped:
        return {}
    if stripped[0] in '{["' or request.content_type == "application/json":
        value = parse_json(text)
        if not isinstance(value, dict):
            raise ApiError(400, "body must be a JSON object")
        return value
    pairs = parse_qsl(stripped, keep_blank_values=True)
    if not pairs:
        raise ApiError(400, "body must be a JSON object or form fields")
    return dict(pairs)


def parse_json(text: str, what: str = "body") -> Any:
    """JSON, forgiving one thing: a trailing comma before ``}`` or ``]``, as the seeds' samples have.
    Nesting deeper than :data:`MAX_DEPTH` is a 400 naming ``what``."""
    try:
        return shallow(json.loads(text), what)
    except json.JSONDecodeError as error:
        try:
            return shallow(json.loads(without_trailing_commas(text)), what)
        except json.JSONDecodeError:
            raise ApiError(400, f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
        except RecursionError:
            raise ApiError(400, too_deep(what)) from None
    except RecursionError:
        raise ApiError(400, too_deep(what)) from None


def too_deep(what: str) -> str:
    return f"{what}: JSON nested deeper than {MAX_DEPTH} levels"


def depth(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON value, counted without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level + 1)
        stack.extend((child, level + 1) for child in children)
    return deepest


def shallow(value: Any, what: str) -> Any:
    if depth(value) > MAX_DEPTH:
        raise ApiError(400, too_deep(what))
    return value


_CLOSING = re.compile(r"\s*[}\]]")


def without_trailing_commas(text: str) -> str:
    """Drop each comma that only whitespace separates from a closing bracket, outside strings."""
    out: list[str] = []
    in_string = escaped = False
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "," and _CLOSING.match(text, index + 1):
            continue
        out.append(char)
    return "".join(out)


def validate(model: type[M], fields: dict[str, Any]) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        raise ApiError(400, describe(error)) from None


async def parse_body(request: web.Request, model: type[M]) -> M:
    return validate(model, await read_fields(request))


def describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
