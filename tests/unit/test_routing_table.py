"""Every message type has a sender, a queue bound to its routing key, and a handler on that queue.

The services are started for real on a bus that only records what they subscribe; the table below
says where each type is published (exchange and a routing key it travels under). A type nobody
sends, one that reaches no queue, or one whose queue has no handler for it fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp import web

from broker.envelope import Envelope
from broker.port import Handler, QueueSpec
from broker.router import Router
from broker.routing import topic_matches
from broker.topology import Topology
from schemas.base import Accepted, Rejected
from schemas.pool import NODE_ANSWERS, NODE_QUERIES
from schemas.registry import all_message_types
from services.agent.agent import Agent
from services.content_manager.service import ContentManagerService
from services.gateway.job_output import OutputHub
from services.gateway.job_watch import JobWatcher
from services.job_manager.service import JobManagerService
from services.resource_manager.service import ResourceManagerService
from services.role_manager.service import RoleManagerService
from services.settings import Settings
from services.store.sqlite import SqliteDocumentStore

ROOT = Path(__file__).resolve().parents[2]
RID = "11111111-2222-4333-8444-555555555555"

# Where each message type is published: (exchange, a routing key it travels under).
COMMANDS, AGENT_COMMANDS, EVENTS, AGENT_EVENTS = "commands", "agent_commands", "events", "agent_events"
BY_AGENTS = {"host.heartbeat", "task.files_staged_in", "task.accepted", "task.running", "task.completed",
             "task.file_staged_out", "job.output"}  # fmt: skip
STRAIGHT_TO_AGENTS = {"agent.submit_task", "agent.cancel_task", "agent.stage_out_file", "agent.watch_output"}
EVENT_TYPES = {"host.changed", "host.deleted", "job.changed", "job.finished", "agent.command_refused",
               "job.staging_refused"}  # fmt: skip
# Replies travel to the asker's reply address, not through a queue of the topology.
REPLIES = {Accepted, Rejected, *NODE_ANSWERS}
# Commands the resource manager passes on to an agent (seed 000's proxy, seed 003's live queries).
FORWARDED = {"agent.stage_in_files": AGENT_COMMANDS, **{query.message_type: AGENT_COMMANDS for query in NODE_QUERIES}}


def routes_of(name: str) -> list[tuple[str, str]]:
    if name in BY_AGENTS:
        return [(AGENT_EVENTS, f"{RID}.{name}")]
    if name in STRAIGHT_TO_AGENTS:
        return [(AGENT_COMMANDS, f"{RID}.{name}")]
    if name in EVENT_TYPES:
        return [(EVENTS, name)]
    routes = [(COMMANDS, name)]
    if name in FORWARDED:
        routes.append((FORWARDED[name], f"{RID}.{name}"))
    return routes


class SubscriptionsOnly:
    """A bus that keeps what is subscribed to it and sends nothing."""

    def __init__(self) -> None:
        self.subscribed: list[tuple[QueueSpec, Handler]] = []

    async def subscribe(self, queue: QueueSpec, handler: Handler) -> SubscriptionsOnly:
        self.subscribed.append((queue, handler))
        return self

    async def cancel(self) -> None:
        pass

    async def publish(self, *args: object, **kwargs: object) -> None:
        pass

    async def request(self, exchange: str, envelope: Envelope, **kwargs: object) -> Envelope:
        return envelope.caused(Accepted())


@pytest.fixture
async def subscriptions(tmp_path) -> list[tuple[QueueSpec, Router]]:
    bus = SubscriptionsOnly()
    topology = Topology("t")
    store = await SqliteDocumentStore.open(tmp_path / "routes.db")
    settings = Settings(data_dir=tmp_path)
    services = [
        cls(settings, bus, store, topology)  # type: ignore[arg-type]
        for cls in (ResourceManagerService, JobManagerService, RoleManagerService, ContentManagerService)
    ]
    for service in services:
        await service.start()
    agent = Agent(
        bus,  # type: ignore[arg-type]
        topology,
        resource_id=RID,
        token="t",
        heartbeat_interval=60,
        state_dir=tmp_path / "agent",
        gateway_url=lambda: "http://127.0.0.1:1",
    )
    bus.subscribed += [(topology.agent_queue(RID), agent.router), (topology.agent_live_queue(RID), agent.router)]
    bus.subscribed.append((topology.gateway_job_changes(), JobWatcher().router()))
    bus.subscribed.append((topology.gateway_job_output(), OutputHub(web.Application()).router()))
    yield [(queue, handler) for queue, handler in bus.subscribed if isinstance(handler, Router)]
    for service in services:
        await service.stop()
    await store.close()


def exchange_name(topology: Topology, exchange: str) -> str:
    return getattr(topology, exchange)


async def test_every_message_type_reaches_a_queue_with_a_handler_for_it(subscriptions) -> None:
    topology = Topology("t")
    missing = []
    for model in sorted(all_message_types(), key=lambda m: m.message_type):
        name = model.message_type
        if model in REPLIES:
            continue
        for exchange, key in routes_of(name):
            handled = [
                queue.name
                for queue, router in subscriptions
                if model in router.models
                and any(
                    b.exchange == exchange_name(topology, exchange) and topic_matches(b.pattern, key)
                    for b in queue.bindings
                )
            ]
            if not handled:
                missing.append(f"{name} on {exchange} as {key!r}")
    assert missing == []


def test_every_message_type_has_a_sender() -> None:
    sources = "\n".join(path.read_text() for folder in ("services",) for path in (ROOT / folder).rglob("*.py"))
    unsent = []
    for model in sorted(all_message_types(), key=lambda m: m.message_type):
        name = model.message_type
        if model in REPLIES or model.__name__ in ("Accepted", "Rejected"):
            continue
        if name in FORWARDED and model in NODE_QUERIES:
            pattern = rf"\b{model.__name__}\b"  # the gateway builds live queries from a table
        else:
            pattern = rf"\b{model.__name__}\("
        if not re.search(pattern, sources):
            unsent.append(model.__name__)
    assert unsent == []


def test_the_topology_has_no_unused_routing_key_constants() -> None:
    import broker.topology as module

    constants = [name for name in vars(module) if name.isupper() and isinstance(getattr(module, name), str)]
    assert constants == []
