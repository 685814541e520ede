"""Content (seed 004) and data files for jobs: REST bodies, and the commands the content manager takes.

Uploads follow the claim-check pattern: the gateway streams the bytes into the blob store, then
sends a command that carries only the blob's reference (:class:`BlobRef`); the content manager
commits the metadata and owns the blob from then on.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field

from schemas.base import WireModel

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ItemIds = Annotated[tuple[str, ...], Field(min_length=1, max_length=1000)]
ResourceType = Literal["Active", "MSP", "Static"]
SettingName = Literal["resource_type", "mime_type", "pool_name", "timeout"]


# REST bodies (seed 004, and /api/data).


class ResourceInfo(BaseModel):
    """Seed 004's ``ResourceInfo``, as ``GET /resources`` and ``GET /resources/metadata/{path}`` show it."""

    resourcePath: str
    resourceType: str
    mimeType: str
    poolName: str | None
    timeout: int | None


class ResourcePath(BaseModel):
    """``POST /resources`` → 201."""

    resourcePath: str


class ApplicationServerInfo(BaseModel):
    name: str
    version: str


class DataId(BaseModel):
    id: str


class DataInfo(BaseModel):
    """``GET /api/data/{id}/info``: any stored item, a seed 004 resource or a plain data file."""

    id: str
    kind: Literal["resource", "data"]
    name: str | None
    path: str | None
    size: int
    sha256: str
    owner: str
    granted_to: list[str]
    created_at: str
    updated_at: str


class DataList(BaseModel):
    """``GET /api/data``."""

    items: list[DataInfo]


# Nested in commands; not messages of their own.


class BlobRef(WireModel):
    """The claim check: a blob the gateway stored, with what the manager checks before taking it."""

    blob_id: str
    size: int = Field(ge=0)
    sha256: Sha256


class ResourceSettings(WireModel):
    """Everything of a ResourceInfo but its path. ``timeout`` None means the default (30 s)."""

    resource_type: ResourceType
    mime_type: str
    pool_name: str | None
    timeout: int | None


class ResourceSettingsPatch(WireModel):
    """The fields a PATCH gave; ``given`` names them, so an explicit null differs from an omission."""

    resource_type: ResourceType | None = None
    mime_type: str | None = None
    pool_name: str | None = None
    timeout: int | None = None
    given: tuple[SettingName, ...] = ()


# Commands to the content manager.


class StoreContent(WireModel):
    """Commit a new seed 004 resource at ``path``. ``item_id`` is made by the gateway, once per upload."""

    message_type: ClassVar[str] = "content.store"

    item_id: str
    path: str
    owner: str
    filename: str | None
    blob: BlobRef
    settings: ResourceSettings


class ReplaceContent(WireModel):
    """PUT: a new blob and new settings for an existing resource, in one versioned update."""

    message_type: ClassVar[str] = "content.replace"

    item_id: str
    filename: str | None
    blob: BlobRef
    settings: ResourceSettings


class PatchContent(WireModel):
    """PATCH: a new blob, changed settings, or both; what is not given is kept."""

    message_type: ClassVar[str] = "content.patch"

    item_id: str
    filename: str | None = None
    blob: BlobRef | None = None
    changes: ResourceSettingsPatch = ResourceSettingsPatch()


class DeleteContent(WireModel):
    """Delete any stored item (a resource or a data file) and, after the metadata, its blob."""

    message_type: ClassVar[str] = "content.delete"

    item_id: str


class StoreData(WireModel):
    """Commit a new data file (``POST /api/data``)."""

    message_type: ClassVar[str] = "data.store"

    item_id: str
    owner: str
    name: str | None
    blob: BlobRef
    granted_to: tuple[str, ...] = ()


class GrantData(WireModel):
    """Let the agent of ``resource_id`` read these items (the job manager staging a job's files).

    When ``owner`` is given every item must belong to that user, or nothing is granted (403).
    """

    message_type: ClassVar[str] = "data.grant"

    item_ids: ItemIds
    resource_id: str
    owner: str | None = None


CONTENT_MESSAGES: tuple[type[WireModel], ...] = (
    StoreContent,
    ReplaceContent,
    PatchContent,
    DeleteContent,
    StoreData,
    GrantData,
)
