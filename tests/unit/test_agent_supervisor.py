"""The agent's end of a launcher's socket, against a fake launcher on a real unix socket."""

from __future__ import annotations

import asyncio
import json

from services.agent.supervisor import Home, Supervisor


async def test_concurrent_lists_share_one_request_and_all_get_the_answer(tmp_path) -> None:
    """A restarted agent adopts every job it finds at once: each adoption asks what runs."""
    home = Home(tmp_path)
    lists = 0

    async def launcher(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal lists
        while line := await reader.readline():
            if json.loads(line)["op"] == "list":
                lists += 1
                await asyncio.sleep(0.05)  # every caller asks before the answer comes
                writer.write(json.dumps({"ev": "list", "running": [["job-a", 11], ["job-b", 12]]}).encode() + b"\n")
                await writer.drain()

    server = await asyncio.start_unix_server(launcher, str(home.socket))
    supervisor = Supervisor(home, [], uid=None, env={})
    try:
        assert await supervisor.connect(start=False)
        answers = await asyncio.wait_for(asyncio.gather(*(supervisor.running() for _ in range(3))), 5)
        assert answers == [{"job-a": 11, "job-b": 12}] * 3 and lists == 1
        assert await asyncio.wait_for(supervisor.running(), 5) == {"job-a": 11, "job-b": 12}  # and asks again later
        assert lists == 2
    finally:
        await supervisor.close()
        server.close()
