"""Live output of the jobs this gateway's clients follow, and the stored output of ended jobs.

Nothing flows while nobody follows: a follower makes this gateway send its job's agent a
:class:`WatchOutput` (transient, renewed every :data:`RENEW_EVERY` seconds while it stays), and the
agent answers with :class:`OutputChunk` broadcasts (signed: checked here against the host's verify
key, once someone here follows that job; the others are dropped unread). A chunk lost on the way,
or dropped because the client reads slowly (a follower buffers at most :data:`BUFFERED` chunks),
leaves a gap that the follower sees by its offsets and asks again from where it is. Once the job
ended, the rest comes from its stored stdout and stderr (data files streamed from the blob store,
never read whole), so what a follower gets is complete whatever was lost live.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web

from broker.envelope import Envelope
from broker.port import BusError
from broker.router import Router
from schemas.jobs import OutputChunk, OutputStream, WatchOutput
from services.content_manager import records as contents
from services.gateway.context import BLOBS, BUS, STORE, TOPOLOGY
from services.job_manager import records as jobs
from services.job_manager.records import JobRecord
from services.resource_manager import records as resources
from services.security import signed_by
from services.store.port import BlobNotFound

log = logging.getLogger(__name__)

LEASE = 30.0  # seconds an agent sends a job's output after a watch
RENEW_EVERY = 10.0
ASK_AGAIN_AFTER = 0.5  # seconds between two watches of one follower that saw a gap
BUFFERED = 64  # chunks a follower holds for a slow client before it drops and asks again later
NOT_ASKED = 2**62  # the offset a follower asks a stream it does not want from: nothing is sent

SENDER = "gateway"


@dataclass(eq=False)
class Follower:
    """One client following one task: where it is in each stream, and what came that it has not sent."""

    task_id: str
    resource_id: str
    verify_key: str
    streams: tuple[OutputStream, ...]
    positions: dict[OutputStream, int] = field(default_factory=lambda: dict.fromkeys(OutputStream, 0))
    sizes: dict[OutputStream, int] = field(default_factory=dict)
    pending: asyncio.Queue[tuple[OutputStream, bytes]] = field(default_factory=lambda: asyncio.Queue(BUFFERED))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    gap: bool = False
    asked_at: float = float("-inf")

    def offer(self, chunk: OutputChunk) -> None:
        stream = chunk.stream
        if stream not in self.streams:
            return
        self.sizes[stream] = max(self.sizes.get(stream, 0), chunk.size)
        data = chunk.raw()
        at = self.positions[stream]
        if chunk.offset > at:
            self.gap = True  # something before this chunk did not come: ask again from ``at``
        elif chunk.offset + len(data) > at:
            try:
                self.pending.put_nowait((stream, data[at - chunk.offset :]))
            except asyncio.QueueFull:
                self.gap = True
            else:
                self.positions[stream] = chunk.offset + len(data)
        self.wake.set()

    def caught_up(self) -> bool:
        """Everything the agent had when it was last asked has come (what "so far" means)."""
        return all(stream in self.sizes and self.positions[stream] >= self.sizes[stream] for stream in self.streams)

    def drain(self) -> Iterator[tuple[OutputStream, bytes]]:
        while not self.pending.empty():
            yield self.pending.get_nowait()


class OutputHub:
    """This gateway's followers, by task id, fed from its broadcast queue of output chunks."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._followers: dict[str, set[Follower]] = defaultdict(set)
        self.rejected: Counter[str] = Counter()

    def router(self) -> Router:
        router = Router()
        router.add(OutputChunk, self.output_chunk)
        return router

    async def output_chunk(self, chunk: OutputChunk, envelope: Envelope) -> None:
        followers = self._followers.get(chunk.job_id)
        if not followers:
            return  # nobody here follows it: not even checked
        some = next(iter(followers))
        if envelope.resource_id != some.resource_id or not signed_by(envelope, some.verify_key):
            self.rejected["bad signature"] += 1
            log.warning("output chunk of %s not signed by its host %s: dropped", chunk.job_id, some.resource_id)
            return
        for follower in followers:
            follower.offer(chunk)

    @contextmanager
    def following(self, follower: Follower) -> Iterator[Follower]:
        self._followers[follower.task_id].add(follower)
        try:
            yield follower
        finally:
            self._followers[follower.task_id].discard(follower)
            if not self._followers[follower.task_id]:
                del self._followers[follower.task_id]

    async def ask(self, follower: Follower) -> None:
        """Ask the agent for the output from where the follower is (a lost ask is asked again)."""
        follower.asked_at = time.monotonic()
        follower.gap = False
        offsets = {stream: follower.positions[stream] if stream in follower.streams else NOT_ASKED
                   for stream in OutputStream}  # fmt: skip
        command = WatchOutput(
            job_id=follower.task_id,
            stdout_from=offsets[OutputStream.STDOUT],
            stderr_from=offsets[OutputStream.STDERR],
            lease=LEASE,
        )
        app = self._app
        key = app[TOPOLOGY].agent_routing_key(follower.resource_id, WatchOutput.message_type)
        envelope = Envelope(command, sender=SENDER, correlation_id=follower.task_id, resource_id=follower.resource_id)
        try:
            await app[BUS].publish(app[TOPOLOGY].agent_commands, envelope, key, transient=True)
        except BusError as error:
            log.warning("could not ask for the output of %s: %r", follower.task_id, error)


OUTPUT_HUB = web.AppKey("output_hub", OutputHub)


async def output_hub_context(app: web.Application) -> AsyncIterator[None]:
    hub = app[OUTPUT_HUB] = OutputHub(app)
    subscription = await app[BUS].subscribe(app[TOPOLOGY].gateway_job_output(), hub.router())
    yield
    await subscription.cancel()


async def new_follower(app: web.Application, job: JobRecord, streams: tuple[OutputStream, ...]) -> Follower | None:
    """A follower of the job's current task, if its host is known (None: a host deleted meanwhile)."""
    assert job.resource_id is not None
    verify_key = await resources.verify_key_of(app[STORE], job.resource_id)
    if verify_key is None:
        return None
    return Follower(job.task_id, job.resource_id, verify_key, streams)


# What an ended job wrote: its stored files.


async def stored_output(
    app: web.Application, job: JobRecord, stream: OutputStream, offset: int
) -> AsyncIterator[bytes]:
    """The job's stored ``stream`` from ``offset``, chunk by chunk: its data file, or (a job stored
    before its streams were, or whose upload failed) the small answer kept with it."""
    data_id = job.stdout_id if stream is OutputStream.STDOUT else job.stderr_id
    if data_id is None:
        if job.answer_id and (answer := await jobs.answer_by_id(app[STORE], job.answer_id)) is not None:
            text = answer.stream_text(stream.value)
            if len(text) > offset:
                yield text[offset:]
        return
    item = await contents.get_item(app[STORE], data_id)
    if item is None:
        return
    skip = offset
    try:
        async for chunk in app[BLOBS].open(item.blob_id):
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            yield chunk[skip:]
            skip = 0
    except BlobNotFound:
        return
