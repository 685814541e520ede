"""``GET /api/events``: job and host changes as Server-Sent Events, from the broadcasts every gateway hears."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.envelope import Envelope
from broker.memory import MemoryBus
from broker.topology import Topology
from schemas.jobs import JobChanged
from schemas.registry import all_message_types
from schemas.resources import HostChanged, HostDeleted
from services.gateway.app import create_app
from services.gateway.context import BUS, TOPOLOGY
from services.gateway.events_api import EVENT_HUB, EventHub
from services.settings import Settings
from services.store.disk_blobs import DiskBlobStore
from services.store.sqlite import SqliteDocumentStore
from services.tokens import create_token, tokens_collection

JOB = "0190a0a0-0000-7000-8000-000000000001"
OTHER = "0190a0a0-0000-7000-8000-000000000002"


class Gateway:
    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens

    async def change(self, job_id: str, user: str, state: str, **fields: Any) -> None:
        app = self.client.app
        assert app is not None
        change = JobChanged(job_id=job_id, user=user, state=state, at=1.0, **fields)
        await app[BUS].publish(app[TOPOLOGY].events, Envelope(change))

    async def host(self, user: str, *, deleted: bool = False) -> None:
        app = self.client.app
        assert app is not None
        event: HostChanged | HostDeleted = HostDeleted(resource_id=OTHER)
        if not deleted:
            event = HostChanged(
                resource_id=OTHER, change="responding", at=1.0, version=2, user=user, authorized=True,
                joined=False, responding=True, verify_key="k", running_jobs=[JOB],
            )  # fmt: skip
        await app[BUS].publish(app[TOPOLOGY].events, Envelope(event))

    def stream(self, user: str, *, last_id: int | None = None, **query: str) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        return self.client.get("/api/events", headers=headers, params=query)


@pytest.fixture
async def gateway(tmp_path) -> AsyncIterator[Gateway]:
    settings = Settings(data_dir=tmp_path, request_timeout=2.0)
    store = await SqliteDocumentStore.open(tmp_path / "events.db")
    topology = Topology("events")
    bus = MemoryBus(all_message_types(), topology)
    await bus.start()
    tokens = await tokens_collection(store)
    users = {
        "admin": await create_token(tokens, user="admin", admin=True),
        "steve": await create_token(tokens, user="steve", admin=False),
        "ann": await create_token(tokens, user="ann", admin=False),
    }
    app = await create_app(settings, bus, store, topology, blobs=DiskBlobStore(tmp_path / "blobs"))
    client = TestClient(TestServer(app))
    await client.start_server()
    yield Gateway(client, users)
    await client.close()
    await bus.close()
    await store.close()


async def read_events(response: aiohttp.ClientResponse, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The next ``count`` events of a stream, each as its fields (``data`` decoded); comments skipped."""
    events: list[dict[str, Any]] = []
    fields: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while len(events) < count:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line == "":
                if "data" in fields:
                    fields["data"] = json.loads(fields["data"])
                    events.append(fields)
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return events


async def test_a_jobs_changes_arrive_in_order(gateway: Gateway) -> None:
    async with gateway.stream("steve") as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        for state in ("pending", "staging", "accepted", "running"):
            await gateway.change(JOB, "steve", state)
        await gateway.change(JOB, "steve", "succeeded", exit_code=0, answer_id=OTHER)
        events = await read_events(response, 5)
    assert [e["data"]["state"] for e in events] == ["pending", "staging", "accepted", "running", "succeeded"]
    assert {e["event"] for e in events} == {"job"} and events[-1]["data"]["answer_id"] == OTHER
    ids = [int(e["id"]) for e in events]
    assert ids == list(range(ids[0], ids[0] + 5))


async def test_a_user_sees_only_their_own_jobs_and_an_admin_all(gateway: Gateway) -> None:
    async with gateway.stream("steve") as steve, gateway.stream("admin") as admin:
        await gateway.change(OTHER, "ann", "running")
        await gateway.change(JOB, "steve", "running")
        mine = await read_events(steve, 1)
        everyone = await read_events(admin, 2)
    assert [e["data"]["job_id"] for e in mine] == [JOB]
    assert [e["data"]["job_id"] for e in everyone] == [OTHER, JOB]


async def test_last_event_id_replays_what_was_missed(gateway: Gateway) -> None:
    async with gateway.stream("steve") as response:
        await gateway.change(JOB, "steve", "pending")
        (seen,) = await read_events(response, 1)
    await gateway.change(JOB, "steve", "running")
    await gateway.change(OTHER, "ann", "running")
    await gateway.change(JOB, "steve", "cancelled", deleted=True)
    async with gateway.stream("steve", last_id=int(seen["id"])) as response:
        missed = await read_events(response, 2)
        await gateway.change(JOB, "steve", "cancelled")
        (live,) = await read_events(response, 1)
    assert [e["data"]["state"] for e in missed] == ["running", "cancelled"] and missed[1]["data"]["deleted"]
    assert int(live["id"]) > int(missed[-1]["id"]) > int(seen["id"])


async def test_an_id_no_longer_kept_resets_the_client(gateway: Gateway) -> None:
    app = gateway.client.app
    assert app is not None
    hub = app[EVENT_HUB]
    async with gateway.stream("steve", last_id=hub.publish("job", "steve", {}).id - 5) as response:
        (reset,) = await read_events(response, 1)
    assert reset["event"] == "reset"


async def test_the_token_may_come_in_the_query_and_topics_are_checked(gateway: Gateway) -> None:
    client = gateway.client
    async with client.get("/api/events", params={"token": gateway.tokens["ann"], "topic": "job"}) as response:
        assert response.status == 200
        await gateway.change(OTHER, "ann", "running")
        assert (await read_events(response, 1))[0]["data"]["user"] == "ann"
    async with client.get("/api/events", params={"token": "wrong"}) as response:
        assert response.status == 401
    async with client.get("/api/job/job_info/" + JOB, params={"token": gateway.tokens["ann"]}) as response:
        assert response.status == 401  # only the event stream takes a token in its URL
    async with gateway.stream("ann", topic="job,weather") as response:
        assert response.status == 400 and "weather" in (await response.json())["error"]


async def test_host_changes_reach_their_owner_and_admins(gateway: Gateway) -> None:
    async with (
        gateway.stream("steve", topic="host") as steve,
        gateway.stream("admin") as admin,
        gateway.stream("ann", topic="host,job") as ann,
    ):
        await gateway.host("steve")
        await gateway.host("steve", deleted=True)
        await gateway.change(JOB, "ann", "running")
        (mine,) = await read_events(steve, 1)
        everything = await read_events(admin, 3)
        (job,) = await read_events(ann, 1)
    assert mine["event"] == "host" and mine["data"]["responding"] and "running_jobs" not in mine["data"]
    assert [e["event"] for e in everything] == ["host", "host", "job"] and everything[1]["data"]["deleted"]
    assert job["event"] == "job"


def test_the_window_is_bounded_and_a_slow_listener_is_let_go() -> None:
    hub = EventHub(first_id=1, window=3)
    with hub.listening(None) as (listener, missed, gap):
        assert missed == [] and not gap
        for n in range(1_001):
            hub.publish("job", "steve", {"n": n})
        assert listener.queue.qsize() == 1_001 and hub._listeners == set()
    assert [e.id for e in hub.missed(998)[0]] == [999, 1000, 1001] and not hub.missed(998)[1]
    assert hub.missed(5)[1] and hub.missed(2_000)[1]


async def test_a_stream_whose_client_went_away_is_let_go(gateway: Gateway) -> None:
    app = gateway.client.app
    assert app is not None
    hub = app[EVENT_HUB]
    async with gateway.stream("steve") as response:
        await gateway.change(JOB, "steve", "pending")
        await read_events(response, 1)
        assert len(hub._listeners) == 1
    async with asyncio.timeout(5):
        while hub._listeners:  # the next write finds the connection closed
            await gateway.change(JOB, "steve", "running")
            await asyncio.sleep(0.05)
