"""What tests of seed 003's containers need: bubblewrap, a small root filesystem, and a clean-up.

Containers outlive the agent that made them (by design), so every test that makes some kills them
afterwards with :func:`kill_containers`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
from pathlib import Path

from tests.rabbit import unavailable

ROOTFS_MARKER = "etc/skybus-rootfs"
ROOTFS_PROGRAMS = ("sh", "sleep", "cat")


def need_bubblewrap() -> None:
    """Skip (or fail, on CI) a test that needs bubblewrap and nsenter when they are missing, or root."""
    for tool, package in (("bwrap", "bubblewrap"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (apt-get install {package})")
    if os.geteuid() != 0:
        unavailable("the agent makes containers as root, and these tests do not run as root")


def kill_containers(root: Path) -> int:
    """Kill the init of every container recorded under ``root`` (and so all in it); how many."""
    killed = 0
    for record in root.rglob("containers/*/container.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, ProcessLookupError):
            init = json.loads(record.read_text())["init_pid"]
            if os.stat(f"/proc/{init}/ns/pid").st_ino == json.loads(record.read_text())["pid_namespace"]:
                os.kill(init, signal.SIGKILL)
                killed += 1
    return killed


def _libraries(program: str) -> list[str]:
    """The shared libraries (and loader) ``program`` needs, as ldd names them."""
    found = subprocess.run(["ldd", program], capture_output=True, text=True, check=False).stdout
    return re.findall(r"(/\S+) \(0x", found)


def minimal_rootfs_tarball(path: Path) -> Path:
    """A gzipped root filesystem with the host's ``sh``, ``sleep`` and ``cat`` (and their libraries)
    in ``/bin``, an absolute symlink ``/usr/bin/sleep -> /bin/sleep`` as real root filesystems have,
    and a marker file that is only in this root."""
    with tarfile.open(path, "w:gz") as archive:
        added: set[str] = set()
        for name in ROOTFS_PROGRAMS:
            program = os.path.realpath(shutil.which(name) or f"/bin/{name}")
            archive.add(program, arcname=f"bin/{name}")
            for library in _libraries(program):
                if library not in added:
                    archive.add(os.path.realpath(library), arcname=library.lstrip("/"))
                    added.add(library)
        link = tarfile.TarInfo("usr/bin/sleep")
        link.type, link.linkname = tarfile.SYMTYPE, "/bin/sleep"
        archive.addfile(link)
        for directory in ("tmp", "root"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777
            archive.addfile(info)
        marker = b"this is the container's own root\n"
        info = tarfile.TarInfo(ROOTFS_MARKER)
        info.size = len(marker)
        archive.addfile(info, io.BytesIO(marker))
    return path
