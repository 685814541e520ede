"""``POST /api/join``: every error code, idempotency, adoption, and what a joined host may do."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from broker.envelope import Envelope
from schemas.base import Accepted
from schemas.resources import AuthorizeResource
from services.gateway.context import BUS, TOPOLOGY
from services.security import hash_token, new_token, verify_key
from tests.resource_stack import Stack, stack_fixture  # noqa: F401


def agent_made(hostname: str = "joiner-1") -> dict[str, str]:
    return {"id": str(uuid.uuid4()), "hostname": hostname, "token": new_token()}


async def join(stack: Stack, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    response = await stack.client.post("/api/join", json=body, headers=stack.joiner if headers is None else headers)
    return response.status, await response.json()


async def resource(stack: Stack, resource_id: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    response = await stack.client.get(f"/api/resources/{resource_id}", headers=headers or stack.admin)
    return response.status, await response.json()


async def register_for_steve(stack: Stack, hostname: str) -> dict[str, str]:
    """``POST /api/resources``, the way an admin or a user registers a host before its agent comes."""
    body = {"hostname": hostname, "user": "steve"}
    response = await stack.client.post("/api/resources", json=body, headers=stack.steve)
    return await response.json()


async def whoami(stack: Stack, token: str) -> int:
    return (await stack.client.get("/api/whoami", headers={"Authorization": f"Bearer {token}"})).status


async def test_a_joined_host_is_unauthorized_owned_by_nobody_and_seen_only_by_admins(stack: Stack) -> None:
    body = agent_made()
    assert await join(stack, body) == (201, {"id": body["id"]})
    status, view = await resource(stack, body["id"])
    assert status == 200 and view["authorized"] is False and view["user"] == "" and view["hostname"] == "joiner-1"
    assert view["responding"] is False and view["last_response_time"] is None
    assert (await resource(stack, body["id"], stack.steve))[0] == 403
    found = await stack.client.get("/api/resources", params={"hostname": "joiner-1"}, headers=stack.steve)
    assert found.status == 404
    found = await stack.client.get("/api/resources", params={"hostname": "joiner-1"}, headers=stack.admin)
    assert found.status == 200 and await found.json() == {"id": body["id"]}


async def test_only_the_tokens_hash_and_verify_key_are_stored(stack: Stack) -> None:
    body = agent_made()
    await join(stack, body)
    stored = await stack.manager.manager.resources.get(body["id"])
    assert stored["token_hash"] == hash_token(body["token"]) and stored["verify_key"] == verify_key(body["token"])
    assert body["token"] not in str(stored)


async def test_joining_again_with_the_same_credentials_is_the_same_host(stack: Stack) -> None:
    body = agent_made()
    assert await join(stack, body) == (201, {"id": body["id"]})
    assert await join(stack, body) == (201, {"id": body["id"]})
    assert await stack.manager.manager.resources.count() == 1


@pytest.mark.parametrize("change", ["another id", "another token", "another hostname, same id"])
async def test_a_clash_is_409(stack: Stack, change: str) -> None:
    first = agent_made()
    await join(stack, first)
    second = dict(first)
    if change == "another id":
        second.update(id=str(uuid.uuid4()), token=new_token())
    elif change == "another token":
        second.update(token=new_token())
    else:
        second.update(hostname="joiner-2", token=new_token())
    status, error = await join(stack, second)
    assert status == 409 and set(error) == {"error"}
    assert await stack.manager.manager.resources.count() == 1


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"id": None}, "id: Field required"),
        ({"id": "not-a-uuid"}, "id: Value error, must be a UUID"),
        ({"token": None}, "token: Field required"),
        ({"token": 5}, "token: Input should be a valid string"),
        ({"token": "short"}, "token: Value error, must be a UUID"),
        ({"token": "B5D1A9F0-6B1C-4C55-8E0A-3D1B4C9E7F21"}, "token: Value error, must be a UUID written as"),
        ({"hostname": None}, "hostname: Field required"),
        ({"hostname": "  "}, "hostname must not be blank"),
        ({"hostname": "a\nb"}, "hostname must not contain control characters"),
        ({"user": "steve"}, "user: Extra inputs are not permitted"),
    ],
)
async def test_a_bad_body_is_400(stack: Stack, change: dict[str, Any], fragment: str) -> None:
    body = {**agent_made(), **change}
    body = {key: value for key, value in body.items() if value is not None}
    status, error = await join(stack, body)
    assert status == 400 and set(error) == {"error"} and fragment in error["error"], error
    assert await stack.manager.manager.resources.count() == 0


async def test_a_body_that_is_no_json_object_is_400(stack: Stack) -> None:
    response = await stack.client.post("/api/join", data="[1, 2]", headers=stack.joiner)
    assert response.status == 400 and "JSON object" in (await response.json())["error"]


@pytest.mark.parametrize("bearer", ["none", "unknown", "a user's", "an admin's"])
async def test_join_needs_a_join_token(stack: Stack, bearer: str) -> None:
    headers = {
        "none": {},
        "unknown": {"Authorization": f"Bearer {new_token()}"},
        "a user's": stack.steve,
        "an admin's": stack.admin,
    }[bearer]
    status, error = await join(stack, agent_made(), headers)
    assert status == 401 and set(error) == {"error"}
    assert await stack.manager.manager.resources.count() == 0


async def test_a_join_token_opens_no_other_door(stack: Stack) -> None:
    for path in ("/api/whoami", "/api/resources?hostname=x", f"/api/job/job_info/{uuid.uuid4()}"):
        response = await stack.client.get(path, headers=stack.joiner)
        assert response.status == 401, path


async def test_a_joined_hosts_token_works_on_rest_once_it_is_authorized(stack: Stack) -> None:
    body = agent_made()
    await join(stack, body)
    assert await whoami(stack, body["token"]) == 401
    app = stack.client.app
    reply = await app[BUS].request(app[TOPOLOGY].commands, Envelope(AuthorizeResource(resource_id=body["id"])))
    assert reply.payload == Accepted(id=body["id"])
    assert await whoami(stack, body["token"]) == 200
    assert (await resource(stack, body["id"]))[1]["authorized"] is True


async def test_joining_adopts_a_registration_no_agent_used(stack: Stack) -> None:
    admins = await register_for_steve(stack, "h1")
    body = {**agent_made("h1"), "registration_token": admins["token"]}
    assert await join(stack, body) == (201, {"id": admins["id"]})
    assert await join(stack, body) == (201, {"id": admins["id"]})  # an agent that crashed after the call
    status, view = await resource(stack, admins["id"], stack.steve)
    assert status == 200 and view["authorized"] is True and view["user"] == "steve"
    assert await stack.manager.manager.resources.count() == 1
    assert await whoami(stack, admins["token"]) == 401  # the admin's token no longer speaks for it
    me = await stack.client.get("/api/whoami", headers={"Authorization": f"Bearer {body['token']}"})
    assert (await me.json())["resource_id"] == admins["id"]
    assert (await join(stack, agent_made("h1")))[0] == 409  # adopted once


async def test_a_registration_an_agent_already_used_is_not_adopted(stack: Stack) -> None:
    admins = await register_for_steve(stack, "h1")
    await stack.manager.manager.resources.update(admins["id"], {"last_response_time": 1.0})  # it heartbeated
    status, error = await join(stack, {**agent_made("h1"), "registration_token": admins["token"]})
    assert status == 409 and "in use" in error["error"]
    assert await whoami(stack, admins["token"]) == 200


async def test_openapi_lists_join(stack: Stack) -> None:
    spec = await (await stack.client.get("/openapi.json")).json()
    assert "201" in spec["paths"]["/api/join"]["post"]["responses"]
    assert "JoinBody" in spec["components"]["schemas"]
