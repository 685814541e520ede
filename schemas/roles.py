"""Roles and hosts of seed 002: REST bodies and views, commands to the role manager, its events.

A role has immutable versions, each with an install and a remove script; one version is active.
Applying a role to a host runs the active version's install script there as a job (through the job
manager, the resource manager's proxy and the host's agent); removing it runs the installed
version's remove script.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from schemas.base import WireModel

SCRIPT_LIMIT = 60_000  # characters: a script runs as one `sh -c` argument (Linux caps one at 128 KiB)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

RoleName = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Version = Annotated[StrictStr, Field(min_length=1, max_length=128)]


def check_name(value: str, what: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ValueError(f"{what} is 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


class HostState(StrEnum):
    INACTIVE = "inactive"
    ACTIVATING = "activating"
    ACTIVE = "active"


class RoleStatus(StrEnum):
    OK = "ok"
    CONVERGING = "converging"
    RETRYING = "retrying"
    FAILED = "failed"


# REST bodies and views (seed 002, and the versions endpoint it implies).


class RoleView(BaseModel):
    """``GET /v1/roles`` items and ``GET /v1/roles/{name}``."""

    name: str
    display_name: str
    description: str
    active_version: str


class ActivateVersionBody(BaseModel):
    """``PUT /v1/roles/{name}``."""

    model_config = ConfigDict(extra="forbid")

    active_version: Version


class RoleVersionBody(BaseModel):
    """``POST /v1/roles/{name}/versions``: each script inline (``install``) or as the id of a content
    item of seed 004 (``install_content_id``), exactly one of the two."""

    model_config = ConfigDict(extra="forbid")

    version: Version
    display_name: Annotated[StrictStr, Field(max_length=256)] | None = None
    description: Annotated[StrictStr, Field(max_length=4096)] = ""
    install: Annotated[StrictStr, Field(max_length=SCRIPT_LIMIT)] | None = None
    install_content_id: StrictStr | None = None
    remove: Annotated[StrictStr, Field(max_length=SCRIPT_LIMIT)] | None = None
    remove_content_id: StrictStr | None = None

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        return check_name(value, "version")

    @model_validator(mode="after")
    def _one_source_per_script(self) -> RoleVersionBody:
        for script in ("install", "remove"):
            given = [getattr(self, script) is not None, getattr(self, f"{script}_content_id") is not None]
            if sum(given) != 1:
                raise ValueError(f"give exactly one of {script!r} (the script) and '{script}_content_id'")
        return self


class RoleVersionView(BaseModel):
    name: str
    version: str
    display_name: str
    description: str
    active: bool
    created_at: str


class HostRoleInfo(BaseModel):
    """``info`` of a host: the seed's fields; ``responding`` and ``last_response_time`` are left out
    for an unauthorized host."""

    model_config = ConfigDict(extra="allow")

    hostname: str | None
    os_family: str | None
    arch: str | None
    os_info: str | None
    responding: bool | SkipJsonSchema[None] = None
    last_response_time: str | None = None


class HostView(BaseModel):
    """A host of seed 002 (``GET /v1/hosts/{id}``); ``role_status`` is left out for an unauthorized host."""

    id: str
    state: HostState
    info: HostRoleInfo
    roles: list[str]
    role_status: RoleStatus | SkipJsonSchema[None] = None


class RoleDetail(BaseModel):
    """One role on one host, beyond the seed: where a change stands and the output of its script."""

    version: str | None
    target_version: str | None
    status: RoleStatus
    attempts: int
    job_id: str | None
    last_job_id: str | None
    answer_id: str | None
    exit_code: int | None
    error: str | None
    retry_at: str | None


# Commands to the role manager (request/reply from the gateway).


class RegisterRoleVersion(WireModel):
    """Scripts travel as text: a version is immutable, so a content item is copied when registered."""

    message_type: ClassVar[str] = "role.register_version"

    name: str
    version: str
    display_name: str
    description: str
    install: str
    remove: str


class ActivateRoleVersion(WireModel):
    message_type: ClassVar[str] = "role.activate_version"

    name: str
    version: str


class ApplyRole(WireModel):
    message_type: ClassVar[str] = "role.apply"

    host_id: str
    name: str
    requested_by: str
    authorize: bool = False
    """The host is not authorized yet: assigning it a role authorizes it."""


class RemoveRole(WireModel):
    message_type: ClassVar[str] = "role.remove"

    host_id: str
    name: str
    requested_by: str


class DeleteHostRoles(WireModel):
    """``DELETE /v1/hosts/{id}``: remove every role, then forget the host until it is seen again."""

    message_type: ClassVar[str] = "role.delete_host"

    host_id: str
    requested_by: str


ROLE_MESSAGES: tuple[type[WireModel], ...] = (
    RegisterRoleVersion,
    ActivateRoleVersion,
    ApplyRole,
    RemoveRole,
    DeleteHostRoles,
)
