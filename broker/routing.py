"""AMQP topic matching, shared by the in-process adapter so it routes exactly as RabbitMQ does, and
the naming rule of broadcast queues, shared by both adapters.

``*`` matches exactly one dot-separated word, ``#`` zero or more.
"""

from __future__ import annotations

import uuid
from functools import lru_cache


@lru_cache(maxsize=4096)
def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split(".")) if text else ()


def topic_matches(pattern: str, routing_key: str) -> bool:
    return _match(_words(pattern), _words(routing_key))


@lru_cache(maxsize=16384)
def _match(pattern: tuple[str, ...], key: tuple[str, ...]) -> bool:
    if not pattern:
        return not key
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, key[i:]) for i in range(len(key) + 1))
    if not key:
        return False
    return (head == "*" or head == key[0]) and _match(rest, key[1:])


def broadcast_queue_name(name: str) -> str:
    """The queue of one broadcast subscription: the spec's name and a suffix no other one has."""
    return f"{name}.{uuid.uuid4().hex[:12]}"
