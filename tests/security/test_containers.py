"""Item 2 (seed 003): a process in a container runs as the container's root, so only an admin
starts one."""

from __future__ import annotations

import uuid

from tests.security.stack import Secure, secure_fixture  # noqa: F401

PROCESS = {"name": "/bin/sh", "args": ["-c", "mount -o remount,rw /data"], "pwd": "/", "env": []}


async def test_a_non_admin_may_not_start_a_process_in_a_container(secure: Secure) -> None:
    path = f"/nodes/{uuid.uuid4()}/containers/box1/processes"
    status, body = await secure.call("POST", path, "steve", json=PROCESS)
    assert status == 403, body
    assert "admin" in body["error"]
    status, body = await secure.call("POST", path, "admin", json=PROCESS)
    assert status != 403, body  # an admin gets as far as the node (unknown here)
