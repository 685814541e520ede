"""Item 2 (seed 003): a process in a container runs with no capability, so a ``:ro`` bind stays
read-only; and only an admin starts one."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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


needs_root_and_bwrap = pytest.mark.skipif(
    (os.geteuid() != 0 or shutil.which("bwrap") is None) and not on_ci(), reason="containers need root and bwrap"
)


@contextmanager
def container(spec: ContainerSpec) -> Iterator[int]:
    """A container of ``spec`` as the agent makes it; yields its init's pid."""
    read_info_fd, write_info = os.pipe()
    process = subprocess.Popen(bwrap_argv("bwrap", spec, None, write_info), pass_fds=(write_info,))
    os.close(write_info)
    try:
        info = read_info(read_info_fd, 10.0)
        os.close(read_info_fd)
        assert info is not None
        yield info["child-pid"]
    finally:
        process.kill()
        process.wait()


def run_in(init_pid: int, script: str, *, uid: int | None) -> subprocess.CompletedProcess[str]:
    """``script`` as the agent starts a process in the container: in a user namespace whose root is
    ``uid`` on the host, or (None) as the host's root without capabilities."""
    command = ["/bin/sh", "-c", script]
    argv = nsenter_argv(init_pid, host_networking=False, pwd="/", command=command, userns_uid=uid)
    return subprocess.run(argv, timeout=20, capture_output=True, text=True, check=False)


@needs_root_and_bwrap
@pytest.mark.parametrize("uid", [65534, None], ids=["user namespace", "privileged"])
def test_a_process_in_a_container_cannot_remount_a_read_only_bind(tmp_path: Path, uid: int | None) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "file").write_text("host's")
    spec = ContainerSpec(id="box1", filesystems=[f"{shared}:/mnt/data:ro"])
    with container(spec) as init_pid:
        attack = "mount -o remount,rw,bind /mnt/data && echo changed > /mnt/data/file"
        run = run_in(init_pid, attack, uid=uid)
        assert run.returncode != 0
        assert (shared / "file").read_text() == "host's"


@needs_root_and_bwrap
def test_a_containers_root_is_an_unprivileged_uid_on_the_host(tmp_path: Path) -> None:
    """Root in the container, 65534 outside: what it writes to a read-write bind is not the host root's."""
    shared = tmp_path / "rw"
    shared.mkdir()
    shared.chmod(0o777)  # a directory the host lets that uid write (the bind adds no right)
    spec = ContainerSpec(id="box2", filesystems=[f"{shared}:/mnt/rw"])
    with container(spec) as init_pid:
        run = run_in(
            init_pid,
            "id -u; cat /proc/self/uid_map; grep ^CapEff /proc/self/status; touch /mnt/rw/made",
            uid=65534,
        )
        assert run.returncode == 0, run.stderr
        inside, uid_map, caps = run.stdout.splitlines()[:3]
        assert inside == "0"
        assert uid_map.split() == ["0", "65534", "1"]
        assert caps.split() == ["CapEff:", "0000000000000000"]
        made = (shared / "made").stat()
        assert (made.st_uid, made.st_gid) == (65534, 65534)
