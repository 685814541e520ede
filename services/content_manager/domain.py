"""Pure rules of stored content: valid paths and ResourceInfo, what a stored item looks like, who may
read it, and which Content-Type it is served with.

The messages are seed 004's own where the seed gives one (word for word); the gateway uses these
rules to refuse a bad request before it sends anything, and the manager applies them again to the
merged result of a PATCH, which only it can see.

A stored item (one document of the ``contents`` collection)::

    {id, kind: "resource" | "data", owner, name, path (resources only), blob_id, size, sha256,
     resource: {resource_type, mime_type, pool_name, timeout} (resources only),
     granted_to: [resource ids], created_at, updated_at, applied: [recent message ids]}

``timeout`` is stored as given: null stays null (and is reported as null, as the seed does) and
means :data:`DEFAULT_TIMEOUT` seconds to whoever evaluates the resource.
"""

from __future__ import annotations

import json
import mimetypes
import re
from typing import Any

from schemas.content import BlobRef, ResourceInfo, ResourceSettings, ResourceSettingsPatch

RESOURCE = "resource"
DATA = "data"

RESOURCE_TYPES = ("Active", "MSP", "Static")
AUTOMATIC = "Automatic"
DEFAULT_TIMEOUT = 30
MAX_PATH_BYTES = 1024
RESERVED_FIRST_SEGMENT = ".applicationserver"
APPLIED_KEPT = 32  # message ids remembered per item, to recognise a redelivered command

NOT_JSON = "Expected the request body in JSON format."
BAD_TYPE = "The resourceType is not one of Active, MSP, or Static."
UNKNOWN = "Unknown resource"
PATH_MODIFIED = "resourcePath cannot be modified"
PATH_REQUIRED = "The resourcePath is required."
POOL_REQUIRED = "The poolName is required unless the resourceType is Static."
BAD_POOL = "The poolName must be a non-empty string."
BAD_MIME = "The mimeType must be Automatic or a MIME type such as text/html."
BAD_TIMEOUT = "The timeout must be a positive whole number of seconds, or null for the default of 30."

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


class ContentError(Exception):
    """A request the rules refuse, with the HTTP status it maps to and the message the client sees."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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


def check_settings(settings: ResourceSettings) -> ResourceSettings:
    if settings.resource_type != "Static" and settings.pool_name is None:
        raise ContentError(400, POOL_REQUIRED)
    return settings


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


def patched(current: dict[str, Any], patch: ResourceSettingsPatch) -> ResourceSettings:
    """The stored settings with a PATCH's given fields applied, checked as a whole."""
    merged = dict(current)
    for name in patch.given:
        merged[name] = getattr(patch, name)
    return check_settings(ResourceSettings(**merged))


def effective_timeout(settings: ResourceSettings) -> int:
    return DEFAULT_TIMEOUT if settings.timeout is None else settings.timeout


def resource_info(document: dict[str, Any]) -> ResourceInfo:
    settings = document["resource"]
    return ResourceInfo(
        resourcePath=document["path"],
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


def may_read(document: dict[str, Any], *, user: str, admin: bool, resource_id: str | None) -> bool:
    if admin or document["owner"] == user:
        return True
    return resource_id is not None and resource_id in document.get("granted_to", ())


def may_change(document: dict[str, Any], *, user: str, admin: bool) -> bool:
    return admin or document["owner"] == user


def is_expired_claim(blob_created_at: float, now: float, grace: float) -> bool:
    """An upload older than half the orphan grace may already be in the cleaner's hands: refuse it,
    so the cleaner never deletes a blob that a late command is committing."""
    return blob_created_at < now - grace / 2
