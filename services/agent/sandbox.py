"""The host-side pieces of a container: bubblewrap's command line, detached launches, what /proc says
about a PID namespace, and root filesystems from tarballs. No agent state here; see
:mod:`services.agent.containers` for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from schemas.pool import ContainerSpec, CpuTimes, ProcessView, parse_mount

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The container's own first process, whose only job is to keep its namespaces alive (bwrap's init,
# pid 1, lives as long as it does). 68 years: coreutils and busybox both take a plain number.
KEEPALIVE = ("sleep", "2147483647")
# The host's system directories a container with no ``flist`` sees, read-only.
HOST_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")


class PoolError(Exception):
    """A call of seed 003 that this node refuses, with the HTTP status it maps to."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# Bubblewrap's command line.


def host_system_binds() -> list[str]:
    """bwrap options that show the host's system directories read-only (a merged-/usr link as a link)."""
    argv = []
    for directory in HOST_SYSTEM_DIRS:
        if os.path.islink(directory):
            argv += ["--symlink", os.readlink(directory), directory]
        elif os.path.isdir(directory):
            argv += ["--ro-bind", directory, directory]
    return argv


def bwrap_argv(tool: str, spec: ContainerSpec, root: Path | None, info_fd: int) -> list[str]:
    """The sandbox of ``spec``: its own PID, UTS, IPC and mount namespaces (and network namespace
    unless ``hostNetworking``), ``root`` bound read-write as ``/`` (or the host's system directories
    read-only), the ``filesystems`` bound on top; its namespaces' ids are written to ``info_fd``."""
    argv = [tool, "--unshare-pid", "--unshare-uts", "--unshare-ipc", "--hostname", spec.hostname or spec.id]
    if not spec.hostNetworking:
        argv.append("--unshare-net")
    if root is None:
        argv += host_system_binds()
        argv += ["--perms", "1777", "--tmpfs", "/tmp", "--tmpfs", "/run", "--dir", "/root"]
    else:
        argv += ["--bind", str(root), "/"]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for mount in spec.filesystems:
        source, target, read_only = parse_mount(mount)
        # bwrap makes a missing parent of a bind 0700: root's alone, not the user namespace root's.
        for parent in reversed(Path(target).parents[:-1]):
            argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--ro-bind" if read_only else "--bind", source, target]
    return [*argv, "--chdir", "/", "--info-fd", str(info_fd), "--", *KEEPALIVE]


DROP_CAPABILITIES = ["--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs", "--"]
"""setpriv's options for a container's process: root with no capability left, so it can neither
remount a ``:ro`` bind read-write nor mount, load modules or change the host."""


USERNS_ENTER = Path(__file__).with_name("userns_enter.py")


def nsenter_argv(
    init_pid: int,
    *,
    host_networking: bool,
    pwd: str,
    command: list[str],
    setpriv: str | None = "setpriv",
    userns_uid: int | None = None,
) -> list[str]:
    """Run ``command`` in every namespace of the container whose pid 1 is ``init_pid``, in ``pwd``,
    with every capability dropped by ``setpriv`` (its path inside the container), unless None.
    With ``userns_uid``, also in a user namespace of its own whose root is that unprivileged uid on
    the host (:mod:`services.agent.userns_enter`, which nsenter cannot do); else as the host's root.

    The working directory is opened through ``/proc/<pid>/root`` before nsenter changes root: a
    plain path would be opened on the host's side of the chroot.
    """
    workdir = f"/proc/{init_pid}/root{pwd or '/'}"
    confined = command if setpriv is None else [setpriv, *DROP_CAPABILITIES, *command]
    if userns_uid is not None:
        net = [] if host_networking else ["--net"]
        helper = [sys.executable, "-I", str(USERNS_ENTER), str(init_pid), str(userns_uid), *net, workdir]
        return [*helper, "--", *confined]
    namespaces = ["--pid", "--mount", "--uts", "--ipc", *([] if host_networking else ["--net"])]
    return ["nsenter", f"--target={init_pid}", *namespaces, "--root", f"--wd={workdir}", "--", *confined]


# Detached launches: not the agent's children, so nothing the agent does on exit can end them.

_DETACH = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 &'


async def launch_detached(argv: list[str], log: Path, env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> int:
    """Start ``argv`` in the background of a shell that exits at once; return its process group.

    The shell leads a new session, so the group (its pid) holds ``argv`` and whatever that forks;
    ``argv`` itself is reparented to init, away from the agent.
    """
    shell = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", _DETACH, "sh", str(log), *argv,
        stdin=asyncio.subprocess.DEVNULL, env=env, pass_fds=pass_fds, start_new_session=True,
    )  # fmt: skip
    await shell.wait()
    return shell.pid


def read_info(fd: int, timeout: float) -> dict[str, int] | None:
    """bwrap's ``--info-fd`` JSON (``child-pid`` and the namespaces' inodes), or None if it exited
    before writing it."""
    data = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        with contextlib.suppress(ValueError):
            return json.loads(data)
    return None


# What /proc says about a container's PID namespace.


@dataclass(frozen=True, slots=True)
class Member:
    """A process of a container, as the host sees it."""

    host_pid: int
    pgid: int
    zombie: bool


def pid_namespace(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def is_init_alive(pid: int, namespace: int) -> bool:
    """Whether ``pid`` is still the live pid 1 of the PID namespace ``namespace`` (not a reused pid)."""
    if pid_namespace(pid) != namespace:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_ready(init_pid: int, namespace: int, timeout: float) -> bool:
    """Wait until the container's keep-alive runs: bwrap writes its info before it has built the
    container's root, and runs the keep-alive only once it has. False if bwrap gave up."""
    keepalive = ("\0".join(KEEPALIVE) + "\0").encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_init_alive(init_pid, namespace):
        for member in members(namespace):
            with contextlib.suppress(OSError):
                if member.host_pid != init_pid and Path(f"/proc/{member.host_pid}/cmdline").read_bytes() == keepalive:
                    return True
        time.sleep(0.01)
    return False


def _stat(pid: str) -> tuple[int, bool] | None:
    """A process's group and whether it is a zombie, from ``/proc/<pid>/stat``; None if it ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
    return int(fields[2]), fields[0] == "Z"


def members(namespace: int) -> list[Member]:
    """Every process whose PID namespace is ``namespace``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and pid_namespace(int(entry.name)) == namespace:
            stat = _stat(entry.name)
            if stat is not None:
                found.append(Member(int(entry.name), *stat))
    return found


def live_groups() -> set[int]:
    """The process groups with a live (not zombie) member on this host, in any namespace: a job's
    group holds nsenter on the host's side and the job in the container's."""
    groups = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := _stat(entry.name)) is not None and not stat[1]:
            groups.add(stat[0])
    return groups


def process_view(host_pid: int) -> ProcessView | None:
    """One process of a container with its pid as the container sees it; None if it ended."""
    try:
        process = psutil.Process(host_pid)
        with process.oneshot():
            cmdline = " ".join(process.cmdline()) or process.name()
            times = process.cpu_times()
            try:
                memory = process.memory_full_info()
                swap = memory.swap
            except psutil.AccessDenied:
                memory, swap = process.memory_info(), 0
        status = Path(f"/proc/{host_pid}/status").read_text()
    except (psutil.Error, OSError):
        return None
    ns_pids = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [str(host_pid)])
    cpu = CpuTimes(user=times.user, system=times.system, iowait=getattr(times, "iowait", 0.0))
    return ProcessView(cmdline=cmdline, cpu=cpu, pid=int(ns_pids[-1]), rss=memory.rss, swap=swap, vms=memory.vms)


def executable_in(root: str, name: str, path: str = DEFAULT_PATH) -> str | None:
    """Where ``name`` is in the tree ``root`` (a path, or a name looked up on ``path``), as the
    container sees it; None if it is not there. Links are not followed: they mean the container's
    own root, not the host's."""
    candidates = [name] if "/" in name else [f"{directory}/{name}" for directory in path.split(":") if directory]
    for candidate in candidates:
        if candidate.startswith("/") and os.path.lexists(f"{root}{candidate}"):
            return candidate
    return None


# Root filesystems.


def own_tree(root: Path, uid: int) -> None:
    """Give ``root`` and everything under it (links themselves, not their targets) to ``uid``: the
    files of a container whose processes are root in a user namespace mapped to ``uid``."""
    os.lchown(root, uid, uid)
    for directory, names, files in os.walk(root):
        for name in (*names, *files):
            os.lchown(os.path.join(directory, name), uid, uid)


def extract_rootfs(tarball: Path, root: Path) -> None:
    """Extract a root filesystem tarball (any compression tar reads) into ``root``.

    Python's ``tar`` filter keeps every member inside ``root``; an absolute symlink, common in a
    root filesystem (``bin/sh -> /bin/busybox``), means the container's root and is rewritten as
    the same link relative to its own directory, which the filter then checks like any other.
    """

    def inside_root(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo | None:
        if member.issym() and member.linkname.startswith("/"):
            start = os.path.dirname(os.path.normpath("/" + member.name))
            member = member.replace(linkname=os.path.relpath(member.linkname, start), deep=False)
        return tarfile.tar_filter(member, destination)

    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:*") as archive:
        archive.extractall(root, filter=inside_root)
