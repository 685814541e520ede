"""Handlers of the job manager: commands from the gateway, events from agents, and the sweep.

Delivery: at least once. Every handler is safe to run twice and beside a twin in another process:
a job is inserted under the id the gateway chose (a redelivered RunJob finds it), every state change
is a forward step written with the version it read (:func:`domain.advance`), and the agent's ledger
refuses to run a job twice, so sending a SubmitTask again is always safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakValueDictionary

from broker.envelope import Envelope
from broker.port import Handler, MessageBus
from broker.router import Router
from broker.topology import Topology
from schemas.base import Accepted, Rejected, WireModel
from schemas.content import DeleteContent, StoreInlineData
from schemas.jobs import (
    FINAL_STATES,
    AgentCommandRefused,
    CancelJob,
    CancelTask,
    DeleteJob,
    FilesStagedIn,
    JobFinished,
    JobState,
    RunJob,
    StageJobFiles,
    SubmitTask,
    TaskAccepted,
    TaskCompleted,
    TaskRunning,
)
from schemas.resources import Heartbeat, HostDeleted
from services.job_manager import domain
from services.job_manager.repository import each
from services.resource_manager import records as resources
from services.resource_manager.records import ResourceRecord
from services.store.port import Collection, DocumentStore, DuplicateKey, NotFound, VersionConflict

log = logging.getLogger(__name__)

SENDER = "job-manager"
ANSWERS = uuid.UUID("3b4f9e0c-8a51-4d6b-9f1e-2c7d5a8b6e43")  # answer ids are uuid5(ANSWERS, job id)
CONFLICT_RETRIES = 5
RESEND_AFTER = 30.0  # seconds a dispatched job may wait for its host to accept before it is sent again


@dataclass
class JobManager:
    bus: MessageBus
    topology: Topology
    jobs: Collection
    store: DocumentStore  # the resource manager's hosts, read through its records only
    lost_timeout: float
    clock: Callable[[], float] = time.time
    load: Counter[str] = field(default_factory=Counter)
    _hosts: list[ResourceRecord] = field(default_factory=list)
    _hosts_read_at: float = float("-inf")
    _locks: WeakValueDictionary[str, asyncio.Lock] = field(default_factory=WeakValueDictionary)

    def command_router(self) -> Router:
        router = Router()
        router.add(RunJob, self._serialized(self.run_job))
        router.add(CancelJob, self._serialized(self.cancel_job))
        router.add(DeleteJob, self._serialized(self.delete_job))
        return router

    def event_router(self) -> Router:
        router = Router()
        router.add(FilesStagedIn, self._serialized(self.files_staged_in))
        router.add(TaskAccepted, self._serialized(self.task_accepted))
        router.add(TaskRunning, self._serialized(self.task_running))
        router.add(TaskCompleted, self._serialized(self.task_completed))
        router.add(AgentCommandRefused, self._serialized(self.command_refused))
        router.add(Heartbeat, self._serialized(self.heartbeat))
        router.add(HostDeleted, self._serialized(self.host_deleted))
        return router

    def _serialized(self, handler: Handler) -> Handler:
        """One message of a job at a time in this process, and a lost race with a twin process (a
        VersionConflict) retried at once with a fresh read, instead of a requeue to the queue's end."""

        async def handle(envelope: Envelope) -> WireModel | None:
            job_id = getattr(envelope.payload, "job_id", None)
            lock = None
            if job_id is not None:
                lock = self._locks.get(job_id)
                if lock is None:
                    lock = self._locks[job_id] = asyncio.Lock()  # held weakly: gone when unused
            for attempt in range(CONFLICT_RETRIES):
                try:
                    if lock is None:
                        return await handler(envelope)
                    async with lock:
                        return await handler(envelope)
                except VersionConflict:
                    if attempt == CONFLICT_RETRIES - 1:
                        raise
                    await asyncio.sleep(0.001 * (attempt + 1))
            return None

        return handle

    # Commands.

    async def run_job(self, envelope: Envelope) -> WireModel:
        command = envelope.payload
        assert isinstance(command, RunJob)
        job = domain.new_job(
            job_id=command.job_id,
            user=command.user,
            command=command.command,
            binary=command.binary,
            input_files=command.input_files,
            ttl=command.ttl,
            pinned_resource=command.resource_id,
            now=self.clock(),
            origin=command.origin,
        )
        # Placed before it is first written, when a host is there: one write instead of two.
        resource_id = domain.choose_host(await self._candidates(command.resource_id) or [], self.load)
        if resource_id is not None:
            job.update(self._placement(job, resource_id, job["created_at"]))
        try:
            job = await self.jobs.insert(job)
        except DuplicateKey:
            resource_id = None  # not placed by this delivery
            job = await self.jobs.get(command.job_id)  # a redelivery, or a retry with the same key
            if job is None:
                raise
            if (job["user"], job["command"]) != (command.user, command.command):
                return Rejected(status=409, error="this Idempotency-Key was used for another job")
            if domain.state_of(job) is JobState.STAGING and job["resource_id"]:
                # Placed before a crash, perhaps never sent: send again (the agent runs it once).
                await self._dispatch(job, envelope)
                return Accepted(id=command.job_id)
        if resource_id is not None:  # inserted placed
            self.load[resource_id] += 1
            await self._dispatch(job, envelope)
        elif domain.state_of(job) is JobState.PENDING:
            await self._place(job, envelope)
        return Accepted(id=command.job_id)

    async def cancel_job(self, envelope: Envelope) -> WireModel:
        command = envelope.payload
        assert isinstance(command, CancelJob)
        job, refusal = await self._live_job(command.job_id)
        if refusal is not None:
            return refusal
        if domain.is_final(job):
            return Rejected(status=409, error=f"job {command.job_id} already finished: {job['state']}")
        await self._cancel(job, envelope, reason="cancelled by its user")
        return Accepted(id=command.job_id)

    async def delete_job(self, envelope: Envelope) -> WireModel:
        command = envelope.payload
        assert isinstance(command, DeleteJob)
        job, refusal = await self._live_job(command.job_id)
        if refusal is not None:
            return refusal
        await self._delete(job, envelope, reason="deleted")
        return Accepted(id=command.job_id)

    async def _live_job(self, job_id: str) -> tuple[dict[str, Any], Rejected | None]:
        """The job, or why a command cannot touch it: 404 unknown, 410 deleted."""
        job = await self.jobs.get(job_id)
        if job is None:
            return {}, Rejected(status=404, error=f"job {job_id} not found")
        if job["deleted"]:
            return job, Rejected(status=410, error=f"job {job_id} is gone ({job['deleted_reason']})")
        return job, None

    # Events from agents (already checked and republished by the resource manager).

    async def files_staged_in(self, envelope: Envelope) -> None:
        event = envelope.payload
        assert isinstance(event, FilesStagedIn)
        job = await self._job_on_sender(event.job_id, envelope)
        if job is None or domain.state_of(job) is not JobState.STAGING:
            return
        if not event.ok:
            await self._finish(job, JobState.FAILED, error=f"staging files failed: {event.error}")
            return
        await self._submit(job, envelope)

    async def task_accepted(self, envelope: Envelope) -> None:
        event = envelope.payload
        assert isinstance(event, TaskAccepted)
        job = await self._job_on_sender(event.job_id, envelope)
        if job is not None:
            await self._step(job, JobState.ACCEPTED, at=event.at, accepted_at=event.at)

    async def task_running(self, envelope: Envelope) -> None:
        event = envelope.payload
        assert isinstance(event, TaskRunning)
        job = await self._job_on_sender(event.job_id, envelope)
        if job is None:
            return
        # Accepted and started at once (one message), or a separate accepted that is late or lost.
        accepted_at = event.accepted_at or event.at
        steps = [(JobState.ACCEPTED, accepted_at), (JobState.RUNNING, event.at)]
        changes = domain.advance_through(job, steps, started_at=event.at)
        if changes is not None:
            if job["accepted_at"] is None:
                changes["accepted_at"] = accepted_at
            await self._update(job, changes)

    async def task_completed(self, envelope: Envelope) -> None:
        event = envelope.payload
        assert isinstance(event, TaskCompleted)
        job = await self._job_on_sender(event.job_id, envelope)
        if job is None:
            return
        if domain.is_final(job):
            return  # a redelivery: the outcome and its answer are stored already
        outcome = event.outcome if event.outcome in FINAL_STATES else JobState.LOST
        answer_id, error = event.answer_id, event.error
        if event.answer is not None and answer_id is None and not job["deleted"]:
            answer_id, error = await self._store_answer(job, event.answer, envelope, error)
        fields: dict[str, Any] = {}
        if event.accepted_at is not None and job["accepted_at"] is None:
            fields["accepted_at"] = event.accepted_at
        if event.started_at is not None and job["started_at"] is None:
            fields["started_at"] = event.started_at
        earlier = [(JobState.ACCEPTED, event.accepted_at), (JobState.RUNNING, event.started_at)]
        await self._finish(
            job,
            outcome,
            at=event.at,
            earlier=earlier,
            exit_code=event.exit_code,
            answer_id=answer_id,
            error=error,
            **fields,
        )

    async def _store_answer(
        self, job: dict[str, Any], answer: str, cause: Envelope, error: str | None
    ) -> tuple[str | None, str | None]:
        """Have the data manager store an answer that came inside TaskCompleted, under an id fixed
        by the job, so a redelivery stores it once. A bus failure raises: the event is redelivered."""
        answer_id = str(uuid.uuid5(ANSWERS, job["id"]))
        command = StoreInlineData(
            item_id=answer_id,
            owner=job["user"],
            name=f"answer-{job['id']}.json",
            content=answer,
            granted_to=(job["resource_id"],),
        )
        reply = await self.bus.request(self.topology.commands, self._envelope(command, cause, job), timeout=30)
        if isinstance(reply.payload, Accepted):
            return answer_id, error
        log.error("answer of job %s not stored: %s", job["id"], reply.payload, extra={"job_id": job["id"]})
        return None, error or f"answer not stored: {getattr(reply.payload, 'error', reply.payload)}"

    async def command_refused(self, envelope: Envelope) -> None:
        event = envelope.payload
        assert isinstance(event, AgentCommandRefused)
        if event.job_id is None:
            return
        job = await self.jobs.get(event.job_id)
        if job is None or job["resource_id"] != event.resource_id or domain.state_of(job) is not JobState.STAGING:
            return
        # Not taken: place it again (elsewhere, unless pinned) at the next sweep.
        await self._update(job, {"resource_id": None, "error": f"host {event.resource_id}: {event.reason}"})
        self.load[event.resource_id] -= 1

    async def heartbeat(self, envelope: Envelope) -> None:
        """A restarted agent no longer runs what its predecessor had: those jobs are lost."""
        beat = envelope.payload
        assert isinstance(beat, Heartbeat)
        if beat.agent_started_at is None or envelope.resource_id is None:
            return
        running = set(beat.running_jobs)
        active = {"resource_id": envelope.resource_id, "state": {"$in": ["accepted", "running"]}}
        async for job in each(self.jobs, active):
            if job["id"] in running or (job["accepted_at"] or 0) >= beat.agent_started_at:
                continue
            await self._finish(job, JobState.LOST, error="the agent on its host restarted and no longer runs it")

    async def host_deleted(self, envelope: Envelope) -> None:
        event = envelope.payload
        assert isinstance(event, HostDeleted)
        async for job in each(
            self.jobs, {"resource_id": event.resource_id, "state": {"$in": ["staging", "accepted", "running"]}}
        ):
            await self._finish(job, JobState.LOST, error=f"its host {event.resource_id} was deleted")
        async for job in each(self.jobs, {"pinned_resource": event.resource_id, "state": "pending"}):
            await self._finish(job, JobState.LOST, error=f"its host {event.resource_id} was deleted")

    # The sweep: what no message will trigger (time passing, hosts going silent, hosts coming back).

    async def sweep(self) -> None:
        """One pass; a job that changed under it (a twin, an event) is left for the next pass."""
        now = self.clock()
        async for job in each(self.jobs, {"deleted": False, "expires_at": {"$lte": now}}):
            with suppress(VersionConflict):
                await self._delete(job, None, reason="its ttl ran out")
        await self._sweep_unplaced()
        await self._sweep_active(now)

    async def _sweep_unplaced(self) -> None:
        waiting = {"state": {"$in": ["pending", "staging"]}, "resource_id": None, "deleted": False}
        hosts = await self._responding_hosts(fresh=True)
        async for job in each(self.jobs, waiting, sort=[("created_at", 1)]):
            if hosts or job["pinned_resource"]:
                with suppress(VersionConflict):
                    await self._place(job, None)

    async def _sweep_active(self, now: float) -> None:
        hosts: dict[str, ResourceRecord | None] = {}
        load: Counter[str] = Counter()
        active = {"state": {"$in": ["staging", "accepted", "running"]}}
        async for job in each(self.jobs, active):
            rid = job["resource_id"]
            if rid is None:
                continue
            if rid not in hosts:
                hosts[rid] = await resources.get_resource(self.store, rid)
            host = hosts[rid]
            heard = None if host is None else host.last_response_time
            if host is None or heard is None or now - heard > self.lost_timeout:
                why = "was deleted" if host is None else f"has not responded for over {self.lost_timeout:g}s"
                with suppress(VersionConflict):
                    await self._finish(job, JobState.LOST, error=f"its host {rid} {why}")
                continue
            load[rid] += 1
            stuck = domain.state_of(job) is JobState.STAGING and now - (job["dispatched_at"] or now) > RESEND_AFTER
            if stuck and host.responding:
                with suppress(VersionConflict):
                    job = await self._update(job, {"dispatched_at": now})
                    if job is not None:
                        await self._dispatch(job, None)
        self.load = load

    # Steps.

    async def _responding_hosts(self, *, fresh: bool = False) -> list[ResourceRecord]:
        """Hosts that may take jobs, cached for a second: a stale pick is refused and placed again."""
        now = self.clock()
        if fresh or now - self._hosts_read_at > 1.0:
            self._hosts, self._hosts_read_at = await resources.responding_resources(self.store), now
        return self._hosts

    async def _candidates(self, pinned: str | None) -> list[ResourceRecord] | None:
        """The hosts a job may go to; None when it is pinned to a host that no longer exists."""
        if pinned:
            host = await resources.get_resource(self.store, pinned)
            return None if host is None else [host]
        return await self._responding_hosts()

    @staticmethod
    def _placement(job: dict[str, Any], resource_id: str, now: float) -> dict[str, Any]:
        changes = domain.advance(job, JobState.STAGING, now) or {}
        changes.update(resource_id=resource_id, dispatched_at=now)
        return changes

    async def _place(self, job: dict[str, Any], cause: Envelope | None) -> None:
        candidates = await self._candidates(job["pinned_resource"])
        if candidates is None:
            await self._finish(job, JobState.LOST, error=f"its host {job['pinned_resource']} was deleted")
            return
        resource_id = domain.choose_host(candidates, self.load)
        if resource_id is None:
            return  # stays waiting; the sweep tries again
        job = await self._update(job, self._placement(job, resource_id, self.clock()))
        if job is None:
            return
        self.load[resource_id] += 1
        await self._dispatch(job, cause)

    async def _dispatch(self, job: dict[str, Any], cause: Envelope | None) -> None:
        files = [job["binary"]] if job["binary"] else []
        files += job["input_files"]
        if not files:
            await self._submit(job, cause)
            return
        command = StageJobFiles(job_id=job["id"], resource_id=job["resource_id"], data_ids=files, binary=job["binary"])
        await self.bus.publish(self.topology.commands, self._envelope(command, cause, job))

    async def _submit(self, job: dict[str, Any], cause: Envelope | None) -> None:
        command = SubmitTask(job_id=job["id"], command=job["command"], deadline=job["expires_at"])
        await self.bus.publish(self.topology.commands, self._envelope(command, cause, job))

    async def _cancel(self, job: dict[str, Any], cause: Envelope | None, *, reason: str) -> None:
        if job["resource_id"] is None or domain.state_of(job) is JobState.PENDING:
            await self._finish(job, JobState.CANCELLED, error=reason)
            return
        job = await self._update(job, {"cancel_requested": True}) or job
        await self.bus.publish(
            self.topology.commands, self._envelope(CancelTask(job_id=job["id"], reason=reason), cause, job)
        )

    async def _delete(self, job: dict[str, Any], cause: Envelope | None, *, reason: str) -> None:
        if not domain.is_final(job):
            await self._cancel(job, cause, reason=reason)
            job = await self.jobs.get(job["id"]) or job
        await self._update(job, {"deleted": True, "deleted_reason": reason, "deleted_at": self.clock()})
        # The answer goes with the job: the data manager owns it.
        if job.get("answer_id"):
            await self._forget_answer(job["answer_id"], job, cause)

    async def _finish(
        self,
        job: dict[str, Any],
        outcome: JobState,
        *,
        at: float | None = None,
        earlier: Sequence[tuple[JobState, float | None]] = (),
        **fields: Any,
    ) -> None:
        at = at or self.clock()
        changes = domain.advance_through(job, [*earlier, (outcome, at)], finished_at=at, **fields)
        if changes is None:
            return
        finished = await self._update(job, changes)
        if finished is not None and job["resource_id"]:
            self.load[job["resource_id"]] -= 1
        if finished is not None and finished.get("origin"):
            await self._tell_origin(finished)
        if job["deleted"] and fields.get("answer_id"):
            await self._forget_answer(fields["answer_id"], job, None)
        log.info(
            "job %s %s",
            job["id"],
            changes["state"],
            extra={"job_id": job["id"], "resource_id": job["resource_id"]},
        )

    async def _tell_origin(self, job: dict[str, Any]) -> None:
        """The manager that asked for this job hears that it ended. Lost if this process dies right
        here: that manager also reads the jobs it waits for, now and then."""
        event = JobFinished(
            job_id=job["id"],
            origin=job["origin"],
            state=job["state"],
            exit_code=job["exit_code"],
            answer_id=job["answer_id"],
            error=job["error"],
        )
        await self.bus.publish(self.topology.events, self._envelope(event, None, job))

    async def _step(self, job: dict[str, Any], target: JobState, *, at: float, **fields: Any) -> dict[str, Any] | None:
        changes = domain.advance(job, target, at, **fields)
        return None if changes is None else await self._update(job, changes)

    async def _update(self, job: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any] | None:
        """Write with the version read. A VersionConflict propagates: the message is redelivered
        and the handler reads the job again."""
        try:
            return await self.jobs.update(job["id"], changes, expected_version=job["version"])
        except NotFound:
            return None

    async def _job_on_sender(self, job_id: str, envelope: Envelope) -> dict[str, Any] | None:
        """The job, if the agent reporting on it is the one its host runs (no host speaks for another's job)."""
        job = await self.jobs.get(job_id)
        if job is None or job["resource_id"] != envelope.resource_id:
            return None
        return job

    async def _forget_answer(self, answer_id: str, job: dict[str, Any], cause: Envelope | None) -> None:
        forget = DeleteContent(item_id=answer_id)
        await self.bus.publish(self.topology.commands, self._envelope(forget, cause, job))

    def _envelope(self, payload: WireModel, cause: Envelope | None, job: dict[str, Any]) -> Envelope:
        if cause is not None:
            return cause.caused(payload, sender=SENDER, resource_id=job["resource_id"])
        return Envelope(payload, sender=SENDER, correlation_id=job["id"], resource_id=job["resource_id"])
