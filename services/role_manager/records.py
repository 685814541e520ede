"""The role manager's read surface: typed records of its ``roles`` (with their versions) and of
its ``role_hosts`` (the roles on each host), and the queries others may run. Nothing outside this
package imports anything else from it. Only the role manager writes these documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.roles import HostState, RoleStatus
from services.role_manager import domain
from services.role_manager.repository import ROLE_HOSTS, ROLES
from services.store.port import DocumentStore


@dataclass(frozen=True, slots=True)
class RoleVersionRecord:
    version: str
    display_name: str
    description: str
    created_at: float

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> RoleVersionRecord:
        return cls(
            version=document["version"],
            display_name=document["display_name"],
            description=document["description"],
            created_at=document["created_at"],
        )


@dataclass(frozen=True, slots=True)
class RoleRecord:
    name: str
    active_version: str
    versions: tuple[RoleVersionRecord, ...]

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> RoleRecord:
        return cls(
            name=document["name"],
            active_version=document["active_version"],
            versions=tuple(RoleVersionRecord.from_document(version) for version in document["versions"]),
        )

    def version(self, version: str) -> RoleVersionRecord | None:
        return next((v for v in self.versions if v.version == version), None)


@dataclass(frozen=True, slots=True)
class RoleOnHost:
    """Where one role stands on one host."""

    version: str | None
    target: str | None
    status: RoleStatus
    attempts: int
    job_id: str | None
    last_job_id: str | None
    answer_id: str | None
    exit_code: int | None
    error: str | None
    retry_at: float | None

    @classmethod
    def from_document(cls, entry: Mapping[str, Any]) -> RoleOnHost:
        return cls(
            version=entry["version"],
            target=entry["target"],
            status=RoleStatus(entry["status"]),
            attempts=entry["attempts"],
            job_id=entry["job_id"],
            last_job_id=entry["last_job_id"],
            answer_id=entry["answer_id"],
            exit_code=entry["exit_code"],
            error=entry["error"],
            retry_at=entry["retry_at"],
        )


@dataclass(frozen=True, slots=True)
class RoleHostRecord:
    """The roles of one host; a host this manager never heard of reads as :data:`NO_ROLES`."""

    id: str | None
    roles: Mapping[str, RoleOnHost]
    deleted_at: float | None
    state: HostState
    role_status: RoleStatus
    assigned_roles: Sequence[str]

    @classmethod
    def from_document(cls, document: Mapping[str, Any] | None) -> RoleHostRecord:
        host: dict[str, Any] = dict(document or {})
        return cls(
            id=host.get("id"),
            roles={name: RoleOnHost.from_document(entry) for name, entry in host.get("roles", {}).items()},
            deleted_at=host.get("deleted_at"),
            state=domain.host_state(host),
            role_status=domain.role_status(host),
            assigned_roles=domain.assigned_roles(host),
        )


NO_ROLES = RoleHostRecord.from_document(None)


async def get_role(store: DocumentStore, name: str) -> RoleRecord | None:
    document = await store.collection(ROLES).get(name)
    return None if document is None else RoleRecord.from_document(document)


async def all_roles(store: DocumentStore) -> list[RoleRecord]:
    """Every role, by name."""
    found = await store.collection(ROLES).find({}, sort=[("name", 1)], limit=10_000)
    return [RoleRecord.from_document(document) for document in found.items]


async def role_host(store: DocumentStore, host_id: str) -> RoleHostRecord:
    """The roles of a host (:data:`NO_ROLES` when it has never had one)."""
    return RoleHostRecord.from_document(await store.collection(ROLE_HOSTS).get(host_id))


async def role_hosts(store: DocumentStore, host_ids: Sequence[str]) -> dict[str, RoleHostRecord]:
    """The roles of the hosts among ``host_ids`` that have a record, by host id."""
    found = await store.collection(ROLE_HOSTS).find({"id": {"$in": list(host_ids)}}, limit=len(host_ids) or 1)
    return {document["id"]: RoleHostRecord.from_document(document) for document in found.items}
