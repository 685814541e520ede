"""Every exchange, queue and routing key of skybus, in one place.

Five topic exchanges per namespace:

* ``commands``       commands to managers, routing key ``<domain>.<verb>`` (``resource.register``)
* ``agent-commands`` commands to agents, routing key ``<resource_id>.<domain>.<verb>``; each agent's
                     queues bind only keys that start with its id, so agents never see each other's commands
* ``events``         trusted events, ``<domain>.<past-tense verb>`` (``host.heartbeat``)
* ``agent-events``   what agents say, signed, routing key ``<resource_id>.<domain>.<verb>``; read by the
                     manager each event is for, which checks the signature against the host's verify key
* ``dead``           the dead-letter exchange, bound to the one dead-letter queue

A namespace is a prefix on every name, so several fleets (or test runs) share a broker safely.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.port import Binding, QueueKind, QueueSpec


@dataclass(frozen=True)
class Topology:
    namespace: str = "skybus"

    @property
    def commands(self) -> str:
        return f"{self.namespace}.commands"

    @property
    def agent_commands(self) -> str:
        return f"{self.namespace}.agent-commands"

    @property
    def events(self) -> str:
        return f"{self.namespace}.events"

    @property
    def agent_events(self) -> str:
        return f"{self.namespace}.agent-events"

    @property
    def dead(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.namespace}.dead-letters"

    @property
    def exchanges(self) -> tuple[str, ...]:
        return (self.commands, self.agent_commands, self.events, self.agent_events, self.dead)

    def queue_name(self, consumer: str, purpose: str) -> str:
        """Queues are named mechanically from who consumes them and what for."""
        return f"{self.namespace}.{consumer}.{purpose}"

    # The queues of each service.

    def resource_manager_commands(self) -> QueueSpec:
        return QueueSpec(
            self.queue_name("resource-manager", "commands"),
            # resource.*: the registry; agent.*: commands it forwards to one agent (the proxy of seed 000);
            # node.*: live queries of seed 003 it forwards to one agent with their reply address.
            (Binding(self.commands, "resource.*"), Binding(self.commands, "agent.*"), Binding(self.commands, "node.*")),
        )

    def resource_manager_heartbeats(self) -> QueueSpec:
        """Every copy of the resource manager hears every heartbeat: each keeps all hosts' liveness in
        memory. A heartbeat lost with a broker is replaced by the next one."""
        return QueueSpec(
            self.queue_name("resource-manager", "heartbeats"),
            (Binding(self.agent_events, "*.host.heartbeat"),),
            prefetch=256,
            kind=QueueKind.BROADCAST,
        )

    def job_manager_commands(self) -> QueueSpec:
        return QueueSpec(self.queue_name("job-manager", "commands"), (Binding(self.commands, "job.*"),))

    def job_manager_events(self) -> QueueSpec:
        """What agents say about tasks, straight from them (signed; checked here), and refusals of the
        proxy. Host transitions come on a broadcast queue of each copy: see :meth:`host_changes`."""
        return QueueSpec(
            self.queue_name("job-manager", "events"),
            (
                Binding(self.agent_events, "*.task.*"),
                Binding(self.events, "agent.command_refused"),
                Binding(self.events, "job.staging_refused"),
            ),
            prefetch=64,
        )

    def host_changes(self, consumer: str) -> QueueSpec:
        """Host transitions (and deletions), for a manager that keeps its own view of hosts: every copy
        of it hears every one. One missed while a copy was away is caught by its periodic re-read."""
        return QueueSpec(
            self.queue_name(consumer, "host-changes"),
            (Binding(self.events, "host.changed"), Binding(self.events, "host.deleted")),
            prefetch=64,
            kind=QueueKind.BROADCAST,
        )

    def gateway_job_changes(self) -> QueueSpec:
        """Every gateway hears every job change: it wakes its long polls and event streams."""
        return QueueSpec(
            self.queue_name("gateway", "job-changes"),
            (Binding(self.events, "job.changed"),),
            prefetch=256,
            kind=QueueKind.BROADCAST,
        )

    def gateway_job_output(self) -> QueueSpec:
        """Live output of the tasks someone follows, straight from their agents (signed; each gateway
        checks the host's signature): every gateway hears every chunk, and a lost one is asked again."""
        return QueueSpec(
            self.queue_name("gateway", "job-output"),
            (Binding(self.agent_events, "*.job.output"),),
            prefetch=256,
            kind=QueueKind.BROADCAST,
        )

    def role_manager_commands(self) -> QueueSpec:
        return QueueSpec(self.queue_name("role-manager", "commands"), (Binding(self.commands, "role.*"),))

    def role_manager_events(self) -> QueueSpec:
        return QueueSpec(
            self.queue_name("role-manager", "events"),
            (Binding(self.events, "job.finished"), Binding(self.events, "host.deleted")),
        )

    def content_manager_commands(self) -> QueueSpec:
        return QueueSpec(
            self.queue_name("content-manager", "commands"),
            (Binding(self.commands, "content.*"), Binding(self.commands, "data.*")),
        )

    def agent_queue(self, resource_id: str) -> QueueSpec:
        """An agent's job commands: durable (a classic queue, one file handle on the broker)."""
        return QueueSpec(
            self.queue_name("agent", resource_id),
            (Binding(self.agent_commands, f"{resource_id}.agent.*"),),
            prefetch=16,
            kind=QueueKind.AGENT,
        )

    def agent_live_queue(self, resource_id: str) -> QueueSpec:
        """An agent's live queries of seed 003: nothing to keep, so not durable."""
        return QueueSpec(
            self.queue_name("agent", f"{resource_id}.live"),
            (Binding(self.agent_commands, f"{resource_id}.node.*"),),
            prefetch=16,
            kind=QueueKind.TRANSIENT,
        )

    @staticmethod
    def agent_routing_key(resource_id: str, message_type: str) -> str:
        """Commands to an agent and events from it both lead with its id: an agent's broker user may
        read and write only keys that start with its own."""
        return f"{resource_id}.{message_type}"
