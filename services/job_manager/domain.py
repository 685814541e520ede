"""The job state machine and placement, as pure functions.

States move forward only: pending → staging → accepted → running → one final state (succeeded,
failed, cancelled, lost). Each transition is recorded once, with its time, in ``history``; an event
that would not move a job forward (a redelivery, a late or out-of-order message) changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from schemas.jobs import ACTIVE_STATES, FINAL_STATES, JobState

RANK = {
    JobState.PENDING: 0,
    JobState.STAGING: 1,
    JobState.ACCEPTED: 2,
    JobState.RUNNING: 3,
    JobState.SUCCEEDED: 4,
    JobState.FAILED: 4,
    JobState.CANCELLED: 4,
    JobState.LOST: 4,
}

Job = dict[str, Any]


def new_job(
    *,
    job_id: str,
    user: str,
    command: str,
    binary: str | None,
    input_files: list[str],
    ttl: int | None,
    pinned_resource: str | None,
    now: float,
    origin: str | None = None,
) -> Job:
    return {
        "id": job_id,
        "user": user,
        "command": command,
        "binary": binary,
        "input_files": input_files,
        "ttl": ttl,
        "expires_at": None if ttl is None else now + ttl,
        "pinned_resource": pinned_resource,
        "origin": origin,
        "resource_id": None,
        "state": JobState.PENDING.value,
        "history": [{"state": JobState.PENDING.value, "at": now}],
        "created_at": now,
        "dispatched_at": None,
        "accepted_at": None,
        "started_at": None,
        "finished_at": None,
        "exit_code": None,
        "answer_id": None,
        "error": None,
        "cancel_requested": False,
        "deleted": False,
        "deleted_reason": None,
    }


def state_of(job: Mapping[str, Any]) -> JobState:
    return JobState(job["state"])


def is_final(job: Mapping[str, Any]) -> bool:
    return state_of(job) in FINAL_STATES


def is_active(job: Mapping[str, Any]) -> bool:
    return state_of(job) in ACTIVE_STATES


def advance(job: Mapping[str, Any], target: JobState, at: float, **fields: Any) -> dict[str, Any] | None:
    """The changes that move ``job`` to ``target``, or None if that would not be a step forward."""
    if RANK[target] <= RANK[state_of(job)]:
        return None
    changes: dict[str, Any] = {"state": target.value, "history": [*job["history"], {"state": target.value, "at": at}]}
    changes.update(fields)
    return changes


def advance_through(
    job: Mapping[str, Any], steps: Iterable[tuple[JobState, float | None]], **fields: Any
) -> dict[str, Any] | None:
    """The changes that take ``job`` through each forward step in turn (steps without a time, or
    not forward of where the job already is, are skipped), or None if none moves it."""
    history = list(job["history"])
    state = state_of(job)
    for target, at in steps:
        if at is None or RANK[target] <= RANK[state]:
            continue
        history.append({"state": target.value, "at": at})
        state = target
    if state is state_of(job):
        return None
    return {"state": state.value, "history": history, **fields}


def is_expired(job: Mapping[str, Any], now: float) -> bool:
    return job.get("expires_at") is not None and job["expires_at"] <= now


class Host(Protocol):
    """What placement reads of a host (a resource manager's ``ResourceRecord``)."""

    @property
    def id(self) -> str: ...
    @property
    def authorized(self) -> bool: ...
    @property
    def responding(self) -> bool: ...


def choose_host(candidates: Iterable[Host], load: Mapping[str, int]) -> str | None:
    """The authorized, responding host with the fewest jobs in flight (ties: the lowest id)."""
    usable = [c.id for c in candidates if c.authorized and c.responding]
    if not usable:
        return None
    return min(usable, key=lambda rid: (load.get(rid, 0), rid))
