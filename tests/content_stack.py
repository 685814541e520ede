"""A gateway with the content and resource managers on the in-process bus, SQLite and disk blobs.

Use the ``content_stack`` fixture from a test module::

    from tests.content_stack import ContentStack, content_stack_fixture  # noqa: F401
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.memory import MemoryBus
from broker.topology import Topology
from schemas.registry import all_message_types
from services.content_manager.handlers import ContentManager
from services.content_manager.service import ContentManagerService
from services.gateway.app import create_app
from services.resource_manager.service import ResourceManagerService
from services.settings import Settings
from services.store.disk_blobs import DiskBlobStore
from services.store.sqlite import SqliteDocumentStore
from services.tokens import create_token, tokens_collection

LIMIT = 1024 * 1024  # max_upload_bytes in these tests
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def resource_form(
    info: dict[str, Any] | str | None = None, content: bytes | None = b"Plus[5,x]", filename: str = "add.wl"
) -> aiohttp.FormData:
    """Seed 004's multipart body: a ``resource`` file part and a ``resourceInfo`` string part."""
    form = aiohttp.FormData(default_to_multipart=True)
    if content is not None:
        form.add_field("resource", content, filename=filename, content_type="application/octet-stream")
    if info is not None:
        form.add_field("resourceInfo", info if isinstance(info, str) else json.dumps(info))
    return form


def info_for(path: str = "add.wl", **fields: Any) -> dict[str, Any]:
    return {
        "resourcePath": path,
        "resourceType": "Active",
        "mimeType": "Automatic",
        "poolName": "Public",
        "timeout": None,
        **fields,
    }


class ContentStack:
    def __init__(
        self,
        client: TestClient,
        tokens: dict[str, str],
        content: ContentManagerService,
        resources: ResourceManagerService,
        blobs: DiskBlobStore,
        store: SqliteDocumentStore,
        bus: MemoryBus,
        topology: Topology,
    ) -> None:
        self.client = client
        self.admin = bearer(tokens["admin"])
        self.steve = bearer(tokens["steve"])
        self.alice = bearer(tokens["alice"])
        self.content = content
        self.resources = resources
        self.blobs = blobs
        self.store = store
        self.bus = bus
        self.topology = topology

    @property
    def manager(self) -> ContentManager:
        assert self.content.manager is not None
        return self.content.manager

    async def blob_ids(self) -> list[str]:
        return [info.id async for info in self.blobs.list()]

    def temp_files(self) -> list[Path]:
        tmp = self.blobs.root / ".tmp"
        return list(tmp.iterdir()) if tmp.exists() else []

    async def post(self, info: Any = None, content: bytes | None = b"Plus[5,x]", *, headers=None, **kw: Any):
        return await self.client.post(
            "/resources", data=resource_form(info, content, **kw), headers=headers or self.steve
        )


async def expect_seed_error(
    response: aiohttp.ClientResponse, status: int, reason: str, message: str, path: str
) -> None:
    """Seed 004's error body, field by field."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert isinstance(body, list) and len(body) == 1
    error = body[0]
    assert set(error) == {"timestamp", "status", "error", "message", "path"}, error
    assert TIMESTAMP.match(error["timestamp"]), error["timestamp"]
    expected = {"status": status, "error": reason, "message": message, "path": path}
    assert {key: error[key] for key in expected} == expected, error


@pytest.fixture(name="content_stack")
async def content_stack_fixture(tmp_path: Path) -> AsyncIterator[ContentStack]:
    settings = Settings(data_dir=tmp_path, request_timeout=2.0, max_upload_bytes=LIMIT)
    store = await SqliteDocumentStore.open(tmp_path / "content.db")
    topology = Topology("content")
    bus = MemoryBus(all_message_types(), topology)
    await bus.start()
    resources = ResourceManagerService(settings, bus, store, topology)
    await resources.start()
    content = ContentManagerService(settings, bus, store, topology)
    await content.start()
    blobs = DiskBlobStore(tmp_path / "blobs")
    tokens_table = await tokens_collection(store)
    tokens = {
        "admin": await create_token(tokens_table, user="admin", admin=True),
        "steve": await create_token(tokens_table, user="steve", admin=False),
        "alice": await create_token(tokens_table, user="alice", admin=False),
    }
    client = TestClient(TestServer(await create_app(settings, bus, store, topology, blobs=blobs)))
    await client.start_server()
    yield ContentStack(client, tokens, content, resources, blobs, store, bus, topology)
    await client.close()
    await content.stop()
    await resources.stop()
    await bus.close()
    await store.close()
