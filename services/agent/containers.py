"""Containers on this host (seed 003), made with bubblewrap; their jobs started in them with nsenter.

A job (a process started in a container) runs in a user namespace of its own whose root is an
unprivileged uid on the host (``SKYBUS_CONTAINER_UID``, 65534), with every capability dropped: the
container's mounts belong to the host's namespace, so it can neither remount a ``:ro`` bind nor
touch what the host's root owns (:mod:`services.agent.userns_enter`). An operator may run them as
the host's root instead (``SKYBUS_PRIVILEGED_CONTAINERS``), still without capabilities.

A container is a bwrap sandbox with its own PID, UTS (hostname), IPC and mount namespaces, and its
own network namespace (a loopback only) unless ``hostNetworking``. Its root is a tarball from the
content manager extracted under the agent's state dir and bound read-write, or the host's system
directories bound read-only. Its pid 1 is bwrap's init and its pid 2 a ``sleep`` that only keeps
the namespaces alive; everything else in it is a *job*, started with ``nsenter`` into those
namespaces, tracked by a uuid and its start time in milliseconds.

Records, under ``<state dir>/containers/<id>/``: ``container.json`` (the spec's fields, the host
pid of the container's init and its PID namespace's inode, which together tell a live container
from a reused pid), ``jobs/<job id>.json`` (start time, process group), the logs, and ``rootfs/``.

Containers outlive the agent. bwrap and every job are started detached (a shell that backgrounds
them and exits), so they are not the agent's children: an agent that stops, crashes or is upgraded
leaves them running, and the next agent takes them up from the records. We chose this over tying a
container to its agent (bwrap's ``--die-with-parent``) because a container holds services, and an
agent restart must not take them down, as docker's live-restore keeps containers through a daemon
restart. A container ends with ``DELETE``, a kill of its init, or the host (a reboot leaves it
``halted``: its record stays, so it is listed, but it runs nothing).

Each job is a process group of its own (the detached shell's): killing a job sends SIGTERM to the
whole group, then SIGKILL after the grace period.

A job's stdout and stderr go to one log, ``jobs/<job id>.log``, read from an offset while it runs
and kept after it ends (its record goes, its log stays) until the container is deleted; only the
logs of the last :data:`KEEP_ENDED_LOGS` ended jobs of a container are kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from schemas.pool import (
    CONTAINER_ID,
    ContainerJob,
    ContainerJobLog,
    ContainerSpec,
    ContainerView,
    ProcessSpec,
    ProcessView,
    parse_mount,
)
from services.agent.data_client import DataClientError
from services.agent.sandbox import (
    DEFAULT_PATH,
    KEEPALIVE,
    PoolError,
    bwrap_argv,
    executable_in,
    extract_rootfs,
    is_init_alive,
    launch_detached,
    live_groups,
    members,
    nsenter_argv,
    own_tree,
    process_view,
    read_info,
    wait_ready,
)

log = logging.getLogger(__name__)

RECORD = "container.json"
KEEP_ENDED_LOGS = 64
JOB_ENV = "SKYBUS_CONTAINER_JOB"  # in every job's environment: which job a process belongs to
INSTALL_HINT = "apt-get install bubblewrap (Debian, Ubuntu) or dnf install bubblewrap (Fedora, RHEL)"


class Downloads(Protocol):
    async def download(self, data_id: str, destination: Path, *, executable: bool = False) -> None: ...


class Containers:
    def __init__(
        self,
        state_dir: Path,
        data: Downloads,
        *,
        tool: str = "bwrap",
        kill_grace: float = 5.0,
        start_timeout: float = 10.0,
        uid: int | None = 65534,
    ) -> None:
        """``uid``: the unprivileged host uid that is root in each container process's user namespace;
        None runs them as the host's root, capabilities dropped (``SKYBUS_PRIVILEGED_CONTAINERS``)."""
        self.dir = state_dir.absolute()  # bwrap and the detached shells must not depend on a cwd
        self._data = data
        self._tool = tool
        self._uid = uid
        self._kill_grace = kill_grace
        self._start_timeout = start_timeout
        self._changing = asyncio.Lock()  # creations and deletions, one at a time

    def require_tool(self) -> None:
        if shutil.which(self._tool) is None:
            raise PoolError(
                501, f"containers need bubblewrap on this node, and {self._tool!r} is not installed: {INSTALL_HINT}"
            )
        if shutil.which("nsenter") is None:
            raise PoolError(501, "containers need nsenter on this node (package util-linux), and it is not installed")
        if os.geteuid() != 0:
            raise PoolError(
                501,
                "containers need this node's agent to run as root: bubblewrap makes their namespaces as root "
                "and nsenter enters them",
            )

    # Containers.

    async def list(self) -> list[ContainerView]:
        self.require_tool()
        return await asyncio.to_thread(self._list)

    def _list(self) -> list[ContainerView]:
        views = []
        for path in sorted(self.dir.glob(f"*/{RECORD}")):
            record = json.loads(path.read_text())
            status = "running" if _alive(record) else "halted"
            view = ContainerView(flist=record["flist"], hostname=record["hostname"], id=record["id"], status=status)
            views.append(view)
        return views

    async def create(self, spec: ContainerSpec, rootfs_id: str | None) -> None:
        """Create and start a container, its init processes running; nothing is left of one that fails."""
        self.require_tool()
        _check_honoured(spec)
        async with self._changing:
            home = self.dir / spec.id
            if home.exists():
                raise PoolError(409, f"container {spec.id} already exists on this node")
            home.mkdir(parents=True)
            try:
                record = await self._start(spec, rootfs_id, home)
                for n, process in enumerate(spec.initprocesses):
                    await self._run(record, process, field=f"initprocesses[{n}]")
            except BaseException:
                await self._destroy(spec.id)
                raise
        log.info("created container %s (%s)", spec.id, record["hostname"])

    async def _start(self, spec: ContainerSpec, rootfs_id: str | None, home: Path) -> dict[str, Any]:
        root = None
        if rootfs_id is not None:
            root = home / "rootfs"
            await self._fetch_rootfs(spec.flist, rootfs_id, home, root)
        if executable_in(str(root or ""), KEEPALIVE[0]) is None:
            raise PoolError(400, f"flist: {spec.flist!r} has no {KEEPALIVE[0]}, which a container needs to stay up")
        info_read, info_write = os.pipe()
        try:
            argv = bwrap_argv(self._tool, spec, root, info_write)
            await launch_detached(argv, home / "container.log", {"PATH": DEFAULT_PATH}, pass_fds=(info_write,))
            os.close(info_write)
            info_write = -1
            info = await asyncio.to_thread(read_info, info_read, self._start_timeout)
        finally:
            os.close(info_read)
            if info_write >= 0:
                os.close(info_write)
        ready = info is not None and await asyncio.to_thread(
            wait_ready, info["child-pid"], info["pid-namespace"], self._start_timeout
        )
        if not ready:
            said = _tail(home / "container.log")
            raise PoolError(500, f"bubblewrap could not create container {spec.id}: {said or 'no reason given'}")
        assert info is not None
        record = {
            "id": spec.id,
            "hostname": spec.hostname or spec.id,
            "flist": spec.flist,
            "host_networking": spec.hostNetworking,
            "created_at": time.time(),
            "init_pid": info["child-pid"],
            "pid_namespace": info["pid-namespace"],
        }
        _write_json(home / RECORD, record)
        return record

    async def _fetch_rootfs(self, flist: str, rootfs_id: str, home: Path, root: Path) -> None:
        tarball = home / "rootfs.tar"
        try:
            await self._data.download(rootfs_id, tarball)
            await asyncio.to_thread(extract_rootfs, tarball, root)
            if self._uid is not None:  # its files are its (user namespace's) root's
                await asyncio.to_thread(own_tree, root, self._uid)
        except DataClientError as error:
            raise PoolError(502, f"flist: {flist!r} could not be fetched from the gateway: {error}") from None
        except (tarfile.TarError, OSError) as error:
            raise PoolError(400, f"flist: {flist!r} is not a root filesystem tarball: {error}") from None
        finally:
            tarball.unlink(missing_ok=True)

    async def delete(self, container_id: str) -> None:
        """Kill everything in a container (its init, and with it its PID namespace) and forget it."""
        async with self._changing:
            self._record(container_id)
            await self._destroy(container_id)
        log.info("deleted container %s", container_id)

    async def _destroy(self, container_id: str) -> None:
        home = self.dir / container_id
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads((home / RECORD).read_text())
            if _alive(record):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(record["init_pid"], signal.SIGKILL)
                await _until(lambda: not _alive(record), 5.0)
        await asyncio.to_thread(shutil.rmtree, home, True)

    # Jobs and processes in a container.

    async def start(self, container_id: str, process: ProcessSpec) -> str:
        """Start a process in a running container as a new job; return the job's id."""
        record = self._record(container_id)
        if not _alive(record):
            raise PoolError(409, f"container {container_id} is halted")
        return await self._run(record, process, field="")

    async def _run(self, record: dict[str, Any], process: ProcessSpec, *, field: str) -> str:
        prefix = f"{field}." if field else ""
        env = {"PATH": DEFAULT_PATH, "HOME": "/root", "HOSTNAME": record["hostname"]}
        env.update(entry.split("=", 1) for entry in process.env)
        root = f"/proc/{record['init_pid']}/root"
        program = executable_in(root, process.name, env["PATH"])
        if program is None:
            raise PoolError(400, f"{prefix}name: {process.name!r} is not found in container {record['id']}")
        if process.pwd and not await asyncio.to_thread(os.path.isdir, root + process.pwd):
            raise PoolError(400, f"{prefix}pwd: {process.pwd!r} is not a directory in container {record['id']}")
        # Capabilities are dropped by the container's own setpriv (nsenter changes root before it
        # execs): a root filesystem without one (a minimal tarball) runs its processes with them,
        # which in a user namespace (the default) are that namespace's only: no mount, no host file.
        setpriv = executable_in(root, "setpriv", DEFAULT_PATH)
        if setpriv is None:
            log.warning("container %s has no setpriv: its process keeps its namespace's capabilities", record["id"])
        job_id = str(uuid.uuid4())
        env[JOB_ENV] = job_id
        jobs = self.dir / record["id"] / "jobs"
        jobs.mkdir(exist_ok=True)
        started = int(time.time() * 1000)
        argv = nsenter_argv(
            record["init_pid"],
            host_networking=record["host_networking"],
            pwd=process.pwd,
            command=[program, *process.args],
            setpriv=setpriv,
            userns_uid=self._uid,
        )
        pgid = await launch_detached(argv, jobs / f"{job_id}.log", env)
        _write_json(jobs / f"{job_id}.json", {"id": job_id, "startTime": started, "pgid": pgid, "name": program})
        log.info("started job %s (%s) in container %s", job_id, program, record["id"], extra={"job_id": job_id})
        return job_id

    async def jobs(self, container_id: str) -> list[ContainerJob]:
        """The jobs still running in a container, oldest first (the records of ended ones are dropped)."""
        record = self._record(container_id)
        return await asyncio.to_thread(self._live_jobs, record)

    def _live_jobs(self, record: dict[str, Any]) -> list[ContainerJob]:
        groups = live_groups() if _alive(record) else set()
        found = []
        for path in (self.dir / record["id"] / "jobs").glob("*.json"):
            job = json.loads(path.read_text())
            if job["pgid"] in groups:
                found.append(ContainerJob(id=job["id"], startTime=job["startTime"]))
            else:
                _forget_job(path)
        return sorted(found, key=lambda job: job.startTime)

    async def kill_job(self, container_id: str, job_id: str) -> None:
        """End a job's whole process group: SIGTERM, then SIGKILL after the grace period."""
        record = self._record(container_id)
        path = self.dir / container_id / "jobs" / f"{_uuid(job_id)}.json"
        not_found = PoolError(404, f"job {job_id} not found in container {container_id}")
        try:
            job = json.loads(path.read_text())
        except (OSError, ValueError):
            raise not_found from None

        def running() -> bool:
            return _alive(record) and job["pgid"] in live_groups()

        if not await asyncio.to_thread(running):
            _forget_job(path)
            raise not_found
        for sig, wait in ((signal.SIGTERM, self._kill_grace), (signal.SIGKILL, 1.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job["pgid"], sig)
            if await _until(lambda: not running(), wait):
                break
        _forget_job(path)
        log.info("killed job %s in container %s", job_id, container_id, extra={"job_id": job_id})

    async def read_log(self, container_id: str, job_id: str, offset: int, limit: int) -> ContainerJobLog:
        """At most ``limit`` bytes of a job's log from ``offset``, and whether it still ran before
        they were read (a job that did not has nothing more to come)."""
        record = self._record(container_id)
        jobs = self.dir / container_id / "jobs"
        name = _uuid(job_id)

        def read() -> ContainerJobLog:
            running = False
            with contextlib.suppress(OSError, ValueError):
                job = json.loads((jobs / f"{name}.json").read_text())
                running = _alive(record) and job["pgid"] in live_groups()
            try:
                with open(jobs / f"{name}.log", "rb") as log_file:
                    size = os.fstat(log_file.fileno()).st_size
                    log_file.seek(offset)
                    data = log_file.read(limit)
            except OSError:
                raise PoolError(404, f"job {job_id} not found in container {container_id}") from None
            size = max(size, offset + len(data))
            return ContainerJobLog(data=base64.b64encode(data).decode(), size=size, running=running)

        return await asyncio.to_thread(read)

    async def processes(self, container_id: str) -> list[ProcessView]:
        """Every process in a container, with its pid as the container sees it."""
        record = self._record(container_id)

        def read() -> list[ProcessView]:
            if not _alive(record):
                return []
            views = (process_view(m.host_pid) for m in members(record["pid_namespace"]) if not m.zombie)
            return sorted((view for view in views if view is not None), key=lambda view: view.pid)

        return await asyncio.to_thread(read)

    def _record(self, container_id: str) -> dict[str, Any]:
        self.require_tool()
        try:
            if CONTAINER_ID.match(container_id):
                return json.loads((self.dir / container_id / RECORD).read_text())
        except (OSError, ValueError):
            pass
        raise PoolError(404, f"container {container_id} not found on this node")


def _check_honoured(spec: ContainerSpec) -> None:
    """Refuse what bubblewrap cannot do, naming the field, rather than ignore it."""
    if spec.nics:
        raise PoolError(
            400,
            "nics: bubblewrap gives a container no network interface but its loopback (or the host's own, "
            f"with hostNetworking: true); it cannot make the {len(spec.nics)} asked for: leave nics empty",
        )
    if spec.ports:
        raise PoolError(
            400,
            "ports: bubblewrap cannot forward ports into a container; with hostNetworking: true its "
            "processes listen on the host's own ports: leave ports empty",
        )
    for n, mount in enumerate(spec.filesystems):
        source, target, _ = parse_mount(mount)
        if not os.path.exists(source):
            raise PoolError(400, f"filesystems[{n}]: {source} does not exist on this node")
        if target == "/":
            raise PoolError(400, f"filesystems[{n}]: cannot mount over the container's root")


def _alive(record: dict[str, Any]) -> bool:
    return is_init_alive(record["init_pid"], record["pid_namespace"])


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return "not-a-job"


def _forget_job(path: Path) -> None:
    """Forget an ended job but keep its log, and the logs of the last few ended jobs only."""
    path.unlink(missing_ok=True)
    live = {job.stem for job in path.parent.glob("*.json")}
    ended = [log for log in path.parent.glob("*.log") if log.stem not in live]
    ended.sort(key=lambda log: log.stat().st_mtime, reverse=True)
    for log in ended[KEEP_ENDED_LOGS:]:
        log.unlink(missing_ok=True)


def _write_json(path: Path, document: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(document))
    partial.rename(path)


def _tail(path: Path, limit: int = 500) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


async def _until(condition: Any, timeout: float) -> bool:
    """Poll ``condition`` (off the event loop) until it holds or ``timeout`` passes; whether it held."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
