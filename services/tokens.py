"""User API tokens and cluster join tokens: stored by SHA-256 hash only, looked up by that hash.

Written by ``skybus token create`` and by ``skybus up`` at first start; read by the gateway.

Join tokens live in a collection of their own, so neither kind can pass for the other: a join
token is looked up only by ``POST /api/join`` and never authenticates a user, and a user's token
(an admin's included) is not a join token.

Either kind may expire (``expires_at``, epoch seconds): past it, it is refused as if unknown. Each
has a public id (:func:`token_id`, derived from the hash, which it does not reveal) by which it is
listed and revoked; revoking deletes it. The gateway remembers a user's token for at most two
seconds and never past its expiry, so a revoked token is refused everywhere within two seconds.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

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
    expires_at: float | None = None  # the token's, when it has one


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What may be shown of a stored token: never the token, never its hash."""

    id: str
    user: str | None  # None for a join token
    admin: bool
    created_at: float
    expires_at: float | None
    join: bool

    @classmethod
    def from_document(cls, document: dict[str, Any], *, join: bool) -> TokenRecord:
        return cls(
            id=document.get("token_id") or token_id(document["id"]),
            user=None if join else document["user"],
            admin=False if join else bool(document["admin"]),
            created_at=document.get("created_at", 0.0),
            expires_at=document.get("expires_at"),
            join=join,
        )


def token_id(token_hash: str) -> str:
    """A token's public id: a hash of its hash, so showing it reveals neither."""
    return hashlib.sha256(f"skybus token id\0{token_hash}".encode()).hexdigest()[:20]


def token_id_for(token: str) -> str:
    return token_id(hash_token(token))


def is_expired(document: dict[str, Any], now: float | None = None) -> bool:
    expires_at = document.get("expires_at")
    return expires_at is not None and expires_at <= (time.time() if now is None else now)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds; ValueError otherwise."""
    found = _DURATION.match(text)
    if found is None or float(found.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (say 30d, 12h, 90m, 45s or 2w)")
    return float(found.group(1)) * _SECONDS[found.group(2)]


async def tokens_collection(store: DocumentStore) -> Collection:
    collection = store.collection(TOKENS)
    await collection.create_index(["admin"])
    await collection.create_index(["token_id"])
    return collection


AGENT_PREFIX = "agent:"  # what an agent's uploads are owned by: no user may be called that


def check_user_name(user: str) -> str:
    if not user.strip() or len(user) > 128 or any(ord(ch) < 32 for ch in user):
        raise ValueError("a user name is 1 to 128 printable characters")
    if user.startswith(AGENT_PREFIX):
        raise ValueError(f"user names starting with {AGENT_PREFIX!r} are reserved for agents")
    return user


def _new_document(token: str, expires_at: float | None, **fields: Any) -> dict[str, Any]:
    token_hash = hash_token(token)
    return {
        "id": token_hash,
        "token_id": token_id(token_hash),
        "created_at": time.time(),
        "expires_at": expires_at,
        **fields,
    }


async def create_token(tokens: Collection, *, user: str, admin: bool, expires_at: float | None = None) -> str:
    """Store a new token for ``user`` and return it: the only time it is seen in clear."""
    check_user_name(user)
    token = new_token()
    await tokens.insert(_new_document(token, expires_at, user=user, admin=admin))
    return token


async def principal_for(tokens: Collection, token: str) -> Principal | None:
    stored = await tokens.get(hash_token(token))
    if stored is None or is_expired(stored):
        return None
    return Principal(user=stored["user"], admin=bool(stored["admin"]), expires_at=stored.get("expires_at"))


async def has_admin_token(tokens: Collection) -> bool:
    return (await tokens.count({"admin": True})) > 0


async def list_tokens(tokens: Collection, *, join: bool = False, limit: int = 1000) -> list[TokenRecord]:
    """The stored tokens (user tokens, or join tokens), oldest first, expired ones included."""
    page = await tokens.find({}, sort=[("created_at", 1)], limit=limit)
    return [TokenRecord.from_document(document, join=join) for document in page.items]


async def revoke_token(tokens: Collection, public_id: str) -> TokenRecord | None:
    """Delete the token with this public id; what it was, or None if there is none."""
    stored = await tokens.find_one({"token_id": public_id})
    if stored is None:  # made before tokens had a stored public id
        legacy = await tokens.find({"token_id": None}, limit=10_000)
        stored = next((doc for doc in legacy.items if token_id(doc["id"]) == public_id), None)
    if stored is None or not await tokens.delete(stored["id"]):
        return None
    return TokenRecord.from_document(stored, join="user" not in stored)


def join_tokens_collection(store: DocumentStore) -> Collection:
    return store.collection(JOIN_TOKENS)


async def create_join_token(join_tokens: Collection, *, expires_at: float | None = None) -> str:
    """Store a new cluster join token and return it: the only time it is seen in clear. Any number
    may exist; each lets a host join as an unauthorized host until an admin authorizes it."""
    token = new_token()
    await join_tokens.insert(_new_document(token, expires_at))
    return token


async def is_join_token(join_tokens: Collection, token: str) -> bool:
    stored = await join_tokens.get(hash_token(token))
    return stored is not None and not is_expired(stored)
