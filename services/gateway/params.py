"""What the routes take besides a JSON body, as models for ``/openapi.json``: query parameters, request
headers and the parts of multipart uploads.

The handlers read these themselves (with the seed's error messages); a model here states what they
accept, and ``tests/unit/test_openapi.py`` fails when a handler reads a query parameter its model lacks.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from schemas.content import ResourceType
from schemas.jobs import JobState

Flag = Literal["1", "true", "0", "false"]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# Seed 001: jobs.


class JobInfoQuery(Params):
    wait: float | None = Field(
        default=None, ge=0, le=60, description="seconds to wait for the job to end before answering (long poll)"
    )


class ListJobsQuery(Params):
    state: list[JobState] | None = Field(default=None, description="only jobs in these states (comma-separated)")
    user: str | None = Field(default=None, description="whose jobs (another user's: admins only)")
    resource_id: UUID | None = Field(default=None, description="only jobs placed on this host")
    since: str | None = Field(default=None, description="created at or after: ISO 8601 time or epoch seconds")
    until: str | None = Field(default=None, description="created before: ISO 8601 time or epoch seconds")
    limit: int = Field(default=100, ge=1, le=1000, description="jobs per page")
    cursor: str | None = Field(default=None, description="the next_cursor of the previous page")
    detail: Flag | None = Field(default=None, description="1 or true: add `jobs`, a row per job")


class JobLogsQuery(Params):
    stream: Literal["stdout", "stderr"] | None = Field(
        default=None, description="only this stream (default both, in the order received)"
    )
    follow: Flag | None = Field(default=None, description="1 or true: stream the output live until the job ends")


class ContainerJobLogsQuery(Params):
    follow: Flag | None = Field(default=None, description="1 or true: stream the output live until the job ends")


class JobIdQuery(Params):
    job_id: UUID | None = Field(default=None, description="the job, when the body does not name it")


class RunJobHeaders(Params):
    idempotency_key: str | None = Field(
        default=None,
        alias="Idempotency-Key",
        max_length=255,
        description="the same key (per user) returns the first job instead of starting a second",
    )


# Data files (/api/data).


class DataUploadQuery(Params):
    name: str | None = Field(default=None, max_length=255, description="the file name jobs see it under")
    job_id: str | None = Field(default=None, description="agents only: the job (task) whose output this is")


class DataUploadForm(Params):
    file: bytes = Field(description="the file")
    name: str | SkipJsonSchema[None] = Field(
        default=None, max_length=255, description="the file name jobs see it under"
    )


class DataListQuery(Params):
    limit: int = Field(default=100, ge=1, le=1000, description="how many, newest first")


# Seed 000: resources.


class FindResourceQuery(Params):
    hostname: str | None = Field(default=None, description="find the resource of this hostname (else: list yours)")


# Seed 004: content.


class ResourceInfoPart(Params):
    """The ``resourceInfo`` part of ``POST`` and ``PUT /resources``: a JSON object as text."""

    resourcePath: str = Field(min_length=1, max_length=1024)
    resourceType: ResourceType
    mimeType: str | None = Field(default=None, max_length=255, description="a MIME type, or Automatic (the default)")
    poolName: str | None = Field(default=None, min_length=1, max_length=255)
    timeout: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)


class ResourceInfoPatchPart(Params):
    """The ``resourceInfo`` part of ``PATCH /resources/{path}``: ``resourcePath`` and the fields to change."""

    resourcePath: str = Field(min_length=1, max_length=1024)
    resourceType: ResourceType | None = None
    mimeType: str | None = Field(default=None, max_length=255)
    poolName: str | None = Field(default=None, min_length=1, max_length=255)
    timeout: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)


class ResourceForm(Params):
    resource: bytes = Field(description="the resource's source file")
    resourceInfo: ResourceInfoPart


class ResourcePatchForm(Params):
    """Either part or both."""

    resource: bytes | SkipJsonSchema[None] = Field(default=None, description="the new source file")
    resourceInfo: ResourceInfoPatchPart | SkipJsonSchema[None] = None


# Tokens and events.


class TokenListQuery(Params):
    join: Flag | None = Field(default=None, description="1 or true: list the cluster join tokens")


class EventsQuery(Params):
    topic: list[Literal["job", "host"]] | None = Field(default=None, description="only these topics (comma-separated)")
    last_event_id: int | None = Field(default=None, description="resume after this event (as Last-Event-ID does)")
    token: str | None = Field(default=None, description="the API token, for EventSource, which sends no header")


class EventsHeaders(Params):
    last_event_id: int | None = Field(
        default=None, alias="Last-Event-ID", description="resume after this event (EventSource sends it)"
    )
