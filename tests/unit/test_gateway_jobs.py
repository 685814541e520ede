"""Seed 001 through the gateway: every endpoint and error, on the in-process bus and SQLite."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.envelope import Envelope
from broker.memory import MemoryBus
from broker.topology import Topology
from schemas.jobs import JobChanged, RunJob
from schemas.registry import all_message_types
from services.content_manager.repository import CONTENTS
from services.gateway.app import create_app
from services.gateway.context import BUS, TOPOLOGY
from services.gateway.ids import uuid7
from services.gateway.job_watch import JobWatcher, any_change, ended, until
from services.job_manager.service import JobManagerService
from services.resource_manager.domain import new_resource
from services.resource_manager.service import ResourceManagerService
from services.settings import Settings
from services.store.disk_blobs import DiskBlobStore
from services.store.sqlite import SqliteDocumentStore
from services.tokens import create_token, tokens_collection
from tests.delivery import deliver

HOST = "11111111-2222-4333-8444-555555555555"


class Api:
    def __init__(self, client: TestClient, store, admin: str, steve: str) -> None:
        self.client = client
        self.store = store
        self.tokens = {"admin": admin, "steve": steve}

    async def call(self, method: str, path: str, user: str = "steve", **kwargs):
        headers = {"Authorization": f"Bearer {self.tokens[user]}", **kwargs.pop("headers", {})}
        response = await self.client.request(method, path, headers=headers, **kwargs)
        return response.status, await response.json()

    async def run(self, user: str = "steve", **body) -> str:
        status, created = await self.call("POST", "/api/job/run", user, json={"command": "true", **body})
        assert status == 201, created
        return created["job_id"]


@pytest.fixture
async def api(tmp_path):
    settings = Settings(data_dir=tmp_path, request_timeout=2.0)
    store = await SqliteDocumentStore.open(tmp_path / "api.db")
    topology = Topology("api")
    bus = MemoryBus(all_message_types(), topology)
    await bus.start()
    managers = [
        ResourceManagerService(settings, bus, store, topology),
        JobManagerService(settings, bus, store, topology),
    ]
    for manager in managers:
        await manager.start()
    tokens = await tokens_collection(store)
    admin = await create_token(tokens, user="admin", admin=True)
    steve = await create_token(tokens, user="steve", admin=False)
    host = new_resource(resource_id=HOST, hostname="worker", user="admin", token_hash="x", verify_key="", now=0)
    await store.collection("resources").insert(host)  # registered, not responding: jobs wait pending
    blobs = DiskBlobStore(tmp_path / "blobs")
    client = TestClient(TestServer(await create_app(settings, bus, store, topology, blobs=blobs)))
    await client.start_server()
    yield Api(client, store, admin, steve)
    await client.close()
    for manager in managers:
        await manager.stop()
    await bus.close()
    await store.close()


async def test_run_returns_201_with_a_job_id_and_job_info_shows_it(api: Api) -> None:
    job_id = await api.run(command="uname -a | wc -l", ttl=60)
    status, info = await api.call("GET", f"/api/job/job_info/{job_id}")
    assert status == 200
    assert info["state"] == "pending" and info["answer_id"] is None and info["command"] == "uname -a | wc -l"
    assert info["user"] == "steve" and info["ttl"] == 60 and info["history"][0]["state"] == "pending"
    assert {"created_at", "started_at", "finished_at", "exit_code", "error", "resource_id"} <= set(info)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "command: Field required"),
        ({"command": ""}, "command: String should have at least 1 character"),
        ({"command": 5}, "command: Input should be a valid string"),
        ({"command": "x", "ttl": 0}, "ttl: Input should be greater than 0"),
        ({"command": "x", "ttl": "5"}, "ttl: Input should be a valid integer"),
        ({"command": "x", "binary": "nope"}, "binary: Value error, must be a UUID"),
        ({"command": "x", "input_files": ["nope"]}, "input_files.0: Value error, must be a UUID"),
        ({"command": "x", "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"command": "echo \u0000"}, "command: Value error, must not contain a NUL byte"),
    ],
)
async def test_run_rejects_bad_bodies(api: Api, body: dict, fragment: str) -> None:
    status, error = await api.call("POST", "/api/job/run", json=body)
    assert status == 400 and fragment in error["error"]


async def test_run_checks_files_and_hosts(api: Api) -> None:
    mine, theirs, unknown = (str(uuid.uuid4()) for _ in range(3))
    contents = api.store.collection(CONTENTS)
    await contents.insert({"id": mine, "owner": "steve", "name": "tool"})
    await contents.insert({"id": theirs, "owner": "admin", "name": "secret"})
    assert (await api.call("POST", "/api/job/run", json={"command": "x", "binary": mine}))[0] == 201
    status, error = await api.call("POST", "/api/job/run", json={"command": "x", "input_files": [unknown]})
    assert status == 400 and "unknown data id" in error["error"]
    assert (await api.call("POST", "/api/job/run", json={"command": "x", "binary": theirs}))[0] == 403
    assert (await api.call("POST", "/api/job/run", json={"command": "x", "resource_id": str(uuid.uuid4())}))[0] == 400
    assert (await api.call("POST", "/api/job/run", json={"command": "x", "hostname": "nowhere"}))[0] == 400
    status, created = await api.call("POST", "/api/job/run", json={"command": "x", "hostname": "worker"})
    assert status == 201
    assert (await api.call("GET", f"/api/job/job_info/{created['job_id']}"))[1]["state"] == "pending"


async def test_a_job_pinned_to_an_unauthorized_host_waits_pending(api: Api) -> None:
    await api.store.collection("resources").update(HOST, {"authorized": False, "responding": True})
    job_id = await api.run(resource_id=HOST)
    status, info = await api.call("GET", f"/api/job/job_info/{job_id}")
    assert status == 200 and info["state"] == "pending" and info["resource_id"] is None


async def test_job_info_errors(api: Api) -> None:
    assert (await api.call("GET", "/api/job/job_info/not-a-uuid"))[0] == 400
    assert (await api.call("GET", f"/api/job/job_info/{uuid.uuid4()}"))[0] == 404
    admins = await api.run(user="admin")
    status, error = await api.call("GET", f"/api/job/job_info/{admins}")
    assert status == 403 and "another user" in error["error"]
    steves = await api.run()
    assert (await api.call("GET", f"/api/job/job_info/{steves}", user="admin"))[0] == 200


async def test_cancel_and_delete(api: Api) -> None:
    job_id = await api.run()
    assert await api.call("POST", "/api/job/cancel", json={"job_id": job_id}) == (200, {"job_id": job_id})
    assert (await api.call("GET", f"/api/job/job_info/{job_id}"))[1]["state"] == "cancelled"
    status, error = await api.call("POST", "/api/job/cancel", json={"job_id": job_id})
    assert status == 409 and "already finished" in error["error"]
    assert await api.call("DELETE", "/api/job/delete", json={"job_id": job_id}) == (200, {"job_id": job_id})
    status, error = await api.call("GET", f"/api/job/job_info/{job_id}")
    assert status == 410 and "gone" in error["error"]
    assert (await api.call("DELETE", "/api/job/delete", json={"job_id": job_id}))[0] == 410
    assert (await api.call("POST", "/api/job/cancel", json={"job_id": job_id}))[0] == 410
    other = await api.run()
    assert (await api.call("DELETE", "/api/job/cancel", data=f'{{"job_id": "{other}",}}'))[
        0
    ] == 200  # the seed's sample
    assert (await api.call("POST", "/api/job/cancel", json={"job_id": str(uuid.uuid4())}))[0] == 404
    assert (await api.call("POST", "/api/job/cancel", json={"job_id": "bad"}))[0] == 400
    assert (await api.call("POST", "/api/job/cancel", json={}))[0] == 400
    admins = await api.run(user="admin")
    assert (await api.call("POST", "/api/job/cancel", json={"job_id": admins}))[0] == 403
    assert (await api.call("DELETE", "/api/job/delete", json={"job_id": admins}))[0] == 403


async def test_a_job_past_its_ttl_is_410(api: Api) -> None:
    job_id = await api.run(ttl=1)
    time.sleep(1.05)
    status, error = await api.call("GET", f"/api/job/job_info/{job_id}")
    assert status == 410 and "ttl" in error["error"]


async def test_list_jobs_filters_and_pages(api: Api) -> None:
    before = time.time()
    steves = [await api.run() for _ in range(5)]
    admins = await api.run(user="admin")
    await api.call("POST", "/api/job/cancel", json={"job_id": steves[0]})

    status, listed = await api.call("GET", "/api/list_jobs")
    assert status == 200 and listed["job_ids"] == steves[::-1]
    assert (await api.call("GET", "/api/job/list_jobs", user="admin"))[1]["job_ids"][0] == admins
    assert (await api.call("GET", "/api/job/list_jobs?user=admin"))[0] == 403
    assert (await api.call("GET", "/api/job/list_jobs?user=steve", user="admin"))[1]["job_ids"] == steves[::-1]
    assert (await api.call("GET", "/api/job/list_jobs?state=cancelled"))[1]["job_ids"] == [steves[0]]
    assert (await api.call("GET", "/api/job/list_jobs?state=pending,cancelled"))[1]["job_ids"] == steves[::-1]
    assert (await api.call("GET", f"/api/job/list_jobs?since={before}&until={time.time()}"))[1]["job_ids"] == steves[
        ::-1
    ]
    assert (await api.call("GET", "/api/job/list_jobs?until=2000-01-01T00:00:00Z"))[1]["job_ids"] == []
    assert (await api.call("GET", f"/api/job/list_jobs?resource_id={HOST}"))[1]["job_ids"] == []

    pages, cursor = [], None
    while True:
        query = "/api/job/list_jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page = await api.call("GET", query)
        pages.extend(page["job_ids"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == steves[::-1]

    for bad in ("state=bogus", "limit=0", "limit=x", "since=yesterday", "cursor=garbage", "color=red", "resource_id=x"):
        status, error = await api.call("GET", f"/api/job/list_jobs?{bad}")
        assert status == 400 and "error" in error, bad


async def test_idempotency_key_returns_the_same_job(api: Api) -> None:
    headers = {"Idempotency-Key": "nightly-42"}
    first = await api.call("POST", "/api/job/run", json={"command": "true"}, headers=headers)
    again = await api.call("POST", "/api/job/run", json={"command": "true"}, headers=headers)
    assert first[0] == again[0] == 201 and first[1] == again[1]
    status, error = await api.call("POST", "/api/job/run", json={"command": "false"}, headers=headers)
    assert status == 409 and "Idempotency-Key" in error["error"]
    other_user = await api.call("POST", "/api/job/run", "admin", json={"command": "true"}, headers=headers)
    assert other_user[1] != first[1]


async def test_job_info_can_wait_for_the_end(api: Api) -> None:
    job_id = await api.run()

    async def cancel_soon() -> None:
        await asyncio.sleep(0.3)
        await api.call("POST", "/api/job/cancel", json={"job_id": job_id})

    started = time.monotonic()
    canceller = asyncio.create_task(cancel_soon())
    status, info = await api.call("GET", f"/api/job/job_info/{job_id}?wait=10")
    await canceller
    assert status == 200 and info["state"] == "cancelled"
    assert 0.3 <= time.monotonic() - started < 2
    other = await api.run()
    started = time.monotonic()
    status, info = await api.call("GET", f"/api/job/job_info/{other}?wait=0.2")
    assert status == 200 and info["state"] == "pending" and time.monotonic() - started >= 0.2
    assert (await api.call("GET", f"/api/job/job_info/{other}?wait=61"))[0] == 400
    assert (await api.call("GET", f"/api/job/job_info/{other}?wait=soon"))[0] == 400


async def test_every_route_is_in_the_openapi_document(api: Api) -> None:
    spec = await (await api.client.get("/openapi.json")).json()
    documented = {(path, method) for path, operations in spec["paths"].items() for method in operations}
    missing = []
    for route in api.client.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method in ("HEAD", "*") or path in ("/openapi.json",):
            continue
        path = re.sub(r"\{([^}:]+):[^}]+\}", r"{\1}", path)
        if (path, route.method.lower()) not in documented:
            missing.append(f"{route.method} {path}")
    assert missing == []


async def test_the_watcher_is_woken_by_job_changes_only_when_a_job_ends_or_goes() -> None:
    watcher = JobWatcher()

    def change(job_id: str, state: str, deleted: bool = False) -> Envelope:
        return Envelope(JobChanged(job_id=job_id, user="steve", state=state, at=1.0, deleted=deleted))

    with (
        watcher.watching("ends", ended) as ends,
        watcher.watching("deleted", ended) as deleted,
        watcher.watching("runs", ended) as runs,
        watcher.watching("runs", any_change) as known,
    ):
        for event in (change("ends", "running"), change("runs", "running"), change("deleted", "running")):
            await deliver(watcher.job_changed, event)
        assert not any(f.done() for f in (ends, deleted, runs)) and known.result().state == "running"
        await deliver(watcher.job_changed, change("ends", "succeeded"))
        await deliver(
            watcher.job_changed, change("deleted", "running", deleted=True)
        )  # cancel asked, the agent not heard
        assert ends.result().state == "succeeded" and deleted.result().deleted
        assert await until(runs, 0.05) is None
    assert watcher._waiters == {}  # nothing left behind by waits that ended


async def test_a_long_poll_is_answered_by_the_jobs_change_not_by_polling(api: Api) -> None:
    job_id = await api.run()
    started = time.monotonic()
    waiting = asyncio.create_task(api.call("GET", f"/api/job/job_info/{job_id}?wait=10"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await api.call("POST", "/api/job/cancel", json={"job_id": job_id})  # the job manager broadcasts the end
    status, info = await asyncio.wait_for(waiting, 5)
    assert status == 200 and info["state"] == "cancelled" and time.monotonic() - started < 5


async def test_a_job_not_stored_yet_is_waited_for_not_404(api: Api) -> None:
    job_id = uuid7()
    reading = asyncio.create_task(api.call("GET", f"/api/job/job_info/{job_id}"))
    await asyncio.sleep(0.2)
    assert not reading.done()  # minted moments ago: it may still be on its way to the job manager
    run = RunJob(job_id=job_id, user="steve", command="true")
    await api.client.app[BUS].publish(api.client.app[TOPOLOGY].commands, Envelope(run))
    status, info = await asyncio.wait_for(reading, 5)
    assert status == 200 and info["job_id"] == job_id
    status, _ = await api.call("GET", f"/api/job/job_info/{uuid7(time.time() - 60)}")
    assert status == 404  # an id minted long ago that is nowhere is not waited for
    status, _ = await api.call("GET", f"/api/job/job_info/{uuid.uuid4()}")
    assert status == 404


async def test_pinning_a_job_to_a_host_of_another_user_is_403(api: Api) -> None:
    api.tokens["bob"] = await create_token(await tokens_collection(api.store), user="bob", admin=False)
    status, created = await api.call("POST", "/api/resources", json={"hostname": "steves-box", "user": "steve"})
    assert status == 200, created
    status, body = await api.call("POST", "/api/job/run", "bob", json={"command": "id", "hostname": "steves-box"})
    assert status == 403 and "takes only its own user's jobs" in body["error"]
    for user in ("steve", "admin"):  # its user, and an admin, may
        status, _ = await api.call("POST", "/api/job/run", user, json={"command": "id", "hostname": "steves-box"})
        assert status == 201
    status, _ = await api.call("POST", "/api/job/run", "bob", json={"command": "id", "hostname": "worker"})
    assert status == 201  # the shared fleet takes anyone's
