"""The job state machine and placement, as pure functions.

States move forward only: pending → staging → accepted → running → one final state (succeeded,
failed, cancelled, lost). Each transition is recorded once, with its time, in ``history``; an event
that would not move a job forward (a redelivery, a late or out-of-order message) changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from schemas.jobs import ACTIVE_STATES, FINAL_STATES, JobState
from services.job_manager.hosts import Host

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
    privileged: bool = False,
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
        "privileged": privileged,
        "resource_id": None,
        "state": JobState.PENDING.value,
        "history": [{"state": JobState.PENDING.value, "at": now}],
        "created_at": now,
        "dispatched_at": None,
        "start_by": None,
        "accepted_at": None,
        "started_at": None,
        "finished_at": None,
        "exit_code": None,
        "answer_id": None,
        "answer": None,
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


def choose_host(candidates: Iterable[Host], load: Mapping[str, int]) -> str | None:
    """The authorized, responding host with the fewest jobs in flight (ties: the lowest id)."""
    usable = [host.id for host in candidates if host.takes_jobs]
    if not usable:
        return None
    return min(usable, key=lambda rid: (load.get(rid, 0), rid))


def why_lost(
    job: Mapping[str, Any], host: Host | None, *, deleted: bool, now: float, lost_timeout: float
) -> str | None:
    """Why an active job placed on ``host`` is lost, or None while it may still end.

    A job its host never started is lost only once no agent may start it any more (``start_by``):
    an agent that comes back later never runs a job that was declared lost."""
    rid = job["resource_id"]
    if host is None:
        return f"its host {rid} was deleted" if deleted else None
    if host.responding or now - (host.last_response_time or 0.0) <= lost_timeout:
        return None
    if state_of(job) is JobState.STAGING and job.get("start_by") is not None and now <= job["start_by"]:
        return None
    return f"its host {rid} has not responded for over {lost_timeout:g}s"
