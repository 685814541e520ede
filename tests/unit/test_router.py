"""The router, called directly: typed dispatch, and its per-entity serialisation and retry-on-conflict option."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import ClassVar

import pytest

from broker.envelope import Envelope
from broker.port import PoisonMessage
from broker.router import Router
from broker.serial import Serialized
from schemas.base import Accepted, WireModel


class Touch(WireModel):
    message_type: ClassVar[str] = "test.touch"

    entity: str | None = None
    n: int = 0


class Other(WireModel):
    message_type: ClassVar[str] = "test.other"


class Conflict(Exception):
    """What the store under test raises when another writer came first."""


def entity_of(message: Touch, envelope: Envelope) -> str | None:
    return message.entity


def touch(entity: str | None, n: int = 0) -> Envelope:
    return Envelope(Touch(entity=entity, n=n))


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_handler_gets_its_typed_payload_and_the_envelope() -> None:
    seen: list[tuple[Touch, Envelope]] = []

    async def handler(message: Touch, envelope: Envelope) -> Accepted:
        seen.append((message, envelope))
        return Accepted(id=str(message.n))

    router = Router()
    router.add(Touch, handler)
    envelope = touch("a", 7)
    assert await router(envelope) == Accepted(id="7")
    assert seen == [(envelope.payload, envelope)]
    with pytest.raises(PoisonMessage):
        await router(Envelope(Other()))
    with pytest.raises(ValueError, match="already has a handler"):
        router.add(Touch, handler)


async def test_one_entity_at_a_time_and_other_entities_concurrently() -> None:
    inside: Counter[str] = Counter()
    most: Counter[str] = Counter()
    release = asyncio.Event()

    async def handler(message: Touch, envelope: Envelope) -> None:
        assert message.entity is not None
        inside[message.entity] += 1
        most[message.entity] = max(most[message.entity], inside[message.entity])
        await release.wait()
        inside[message.entity] -= 1

    router = Router()
    router.add(Touch, handler, serialized=Serialized(Conflict), key=entity_of)
    tasks = [asyncio.create_task(router(touch(entity))) for entity in ("a", "a", "a", "b", "c")]
    await settle()
    assert inside == {"a": 1, "b": 1, "c": 1}  # b and c did not wait for a; the other two a's did
    release.set()
    await asyncio.gather(*tasks)
    assert most == {"a": 1, "b": 1, "c": 1}
    assert sum(inside.values()) == 0


async def test_a_conflict_is_retried_with_a_fresh_run_and_then_succeeds() -> None:
    runs = 0

    async def handler(message: Touch, envelope: Envelope) -> Accepted:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise Conflict("a twin wrote first")
        return Accepted(id="done")

    router = Router()
    router.add(Touch, handler, serialized=Serialized(Conflict, attempts=3, backoff=0.001), key=entity_of)
    assert await router(touch("a")) == Accepted(id="done")
    assert runs == 3


class Raising:
    """A handler that raises ``error`` on every run, and counts its runs."""

    def __init__(self, error: type[Exception]) -> None:
        self.error = error
        self.runs = 0

    async def __call__(self, message: Touch, envelope: Envelope) -> None:
        self.runs += 1
        raise self.error(f"run {self.runs}")


async def test_a_conflict_that_keeps_happening_gives_up_after_the_bound() -> None:
    handler = Raising(Conflict)
    router = Router()
    router.add(Touch, handler, serialized=Serialized(Conflict, attempts=4, backoff=0.001), key=entity_of)
    with pytest.raises(Conflict, match="run 4"):
        await router(touch("a"))
    assert handler.runs == 4
    handler.runs = 0
    with pytest.raises(Conflict, match="run 4"):
        await router(touch(None))  # about no one entity: not locked, still retried
    assert handler.runs == 4


async def test_other_errors_are_not_retried() -> None:
    handler = Raising(RuntimeError)
    router = Router()
    router.add(Touch, handler, serialized=Serialized(Conflict), key=entity_of)
    with pytest.raises(RuntimeError):
        await router(touch("a"))
    assert handler.runs == 1


async def test_a_retry_waits_out_its_backoff_without_holding_the_lock() -> None:
    order: list[str] = []

    async def handler(message: Touch, envelope: Envelope) -> None:
        order.append(f"{message.n} runs")
        if message.n == 1 and order.count("1 runs") == 1:
            raise Conflict("lost the first race")

    router = Router()
    router.add(Touch, handler, serialized=Serialized(Conflict, backoff=0.5), key=entity_of)
    first = asyncio.create_task(router(touch("a", 1)))
    await settle()
    await asyncio.wait_for(router(touch("a", 2)), 0.25)  # runs, and ends, while the first waits to retry
    assert not first.done()
    await first
    assert order == ["1 runs", "2 runs", "1 runs"]


async def test_idle_entities_keep_no_lock() -> None:
    policy = Serialized(Conflict)
    release = asyncio.Event()

    async def handler(message: Touch, envelope: Envelope) -> None:
        if message.entity == "held":
            await release.wait()

    router = Router()
    router.add(Touch, handler, serialized=policy, key=entity_of)
    held = asyncio.create_task(router(touch("held")))
    waiting = asyncio.create_task(router(touch("held")))
    await settle()
    await asyncio.gather(*(router(touch(f"entity-{n}")) for n in range(1000)))
    assert policy.locked_keys == 1  # only the entity with work running or waiting
    release.set()
    await asyncio.gather(held, waiting)
    assert policy.locked_keys == 0


def test_a_key_needs_a_policy() -> None:
    async def handler(message: Touch, envelope: Envelope) -> None:
        return None

    with pytest.raises(ValueError, match="Serialized"):
        Router().add(Touch, handler, key=entity_of)
    with pytest.raises(ValueError):
        Serialized(Conflict, attempts=0)
