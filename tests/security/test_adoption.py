"""Item 5: a joining agent adopts a registration of its hostname only by presenting that
registration's token; a hostname alone (alice's ``prod-db-7``, the admin's ``web-1``) grants nothing."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from services.agent.join import JoinCredentials, call_join
from services.security import new_token
from services.tokens import create_join_token, join_tokens_collection
from tests.security.stack import Secure, secure_fixture  # noqa: F401


def agent_made(hostname: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "hostname": hostname, "token": new_token()}


async def join(secure: Secure, body: dict[str, Any]) -> tuple[int, Any]:
    join_token = await create_join_token(join_tokens_collection(secure.store))
    response = await secure.client.post("/api/join", json=body, headers={"Authorization": f"Bearer {join_token}"})
    return response.status, await response.json()


async def register(secure: Secure, hostname: str, user: str) -> dict[str, str]:
    status, made = await secure.call("POST", "/api/resources", user, json={"hostname": hostname, "user": user})
    assert status in (200, 201), made
    return made


async def whoami(secure: Secure, token: str) -> int:
    return (await secure.client.get("/api/whoami", headers={"Authorization": f"Bearer {token}"})).status


async def test_a_users_registration_does_not_capture_a_later_join(secure: Secure) -> None:
    alices = await register(secure, "prod-db-7", "alice")
    status, error = await join(secure, agent_made("prod-db-7"))
    assert status == 409, error
    assert "registration-token" in error["error"] and "--hostname" in error["error"]
    _, view = await secure.call("GET", f"/api/resources/{alices['id']}", "admin")
    assert view["user"] == "alice" and view.get("joined") in (False, None)
    assert await whoami(secure, alices["token"]) == 200  # alice's registration is untouched


async def test_a_join_token_holder_cannot_take_over_the_admins_registration(secure: Secure) -> None:
    admins = await register(secure, "web-1", "admin")
    assert (await join(secure, agent_made("web-1")))[0] == 409
    someone_elses = await register(secure, "web-2", "steve")
    wrong_proof = {**agent_made("web-1"), "registration_token": someone_elses["token"]}
    assert (await join(secure, wrong_proof))[0] == 409
    assert await whoami(secure, admins["token"]) == 200


async def test_the_registrations_token_is_proof_enough_to_adopt(secure: Secure) -> None:
    admins = await register(secure, "web-1", "admin")
    body = {**agent_made("web-1"), "registration_token": admins["token"]}
    assert await join(secure, body) == (201, {"id": admins["id"]})
    assert await whoami(secure, admins["token"]) == 401  # the registration's token gave way to the agent's own
    _, view = await secure.call("GET", f"/api/resources/{admins['id']}", "admin")
    assert view["authorized"] is True and view["user"] == "admin"


async def test_a_new_hostname_still_joins_unauthorized_and_unowned(secure: Secure) -> None:
    body = agent_made("fresh-1")
    assert await join(secure, body) == (201, {"id": body["id"]})
    _, view = await secure.call("GET", f"/api/resources/{body['id']}", "admin")
    assert view["authorized"] is False and view["user"] == ""


async def test_the_agent_sends_the_registration_token_when_given_one(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    async def fake_join(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({"id": "adopted"}, status=201)

    app = web.Application()
    app.router.add_post("/api/join", fake_join)
    async with TestServer(app) as server:
        credentials = JoinCredentials(resource_id=str(uuid.uuid4()), token=new_token(), hostname="web-1")
        proof = new_token()
        assert await call_join(str(server.make_url("")), "join", credentials, proof) == "adopted"
        assert await call_join(str(server.make_url("")), "join", credentials) == "adopted"
    assert seen[0]["registration_token"] == proof and "registration_token" not in seen[1]
