"""Job ids minted by the gateway: UUIDv7, so an id tells when it was made.

The gateway answers ``POST /api/job/run`` once the broker has the command, before the job manager has
stored the job; a read that misses a job whose id is only seconds old waits for the job instead of
answering 404 (:mod:`services.gateway.job_watch`).
"""

from __future__ import annotations

import os
import time
import uuid


def uuid7(now: float | None = None) -> str:
    """A version 7 UUID: 48 bits of Unix milliseconds, then random bits (RFC 9562)."""
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis << 80) | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def minted_at(text: str) -> float | None:
    """When a UUIDv7 was made (epoch seconds), or None for any other id."""
    try:
        value = uuid.UUID(text)
    except ValueError:
        return None
    if value.version != 7:
        return None
    return (value.int >> 80) / 1000
