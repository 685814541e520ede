"""The agent's lifetime: consume its own queue, heartbeat with host facts, sign what it says.

Agent events go to the agent-events exchange under a routing key that starts with this host's id,
straight to the manager each is for (task events to the job manager, heartbeats to the resource
manager), which checks the signature against this host's verify key. Answers to live queries
(:mod:`services.agent.node`) are signed the same way. Stopping the agent stops its tasks' reports,
not its containers, which outlive it (:mod:`services.agent.containers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from broker import codec
from broker.envelope import Envelope
from broker.port import BusError, MessageBus, Subscription
from broker.router import Router
from broker.topology import Topology
from schemas.base import WireModel
from schemas.jobs import CancelTask, StageInFiles, StageOutFile, SubmitTask, WatchOutput
from schemas.resources import Heartbeat
from services.agent.containers import Containers
from services.agent.data_client import DataClient
from services.agent.facts import read_host_facts
from services.agent.node import DEFAULT_REBOOT_COMMAND, NodeQueries
from services.agent.supervisor import JobOptions
from services.agent.tasks import TaskRunner
from services.security import signing_key
from services.settings import Settings
from services.tls import gateway_context

log = logging.getLogger(__name__)


class Agent:
    name = "agent"

    def __init__(
        self,
        bus: MessageBus,
        topology: Topology,
        *,
        resource_id: str,
        token: str,
        heartbeat_interval: float,
        state_dir: Path,
        gateway_url: Callable[[], str],
        kill_grace: float = 5.0,
        max_parallel_tasks: int = 64,
        workdir_retention: float = 3600.0,
        allow_reboot: bool = False,
        reboot_command: str = DEFAULT_REBOOT_COMMAND,
        container_tool: str = "bwrap",
        container_uid: int | None = 65534,
        job_options: JobOptions | None = None,
        gateway_tls: ssl.SSLContext | None = None,
    ) -> None:
        self._bus = bus
        self._topology = topology
        self.resource_id = resource_id
        self._key = signing_key(token)
        self._heartbeat_interval = heartbeat_interval
        self._workdir_retention = workdir_retention
        self._subscriptions: list[Subscription] = []
        self._heartbeats: asyncio.Task[None] | None = None
        self._data = DataClient(gateway_url, token, tls=gateway_tls)
        self.tasks = TaskRunner(
            state_dir, self.say, self._data, kill_grace=kill_grace, max_parallel=max_parallel_tasks, options=job_options
        )
        self.router = Router()
        self.router.add(SubmitTask, self.tasks.submit_task)
        self.router.add(CancelTask, self.tasks.cancel_task)
        self.router.add(StageInFiles, self.tasks.stage_in_files)
        self.router.add(StageOutFile, self.tasks.stage_out_file)
        self.router.add(WatchOutput, self.tasks.output.watch_output)
        containers = Containers(
            state_dir / "containers", self._data, tool=container_tool, kill_grace=kill_grace, uid=container_uid
        )
        self.node = NodeQueries(
            resource_id, self.signed, containers, allow_reboot=allow_reboot, reboot_command=reboot_command
        )
        self.node.route(self.router)

    async def start(self) -> None:
        for queue in (self._topology.agent_queue(self.resource_id), self._topology.agent_live_queue(self.resource_id)):
            self._subscriptions.append(await self._bus.subscribe(queue, self.router))
        await self.tasks.recover()
        self._heartbeats = asyncio.create_task(self._heartbeat_forever())
        log.info("agent for resource %s started", self.resource_id)

    async def stop(self) -> None:
        if self._heartbeats:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats
        for subscription in self._subscriptions:
            await subscription.cancel()
        await self.tasks.stop()
        await self._data.close()

    def signed(self, envelope: Envelope) -> Envelope:
        """``envelope`` with this host's signature over every field but the signature."""
        return envelope.with_signature(self._key.sign(codec.signed_bytes(envelope)))

    async def say(self, payload: WireModel, *, caused_by: Envelope | None = None, transient: bool = False) -> None:
        """Publish a signed event for this host on the agent-events exchange, under its own id."""
        sender = f"agent:{self.resource_id}"
        if caused_by is not None:
            envelope = caused_by.caused(payload, sender=sender, resource_id=self.resource_id)
        else:
            envelope = Envelope(payload, sender=sender, resource_id=self.resource_id)
        await self._bus.publish(
            self._topology.agent_events,
            self.signed(envelope),
            self._topology.agent_routing_key(self.resource_id, payload.message_type),
            transient=transient,
        )

    async def _heartbeat_forever(self) -> None:
        facts = await asyncio.to_thread(read_host_facts)
        beats = 0
        while True:
            beat = Heartbeat(
                facts=facts, agent_started_at=self.tasks.started_at, running_jobs=self.tasks.running_job_ids()
            )
            try:
                await self.say(beat, transient=True)  # the next one replaces a lost one
            except BusError as error:  # the bus is down: the next beat tries again
                log.warning("heartbeat not sent: %r", error)
            beats += 1
            if beats % 100 == 0:
                facts = await asyncio.to_thread(read_host_facts)
                self.tasks.purge_workdirs(time.time() - self._workdir_retention)
            await asyncio.sleep(self._heartbeat_interval)


def agent_from_settings(
    settings: Settings,
    bus: MessageBus,
    topology: Topology,
    *,
    resource_id: str,
    token: str,
    gateway_url: Callable[[], str],
    gateway_tls: ssl.SSLContext | None = None,
) -> Agent:
    """The agent of resource ``resource_id`` as the settings configure it (``skybus agent`` and the
    local agent of ``skybus up``). ``gateway_tls`` overrides what verifies an https:// gateway
    (default: ``SKYBUS_CA``, else the system's trust store)."""
    return Agent(
        bus,
        topology,
        resource_id=resource_id,
        token=token,
        heartbeat_interval=settings.heartbeat_interval,
        state_dir=settings.data_dir / f"agent-{resource_id}",
        gateway_url=gateway_url,
        kill_grace=settings.kill_grace,
        max_parallel_tasks=settings.max_parallel_tasks,
        allow_reboot=settings.allow_reboot,
        reboot_command=settings.reboot_command,
        container_tool=settings.container_tool,
        container_uid=None if settings.privileged_containers else settings.container_uid,
        workdir_retention=settings.workdir_retention,
        job_options=JobOptions.from_settings(settings, resource_id),
        gateway_tls=gateway_tls or gateway_context(settings),
    )
