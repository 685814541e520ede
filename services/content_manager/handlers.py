"""Handlers of the content manager: one plain async function per command, and the orphan cleaner.

Claim check: a command carries a :class:`BlobRef` to bytes the gateway already stored. The manager
checks the blob is there, matches the reference and is fresh, commits the metadata, and owns the
blob from then on: it deletes a blob once no committed metadata points to it any more (after the
metadata change, never before, so a reader that resolved the old metadata still finds its blob).

Delivery: at least once, possibly to two copies of the manager at once. Every handler is safe to
run twice and beside its twin:

* a store finds its item (item ids are made once per upload) or, if the item was deleted since,
  its tombstone, which the delete writes *before* it removes the item: either way it is done;
* a replace or patch finds its own message id in the item's ``applied`` list, which is written in
  the same versioned update as the change itself; a concurrent change makes the update fail on its
  version and the handler reads again;
* a delete that finds nothing but a tombstone is done; grants and transfers are set operations;
* staging a job's files grants them (a set operation) and asks the agent again, which skips the
  files it has already staged.

Whatever a crash leaves behind (a replaced blob not yet deleted, an upload never committed) is an
orphan: no metadata refers to it, and :meth:`ContentManager.collect_orphans` deletes it once it is
older than the grace period.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.envelope import Envelope
from broker.port import MessageBus
from broker.router import Router
from broker.serial import Serialized
from broker.topology import Topology
from schemas.base import Accepted, Rejected, WireModel
from schemas.content import (
    BlobRef,
    DeleteContent,
    GrantData,
    PatchContent,
    ReplaceContent,
    ResourceSettings,
    StoreContent,
    StoreData,
)
from schemas.content_rules import UNKNOWN, ContentError, patched
from schemas.jobs import StagedFile, StageInFiles, StageJobFiles, StagingRefused
from services.content_manager import domain
from services.content_manager.cleanup import Cleanup, collect_orphans
from services.content_manager.domain import DATA, RESOURCE
from services.store.port import BlobStore, Collection, DuplicateKey, StoreError, VersionConflict

log = logging.getLogger(__name__)

SENDER = "content-manager"

ATTEMPTS = 8  # runs of a handler that lost a versioned update, before the message is requeued

Change = Callable[[dict[str, Any]], ResourceSettings | None]


@dataclass
class ContentManager:
    contents: Collection
    tombstones: Collection
    blobs: BlobStore
    orphan_grace: float = 3600.0
    clock: Callable[[], float] = time.time
    bus: MessageBus | None = None  # only staging a job's files publishes anything
    topology: Topology | None = None
    per_item: Serialized = field(default_factory=lambda: Serialized(VersionConflict, attempts=ATTEMPTS))
    """One change of an item at a time in this process; a versioned write that lost to a twin (or to
    a concurrent handler) is run again, reading afresh."""

    def router(self) -> Router:
        router = Router()
        router.add(StoreContent, self.store_content)
        router.add(ReplaceContent, self.replace_content, serialized=self.per_item, key=item_of)
        router.add(PatchContent, self.patch_content, serialized=self.per_item, key=item_of)
        router.add(DeleteContent, self.delete_content, serialized=self.per_item, key=item_of)
        router.add(StoreData, self.store_data)
        router.add(GrantData, self.grant_data, serialized=self.per_item)  # several items: retried, not locked
        router.add(StageJobFiles, self.stage_job_files, serialized=self.per_item)
        return router

    # Commands.

    async def store_content(self, command: StoreContent, envelope: Envelope) -> WireModel:
        document = domain.new_item(
            item_id=command.item_id,
            kind=RESOURCE,
            owner=command.owner,
            name=command.filename,
            blob=command.blob,
            message_id=envelope.message_id,
            now=self.clock(),
            path=command.path,
            settings=command.settings,
        )
        return await self._insert(document, command.blob)

    async def store_data(self, command: StoreData, envelope: Envelope) -> WireModel:
        document = domain.new_item(
            item_id=command.item_id,
            kind=DATA,
            owner=command.owner,
            name=command.name,
            blob=command.blob,
            message_id=envelope.message_id,
            now=self.clock(),
            granted_to=command.granted_to,
        )
        return await self._insert(document, command.blob)

    async def replace_content(self, command: ReplaceContent, envelope: Envelope) -> WireModel:
        return await self._update(
            envelope, command.item_id, command.blob, command.filename, lambda document: command.settings
        )

    async def patch_content(self, command: PatchContent, envelope: Envelope) -> WireModel:

        def change(document: dict[str, Any]) -> ResourceSettings | None:
            if not command.changes.given:
                return None
            return patched(document["resource"], command.changes)

        return await self._update(envelope, command.item_id, command.blob, command.filename, change)

    async def delete_content(self, command: DeleteContent, envelope: Envelope) -> WireModel:
        item_id = command.item_id
        document = await self.contents.get(item_id)
        if document is None:
            return Accepted(id=item_id) if await self._was_deleted(item_id) else Rejected(status=404, error=UNKNOWN)
        await self._bury(item_id)
        if await self.contents.delete(item_id, expected_version=document["version"]):
            log.info("deleted %s %s (%s)", document["kind"], item_id, document.get("path") or document["name"])
            await self._release(document["blob_id"])
        return Accepted(id=item_id)

    async def grant_data(self, command: GrantData, envelope: Envelope) -> WireModel:
        documents, refusal = await self._load_all(command.item_ids, owner=command.owner)
        if refusal is not None:
            return refusal
        await self._grant(documents, command.resource_id)
        return Accepted()

    async def stage_job_files(self, command: StageJobFiles, envelope: Envelope) -> None:
        """The job manager's request to put a job's files on its host: grant the host's agent the
        files, then ask the agent (through the resource manager, seed 000's proxy) to stage them in.
        An unknown file fails the staging at once with a ``StagingRefused`` that says which."""
        assert self.bus is not None and self.topology is not None
        documents, refusal = await self._load_all(tuple(command.data_ids), owner=None)
        if refusal is not None:
            failed = StagingRefused(job_id=command.job_id, error=refusal.error)
            await self.bus.publish(
                self.topology.events, envelope.caused(failed, sender=SENDER, resource_id=command.resource_id)
            )
            return
        await self._grant(documents, command.resource_id)
        names = {document["id"]: document.get("name") or document["id"] for document in documents}
        files = [
            StagedFile(data_id=data_id, name=names[data_id], executable=data_id == command.binary)
            for data_id in command.data_ids
        ]
        stage_in = StageInFiles(job_id=command.job_id, files=files)
        await self.bus.publish(
            self.topology.commands, envelope.caused(stage_in, sender=SENDER, resource_id=command.resource_id)
        )

    # Periodic.

    async def collect_orphans(self) -> Cleanup:
        return await collect_orphans(
            self.contents, self.tombstones, self.blobs, grace=self.orphan_grace, now=self.clock()
        )

    # Helpers.

    async def _insert(self, document: dict[str, Any], blob: BlobRef) -> WireModel:
        item_id = document["id"]
        # The tombstone is written before the item is removed, so one of the two is always seen.
        if await self.contents.get(item_id) is not None or await self._was_deleted(item_id):
            return Accepted(id=item_id)
        refusal = await self._check_claim(blob)
        if refusal is not None:
            return refusal
        try:
            await self.contents.insert(document)
        except DuplicateKey:
            if await self.contents.get(item_id) is not None:
                return Accepted(id=item_id)  # the twin committed the same delivery
            return Rejected(status=409, error="A resource with this resourcePath already exists.")
        log.info("stored %s %s (%s, %d bytes)", document["kind"], item_id, document.get("path") or "", blob.size)
        return Accepted(id=item_id)

    async def _update(
        self, envelope: Envelope, item_id: str, blob: BlobRef | None, filename: str | None, change: Change
    ) -> WireModel:
        """One versioned read-modify-write; a lost race raises VersionConflict (the router runs it again)."""
        document = await self.contents.get(item_id)
        if document is None or document["kind"] != RESOURCE:
            return Rejected(status=404, error=UNKNOWN)
        if domain.was_applied(document, envelope.message_id):
            return Accepted(id=item_id)
        try:
            settings = change(document)
        except ContentError as error:
            return Rejected(status=error.status, error=error.message)
        if blob is not None:
            refusal = await self._check_claim(blob)
            if refusal is not None:
                return refusal
        changes = domain.changes_for(
            document,
            message_id=envelope.message_id,
            now=self.clock(),
            blob=blob,
            filename=filename,
            settings=settings,
        )
        await self.contents.update(item_id, changes, expected_version=document["version"])
        log.info("updated resource %s (%s)%s", item_id, document["path"], " with new content" if blob else "")
        if blob is not None and document["blob_id"] != blob.blob_id:
            await self._release(document["blob_id"])
        return Accepted(id=item_id)

    async def _check_claim(self, blob: BlobRef) -> Rejected | None:
        info = await self.blobs.info(blob.blob_id)
        if info is None:
            return Rejected(status=400, error="The uploaded content is gone: upload it again.")
        if info.size != blob.size or info.sha256 != blob.sha256:
            return Rejected(status=400, error="The uploaded content does not match its reference.")
        if domain.is_expired_claim(info.created_at, self.clock(), self.orphan_grace):
            return Rejected(status=410, error="The upload expired before it was committed: upload it again.")
        return None

    async def _release(self, blob_id: str) -> None:
        """Delete a blob no metadata points to any more; if that fails, the orphan cleaner will."""
        try:
            await self.blobs.delete(blob_id)
        except StoreError as error:
            log.warning("could not delete released blob %s (the orphan cleaner will): %r", blob_id, error)

    async def _bury(self, item_id: str) -> None:
        try:
            await self.tombstones.insert({"id": item_id, "deleted_at": self.clock()})
        except DuplicateKey:
            pass

    async def _was_deleted(self, item_id: str) -> bool:
        return await self.tombstones.get(item_id) is not None

    async def _load_all(
        self, item_ids: tuple[str, ...], *, owner: str | None, or_owner: str | None = None
    ) -> tuple[list[dict[str, Any]], Rejected | None]:
        documents = []
        missing = []
        for item_id in dict.fromkeys(item_ids):
            document = await self.contents.get(item_id)
            if document is None:
                missing.append(item_id)
            else:
                documents.append(document)
        if missing:
            return [], Rejected(status=404, error=f"unknown data: {', '.join(missing)}")
        foreign = [d["id"] for d in documents if owner is not None and d["owner"] not in (owner, or_owner)]
        if foreign:
            return [], Rejected(status=403, error=f"not owned by {owner}: {', '.join(foreign)}")
        return documents, None

    async def _grant(self, documents: list[dict[str, Any]], resource_id: str) -> None:
        def granted(document: dict[str, Any]) -> list[str] | None:
            return None if resource_id in document["granted_to"] else [*document["granted_to"], resource_id]

        for document in documents:
            await self._set(document, "granted_to", granted)
        log.info("granted %d items to resource %s", len(documents), resource_id)

    async def _set(self, document: dict[str, Any], field: str, value_for: Callable[[dict[str, Any]], Any]) -> None:
        """Set one field to ``value_for(document)`` (None: nothing to do) with the version read; a lost
        race raises VersionConflict (the router runs the handler again)."""
        value = value_for(document)
        if value is not None:
            await self.contents.update(
                document["id"], {field: value, "updated_at": self.clock()}, expected_version=document["version"]
            )


def item_of(command: ReplaceContent | PatchContent | DeleteContent, envelope: Envelope) -> str:
    return command.item_id
