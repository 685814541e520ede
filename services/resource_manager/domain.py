"""Pure rules of the resource registry: what a new host looks like, which host a joining agent may
adopt, when a host stops responding."""

from __future__ import annotations

from typing import Any

from schemas.resources import Heartbeat, HostChange

INACTIVE = "inactive"


def new_resource(
    *,
    resource_id: str,
    hostname: str,
    user: str,
    token_hash: str,
    verify_key: str,
    now: float,
    authorized: bool = True,
    joined: bool = False,
    shared: bool = True,
) -> dict[str, Any]:
    return {
        "id": resource_id,
        "hostname": hostname,
        "user": user,
        "state": INACTIVE,
        "authorized": authorized,
        "joined": joined,
        "shared": shared,
        "token_hash": token_hash,
        "verify_key": verify_key,
        "created_at": now,
        "responding": False,
        "last_response_time": None,
        "last_heartbeat_sent_at": None,
        "facts": {},
    }


def is_same_registration(stored: dict[str, Any], *, hostname: str, token_hash: str) -> bool:
    """A redelivered register command finds its own earlier write: that is success, not a clash."""
    return stored["hostname"] == hostname and stored["token_hash"] == token_hash


def may_adopt(stored: dict[str, Any], *, hostname: str, proof: str | None) -> bool:
    """A joining agent takes over a host registered for its hostname (``POST /api/resources``) only
    with proof, the hash of the token that registration was given, and as long as no agent has
    spoken for it yet and no other agent joined as it. A hostname alone proves nothing: whoever
    registered it first (any user) would otherwise capture the machine that later joins by it."""
    return (
        proof is not None
        and proof == stored["token_hash"]
        and stored["hostname"] == hostname
        and not stored.get("joined", False)
        and stored["last_response_time"] is None
    )


def adoption(*, token_hash: str, verify_key: str) -> dict[str, Any]:
    """The changes that hand an adopted host to the joining agent: its credentials replace the ones
    the admin was given (which stop working at once), and it stays authorized."""
    return {"token_hash": token_hash, "verify_key": verify_key, "joined": True, "authorized": True}


def is_fresh_heartbeat(stored: dict[str, Any], sent_at: float) -> bool:
    """Only a heartbeat newer than the last one counts, so a replayed capture cannot fake liveness."""
    last = stored.get("last_heartbeat_sent_at")
    return last is None or sent_at > last


def heartbeat_changes(stored: dict[str, Any], beat: Heartbeat, *, now: float) -> tuple[HostChange | None, dict]:
    """What a heartbeat changes in a host's record: a transition (it responds again, or its agent
    restarted) and the fields to store; nothing, most of the time."""
    facts = beat.facts.model_dump()
    changes: dict[str, Any] = {} if facts == stored.get("facts") else {"facts": facts}
    restarted = beat.agent_started_at is not None and beat.agent_started_at != stored.get("agent_started_at")
    if restarted:
        changes["agent_started_at"] = beat.agent_started_at
    if not stored["responding"]:
        changes["responding"] = True
        return "responding", changes
    return ("restarted" if restarted and stored.get("agent_started_at") is not None else None), changes
