"""Resources (hosts) of seed 000: REST bodies, commands to the resource manager, host events."""

from __future__ import annotations

import uuid
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr

from schemas.base import WireModel


def printable_hostname(value: str) -> str:
    if not value.strip():
        raise ValueError("hostname must not be blank")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("hostname must not contain control characters")
    return value


def canonical_uuid_text(value: str) -> str:
    """A UUID exactly as ``str(uuid.uuid4())`` writes it: a token is hashed as sent, so no other
    spelling of the same UUID may stand for it."""
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        raise ValueError("must be a UUID") from None
    if canonical != value:
        raise ValueError(f"must be a UUID written as {canonical!r}")
    return value


Hostname = Annotated[StrictStr, Field(min_length=1, max_length=253), AfterValidator(printable_hostname)]
UuidText = Annotated[
    StrictStr,
    AfterValidator(canonical_uuid_text),
    Field(json_schema_extra={"format": "uuid", "pattern": "^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$"}),
]


# REST bodies (seed 000).


class CreateResourceBody(BaseModel):
    """``POST /api/resources``: ``hostname`` and ``user`` are required strings."""

    model_config = ConfigDict(extra="forbid")

    hostname: Hostname
    user: Annotated[StrictStr, Field(min_length=1, max_length=128)]


class JoinBody(BaseModel):
    """``POST /api/join``, with a cluster join token as the bearer: the id and token are the ones the
    joining agent made and keeps; the gateway passes on only the token's hash and verify key."""

    model_config = ConfigDict(extra="forbid")

    id: UuidText
    hostname: Hostname
    token: UuidText
    registration_token: UuidText | None = Field(
        default=None, description="to adopt the registration of this hostname: the token POST /api/resources gave it"
    )


class ResourceCreated(BaseModel):
    id: str
    token: str


class ResourceId(BaseModel):
    id: str


class HostInfo(BaseModel):
    hostname: str | None = None
    os_family: str | None = None
    arch: str | None = None
    os_info: str | None = None


class ResourceView(BaseModel):
    """``GET /api/resources/{id}``."""

    id: str
    hostname: str
    user: str
    state: str
    authorized: bool
    responding: bool
    last_response_time: str | None
    created_at: str
    info: HostInfo


# Commands to the resource manager.


class RegisterResource(WireModel):
    """Register a host. The gateway made the token (or the agent did, when it joins); only its hash
    and verify key travel.

    ``joined`` marks a host that joined with a cluster join token (``POST /api/join``): it may adopt
    a registration of its hostname that no agent has used yet only with ``registration_token_hash``,
    the hash of that registration's token (which the joining agent was given), as proof; any other
    clash is a 409."""

    message_type: ClassVar[str] = "resource.register"

    resource_id: str
    hostname: str
    user: str
    token_hash: str
    verify_key: str
    authorized: bool = True
    joined: bool = False
    shared: bool = True
    """Part of the shared fleet (registered by an admin for an admin, or joined): it takes anyone's
    jobs. A host registered for a user takes only that user's jobs (and those an admin pins to it)."""
    broker_password_hash: str | None = None
    """RabbitMQ's hash (``rabbit_password_hashing_sha256``) of the agent's broker password, which
    is derived from its token: the resource manager provisions the agent's own broker user with it.
    None from an older gateway: no user is provisioned."""
    registration_token_hash: str | None = None


class AuthorizeResource(WireModel):
    """Let a host take jobs (an admin assigned it a role). Idempotent; Rejected 404 if unknown."""

    message_type: ClassVar[str] = "resource.authorize"

    resource_id: str


class DeleteResource(WireModel):
    message_type: ClassVar[str] = "resource.delete"

    resource_id: str


# What agents say (untrusted until the resource manager checked the signature) and host events.


class HostFacts(WireModel):
    """Nested in :class:`Heartbeat`; not a message of its own."""

    hostname: str
    os_family: str
    arch: str
    os_info: str


class Heartbeat(WireModel):
    message_type: ClassVar[str] = "host.heartbeat"

    facts: HostFacts
    agent_started_at: float | None = None
    running_jobs: list[str] = []
    """Jobs this agent runs now: a job its host was given before the agent started and that is
    not in this list is gone (the agent restarted)."""


HostChange = Literal["registered", "authorized", "adopted", "responding", "unresponsive", "restarted"]


class HostChanged(WireModel):
    """A transition of a host, carrying all that other managers keep of it (their own view of hosts).

    The resource manager, the one authority on liveness, publishes one for each transition only,
    never for a plain heartbeat. Consumers keep the one with the highest ``version`` (the record's
    version after the change): applying one twice, or an older one late, changes nothing.
    """

    message_type: ClassVar[str] = "host.changed"

    resource_id: str
    change: HostChange
    at: float
    version: int
    user: str
    authorized: bool
    joined: bool
    responding: bool
    verify_key: str
    shared: bool = True
    last_response_time: float | None = None
    agent_started_at: float | None = None
    running_jobs: list[str] = []
    """With ``restarted``: the jobs the new agent runs (it re-adopted them)."""


class HostDeleted(WireModel):
    message_type: ClassVar[str] = "host.deleted"

    resource_id: str


RESOURCE_MESSAGES: tuple[type[WireModel], ...] = (
    RegisterResource,
    AuthorizeResource,
    DeleteResource,
    Heartbeat,
    HostChanged,
    HostDeleted,
)
