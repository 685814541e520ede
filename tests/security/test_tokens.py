"""Item 10: tokens can be listed, can expire and can be revoked, join tokens too; a revoked or
expired token is refused within the gateway's two-second memory of it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.cli import main
from services.gateway.auth import REMEMBER_SECONDS
from services.security import hash_token
from services.tokens import create_join_token, create_token, join_tokens_collection, tokens_collection
from tests.security.stack import Secure, secure_fixture  # noqa: F401

JOIN = {
    "id": "8e0c2b52-9a8f-4a52-8a86-2c9d1c1b0a11",
    "hostname": "new-box",
    "token": "5f1e0c4b-3b7a-4c1e-9d0e-7a2b9c8d1e2f",
}


async def status_of(secure: Secure, token: str, path: str = "/api/whoami") -> int:
    response = await secure.client.get(path, headers={"Authorization": f"Bearer {token}"})
    return response.status


async def test_an_admin_lists_tokens_by_id_and_never_sees_a_hash(secure: Secure) -> None:
    status, body = await secure.call("GET", "/api/tokens", "admin")
    assert status == 200, body
    assert {row["user"] for row in body["tokens"]} == {"admin", "steve", "alice"}
    assert set(body["tokens"][0]) == {"id", "user", "admin", "join", "created_at", "expires_at", "expired"}
    text = str(body)
    for token in secure.tokens.values():
        assert token not in text and hash_token(token) not in text
    assert (await secure.call("GET", "/api/tokens", "steve"))[0] == 403
    assert (await secure.call("DELETE", "/api/tokens/whatever", "steve"))[0] == 403


async def test_a_revoked_token_is_refused_at_once_here(secure: Secure) -> None:
    status, made = await secure.call("POST", "/api/tokens", "admin", json={"user": "bob"})
    assert status == 201, made
    assert await status_of(secure, made["token"]) == 200  # now remembered
    status, revoked = await secure.call("DELETE", f"/api/tokens/{made['id']}", "admin")
    assert status == 200 and revoked["user"] == "bob", revoked
    assert await status_of(secure, made["token"]) == 401
    assert (await secure.call("DELETE", f"/api/tokens/{made['id']}", "admin"))[0] == 404


async def test_a_token_revoked_elsewhere_is_refused_within_two_seconds(secure: Secure, tmp_path: Path) -> None:
    token = await create_token(await tokens_collection(secure.store), user="bob", admin=False)
    assert await status_of(secure, token) == 200  # now remembered by the gateway
    data_dir = str(secure.settings.data_dir)
    listed = await asyncio.to_thread(CliRunner().invoke, main, ["token", "list", "--data-dir", data_dir])
    assert listed.exit_code == 0, listed.output
    (line,) = [line for line in listed.output.splitlines() if " bob " in line]
    token_id = line.split()[0]
    # the CLI revokes through the database, as from another machine: the gateway learns it by expiry
    revoked = await asyncio.to_thread(CliRunner().invoke, main, ["token", "revoke", token_id, "--data-dir", data_dir])
    assert revoked.exit_code == 0, revoked.output
    deadline = time.monotonic() + REMEMBER_SECONDS + 0.5
    while await status_of(secure, token) != 401:
        assert time.monotonic() < deadline, "a revoked token was still taken after the gateway's 2 s memory"
        await asyncio.sleep(0.1)


async def test_an_expired_token_is_refused(secure: Secure) -> None:
    tokens = await tokens_collection(secure.store)
    old = await create_token(tokens, user="bob", admin=False, expires_at=time.time() - 1)
    assert await status_of(secure, old) == 401
    soon = await create_token(tokens, user="bob", admin=False, expires_at=time.time() + 0.5)
    assert await status_of(secure, soon) == 200
    await asyncio.sleep(0.6)
    assert await status_of(secure, soon) == 401  # the gateway remembered it, but not past its expiry


async def test_post_tokens_takes_expires_in_and_expires_at(secure: Secure) -> None:
    status, made = await secure.call("POST", "/api/tokens", "admin", json={"user": "bob", "expires_in": "30d"})
    assert status == 201 and made["expires_at"], made
    status, body = await secure.call("POST", "/api/tokens", "admin", json={"user": "bob", "expires_in": "soon"})
    assert status == 400 and "expires_in" in body["error"]
    status, body = await secure.call("POST", "/api/tokens", "admin", json={"user": "bob", "expires_at": 1.0})
    assert status == 400 and "expires_at" in body["error"]


@pytest.mark.parametrize(
    "body",
    [
        {"join": True, "expires_at": 3.569768033284666e80},  # what schemathesis sent: a 500, the token stored
        {"user": "bob", "expires_at": "1e400"},
        {"user": "bob", "expires_in": "1e300w"},
    ],
)
async def test_an_expiry_beyond_any_date_is_a_400_naming_it_and_makes_no_token(secure: Secure, body: dict) -> None:
    before = (await secure.call("GET", "/api/tokens?join=true", "admin"))[1]["tokens"]
    status, answer = await secure.call("POST", "/api/tokens", "admin", json=body)
    field = "expires_in" if "expires_in" in body else "expires_at"
    assert status == 400 and answer["error"].startswith(field), answer
    assert (await secure.call("GET", "/api/tokens?join=true", "admin"))[1]["tokens"] == before


async def test_join_tokens_are_listed_expire_and_are_revoked(secure: Secure) -> None:
    join_tokens = join_tokens_collection(secure.store)
    expired = await create_join_token(join_tokens, expires_at=time.time() - 1)
    response = await secure.client.post("/api/join", json=JOIN, headers={"Authorization": f"Bearer {expired}"})
    assert response.status == 401
    status, made = await secure.call("POST", "/api/tokens", "admin", json={"join": True, "expires_in": "1h"})
    assert status == 201, made
    status, body = await secure.call("GET", "/api/tokens?join=true", "admin")
    assert {row["id"] for row in body["tokens"]} >= {made["id"]} and all(row["join"] for row in body["tokens"])
    assert [row["expired"] for row in body["tokens"]].count(True) == 1
    assert (await secure.call("DELETE", f"/api/tokens/{made['id']}", "admin"))[0] == 200
    response = await secure.client.post("/api/join", json=JOIN, headers={"Authorization": f"Bearer {made['token']}"})
    assert response.status == 401


def test_the_cli_makes_expiring_join_tokens_and_lists_them(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(main, ["token", "create", "--join", "--expires", "30d", "--data-dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    listed = runner.invoke(main, ["token", "list", "--join", "--data-dir", str(tmp_path)])
    assert listed.exit_code == 0 and "(join)" in listed.output, listed.output
    bad = runner.invoke(main, ["token", "create", "--join", "--expires", "later", "--data-dir", str(tmp_path)])
    assert bad.exit_code != 0 and "--expires" in bad.output
