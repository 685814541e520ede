"""Seed 000 through the gateway: every endpoint and error, on the in-process bus and SQLite."""

from __future__ import annotations

import uuid

import pytest

from services.gateway.context import BUS
from tests.resource_stack import Stack, stack_fixture  # noqa: F401


async def create(stack: Stack, hostname: str = "my first one", user: str = "steve", **kwargs):
    return await stack.client.post(
        "/api/resources", json={"hostname": hostname, "user": user}, headers=stack.steve, **kwargs
    )


async def test_create_returns_id_and_token(stack: Stack) -> None:
    response = await create(stack)
    assert response.status == 200
    body = await response.json()
    assert set(body) == {"id", "token"}
    uuid.UUID(body["id"]), uuid.UUID(body["token"])


async def test_create_accepts_the_seed_sample_form_content_type(stack: Stack) -> None:
    # curl --data '{...}' sends application/x-www-form-urlencoded with a JSON body.
    response = await stack.client.post(
        "/api/resources",
        data='{\n    "hostname": "my first one",\n    "user": "steve"\n}',
        headers={**stack.steve, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 200, await response.text()


async def test_create_accepts_form_fields(stack: Stack) -> None:
    response = await stack.client.post(
        "/api/resources", data={"hostname": "formhost", "user": "steve"}, headers=stack.steve
    )
    assert response.status == 200, await response.text()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"user": "steve"}, "hostname: Field required"),
        ({"hostname": "h"}, "user: Field required"),
        ({"hostname": 5, "user": "steve"}, "hostname: Input should be a valid string"),
        ({"hostname": "h", "user": ["steve"]}, "user: Input should be a valid string"),
        ({"hostname": "", "user": "steve"}, "hostname: String should have at least 1 character"),
        ({"hostname": "   ", "user": "steve"}, "hostname must not be blank"),
        ({"hostname": "x" * 254, "user": "steve"}, "hostname: String should have at most 253 characters"),
        ({"hostname": "h", "user": "steve", "color": "red"}, "color: Extra inputs are not permitted"),
    ],
)
async def test_create_rejects_bad_fields_with_400(stack: Stack, body: dict, fragment: str) -> None:
    response = await stack.client.post("/api/resources", json=body, headers=stack.steve)
    assert response.status == 400
    error = await response.json()
    assert set(error) == {"error"} and fragment in error["error"]
    assert await stack.manager.manager.resources.count() == 0


async def test_hostname_of_253_characters_is_fine(stack: Stack) -> None:
    assert (await create(stack, "x" * 253)).status == 200


async def test_invalid_json_says_where_it_broke(stack: Stack) -> None:
    response = await stack.client.post("/api/resources", data='{"hostname": "h",\n "user": }', headers=stack.steve)
    assert response.status == 400
    assert (await response.json())["error"].startswith("invalid JSON at line 2 column")


async def test_duplicate_hostname_is_400(stack: Stack) -> None:
    assert (await create(stack)).status == 200
    response = await create(stack)
    assert response.status == 400
    assert "already registered" in (await response.json())["error"]


async def test_get_shows_the_resource_without_secrets(stack: Stack) -> None:
    created = await (await create(stack)).json()
    response = await stack.client.get(f"/api/resources/{created['id']}", headers=stack.steve)
    assert response.status == 200
    body = await response.json()
    assert body["id"] == created["id"] and body["hostname"] == "my first one" and body["user"] == "steve"
    assert body["state"] == "inactive" and body["responding"] is False and body["last_response_time"] is None
    assert created["token"] not in str(body) and "token_hash" not in body and "verify_key" not in body


async def test_get_unknown_is_404_and_malformed_is_400(stack: Stack) -> None:
    missing = await stack.client.get(f"/api/resources/{uuid.uuid4()}", headers=stack.steve)
    assert missing.status == 404 and "not found" in (await missing.json())["error"]
    malformed = await stack.client.get("/api/resources/not-a-uuid", headers=stack.steve)
    assert malformed.status == 400 and "malformed" in (await malformed.json())["error"]


async def test_delete_then_get_and_delete_again(stack: Stack) -> None:
    created = await (await create(stack)).json()
    deleted = await stack.client.delete(f"/api/resources/{created['id']}", headers=stack.steve)
    assert deleted.status == 200 and (await deleted.json()) == {"id": created["id"]}
    assert (await stack.client.get(f"/api/resources/{created['id']}", headers=stack.steve)).status == 404
    again = await stack.client.delete(f"/api/resources/{created['id']}", headers=stack.steve)
    assert again.status == 404 and "error" in await again.json()
    assert (await stack.client.delete("/api/resources/nope", headers=stack.steve)).status == 400


async def test_find_by_hostname(stack: Stack) -> None:
    created = await (await create(stack)).json()
    found = await stack.client.get("/api/resources/", params={"hostname": "my first one"}, headers=stack.steve)
    assert found.status == 200 and (await found.json()) == {"id": created["id"]}
    no_slash = await stack.client.get("/api/resources?hostname=my%20first%20one", headers=stack.steve)
    assert no_slash.status == 200 and (await no_slash.json()) == {"id": created["id"]}
    missing = await stack.client.get("/api/resources/", params={"hostname": "nobody"}, headers=stack.steve)
    assert missing.status == 404 and "error" in await missing.json()
    listed = await stack.client.get("/api/resources/", headers=stack.steve)  # no hostname: a listing
    assert listed.status == 200 and [r["id"] for r in await listed.json()] == [created["id"]]


async def test_tokens_are_required_and_checked(stack: Stack) -> None:
    assert (await stack.client.post("/api/resources", json={"hostname": "h", "user": "steve"})).status == 401
    bad = await stack.client.get("/api/resources/?hostname=h", headers={"Authorization": "Bearer nope"})
    assert bad.status == 401 and (await bad.json()) == {"error": "invalid token"}
    assert (await stack.client.get("/health")).status == 200


async def test_users_see_only_their_own_resources(stack: Stack) -> None:
    response = await stack.client.post("/api/resources", json={"hostname": "adm", "user": "admin"}, headers=stack.admin)
    admins = await response.json()
    assert (await stack.client.get(f"/api/resources/{admins['id']}", headers=stack.steve)).status == 403
    assert (await stack.client.delete(f"/api/resources/{admins['id']}", headers=stack.steve)).status == 403
    assert (await stack.client.get("/api/resources/?hostname=adm", headers=stack.steve)).status == 404
    assert (await create(stack, "h2", user="admin")).status == 403
    steves = await (await create(stack)).json()
    assert (await stack.client.get(f"/api/resources/{steves['id']}", headers=stack.admin)).status == 200


async def test_manager_not_consuming_is_504(stack: Stack) -> None:
    await stack.manager.stop()
    response = await create(stack)
    assert response.status == 504
    assert "no answer in time" in (await response.json())["error"]


async def test_unknown_route_is_json_404(stack: Stack) -> None:
    response = await stack.client.get("/api/nothing-here", headers=stack.steve)
    assert response.status == 404 and "error" in await response.json()


async def test_openapi_lists_seed_000(stack: Stack) -> None:
    spec = await (await stack.client.get("/openapi.json")).json()
    assert {"post", "get"} <= set(spec["paths"]["/api/resources"])
    assert {"get", "delete"} <= set(spec["paths"]["/api/resources/{resource_id}"])
    assert "CreateResourceBody" in spec["components"]["schemas"]


async def test_bus_unreachable_is_503_with_a_clear_error(stack: Stack) -> None:
    await stack.client.app[BUS].close()
    response = await create(stack)
    assert response.status == 503
    assert (await response.json())["error"].startswith("service unavailable, try again shortly")


async def test_whoami_names_the_user_or_the_agent_behind_a_token(stack: Stack) -> None:
    created = await (await create(stack)).json()
    agent = {"Authorization": f"Bearer {created['token']}"}
    me = await stack.client.get("/api/whoami", headers=agent)
    assert me.status == 200
    assert await me.json() == {"user": f"agent:{created['id']}", "admin": False, "resource_id": created["id"]}
    steve = await (await stack.client.get("/api/whoami", headers=stack.steve)).json()
    assert steve == {"user": "steve", "admin": False, "resource_id": None}
    assert (await stack.client.get("/api/whoami", headers={"Authorization": "Bearer nope"})).status == 401


async def test_a_users_token_is_looked_up_once_in_a_while_not_on_every_call(stack: Stack, monkeypatch) -> None:
    from services.gateway import auth
    from services.gateway.context import TOKENS

    tokens = stack.client.server.app[TOKENS]
    reads = 0
    get = tokens.get

    async def counting_get(document_id: str):
        nonlocal reads
        reads += 1
        return await get(document_id)

    monkeypatch.setattr(tokens, "get", counting_get)
    for _ in range(5):
        assert (await stack.client.get("/api/whoami", headers=stack.steve)).status == 200
    assert reads == 1
    monkeypatch.setattr(auth, "REMEMBER_SECONDS", 0.0)
    stack.client.server.app[auth.REMEMBERED].clear()
    for _ in range(2):
        assert (await stack.client.get("/api/whoami", headers=stack.steve)).status == 200
    assert reads == 3


async def test_listing_shows_a_user_their_resources_and_an_admin_all(stack: Stack) -> None:
    mine = await (await create(stack, "steve-1")).json()
    theirs = await (
        await stack.client.post("/api/resources", json={"hostname": "a-1", "user": "admin"}, headers=stack.admin)
    ).json()
    steve = await (await stack.client.get("/api/resources", headers=stack.steve)).json()
    assert [(r["id"], r["hostname"], r["user"]) for r in steve] == [(mine["id"], "steve-1", "steve")]
    assert {"state", "responding", "authorized", "info", "created_at"} <= set(steve[0])
    admin = await (await stack.client.get("/api/resources", headers=stack.admin)).json()
    assert {r["id"] for r in admin} >= {mine["id"], theirs["id"]}
