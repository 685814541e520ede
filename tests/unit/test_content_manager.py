"""Content manager handlers, called directly: claim checks, redelivery, a twin, grants, orphan cleanup."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from broker.envelope import Envelope
from broker.memory import MemoryBus
from broker.topology import Topology
from schemas.base import Accepted, Rejected
from schemas.content import (
    BlobRef,
    DeleteContent,
    GrantData,
    PatchContent,
    ReplaceContent,
    ResourceSettings,
    ResourceSettingsPatch,
    StoreContent,
    StoreData,
)
from schemas.jobs import StagedFile, StageInFiles, StageJobFiles, StagingRefused
from schemas.registry import all_message_types
from services.content_manager.handlers import ContentManager
from services.content_manager.repository import contents_collection, tombstones_collection
from services.content_manager.service import ContentManagerService
from services.settings import Settings
from services.store.disk_blobs import DiskBlobStore
from services.store.sqlite import SqliteDocumentStore
from tests.delivery import deliver

ACTIVE = ResourceSettings(resource_type="Active", mime_type="Automatic", pool_name="Public", timeout=None)


@dataclass
class RecordingBus:
    published: list[tuple[str, Envelope]] = field(default_factory=list)

    async def publish(self, exchange: str, envelope: Envelope, routing_key: str | None = None) -> None:
        self.published.append((exchange, envelope))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def manager(tmp_path) -> AsyncIterator[ContentManager]:
    store = await SqliteDocumentStore.open(tmp_path / "content.db")
    blobs = DiskBlobStore(tmp_path / "blobs")
    yield ContentManager(
        contents=await contents_collection(store),
        tombstones=await tombstones_collection(store),
        blobs=blobs,
        orphan_grace=3600.0,
        clock=Clock(),
        bus=RecordingBus(),  # type: ignore[arg-type]
        topology=Topology("cm"),
    )
    await store.close()


async def upload(manager: ContentManager, data: bytes = b"Plus[5,x]") -> BlobRef:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    info = await manager.blobs.put(chunks())
    return BlobRef(blob_id=info.id, size=info.size, sha256=info.sha256)


async def blob_ids(manager: ContentManager) -> set[str]:
    return {info.id async for info in manager.blobs.list()}


async def read(manager: ContentManager, blob_id: str) -> bytes:
    return b"".join([chunk async for chunk in manager.blobs.open(blob_id)])


def store_command(blob: BlobRef, path: str = "apps/math/add.wl", owner: str = "steve") -> Envelope:
    item_id = str(uuid.uuid4())
    return Envelope(
        StoreContent(item_id=item_id, path=path, owner=owner, filename="add.wl", blob=blob, settings=ACTIVE)
    )


async def stored(manager: ContentManager, path: str = "apps/math/add.wl") -> tuple[str, BlobRef]:
    blob = await upload(manager)
    envelope = store_command(blob, path)
    assert isinstance(await deliver(manager.store_content, envelope), Accepted)
    return envelope.payload.item_id, blob  # type: ignore[attr-defined]


async def test_store_commits_the_metadata_and_keeps_the_blob(manager: ContentManager) -> None:
    blob = await upload(manager)
    envelope = store_command(blob)
    reply = await deliver(manager.store_content, envelope)
    assert reply == Accepted(id=envelope.payload.item_id)  # type: ignore[attr-defined]
    document = await manager.contents.get(envelope.payload.item_id)  # type: ignore[attr-defined]
    assert document is not None
    assert document["path"] == "apps/math/add.wl" and document["owner"] == "steve" and document["kind"] == "resource"
    assert (document["blob_id"], document["size"], document["sha256"]) == (blob.blob_id, blob.size, blob.sha256)
    assert document["resource"] == ACTIVE.model_dump() and document["granted_to"] == []
    assert await blob_ids(manager) == {blob.blob_id}


async def test_a_redelivered_store_changes_nothing(manager: ContentManager) -> None:
    blob = await upload(manager)
    envelope = store_command(blob)
    await deliver(manager.store_content, envelope)
    before = await manager.contents.get(envelope.payload.item_id)  # type: ignore[attr-defined]
    assert await deliver(manager.store_content, envelope) == Accepted(id=before["id"])  # type: ignore[index]
    assert await manager.contents.get(before["id"]) == before  # type: ignore[index]
    assert await manager.contents.count() == 1
    assert await blob_ids(manager) == {blob.blob_id}


async def test_a_store_redelivered_after_its_item_was_deleted_does_not_bring_it_back(manager: ContentManager) -> None:
    blob = await upload(manager)
    envelope = store_command(blob)
    await deliver(manager.store_content, envelope)
    item_id = envelope.payload.item_id  # type: ignore[attr-defined]
    assert await deliver(manager.delete_content, Envelope(DeleteContent(item_id=item_id))) == Accepted(id=item_id)
    assert await deliver(manager.store_content, envelope) == Accepted(id=item_id)
    assert await manager.contents.count() == 0
    assert await blob_ids(manager) == set()


async def test_the_same_path_twice_is_409_and_the_second_blob_is_not_taken(manager: ContentManager) -> None:
    await stored(manager)
    other = await upload(manager, b"other")
    reply = await deliver(manager.store_content, store_command(other))
    assert reply == Rejected(status=409, error="A resource with this resourcePath already exists.")
    assert await manager.contents.count() == 1


async def test_data_files_need_no_path(manager: ContentManager) -> None:
    for _ in range(3):
        blob = await upload(manager)
        item_id = str(uuid.uuid4())
        command = StoreData(item_id=item_id, owner="steve", name="in.txt", blob=blob, granted_to=("r1", "r1"))
        assert await deliver(manager.store_data, Envelope(command)) == Accepted(id=item_id)
        document = await manager.contents.get(item_id)
        assert document is not None and "path" not in document and document["granted_to"] == ["r1"]
    assert await manager.contents.count() == 3


@pytest.mark.parametrize(
    ("damage", "status", "fragment"),
    [
        ("gone", 400, "gone"),
        ("size", 400, "does not match"),
        ("sha256", 400, "does not match"),
        ("expired", 410, "expired"),
    ],
)
async def test_a_bad_claim_check_is_refused(manager: ContentManager, damage: str, status: int, fragment: str) -> None:
    blob = await upload(manager)
    if damage == "gone":
        await manager.blobs.delete(blob.blob_id)
    elif damage == "size":
        blob = blob.model_copy(update={"size": blob.size + 1})
    elif damage == "sha256":
        blob = blob.model_copy(update={"sha256": hashlib.sha256(b"x").hexdigest()})
    else:
        manager.clock.now += manager.orphan_grace / 2 + 1  # type: ignore[attr-defined]
    reply = await deliver(manager.store_content, store_command(blob))
    assert isinstance(reply, Rejected) and reply.status == status and fragment in reply.error
    assert await manager.contents.count() == 0


async def test_replace_points_at_the_new_blob_and_deletes_the_old_one_after(manager: ContentManager) -> None:
    item_id, old = await stored(manager)
    new = await upload(manager, b"Plus[3,x]")
    assert await blob_ids(manager) == {old.blob_id, new.blob_id}
    static = ResourceSettings(resource_type="Static", mime_type="text/plain", pool_name=None, timeout=10)
    envelope = Envelope(ReplaceContent(item_id=item_id, filename="addOne.wl", blob=new, settings=static))
    assert await deliver(manager.replace_content, envelope) == Accepted(id=item_id)
    document = await manager.contents.get(item_id)
    assert document is not None and document["blob_id"] == new.blob_id and document["name"] == "addOne.wl"
    assert document["resource"] == static.model_dump() and document["version"] == 2
    assert await blob_ids(manager) == {new.blob_id}
    # Redelivered: the message id is in the item, nothing changes.
    assert await deliver(manager.replace_content, envelope) == Accepted(id=item_id)
    assert (await manager.contents.get(item_id))["version"] == 2  # type: ignore[index]
    assert await read(manager, new.blob_id) == b"Plus[3,x]"


async def test_an_old_replace_redelivered_after_a_newer_one_does_not_win(manager: ContentManager) -> None:
    item_id, _ = await stored(manager)
    first = Envelope(ReplaceContent(item_id=item_id, filename="a", blob=await upload(manager, b"1"), settings=ACTIVE))
    second_blob = await upload(manager, b"2")
    second = Envelope(ReplaceContent(item_id=item_id, filename="b", blob=second_blob, settings=ACTIVE))
    await deliver(manager.replace_content, first)
    await deliver(manager.replace_content, second)
    assert await deliver(manager.replace_content, first) == Accepted(id=item_id)
    document = await manager.contents.get(item_id)
    assert document is not None and document["blob_id"] == second_blob.blob_id
    assert await read(manager, document["blob_id"]) == b"2"
    assert await blob_ids(manager) == {second_blob.blob_id}


async def test_twin_managers_replacing_at_once_leave_one_winner_and_no_stray_blob(manager: ContentManager) -> None:
    item_id, _ = await stored(manager)
    twin = ContentManager(manager.contents, manager.tombstones, manager.blobs, clock=manager.clock)
    envelopes = [
        Envelope(
            ReplaceContent(item_id=item_id, filename=f"{n}", blob=await upload(manager, bytes([n])), settings=ACTIVE)
        )
        for n in range(6)
    ]
    routers = (twin.router(), manager.router())  # each retries its lost races (broker.serial)
    replies = await asyncio.gather(*(routers[n % 2](envelope) for n, envelope in enumerate(envelopes)))
    assert all(reply == Accepted(id=item_id) for reply in replies)
    document = await manager.contents.get(item_id)
    assert document is not None and document["version"] == 1 + len(envelopes)
    assert await blob_ids(manager) == {document["blob_id"]}
    assert {e.message_id for e in envelopes} <= set(document["applied"])


async def test_replace_and_patch_of_an_unknown_item_are_404(manager: ContentManager) -> None:
    blob = await upload(manager)
    missing = str(uuid.uuid4())
    replace = ReplaceContent(item_id=missing, filename=None, blob=blob, settings=ACTIVE)
    assert await deliver(manager.replace_content, Envelope(replace)) == Rejected(status=404, error="Unknown resource")
    patch = PatchContent(item_id=missing, changes=ResourceSettingsPatch(timeout=5, given=("timeout",)))
    assert await deliver(manager.patch_content, Envelope(patch)) == Rejected(status=404, error="Unknown resource")


async def test_patch_keeps_what_it_does_not_name(manager: ContentManager) -> None:
    item_id, blob = await stored(manager)
    changes = ResourceSettingsPatch(timeout=45, mime_type="text/plain", given=("timeout", "mime_type"))
    assert await deliver(manager.patch_content, Envelope(PatchContent(item_id=item_id, changes=changes))) == Accepted(
        id=item_id
    )
    document = await manager.contents.get(item_id)
    assert document is not None and document["blob_id"] == blob.blob_id and document["name"] == "add.wl"
    assert document["resource"] == {**ACTIVE.model_dump(), "timeout": 45, "mime_type": "text/plain"}
    # An explicit null goes back to the default; the content alone can change too.
    reset = ResourceSettingsPatch(timeout=None, given=("timeout",))
    await deliver(manager.patch_content, Envelope(PatchContent(item_id=item_id, changes=reset)))
    new = await upload(manager, b"new")
    await deliver(manager.patch_content, Envelope(PatchContent(item_id=item_id, filename="new.wl", blob=new)))
    document = await manager.contents.get(item_id)
    assert document is not None and document["resource"]["timeout"] is None and document["blob_id"] == new.blob_id
    assert document["name"] == "new.wl" and await blob_ids(manager) == {new.blob_id}


async def test_patch_that_leaves_no_pool_for_an_active_resource_is_400(manager: ContentManager) -> None:
    item_id, _ = await stored(manager)
    static = ResourceSettingsPatch(resource_type="Static", pool_name=None, given=("resource_type", "pool_name"))
    assert await deliver(manager.patch_content, Envelope(PatchContent(item_id=item_id, changes=static))) == Accepted(
        id=item_id
    )
    active = ResourceSettingsPatch(resource_type="Active", given=("resource_type",))
    reply = await deliver(manager.patch_content, Envelope(PatchContent(item_id=item_id, changes=active)))
    assert reply == Rejected(status=400, error="The poolName is required unless the resourceType is Static.")


async def test_delete_removes_the_item_then_its_blob_and_a_redelivery_is_fine(manager: ContentManager) -> None:
    item_id, _ = await stored(manager)
    envelope = Envelope(DeleteContent(item_id=item_id))
    assert await deliver(manager.delete_content, envelope) == Accepted(id=item_id)
    assert await manager.contents.get(item_id) is None and await blob_ids(manager) == set()
    assert await deliver(manager.delete_content, envelope) == Accepted(id=item_id)
    unknown = Envelope(DeleteContent(item_id=str(uuid.uuid4())))
    assert await deliver(manager.delete_content, unknown) == Rejected(status=404, error="Unknown resource")


async def test_the_path_of_a_deleted_resource_can_be_used_again(manager: ContentManager) -> None:
    item_id, _ = await stored(manager)
    await deliver(manager.delete_content, Envelope(DeleteContent(item_id=item_id)))
    again, _ = await stored(manager)
    assert again != item_id


async def test_grant_lets_a_host_read_and_is_idempotent(manager: ContentManager) -> None:
    a, _ = await stored(manager, "a")
    b, _ = await stored(manager, "b")
    grant = Envelope(GrantData(item_ids=(a, b, a), resource_id="host-1"))
    assert await deliver(manager.grant_data, grant) == Accepted()
    assert await deliver(manager.grant_data, grant) == Accepted()
    await deliver(manager.grant_data, Envelope(GrantData(item_ids=(a,), resource_id="host-2")))
    assert (await manager.contents.get(a))["granted_to"] == ["host-1", "host-2"]  # type: ignore[index]
    assert (await manager.contents.get(b))["granted_to"] == ["host-1"]  # type: ignore[index]


async def test_grant_refuses_unknown_ids_and_foreign_items_and_then_grants_nothing(manager: ContentManager) -> None:
    mine, _ = await stored(manager, "mine")
    missing = str(uuid.uuid4())
    reply = await deliver(manager.grant_data, Envelope(GrantData(item_ids=(mine, missing), resource_id="h")))
    assert reply == Rejected(status=404, error=f"unknown data: {missing}")
    reply = await deliver(manager.grant_data, Envelope(GrantData(item_ids=(mine,), resource_id="h", owner="alice")))
    assert isinstance(reply, Rejected) and reply.status == 403
    assert (await manager.contents.get(mine))["granted_to"] == []  # type: ignore[index]
    assert (
        await deliver(manager.grant_data, Envelope(GrantData(item_ids=(mine,), resource_id="h", owner="steve")))
        == Accepted()
    )


async def test_staging_a_jobs_files_grants_them_then_asks_the_agent(manager: ContentManager) -> None:
    binary, _ = await stored(manager, "bin/tool")
    unnamed = str(uuid.uuid4())
    await deliver(
        manager.store_data, Envelope(StoreData(item_id=unnamed, owner="steve", name=None, blob=await upload(manager)))
    )
    command = Envelope(StageJobFiles(job_id="job-1", resource_id="host-1", data_ids=[binary, unnamed], binary=binary))
    assert await deliver(manager.stage_job_files, command) is None
    assert (await manager.contents.get(binary))["granted_to"] == ["host-1"]  # type: ignore[index]
    [(exchange, sent)] = manager.bus.published  # type: ignore[attr-defined]
    assert exchange == manager.topology.commands  # type: ignore[union-attr]
    files = [StagedFile(data_id=binary, name="add.wl", executable=True), StagedFile(data_id=unnamed, name=unnamed)]
    assert sent.payload == StageInFiles(job_id="job-1", files=files)  # named by their stored names, else their ids
    assert sent.resource_id == "host-1" and sent.causation_id == command.message_id


async def test_staging_an_unknown_file_fails_the_staging_at_once(manager: ContentManager) -> None:
    missing = str(uuid.uuid4())
    await deliver(
        manager.stage_job_files, Envelope(StageJobFiles(job_id="job-2", resource_id="host-1", data_ids=[missing]))
    )
    [(exchange, sent)] = manager.bus.published  # type: ignore[attr-defined]
    assert exchange == manager.topology.events  # type: ignore[union-attr]
    assert sent.payload == StagingRefused(job_id="job-2", error=f"unknown data: {missing}")
    assert sent.resource_id == "host-1"


async def test_orphan_cleanup_deletes_only_old_unreferenced_blobs_and_stale_temp_files(
    manager: ContentManager, tmp_path
) -> None:
    item_id, kept = await stored(manager)
    orphan = await upload(manager, b"never committed")
    young_orphan = await upload(manager, b"still uploading its command")
    old = time.time() - 2 * manager.orphan_grace
    for blob in (kept, orphan):
        path = next((tmp_path / "blobs").rglob(f"{blob.blob_id}.*"))
        os.utime(path, (old, old))
    stale = tmp_path / "blobs" / ".tmp" / f"{uuid.uuid4()}.part"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"half an upload")
    os.utime(stale, (old, old))
    fresh = stale.with_name(f"{uuid.uuid4()}.part")
    fresh.write_bytes(b"an upload in progress")
    await deliver(
        manager.delete_content, Envelope(DeleteContent(item_id=str(uuid.uuid4())))
    )  # no tombstone for unknowns
    await manager.tombstones.insert({"id": "old", "deleted_at": manager.clock() - 8 * 24 * 3600})
    await manager.tombstones.insert({"id": "recent", "deleted_at": manager.clock() - 3600})

    cleanup = await manager.collect_orphans()

    assert (cleanup.blobs, cleanup.temp_files, cleanup.tombstones) == (1, 1, 1)
    assert await blob_ids(manager) == {kept.blob_id, young_orphan.blob_id}
    assert not stale.exists() and fresh.exists()
    assert await manager.tombstones.get("recent") is not None
    assert (await manager.contents.get(item_id))["blob_id"] == kept.blob_id  # type: ignore[index]


async def test_the_service_cleans_orphans_on_its_own(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, content_orphan_grace=0.2, content_cleanup_interval=0.05)
    store = await SqliteDocumentStore.open(tmp_path / "content.db")
    bus = MemoryBus(all_message_types(), Topology("clean"))
    await bus.start()
    service = ContentManagerService(settings, bus, store, Topology("clean"))
    await service.start()
    try:
        assert service.manager is not None
        orphan = await upload(service.manager, b"nobody will commit this")
        for _ in range(100):
            if orphan.blob_id not in await blob_ids(service.manager):
                break
            await asyncio.sleep(0.02)
        assert await blob_ids(service.manager) == set()
    finally:
        await service.stop()
        await bus.close()
        await store.close()
