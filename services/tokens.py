"""User API tokens and cluster join tokens: stored by SHA-256 hash only, looked up by that hash.

Written by ``skybus token create`` and by ``skybus up`` at first start; read by the gateway.

Join tokens live in a collection of their own, so neither kind can pass for the other: a join
token is looked up only by ``POST /api/join`` and never authenticates a user, and a user's token
(an admin's included) is not a join token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.security import hash_token, new_token
from services.store.port import Collection, DocumentStore

TOKENS = "tokens"
JOIN_TOKENS = "join_tokens"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a call: a user (maybe an admin), or the agent of ``resource_id`` (never an admin)."""

    user: str
    admin: bool
    resource_id: str | None = None


async def tokens_collection(store: DocumentStore) -> Collection:
    collection = store.collection(TOKENS)
    await collection.create_index(["admin"])
    return collection


AGENT_PREFIX = "agent:"  # what an agent's uploads are owned by: no user may be called that


def check_user_name(user: str) -> str:
    if not user.strip() or len(user) > 128 or any(ord(ch) < 32 for ch in user):
        raise ValueError("a user name is 1 to 128 printable characters")
    if user.startswith(AGENT_PREFIX):
        raise ValueError(f"user names starting with {AGENT_PREFIX!r} are reserved for agents")
    return user


async def create_token(tokens: Collection, *, user: str, admin: bool) -> str:
    """Store a new token for ``user`` and return it: the only time it is seen in clear."""
    check_user_name(user)
    token = new_token()
    await tokens.insert({"id": hash_token(token), "user": user, "admin": admin, "created_at": time.time()})
    return token


async def principal_for(tokens: Collection, token: str) -> Principal | None:
    stored = await tokens.get(hash_token(token))
    if stored is None:
        return None
    return Principal(user=stored["user"], admin=bool(stored["admin"]))


async def has_admin_token(tokens: Collection) -> bool:
    return (await tokens.count({"admin": True})) > 0


def join_tokens_collection(store: DocumentStore) -> Collection:
    return store.collection(JOIN_TOKENS)


async def create_join_token(join_tokens: Collection) -> str:
    """Store a new cluster join token and return it: the only time it is seen in clear. Any number
    may exist; each lets a host join as an unauthorized host until an admin authorizes it."""
    token = new_token()
    await join_tokens.insert({"id": hash_token(token), "created_at": time.time()})
    return token


async def is_join_token(join_tokens: Collection, token: str) -> bool:
    return await join_tokens.get(hash_token(token)) is not None
