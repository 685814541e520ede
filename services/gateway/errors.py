"""Errors in each seed's own shape, and the middleware that never lets a traceback out."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from broker.port import BusUnavailable, NoRoute, RequestTimeout
from services.store.port import StoreUnavailable

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the client should see, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


ErrorShape = Callable[[web.Request, int, str], Any]


class Error(BaseModel):
    """``{"error": "..."}``: the error body of seeds 000, 001, 002 and 003, and of skybus's own routes."""

    error: str


class TimestampedError(BaseModel):
    """Seed 004's error, sent as a JSON array of one."""

    timestamp: str
    status: int
    error: str
    message: str
    path: str


def simple_error(request: web.Request, status: int, message: str) -> Any:
    """``{"error": "..."}``: seeds 000, 001, 002 and 003."""
    return Error(error=message).model_dump()


def seed_timestamp(now: datetime | None = None) -> str:
    """``2019-02-08T18:29:49.597+0000``: UTC with milliseconds, as seed 004 shows it."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now:%Y-%m-%dT%H:%M:%S}.{now.microsecond // 1000:03d}+0000"


def timestamped_error(request: web.Request, status: int, message: str) -> Any:
    """Seed 004: a JSON array of one ``{timestamp, status, error, message, path}`` object."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    body = TimestampedError(timestamp=seed_timestamp(), status=status, error=reason, message=message, path=request.path)
    return [body.model_dump()]


# Path prefix → the error body of the API served there; the first match wins.
ERROR_SHAPES: list[tuple[str, ErrorShape]] = [("/resources", timestamped_error)]
ERROR_SCHEMAS: dict[ErrorShape, Any] = {simple_error: Error, timestamped_error: list[TimestampedError]}
"""The type of each shape's body, for ``/openapi.json``."""


def error_shape(path: str) -> ErrorShape:
    return next((fn for prefix, fn in ERROR_SHAPES if path.startswith(prefix)), simple_error)


def error_response(request: web.Request, status: int, message: str) -> web.Response:
    return web.json_response(error_shape(request.path)(request, status, message), status=status)


def unreadable_body(request: web.Request, error: web.RequestPayloadError) -> str:
    """Why the body could not be read, naming the header to blame: aiohttp decodes a
    ``Content-Encoding`` while the body streams in and fails the read when the bytes are not that."""
    cause = error.__cause__ or error
    detail = getattr(cause, "message", "") or str(cause)
    encoding = request.headers.get("Content-Encoding")
    if encoding:
        return f"Content-Encoding: the body is not valid {encoding} data ({detail.strip() or type(cause).__name__})"
    return f"the body could not be read ({detail.strip() or type(cause).__name__})"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(request, error.status, error.message)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        message = error.text if error.text and not error.text.startswith(str(error.status)) else error.reason
        return error_response(request, error.status, message)
    except web.RequestPayloadError as error:
        response = error_response(request, 400, unreadable_body(request, error))
        response.force_close()  # the rest of the body cannot be read: the connection cannot carry another request
        return response
    except (BusUnavailable, NoRoute, StoreUnavailable) as error:
        log.warning("%s %s: service unavailable: %s", request.method, request.path, error)
        return error_response(request, 503, f"service unavailable, try again shortly: {error}")
    except RequestTimeout as error:
        log.warning("%s %s: %s", request.method, request.path, error)
        return error_response(request, 504, f"no answer in time: {error}")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(request, 500, "internal error")
