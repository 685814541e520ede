"""Store fixtures: a fresh SQLite file or blob directory per test, and MongoDB when there is one.

MongoDB is ``SKYBUS_TEST_MONGO_URL`` when set, else a testcontainers ``MongoDbContainer`` for the
session when a Docker engine answers, else every test that needs it is skipped with the reason.
Each test gets a database of its own, dropped afterwards.

Import the fixtures into a test module (the functions carry a ``_fixture`` suffix so that test
arguments named after the fixture do not shadow the import)::

    from tests.store_fixtures import mongo_database_fixture, mongo_url_fixture  # noqa: F401
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

NO_MONGO = "no MongoDB: set SKYBUS_TEST_MONGO_URL or run a Docker engine for testcontainers"
MONGO_IMAGE = "mongo:7.0"


def _docker_reachable() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no permission: all mean "no Docker engine here"
        return False


@pytest.fixture(name="mongo_url", scope="session")
def mongo_url_fixture() -> Iterator[str]:
    """The URL of a MongoDB server for this test session (skips the test when there is none)."""
    url = os.environ.get("SKYBUS_TEST_MONGO_URL")
    if url:
        yield url
        return
    if not _docker_reachable():
        pytest.skip(NO_MONGO)
    try:
        from testcontainers.community.mongodb import MongoDbContainer
    except ImportError:  # testcontainers before the community split
        from testcontainers.mongodb import MongoDbContainer
    with MongoDbContainer(MONGO_IMAGE) as container:
        yield container.get_connection_url()


@pytest.fixture(name="mongo_database")
async def mongo_database_fixture(mongo_url: str) -> AsyncIterator[str]:
    """The name of a database no other test uses; dropped when the test ends."""
    name = f"skybus_test_{uuid.uuid4().hex[:12]}"
    yield name
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    try:
        await client.drop_database(name)
    finally:
        await client.close()


@pytest.fixture(name="sqlite_path")
def sqlite_path_fixture(tmp_path: Path) -> Path:
    """Where this test's SQLite database goes (the file does not exist yet)."""
    return tmp_path / "skybus.db"


@pytest.fixture(name="blob_root")
def blob_root_fixture(tmp_path: Path) -> Path:
    """An empty directory for this test's disk blobs."""
    root = tmp_path / "blobs"
    root.mkdir()
    return root
