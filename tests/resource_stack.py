"""A gateway with the resource manager on the in-process bus and SQLite: admin, steve, a join token.

Use the ``stack`` fixture from a test module::

    from tests.resource_stack import Stack, stack_fixture  # noqa: F401
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.memory import MemoryBus
from broker.topology import Topology
from schemas.registry import all_message_types
from services.gateway.app import create_app
from services.resource_manager.service import ResourceManagerService
from services.settings import Settings
from services.store.sqlite import SqliteDocumentStore
from services.tokens import create_join_token, create_token, join_tokens_collection, tokens_collection


class Stack:
    def __init__(
        self, client: TestClient, admin: str, steve: str, join_token: str, manager: ResourceManagerService
    ) -> None:
        self.client = client
        self.admin = {"Authorization": f"Bearer {admin}"}
        self.steve = {"Authorization": f"Bearer {steve}"}
        self.joiner = {"Authorization": f"Bearer {join_token}"}
        self.manager = manager


@pytest.fixture(name="stack")
async def stack_fixture(tmp_path: Path) -> AsyncIterator[Stack]:
    settings = Settings(data_dir=tmp_path, request_timeout=2.0)
    store = await SqliteDocumentStore.open(tmp_path / "gw.db")
    topology = Topology("gw")
    bus = MemoryBus(all_message_types(), topology)
    await bus.start()
    manager = ResourceManagerService(settings, bus, store, topology)
    await manager.start()
    tokens = await tokens_collection(store)
    admin = await create_token(tokens, user="admin", admin=True)
    steve = await create_token(tokens, user="steve", admin=False)
    join_token = await create_join_token(join_tokens_collection(store))
    client = TestClient(TestServer(await create_app(settings, bus, store, topology)))
    await client.start_server()
    yield Stack(client, admin, steve, join_token, manager)
    await client.close()
    await manager.stop()
    await bus.close()
    await store.close()
