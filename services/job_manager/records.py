"""The job manager's read surface: typed records of its ``jobs`` and the queries others may run.

Nothing outside this package imports anything else from it. Only the job manager writes these
documents; a record is a snapshot of one stored document, built cheaply (no validation).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.jobs import FINAL_STATES, JobState
from services.job_manager.domain import parse_task_id
from services.job_manager.repository import JOBS
from services.paging import Page
from services.store.port import DocumentStore

_ENDED = sorted(FINAL_STATES)
_NOT_ENDED = sorted(set(JobState) - FINAL_STATES)


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    user: str
    command: str
    binary: str | None
    input_files: Sequence[str]
    ttl: int | None
    expires_at: float | None
    pinned_resource: str | None
    origin: str | None
    resource_id: str | None
    state: JobState
    history: Sequence[Mapping[str, Any]]
    created_at: float
    started_at: float | None
    finished_at: float | None
    exit_code: int | None
    answer_id: str | None
    error: str | None
    deleted: bool
    deleted_reason: str | None
    attempt: int = 1
    retries: int = 0
    stdout_id: str | None = None
    stderr_id: str | None = None
    output_files: Sequence[str] = ()
    outputs: Mapping[str, str] = field(default_factory=dict)
    output_errors: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> JobRecord:
        return cls(
            id=document["id"],
            user=document["user"],
            command=document.get("command", ""),
            binary=document.get("binary"),
            input_files=document.get("input_files", ()),
            ttl=document.get("ttl"),
            expires_at=document.get("expires_at"),
            pinned_resource=document.get("pinned_resource"),
            origin=document.get("origin"),
            resource_id=document.get("resource_id"),
            state=JobState(document.get("state", JobState.PENDING)),
            history=document.get("history", ()),
            created_at=document.get("created_at", 0.0),
            started_at=document.get("started_at"),
            finished_at=document.get("finished_at"),
            exit_code=document.get("exit_code"),
            answer_id=document.get("answer_id"),
            error=document.get("error"),
            deleted=document.get("deleted", False),
            deleted_reason=document.get("deleted_reason"),
            attempt=document.get("attempt", 1),
            retries=document.get("retries", 0),
            stdout_id=document.get("stdout_id"),
            stderr_id=document.get("stderr_id"),
            output_files=document.get("output_files") or (),
            outputs=document.get("outputs") or {},
            output_errors=document.get("output_errors") or {},
        )

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def task_id(self) -> str:
        """The id its current attempt has on its agent (what the agent's messages name)."""
        return self.id if self.attempt == 1 else f"{self.id}.{self.attempt}"

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


async def get_job(store: DocumentStore, job_id: str) -> JobRecord | None:
    document = await store.collection(JOBS).get(job_id)
    return None if document is None else JobRecord.from_document(document)


async def get_job_of_task(store: DocumentStore, task_id: str) -> JobRecord | None:
    """The job an agent's task id names (``<job id>``, or ``<job id>.<n>`` for attempt n of a job
    with retries), if that is the job's current attempt."""
    job_id, attempt = parse_task_id(task_id)
    job = await get_job(store, job_id)
    return job if job is not None and job.attempt == attempt else None


async def find_jobs(
    store: DocumentStore,
    *,
    user: str | None = None,
    states: Iterable[str] | None = None,
    resource_id: str | None = None,
    created_since: float | None = None,
    created_until: float | None = None,
    limit: int,
    cursor: str | None = None,
) -> Page[JobRecord]:
    """Jobs not deleted, newest first; ``created_since`` inclusive, ``created_until`` exclusive.
    A malformed ``cursor`` raises ValueError."""
    filter: dict[str, Any] = {"deleted": False}
    if user is not None:
        filter["user"] = user
    if states is not None:
        filter["state"] = {"$in": list(states)}
    if resource_id is not None:
        filter["resource_id"] = resource_id
    created: dict[str, float] = {}
    if created_since is not None:
        created["$gte"] = created_since
    if created_until is not None:
        created["$lt"] = created_until
    if created:
        filter["created_at"] = created
    page = await store.collection(JOBS).find(filter, sort=[("created_at", -1)], limit=limit, cursor=cursor)
    return Page([JobRecord.from_document(document) for document in page.items], page.next_cursor)


@dataclass(frozen=True, slots=True)
class JobAnswer:
    """A small answer, kept in its job's record under the job's ``answer_id`` (a big one is a data item)."""

    answer_id: str
    job_id: str
    user: str
    text: str
    at: float

    def stream_text(self, stream: str) -> bytes:
        """The raw bytes of ``stream`` (``stdout``, ``stderr``) in the answer: its text was decoded with
        ``surrogateescape``, so encoding it back gives the bytes the task wrote."""
        try:
            value = json.loads(self.text).get(stream) or ""
        except (ValueError, AttributeError):
            return b""
        return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else b""


async def answer_by_id(store: DocumentStore, answer_id: str) -> JobAnswer | None:
    """The answer kept with a job under ``answer_id``, if that is where it is (gone with its job)."""
    document = await store.collection(JOBS).find_one({"answer_id": answer_id})
    if document is None or document.get("answer") is None:
        return None
    at = document.get("finished_at") or document["created_at"]
    return JobAnswer(answer_id, document["id"], document["user"], document["answer"], at)


async def count_by_state(store: DocumentStore) -> dict[JobState, int]:
    """How many stored jobs are in each state (deleted ones left out): one count query per state."""
    jobs = store.collection(JOBS)
    return {state: await jobs.count({"state": state.value, "deleted": False}) for state in JobState}


async def count_active_jobs(store: DocumentStore, user: str) -> int:
    """How many of ``user``'s jobs are pending or under way (not ended, not deleted): one count
    over the (user, created_at) index."""
    return await store.collection(JOBS).count({"user": user, "state": {"$in": _NOT_ENDED}, "deleted": False})
