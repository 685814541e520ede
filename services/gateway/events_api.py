"""``GET /api/events``: job and host changes as Server-Sent Events, fed by broadcasts, never by the store.

Every gateway hears every ``job.changed`` on its own broadcast queue (:mod:`services.gateway.job_watch`);
the watcher hands each one to this gateway's :class:`EventHub`, which numbers it, keeps the last
:data:`WINDOW` of them in memory and fans it out to the open streams. Host transitions (``host.changed``,
``host.deleted``: the resource manager publishes transitions only, never a plain heartbeat) come on a
broadcast queue of the hub's own. Nothing here reads the store.

Guarantees, per gateway: ids increase by one per event (they start at the gateway's start time in
microseconds, so a restarted gateway does not reuse an id); a stream gets every event after the one
its ``Last-Event-ID`` names, in order, as long as that one is still in the window. When it is not (the
client was away too long, or its id came from another gateway behind a load balancer), the stream
opens with an ``event: reset``: the client re-reads what it shows. A client that cannot keep up (its
queue of :data:`QUEUE_LIMIT` events fills) has its stream closed; it reconnects and resumes.

A caller sees its own jobs and hosts, an admin all (a host's deletion, which names no owner: admins
only). ``EventSource`` cannot send an ``Authorization`` header, so this route alone also takes the token
as ``?token=`` (see :mod:`services.gateway.auth`). A stream authenticates when it opens and ends after
:data:`STREAM_SECONDS`; the browser reconnects with its ``Last-Event-ID``, so a revoked token stops
streaming within that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from aiohttp import web

from broker.envelope import Envelope
from schemas.jobs import JobChanged
from schemas.resources import HostChanged, HostDeleted
from services.gateway.context import BUS, TOPOLOGY, caller
from services.gateway.errors import ApiError
from services.gateway.job_watch import WATCHER
from services.gateway.openapi import documented
from services.gateway.params import EventsHeaders, EventsQuery
from services.tokens import Principal

log = logging.getLogger(__name__)

WINDOW = 1_000
"""Events kept for ``Last-Event-ID`` resume, per gateway."""
QUEUE_LIMIT = 1_000
"""Events a stream may fall behind by before it is closed (the client resumes from the window)."""
KEEP_ALIVE_SECONDS = 15.0
STREAM_SECONDS = 600.0
RETRY_MILLISECONDS = 2_000
TOPICS = frozenset({"job", "host"})
ADMINS_ONLY = ""
"""The owner of an event that only admins see."""


@dataclass(frozen=True)
class Event:
    id: int
    topic: str
    user: str
    """Whose it is: a non-admin caller sees only their own."""
    data: dict[str, object]

    def visible_to(self, principal: Principal) -> bool:
        return principal.admin or (self.user != ADMINS_ONLY and self.user == principal.user)

    def encode(self) -> bytes:
        return f"id: {self.id}\nevent: {self.topic}\ndata: {json.dumps(self.data)}\n\n".encode()


HOST_FIELDS = {"resource_id", "change", "at", "user", "authorized", "joined", "responding", "last_response_time"}
"""What a host event tells (not the jobs it runs, which may be other users')."""

END = None
"""Put on a listener's queue: its stream ends (the gateway stops, or the listener fell behind)."""


@dataclass(eq=False)
class Listener:
    queue: asyncio.Queue[Event | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT + 1))

    def offer(self, event: Event | None) -> bool:
        """Queue ``event``; False (and the stream told to end) when the listener is too far behind."""
        if self.queue.qsize() >= QUEUE_LIMIT:
            self.queue.put_nowait(END)
            return False
        self.queue.put_nowait(event)
        return True


class EventHub:
    """This gateway's numbered window of recent events and the streams listening to it."""

    def __init__(self, first_id: int | None = None, window: int = WINDOW) -> None:
        self._next_id = first_id if first_id is not None else time.time_ns() // 1_000
        self._recent: deque[Event] = deque(maxlen=window)
        self._listeners: set[Listener] = set()

    def publish(self, topic: str, user: str, data: dict[str, object]) -> Event:
        event = Event(self._next_id, topic, user, data)
        self._next_id += 1
        self._recent.append(event)
        for listener in list(self._listeners):
            if not listener.offer(event):
                self._listeners.discard(listener)
        return event

    def job_changed(self, change: JobChanged) -> None:
        """The watcher's listener: every job change this gateway hears."""
        self.publish("job", change.user, change.model_dump(mode="json"))

    async def host_changed(self, envelope: Envelope) -> None:
        """The handler of the hub's broadcast queue of host transitions."""
        host = envelope.payload
        if isinstance(host, HostChanged):
            data = host.model_dump(mode="json", include=HOST_FIELDS)
            self.publish("host", host.user or ADMINS_ONLY, data)
        elif isinstance(host, HostDeleted):
            self.publish("host", ADMINS_ONLY, {"resource_id": host.resource_id, "deleted": True})

    def missed(self, last_id: int | None) -> tuple[list[Event], bool]:
        """The events after ``last_id`` still in the window, and whether some before them are gone."""
        if last_id is None:
            return [], False
        after = [event for event in self._recent if event.id > last_id]
        oldest = self._recent[0].id if self._recent else self._next_id
        return after, last_id + 1 < oldest or last_id >= self._next_id

    @contextlib.contextmanager
    def listening(self, last_id: int | None) -> Iterator[tuple[Listener, list[Event], bool]]:
        """A listener for what comes next, with what it missed since ``last_id`` (see :meth:`missed`).

        Both are taken at once, with no await between: no event is lost or told twice."""
        listener = Listener()
        self._listeners.add(listener)
        try:
            yield (listener, *self.missed(last_id))
        finally:
            self._listeners.discard(listener)

    def close(self) -> None:
        """End every stream (the gateway stops: a stream must not hold its shutdown)."""
        for listener in self._listeners:
            listener.queue.put_nowait(END)
        self._listeners.clear()


EVENT_HUB = web.AppKey("event_hub", EventHub)
routes = web.RouteTableDef()


def wanted_topics(request: web.Request) -> frozenset[str]:
    text = request.query.get("topic")
    if not text:
        return TOPICS
    topics = frozenset(text.split(","))
    if unknown := sorted(topics - TOPICS):
        raise ApiError(400, f"unknown topic(s) {', '.join(unknown)}; topics: {', '.join(sorted(TOPICS))}")
    return topics


def last_event_id(request: web.Request) -> int | None:
    text = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, f"Last-Event-ID must be an event id this gateway sent, not {text!r}") from None


@routes.get("/api/events")
@documented(
    media="text/event-stream",
    query=EventsQuery,
    headers=EventsHeaders,
    errors=(400,),
    summary="Job and host changes as Server-Sent Events (text/event-stream): ?topic=job,host; Last-Event-ID resumes; "
    "the token may come as ?token= (EventSource sends no header)",
)
async def events(request: web.Request) -> web.StreamResponse:
    principal = caller(request)
    topics = wanted_topics(request)
    last_id = last_event_id(request)
    hub = request.app[EVENT_HUB]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    with hub.listening(last_id) as (listener, missed, gap):
        await response.prepare(request)
        try:
            await response.write(f"retry: {RETRY_MILLISECONDS}\n: skybus events\n\n".encode())
            if gap:
                await response.write(b"event: reset\ndata: {}\n\n")
            for event in missed:
                if event.topic in topics and event.visible_to(principal):
                    await response.write(event.encode())
            await stream(response, listener, topics, principal)
        except ConnectionResetError:
            log.debug("an event stream's client went away")
    return response


async def stream(response: web.StreamResponse, listener: Listener, topics: frozenset[str], who: Principal) -> None:
    """Write what the listener hears until it ends or :data:`STREAM_SECONDS` pass; a comment when idle."""
    ends = time.monotonic() + STREAM_SECONDS
    while (left := ends - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(min(KEEP_ALIVE_SECONDS, left)):
                event = await listener.queue.get()
        except TimeoutError:
            await response.write(b": keep-alive\n\n")
            continue
        if event is END:
            return
        if event.topic in topics and event.visible_to(who):
            await response.write(event.encode())


async def _hub_lifetime(app: web.Application) -> AsyncIterator[None]:
    hub = app[EVENT_HUB]
    app[WATCHER].listeners.append(hub.job_changed)
    hosts = await app[BUS].subscribe(app[TOPOLOGY].host_changes("gateway-events"), hub.host_changed)
    yield
    await hosts.cancel()


async def _end_streams(app: web.Application) -> None:
    app[EVENT_HUB].close()


def install_event_stream(app: web.Application) -> None:
    """Add the stream to the app: after the job watcher's lifetime, which feeds it."""
    app[EVENT_HUB] = EventHub()
    app.add_routes(routes)
    app.cleanup_ctx.append(_hub_lifetime)
    app.on_shutdown.append(_end_streams)
