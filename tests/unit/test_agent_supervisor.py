"""The agent's end of a launcher's socket, against a fake launcher on a real unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import stat

from services.agent.supervisor import Home, JobOptions, Supervisor, Supervisors


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


def test_a_new_default_scratch_dir_is_traversable_by_sandboxes_whatever_the_umask(tmp_path) -> None:
    """``skybus`` runs under umask 0077: a fresh ``/dev/shm/skybus-<uid>`` came out 0700, and every
    sandboxed job (another uid) failed to reach its home under it."""
    scratch = tmp_path / f"skybus-{os.getuid()}" / "agent-x"
    previous = os.umask(0o077)
    try:
        Supervisors(tmp_path / "state", JobOptions(scratch_dir=scratch))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(scratch.parent.stat().st_mode) == 0o711
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o711
