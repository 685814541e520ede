"""Build the bus and the stores a process needs from its settings. Nothing connects at import."""

from __future__ import annotations

from broker.port import MessageBus
from broker.topology import Topology
from schemas.registry import all_message_types
from services.settings import Settings


def make_topology(settings: Settings) -> Topology:
    return Topology(settings.namespace)


def make_bus(settings: Settings, *, sender: str) -> MessageBus:
    """RabbitMQ when ``SKYBUS_AMQP_URL`` is set, else the in-process bus of this one process."""
    topology = make_topology(settings)
    if settings.amqp_url:
        from broker.amqp import AmqpBus

        return AmqpBus(settings.amqp_url, all_message_types(), topology, sender=sender)
    from broker.memory import MemoryBus

    return MemoryBus(all_message_types(), topology, sender=sender)
