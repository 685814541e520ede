"""Item 7: what skybus creates is readable by its own user only, and is born that way: the data dir
0700, the database, its WAL, blobs and credentials 0600, whatever umask the process started with."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.cli import main
from services.local_host import LocalAgentService
from services.settings import Settings
from services.store.disk_blobs import DiskBlobStore
from services.store.factory import open_blob_store, open_document_store
from services.store.sqlite import SqliteDocumentStore
from tests.security.stack import Secure, secure_fixture  # noqa: F401


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def careless_umask() -> Iterator[None]:
    """The most permissive umask a process could start with; restored afterwards."""
    old = os.umask(0)
    yield
    os.umask(old)


async def chunks(*pieces: bytes):
    for piece in pieces:
        yield piece


async def test_the_sqlite_database_and_its_wal_are_0600(tmp_path: Path, careless_umask: None) -> None:
    store = await SqliteDocumentStore.open(tmp_path / "skybus.db")
    try:
        await store.collection("things").insert({"id": "a", "secret": "x"})
        files = sorted(tmp_path.glob("skybus.db*"))
        assert {path.name for path in files} >= {"skybus.db", "skybus.db-wal"}
        assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}
    finally:
        await store.close()


async def test_blobs_are_0600_in_0700_directories(tmp_path: Path, careless_umask: None) -> None:
    blobs = DiskBlobStore(tmp_path / "blobs")
    info = await blobs.put(chunks(b"secret bytes"))
    (published,) = (tmp_path / "blobs").glob(f"*/*/{info.id}.*")
    assert mode(published) == 0o600
    assert mode(published.parent) == 0o700 and mode(published.parent.parent) == 0o700
    assert mode(tmp_path / "blobs" / ".tmp") == 0o700


async def test_the_factory_makes_the_data_dir_and_blob_root_0700(tmp_path: Path, careless_umask: None) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    store = await open_document_store(settings)
    blobs = await open_blob_store(settings)
    await store.close()
    await blobs.close()
    assert mode(tmp_path / "data") == 0o700
    assert mode(tmp_path / "data" / "blobs") == 0o700
    assert mode(tmp_path / "data" / "skybus.db") == 0o600


def test_every_skybus_command_sets_a_private_umask_and_narrows_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)  # as an older skybus left it
    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(main, ["token", "create", "--user", "bob", "--data-dir", str(data)])
        now = os.umask(0o022)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert now == 0o077
    assert mode(data) == 0o700
    assert {p.name: mode(p) for p in data.iterdir()} == {p.name: 0o600 for p in data.iterdir()}


async def test_the_local_agent_credentials_are_written_0600(secure: Secure, careless_umask: None) -> None:
    local = LocalAgentService(secure.settings, secure.bus, secure.store, secure.topology, gateway_url=lambda: "")
    await local._credentials()
    credentials = secure.settings.data_dir / "local-agent.json"
    assert mode(credentials) == 0o600
    assert not list(secure.settings.data_dir.glob("*.part"))
