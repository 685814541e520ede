"""What heartbeats cost: N simulated agents, each registered through the gateway with its own queue,
beating signed heartbeats as real agents do, against every service as its own process on RabbitMQ.

    .venv/bin/python bench/heartbeats.py [--agents 2000] [--rates 100,1000] [--seconds 10] [--shared-user]

By default each agent beats over a connection of its own broker user (the resource manager provisions
them through the management API, as in a deployment with SKYBUS_BROKER_ADMIN_URL), naming that user on
each beat as a real confined agent does; ``--shared-user`` sends every beat over one connection of the
vhost's own user, as agents given a shared URL do, so the resource manager checks every signature.

Prints CPU ms per heartbeat of every service and of RabbitMQ (psutil), for the first beat of each
agent (its "responding" transition) and then at each steady rate, the heartbeat queue's backlog
after each phase, and whether the broker still takes new connections with every agent's queue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import aiormq
import aiormq.abc
import psutil
from yarl import URL

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from broker import codec  # noqa: E402
from broker.amqp import AmqpBus  # noqa: E402
from broker.amqp_wire import CONTENT_TYPE  # noqa: E402
from broker.envelope import Envelope  # noqa: E402
from broker.topology import Topology  # noqa: E402
from schemas.registry import all_message_types  # noqa: E402
from schemas.resources import Heartbeat, HostFacts  # noqa: E402
from services.security import broker_password, broker_username, signing_key  # noqa: E402
from tests.e2e.fleet import MANAGERS, Fleet  # noqa: E402
from tests.e2e.harness import SkybusProcess, eventually  # noqa: E402
from tests.rabbit import admin_url, fresh_vhost, management  # noqa: E402

FACTS = HostFacts(hostname="sim", os_family="linux", arch="x86_64", os_info="Debian 12")


def broker_pid() -> int:
    for process in psutil.process_iter(["name", "cmdline", "environ"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "beam.smp" in cmdline and "rabbit boot" in cmdline:
            env = process.info.get("environ") or {}
            if env.get("RABBITMQ_NODENAME", "rabbit@localhost").startswith("rabbit@"):
                return process.pid
    raise SystemExit("no RabbitMQ node rabbit@ found on this machine")


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def queue_backlog(vhost: str, prefix: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:15672/api/queues/{urllib.request.quote(vhost, safe='')}")
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
    with urllib.request.urlopen(request, timeout=30) as response:
        queues = json.load(response)
    return sum(q.get("messages", 0) for q in queues if q["name"].startswith(prefix))


class Simulated:
    def __init__(self, resource_id: str, token: str) -> None:
        self.resource_id = resource_id
        self.token = token
        self.key = signing_key(token)
        self.started_at = time.time()
        self.channel: aiormq.abc.AbstractChannel | None = None

    async def connect(self, vhost_url: str) -> aiormq.abc.AbstractConnection:
        """A connection of this agent's own broker user (plain aiormq: thousands of them in one process)."""
        user = broker_username(self.resource_id)
        url = URL(vhost_url).with_user(user).with_password(broker_password(self.token))
        connection = await aiormq.connect(str(url))
        self.channel = await connection.channel()
        return connection

    async def send(self, topology: Topology, envelope: Envelope) -> None:
        """What a confined agent's bus does with a transient message: no confirm, its user id named."""
        assert self.channel is not None
        properties = aiormq.spec.Basic.Properties(
            content_type=CONTENT_TYPE,
            delivery_mode=1,
            message_id=envelope.message_id,
            message_type=envelope.type,
            user_id=broker_username(self.resource_id),
        )
        key = topology.agent_routing_key(self.resource_id, envelope.type)
        await self.channel.basic_publish(
            codec.encode(envelope), exchange=topology.agent_events, routing_key=key, properties=properties
        )

    def beat(self) -> Envelope:
        envelope = Envelope(
            Heartbeat(facts=FACTS, agent_started_at=self.started_at),
            sender=f"agent:{self.resource_id}",
            resource_id=self.resource_id,
        )
        return envelope.with_signature(self.key.sign(codec.signed_bytes(envelope)))


async def register(fleet: Fleet, count: int, agents: list[Simulated]) -> list[Simulated]:
    """Register ``count`` agents, each appended to ``agents`` as soon as it is (so a failure leaves
    the ones made there, for the clean-up)."""
    headers = {"Authorization": f"Bearer {fleet.token}"}
    semaphore = asyncio.Semaphore(32)
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one(n: int) -> None:
            async with semaphore:
                body = {"hostname": f"sim-{n:05d}", "user": "admin"}
                for _ in range(100):  # 503 until the resource manager has declared its queue
                    async with session.post(fleet.url + "/api/resources", json=body) as response:
                        created = await response.json()
                        if response.status != 503:
                            break
                    await asyncio.sleep(0.2)
                assert response.status == 200, created
                agents.append(Simulated(created["id"], created["token"]))

        await asyncio.gather(*(one(n) for n in range(count)))
    return agents


async def beat(bus: AmqpBus | None, topology: Topology, agents: list[Simulated], rate: float, seconds: float) -> int:
    """Send ``rate`` heartbeats a second, round robin over ``agents``, for ``seconds``: over each agent's
    own connection, or over ``bus`` (one shared connection) when given."""
    sent, started = 0, time.monotonic()
    tick = 0.05
    while time.monotonic() - started < seconds:
        due = int((time.monotonic() - started + tick) * rate) - sent
        for _ in range(max(0, due)):
            agent = agents[sent % len(agents)]
            if bus is None:
                await agent.send(topology, agent.beat())
            else:
                key = topology.agent_routing_key(agent.resource_id, Heartbeat.message_type)
                await bus.publish(topology.agent_events, agent.beat(), key, transient=True)
            sent += 1
        await asyncio.sleep(tick)
    return sent


async def measure(pids: dict[str, int], work) -> tuple[dict[str, float], float, object]:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    result = await work
    await asyncio.sleep(2)  # let the consumers finish what was sent
    spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    return spent, time.monotonic() - started, result


def table(title: str, spent: dict[str, float], beats: int, backlog: int) -> None:
    print(f"\n{title}: {beats} heartbeats; backlog of the heartbeat queue after it: {backlog}")
    for name, seconds in spent.items():
        print(f"  {name:18s} {seconds * 1000 / max(beats, 1):7.3f} CPU ms per heartbeat")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--rates", default="100,1000", help="heartbeats per second, one phase each")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--shared-user", action="store_true", help="every beat over one connection of the vhost's user")
    args = parser.parse_args()

    with fresh_vhost("skybus-bench") as vhost:
        data = Path(tempfile.mkdtemp(prefix="skybus-beats-"))
        # Real agents' timings: a host is judged silent after 15 s without a beat.
        # Real agents' timings and the production write interval (tests write liveness every 0.5 s).
        quiet = {"SKYBUS_LOG_LEVEL": "WARNING", "SKYBUS_LIVENESS_WRITE_INTERVAL": "30"}
        if not args.shared_user:  # the resource manager gives each agent its own broker user
            quiet["SKYBUS_BROKER_ADMIN_URL"] = str(admin_url())
        fleet = Fleet(data, vhost.url, SKYBUS_RESPONDING_TIMEOUT="60", **quiet)
        topology = Topology(fleet.env["SKYBUS_NAMESPACE"])
        bus = AmqpBus(vhost.url, all_message_types(), topology, sender="bench")
        connections: list[aiormq.abc.AbstractConnection] = []
        agents: list[Simulated] = []
        try:
            maker = await SkybusProcess(["token", "create", "--user", "admin", "--admin"], fleet.env).start()
            assert await maker.wait() == 0, maker.log
            fleet.token = (await maker.wait_for_line(r"^SKYBUS_TOKEN=(\S+)$")).group(1)
            for name in (*MANAGERS, "gateway"):
                await fleet.start_service(name)

            async def up() -> bool:
                try:
                    return (await fleet.call("GET", "/health"))[0] == 200
                except aiohttp.ClientError:
                    return False

            await eventually(up, timeout=30)
            await bus.start()
            started = time.monotonic()
            await register(fleet, args.agents, agents)
            print(f"{len(agents)} agents registered in {time.monotonic() - started:.1f} s")
            started = time.monotonic()
            for agent in agents:  # each agent's own durable queue, as a real agent declares it
                await (await bus.subscribe(topology.agent_queue(agent.resource_id), _ignore)).cancel()
            print(f"{len(agents)} agent queues declared in {time.monotonic() - started:.1f} s")
            sender: AmqpBus | None = bus
            if not args.shared_user:
                started = time.monotonic()
                connecting = asyncio.Semaphore(50)

                async def connect(agent: Simulated) -> None:
                    async with connecting:
                        connections.append(await agent.connect(vhost.url))

                await asyncio.gather(*(connect(agent) for agent in agents))
                sender = None
                print(f"{len(agents)} agents connected as their own broker users in {time.monotonic() - started:.1f} s")

            pids = {name: process.process.pid for name, process in fleet.processes.items()}  # type: ignore[union-attr]
            pids["rabbitmq"] = broker_pid()
            heartbeat_queues = f"{topology.namespace}.resource-manager.heartbeats"

            spent, _, sent = await measure(pids, beat(sender, topology, agents, rate=500, seconds=len(agents) / 500))
            table("first beat of every agent (a 'responding' transition each)", spent, sent,
                  queue_backlog(vhost.name, heartbeat_queues))  # fmt: skip
            for rate in (float(r) for r in args.rates.split(",")):
                spent, elapsed, sent = await measure(pids, beat(sender, topology, agents, rate, args.seconds))
                table(f"steady, {rate:g} heartbeats/s for {args.seconds:g} s (sent {sent / (elapsed - 2):.0f}/s)",
                      spent, sent, queue_backlog(vhost.name, heartbeat_queues))  # fmt: skip

            probe = AmqpBus(vhost.url, all_message_types(), topology, sender="probe")
            await probe.start()  # a new connection with every agent's queue declared
            await probe.close()
            print(f"\nthe broker still takes new connections with {len(agents)} agents' queues declared: yes")
        finally:
            await asyncio.gather(*(connection.close() for connection in connections), return_exceptions=True)
            await bus.close()
            await fleet.stop()
            if not args.shared_user:  # at once: a vhost holding thousands of users' permissions is slow to delete
                users = [broker_username(agent.resource_id) for agent in agents]
                management("POST", "/api/users/bulk-delete", {"users": users}, timeout=300)
            shutil.rmtree(data, ignore_errors=True)


async def _ignore(envelope: Envelope) -> None:
    return None


if __name__ == "__main__":
    asyncio.run(main())
