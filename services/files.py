"""How skybus makes its files: readable by its own user only, from the moment they exist.

Every skybus process sets :data:`PRIVATE_UMASK` once at start (``skybus``'s entry point), so
whatever it creates (the SQLite database and its WAL, blobs, credentials, the agent's records) is
born 0600 and every directory 0700, with no window in which another user could open it. Files that
hold secrets are also created with an explicit mode (:func:`write_private`), so they stay private
when a caller (a test, an embedding program) did not set the umask. Files another uid must read (a
sandboxed job's inputs, the launcher) are given their mode explicitly where they are made.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PRIVATE_UMASK = 0o077
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def restrict_new_files() -> int:
    """Set the process umask so new files are 0600 and directories 0700; the old umask."""
    return os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """``path`` (and missing parents) as a directory only its owner may enter; an existing one with
    a wider mode is narrowed (a data dir made by an older skybus)."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != PRIVATE_DIR:
        path.chmod(PRIVATE_DIR)
    return path


def create_private(path: Path) -> None:
    """Create ``path`` empty, mode 0600, if it does not exist (before a library opens it by name)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        pass


def write_private(path: Path, data: bytes) -> None:
    """Write the file whole, mode 0600 from its first byte, fsync it, then move it over the old one."""
    partial = path.with_name(path.name + ".part")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(path)


LOCK_FILE = "skybus.lock"


class DataDirInUse(Exception):
    """Another process holds the data dir's lock."""

    def __init__(self, data_dir: Path, pid: str) -> None:
        super().__init__(f"{data_dir} is in use by another skybus (pid {pid or 'unknown'})")
        self.data_dir = data_dir
        self.pid = pid


@contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir`` for as long as the block runs, or raise :class:`DataDirInUse` at once.

    The lock is the kernel's (``flock`` on ``skybus.lock``), so it goes with the process that held
    it however that process ends: a killed ``skybus up`` leaves no stale lock. The pid written in the
    file only names the holder in the message; the lock, not the pid, decides. The descriptor is not
    inherited (PEP 446), so a job a process starts never holds its lock."""
    path = private_dir(data_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise DataDirInUse(data_dir.resolve(), holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
