"""Seed 003, the resource pool, under ``/nodes``: nodes, memory, reboot, containers, jobs, processes.

A node is a resource of seed 000 with the same id. ``GET /nodes`` reads the registry (``running``
while the node's agent heartbeats, else ``halted``); every other call is a live query that the
node's own agent answers::

    gateway ──request, with a reply address──► resource manager ──forward, same address──► agent
       ▲                                          │ 404 unknown, 409 not responding, at once     │
       └─────────────────────────────── the agent's signed answer, straight back ──────────────┘

The signature is checked here, by the gateway, rather than by a resource manager relaying the
answer. Relaying would hold a resource manager handler, and a slot of the queue that every job
command goes through, for as long as an agent takes to answer: a hung agent would hold it for the
whole timeout. The gateway reads the node's record anyway, to know who may ask (404, 403), and the
record holds the node's public verify key, so checking the Ed25519 signature costs a fraction of a
millisecond and no message. An answer that is not signed by the node, not about the node, or not
caused by this very query is refused with 502. The one unsigned answer taken is a refusal
(:class:`~schemas.base.Rejected`), which is what the resource manager sends; only the node's own
agent also sees the query, and it may refuse its own query anyway.

No answer within ``SKYBUS_NODE_TIMEOUT`` seconds is a 504; the query then expires unhandled in the
queues, and an agent that gets it late does not act on it (its ``deadline`` has passed).

Everyone needs a token; a user sees the nodes they own, an admin all of them. Reboot and the
creation (and deletion) of containers need an admin. Errors are ``{"error": ...}``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, TypeVar

from aiohttp import web

from broker.envelope import Envelope
from broker.port import RequestTimeout
from schemas.base import Accepted, Rejected, WireModel
from schemas.content import GrantData
from schemas.pool import (
    ContainerJob,
    ContainerJobs,
    ContainerProcesses,
    ContainerSpec,
    ContainerView,
    CreateContainer,
    DeleteContainer,
    KillContainerJob,
    ListContainerJobs,
    ListContainerProcesses,
    ListContainers,
    NodeContainers,
    NodeMemory,
    NodeQuery,
    NodeView,
    ProcessSpec,
    ProcessView,
    ReadMemory,
    RebootNode,
    StartContainerProcess,
    check_container_id,
)
from services.content_manager import records as contents
from services.gateway.bodies import parse_body
from services.gateway.context import (
    BUS,
    SENDER,
    SETTINGS,
    STORE,
    TOPOLOGY,
    caller,
    require_admin,
    require_owner,
    send_command,
)
from services.gateway.errors import ApiError
from services.gateway.openapi import COMMAND_ERRORS, NODE_ERRORS, documented
from services.resource_manager import records as resources
from services.resource_manager.records import ResourceRecord
from services.security import signed_by

routes = web.RouteTableDef()

A = TypeVar("A", bound=WireModel)

NODE = "/nodes/{node_id}"
CONTAINER = NODE + "/containers/{container_id}"


# Asking a node.


async def load_node(request: web.Request) -> ResourceRecord:
    """The node of the URL, if the caller may see it."""
    text = request.match_info["node_id"]
    try:
        node_id = str(uuid.UUID(text))
    except ValueError:
        raise ApiError(404, f"node {text} not found") from None
    node = await resources.get_resource(request.app[STORE], node_id)
    if node is None:
        raise ApiError(404, f"node {node_id} not found")
    require_owner(request, node.user, "this node")
    return node


def container_id(request: web.Request, node: ResourceRecord) -> str:
    text = request.match_info["container_id"]
    try:
        return check_container_id(text)
    except ValueError:
        raise ApiError(404, f"container {text} not found on node {node.id}") from None


def deadline(request: web.Request) -> float:
    return time.time() + request.app[SETTINGS].node_timeout


async def ask_node(
    request: web.Request, query: type[NodeQuery], answer: type[A], *, in_container: bool = False, **fields: Any
) -> A:
    """Ask the node of the URL (about the container of the URL) a ``query`` made of ``fields``."""
    node = await load_node(request)
    if in_container:
        fields["container_id"] = container_id(request, node)
    return await ask(request, node, query(deadline=deadline(request), **fields), answer)


async def ask(request: web.Request, node: ResourceRecord, query: NodeQuery, answer: type[A]) -> A:
    """Send ``query`` to the node's agent (through the resource manager) and return its checked answer."""
    app = request.app
    timeout = app[SETTINGS].node_timeout
    envelope = Envelope(query, sender=SENDER, resource_id=node.id)
    try:
        # The agent answers on agent-events (its broker user may not write the default exchange).
        reply = await app[BUS].request(
            app[TOPOLOGY].commands, envelope, timeout=timeout, reply_exchange=app[TOPOLOGY].agent_events
        )
    except RequestTimeout:
        raise ApiError(504, f"node {node.id} did not answer within {timeout:g}s") from None
    payload = trusted(reply, envelope, node)
    if isinstance(payload, Rejected):
        raise ApiError(payload.status, payload.error)
    if not isinstance(payload, answer):
        raise ApiError(502, f"node {node.id} answered {reply.type!r} to {envelope.type!r}")
    return payload


def trusted(reply: Envelope, query: Envelope, node: ResourceRecord) -> WireModel:
    """The payload of ``reply`` if the node signed it in answer to ``query``, or an unsigned refusal."""
    if reply.signature is None:
        if isinstance(reply.payload, Rejected):
            return reply.payload
        raise ApiError(502, f"node {node.id} answered without its signature: the answer is refused")
    if reply.resource_id != node.id or reply.causation_id != query.message_id or not signed_by(reply, node.verify_key):
        raise ApiError(502, f"an answer for node {node.id} failed its signature check and is refused")
    return reply.payload


# Nodes.


@routes.get("/nodes")
@routes.get("/nodes/")
@documented(response=list[NodeView], summary="Nodes: running while their agent heartbeats, else halted (seed 003)")
async def list_nodes(request: web.Request) -> web.Response:
    principal = caller(request)
    found = await resources.resources_of_user(request.app[STORE], None if principal.admin else principal.user)
    return web.json_response([node_view(node) for node in found])


def node_view(node: ResourceRecord) -> dict[str, Any]:
    status = "running" if node.responding else "halted"
    return NodeView(hostname=node.hostname, id=node.id, status=status).model_dump()


@routes.get(NODE + "/mem")
@documented(
    response=list[NodeMemory],
    errors=NODE_ERRORS,
    summary="Memory of a node, read on it (a list of one, as the seed shows)",
)
async def node_memory(request: web.Request) -> web.Response:
    memory = await ask_node(request, ReadMemory, NodeMemory)
    return web.json_response([memory.model_dump()])


@routes.post(NODE + "/reboot")
@documented(
    status=204, errors=(*NODE_ERRORS, 501), summary="Reboot a node (admin; its agent must run with --allow-reboot)"
)
async def reboot_node(request: web.Request) -> web.Response:
    require_admin(request)
    await ask_node(request, RebootNode, Accepted)
    return web.Response(status=204)


# Containers.


@routes.get(NODE + "/containers")
@documented(response=list[ContainerView], errors=NODE_ERRORS, summary="Containers of a node")
async def list_containers(request: web.Request) -> web.Response:
    found = await ask_node(request, ListContainers, NodeContainers)
    return web.json_response([container.model_dump() for container in found.containers])


@routes.post(NODE + "/containers")
@documented(
    body=ContainerSpec,
    status=204,
    errors=(*NODE_ERRORS, *COMMAND_ERRORS, 500, 501),
    summary="Create a container on a node (admin)",
)
async def create_container(request: web.Request) -> web.Response:
    require_admin(request)
    node = await load_node(request)
    spec = await parse_body(request, ContainerSpec)
    rootfs_id = await root_filesystem(request, node.id, spec.flist)
    query = CreateContainer(deadline=deadline(request), spec=spec, rootfs_id=rootfs_id)
    await ask(request, node, query, Accepted)
    return web.Response(status=204)


async def root_filesystem(request: web.Request, node_id: str, flist: str) -> str | None:
    """The data id of the tarball ``flist`` names (a data id or a resource path), granted to the node."""
    if not flist:
        return None
    if "://" in flist:
        raise ApiError(
            400,
            f"flist: {flist!r} is a URL, and nodes fetch nothing from URLs: store the root filesystem tarball "
            "(POST /resources or /api/data) and give its resource path or data id",
        )
    store = request.app[STORE]
    try:
        item = await contents.get_item(store, str(uuid.UUID(flist)))
    except ValueError:
        item = await contents.item_at(store, flist)
    if item is None:
        raise ApiError(400, f"flist: no stored content has the id or resource path {flist!r}")
    await send_command(request, GrantData(item_ids=(item.id,), resource_id=node_id))
    return item.id


@routes.delete(CONTAINER)
@documented(status=204, errors=NODE_ERRORS, summary="Delete a container and everything running in it (admin)")
async def delete_container(request: web.Request) -> web.Response:
    require_admin(request)
    await ask_node(request, DeleteContainer, Accepted, in_container=True)
    return web.Response(status=204)


# Jobs and processes in a container.


@routes.get(CONTAINER + "/jobs")
@documented(response=list[ContainerJob], errors=NODE_ERRORS, summary="Jobs running in a container (start times in ms)")
async def list_jobs(request: web.Request) -> web.Response:
    found = await ask_node(request, ListContainerJobs, ContainerJobs, in_container=True)
    return web.json_response([job.model_dump() for job in found.jobs])


@routes.delete(CONTAINER + "/jobs/{job_id}")
@documented(status=204, errors=NODE_ERRORS, summary="Kill a job: its whole process group, SIGTERM then SIGKILL")
async def kill_job(request: web.Request) -> web.Response:
    await ask_node(request, KillContainerJob, Accepted, in_container=True, job_id=request.match_info["job_id"])
    return web.Response(status=204)


@routes.get(CONTAINER + "/processes")
@documented(
    response=list[ProcessView], errors=NODE_ERRORS, summary="Processes in a container, with their pids as it sees them"
)
async def list_processes(request: web.Request) -> web.Response:
    found = await ask_node(request, ListContainerProcesses, ContainerProcesses, in_container=True)
    return web.json_response([process.model_dump() for process in found.processes])


@routes.post(CONTAINER + "/processes")
@documented(
    body=ProcessSpec,
    status=202,
    errors=(*NODE_ERRORS, 400, 500, 501),
    summary="Start a process in a container, as a job (Location: the job)",
)
async def start_process(request: web.Request) -> web.Response:
    require_admin(request)  # a process in a container runs as its root: as creating the container does
    process = await parse_body(request, ProcessSpec)
    started = await ask_node(request, StartContainerProcess, Accepted, in_container=True, process=process)
    return web.Response(
        status=202, headers={"Location": f"{request.path.removesuffix('/processes')}/jobs/{started.id}"}
    )
