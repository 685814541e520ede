"""Seed 004's requests and views at the gateway: valid resource paths and ResourceInfo parts, the
ResourceInfo of a stored resource, the Content-Type it is served with, and the file names of data.
An item's name becomes a file name on the hosts its job runs on.
"""

from __future__ import annotations

import json
import mimetypes
import re
from typing import Any

from schemas.content import ResourceInfo, ResourceSettings, ResourceSettingsPatch
from schemas.content_rules import (
    AUTOMATIC,
    BAD_MIME,
    BAD_POOL,
    BAD_TIMEOUT,
    BAD_TYPE,
    NOT_JSON,
    PATH_MODIFIED,
    PATH_REQUIRED,
    RESOURCE_TYPES,
    ContentError,
    check_settings,
)
from services.content_manager.records import ContentRecord
from services.gateway.bodies import MAX_DEPTH, depth, too_deep

MAX_PATH_BYTES = 1024
RESERVED_FIRST_SEGMENT = ".applicationserver"
_FIELDS = {"resourcePath", "resourceType", "mimeType", "poolName", "timeout"}
_MIME = re.compile(r"^[A-Za-z0-9][\w.+-]*/[\w.+-]+(\s*;\s*[\w.+-]+=(\"[^\"\\]*\"|[\w.+-]+))*$")
_MAX_TIMEOUT = 7 * 24 * 3600
# Types the standard table lacks for the Wolfram files seed 004 deploys.
_EXTRA_TYPES = {
    ".wl": "application/vnd.wolfram.mathematica.package",
    ".m": "application/vnd.wolfram.mathematica.package",
    ".nb": "application/vnd.wolfram.mathematica",
}
_TYPES = mimetypes.MimeTypes()  # the built-in table only: the same answer on every machine


def check_path(path: Any) -> str:
    """A resource path: relative, ``/``-separated, no empty, ``.`` or ``..`` segment, printable."""
    if path is None:
        raise ContentError(400, PATH_REQUIRED)
    if not isinstance(path, str):
        raise ContentError(400, "The resourcePath must be a string.")
    problem = _path_problem(path)
    if problem:
        raise ContentError(400, f"The resourcePath is not valid: {problem}.")
    return path


def _path_problem(path: str) -> str | None:
    if not path:
        return "it is empty"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"it is longer than {MAX_PATH_BYTES} bytes"
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in path):
        return "it contains control characters"
    if path.startswith("/"):
        return "it starts with /"
    segments = path.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return "it has an empty, '.' or '..' segment"
    if segments[0] == RESERVED_FIRST_SEGMENT:
        return f"{RESERVED_FIRST_SEGMENT}/ is reserved"
    return None


def parse_resource_info(text: str | None) -> dict[str, Any]:
    """The ``resourceInfo`` part: a JSON object, or seed 004's 400."""
    if text is None:
        raise ContentError(400, "Required request part 'resourceInfo' is not present")
    try:
        value = json.loads(text)
    except ValueError:
        raise ContentError(400, NOT_JSON) from None
    except RecursionError:
        raise ContentError(400, too_deep("resourceInfo")) from None
    if depth(value) > MAX_DEPTH:
        raise ContentError(400, too_deep("resourceInfo"))
    if not isinstance(value, dict):
        raise ContentError(400, NOT_JSON)
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        raise ContentError(400, f"Unknown field {unknown[0]!r} in resourceInfo: expected {', '.join(sorted(_FIELDS))}.")
    return value


def _resource_type(value: Any) -> str:
    if not isinstance(value, str) or value not in RESOURCE_TYPES:
        raise ContentError(400, BAD_TYPE)
    return value


def _mime_type(value: Any) -> str:
    if value is None:
        return AUTOMATIC
    if not isinstance(value, str) or len(value) > 255 or (value != AUTOMATIC and not _MIME.match(value)):
        raise ContentError(400, BAD_MIME)
    return value


def _pool_name(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip() or len(value) > 255):
        raise ContentError(400, BAD_POOL)
    return value


def _timeout(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_TIMEOUT):
        raise ContentError(400, BAD_TIMEOUT)
    return value


def full_settings(info: dict[str, Any], *, url_path: str | None = None) -> tuple[str, ResourceSettings]:
    """POST and PUT: every required field. With ``url_path`` (PUT) the body's path must equal it."""
    path = check_path(info.get("resourcePath"))
    if url_path is not None and path != url_path:
        raise ContentError(400, PATH_MODIFIED)
    settings = ResourceSettings(
        resource_type=_resource_type(info.get("resourceType")),  # type: ignore[arg-type]
        mime_type=_mime_type(info.get("mimeType")),
        pool_name=_pool_name(info.get("poolName")),
        timeout=_timeout(info.get("timeout")),
    )
    return path, check_settings(settings)


def settings_patch(info: dict[str, Any], *, url_path: str) -> ResourceSettingsPatch:
    """PATCH: ``resourcePath`` is required and must equal the URL's; other fields only if given."""
    if info.get("resourcePath") is None:
        raise ContentError(400, PATH_REQUIRED)
    if info["resourcePath"] != url_path:
        raise ContentError(400, PATH_MODIFIED)
    changes: dict[str, Any] = {}
    if "resourceType" in info:
        changes["resource_type"] = _resource_type(info["resourceType"])
    if "mimeType" in info:
        changes["mime_type"] = _mime_type(info["mimeType"])
    if "poolName" in info:
        changes["pool_name"] = _pool_name(info["poolName"])
    if "timeout" in info:
        changes["timeout"] = _timeout(info["timeout"])
    return ResourceSettingsPatch(**changes, given=tuple(changes))


def resource_info(item: ContentRecord) -> ResourceInfo:
    settings = item.settings or {}
    return ResourceInfo(
        resourcePath=item.path or "",
        resourceType=settings["resource_type"],
        mimeType=settings["mime_type"],
        poolName=settings["pool_name"],
        timeout=settings["timeout"],
    )


def content_type(mime_type: str, *names: str | None) -> str:
    """The Content-Type a resource is served with: its mimeType, or guessed from its names."""
    if mime_type != AUTOMATIC:
        return mime_type
    for name in names:
        if not name:
            continue
        base = name.rsplit("/", 1)[-1]
        suffix = base[base.rfind(".") :].lower() if "." in base else ""
        guessed = _EXTRA_TYPES.get(suffix) or _TYPES.guess_type(base, strict=False)[0]
        if guessed:
            return guessed
    return "application/octet-stream"


def check_name(name: str | None) -> str | None:
    """A data file's name is the file name a job sees it under: one plain path segment."""
    if name is None or name == "":
        return None
    if (
        len(name.encode("utf-8", "surrogatepass")) > 255
        or "/" in name
        or name in (".", "..")
        or any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in name)
    ):
        raise ContentError(400, "name must be a plain file name: no '/', no control characters, at most 255 bytes")
    return name


def upload_file_name(raw: str | None) -> str | None:
    """The last segment of a client's file name, if it is a plain file name (else none at all):
    an item's name becomes a file name on the hosts its job runs on."""
    if not raw:
        return None
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    try:
        return check_name(base)
    except ContentError:
        return None
