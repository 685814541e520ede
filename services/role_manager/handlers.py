"""Handlers of the role manager: commands from the gateway, the end of its jobs, and the sweep.

A role change on a host runs as a job of the job manager, pinned to that host, with this manager as
its origin. Delivery is at least once and a twin may run in another process, so:

* every write is made with the version read (a lost race is retried with a fresh read);
* a change's job id is written to the host's document *before* the job is asked for, and asking
  again for the same job id is answered with the same job: a manager killed between the two asks
  again after its restart (the sweep), and the script runs once;
* one change runs on a host at a time: a second can start only once the host's document shows no
  job, and only one of two racing writers gets to write its job id.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from broker.envelope import Envelope
from broker.port import MessageBus
from broker.router import Router
from broker.serial import Serialized
from broker.topology import Topology
from schemas.base import Accepted, Rejected, WireModel
from schemas.jobs import JobFinished, RunJob
from schemas.resources import AuthorizeResource, HostDeleted
from schemas.roles import ActivateRoleVersion, ApplyRole, DeleteHostRoles, RegisterRoleVersion, RemoveRole
from services.role_manager import domain
from services.store.port import Collection, DuplicateKey, VersionConflict

log = logging.getLogger(__name__)

SENDER = "role-manager"
CONFLICT_RETRIES = 8
Document = dict[str, Any]
C = TypeVar("C", bound=WireModel)
CommandHandler = Callable[[C, Envelope], Awaitable[WireModel]]


@dataclass
class RoleManager:
    bus: MessageBus
    topology: Topology
    roles: Collection
    hosts: Collection
    backoff: domain.Backoff = field(default_factory=domain.Backoff)
    reask_after: float = 10.0
    """Seconds before the job of a running change is asked for again: the job manager answers a repeated
    ask for a job that ended with its end again, so an end missed here (or an ask lost) is caught."""
    clock: Callable[[], float] = time.time
    _asked: dict[str, float] = field(default_factory=dict)
    per_host: Serialized = field(
        default_factory=lambda: Serialized(VersionConflict, attempts=CONFLICT_RETRIES, backoff=0.002)
    )
    """One change of a host's roles at a time in this process (twins are kept apart by versions), and
    a lost race with a twin (or a concurrent handler) retried at once, reading afresh."""

    def command_router(self) -> Router:
        router = Router()
        router.add(RegisterRoleVersion, self._replying(self.register_version), serialized=self.per_host)
        router.add(ActivateRoleVersion, self._replying(self.activate_version), serialized=self.per_host)
        router.add(ApplyRole, self._replying(self.apply_role), serialized=self.per_host, key=host_of)
        router.add(RemoveRole, self._replying(self.remove_role), serialized=self.per_host, key=host_of)
        router.add(DeleteHostRoles, self._replying(self.delete_host), serialized=self.per_host, key=host_of)
        return router

    def event_router(self) -> Router:
        router = Router()
        router.add(JobFinished, self.job_finished, serialized=self.per_host, key=sender_host)
        router.add(HostDeleted, self.host_deleted)
        return router

    @staticmethod
    def _replying(handler: CommandHandler[C]) -> CommandHandler[C]:
        """A refused command answers with its status (a lost race with a twin is retried by the router)."""

        async def handle(command: C, envelope: Envelope) -> WireModel:
            try:
                return await handler(command, envelope)
            except domain.RoleError as refusal:
                return Rejected(status=refusal.status, error=refusal.error)

        return handle

    # Roles and versions.

    async def register_version(self, command: RegisterRoleVersion, envelope: Envelope) -> WireModel:
        version = domain.new_version(
            version=command.version,
            display_name=command.display_name,
            description=command.description,
            install=command.install,
            remove=command.remove,
            now=self.clock(),
        )
        role = await self.roles.get(command.name)
        if role is None:
            try:
                await self.roles.insert(domain.new_role(command.name, version))
                log.info("role %s registered at version %s", command.name, command.version)
                return Accepted(id=command.name)
            except DuplicateKey:
                role = await self.roles.get(command.name)
                assert role is not None
        versions = domain.add_version(role, version)
        if versions is not None:
            await self.roles.update(role["id"], {"versions": versions}, expected_version=role["version"])
            log.info("role %s: version %s registered", command.name, command.version)
        return Accepted(id=command.name)

    async def activate_version(self, command: ActivateRoleVersion, envelope: Envelope) -> WireModel:
        role = await self._role(command.name)
        if domain.find_version(role, command.version) is None:
            raise domain.RoleError(404, f"version {command.version} of role {command.name} not found")
        if role["active_version"] != command.version:
            await self.roles.update(role["id"], {"active_version": command.version}, expected_version=role["version"])
        return Accepted(id=command.name)

    async def _role(self, name: str) -> Document:
        role = await self.roles.get(name)
        if role is None:
            raise domain.RoleError(404, f"role {name} not found")
        return role

    # Roles on hosts.

    async def apply_role(self, command: ApplyRole, envelope: Envelope) -> WireModel:
        role = await self._role(command.name)
        if command.authorize:  # assigning a role is how an admin authorizes a host
            authorize = envelope.caused(AuthorizeResource(resource_id=command.host_id), sender=SENDER)
            await self.bus.publish(self.topology.commands, authorize)
        host = await self._host(command.host_id)
        roles = domain.apply(host, command.name, role["active_version"], command.requested_by)
        if roles is not None:
            host = await self._write(host, roles, deleting=False, deleted_at=None)
            log.info("role %s applied at %s", command.name, role["active_version"], extra={"resource_id": host["id"]})
        await self._converge(host, envelope)
        return Accepted(id=command.host_id)

    async def remove_role(self, command: RemoveRole, envelope: Envelope) -> WireModel:
        host = await self._host(command.host_id)
        host = await self._write(host, domain.remove(host, command.name, command.requested_by))
        await self._converge(host, envelope)
        return Accepted(id=command.host_id)

    async def delete_host(self, command: DeleteHostRoles, envelope: Envelope) -> WireModel:
        """Seed 002: remove every role; an inactive host without roles is left as it is."""
        host = await self._host(command.host_id)
        if not host["roles"]:
            return Accepted(id=command.host_id)
        host = await self._write(host, domain.remove_all(host, command.requested_by), deleting=True)
        await self._converge(host, envelope)
        return Accepted(id=command.host_id)

    # The end of a change's job.

    async def job_finished(self, event: JobFinished, envelope: Envelope) -> None:
        """The end of a change's job, on the host it ran on (the router holds that host's lock)."""
        host_id = envelope.resource_id
        if event.origin != SENDER or host_id is None:
            return
        host = await self.hosts.get(host_id)
        if host is None:
            return
        job = {"state": event.state, "exit_code": event.exit_code, "answer_id": event.answer_id, "error": event.error}
        roles = domain.finish(host, event.job_id, job, self.clock(), self.backoff)
        if roles is None:
            return  # told before
        host = await self._write(host, roles)
        log.info("role job %s on %s ended %s", event.job_id, host_id, event.state, extra={"resource_id": host_id})
        await self._converge(host, envelope)

    async def host_deleted(self, event: HostDeleted, envelope: Envelope) -> None:
        """The resource is gone from the registry: so is what this manager knew of its roles."""
        await self.hosts.delete(event.resource_id)

    # Convergence: start the next change on a host, and the sweep that keeps every host moving.

    async def _converge(self, host: Document, cause: Envelope | None) -> None:
        """Start the host's next change, if one may start now; the caller runs under ``per_host``."""
        change = domain.next_change(host, self.clock())
        if change is None:
            if host["deleting"] and not host["roles"]:
                await self._write(host, {}, deleting=False, deleted_at=self.clock())
            return
        role = await self.roles.get(change.name)
        if role is None:  # cannot happen: roles are never deleted
            log.error("role %s of host %s is not registered", change.name, host["id"])
            return
        job_id = str(uuid.uuid4())
        host = await self._write(host, domain.start(host, change, job_id))
        await self._ask_for_job(host, change.name, role, cause)

    async def _ask_for_job(self, host: Document, name: str, role: Document, cause: Envelope | None) -> None:
        """Ask the job manager for the job whose id the host's document holds (again, after a crash:
        the same id gives the same job)."""
        entry = host["roles"][name]
        change = domain.Change(name, entry["op"], entry["op_version"])
        command = RunJob(
            job_id=entry["job_id"],
            user=entry["requested_by"] or "admin",
            command=domain.script_command(role, change, entry["version"]),
            resource_id=host["id"],
            origin=SENDER,
            privileged=True,  # role scripts install packages: they run as the agent's user, unsandboxed
        )
        if cause is None:
            ask = Envelope(command, sender=SENDER, correlation_id=entry["job_id"], resource_id=host["id"])
        else:
            ask = cause.caused(command, sender=SENDER, resource_id=host["id"])
        await self.bus.publish(self.topology.commands, ask)
        self._asked[entry["job_id"]] = self.clock()

    async def sweep(self) -> None:
        """Start changes whose retry time came, and ask again for the jobs of running changes not asked
        for lately: one never asked for (this manager died in between) is made then, and the end of one
        that ended unheard is told again."""
        now = self.clock()
        found = await self.hosts.find({"needs_work": True}, limit=10_000)
        running: set[str] = set()
        for host in found.items:
            for name, entry in host["roles"].items():
                if entry["job_id"] is None:
                    continue
                running.add(entry["job_id"])
                if now - self._asked.get(entry["job_id"], float("-inf")) > self.reask_after:
                    role = await self.roles.get(name)
                    if role is not None:
                        await self._ask_for_job(host, name, role, None)
            await self.per_host.run(host["id"], lambda h=host: self._converge_fresh(h["id"]))
        self._asked = {job_id: at for job_id, at in self._asked.items() if job_id in running}

    async def _converge_fresh(self, host_id: str) -> None:
        host = await self.hosts.get(host_id)
        if host is not None:
            await self._converge(host, None)

    # Store access.

    async def _host(self, host_id: str) -> Document:
        host = await self.hosts.get(host_id)
        if host is not None:
            return host
        try:
            return await self.hosts.insert(domain.new_host(host_id))
        except DuplicateKey:
            return await self.hosts.get(host_id) or domain.new_host(host_id)

    async def _write(self, host: Document, roles: dict[str, Document], **fields: Any) -> Document:
        changes = {"roles": roles, "needs_work": domain.needs_work(roles), **fields}
        return await self.hosts.update(host["id"], changes, expected_version=host["version"])


def host_of(command: ApplyRole | RemoveRole | DeleteHostRoles, envelope: Envelope) -> str:
    return command.host_id


def sender_host(event: JobFinished, envelope: Envelope) -> str | None:
    """The host a change's job ran on: the job manager names it on the envelope."""
    return envelope.resource_id
