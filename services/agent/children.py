"""How the agent learns that a job's process ended.

On Python 3.11, asyncio's default child watcher starts one thread per child process to wait for it
(about a seventh of the agent's CPU per job of ``true``); a pidfd (Linux 5.3+) lets the event loop
itself be told, with no thread. From Python 3.12 a pidfd is the default and the child watcher API is
deprecated, so this does nothing there.
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from typing import Any


class _RunningLoopPidfdWatcher(asyncio.PidfdChildWatcher):
    """Python 3.12's behaviour on 3.11: each child is watched by the loop that started it, so the
    watcher stays right when one process runs several loops one after another (as tests do)."""

    def is_active(self) -> bool:
        return True

    def add_child_handler(self, pid: int, callback: Any, *args: Any) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # type: ignore[attr-defined]
            self.attach_loop(loop)
        super().add_child_handler(pid, callback, *args)


def watch_children_with_pidfd() -> bool:
    """Use a pidfd child watcher where it helps and works; True if it is in use."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # an old kernel, or a sandbox that forbids it
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if not isinstance(asyncio.get_child_watcher(), _RunningLoopPidfdWatcher):
            asyncio.set_child_watcher(_RunningLoopPidfdWatcher())
    return True
