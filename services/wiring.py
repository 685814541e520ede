"""Build the bus and the stores a process needs from its settings. Nothing connects at import."""

from __future__ import annotations

from yarl import URL

from broker.port import MessageBus
from broker.topology import Topology
from schemas.registry import all_message_types
from services.security import broker_password, broker_username
from services.settings import Settings
from services.tls import amqp_context


def make_topology(settings: Settings) -> Topology:
    return Topology(settings.namespace)


def make_bus(settings: Settings, *, sender: str, confined: bool = False) -> MessageBus:
    """RabbitMQ when ``SKYBUS_AMQP_URL`` is set, else the in-process bus of this one process.
    ``confined``: the broker user may touch only its own queues (an agent's; see :class:`AmqpBus`)."""
    topology = make_topology(settings)
    if settings.amqp_url:
        from broker.amqp import AmqpBus

        return AmqpBus(
            settings.amqp_url,
            all_message_types(),
            topology,
            sender=sender,
            confined=confined,
            ssl_context=amqp_context(settings),
        )
    from broker.memory import MemoryBus

    return MemoryBus(all_message_types(), topology, sender=sender)


def make_agent_bus(settings: Settings, *, resource_id: str, token: str) -> MessageBus:
    """The bus of the agent of ``resource_id``. An AMQP URL without a user gets the agent's own broker
    user (``agent-<id>``, its password derived from its token; the resource manager provisioned it),
    and the bus is then confined to what that user may do. A URL with a user is used as it is."""
    assert settings.amqp_url
    url = URL(settings.amqp_url)
    own = broker_username(resource_id)
    if not url.user:
        url = url.with_user(own).with_password(broker_password(token))
    agent_settings = settings.model_copy(update={"amqp_url": str(url)})
    return make_bus(agent_settings, sender=f"agent:{resource_id}", confined=url.user == own)
