"""The agent's answers to seed 003's live queries: memory, reboot, containers, their jobs and processes.

Every answer is an envelope caused by the query and signed with this host's key, so the gateway can
tell it from anything else on the bus before it trusts it. A query is not acted on once its
``deadline`` has passed (whoever asked has had a 504; a reboot must not happen behind their back):
the broker expires a query that waited in a queue too long, but not one it had already pushed to
an agent that then hung. The deadline is the gateway's clock read by this host's, so the fleet's
clocks are assumed to agree (NTP), as a job's ttl already assumes. A query delivered again (its
reply was lost) gets the answer already given, not a second run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import psutil

from broker.envelope import Envelope
from broker.port import Drop
from broker.router import Router
from schemas.base import Accepted, Rejected, WireModel
from schemas.pool import (
    ContainerJobLog,
    ContainerJobs,
    ContainerProcesses,
    CreateContainer,
    DeleteContainer,
    KillContainerJob,
    ListContainerJobs,
    ListContainerProcesses,
    ListContainers,
    NodeContainers,
    NodeMemory,
    NodeQuery,
    ReadContainerJobLog,
    ReadMemory,
    RebootNode,
    StartContainerProcess,
)
from services.agent.containers import Containers
from services.agent.sandbox import PoolError

log = logging.getLogger(__name__)

DEFAULT_REBOOT_COMMAND = "systemctl reboot"
REBOOT_WAIT = 2.0  # seconds to wait for the reboot command to fail before saying it runs
REMEMBERED_ANSWERS = 256

Sign = Callable[[Envelope], Envelope]


class NodeQueries:
    def __init__(
        self,
        resource_id: str,
        sign: Sign,
        containers: Containers,
        *,
        allow_reboot: bool = False,
        reboot_command: str = DEFAULT_REBOOT_COMMAND,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resource_id = resource_id
        self._sign = sign
        self.containers = containers
        self._allow_reboot = allow_reboot
        self._reboot_command = reboot_command
        self._clock = clock
        self._answered: OrderedDict[str, Envelope] = OrderedDict()
        self._reboots: set[asyncio.Task[Any]] = set()

    def route(self, router: Router) -> None:
        handlers: dict[type[NodeQuery], Callable[[Any], Awaitable[WireModel]]] = {
            ReadMemory: self.read_memory,
            RebootNode: self.reboot,
            ListContainers: self.list_containers,
            CreateContainer: self.create_container,
            DeleteContainer: self.delete_container,
            ListContainerJobs: self.list_jobs,
            KillContainerJob: self.kill_job,
            ReadContainerJobLog: self.read_job_log,
            ListContainerProcesses: self.list_processes,
            StartContainerProcess: self.start_process,
        }
        for query, handler in handlers.items():
            router.add(query, self._answering(handler))

    def _answering(
        self, handler: Callable[[Any], Awaitable[WireModel]]
    ) -> Callable[[NodeQuery, Envelope], Awaitable[Envelope]]:
        async def answer(query: NodeQuery, envelope: Envelope) -> Envelope:
            known = self._answered.get(envelope.message_id)
            if known is not None:
                return known
            if self._clock() > query.deadline:
                raise Drop(f"{envelope.type} {envelope.message_id} is past its deadline: not acting on it")
            try:
                payload = await handler(query)
            except PoolError as refusal:
                payload = Rejected(status=refusal.status, error=refusal.message)
            reply = self._sign(
                envelope.caused(payload, sender=f"agent:{self.resource_id}", resource_id=self.resource_id)
            )
            self._answered[envelope.message_id] = reply
            while len(self._answered) > REMEMBERED_ANSWERS:
                self._answered.popitem(last=False)
            return reply

        return answer

    # The node.

    async def read_memory(self, query: ReadMemory) -> NodeMemory:
        return await asyncio.to_thread(read_memory)

    async def reboot(self, query: RebootNode) -> WireModel:
        if not self._allow_reboot:
            raise PoolError(
                403, "this node's agent was not started with --allow-reboot, so it does not reboot its host"
            )
        log.warning("rebooting this host: %s", self._reboot_command)
        process = await asyncio.create_subprocess_shell(
            self._reboot_command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        # Never cancelled (a cancelled wait would let the command be killed): it finishes on its own.
        finished = asyncio.ensure_future(process.communicate())
        self._reboots.add(finished)
        finished.add_done_callback(self._reboots.discard)
        await asyncio.wait({finished}, timeout=REBOOT_WAIT)
        if finished.done() and process.returncode != 0:
            output = (finished.result()[0] or b"").decode(errors="replace").strip()[-500:]
            raise PoolError(
                500, f"the reboot command {self._reboot_command!r} failed with exit code {process.returncode}: {output}"
            )
        return Accepted(id=self.resource_id)

    # Containers.

    async def list_containers(self, query: ListContainers) -> NodeContainers:
        return NodeContainers(containers=await self.containers.list())

    async def create_container(self, query: CreateContainer) -> Accepted:
        await self.containers.create(query.spec, query.rootfs_id)
        return Accepted(id=query.spec.id)

    async def delete_container(self, query: DeleteContainer) -> Accepted:
        await self.containers.delete(query.container_id)
        return Accepted(id=query.container_id)

    async def list_jobs(self, query: ListContainerJobs) -> ContainerJobs:
        return ContainerJobs(jobs=await self.containers.jobs(query.container_id))

    async def kill_job(self, query: KillContainerJob) -> Accepted:
        await self.containers.kill_job(query.container_id, query.job_id)
        return Accepted(id=query.job_id)

    async def read_job_log(self, query: ReadContainerJobLog) -> ContainerJobLog:
        return await self.containers.read_log(query.container_id, query.job_id, query.offset, query.limit)

    async def list_processes(self, query: ListContainerProcesses) -> ContainerProcesses:
        return ContainerProcesses(processes=await self.containers.processes(query.container_id))

    async def start_process(self, query: StartContainerProcess) -> Accepted:
        return Accepted(id=await self.containers.start(query.container_id, query.process))


def read_memory() -> NodeMemory:
    """This host's memory as psutil reads it; ``usedPercent`` is ``used / total`` as in the seed's
    sample, and ``wired`` (a BSD and macOS notion) is 0 on Linux."""
    memory = psutil.virtual_memory()
    return NodeMemory(
        active=getattr(memory, "active", 0),
        available=memory.available,
        buffers=getattr(memory, "buffers", 0),
        cached=getattr(memory, "cached", 0),
        free=memory.free,
        inactive=getattr(memory, "inactive", 0),
        total=memory.total,
        used=memory.used,
        usedPercent=100.0 * memory.used / memory.total if memory.total else 0.0,
        wired=getattr(memory, "wired", 0),
    )
