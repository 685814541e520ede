"""Two ``skybus up`` on one data dir: the second refuses at once, naming the dir and the holder's pid;
a holder killed with SIGKILL leaves no stale lock behind."""

from __future__ import annotations

import time

import pytest

from tests.e2e.harness import Skybus, SkybusProcess, skybus_env

pytestmark = pytest.mark.e2e


async def test_a_second_up_on_the_same_data_dir_refuses_and_a_killed_one_does_not_block(tmp_path) -> None:
    data = tmp_path / "data"
    first = await Skybus(data).start()
    try:
        assert first.process is not None
        started = time.monotonic()
        second = await SkybusProcess(["up", "--port", "0", "--data-dir", str(data)], skybus_env()).start()
        code = await second.wait(timeout=30)
        assert code != 0 and time.monotonic() - started < 20
        assert len(second.log) == 1, second.log  # one clear line, no traceback
        assert str(data.resolve()) in second.log[0] and f"pid {first.process.pid}" in second.log[0]
        assert not any("skybus is up" in line for line in second.lines)
        assert (await first.call("GET", "/health/ready"))[0] == 200  # the first one is untouched
    finally:
        await first.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
    third = await Skybus(data).start()
    try:
        assert (await third.call("GET", "/health/ready"))[0] == 200
    finally:
        await third.stop()
