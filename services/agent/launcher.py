"""The launcher: one long-lived process per (host, user) that starts that user's jobs and outlives the agent.

It runs inside the user's sandbox (bubblewrap, started once; see :mod:`services.agent.supervisor`) or,
for privileged jobs, as the agent's user in a session of its own. The agent talks to it over a unix
socket, one JSON object a line:

* ``{"op": "run", "id", "argv", "cwd", "env", "out", "err", "exit", "limits"}``: start a job. Its
  output files are created before it is spawned (the marker recovery looks for); the reply is
  ``{"ev": "started", "id", "pid"}`` or ``{"ev": "failed", "id", "error"}``. The limits that are the
  same for every job (address space, file size, processes) are the launcher's own, given at its
  start and inherited, so a job is one ``posix_spawn`` (a vfork: no copy of this process); only a
  per-job CPU limit needs a fork that sets it in the child;
* ``{"op": "kill", "pgid", "sig"}``: signal a job's process group (every job leads its own session);
* ``{"op": "list"}``: ``{"ev": "list", "running": {id: pid}}``.

When a job ends, the launcher writes ``{"status", "cpu", "at"}`` to its ``exit`` path (aside, then
renamed: a reader sees all of it or nothing) and then tells every connected agent
``{"ev": "exit", "id", "status", "cpu"}``. The exit file is what a restarted agent reads for a job
that ended while no agent listened. The launcher leaves when no agent is connected and no job runs.

Standard library only, and compatible with the host's own Python: it runs from a copy of this file.
"""

import json
import os
import resource
import selectors
import signal
import socket
import sys
import time

LIMITS = {
    "cpu": resource.RLIMIT_CPU,
    "as": resource.RLIMIT_AS,
    "fsize": resource.RLIMIT_FSIZE,
    "nproc": resource.RLIMIT_NPROC,
}
IGNORED = (signal.SIGPIPE, signal.SIGXFSZ)  # by Python, and so by this launcher; a job expects the default
FIRST_CLIENT_WAIT = 30.0  # seconds to wait for the agent that started us


def set_limits(limits):
    for name, value in limits.items():
        hard = value + 1 if name == "cpu" else value  # SIGXCPU first, SIGKILL a second later
        resource.setrlimit(LIMITS[name], (value, hard))


def _start_child(request, out, err):
    """In the forked child: a session of its own, the job's limits, its output, then exec."""
    try:
        os.setsid()
        set_limits(request.get("limits", {}))
        for number in IGNORED:
            signal.signal(number, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.execve(request["argv"][0], request["argv"], request["env"])
    except BaseException as error:  # nothing may escape a forked child
        try:
            os.write(2, f"skybus: could not start the job: {error}\n".encode())
        finally:
            os._exit(127)


class Launcher:
    def __init__(self, path):
        self.path = path
        self.running = {}  # job id -> pid
        self.jobs = {}  # pid -> (job id, exit path)
        self.clients = {}  # socket -> bytes received, not yet a whole line
        self.served = False
        self.selector = selectors.DefaultSelector()

    def serve(self):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda number, frame: None)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        listener.bind(self.path)
        os.chmod(self.path, 0o600)
        listener.listen(16)
        self.selector.register(listener, selectors.EVENT_READ, "accept")
        self.selector.register(wake_r, selectors.EVENT_READ, "wake")
        started = time.monotonic()
        while self.clients or self.running or not (self.served or time.monotonic() - started > FIRST_CLIENT_WAIT):
            for key, _ in self.selector.select(timeout=1.0):
                if key.data == "accept":
                    self._accept(listener)
                elif key.data == "wake":
                    while True:
                        try:
                            if not os.read(wake_r, 512):
                                break
                        except BlockingIOError:
                            break
                    self._reap()
                else:
                    self._read(key.fileobj)
            self._reap()  # a SIGCHLD that raced the select
        try:
            if os.stat(self.path).st_ino == os.fstat(listener.fileno()).st_ino:
                os.unlink(self.path)
        except OSError:
            pass

    def _accept(self, listener):
        client, _ = listener.accept()
        client.settimeout(10.0)
        self.clients[client] = b""
        self.served = True
        self.selector.register(client, selectors.EVENT_READ, "client")

    def _drop(self, client):
        self.selector.unregister(client)
        del self.clients[client]
        client.close()

    def _read(self, client):
        try:
            data = client.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        lines = (self.clients[client] + data).split(b"\n")
        self.clients[client] = lines.pop()
        for line in lines:
            if line.strip():
                self._handle(client, json.loads(line))

    def _send(self, client, message):
        try:
            client.sendall(json.dumps(message).encode() + b"\n")
        except OSError:
            if client in self.clients:
                self._drop(client)

    def _handle(self, client, request):
        op = request.get("op")
        if op == "run":
            self._send(client, self._run(request))
        elif op == "kill":
            try:
                os.killpg(request["pgid"], request["sig"])
            except (ProcessLookupError, PermissionError):
                pass
        elif op == "list":
            self._send(client, {"ev": "list", "running": self.running})

    def _run(self, request):
        job = request["id"]
        if job in self.running:  # asked again (an agent that restarted while asking): the same job
            return {"ev": "started", "id": job, "pid": self.running[job]}
        out = err = -1
        try:
            texts = [*request["argv"], *request["env"], *request["env"].values(), request["cwd"]]
            if any("\0" in text for text in texts):
                raise ValueError("the command or its environment contains a NUL byte")
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            out = os.open(request["out"], flags, 0o644)
            err = os.open(request["err"], flags, 0o644)
            if request.get("limits"):
                pid = os.fork()
                if pid == 0:
                    _start_child(request, out, err)
            else:
                os.chdir(request["cwd"])
                actions = [(os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, err, 2)]
                argv = request["argv"]
                pid = os.posix_spawn(
                    argv[0], argv, request["env"], file_actions=actions, setsid=True, setsigdef=IGNORED
                )
        except (OSError, ValueError, KeyError, TypeError) as error:
            return {"ev": "failed", "id": job, "error": str(error)}
        finally:
            for fd in (out, err):
                if fd >= 0:
                    os.close(fd)
        self.running[job] = pid
        self.jobs[pid] = (job, request["exit"])
        return {"ev": "started", "id": job, "pid": pid}

    def _reap(self):
        while self.running:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.jobs:
                continue
            job, exit_path = self.jobs.pop(pid)
            del self.running[job]
            cpu = usage.ru_utime + usage.ru_stime
            record = {"status": status, "cpu": round(cpu, 3), "at": time.time()}
            try:
                with open(exit_path + ".tmp", "w") as stream:
                    stream.write(json.dumps(record))
                os.rename(exit_path + ".tmp", exit_path)
            except OSError as error:
                sys.stderr.write(f"skybus launcher: exit of {job} not recorded: {error}\n")
            for client in list(self.clients):
                self._send(client, {"ev": "exit", "id": job, "status": status, "cpu": record["cpu"]})


if __name__ == "__main__":
    set_limits(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
    Launcher(sys.argv[1]).serve()
