"""A bounded schemathesis run against ``skybus up`` (issue 11's acceptance): every operation of
``/openapi.json`` fuzzed as the admin, in its coverage, fuzzing and stateful phases, and no answer
may be a 5xx (``not_a_server_error``). About a minute here (2 cores); ``--max-time`` caps it.

Left out: ``GET /api/events``, a stream that never ends (every call would wait out the request
timeout). Containers the fuzzer made outlive ``skybus up`` (as they outlive any agent): they are
killed after the run.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.containers import kill_containers
from tests.e2e.harness import Skybus

EXAMPLES = 15  # per operation and phase, about a minute here (60, 21k cases, found no 5xx but the one fixed)
MAX_SECONDS = 80


def schemathesis_command() -> Path:
    command = Path(sys.executable).with_name("st")
    if not command.exists():
        pytest.fail("schemathesis is not installed: pip install -e '.[test]'", pytrace=False)
    return command


@pytest.mark.e2e
@pytest.mark.timeout(MAX_SECONDS + 60)
async def test_no_server_error_in_a_bounded_schemathesis_run(tmp_path: Path) -> None:
    skybus = await Skybus(tmp_path / "data").start()
    try:
        assert skybus.token
        run = await asyncio.create_subprocess_exec(
            str(schemathesis_command()), "run", f"{skybus.url}/openapi.json",
            "--header", f"Authorization: Bearer {skybus.token}",
            "--checks", "not_a_server_error",
            "--max-examples", str(EXAMPLES),
            "--seed", "11",
            "--workers", "2",
            "--max-time", str(MAX_SECONDS),
            "--request-timeout", "10",
            "--exclude-path", "/api/events",
            "--no-color",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(run.communicate(), MAX_SECONDS + 45)
        said = output.decode(errors="replace")
        assert run.returncode == 0, said[-6000:] + "\n--- skybus log ---\n" + "\n".join(skybus.log[-40:])
        assert "passed" in said and "Server error" not in said, said[-3000:]
    finally:
        stopped = await skybus.stop()
        kill_containers(tmp_path / "data")
        assert stopped == 0, skybus.log[-20:]
