"""Handlers of the job manager: commands from the gateway, events from agents, and the sweep.

No handler waits on another manager: a handler stores its step, publishes what follows and returns;
the next step runs on the next event, and the sweep is the safety net. Task events come straight
from agents, signed: each is checked here against the host's verify key (from this manager's own
view of hosts, :mod:`services.job_manager.hosts`). Every change of a job is broadcast as
:class:`JobChanged`, which wakes the gateways' long polls.

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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.envelope import Envelope
from broker.port import Drop, MessageBus
from broker.router import Router
from broker.serial import Serialized
from broker.topology import Topology
from schemas.base import Accepted, Rejected, WireModel
from schemas.content import DeleteContent
from schemas.jobs import (
    FINAL_STATES,
    AgentCommandRefused,
    CancelJob,
    CancelTask,
    DeleteJob,
    FilesStagedIn,
    FileStagedOut,
    JobChanged,
    JobFinished,
    JobState,
    RunJob,
    StageJobFiles,
    StageOutFile,
    StagingRefused,
    SubmitTask,
    TaskAccepted,
    TaskCompleted,
    TaskRunning,
)
from schemas.resources import HostChanged, HostDeleted
from services.job_manager import domain
from services.job_manager.hosts import Host, HostView
from services.job_manager.repository import each
from services.security import routed_from_its_host, signed_by
from services.store.port import Collection, DuplicateKey, NotFound, VersionConflict

log = logging.getLogger(__name__)

SENDER = "job-manager"
ANSWERS = uuid.UUID("3b4f9e0c-8a51-4d6b-9f1e-2c7d5a8b6e43")  # answer ids are uuid5(ANSWERS, job id)
CONFLICT_RETRIES = 5
RESEND_AFTER = 30.0  # seconds a dispatched job may wait for its host to accept before it is sent again
STAGE_OUT_LIMIT = 15 * 60.0  # seconds a job waits for its output files before it ends without them
HOST_REREAD_AFTER = 5.0  # seconds between re-reads of one host whose event failed its signature check


ReadHost = Callable[[str], Awaitable[Host | None]]
ReadHosts = Callable[[], Awaitable[list[Host]]]


@dataclass
class JobManager:
    bus: MessageBus
    topology: Topology
    jobs: Collection
    read_host: ReadHost
    read_hosts: ReadHosts
    lost_timeout: float
    start_timeout: float = 60.0
    """Seconds after its dispatch within which an agent may start a job (``SubmitTask.start_by``):
    past it no agent starts it, so a job not started by then on a silent host can be declared lost."""
    host_refresh_interval: float = 30.0
    clock: Callable[[], float] = time.time
    hosts: HostView = field(default_factory=HostView)
    load: Counter[str] = field(default_factory=Counter)
    rejected_events: Counter[str] = field(default_factory=Counter)
    _hosts_read_at: float = float("-inf")
    _host_reread_at: dict[str, float] = field(default_factory=dict)
    per_job: Serialized = field(default_factory=lambda: Serialized(VersionConflict, attempts=CONFLICT_RETRIES))
    """One message of a job at a time in this process, and a lost race with a twin process (a
    VersionConflict) retried at once with a fresh read, instead of a requeue to the queue's end."""

    def command_router(self) -> Router:
        router = Router()
        router.add(RunJob, self.run_job, serialized=self.per_job, key=job_of)
        router.add(CancelJob, self.cancel_job, serialized=self.per_job, key=job_of)
        router.add(DeleteJob, self.delete_job, serialized=self.per_job, key=job_of)
        return router

    def event_router(self) -> Router:
        router = Router()
        router.add(FilesStagedIn, self.files_staged_in, serialized=self.per_job, key=job_of)
        router.add(TaskAccepted, self.task_accepted, serialized=self.per_job, key=job_of)
        router.add(TaskRunning, self.task_running, serialized=self.per_job, key=job_of)
        router.add(TaskCompleted, self.task_completed, serialized=self.per_job, key=job_of)
        router.add(FileStagedOut, self.file_staged_out, serialized=self.per_job, key=job_of)
        router.add(AgentCommandRefused, self.command_refused, serialized=self.per_job, key=job_of)
        router.add(StagingRefused, self.staging_refused, serialized=self.per_job, key=job_of)
        return router

    def host_router(self) -> Router:
        router = Router()
        router.add(HostChanged, self.host_changed)
        router.add(HostDeleted, self.host_deleted)
        return router

    async def load_hosts(self) -> None:
        """(Re)read every host from the resource manager's records: at start, then now and then."""
        self.hosts.replace_all(await self.read_hosts())
        self._hosts_read_at = self.clock()

    # Commands.

    async def run_job(self, command: RunJob, envelope: Envelope) -> WireModel:
        """Store the job, placed when a host is there, and send it. A reply goes back only when the
        gateway asked (an ``Idempotency-Key``); otherwise the gateway answered once this was published."""
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
            privileged=command.privileged,
            retries=command.retries,
            output_files=command.output_files,
        )
        if command.resource_id and self.hosts.was_deleted(command.resource_id):
            job.update(domain.advance(job, JobState.LOST, job["created_at"], error="its host was deleted") or {})
        # Placed before it is first written, when a host is there: one write instead of two.
        resource_id = None if domain.is_final(job) else self._choose(job)
        if resource_id is not None:
            job.update(self._placement(job, resource_id, job["created_at"]))
        try:
            job = await self.jobs.insert(job)
        except DuplicateKey:
            return await self._run_again(command, envelope)
        if resource_id is not None:
            self.load[resource_id] += 1
            await asyncio.gather(self._changed(job, envelope), self._dispatch(job, envelope))
        else:
            await self._changed(job, envelope)
        return Accepted(id=command.job_id)

    async def _run_again(self, command: RunJob, envelope: Envelope) -> WireModel:
        """A redelivered RunJob, a retry with the same Idempotency-Key, or a manager asking again for
        a job it may have missed the end of: the job is never made twice, and what may have been lost
        after the first delivery (its dispatch, its end) is sent again."""
        job = await self.jobs.get(command.job_id)
        if job is None:
            raise VersionConflict(f"job {command.job_id} clashed on insert and is gone; run again")
        if (job["user"], job["command"]) != (command.user, command.command):
            return Rejected(status=409, error="this Idempotency-Key was used for another job")
        if domain.state_of(job) is JobState.STAGING and job["resource_id"]:
            await self._dispatch(job, envelope)  # placed before a crash, perhaps never sent: the agent runs it once
        elif domain.is_final(job) and job.get("origin"):
            await self._tell_origin(job)
        await self._changed(job, envelope)
        return Accepted(id=command.job_id)

    async def cancel_job(self, command: CancelJob, envelope: Envelope) -> WireModel:
        job, refusal = await self._live_job(command.job_id)
        if refusal is not None:
            return refusal
        if domain.is_final(job):
            return Rejected(status=409, error=f"job {command.job_id} already finished: {job['state']}")
        await self._cancel(job, envelope, reason="cancelled by its user")
        return Accepted(id=command.job_id)

    async def delete_job(self, command: DeleteJob, envelope: Envelope) -> WireModel:
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

    # Events from agents, straight from them: each is checked against its host's verify key.

    async def files_staged_in(self, event: FilesStagedIn, envelope: Envelope) -> None:
        job = await self._job_on_sender(event.job_id, envelope)
        if job is None or domain.state_of(job) is not JobState.STAGING:
            return
        if not event.ok:
            await self._finish(job, JobState.FAILED, error=f"staging files failed: {event.error}")
            return
        await self._submit(job, envelope)

    async def task_accepted(self, event: TaskAccepted, envelope: Envelope) -> None:
        job = await self._job_on_sender(event.job_id, envelope)
        if job is not None:
            await self._step(job, JobState.ACCEPTED, at=event.at, accepted_at=event.at)

    async def task_running(self, event: TaskRunning, envelope: Envelope) -> None:
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
            await self._update(job, changes, envelope)

    async def task_completed(self, event: TaskCompleted, envelope: Envelope) -> None:
        """The outcome, with its answer: a small answer is kept in the job's record under the job's
        answer id (no blob, no request to the data manager); a big one was uploaded by the agent.

        A job with ``output_files`` whose command ran to its end is not final yet: the outcome is
        kept aside (``finishing``) and the agent is asked to stage the files out; the job ends on
        :class:`FileStagedOut` (or, if that never comes, at the sweep)."""
        job = await self._job_on_sender(event.job_id, envelope)
        if job is None or domain.is_final(job):
            return  # a redelivery: the outcome and its answer are stored already
        outcome = event.outcome if event.outcome in FINAL_STATES else JobState.LOST
        fields: dict[str, Any] = {"exit_code": event.exit_code, "error": event.error, "answer_id": event.answer_id}
        fields.update(stdout_id=event.stdout_id, stderr_id=event.stderr_id)
        if event.answer is not None and event.answer_id is None and not job["deleted"]:
            fields.update(answer_id=answer_id_of(job["id"]), answer=event.answer)
        if event.accepted_at is not None and job["accepted_at"] is None:
            fields["accepted_at"] = event.accepted_at
        if event.started_at is not None and job["started_at"] is None:
            fields["started_at"] = event.started_at
        earlier = [(JobState.ACCEPTED, event.accepted_at), (JobState.RUNNING, event.started_at)]
        if job.get("output_files") and event.exit_code is not None and outcome is not JobState.LOST:
            await self._stage_out(job, outcome, at=event.at, earlier=earlier, cause=envelope, fields=fields)
            return
        if job.get("output_files"):
            why = "the command did not run to its end"
            fields["output_errors"] = {pattern: why for pattern in job["output_files"]}
        await self._finish(job, outcome, at=event.at, earlier=earlier, cause=envelope, **fields)

    async def _stage_out(
        self,
        job: dict[str, Any],
        outcome: JobState,
        *,
        at: float,
        earlier: Sequence[tuple[JobState, float | None]],
        cause: Envelope,
        fields: dict[str, Any],
    ) -> None:
        """Keep the outcome aside and ask the agent for the output files (again, on a redelivery)."""
        if job.get("finishing") is None:
            finishing = {"outcome": outcome.value, "at": at, **fields}
            changes = domain.advance_through(job, earlier) or {}
            changes.update(finishing=finishing, stage_out_sent_at=self.clock())
            job = await self._update(job, changes, cause) or job
        await self._ask_stage_out(job, cause)

    async def _ask_stage_out(self, job: dict[str, Any], cause: Envelope | None) -> None:
        command = StageOutFile(job_id=domain.task_id(job), patterns=list(job["output_files"]))
        await self._to_agent(command, cause, job)

    async def file_staged_out(self, event: FileStagedOut, envelope: Envelope) -> None:
        """The output files are stored: the job ends with the outcome kept aside."""
        job = await self._job_on_sender(event.job_id, envelope)
        if job is None or domain.is_final(job) or job.get("finishing") is None:
            return  # a redelivery, or an answer to a request this job never made
        await self._finish_staged(job, event.files, event.errors, cause=envelope)

    async def _finish_staged(
        self, job: dict[str, Any], files: dict[str, str], errors: dict[str, str], *, cause: Envelope | None
    ) -> None:
        fields = dict(job["finishing"])
        outcome, at = JobState(fields.pop("outcome")), fields.pop("at")
        if job["deleted"]:
            fields.pop("answer", None)
        await self._finish(job, outcome, at=at, cause=cause, outputs=files, output_errors=errors, **fields)

    async def staging_refused(self, event: StagingRefused, envelope: Envelope) -> None:
        """The data manager could not stage the job's files: nothing will run it."""
        job = await self._job_of_task(event.job_id)
        if job is not None and domain.state_of(job) is JobState.STAGING:
            await self._finish(job, JobState.FAILED, error=f"staging files failed: {event.error}", cause=envelope)

    async def command_refused(self, event: AgentCommandRefused, envelope: Envelope) -> None:
        if event.job_id is None:
            return
        job = await self._job_of_task(event.job_id)
        if job is None or job["resource_id"] != event.resource_id or domain.state_of(job) is not JobState.STAGING:
            return
        # Not taken: place it again (elsewhere, unless pinned) at the next sweep.
        await self._update(job, {"resource_id": None, "error": f"host {event.resource_id}: {event.reason}"})
        self.load[event.resource_id] -= 1

    # Host events: this manager's own view of hosts.

    async def host_changed(self, event: HostChanged, envelope: Envelope) -> None:
        before, after = self.hosts.apply(event)
        if after.takes_jobs and (before is None or not before.takes_jobs):
            await self._sweep_unplaced()  # jobs waiting for a host (or for this one) may go now
        for task_id in event.running_jobs:  # its agent is back and still runs these: are they still wanted?
            job_id, attempt = domain.parse_task_id(task_id)
            job = await self.jobs.get(job_id)
            if job is None or not (domain.is_final(job) or domain.attempt_of(job) != attempt):
                continue
            why = f"the job ended {job['state']} while its host was away"
            if not domain.is_final(job):
                why = f"the job moved on to attempt {domain.attempt_of(job)} while its host was away"
            log.info("task %s: its agent still runs it; stopping it (%s)", task_id, why, extra={"job_id": job_id})
            stop = CancelTask(job_id=task_id, reason=why)
            cancel = envelope.caused(stop, sender=SENDER, resource_id=event.resource_id)
            key = self.topology.agent_routing_key(event.resource_id, CancelTask.message_type)
            await self.bus.publish(self.topology.agent_commands, cancel, key)

    async def host_deleted(self, event: HostDeleted, envelope: Envelope) -> None:
        self.hosts.remove(event.resource_id)
        self.load.pop(event.resource_id, None)
        why = f"its host {event.resource_id} was deleted"
        async for job in each(
            self.jobs, {"resource_id": event.resource_id, "state": {"$in": ["staging", "accepted", "running"]}}
        ):
            with suppress(VersionConflict):  # a twin, or the job's own event, came first
                await self._finish(job, JobState.LOST, error=why)
        async for job in each(self.jobs, {"pinned_resource": event.resource_id, "state": "pending"}):
            with suppress(VersionConflict):
                await self._finish(job, JobState.LOST, error=why)

    # The sweep: what no message will trigger (time passing, hosts going silent, missed events).

    async def sweep(self) -> None:
        """One pass; a job that changed under it (a twin, an event) is left for the next pass."""
        now = self.clock()
        if now - self._hosts_read_at > self.host_refresh_interval:
            await self.load_hosts()
        async for job in each(self.jobs, {"deleted": False, "expires_at": {"$lte": now}}):
            with suppress(VersionConflict):
                await self._delete(job, None, reason="its ttl ran out")
        await self._sweep_unplaced()
        await self._sweep_active(now)

    async def _sweep_unplaced(self) -> None:
        waiting = {"state": {"$in": ["pending", "staging"]}, "resource_id": None, "deleted": False}
        if not self.hosts.ready():
            waiting["pinned_resource"] = {"$ne": None}  # only a deletion can move these now
        async for job in each(self.jobs, waiting, sort=[("created_at", 1)]):
            with suppress(VersionConflict):
                await self._place(job, None)

    async def _sweep_active(self, now: float) -> None:
        load: Counter[str] = Counter()
        active = {"state": {"$in": ["staging", "accepted", "running"]}}
        async for job in each(self.jobs, active):
            rid = job["resource_id"]
            if rid is None:
                continue
            lost = domain.why_lost(job, self.hosts.get(rid), deleted=self.hosts.was_deleted(rid), now=now,
                                   lost_timeout=self.lost_timeout)  # fmt: skip
            if job.get("finishing") is not None:
                with suppress(VersionConflict):
                    await self._sweep_stage_out(job, lost, now)
                continue
            if lost is not None:
                with suppress(VersionConflict):
                    await self._finish(job, JobState.LOST, error=lost)
                continue
            load[rid] += 1
            host = self.hosts.get(rid)
            stuck = domain.state_of(job) is JobState.STAGING and now - (job["dispatched_at"] or now) > RESEND_AFTER
            if stuck and host is not None and host.takes_jobs:
                with suppress(VersionConflict):
                    job = await self._update(job, {"dispatched_at": now})
                    if job is not None:
                        await self._dispatch(job, None)
        self.load = load

    async def _sweep_stage_out(self, job: dict[str, Any], lost: str | None, now: float) -> None:
        """A job whose command ended and whose output files are not staged out yet: ask again (a
        StageOutFile or its answer lost with a broker, a manager killed between the two), or end it
        without them once its host is gone or it waited too long. Never left unfinished."""
        if lost is None and now - job["finishing"]["at"] > STAGE_OUT_LIMIT:
            lost = f"its host did not stage them out within {STAGE_OUT_LIMIT:g}s"
        if lost is not None:
            why = f"not staged out: {lost}"
            await self._finish_staged(job, {}, {pattern: why for pattern in job["output_files"]}, cause=None)
        elif now - (job.get("stage_out_sent_at") or 0.0) > RESEND_AFTER:
            asked = await self._update(job, {"stage_out_sent_at": now})
            if asked is not None:
                await self._ask_stage_out(asked, None)

    # Steps.

    def _choose(self, job: dict[str, Any]) -> str | None:
        """The host for a job now, from this manager's view of hosts, or None to wait."""
        pinned = job["pinned_resource"]
        if pinned:
            host = self.hosts.get(pinned)
            return pinned if host is not None and host.takes_jobs else None
        usable = [host for host in self.hosts.ready() if host.takes_jobs_of(job["user"])]
        return domain.choose_host(usable, self.load, avoid=job.get("lost_on") or ())

    def _placement(self, job: dict[str, Any], resource_id: str, now: float) -> dict[str, Any]:
        changes = domain.advance(job, JobState.STAGING, now) or {}
        changes.update(resource_id=resource_id, dispatched_at=now, start_by=now + self.start_timeout)
        return changes

    async def _place(self, job: dict[str, Any], cause: Envelope | None) -> None:
        pinned = job["pinned_resource"]
        if pinned and self.hosts.was_deleted(pinned):
            await self._finish(job, JobState.LOST, error=f"its host {pinned} was deleted")
            return
        if (job.get("retry_at") or 0.0) > self.clock():
            return  # a retry waits out its backoff; the sweep places it then
        resource_id = self._choose(job)
        if resource_id is None:
            return  # stays waiting; a host event or the sweep tries again
        placed = await self._update(job, self._placement(job, resource_id, self.clock()), cause)
        if placed is None:
            return
        self.load[resource_id] += 1
        await self._dispatch(placed, cause)

    async def _dispatch(self, job: dict[str, Any], cause: Envelope | None) -> None:
        files = [job["binary"]] if job["binary"] else []
        files += job["input_files"]
        if not files:
            await self._submit(job, cause)
            return
        command = StageJobFiles(
            job_id=domain.task_id(job), resource_id=job["resource_id"], data_ids=files, binary=job["binary"]
        )
        await self.bus.publish(self.topology.commands, self._envelope(command, cause, job))

    async def _submit(self, job: dict[str, Any], cause: Envelope | None) -> None:
        """Straight to the agent's own queue: this manager's view says its host takes jobs (the
        refusal seed 000 asks of the proxy, made without a hop)."""
        command = SubmitTask(
            job_id=domain.task_id(job),
            command=job["command"],
            deadline=job["expires_at"],
            start_by=job.get("start_by"),
            user=job["user"],
            privileged=job.get("privileged", False),
            stage_out=bool(job.get("output_files")),
        )
        await self._to_agent(command, cause, job)

    async def _to_agent(self, command: WireModel, cause: Envelope | None, job: dict[str, Any]) -> None:
        key = self.topology.agent_routing_key(job["resource_id"], command.message_type)
        await self.bus.publish(self.topology.agent_commands, self._envelope(command, cause, job), key)

    async def _cancel(self, job: dict[str, Any], cause: Envelope | None, *, reason: str) -> None:
        if job["resource_id"] is None or domain.state_of(job) is JobState.PENDING:
            await self._finish(job, JobState.CANCELLED, error=reason, cause=cause)
            return
        job = await self._update(job, {"cancel_requested": True}) or job
        await self._to_agent(CancelTask(job_id=domain.task_id(job), reason=reason), cause, job)

    async def _delete(self, job: dict[str, Any], cause: Envelope | None, *, reason: str) -> None:
        if not domain.is_final(job):
            await self._cancel(job, cause, reason=reason)
            job = await self.jobs.get(job["id"]) or job
        gone = {"deleted": True, "deleted_reason": reason, "deleted_at": self.clock(), "answer": None}
        await self._update(job, gone, cause)
        # A big answer is a data item the agent uploaded: the data manager owns it.
        if job.get("answer_id") and job.get("answer") is None:
            await self._forget_answer(job["answer_id"], job, cause)
        await self._forget_streams(job, job, cause)

    async def _finish(
        self,
        job: dict[str, Any],
        outcome: JobState,
        *,
        at: float | None = None,
        earlier: Sequence[tuple[JobState, float | None]] = (),
        cause: Envelope | None = None,
        **fields: Any,
    ) -> None:
        at = at or self.clock()
        if outcome is JobState.LOST and await self._retry(job, at, error=fields.get("error"), cause=cause):
            return
        if job["deleted"]:
            fields.pop("answer", None)
        changes = domain.advance_through(job, [*earlier, (outcome, at)], finished_at=at, **fields)
        if changes is None:
            return
        finished = await self._update(job, changes, cause)
        if finished is not None and job["resource_id"]:
            self.load[job["resource_id"]] -= 1
        if finished is not None and finished.get("origin"):
            await self._tell_origin(finished)
        if job["deleted"] and fields.get("answer_id") and "answer" not in fields:
            await self._forget_answer(fields["answer_id"], job, None)
        if job["deleted"]:
            await self._forget_streams(fields, job, None)  # they came after the job went
        log.info(
            "job %s %s",
            job["id"],
            changes["state"],
            extra={"job_id": job["id"], "resource_id": job["resource_id"]},
        )

    async def _retry(self, job: dict[str, Any], at: float, *, error: str | None, cause: Envelope | None) -> bool:
        """Start the next attempt of a lost job that has retries left (placed by the sweep once its
        backoff has passed); False when it has none and so ends lost."""
        pinned = job["pinned_resource"]
        if pinned and self.hosts.was_deleted(pinned):
            return False
        changes = domain.retry(job, at, error=error)
        if changes is None:
            return False
        retried = await self._update(job, changes, cause)
        if retried is not None and job["resource_id"]:
            self.load[job["resource_id"]] -= 1
        log.info(
            "job %s lost (%s): attempt %d in %gs",
            job["id"],
            error,
            changes["attempt"],
            changes["retry_at"] - at,
            extra={"job_id": job["id"], "resource_id": job["resource_id"]},
        )
        return True

    async def _tell_origin(self, job: dict[str, Any]) -> None:
        """The manager that asked for this job hears that it ended. Lost if this process dies right
        here: that manager asks for the job again now and then, and hears it then."""
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

    async def _update(
        self, job: dict[str, Any], changes: dict[str, Any], cause: Envelope | None = None
    ) -> dict[str, Any] | None:
        """Write with the version read, and broadcast the change when the state moved or the job went.
        A VersionConflict propagates: the message is redelivered and the handler reads the job again."""
        try:
            updated = await self.jobs.update(job["id"], changes, expected_version=job["version"])
        except NotFound:
            return None
        if "state" in changes or "deleted" in changes:
            await self._changed(updated, cause)
        return updated

    async def _changed(self, job: dict[str, Any], cause: Envelope | None) -> None:
        event = JobChanged(
            job_id=job["id"],
            user=job["user"],
            state=job["state"],
            at=job["history"][-1]["at"],
            exit_code=job["exit_code"],
            answer_id=job["answer_id"],
            deleted=job["deleted"],
        )
        await self.bus.publish(self.topology.events, self._envelope(event, cause, job))

    async def _job_on_sender(self, task_id: str, envelope: Envelope) -> dict[str, Any] | None:
        """The job, if the event is signed by the host that runs it (no host speaks for another's job)
        and is about its current attempt."""
        await self._verify(envelope)
        job = await self._job_of_task(task_id)
        if job is None or job["resource_id"] != envelope.resource_id:
            return None
        return job

    async def _job_of_task(self, task_id: str) -> dict[str, Any] | None:
        """The job whose current attempt has this task id (an event of an earlier attempt finds none)."""
        job_id, attempt = domain.parse_task_id(task_id)
        job = await self.jobs.get(job_id)
        return job if job is not None and domain.attempt_of(job) == attempt else None

    async def _verify(self, envelope: Envelope) -> None:
        """Drop (and count) an event not signed by the host it names, or not published under that
        host's routing key for it. A host this view does not know
        yet, or whose key changed (a joining agent adopted it), is read again, at most every few seconds."""
        rid = envelope.resource_id
        if not rid or not envelope.signature:
            self.rejected_events["unsigned"] += 1
            raise Drop(f"unsigned agent event {envelope.type} {envelope.message_id}")
        if not routed_from_its_host(envelope):
            self.rejected_events["wrong routing key"] += 1
            key = envelope.routing_key
            log.warning("rejected agent event %s claiming host %s under key %s", envelope.type, rid, key)
            raise Drop(f"agent event {envelope.type} of host {rid} came under key {envelope.routing_key}")
        host = self.hosts.get(rid)
        if host is not None and signed_by(envelope, host.verify_key):
            return
        now = self.clock()
        if now - self._host_reread_at.get(rid, float("-inf")) > HOST_REREAD_AFTER:
            self._host_reread_at[rid] = now
            fresh = await self.read_host(rid)
            if fresh is not None:
                self.hosts.replace(fresh)
                if signed_by(envelope, fresh.verify_key):
                    return
        self.rejected_events["unknown host" if host is None else "bad signature"] += 1
        log.warning("rejected agent event %s claiming host %s", envelope.type, rid, extra={"resource_id": rid})
        raise Drop(f"agent event {envelope.type} not signed by host {rid}")

    async def _forget_streams(self, fields: Mapping[str, Any], job: dict[str, Any], cause: Envelope | None) -> None:
        """The stored stdout and stderr are the job's log: they go with it. Its output files stay:
        they are the user's data files (listed by ``GET /api/data``, deleted by the user)."""
        for key in ("stdout_id", "stderr_id"):
            if fields.get(key):
                await self._forget_answer(fields[key], job, cause)

    async def _forget_answer(self, answer_id: str, job: dict[str, Any], cause: Envelope | None) -> None:
        forget = DeleteContent(item_id=answer_id)
        await self.bus.publish(self.topology.commands, self._envelope(forget, cause, job))

    def _envelope(self, payload: WireModel, cause: Envelope | None, job: dict[str, Any]) -> Envelope:
        if cause is not None:
            return cause.caused(payload, sender=SENDER, resource_id=job["resource_id"])
        return Envelope(payload, sender=SENDER, correlation_id=job["id"], resource_id=job["resource_id"])


class AboutAJob(Protocol):
    @property
    def job_id(self) -> str | None: ...


def job_of(message: AboutAJob, envelope: Envelope) -> str | None:
    """The job a message is about: every attempt of a job (a task id) under the job's one lock."""
    return None if message.job_id is None else domain.parse_task_id(message.job_id)[0]


def answer_id_of(job_id: str) -> str:
    """The id under which a job's answer is found, fixed by the job: a redelivery stores it once."""
    return str(uuid.uuid5(ANSWERS, job_id))
