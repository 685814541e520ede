"""The gateway and the content manager as separate processes over the real RabbitMQ, as in production."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

import aiohttp
import pytest

from tests.e2e.harness import SkybusProcess, skybus_env

pytestmark = pytest.mark.amqp


async def logged(process: SkybusProcess, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in process.log:
            if match := re.search(pattern, line):
                return match
        await asyncio.sleep(0.05)
    raise AssertionError(f"no log line matching {pattern!r}: {process.log[-20:]}")


async def test_upload_and_read_back_across_processes(tmp_path, amqp_url: str) -> None:
    data_dir = str(tmp_path / "data")
    env = skybus_env(SKYBUS_AMQP_URL=amqp_url, SKYBUS_NAMESPACE=f"e2e-{uuid.uuid4().hex[:8]}")
    maker = await SkybusProcess(["token", "create", "--user", "steve", "--data-dir", data_dir], env).start()
    assert await maker.wait() == 0
    token = (await maker.wait_for_line(r"^SKYBUS_TOKEN=(\S+)$")).group(1)
    manager = await SkybusProcess(["content-manager", "--data-dir", data_dir], env).start()
    gateway = await SkybusProcess(["gateway", "--port", "0", "--data-dir", data_dir], env).start()
    try:
        url = (await logged(gateway, r"gateway listening on (http://\S+)")).group(1)
        headers = {"Authorization": f"Bearer {token}"}
        info = {"resourcePath": "a/b.txt", "resourceType": "Static", "mimeType": "Automatic"}
        async with aiohttp.ClientSession(headers=headers) as session:
            deadline = time.monotonic() + 20
            while True:  # until the content manager has declared its queue
                form = aiohttp.FormData(default_to_multipart=True)
                form.add_field("resource", b"over the wire", filename="b.txt")
                form.add_field("resourceInfo", json.dumps(info))
                async with session.post(f"{url}/resources", data=form) as response:
                    if response.status != 503 or time.monotonic() > deadline:
                        assert response.status == 201, await response.text()
                        break
                await asyncio.sleep(0.2)
            async with session.get(f"{url}/resources/contents/a/b.txt") as response:
                assert response.status == 200 and await response.read() == b"over the wire"
                assert response.headers["Content-Type"] == "text/plain"
            async with session.delete(f"{url}/resources/a/b.txt") as response:
                assert response.status == 202
            async with session.get(f"{url}/resources/metadata/a/b.txt") as response:
                assert response.status == 404
    finally:
        assert await gateway.stop() == 0, gateway.log[-20:]
        assert await manager.stop() == 0, manager.log[-20:]
