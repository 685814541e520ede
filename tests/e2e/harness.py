"""Start real skybus processes and talk to them over REST, as a user would."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[2]

FAST_TIMINGS = {
    "SKYBUS_HEARTBEAT_INTERVAL": "0.3",
    "SKYBUS_RESPONDING_TIMEOUT": "2.0",
    # A deleted host is listed again once a heartbeat newer than the deletion is stored.
    "SKYBUS_LIVENESS_WRITE_INTERVAL": "0.5",
    "SKYBUS_LOG_LEVEL": "INFO",
}


def skybus_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYBUS_")}
    env.update(FAST_TIMINGS)
    env.update(extra)
    return env


class SkybusProcess:
    """One ``skybus ...`` subprocess; collects its output; stops it with SIGTERM."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.log: list[str] = []
        self._readers: list[asyncio.Task[None]] = []

    async def start(self) -> SkybusProcess:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=REPO,
        )
        self._readers = [
            asyncio.create_task(self._read(self.process.stdout, self.lines)),
            asyncio.create_task(self._read(self.process.stderr, self.log)),
        ]
        return self

    @staticmethod
    async def _read(stream: asyncio.StreamReader | None, into: list[str]) -> None:
        assert stream is not None
        while line := await stream.readline():
            into.append(line.decode(errors="replace").rstrip("\n"))

    async def wait_for_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := re.search(pattern, line):
                    return match
            if self.process and self.process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}; stdout={self.lines} stderr tail={self.log[-30:]}")

    async def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit by itself."""
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await asyncio.gather(*self._readers, return_exceptions=True)
        return code

    async def stop(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)
        return code

    async def kill(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


class Skybus(SkybusProcess):
    """``skybus up``: knows its URL, the admin token it printed and this host's resource id."""

    url: str
    token: str | None
    local_resource_id: str

    def __init__(self, data_dir: Path, *flags: str, **env: str) -> None:
        super().__init__(["up", "--port", "0", "--data-dir", str(data_dir), *flags], skybus_env(**env))

    async def start(self) -> Skybus:
        await super().start()
        self.url = (await self.wait_for_line(r"skybus is up at (https?://\S+)")).group(1)
        self.local_resource_id = (await self.wait_for_line(r"this host is resource (\S+)")).group(1)
        await self.wait_for_line(r"^Try:")
        token = [m.group(1) for line in self.lines if (m := re.match(r"^SKYBUS_TOKEN=(\S+)$", line))]
        self.token = token[0] if token else None
        return self

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    async def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self.url + path, headers=self.headers(token), **kwargs) as response:
                body = await response.json() if response.content_type == "application/json" else await response.text()
                return response.status, body


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def processes_of(job_id: str) -> list[psutil.Process]:
    """The processes of a job on this machine, found by the environment the agent gives them."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("SKYBUS_JOB_ID") == job_id:
                found.append(process)
        except psutil.Error:
            continue
    return found
