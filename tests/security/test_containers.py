"""Item 2 (seed 003): a process in a container runs with no capability, so a ``:ro`` bind stays
read-only; and only an admin starts one."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from schemas.pool import ContainerSpec
from services.agent.sandbox import bwrap_argv, nsenter_argv, read_info
from tests.rabbit import on_ci
from tests.security.stack import Secure, secure_fixture  # noqa: F401

PROCESS = {"name": "/bin/sh", "args": ["-c", "mount -o remount,rw /data"], "pwd": "/", "env": []}


async def test_a_non_admin_may_not_start_a_process_in_a_container(secure: Secure) -> None:
    path = f"/nodes/{uuid.uuid4()}/containers/box1/processes"
    status, body = await secure.call("POST", path, "steve", json=PROCESS)
    assert status == 403, body
    assert "admin" in body["error"]
    status, body = await secure.call("POST", path, "admin", json=PROCESS)
    assert status != 403, body  # an admin gets as far as the node (unknown here)


@pytest.mark.skipif(
    (os.geteuid() != 0 or shutil.which("bwrap") is None) and not on_ci(), reason="containers need root and bwrap"
)
def test_a_process_in_a_container_cannot_remount_a_read_only_bind(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "file").write_text("host's")
    spec = ContainerSpec(id="box1", filesystems=[f"{shared}:/mnt/data:ro"])
    read_info_fd, write_info = os.pipe()
    argv = bwrap_argv("bwrap", spec, None, write_info)
    container = subprocess.Popen(argv, pass_fds=(write_info,))
    os.close(write_info)
    try:
        info = read_info(read_info_fd, 10.0)
        os.close(read_info_fd)
        assert info is not None
        init_pid = info["child-pid"]
        attack = ["/bin/sh", "-c", "mount -o remount,rw,bind /mnt/data && echo changed > /mnt/data/file"]
        run = subprocess.run(nsenter_argv(init_pid, host_networking=False, pwd="/", command=attack), timeout=20)
        assert run.returncode != 0
        assert (shared / "file").read_text() == "host's"
    finally:
        container.kill()
        container.wait()
