"""The resource manager's read surface: typed records of its ``resources`` (the hosts of the fleet)
and the queries others may run. Nothing outside this package imports anything else from it.

Only the resource manager writes these documents; a record is a snapshot of one, built cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from services.resource_manager.repository import RESOURCES
from services.store.port import DocumentStore

PAGE = 500


@dataclass(frozen=True, slots=True)
class ResourceRecord:
    id: str
    hostname: str
    user: str
    state: str
    authorized: bool
    joined: bool
    responding: bool
    last_response_time: float | None
    created_at: float
    verify_key: str
    facts: Mapping[str, Any]
    agent_started_at: float | None
    version: int
    shared: bool
    """Takes anyone's jobs (the shared fleet), not only its user's."""
    """Higher for every write: a consumer of ``host.changed`` keeps the newer of an event and a read."""

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ResourceRecord:
        return cls(
            id=document["id"],
            hostname=document["hostname"],
            user=document["user"],
            state=document["state"],
            authorized=document.get("authorized", False),
            joined=document.get("joined", False),
            responding=bool(document.get("responding")),
            last_response_time=document.get("last_response_time"),
            created_at=document["created_at"],
            verify_key=document["verify_key"],
            facts=document.get("facts") or {},
            agent_started_at=document.get("agent_started_at"),
            version=document["version"],
            shared=document.get("shared", True),
        )


def _record(document: Mapping[str, Any] | None) -> ResourceRecord | None:
    return None if document is None else ResourceRecord.from_document(document)


async def get_resource(store: DocumentStore, resource_id: str) -> ResourceRecord | None:
    return _record(await store.collection(RESOURCES).get(resource_id))


async def resource_by_hostname(store: DocumentStore, hostname: str) -> ResourceRecord | None:
    return _record(await store.collection(RESOURCES).find_one({"hostname": hostname}))


async def resource_by_token_hash(store: DocumentStore, token_hash: str) -> ResourceRecord | None:
    return _record(await store.collection(RESOURCES).find_one({"token_hash": token_hash}))


async def verify_key_of(store: DocumentStore, resource_id: str) -> str | None:
    """The key a host's signed events are checked against; None for an unknown host."""
    resource = await get_resource(store, resource_id)
    return None if resource is None else resource.verify_key


async def resources_of_user(
    store: DocumentStore, user: str | None, *, order: Literal["hostname", "created_at"] = "hostname"
) -> list[ResourceRecord]:
    """Every resource of ``user`` (every resource when None: an admin's view), a page at a time."""
    query = {} if user is None else {"user": user}
    resources = store.collection(RESOURCES)
    found: list[ResourceRecord] = []
    cursor = None
    while True:
        page = await resources.find(query, sort=[(order, 1)], limit=PAGE, cursor=cursor)
        found += [ResourceRecord.from_document(document) for document in page.items]
        if (cursor := page.next_cursor) is None:
            return found


async def responding_resources(store: DocumentStore, *, limit: int = 10_000) -> list[ResourceRecord]:
    """Authorized hosts that are responding now: the ones that may take jobs."""
    found = await store.collection(RESOURCES).find({"authorized": True, "responding": True}, limit=limit)
    return [ResourceRecord.from_document(document) for document in found.items]
