"""Seed 003 against ``skybus up``: its local agent answers live, with a real container in it."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from tests.containers import kill_containers, need_bubblewrap
from tests.e2e.harness import Skybus, eventually


def host_process_of(job_id: str, cmdline: list[str]) -> psutil.Process:
    """The process of a container's job as the host sees it."""
    found = []
    for process in psutil.process_iter(["cmdline", "environ"]):
        if (process.info["environ"] or {}).get("SKYBUS_CONTAINER_JOB") == job_id and process.info["cmdline"] == cmdline:
            found.append(process)
    assert len(found) == 1, found
    return found[0]


async def test_a_fleet_of_one_answers_the_resource_pool_api(tmp_path: Path) -> None:
    need_bubblewrap()
    rebooted = tmp_path / "rebooted"
    data = tmp_path / "data"
    skybus = await Skybus(data, "--allow-reboot", SKYBUS_REBOOT_COMMAND=f"date > {rebooted}").start()
    try:
        node = skybus.local_resource_id

        async def running() -> bool:
            status, nodes = await skybus.call("GET", "/nodes")
            return status == 200 and [n["status"] for n in nodes if n["id"] == node] == ["running"]

        await eventually(running)
        status, nodes = await skybus.call("GET", "/nodes")
        assert set(nodes[0]) == {"hostname", "id", "status"}

        status, [memory] = await skybus.call("GET", f"/nodes/{node}/mem")
        here = psutil.virtual_memory()
        assert status == 200 and memory["total"] == here.total
        assert abs(memory["available"] - here.available) < max(here.total // 10, 512 * 1024**2)
        assert abs(memory["used"] - here.used) < max(here.total // 10, 512 * 1024**2)

        containers = f"/nodes/{node}/containers"
        body = {"id": "e2e", "hostname": "e2e-box", "flist": "", "hostNetworking": False, "nics": [], "ports": []}
        assert await skybus.call("POST", containers, json=body) == (204, "")
        assert await skybus.call("GET", containers) == (
            200,
            [{"flist": "", "hostname": "e2e-box", "id": "e2e", "status": "running"}],
        )

        process = {"name": "/bin/sh", "pwd": "/tmp", "args": ["-c", "hostname > name; exec sleep 120"], "env": []}
        status, _ = await skybus.call("POST", f"{containers}/e2e/processes", json=process)
        assert status == 202
        status, jobs = await skybus.call("GET", f"{containers}/e2e/jobs")
        assert status == 200 and len(jobs) == 1 and abs(jobs[0]["startTime"] - time.time() * 1000) < 10_000
        job_id = jobs[0]["id"]

        async def sleeping() -> bool:
            _, processes = await skybus.call("GET", f"{containers}/e2e/processes")
            return any(p["cmdline"] == "sleep 120" for p in processes)

        await eventually(sleeping)
        _, processes = await skybus.call("GET", f"{containers}/e2e/processes")
        [sleeper] = [p for p in processes if p["cmdline"] == "sleep 120"]
        host = host_process_of(job_id, ["sleep", "120"])
        assert sleeper["pid"] != host.pid and sleeper["pid"] < 10  # the container's own PID namespace
        assert Path(f"/proc/{host.pid}/root/tmp/name").read_text() == "e2e-box\n"  # and its own hostname

        assert (await skybus.call("DELETE", f"{containers}/e2e/jobs/{job_id}"))[0] == 204
        assert await skybus.call("GET", f"{containers}/e2e/jobs") == (200, [])
        assert not host.is_running() or host.status() == psutil.STATUS_ZOMBIE

        assert not rebooted.exists()
        assert (await skybus.call("POST", f"/nodes/{node}/reboot"))[0] == 204
        assert rebooted.read_text().strip()
    finally:
        kill_containers(data)
        assert await skybus.stop() == 0, skybus.log[-20:]
