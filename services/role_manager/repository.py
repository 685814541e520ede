"""The role manager's store access: ``roles`` and ``role_hosts``, which only it writes; others use records.py."""

from __future__ import annotations

from services.store.port import Collection, DocumentStore

ROLES = "roles"
ROLE_HOSTS = "role_hosts"


async def roles_collection(store: DocumentStore) -> Collection:
    return store.collection(ROLES)


async def role_hosts_collection(store: DocumentStore) -> Collection:
    hosts = store.collection(ROLE_HOSTS)
    await hosts.create_index(["needs_work"])
    return hosts
