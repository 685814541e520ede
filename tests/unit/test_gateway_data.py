"""``/api/data`` through the gateway: upload, download, info, delete; owners, admins and agents."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime

import aiohttp

from broker.envelope import Envelope
from schemas.base import Accepted
from schemas.content import GrantData
from tests.content_stack import (
    LIMIT,
    ContentStack,
    bearer,
    content_stack_fixture,  # noqa: F401
    info_for,
)


async def upload(stack: ContentStack, data: bytes = b"input", *, headers=None, **params: str) -> str:
    response = await stack.client.post("/api/data", data=data, params=params, headers=headers or stack.steve)
    assert response.status == 201, await response.text()
    body = await response.json()
    assert set(body) == {"id"}
    return str(uuid.UUID(body["id"]))


async def test_raw_upload_roundtrips(content_stack: ContentStack) -> None:
    data = bytes(range(256)) * 1000
    item_id = await upload(content_stack, data, name="in.bin")
    response = await content_stack.client.get(f"/api/data/{item_id}", headers=content_stack.steve)
    assert response.status == 200 and await response.read() == data
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Length"] == str(len(data))
    head = await content_stack.client.head(f"/api/data/{item_id}", headers=content_stack.steve)
    assert head.status == 200 and head.headers["Content-Length"] == str(len(data)) and await head.read() == b""


async def test_info_describes_the_item(content_stack: ContentStack) -> None:
    item_id = await upload(content_stack, b"hello", name="hello.txt")
    response = await content_stack.client.get(f"/api/data/{item_id}/info", headers=content_stack.steve)
    assert response.status == 200
    info = await response.json()
    created = info.pop("created_at")
    updated = info.pop("updated_at")
    assert datetime.fromisoformat(created) == datetime.fromisoformat(updated)
    assert info == {
        "id": item_id,
        "kind": "data",
        "name": "hello.txt",
        "path": None,
        "size": 5,
        "sha256": hashlib.sha256(b"hello").hexdigest(),
        "owner": "steve",
        "granted_to": [],
    }


async def test_multipart_upload_takes_its_name_from_a_field_or_the_file_name(content_stack: ContentStack) -> None:
    form = aiohttp.FormData()
    form.add_field("name", "named.txt")
    form.add_field("file", b"one", filename="ignored.txt")
    response = await content_stack.client.post("/api/data", data=form, headers=content_stack.steve)
    assert response.status == 201
    named = (await response.json())["id"]
    form = aiohttp.FormData()
    form.add_field("upload", b"two", filename="from-file.txt")
    response = await content_stack.client.post("/api/data", data=form, headers=content_stack.steve)
    assert response.status == 201
    from_file = (await response.json())["id"]
    for item_id, name, data in ((named, "named.txt", b"one"), (from_file, "from-file.txt", b"two")):
        info = await (await content_stack.client.get(f"/api/data/{item_id}/info", headers=content_stack.steve)).json()
        assert info["name"] == name
        body = await (await content_stack.client.get(f"/api/data/{item_id}", headers=content_stack.steve)).read()
        assert body == data


async def test_a_client_file_name_cannot_climb_out_of_a_job_directory(content_stack: ContentStack) -> None:
    form = aiohttp.FormData()
    form.add_field("file", b"x", filename="../../.ssh/authorized_keys")
    response = await content_stack.client.post("/api/data", data=form, headers=content_stack.steve)
    item_id = (await response.json())["id"]
    info = await (await content_stack.client.get(f"/api/data/{item_id}/info", headers=content_stack.steve)).json()
    assert info["name"] == "authorized_keys"
    resource = await content_stack.post(info_for("r.sh"), b"x", filename="../up.sh")
    document = await content_stack.manager.contents.get(resource.headers["X-Skybus-Id"])
    assert document is not None and document["name"] == "up.sh"


async def test_delete_then_it_is_gone(content_stack: ContentStack) -> None:
    item_id = await upload(content_stack)
    response = await content_stack.client.delete(f"/api/data/{item_id}", headers=content_stack.steve)
    assert response.status == 200 and await response.json() == {"id": item_id}
    assert await content_stack.blob_ids() == []
    for method, path in (("GET", item_id), ("GET", f"{item_id}/info"), ("DELETE", item_id)):
        response = await content_stack.client.request(method, f"/api/data/{path}", headers=content_stack.steve)
        assert response.status == 404 and await response.json() == {"error": f"data {item_id} not found"}


async def test_malformed_ids_are_400(content_stack: ContentStack) -> None:
    for method, path in (("GET", "nope"), ("GET", "nope/info"), ("DELETE", "nope")):
        response = await content_stack.client.request(method, f"/api/data/{path}", headers=content_stack.steve)
        assert response.status == 400
        assert await response.json() == {"error": "malformed data id 'nope': expected a UUID"}


async def test_only_the_owner_or_an_admin(content_stack: ContentStack) -> None:
    item_id = await upload(content_stack)
    for method, path in (("GET", item_id), ("GET", f"{item_id}/info"), ("DELETE", item_id)):
        response = await content_stack.client.request(method, f"/api/data/{path}", headers=content_stack.alice)
        assert response.status == 403
        assert await response.json() == {"error": f"data {item_id} belongs to another user"}
    assert (await content_stack.client.get(f"/api/data/{item_id}", headers=content_stack.admin)).status == 200
    assert (await content_stack.client.delete(f"/api/data/{item_id}", headers=content_stack.admin)).status == 200


async def test_upload_errors(content_stack: ContentStack) -> None:
    too_big = await content_stack.client.post("/api/data", data=b"x" * (LIMIT + 1), headers=content_stack.steve)
    assert too_big.status == 413
    assert await too_big.json() == {"error": f"The upload is larger than the limit of {LIMIT} bytes."}
    bad_name = await content_stack.client.post(
        "/api/data", data=b"x", params={"name": "../etc/passwd"}, headers=content_stack.steve
    )
    assert bad_name.status == 400 and "plain file name" in (await bad_name.json())["error"]
    no_file = aiohttp.FormData(default_to_multipart=True)
    no_file.add_field("name", "x.txt")
    response = await content_stack.client.post("/api/data", data=no_file, headers=content_stack.steve)
    assert response.status == 400 and "no file" in (await response.json())["error"]
    assert (await content_stack.client.post("/api/data", data=b"x")).status == 401
    assert await content_stack.blob_ids() == []


async def test_a_seed_004_resource_is_data_too(content_stack: ContentStack) -> None:
    response = await content_stack.post(info_for("apps/bin/tool"), b"#!/bin/sh\necho hi\n")
    item_id = response.headers["X-Skybus-Id"]
    body = await (await content_stack.client.get(f"/api/data/{item_id}", headers=content_stack.steve)).read()
    assert body == b"#!/bin/sh\necho hi\n"
    info = await (await content_stack.client.get(f"/api/data/{item_id}/info", headers=content_stack.steve)).json()
    assert info["kind"] == "resource" and info["path"] == "apps/bin/tool" and info["name"] == "add.wl"


async def register_host(stack: ContentStack, hostname: str = "worker-1") -> tuple[str, dict[str, str]]:
    response = await stack.client.post(
        "/api/resources", json={"hostname": hostname, "user": "steve"}, headers=stack.steve
    )
    assert response.status == 200
    created = await response.json()
    return created["id"], bearer(created["token"])


async def grant(stack: ContentStack, item_ids: list[str], resource_id: str) -> None:
    command = GrantData(item_ids=tuple(item_ids), resource_id=resource_id, owner="steve")
    reply = await stack.bus.request(stack.topology.commands, Envelope(command), timeout=2.0)
    assert reply.payload == Accepted()


async def test_an_agent_reads_only_what_was_granted_to_its_host(content_stack: ContentStack) -> None:
    item_id = await upload(content_stack, b"job input")
    resource_id, agent = await register_host(content_stack)
    _, other_agent = await register_host(content_stack, "worker-2")
    denied = await content_stack.client.get(f"/api/data/{item_id}", headers=agent)
    assert denied.status == 403 and await denied.json() == {"error": f"data {item_id} belongs to another user"}
    await grant(content_stack, [item_id], resource_id)
    response = await content_stack.client.get(f"/api/data/{item_id}", headers=agent)
    assert response.status == 200 and await response.read() == b"job input"
    info = await (await content_stack.client.get(f"/api/data/{item_id}/info", headers=agent)).json()
    assert info["granted_to"] == [resource_id]
    assert (await content_stack.client.get(f"/api/data/{item_id}", headers=other_agent)).status == 403
    assert (await content_stack.client.delete(f"/api/data/{item_id}", headers=agent)).status == 403


async def test_an_agent_uploads_for_a_job_it_runs_on_behalf_of_the_jobs_user(content_stack: ContentStack) -> None:
    resource_id, agent = await register_host(content_stack)
    jobs = content_stack.store.collection("jobs")
    await jobs.insert({"id": "mine", "user": "steve", "resource_id": resource_id})
    await jobs.insert({"id": "theirs", "user": "alice", "resource_id": "another-host"})
    answer = await upload(content_stack, b'{"stdout": "hi"}', headers=agent, name="answer.json", job_id="mine")
    info = await (await content_stack.client.get(f"/api/data/{answer}/info", headers=agent)).json()
    assert info["owner"] == "steve" and info["granted_to"] == [resource_id]
    assert (await content_stack.client.get(f"/api/data/{answer}", headers=content_stack.steve)).status == 200
    assert (await content_stack.client.get(f"/api/data/{answer}", headers=content_stack.alice)).status == 403
    for job_id in ("theirs", "unknown"):
        response = await content_stack.client.post(
            "/api/data", params={"name": "x", "job_id": job_id}, data=b"x", headers=agent
        )
        assert response.status == 403 and "does not run job" in (await response.json())["error"]


async def test_an_agent_uploads_what_it_then_owns(content_stack: ContentStack) -> None:
    resource_id, agent = await register_host(content_stack)
    answer = await upload(content_stack, b'{"stdout": "hi"}', headers=agent, name="answer.json")
    info = await (await content_stack.client.get(f"/api/data/{answer}/info", headers=agent)).json()
    assert info["owner"] == f"agent:{resource_id}" and info["granted_to"] == [resource_id]
    assert (await content_stack.client.get(f"/api/data/{answer}", headers=agent)).status == 200
    assert (await content_stack.client.get(f"/api/data/{answer}", headers=content_stack.steve)).status == 403
    assert (await content_stack.client.get(f"/api/data/{answer}", headers=content_stack.admin)).status == 200


async def test_an_agent_token_is_good_for_api_data_only(content_stack: ContentStack) -> None:
    resource_id, agent = await register_host(content_stack)
    response = await content_stack.client.get(f"/api/resources/{resource_id}", headers=agent)
    only = "an agent token may only use /api/data, /api/whoami"
    assert response.status == 403 and await response.json() == {"error": only}
    seed_004 = await content_stack.client.get("/resources", headers=agent)
    assert seed_004.status == 403 and (await seed_004.json())[0]["message"] == only
    assert (await content_stack.client.get("/api/dataset", headers=agent)).status == 403
    # A deleted host's token is no token at all.
    assert (
        await content_stack.client.delete(f"/api/resources/{resource_id}", headers=content_stack.steve)
    ).status == 200
    gone = await content_stack.client.get(f"/api/data/{uuid.uuid4()}", headers=agent)
    assert gone.status == 401 and await gone.json() == {"error": "invalid token"}
