"""The job state machine and placement, as pure functions.

States move forward only: pending → staging → accepted → running → one final state (succeeded,
failed, cancelled, lost). Each transition is recorded once, with its time, in ``history``; an event
that would not move a job forward (a redelivery, a late or out-of-order message) changes nothing.

A job with ``retries`` left that would end ``lost`` starts a new attempt instead: it goes back to
pending (history: ``{"state": "lost", "attempt": n, ...}`` then ``{"state": "pending", "attempt":
n + 1, ...}``), waits its backoff, and avoids the hosts it was lost on while another one is there.
Each attempt goes to the agent under a task id of its own (:func:`task_id`), since an agent never
runs one task id twice; events of an earlier attempt change nothing.
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
    retries: int = 0,
    output_files: list[str] | None = None,
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
        "retries": retries,
        "attempt": 1,
        "lost_on": [],
        "retry_at": None,
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
        "output_files": list(output_files or []),
        "outputs": {},
        "output_errors": {},
        "stdout_id": None,
        "stderr_id": None,
        "finishing": None,
        "stage_out_sent_at": None,
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


def attempt_of(job: Mapping[str, Any]) -> int:
    return job.get("attempt", 1)


def task_id(job: Mapping[str, Any]) -> str:
    """The id an attempt of ``job`` has on its agent: the job id for the first, ``<job id>.<n>`` after."""
    attempt = attempt_of(job)
    return job["id"] if attempt == 1 else f"{job['id']}.{attempt}"


def parse_task_id(task: str) -> tuple[str, int]:
    """The job id and attempt of a task id (agents and the data manager echo it as ``job_id``)."""
    job_id, dot, attempt = task.rpartition(".")
    return (job_id, int(attempt)) if dot and attempt.isdigit() else (task, 1)


def retry_backoff(attempt: int) -> float:
    """Seconds before attempt ``attempt + 1`` of a job whose attempt ``attempt`` was lost: 1, 2, 4 … 60."""
    return float(min(2 ** (attempt - 1), 60))


def retry(job: Mapping[str, Any], at: float, *, error: str | None) -> dict[str, Any] | None:
    """The changes that start the next attempt of a job whose attempt was lost, or None if it has no
    retries left (or is final, deleted or being cancelled: then it ends lost)."""
    attempt = attempt_of(job)
    if attempt > job.get("retries", 0) or is_final(job) or job["deleted"] or job["cancel_requested"]:
        return None
    lost_on = list(job.get("lost_on") or [])
    if job["resource_id"] and job["resource_id"] not in lost_on:
        lost_on.append(job["resource_id"])
    steps = [
        {"state": JobState.LOST.value, "at": at, "attempt": attempt, "error": error},
        {"state": JobState.PENDING.value, "at": at, "attempt": attempt + 1},
    ]
    return {
        "state": JobState.PENDING.value,
        "history": [*job["history"], *steps],
        "attempt": attempt + 1,
        "lost_on": lost_on,
        "retry_at": at + retry_backoff(attempt),
        "resource_id": None,
        "dispatched_at": None,
        "start_by": None,
        "accepted_at": None,
        "started_at": None,
        "error": error,
    }


def is_expired(job: Mapping[str, Any], now: float) -> bool:
    return job.get("expires_at") is not None and job["expires_at"] <= now


def choose_host(candidates: Iterable[Host], load: Mapping[str, int], avoid: Iterable[str] = ()) -> str | None:
    """The authorized, responding host with the fewest jobs in flight (ties: the lowest id); one not in
    ``avoid`` (where the job was lost) while there is such a host."""
    usable = [host.id for host in candidates if host.takes_jobs]
    avoided = set(avoid)
    usable = [rid for rid in usable if rid not in avoided] or usable
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
