"""Host facts the agent reports with every heartbeat."""

from __future__ import annotations

import platform
import socket

from schemas.resources import HostFacts


def read_host_facts() -> HostFacts:
    os_info = platform.platform()
    try:
        release = platform.freedesktop_os_release()
        os_info = release.get("PRETTY_NAME", os_info)
    except OSError:
        pass
    return HostFacts(
        hostname=socket.gethostname(),
        os_family=platform.system().lower(),
        arch=platform.machine(),
        os_info=os_info,
    )
