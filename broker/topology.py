"""Every exchange, queue and routing key of skybus, in one place.

Five topic exchanges per namespace:

* ``commands``       commands to managers, routing key ``<domain>.<verb>`` (``resource.register``)
* ``agent-commands`` commands to agents, routing key ``<resource_id>.<domain>.<verb>``; each agent's
                     queue binds only ``<its id>.#``, so agents never see each other's commands
* ``events``         trusted events, ``<domain>.<past-tense verb>`` (``host.heartbeat``)
* ``agent-events``   what agents say, signed; only the resource manager reads it
* ``dead``           the dead-letter exchange, bound to the one dead-letter queue

A namespace is a prefix on every name, so several fleets (or test runs) share a broker safely.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.port import Binding, QueueKind, QueueSpec

# Routing keys of commands to managers.
RESOURCE_REGISTER = "resource.register"
RESOURCE_DELETE = "resource.delete"
CONTENT_STORE = "content.store"
CONTENT_REPLACE = "content.replace"
CONTENT_PATCH = "content.patch"
CONTENT_DELETE = "content.delete"
DATA_STORE = "data.store"
DATA_GRANT = "data.grant"
DATA_TRANSFER = "data.transfer"

# Routing keys of events.
HOST_HEARTBEAT = "host.heartbeat"
HOST_RESPONDING = "host.responding"
HOST_UNRESPONSIVE = "host.unresponsive"
HOST_DELETED = "host.deleted"


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

    def job_manager_commands(self) -> QueueSpec:
        return QueueSpec(self.queue_name("job-manager", "commands"), (Binding(self.commands, "job.*"),))

    def job_manager_events(self) -> QueueSpec:
        return QueueSpec(
            self.queue_name("job-manager", "events"),
            (
                Binding(self.events, "task.*"),
                Binding(self.events, "agent.command_refused"),
                Binding(self.events, "host.heartbeat"),
                Binding(self.events, "host.deleted"),
            ),
            prefetch=64,
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

    def resource_manager_agent_events(self) -> QueueSpec:
        return QueueSpec(
            self.queue_name("resource-manager", "agent-events"),
            (Binding(self.agent_events, "#"),),
            prefetch=64,
        )

    def agent_queue(self, resource_id: str) -> QueueSpec:
        return QueueSpec(
            self.queue_name("agent", resource_id),
            (Binding(self.agent_commands, f"{resource_id}.#"),),
            prefetch=16,
            kind=QueueKind.AGENT,
        )

    @staticmethod
    def agent_routing_key(resource_id: str, message_type: str) -> str:
        return f"{resource_id}.{message_type}"
