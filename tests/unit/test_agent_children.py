"""The agent's pidfd child watcher: children's exits are seen, loop after loop, without a thread each."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from services.agent.children import watch_children_with_pidfd

pytestmark = pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.12+ uses a pidfd by itself")


def run_child(code: int) -> tuple[int, int]:
    async def main() -> tuple[int, int]:
        assert watch_children_with_pidfd()
        threads = threading.active_count()
        process = await asyncio.create_subprocess_exec("/bin/sh", "-c", f"sleep 0.1; exit {code}")
        during = threading.active_count() - threads
        return await process.wait(), during

    return asyncio.run(main())


def test_exits_are_seen_in_one_loop_after_another_without_a_thread_per_child() -> None:
    assert run_child(3) == (3, 0)
    assert run_child(4) == (4, 0)  # a new loop: the watcher follows it
