"""A gateway with every manager but the role manager on the in-process bus, SQLite and disk blobs,
and tokens for an admin and two users: what the security tests attack.

Use the ``secure`` fixture from a test module::

    from tests.security.stack import Secure, secure_fixture  # noqa: F401
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.memory import MemoryBus
from broker.topology import Topology
from schemas.registry import all_message_types
from services.content_manager.service import ContentManagerService
from services.gateway.app import create_app
from services.job_manager.service import JobManagerService
from services.resource_manager.service import ResourceManagerService
from services.settings import Settings
from services.store.disk_blobs import DiskBlobStore
from services.store.sqlite import SqliteDocumentStore
from services.tokens import create_token, tokens_collection

USERS = {"admin": True, "steve": False, "alice": False}


class Secure:
    def __init__(
        self,
        client: TestClient,
        tokens: dict[str, str],
        store: SqliteDocumentStore,
        settings: Settings,
        bus: MemoryBus,
        topology: Topology,
    ) -> None:
        self.client = client
        self.tokens = tokens
        self.store = store
        self.settings = settings
        self.bus = bus
        self.topology = topology

    def auth(self, user: str = "steve") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    async def call(self, method: str, path: str, user: str = "steve", **kwargs: Any) -> tuple[int, Any]:
        headers = {**self.auth(user), **kwargs.pop("headers", {})}
        response = await self.client.request(method, path, headers=headers, **kwargs)
        return response.status, await response.json(content_type=None)


async def open_secure(tmp_path: Path, **overrides: Any) -> tuple[Secure, Any]:
    settings = Settings(data_dir=tmp_path, request_timeout=2.0, max_upload_bytes=1024**2, **overrides)
    store = await SqliteDocumentStore.open(tmp_path / "skybus.db")  # where the skybus CLI finds it
    topology = Topology("secure")
    bus = MemoryBus(all_message_types(), topology)
    await bus.start()
    managers = [
        ResourceManagerService(settings, bus, store, topology),
        JobManagerService(settings, bus, store, topology),
        ContentManagerService(settings, bus, store, topology),
    ]
    for manager in managers:
        await manager.start()
    table = await tokens_collection(store)
    tokens = {user: await create_token(table, user=user, admin=admin) for user, admin in USERS.items()}
    client = TestClient(
        TestServer(await create_app(settings, bus, store, topology, blobs=DiskBlobStore(tmp_path / "blobs")))
    )
    await client.start_server()

    async def close() -> None:
        await client.close()
        for manager in managers:
            await manager.stop()
        await bus.close()
        await store.close()

    return Secure(client, tokens, store, settings, bus, topology), close


@pytest.fixture(name="secure")
async def secure_fixture(tmp_path: Path) -> AsyncIterator[Secure]:
    stack, close = await open_secure(tmp_path)
    yield stack
    await close()
