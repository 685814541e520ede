"""The document-store contract: one suite that every adapter passes.

:class:`DocumentStoreContract` holds the tests; each adapter's subclass supplies ``open_store``, a
fixture that opens store instances on one fresh database (every call a separate instance with its
own connection, so concurrent writers can be real ones).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from services.store._query import value_at
from services.store.mongo import MongoDocumentStore
from services.store.port import (
    Collection,
    DocumentStore,
    DuplicateKey,
    NotFound,
    StoreUnavailable,
    VersionConflict,
)
from services.store.sqlite import SqliteDocumentStore
from tests.store_fixtures import mongo_database_fixture, mongo_url_fixture, sqlite_path_fixture  # noqa: F401

Opener = Callable[[], Awaitable[DocumentStore]]
REPO = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def openers(open_one: Opener) -> AsyncIterator[Opener]:
    """An opener that remembers its stores and closes them all at the end."""
    stores: list[DocumentStore] = []

    async def opener() -> DocumentStore:
        store = await open_one()
        stores.append(store)
        return store

    try:
        yield opener
    finally:
        for store in reversed(stores):
            await store.close()


async def ids(collection: Collection, filter: dict[str, Any] | None = None, **options: Any) -> list[str]:
    return [document["id"] for document in (await collection.find(filter, **options)).items]


async def all_pages(collection: Collection, filter: dict[str, Any] | None, sort: Any, limit: int) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        page = await collection.find(filter, sort=sort, limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        seen += [document["id"] for document in page.items]
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


def expected_order(documents: list[dict[str, Any]], sort: list[tuple[str, int]]) -> list[str]:
    """The port's order: missing/None first ascending (last descending), then id ascending."""
    ordered = sorted(documents, key=lambda document: document["id"])
    for field, direction in reversed(sort):
        ordered.sort(
            key=lambda document, field=field: (value_at(document, field) is not None, value_at(document, field)),
            reverse=direction == -1,
        )
    return [document["id"] for document in ordered]


async def increment(collection: Collection, document_id: str) -> int:
    """Read, add one, write back guarded by the version; returns how many conflicts it retried."""
    conflicts = 0
    while True:
        document = await collection.get(document_id)
        assert document is not None
        try:
            await collection.update(document_id, {"n": document["n"] + 1}, expected_version=document["version"])
            return conflicts
        except VersionConflict:
            conflicts += 1
            await asyncio.sleep(0)


class DocumentStoreContract:
    @pytest.fixture
    async def store(self, open_store: Opener) -> DocumentStore:
        return await open_store()

    @pytest.fixture
    def jobs(self, store: DocumentStore) -> Collection:
        return store.collection("jobs")

    # -- insert, get, update, delete

    async def test_insert_stores_version_1_and_get_returns_it(self, jobs: Collection) -> None:
        given = {"id": "j1", "state": "queued", "spec": {"cpu": 2, "tags": ["a", "b"]}, "at": 1700000000.25}
        inserted = await jobs.insert(given)
        assert inserted == {**given, "version": 1}
        assert await jobs.get("j1") == {**given, "version": 1}
        assert given == {"id": "j1", "state": "queued", "spec": {"cpu": 2, "tags": ["a", "b"]}, "at": 1700000000.25}
        assert await jobs.get("nope") is None

    async def test_insert_ignores_a_given_version_and_needs_an_id(self, jobs: Collection) -> None:
        assert (await jobs.insert({"id": "j1", "version": 7}))["version"] == 1
        with pytest.raises(ValueError):
            await jobs.insert({"state": "queued"})

    async def test_duplicate_id_is_duplicate_key(self, jobs: Collection) -> None:
        await jobs.insert({"id": "j1", "n": 1})
        with pytest.raises(DuplicateKey) as raised:
            await jobs.insert({"id": "j1", "n": 2})
        assert raised.value.collection == "jobs"
        assert raised.value.fields == ("id",)
        assert (await jobs.get("j1"))["n"] == 1

    async def test_collections_are_separate(self, store: DocumentStore) -> None:
        await store.collection("jobs").insert({"id": "x", "kind": "job"})
        await store.collection("hosts").insert({"id": "x", "kind": "host"})
        assert (await store.collection("jobs").get("x"))["kind"] == "job"
        assert await store.collection("hosts").count() == 1

    async def test_update_sets_fields_and_bumps_version(self, jobs: Collection) -> None:
        await jobs.insert({"id": "j1", "state": "queued", "spec": {"cpu": 2, "mem": 4}, "keep": True})
        updated = await jobs.update("j1", {"state": "running", "spec": {"cpu": 4}, "host": None})
        expected = {"id": "j1", "version": 2, "state": "running", "spec": {"cpu": 4}, "keep": True, "host": None}
        assert updated == expected
        assert await jobs.get("j1") == expected
        assert (await jobs.update("j1", {}, expected_version=2))["version"] == 3

    async def test_update_with_stale_version_conflicts_and_changes_nothing(self, jobs: Collection) -> None:
        await jobs.insert({"id": "j1", "state": "queued"})
        await jobs.update("j1", {"state": "running"}, expected_version=1)
        with pytest.raises(VersionConflict):
            await jobs.update("j1", {"state": "cancelled"}, expected_version=1)
        assert await jobs.get("j1") == {"id": "j1", "version": 2, "state": "running"}

    async def test_update_of_a_missing_document_is_not_found(self, jobs: Collection) -> None:
        with pytest.raises(NotFound):
            await jobs.update("nope", {"state": "running"})
        with pytest.raises(NotFound):
            await jobs.update("nope", {"state": "running"}, expected_version=1)

    async def test_update_cannot_touch_id_version_or_nested_paths(self, jobs: Collection) -> None:
        await jobs.insert({"id": "j1"})
        for changes in ({"id": "j2"}, {"version": 9}, {"spec.cpu": 1}):
            with pytest.raises(ValueError):
                await jobs.update("j1", changes)
        assert await jobs.get("j1") == {"id": "j1", "version": 1}

    async def test_delete(self, jobs: Collection) -> None:
        await jobs.insert({"id": "j1"})
        await jobs.insert({"id": "j2"})
        assert await jobs.delete("j1") is True
        assert await jobs.delete("j1") is False
        assert await jobs.get("j1") is None
        assert await jobs.delete("nope", expected_version=1) is False
        await jobs.update("j2", {"state": "done"})
        with pytest.raises(VersionConflict):
            await jobs.delete("j2", expected_version=1)
        assert await jobs.get("j2") is not None
        assert await jobs.delete("j2", expected_version=2) is True
        assert await jobs.count() == 0

    async def test_delete_many_and_count(self, jobs: Collection) -> None:
        for i in range(6):
            await jobs.insert({"id": f"j{i}", "state": "done" if i % 2 else "queued"})
        assert await jobs.count() == 6
        assert await jobs.count({"state": "done"}) == 3
        assert await jobs.delete_many({"state": "done"}) == 3
        assert await ids(jobs) == ["j0", "j2", "j4"]
        assert await jobs.delete_many({}) == 3
        assert await jobs.count() == 0

    # -- filters

    async def test_equality_in_and_range_filters(self, jobs: Collection) -> None:
        for i, state in enumerate(["queued", "running", "done", "done", "failed"]):
            await jobs.insert({"id": f"j{i}", "state": state, "at": 100.0 + i, "owner": "u1" if i < 3 else "u2"})
        assert await ids(jobs, {"state": "done"}) == ["j2", "j3"]
        assert await ids(jobs, {"state": "done", "owner": "u2"}) == ["j3"]
        assert await ids(jobs, {"state": {"$in": ["queued", "failed"]}}) == ["j0", "j4"]
        assert await ids(jobs, {"state": {"$in": []}}) == []
        assert await ids(jobs, {"state": {"$ne": "done"}}) == ["j0", "j1", "j4"]
        assert await ids(jobs, {"at": {"$gt": 101}}) == ["j2", "j3", "j4"]
        assert await ids(jobs, {"at": {"$gte": 101, "$lt": 103}}) == ["j1", "j2"]
        assert await ids(jobs, {"at": {"$lte": 100.0}}) == ["j0"]
        assert await ids(jobs, {"id": {"$in": ["j1", "j3", "zz"]}}) == ["j1", "j3"]
        assert await ids(jobs, {"id": {"$gte": "j3"}}) == ["j3", "j4"]
        assert await jobs.find_one({"state": "done"}) in [await jobs.get("j2"), await jobs.get("j3")]
        assert await jobs.find_one({"state": "lost"}) is None

    async def test_nested_dotted_fields(self, jobs: Collection) -> None:
        await jobs.insert({"id": "a", "spec": {"cpu": 1, "labels": {"zone": "eu"}}})
        await jobs.insert({"id": "b", "spec": {"cpu": 4, "labels": {"zone": "us"}}})
        await jobs.insert({"id": "c", "spec": {"cpu": 2}})
        await jobs.insert({"id": "d", "spec": "flat"})
        assert await ids(jobs, {"spec.labels.zone": "eu"}) == ["a"]
        assert await ids(jobs, {"spec.cpu": {"$gte": 2}}) == ["b", "c"]
        assert await ids(jobs, {"spec.labels.zone": None}) == ["c", "d"]
        assert await ids(jobs, {"spec.labels": {"zone": "us"}}) == ["b"]
        assert await ids(jobs, sort=[("spec.cpu", -1)]) == ["b", "c", "a", "d"]

    async def test_none_matches_missing_and_null(self, jobs: Collection) -> None:
        await jobs.insert({"id": "a", "host": None})
        await jobs.insert({"id": "b"})
        await jobs.insert({"id": "c", "host": "h1"})
        assert await ids(jobs, {"host": None}) == ["a", "b"]
        assert await ids(jobs, {"host": {"$ne": None}}) == ["c"]
        assert await ids(jobs, {"host": {"$in": [None, "h1"]}}) == ["a", "b", "c"]
        assert await ids(jobs, {"host": {"$ne": "h1"}}) == ["a", "b"]

    async def test_types_are_not_mixed_up(self, jobs: Collection) -> None:
        values = {"a": 1, "b": 2.5, "c": "1", "d": True, "e": None, "g": 10, "h": False, "i": 0}
        for document_id, value in values.items():
            await jobs.insert({"id": document_id, "n": value})
        await jobs.insert({"id": "f"})
        assert await ids(jobs, {"n": 1}) == ["a"]
        assert await ids(jobs, {"n": 1.0}) == ["a"]
        assert await ids(jobs, {"n": "1"}) == ["c"]
        assert await ids(jobs, {"n": True}) == ["d"]
        assert await ids(jobs, {"n": False}) == ["h"]
        assert await ids(jobs, {"n": 0}) == ["i"]
        assert await ids(jobs, {"n": {"$gt": 1}}) == ["b", "g"]
        assert await ids(jobs, {"n": {"$gte": 1, "$lt": 10}}) == ["a", "b"]
        assert await ids(jobs, {"n": {"$lt": "5"}}) == ["c"]
        assert await ids(jobs, {"n": {"$ne": 1}}) == ["b", "c", "d", "e", "f", "g", "h", "i"]
        assert await ids(jobs, {"n": {"$in": [1, "1", None]}}) == ["a", "c", "e", "f"]
        assert await ids(jobs, {"n": {"$in": [True, 2.5]}}) == ["b", "d"]
        assert await ids(jobs, {"version": 1}) == sorted([*values, "f"])

    async def test_bad_filters_and_sorts_are_value_errors(self, jobs: Collection) -> None:
        for filter in ({"n": {"$regex": "x"}}, {"$or": [{"n": 1}]}, {"bad name": 1}, {"n": {"$in": 1}}):
            with pytest.raises(ValueError):
                await jobs.find(filter)
        with pytest.raises(ValueError):
            await jobs.find(sort=[("n", 0)])
        with pytest.raises(ValueError):
            await jobs.find(limit=0)

    # -- sort and pagination

    @pytest.fixture
    async def fleet(self, jobs: Collection) -> list[dict[str, Any]]:
        """23 documents with ties, missing values and nested fields to sort on."""
        documents = []
        for i in range(23):
            document: dict[str, Any] = {"id": f"j{(i * 7) % 23:02d}", "name": f"n{i % 5}", "meta": {"rank": i % 4}}
            if i % 6:
                document["prio"] = i % 3
            documents.append(document)
            await jobs.insert(document)
        return documents

    @pytest.mark.parametrize(
        "sort",
        [
            [],
            [("prio", 1)],
            [("prio", -1)],
            [("prio", -1), ("name", 1)],
            [("name", 1), ("prio", -1)],
            [("meta.rank", -1)],
            [("id", -1)],
        ],
        ids=lambda sort: ",".join(f"{field}{'+' if direction > 0 else '-'}" for field, direction in sort) or "none",
    )
    async def test_sort_and_pages_cover_everything_once(
        self, jobs: Collection, fleet: list[dict[str, Any]], sort: list[tuple[str, int]]
    ) -> None:
        expected = expected_order(fleet, sort)
        assert await ids(jobs, sort=sort) == expected
        assert (await jobs.find(sort=sort, limit=len(fleet))).next_cursor is None
        for limit in (1, 4, 22):
            assert await all_pages(jobs, None, sort, limit) == expected
        assert await all_pages(jobs, {"prio": {"$ne": 0}}, sort, 3) == [
            document_id for document_id in expected if value_at(await jobs.get(document_id), "prio") != 0
        ]

    async def test_pages_are_stable_when_documents_come_and_go_between_them(
        self, jobs: Collection, fleet: list[dict[str, Any]]
    ) -> None:
        sort = [("prio", 1)]
        first = await jobs.find(sort=sort, limit=10)
        seen = [document["id"] for document in first.items]
        last_prio = first.items[-1].get("prio")
        assert last_prio == 1  # the page ends inside a run of ties
        await jobs.insert({"id": "a-before", "prio": 0})  # sorts before the cursor: never shown
        await jobs.insert({"id": "a-tie", "prio": 1})  # ties, but its id sorts before: never shown
        await jobs.insert({"id": "z-tie", "prio": 1})  # ties, id after: shown
        await jobs.insert({"id": "z-after", "prio": 2})
        unseen = [document_id for document_id in expected_order(fleet, sort) if document_id not in seen]
        await jobs.delete(unseen[3])
        rest = await all_pages_from(jobs, sort, 5, first.next_cursor)
        assert not set(rest) & set(seen)
        assert "a-before" not in rest and "a-tie" not in rest
        assert {"z-tie", "z-after"} <= set(rest)
        assert [document_id for document_id in rest if not document_id.startswith(("z-", "a-"))] == [
            document_id for document_id in unseen if document_id != unseen[3]
        ]

    async def test_a_cursor_only_fits_its_own_query(self, jobs: Collection, fleet: list[dict[str, Any]]) -> None:
        page = await jobs.find({"prio": 1}, sort=[("name", 1)], limit=2)
        assert page.next_cursor is not None
        for filter, sort in (({"prio": 2}, [("name", 1)]), ({"prio": 1}, [("name", -1)])):
            with pytest.raises(ValueError):
                await jobs.find(filter, sort=sort, limit=2, cursor=page.next_cursor)
        with pytest.raises(ValueError):
            await jobs.find({"prio": 1}, sort=[("name", 1)], limit=2, cursor="not-a-cursor")

    # -- unique indexes

    async def test_unique_index_rejects_a_duplicate_insert(self, jobs: Collection) -> None:
        await jobs.create_index(["owner", "name"], unique=True)
        await jobs.create_index(["owner", "name"], unique=True)  # idempotent
        await jobs.create_index(["state"])
        await jobs.insert({"id": "a", "owner": "u1", "name": "build"})
        with pytest.raises(DuplicateKey) as raised:
            await jobs.insert({"id": "b", "owner": "u1", "name": "build"})
        assert raised.value.fields == ("owner", "name")
        assert raised.value.collection == "jobs"
        assert await jobs.get("b") is None
        await jobs.insert({"id": "c", "owner": "u2", "name": "build"})
        await jobs.insert({"id": "d", "state": "x"})  # documents without the fields never collide
        await jobs.insert({"id": "e", "state": "x"})
        assert await jobs.count() == 4

    async def test_unique_index_rejects_a_duplicating_update(self, jobs: Collection) -> None:
        await jobs.create_index(["meta.key"], unique=True)
        await jobs.insert({"id": "a", "meta": {"key": "k1"}})
        await jobs.insert({"id": "b", "meta": {"key": "k2"}})
        with pytest.raises(DuplicateKey) as raised:
            await jobs.update("b", {"meta": {"key": "k1"}}, expected_version=1)
        assert raised.value.fields == ("meta.key",)
        assert await jobs.get("b") == {"id": "b", "version": 1, "meta": {"key": "k2"}}

    async def test_unique_index_over_existing_duplicates_is_duplicate_key(self, jobs: Collection) -> None:
        await jobs.insert({"id": "a", "name": "same"})
        await jobs.insert({"id": "b", "name": "same"})
        with pytest.raises(DuplicateKey) as raised:
            await jobs.create_index(["name"], unique=True)
        assert raised.value.fields == ("name",)

    # -- concurrency

    async def test_concurrent_increments_with_version_retry_lose_nothing(self, jobs: Collection) -> None:
        await jobs.insert({"id": "counter", "n": 0})
        conflicts = await asyncio.gather(*(increment(jobs, "counter") for _ in range(20)))
        counter = await jobs.get("counter")
        assert counter["n"] == 20
        assert counter["version"] == 21
        assert sum(conflicts) > 0  # the tasks did race

    async def test_two_store_instances_increment_one_document(self, open_store: Opener) -> None:
        first, second = await open_store(), await open_store()
        await first.collection("counters").insert({"id": "c", "n": 0})
        await asyncio.gather(
            *(increment(first.collection("counters"), "c") for _ in range(10)),
            *(increment(second.collection("counters"), "c") for _ in range(10)),
        )
        assert (await second.collection("counters").get("c"))["n"] == 20
        assert (await first.collection("counters").get("c"))["version"] == 21


async def all_pages_from(collection: Collection, sort: Any, limit: int, cursor: str | None) -> list[str]:
    seen: list[str] = []
    while cursor is not None:
        page = await collection.find(sort=sort, limit=limit, cursor=cursor)
        seen += [document["id"] for document in page.items]
        cursor = page.next_cursor
    return seen


class TestSqliteDocumentStore(DocumentStoreContract):
    @pytest.fixture
    async def open_store(self, sqlite_path: Path) -> AsyncIterator[Opener]:
        async with openers(lambda: SqliteDocumentStore.open(sqlite_path)) as opener:
            yield opener

    async def test_processes_sharing_the_file_lose_no_increment(self, sqlite_path: Path, jobs: Collection) -> None:
        """Two other processes and this one increment one counter in one file at the same time."""
        await jobs.insert({"id": "c", "n": 0})
        script = textwrap.dedent(
            """
            import asyncio, sys
            from services.store.port import VersionConflict
            from services.store.sqlite import SqliteDocumentStore

            async def main(path, times):
                store = await SqliteDocumentStore.open(path)
                jobs = store.collection("jobs")
                for _ in range(times):
                    while True:
                        document = await jobs.get("c")
                        try:
                            await jobs.update("c", {"n": document["n"] + 1}, expected_version=document["version"])
                            break
                        except VersionConflict:
                            pass
                await store.close()

            asyncio.run(main(sys.argv[1], int(sys.argv[2])))
            """
        )
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", script, str(sqlite_path), "40", cwd=REPO, stderr=subprocess.PIPE
            )
            for _ in range(2)
        ]
        for _ in range(40):
            await increment(jobs, "c")
        for process in processes:
            _, stderr = await process.communicate()
            assert process.returncode == 0, stderr.decode()
        assert (await jobs.get("c"))["n"] == 120

    async def test_the_file_is_in_wal_mode(self, sqlite_path: Path, store: SqliteDocumentStore) -> None:
        assert await store.db.execute_fetchall("PRAGMA journal_mode") == [("wal",)]


@pytest.mark.mongo
class TestMongoDocumentStore(DocumentStoreContract):
    @pytest.fixture
    async def open_store(self, mongo_url: str, mongo_database: str) -> AsyncIterator[Opener]:
        async with openers(lambda: MongoDocumentStore.open(mongo_url, mongo_database)) as opener:
            yield opener


async def test_mongo_unreachable_is_store_unavailable() -> None:
    store = await MongoDocumentStore.open("mongodb://127.0.0.1:1/", "skybus", server_selection_timeout=0.1)
    try:
        with pytest.raises(StoreUnavailable):
            await store.collection("jobs").get("j1")  # about half a second: the driver's heartbeat floor
    finally:
        await store.close()
