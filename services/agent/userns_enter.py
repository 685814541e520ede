"""Run a command in a container's namespaces *and a user namespace of its own*, whose root is an
unprivileged uid on the host: ``python3 userns_enter.py PID UID [--net] WORKDIR -- COMMAND...``.

What ``nsenter`` does for a container (join the PID, mount, UTS, IPC and, unless ``--net`` is left
out, network namespaces of the container whose init is PID, and start in WORKDIR, a path under
``/proc/PID/root``), then one more step nsenter cannot take: a new user namespace in which uid and
gid 0 are UID on the host, every supplementary group gone. The container's mount namespace stays
owned by the host's user namespace, so root in the new one may not mount, remount or unmount
anything there (a ``:ro`` bind stays read-only); what it creates in a writable bind is owned by UID;
signals, ptrace and files of the host's root are out of its reach.

Run as root by the agent; a standalone script (the standard library only), not a module of skybus.
Linux's ``setns``/``unshare`` are reached through ctypes (``os.setns`` is Python 3.12's).
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWUSER = 0x10000000
NAMESPACES = ("ipc", "uts", "net", "pid", "mnt")  # mnt last: it changes root and cwd


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def enter(pid: int, uid: int, workdir: str, command: list[str], *, net: bool) -> int:
    libc = _libc()
    fds = {name: os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC) for name in NAMESPACES}
    if not net:
        os.close(fds.pop("net"))
    where = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    host_proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the container's hides the child
    for name, fd in fds.items():
        _check(libc.setns(fd, 0), f"setns {name}")
        os.close(fd)
    os.fchdir(where)
    os.close(where)
    os.setgroups([])  # while still root on the host: the new namespace cannot drop them ("deny")
    ready_read, ready_write = os.pipe()
    go_read, go_write = os.pipe()
    child = os.fork()  # the first process in the container's PID namespace
    if child == 0:
        os.close(ready_read)
        os.close(go_write)
        os.close(host_proc)
        _check(libc.unshare(CLONE_NEWUSER), "unshare user")
        os.write(ready_write, b"1")
        if os.read(go_read, 1) != b"1":
            os._exit(125)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        try:
            os.execvp(command[0], command)
        except OSError as error:
            print(f"userns_enter: cannot run {command[0]}: {error.strerror}", file=sys.stderr)
            os._exit(127)
    os.close(ready_write)
    os.close(go_read)
    if os.read(ready_read, 1) != b"1":
        os.waitpid(child, 0)
        return 125
    for name, text in (("uid_map", f"0 {uid} 1\n"), ("setgroups", "deny\n"), ("gid_map", f"0 {uid} 1\n")):
        fd = os.open(f"{child}/{name}", os.O_WRONLY | os.O_CLOEXEC, dir_fd=host_proc)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    os.close(host_proc)
    os.write(go_write, b"1")
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") < 3:
        print("usage: userns_enter.py PID UID [--net] WORKDIR -- COMMAND...", file=sys.stderr)
        return 2
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    net = "--net" in options
    pid, uid, workdir = [option for option in options if option != "--net"]
    code = enter(int(pid), int(uid), workdir, command, net=net)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
