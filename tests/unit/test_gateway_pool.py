"""Seed 003 through the gateway: every call and error, answered live by a real agent.

The in-process bus and SQLite, the resource and content managers, and an agent for a node that
steve owns; its containers are real (bubblewrap), its reboot command harmless.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from broker import codec
from broker.envelope import Envelope
from broker.port import Binding, Drop, QueueSpec
from schemas.base import Accepted
from schemas.pool import NodeMemory, RebootNode
from services.agent.agent import Agent
from services.gateway.context import SETTINGS
from services.resource_manager.repository import RESOURCES
from services.security import signing_key
from tests.containers import ROOTFS_MARKER, kill_containers, minimal_rootfs_tarball, need_bubblewrap
from tests.content_stack import ContentStack, content_stack_fixture, resource_form  # noqa: F401
from tests.e2e.harness import eventually

SEED_PAYLOAD = {
    "nics": [
        {
            "config": {"dhcp": False, "cidr": "192.168.57.217/24", "gateway": "192.168.57.254", "dns": ["8.8.8.8"]},
            "id": "0",
            "type": "vlan",
        }
    ],
    "id": "vfw_22",
    "filesystems": [],
    "flist": "",
    "hostNetworking": False,
    "hostname": "vfw_22",
    "initprocesses": [],
    "ports": [],
}
MEMORY_FIELDS = {
    "active",
    "available",
    "buffers",
    "cached",
    "free",
    "inactive",
    "total",
    "used",
    "usedPercent",
    "wired",
}
CPU_FIELDS = {"guestnice", "idle", "iowait", "irq", "nice", "softirq", "steal", "stolen", "system", "user"}


class Pool:
    def __init__(self, stack: ContentStack, node_id: str, token: str, agent: Agent, reboot_marker: Path) -> None:
        self.stack = stack
        self.client = stack.client
        self.node_id = node_id
        self.token = token
        self.agent = agent
        self.reboot_marker = reboot_marker

    @property
    def node(self) -> str:
        return f"/nodes/{self.node_id}"

    def set_timeout(self, seconds: float) -> None:
        self.client.server.app[SETTINGS].node_timeout = seconds

    async def register(self, hostname: str, user: str = "steve") -> dict:
        response = await self.client.post(
            "/api/resources", json={"hostname": hostname, "user": user}, headers=self.stack.admin
        )
        assert response.status == 200, await response.text()
        return await response.json()

    async def mark_responding(self, node_id: str) -> None:
        """What a heartbeat would do, for a node with no agent of ours."""
        await self.stack.store.collection(RESOURCES).update(node_id, {"responding": True})

    async def call(self, method: str, path: str, headers: dict | None = None, **kwargs) -> tuple[int, object]:
        response = await self.client.request(
            method, path, headers=self.stack.admin if headers is None else headers, **kwargs
        )
        body = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, body


@pytest.fixture
async def pool(content_stack: ContentStack, tmp_path: Path) -> AsyncIterator[Pool]:
    stack = content_stack
    response = await stack.client.post(
        "/api/resources", json={"hostname": "node-1", "user": "steve"}, headers=stack.steve
    )
    created = await response.json()
    marker = tmp_path / "rebooted"
    agent = Agent(
        stack.bus,
        stack.topology,
        resource_id=created["id"],
        token=created["token"],
        heartbeat_interval=0.05,
        state_dir=tmp_path / "agent",
        gateway_url=lambda: str(stack.client.make_url("")).rstrip("/"),
        kill_grace=1.0,
        allow_reboot=True,
        reboot_command=f"echo rebooted > {marker}",
    )
    await agent.start()
    pool = Pool(stack, created["id"], created["token"], agent, marker)

    async def running() -> bool:
        return (await pool.call("GET", "/nodes"))[1] == [
            {"hostname": "node-1", "id": created["id"], "status": "running"}
        ]

    await eventually(running, timeout=5)
    try:
        yield pool
    finally:
        await agent.stop()
        kill_containers(tmp_path)


# Nodes.


async def test_nodes_are_listed_running_or_halted_to_whom_owns_them(pool: Pool) -> None:
    other = await pool.register("node-2", user="alice")
    status, nodes = await pool.call("GET", "/nodes")
    assert status == 200 and nodes == [
        {"hostname": "node-1", "id": pool.node_id, "status": "running"},
        {"hostname": "node-2", "id": other["id"], "status": "halted"},
    ]
    assert (await pool.call("GET", "/nodes", pool.stack.steve))[1] == [nodes[0]]
    assert (await pool.call("GET", "/nodes", pool.stack.alice))[1] == [nodes[1]]
    assert (await pool.call("GET", "/nodes", {}))[0] == 401
    assert (await pool.call("GET", "/nodes", {"Authorization": f"Bearer {pool.token}"}))[0] == 403  # an agent


async def test_memory_is_read_on_the_node(pool: Pool) -> None:
    status, body = await pool.call("GET", f"{pool.node}/mem", pool.stack.steve)
    assert status == 200 and isinstance(body, list) and len(body) == 1
    [memory] = body
    assert set(memory) == MEMORY_FIELDS
    assert memory["total"] == psutil.virtual_memory().total and memory["wired"] == 0
    assert memory["usedPercent"] == pytest.approx(100 * memory["used"] / memory["total"])
    assert abs(memory["available"] - psutil.virtual_memory().available) < 256 * 1024**2


async def test_unknown_or_foreign_nodes(pool: Pool) -> None:
    for path in (f"/nodes/{uuid.uuid4()}/mem", "/nodes/525400123456/mem", f"/nodes/{uuid.uuid4()}/containers"):
        status, body = await pool.call("GET", path)
        assert status == 404 and "not found" in body["error"], body
    status, body = await pool.call("GET", f"{pool.node}/mem", pool.stack.alice)
    assert status == 403 and body == {"error": "this node belongs to another user"}


async def test_a_node_that_is_not_responding_answers_409_at_once(pool: Pool) -> None:
    silent = await pool.register("silent")
    started = time.monotonic()
    status, body = await pool.call("GET", f"/nodes/{silent['id']}/mem")
    assert status == 409 and "not responding" in body["error"]
    assert time.monotonic() - started < 1

    await pool.mark_responding(silent["id"])  # responding, but no agent consumes its queue
    await asyncio.sleep(1.1)  # the resource manager's cache of the host
    status, body = await pool.call("GET", f"/nodes/{silent['id']}/mem")
    assert status == 409 and "no agent listens" in body["error"]


async def test_an_agent_that_does_not_answer_is_504_within_the_timeout(pool: Pool) -> None:
    pool.set_timeout(0.5)
    assert pool.agent._subscriptions
    for subscription in pool.agent._subscriptions:
        await subscription.cancel()  # it heartbeats, but takes no query: a hung agent
    started = time.monotonic()
    status, body = await pool.call("GET", f"{pool.node}/mem")
    assert status == 504 and body == {"error": f"node {pool.node_id} did not answer within 0.5s"}
    assert 0.5 <= time.monotonic() - started < 1.5


@pytest.mark.parametrize("forgery", ["unsigned", "other key", "other node", "another query"])
async def test_answers_not_signed_by_the_node_for_this_query_are_refused(pool: Pool, forgery: str) -> None:
    impostor = await pool.register("impostor")
    await pool.mark_responding(impostor["id"])
    memory = NodeMemory(
        active=1, available=1, buffers=0, cached=0, free=1, inactive=0, total=2, used=1, usedPercent=50.0, wired=0
    )

    async def forge(query: Envelope) -> Envelope:
        answer = query.caused(memory, resource_id=impostor["id"])
        if forgery == "other node":
            answer = replace(answer, resource_id=pool.node_id)
        if forgery == "another query":
            answer = replace(answer, causation_id=str(uuid.uuid4()))
        key = signing_key(pool.token if forgery == "other key" else impostor["token"])
        return answer if forgery == "unsigned" else answer.with_signature(key.sign(codec.signed_bytes(answer)))

    topology = pool.stack.topology
    spec = QueueSpec(
        topology.queue_name("forger", impostor["id"]), (Binding(topology.agent_commands, f"{impostor['id']}.#"),)
    )
    await pool.stack.bus.subscribe(spec, forge)
    status, body = await pool.call("GET", f"/nodes/{impostor['id']}/mem")
    assert status == 502 and "refused" in body["error"], body


async def test_reboot_is_an_admins_and_needs_an_agent_that_allows_it(pool: Pool) -> None:
    status, body = await pool.call("POST", f"{pool.node}/reboot", pool.stack.steve)
    assert status == 403 and body == {"error": "this needs an admin token"}
    assert not pool.reboot_marker.exists()

    status, body = await pool.call("POST", f"{pool.node}/reboot")
    assert status == 204 and body == ""
    assert pool.reboot_marker.read_text() == "rebooted\n"

    pool.agent.node._reboot_command = "echo no permission >&2; exit 3"
    status, body = await pool.call("POST", f"{pool.node}/reboot")
    assert status == 500 and body == {
        "error": "the reboot command 'echo no permission >&2; exit 3' failed with exit code 3: no permission"
    }

    pool.agent.node._allow_reboot = False
    status, body = await pool.call("POST", f"{pool.node}/reboot")
    assert status == 403 and "--allow-reboot" in body["error"]


# Containers.


async def test_a_container_on_the_host_directories_runs_jobs_in_its_own_namespaces(pool: Pool) -> None:
    need_bubblewrap()
    containers = f"{pool.node}/containers"
    assert await pool.call("GET", containers) == (200, [])
    body = {**SEED_PAYLOAD, "nics": [], "id": "box1", "hostname": "boxy"}
    assert await pool.call("POST", containers, json=body) == (204, "")
    assert await pool.call("GET", containers, pool.stack.steve) == (
        200,
        [{"flist": "", "hostname": "boxy", "id": "box1", "status": "running"}],
    )

    before = int(time.time() * 1000)
    process = {
        "name": "/bin/sh",
        "pwd": "/tmp",
        "args": ["-c", 'echo "$GREETING $(hostname) $$" > out; exec sleep 60'],
        "env": ["GREETING=hello"],
    }
    response = await pool.client.post(f"{containers}/box1/processes", json=process, headers=pool.stack.admin)
    assert response.status == 202, await response.text()
    job_id = response.headers["Location"].rsplit("/", 1)[1]
    assert response.headers["Location"] == f"{containers}/box1/jobs/{job_id}"

    status, jobs = await pool.call("GET", f"{containers}/box1/jobs")
    assert status == 200 and [job["id"] for job in jobs] == [job_id]
    assert before <= jobs[0]["startTime"] <= int(time.time() * 1000)

    async def sleeping() -> bool:
        return any(p["cmdline"] == "sleep 60" for p in (await pool.call("GET", f"{containers}/box1/processes"))[1])

    await eventually(sleeping, timeout=5)
    status, processes = await pool.call("GET", f"{containers}/box1/processes")
    assert status == 200 and processes[0]["pid"] == 1  # bwrap's init
    [sleeper] = [p for p in processes if p["cmdline"] == "sleep 60"]
    assert set(sleeper) == {"cmdline", "cpu", "pid", "rss", "swap", "vms"} and set(sleeper["cpu"]) == CPU_FIELDS
    host_view = [
        p
        for p in psutil.process_iter(["cmdline", "environ"])
        if (p.info["environ"] or {}).get("SKYBUS_CONTAINER_JOB") == job_id and p.info["cmdline"] == ["sleep", "60"]
    ]
    assert len(host_view) == 1 and host_view[0].pid != sleeper["pid"] and sleeper["rss"] > 0
    out = Path(f"/proc/{host_view[0].pid}/root/tmp/out").read_text().split()
    assert out == ["hello", "boxy", str(sleeper["pid"])]  # its own hostname, its own pid namespace

    assert (await pool.call("DELETE", f"{containers}/box1/jobs/{job_id}", pool.stack.steve))[0] == 204
    assert not host_view[0].is_running() or host_view[0].status() == psutil.STATUS_ZOMBIE
    assert await pool.call("GET", f"{containers}/box1/jobs") == (200, [])
    status, body = await pool.call("DELETE", f"{containers}/box1/jobs/{job_id}")
    assert status == 404 and body == {"error": f"job {job_id} not found in container box1"}

    assert (await pool.call("DELETE", f"{containers}/box1"))[0] == 204
    assert await pool.call("GET", containers) == (200, [])


async def test_a_container_from_a_stored_tarball_sees_only_its_root(pool: Pool, tmp_path: Path) -> None:
    need_bubblewrap()
    tarball = minimal_rootfs_tarball(tmp_path / "mini.tar.gz").read_bytes()
    pool.client.server.app[SETTINGS].max_upload_bytes = 64 * 1024**2
    response = await pool.client.post("/api/data?name=mini.tar.gz", data=tarball, headers=pool.stack.admin)
    data_id = (await response.json())["id"]
    form = resource_form({"resourcePath": "images/mini.tar.gz", "resourceType": "Static"}, tarball, "mini.tar.gz")
    assert (await pool.client.post("/resources", data=form, headers=pool.stack.admin)).status == 201
    containers = f"{pool.node}/containers"
    for container, flist in (("by-id", data_id), ("by-path", "images/mini.tar.gz")):
        init = {"name": "sh", "args": ["-c", f"cat /{ROOTFS_MARKER} > /tmp/seen; exec sleep 60"]}
        body = {"id": container, "flist": flist, "initprocesses": [init]}
        assert await pool.call("POST", containers, json=body) == (204, "")
        status, jobs = await pool.call("GET", f"{containers}/{container}/jobs")
        assert status == 200 and len(jobs) == 1
        status, processes = await pool.call("GET", f"{containers}/{container}/processes")
        assert [p["cmdline"] for p in processes][:2] == [processes[0]["cmdline"], "sleep 2147483647"]
    status, listed = await pool.call("GET", containers)
    assert [(c["id"], c["flist"], c["hostname"], c["status"]) for c in listed] == [
        ("by-id", data_id, "by-id", "running"),
        ("by-path", "images/mini.tar.gz", "by-path", "running"),
    ]
    # A host program is not in a tarball's root: the container cannot run it.
    status, body = await pool.call("POST", f"{containers}/by-id/processes", json={"name": "python3"})
    assert status == 400 and body == {"error": "name: 'python3' is not found in container by-id"}


async def test_create_container_refusals(pool: Pool) -> None:
    containers = f"{pool.node}/containers"
    cases = [
        (pool.stack.steve, {"id": "x"}, 403, "this needs an admin token"),
        (None, {"hostname": "x"}, 400, "id: Field required"),
        (None, {"id": "../etc"}, 400, "a container id is"),
        (None, {"id": "x", "colour": "red"}, 400, "colour: Extra inputs are not permitted"),
        (None, {"id": "x", "ports": ["eighty"]}, 400, "HOSTPORT:CONTAINERPORT"),
        (None, {"id": "x", "initprocesses": [{"name": "sh", "env": ["novalue"]}]}, 400, "is not NAME=VALUE"),
        (None, {"id": "x", "filesystems": ["relative:/data"]}, 400, "is not an absolute path"),
        (None, {**SEED_PAYLOAD, "flist": "http://192.168.20.132:8080/x.flist"}, 400, "flist: 'http://"),
        (None, {"id": "x", "flist": str(uuid.uuid4())}, 400, "flist: no stored content has the id or resource path"),
        (None, {"id": "x", "flist": "no/such/path"}, 400, "flist: no stored content"),
    ]
    for headers, body, status, error in cases:
        got = await pool.call("POST", containers, headers, json=body)
        assert got[0] == status and error in got[1]["error"], (body, got)


async def test_what_bubblewrap_cannot_do_is_refused_naming_the_field(pool: Pool) -> None:
    need_bubblewrap()
    containers = f"{pool.node}/containers"
    cases = [
        (SEED_PAYLOAD, "nics: bubblewrap gives a container no network interface but its loopback"),
        ({"id": "x", "ports": ["8080:80"]}, "ports: bubblewrap cannot forward ports"),
        ({"id": "x", "filesystems": ["/no/such/dir:/data"]}, "filesystems[0]: /no/such/dir does not exist"),
        ({"id": "x", "initprocesses": [{"name": "no-such-program"}]}, "initprocesses[0].name: 'no-such-program'"),
        ({"id": "x", "initprocesses": [{"name": "sh", "pwd": "/nowhere"}]}, "initprocesses[0].pwd: '/nowhere'"),
    ]
    for body, error in cases:
        status, got = await pool.call("POST", containers, json=body)
        assert status == 400 and got["error"].startswith(error), got
    assert await pool.call("GET", containers) == (200, [])  # nothing half-made is left
    assert await pool.call("POST", containers, json={"id": "x"}) == (204, "")
    status, body = await pool.call("POST", containers, json={"id": "x"})
    assert status == 409 and body == {"error": "container x already exists on this node"}


async def test_unknown_containers_and_jobs_are_404(pool: Pool) -> None:
    need_bubblewrap()
    base = f"{pool.node}/containers"
    for method, path in (
        ("GET", f"{base}/nobody/jobs"),
        ("GET", f"{base}/nobody/processes"),
        ("POST", f"{base}/nobody/processes"),
        ("DELETE", f"{base}/nobody/jobs/{uuid.uuid4()}"),
        ("DELETE", f"{base}/nobody"),
        ("GET", f"{base}/..%2Fetc/jobs"),
    ):
        status, body = await pool.call(method, path, json={"name": "sh"})
        assert status == 404 and "not found" in body["error"], (method, path, body)
    assert await pool.call("POST", base, json={"id": "box"}) == (204, "")
    status, body = await pool.call("DELETE", f"{base}/box/jobs/not-a-uuid")
    assert status == 404 and body == {"error": "job not-a-uuid not found in container box"}
    status, body = await pool.call("POST", f"{base}/box/processes", json={"name": ""})
    assert status == 400 and "name" in body["error"]
    status, body = await pool.call("DELETE", f"{base}/box", pool.stack.steve)
    assert status == 403


async def test_a_node_without_bubblewrap_says_what_to_install(pool: Pool) -> None:
    pool.agent.node.containers._tool = "/nowhere/bwrap"
    for method, path in (("GET", f"{pool.node}/containers"), ("POST", f"{pool.node}/containers")):
        status, body = await pool.call(method, path, json={"id": "x"})
        assert status == 501 and "apt-get install bubblewrap" in body["error"], body


async def test_an_agent_that_is_not_root_says_containers_need_root(pool: Pool, monkeypatch) -> None:
    need_bubblewrap()
    monkeypatch.setattr("services.agent.containers.os.geteuid", lambda: 1000)
    status, body = await pool.call("POST", f"{pool.node}/containers", json={"id": "x"})
    assert status == 501 and "run as root" in body["error"], body


async def test_containers_and_their_jobs_outlive_the_agent(pool: Pool, tmp_path: Path) -> None:
    need_bubblewrap()
    containers = f"{pool.node}/containers"
    init = {"name": "sleep", "args": ["60"]}
    assert await pool.call("POST", containers, json={"id": "kept", "initprocesses": [init]}) == (204, "")
    jobs = (await pool.call("GET", f"{containers}/kept/jobs"))[1]
    await pool.agent.stop()
    successor = Agent(
        pool.stack.bus,
        pool.stack.topology,
        resource_id=pool.node_id,
        token=pool.token,
        heartbeat_interval=0.05,
        state_dir=tmp_path / "agent",
        gateway_url=lambda: "http://127.0.0.1:9",
    )
    await successor.start()
    try:
        assert await pool.call("GET", containers) == (
            200,
            [{"flist": "", "hostname": "kept", "id": "kept", "status": "running"}],
        )
        assert await pool.call("GET", f"{containers}/kept/jobs") == (200, jobs)
        kill_containers(tmp_path)

        async def halted() -> bool:
            return (await pool.call("GET", containers))[1][0]["status"] == "halted"

        await eventually(halted, timeout=5)
        assert await pool.call("GET", f"{containers}/kept/jobs") == (200, [])
        status, body = await pool.call("POST", f"{containers}/kept/processes", json={"name": "sh"})
        assert status == 409 and body == {"error": "container kept is halted"}
    finally:
        await successor.stop()


async def test_a_late_query_is_not_acted_on_and_a_repeated_one_is_answered_once(pool: Pool) -> None:
    late = Envelope(RebootNode(deadline=time.time() - 1), resource_id=pool.node_id)
    with pytest.raises(Drop, match="past its deadline"):
        await pool.agent.router(late)
    assert not pool.reboot_marker.exists()

    pool.agent.node._reboot_command = f"echo rebooted >> {pool.reboot_marker}"
    query = Envelope(RebootNode(deadline=time.time() + 5), resource_id=pool.node_id)
    first = await pool.agent.router(query)
    again = await pool.agent.router(query)  # redelivered: its reply was lost
    assert again is first and first.payload == Accepted(id=pool.node_id)
    assert pool.reboot_marker.read_text() == "rebooted\n"
