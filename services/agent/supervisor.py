"""Where and how a job runs: one long-lived launcher per (host, user), sandboxed, that outlives the agent.

Layout, under the scratch directory (a tmpfs by default: it survives an agent restart, not a reboot,
and a reboot ends the jobs anyway)::

    <scratch>/launcher.py          a copy of services/agent/launcher.py the sandboxes can read
    <scratch>/staging/<job>/       files staged in before the job's user is known
    <scratch>/<home>/              one per user (or "privileged"): the only writable place of its sandbox
        launcher.sock, launcher.log
        work/<job>/                the job's working directory (and HOME)
        run/<job>.out .err .exit   its output and, once it ended, its exit record

A user's launcher runs in bubblewrap: a user namespace where it is uid 65534 (on the host: the
configured sandbox uid when the agent is root, else the agent's own uid), new PID, IPC and UTS
namespaces (no process of the agent is visible, so neither is its environment), the host's system
directories read-only with its secrets masked, a private ``/tmp``, every capability dropped, a new
session, a clean environment; nothing of the agent's data dir but the user's own home. A
privileged job's launcher runs unsandboxed as the agent's user. Every launcher leads a session of
its own and is not the agent's child, so stopping or killing the agent leaves it and its jobs
running; a restarted agent connects to it again (see :mod:`services.agent.tasks`).

Starting a launcher costs one bwrap and one Python (~100 ms, once per user); a job then costs the
launcher one fork and exec and the agent a line written and two read on a unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.agent.sandbox import DEFAULT_PATH, host_system_binds

log = logging.getLogger(__name__)

LAUNCHER_SOURCE = Path(__file__).with_name("launcher.py")
SANDBOX_LAUNCHER = "/run/skybus/launcher.py"
PRIVILEGED = "privileged"
JOB_ENV = "SKYBUS_JOB_ID"
# Masked in every sandbox although /etc is shown: readable by root-mapped or agent-owned sandboxes.
ETC_SECRETS = (
    "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/skybus", "/etc/ssl/private",
    "/etc/sudoers", "/etc/sudoers.d", "/etc/security/opasswd",
)  # fmt: skip
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


class LaunchError(Exception):
    """A job that could not be started; the message says why, for the task's error."""


class LauncherGone(Exception):
    """The launcher's connection ended: it died (killed, or the host rebooted), and its jobs with it."""


@dataclass(frozen=True)
class JobOptions:
    """How this agent runs jobs (``services/settings.py``: SKYBUS_SCRATCH_DIR, SKYBUS_UNSANDBOXED_JOBS, ...)."""

    scratch_dir: Path | None = None
    unsandboxed_jobs: bool = False
    tool: str = "bwrap"
    sandbox_uid: int = 65534
    limits: dict[str, int] = field(default_factory=dict)  # cpu, as, fsize, nproc: see launcher.LIMITS
    workdir_retention: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Any, resource_id: str) -> JobOptions:
        limits = {
            "cpu": settings.job_cpu_seconds,
            "as": settings.job_memory_bytes,
            "fsize": settings.job_output_bytes,
            "nproc": settings.job_pids,
        }
        return cls(
            scratch_dir=settings.scratch_dir or default_scratch_dir(settings.data_dir, resource_id),
            unsandboxed_jobs=settings.unsandboxed_jobs,
            tool=settings.container_tool,
            sandbox_uid=settings.sandbox_uid,
            limits={name: value for name, value in limits.items() if value is not None},
            workdir_retention=settings.workdir_retention,
        )


def default_scratch_dir(data_dir: Path, resource_id: str) -> Path:
    """``/dev/shm/skybus-<uid>/agent-<id>`` when the host has that tmpfs, else under the data dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / f"skybus-{os.getuid()}" / f"agent-{resource_id}"
    return data_dir.resolve() / f"agent-{resource_id}" / "scratch"


def home_name(user: str | None, privileged: bool) -> str:
    """The directory of a user's jobs: the name itself when it is a safe one, else a digest of it."""
    if privileged:
        return PRIVILEGED
    name = user or "anonymous"
    if SAFE_NAME.fullmatch(name) and name != PRIVILEGED and not name.startswith("staging"):
        return f"u-{name}"
    return "h-" + hashlib.sha256(name.encode()).hexdigest()[:32]


def sandbox_python() -> str | None:
    """An interpreter a sandbox can run: this one when it lives in a system directory, else the host's."""
    mine = os.path.realpath(sys.executable)
    if mine.startswith(("/usr/", "/opt/")):
        return mine
    found = shutil.which("python3", path="/usr/bin:/bin")
    return os.path.realpath(found) if found else None


class Home:
    """The paths of one user's jobs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "launcher.sock"

    def work(self, job_id: str) -> Path:
        return self.root / "work" / job_id

    def run(self, job_id: str, suffix: str) -> Path:
        return self.root / "run" / f"{job_id}.{suffix}"


class Supervisor:
    """The agent's end of one launcher's socket: start jobs, learn their end, signal them."""

    def __init__(self, home: Home, argv: list[str], *, uid: int | None, env: dict[str, str]) -> None:
        self.home = home
        self._argv = argv
        self._uid = uid
        self._env = env
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._exits: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def connect(self, *, start: bool) -> bool:
        """Connect to the launcher, starting it first if ``start`` and none answers. False if none."""
        async with self._lock:
            if self._writer is not None:
                return True
            if await self._try_connect():
                return True
            if not start:
                return False
            await asyncio.to_thread(self._start_launcher)
            for _ in range(1000):  # about 10 s: a Python and a bwrap start
                await asyncio.sleep(0.01)
                if await self._try_connect():
                    return True
            raise LaunchError(f"the job launcher did not start: {self._log_tail()}")

    async def _try_connect(self) -> bool:
        try:
            reader, self._writer = await asyncio.open_unix_connection(str(self.home.socket))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        self._reader_task = asyncio.create_task(self._read(reader))
        return True

    def _start_launcher(self) -> None:
        """Start the launcher in the background of a shell that exits at once: reparented to init, in
        a session of its own, it is neither the agent's child nor in its process group."""
        log_path = self.home.root / "launcher.log"
        detach = '"$@" </dev/null >>"$0" 2>&1 &'
        extra: dict[str, Any] = {}
        if self._uid is not None:
            extra = {"user": self._uid, "group": self._uid, "extra_groups": []}
        subprocess.run(
            ["/bin/sh", "-c", detach, str(log_path), *self._argv],
            env=self._env, cwd=self.home.root, start_new_session=True, check=True, **extra,
        )  # fmt: skip

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.home.root / "launcher.log").read_text()[-500:].strip() or "no message"
        return "no message"

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                event, job_id = message["ev"], message.get("id", "")
                if event == "exit":
                    future = self._exits.setdefault(job_id, asyncio.get_running_loop().create_future())
                    if not future.done():
                        future.set_result(message)
                elif (reply := self._replies.pop(job_id, None)) is not None and not reply.done():
                    reply.set_result(message)
        except (OSError, ValueError) as error:
            log.warning("the launcher of %s spoke nonsense or hung up: %r", self.home.root.name, error)
        finally:
            self._writer = None
            gone = LauncherGone(f"the sandbox of {self.home.root.name} ended")
            for future in [*self._replies.values(), *self._exits.values()]:
                if not future.done():
                    future.set_exception(gone)
            self._replies.clear()

    def _send(self, message: dict[str, Any]) -> None:
        if self._writer is None:
            raise LauncherGone(f"the sandbox of {self.home.root.name} ended")
        self._writer.write(json.dumps(message).encode() + b"\n")

    def exit_of(self, job_id: str) -> asyncio.Future[dict[str, Any]]:
        """The job's exit event, ``{"status", "cpu"}``: ask before the job can end."""
        return self._exits.setdefault(job_id, asyncio.get_running_loop().create_future())

    def forget(self, job_id: str) -> None:
        self._exits.pop(job_id, None)

    async def run(self, job_id: str, argv: list[str], env: dict[str, str], limits: dict[str, int]) -> int:
        """Start a job; its pid (in its sandbox). Its output files exist once this returns."""
        reply = self._replies[job_id] = asyncio.get_running_loop().create_future()
        request = {
            "op": "run", "id": job_id, "argv": argv, "env": env, "cwd": str(self.home.work(job_id)),
            "out": str(self.home.run(job_id, "out")), "err": str(self.home.run(job_id, "err")),
            "exit": str(self.home.run(job_id, "exit")), "limits": limits,
        }  # fmt: skip
        self._send(request)
        answer = await reply
        if answer["ev"] != "started":
            raise LaunchError(f"could not start the job: {answer.get('error')}")
        return int(answer["pid"])

    async def running(self) -> dict[str, int]:
        """The launcher's running jobs. A ``list`` reply names no job, so concurrent callers (the
        adoption of every job a restarted agent finds) share one request: a second request would
        take the first one's reply slot and leave its caller waiting forever."""
        reply = self._replies.get("")
        if reply is None or reply.done():
            reply = self._replies[""] = asyncio.get_running_loop().create_future()
            self._send({"op": "list"})
        return dict((await asyncio.shield(reply))["running"])

    def kill(self, pgid: int, signal_number: int) -> None:
        with contextlib.suppress(LauncherGone):
            self._send({"op": "kill", "pgid": pgid, "sig": signal_number})

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task


def job_limits(limits: dict[str, int]) -> dict[str, int]:
    """The limits a launcher sets per job; the others are its own, set once (see the launcher)."""
    return {"cpu": limits["cpu"]} if "cpu" in limits else {}


class Supervisors:
    """The launchers of this agent, one per home, started when a job needs one."""

    def __init__(self, state_dir: Path, options: JobOptions) -> None:
        self.options = options
        self.scratch = (options.scratch_dir or state_dir / "scratch").resolve()
        self.tool = shutil.which(options.tool)
        self.python = sandbox_python()
        self._root = os.geteuid() == 0
        self._by_home: dict[str, Supervisor] = {}
        self.scratch.mkdir(parents=True, exist_ok=True)
        # A root agent's sandboxes run as another uid and must reach their home; the umask (0077) made
        # a new /dev/shm/skybus-<uid> 0700 too, which no sandbox can traverse.
        shared = self.scratch.parent if self.scratch.parent.name == f"skybus-{os.getuid()}" else None
        for directory in (shared, self.scratch):
            if directory is not None:
                directory.chmod(0o711)
        self.launcher = self.scratch / "launcher.py"
        source = LAUNCHER_SOURCE.read_bytes()
        if not self.launcher.exists() or self.launcher.read_bytes() != source:
            partial = self.launcher.with_suffix(".tmp")
            partial.write_bytes(source)
            partial.chmod(0o644)
            partial.replace(self.launcher)
        (self.scratch / "staging").mkdir(exist_ok=True)
        if options.unsandboxed_jobs:
            log.warning("users' jobs run UNSANDBOXED on this host, as the agent's user (SKYBUS_UNSANDBOXED_JOBS)")
        elif self.tool is None or self.python is None:
            log.error("no bubblewrap (%s) or no system Python here: this host refuses unprivileged jobs", options.tool)

    def refusal(self, privileged: bool) -> str | None:
        """Why this host cannot run such a job, or None."""
        if privileged or self.options.unsandboxed_jobs:
            return None
        if self.tool is None:
            return f"this host has no bubblewrap ({self.options.tool}) and runs no unprivileged job unsandboxed"
        if self.python is None:
            return "this host has no Python in a system directory (/usr/bin/python3) for its job sandbox"
        return None

    def staging(self, job_id: str) -> Path:
        return self.scratch / "staging" / job_id

    def home(self, name: str) -> Home:
        return Home(self.scratch / name)

    def sandboxed(self, name: str) -> bool:
        return name != PRIVILEGED and not self.options.unsandboxed_jobs

    def owner(self, name: str) -> int | None:
        """The host uid that owns a home: a root agent's sandboxes run as the sandbox uid."""
        return self.options.sandbox_uid if self._root and self.sandboxed(name) else None

    def supervisor(self, name: str) -> Supervisor:
        if (found := self._by_home.get(name)) is not None:
            return found
        home = self.home(name)
        uid = self.owner(name)
        for directory in (home.root, home.root / "work", home.root / "run"):
            directory.mkdir(mode=0o700, exist_ok=True)
            if uid is not None:
                os.chown(directory, uid, uid)
        env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
        if self.sandboxed(name):
            assert self.tool is not None and self.python is not None
            argv = [*self._sandbox_argv(home.root), self.python, "-I", "-S", SANDBOX_LAUNCHER]
        else:
            argv = [sys.executable, "-I", "-S", str(self.launcher)]
        shared = {name: value for name, value in self.options.limits.items() if name != "cpu"}
        argv += [str(home.socket), json.dumps(shared)]
        found = self._by_home[name] = Supervisor(home, argv, uid=uid, env=env)
        return found

    def _sandbox_argv(self, home: Path) -> list[str]:
        assert self.tool is not None
        argv = [self.tool, "--unshare-user", "--uid", "65534", "--gid", "65534"]
        argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "skybus"]
        argv += ["--proc", "/proc", "--dev", "/dev", *host_system_binds(), "--tmpfs", "/tmp"]
        for secret in ETC_SECRETS:
            if os.path.isdir(secret):
                argv += ["--tmpfs", secret]
            elif os.path.exists(secret):
                argv += ["--ro-bind", "/dev/null", secret]
        argv += ["--ro-bind", str(self.launcher), SANDBOX_LAUNCHER, "--bind", str(home), str(home)]
        return [*argv, "--cap-drop", "ALL", "--new-session", "--clearenv", "--chdir", str(home), "--"]

    def job_environment(self, name: str, job_id: str, workdir: Path) -> dict[str, str]:
        """From scratch in a sandbox; a privileged job keeps the agent's environment but its secrets."""
        if self.sandboxed(name):
            env = {"PATH": DEFAULT_PATH, "HOME": str(workdir), "LANG": os.environ.get("LANG", "C.UTF-8")}
            env["TMPDIR"] = "/tmp"
        else:
            env = {k: v for k, v in os.environ.items() if not k.startswith("SKYBUS_")}
        env[JOB_ENV] = job_id
        env["PWD"] = str(workdir)
        return env

    def prepare_workdir(self, name: str, job_id: str) -> Path:
        """The job's working directory in its home: the staged one moved there, or a new one."""
        home = self.home(name)
        workdir = home.work(job_id)
        staged = self.staging(job_id)
        uid = self.owner(name)
        try:
            staged.rename(workdir)
        except FileNotFoundError:
            workdir.mkdir(exist_ok=True)
        else:
            if uid is not None:
                for entry in os.scandir(workdir):
                    os.chown(entry.path, uid, uid, follow_symlinks=False)
        if uid is not None:
            os.chown(workdir, uid, uid)
        return workdir

    async def close(self) -> None:
        """Hang up on every launcher; they and their jobs run on."""
        for supervisor in self._by_home.values():
            await supervisor.close()
