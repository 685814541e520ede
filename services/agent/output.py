"""Live output: a running task's stdout and stderr, sent while (and only while) someone follows it.

A task writes its output to files (:mod:`services.agent.supervisor`); nothing reads them while no
one asks, so a task nobody follows costs no message. A gateway with a follower sends
:class:`WatchOutput` (a lease of some seconds, renewed while the follower stays); the agent then
tails the two files from the offsets asked and publishes what it finds as :class:`OutputChunk`
(signed, transient, to every gateway), at most :data:`BUDGET` bytes per stream every
:data:`INTERVAL` seconds, so a task printing as fast as it can costs a bounded number of messages.

Bytes stay bytes: read from the file, base64 in the chunk. Each chunk says where in its stream it
starts and how long the stream was, so a reader drops what it had, sees a gap (a lost chunk, or a
chunk it dropped) and asks again from where it is: a watch asked from an earlier offset rewinds the
tail. What a follower did not get live it reads from the stored files once the task ended.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from broker.envelope import Envelope
from broker.port import BusError
from schemas.jobs import OUTPUT_CHUNK_LIMIT, OutputChunk, OutputStream, WatchOutput

log = logging.getLogger(__name__)

INTERVAL = 0.2  # seconds between two reads of a followed task's output
BUDGET = 4 * OUTPUT_CHUNK_LIMIT  # bytes of one stream sent per interval at most

Say = Callable[..., Awaitable[None]]
OutputPath = Callable[[str, OutputStream], Path | None]
"""Where a running task's stream is written; None when the task does not run here (any more)."""


@dataclass
class _Tail:
    positions: dict[OutputStream, int]
    lease_until: float
    announce: bool = True  # send each stream's size even when nothing is new: a reader learns "that is all"
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class OutputTails:
    """The tails of the followed tasks of this agent, one per task whoever follows it."""

    def __init__(self, say: Say, path_of: OutputPath, *, interval: float = INTERVAL, budget: int = BUDGET) -> None:
        self._say = say
        self._path_of = path_of
        self._interval = interval
        self._budget = budget
        self._tails: dict[str, _Tail] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def watch_output(self, command: WatchOutput, envelope: Envelope) -> None:
        """The handler of :class:`WatchOutput`: start, rewind or extend the task's tail."""
        job_id = command.job_id
        if self._path_of(job_id, OutputStream.STDOUT) is None:
            return  # not running here: its output is (or will be) in the stored files
        asked = {OutputStream.STDOUT: command.stdout_from, OutputStream.STDERR: command.stderr_from}
        lease_until = time.monotonic() + command.lease
        tail = self._tails.get(job_id)
        if tail is None:
            tail = self._tails[job_id] = _Tail(asked, lease_until)
            self._tasks[job_id] = asyncio.create_task(self._follow(job_id, tail))
            return
        for stream, offset in asked.items():
            tail.positions[stream] = min(tail.positions[stream], offset)
        tail.lease_until = max(tail.lease_until, lease_until)
        tail.announce = True
        tail.wake.set()

    def ended(self, job_id: str) -> None:
        """The task ended: its followers read the rest from its stored files."""
        self._tails.pop(job_id, None)
        task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._tails.clear()

    async def _follow(self, job_id: str, tail: _Tail) -> None:
        try:
            while time.monotonic() < tail.lease_until and self._tails.get(job_id) is tail:
                tail.wake.clear()
                announce, tail.announce = tail.announce, False
                for stream in OutputStream:
                    path = self._path_of(job_id, stream)
                    if path is None:
                        return
                    await self._send_new(job_id, tail, stream, path, announce)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await tail.wake.wait()
        finally:
            if self._tails.get(job_id) is tail:
                del self._tails[job_id]
                self._tasks.pop(job_id, None)

    async def _send_new(self, job_id: str, tail: _Tail, stream: OutputStream, path: Path, announce: bool) -> None:
        start = tail.positions[stream]
        try:
            pieces, size = await asyncio.to_thread(_read_from, path, start, self._budget)
        except OSError:
            return  # gone: the task ended under us
        if not pieces and announce:
            pieces = [b""]
        offset = start
        for piece in pieces:
            data = base64.b64encode(piece).decode()
            chunk = OutputChunk(job_id=job_id, stream=stream, offset=offset, data=data, size=size)
            try:
                await self._say(chunk, transient=True)
            except BusError as error:  # a follower sees the gap and asks again
                log.debug("output of %s not sent: %r", job_id, error)
                return
            if tail.positions[stream] != offset:
                return  # rewound by a watch meanwhile: the next pass sends from there
            offset += len(piece)
            tail.positions[stream] = offset


def _read_from(path: Path, offset: int, budget: int) -> tuple[list[bytes], int]:
    """Up to ``budget`` bytes from ``offset``, in chunks of at most one message, and the file's size."""
    with path.open("rb") as stream:
        size = stream.seek(0, 2)
        stream.seek(offset)
        pieces = []
        while budget > 0 and (piece := stream.read(min(OUTPUT_CHUNK_LIMIT, budget))):
            pieces.append(piece)
            budget -= len(piece)
        return pieces, max(size, offset + sum(map(len, pieces)))
