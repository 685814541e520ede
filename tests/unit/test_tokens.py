"""User tokens and cluster join tokens: stored hashed, and neither kind passes for the other."""

from __future__ import annotations

import asyncio

import pytest
from click.testing import CliRunner

from services.cli import main
from services.security import hash_token
from services.settings import Settings
from services.store.factory import open_document_store
from services.store.sqlite import SqliteDocumentStore
from services.tokens import (
    create_join_token,
    create_token,
    is_join_token,
    join_tokens_collection,
    principal_for,
    tokens_collection,
)


@pytest.fixture
async def store(tmp_path):
    store = await SqliteDocumentStore.open(tmp_path / "tokens.db")
    yield store
    await store.close()


async def test_a_join_token_is_stored_only_hashed_and_several_may_exist(store) -> None:
    join_tokens = join_tokens_collection(store)
    first, second = await create_join_token(join_tokens), await create_join_token(join_tokens)
    assert first != second
    assert await is_join_token(join_tokens, first) and await is_join_token(join_tokens, second)
    assert not await is_join_token(join_tokens, "not-a-join-token")
    stored = (await join_tokens.find({}, limit=10)).items
    assert {doc["id"] for doc in stored} == {hash_token(first), hash_token(second)}
    assert first not in str(stored) and second not in str(stored)


async def test_a_join_token_is_no_user_token_and_a_user_token_no_join_token(store) -> None:
    tokens, join_tokens = await tokens_collection(store), join_tokens_collection(store)
    join = await create_join_token(join_tokens)
    admin = await create_token(tokens, user="admin", admin=True)
    assert await principal_for(tokens, join) is None
    assert not await is_join_token(join_tokens, admin)
    assert (await principal_for(tokens, admin)).admin


def test_token_create_join_prints_a_join_token_once(tmp_path) -> None:
    runner = CliRunner()
    made = runner.invoke(main, ["token", "create", "--join", "--data-dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    [line] = made.output.splitlines()
    assert line.startswith("SKYBUS_JOIN_TOKEN=")
    token = line.removeprefix("SKYBUS_JOIN_TOKEN=")

    async def check() -> tuple[bool, object]:
        store = await open_document_store(Settings(data_dir=tmp_path))
        try:
            user = await principal_for(await tokens_collection(store), token)
            return await is_join_token(join_tokens_collection(store), token), user
        finally:
            await store.close()

    assert asyncio.run(check()) == (True, None)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--join", "--user", "steve"], "drop --user/--admin"),
        (["--join", "--admin"], "drop --user/--admin"),
        ([], "give --user (or --join"),
    ],
)
def test_token_create_says_what_it_needs(tmp_path, args: list[str], fragment: str) -> None:
    result = CliRunner().invoke(main, ["token", "create", *args, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and fragment in result.output
