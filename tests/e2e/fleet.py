"""Every skybus service as its own process on the real RabbitMQ, sharing one SQLite store."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.harness import SkybusProcess, eventually, skybus_env

MANAGERS = ("resource-manager", "job-manager", "content-manager", "role-manager")


def replica_name(service: str, n: int) -> str:
    return service if n == 1 else f"{service}-{n}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Fleet:
    """``replicas`` processes of each manager and of the gateway (named ``job-manager``,
    ``job-manager-2``, …; gateways at ``urls``, the first at ``url``), one agent."""

    def __init__(self, data_dir: Path, amqp_url: str, *, replicas: int = 1, **env: str) -> None:
        self.data_dir = data_dir
        self.replicas = replicas
        self.ports = [free_port() for _ in range(replicas)]
        self.port = self.ports[0]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.url = self.urls[0]
        self.env = skybus_env(
            SKYBUS_AMQP_URL=amqp_url,
            SKYBUS_NAMESPACE=f"fleet-{uuid.uuid4().hex[:8]}",
            SKYBUS_DATA_DIR=str(data_dir),
            SKYBUS_PORT=str(self.port),
            SKYBUS_PUBLIC_URL=self.url,
            **env,
        )
        self.processes: dict[str, SkybusProcess] = {}
        self.token = ""
        self.agent_id = ""
        self.agent_token = ""

    async def start(self) -> Fleet:
        maker = await SkybusProcess(["token", "create", "--user", "admin", "--admin"], self.env).start()
        assert await maker.wait() == 0, maker.log
        self.token = (await maker.wait_for_line(r"^SKYBUS_TOKEN=(\S+)$")).group(1)
        for name in self.services:
            await self.start_service(name)

        async def gateway_up() -> bool:
            try:
                return (await self.call("GET", "/health"))[0] == 200
            except aiohttp.ClientError:
                return False

        await eventually(gateway_up, timeout=30)
        created: dict[str, Any] = {}

        async def registered() -> bool:  # 503 until the resource manager has declared its queue
            nonlocal created
            body = {"hostname": "fleet-host", "user": "admin"}
            status, created = await self.call("POST", "/api/resources", json=body)
            assert status in (200, 503), created
            return status == 200

        await eventually(registered, timeout=30, interval=0.2)
        self.agent_id, self.agent_token = created["id"], created["token"]
        await self.start_agent()
        return self

    @property
    def services(self) -> list[str]:
        """Every service process by name, the gateways last."""
        return [replica_name(name, n) for name in (*MANAGERS, "gateway") for n in range(1, self.replicas + 1)]

    async def start_service(self, name: str) -> SkybusProcess:
        """Start (or start again) the service process ``name`` (``job-manager-2``: its second replica)."""
        kind, _, n = name.rpartition("-")
        kind, n = (kind, int(n)) if n.isdigit() else (name, 1)
        env = self.env if kind != "gateway" else {**self.env, "SKYBUS_PORT": str(self.ports[n - 1])}
        process = await SkybusProcess([kind], env).start()
        self.processes[name] = process
        return process

    async def start_agent(self) -> SkybusProcess:
        args = ["agent", "--resource-id", self.agent_id, "--token", self.agent_token]
        process = await SkybusProcess(args, self.env).start()
        self.processes["agent"] = process

        async def responding() -> bool:
            status, body = await self.call("GET", f"/api/resources/{self.agent_id}")
            return status == 200 and body["responding"]

        await eventually(responding, timeout=30)
        return process

    @property
    def agent_ledger(self) -> Path:
        return self.data_dir / f"agent-{self.agent_id}" / "ledger.jsonl"

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self.url + path, headers=headers, **kwargs) as response:
                if response.content_type == "application/json":
                    return response.status, await response.json()
                return response.status, await response.read()

    async def stop(self) -> dict[str, int]:
        codes = {}
        for name in ["agent", *reversed(self.services)]:
            if name in self.processes:
                codes[name] = await self.processes[name].stop()
        return codes

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n" + "\n".join(p.log[-20:]) for name, p in self.processes.items())
