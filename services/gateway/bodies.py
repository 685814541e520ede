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


def parse_json(text: str) -> Any:
    """JSON, forgiving one thing: a trailing comma before ``}`` or ``]``, as the seeds' samples have."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        try:
            return json.loads(without_trailing_commas(text))
        except json.JSONDecodeError:
            raise ApiError(400, f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None


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
