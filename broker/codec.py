"""msgpack encoding of the envelope. The only module that knows msgpack.

Wire layout: a msgpack map whose ``p`` field is the payload, itself msgpack-encoded to bytes, so
the exact signed bytes survive a decode and the payload is decoded only after the envelope is read.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TypeVar

import msgpack
from pydantic import ValidationError

from broker.envelope import Envelope
from schemas.base import MessageTypes

T = TypeVar("T")


class UndecodableMessage(Exception):
    """The body is not an envelope, names an unknown type, or its payload does not fit the model."""


def encode_payload(envelope: Envelope) -> bytes:
    if envelope.payload_bytes is not None:
        return envelope.payload_bytes
    return msgpack.packb(envelope.payload.model_dump(mode="json"))


def encode(envelope: Envelope) -> bytes:
    return msgpack.packb(
        {
            "i": envelope.message_id,
            "t": envelope.type,
            "at": envelope.time.timestamp(),
            "c": envelope.correlation_id,
            "k": envelope.causation_id,
            "s": envelope.sender,
            "r": envelope.resource_id,
            "g": envelope.signature,
            "p": encode_payload(envelope),
        }
    )


def signed_bytes(envelope: Envelope) -> bytes:
    """The bytes an agent signs: every field of the envelope but the signature itself."""
    return msgpack.packb(
        [
            envelope.message_id,
            envelope.type,
            envelope.time.timestamp(),
            envelope.correlation_id,
            envelope.causation_id,
            envelope.sender,
            envelope.resource_id,
            encode_payload(envelope),
        ]
    )


def decode(body: bytes, types: MessageTypes) -> Envelope:
    """The envelope in ``body``; :class:`UndecodableMessage`, and nothing else, for any body that is not
    a well-formed envelope of a known type (the bytes come from the network: whatever is wrong with
    them is the sender's fault, never a reason for the consumer to fail and requeue)."""
    try:
        return _decode(body, types)
    except UndecodableMessage:
        raise
    except ValidationError as error:
        raise UndecodableMessage(f"payload does not fit its model: {error.errors()[:3]}") from error
    except Exception as error:  # msgpack, overflow, recursion, ...: whatever the bytes make the decoder raise
        raise UndecodableMessage(f"not a skybus envelope: {error!r}") from error


def _decode(body: bytes, types: MessageTypes) -> Envelope:
    raw = msgpack.unpackb(body)
    if not isinstance(raw, dict):
        raise UndecodableMessage(f"not a skybus envelope: a {type(raw).__name__}, not a map")
    type_name = _field(raw, "t", str)
    model = types.get(type_name)
    if model is None:
        raise UndecodableMessage(f"unknown message type {type_name!r}")
    payload_bytes = _field(raw, "p", bytes)
    payload = model.model_validate(msgpack.unpackb(payload_bytes))
    return Envelope(
        payload=payload,
        message_id=_field(raw, "i", str),
        time=_time(raw.get("at")),
        correlation_id=_field(raw, "c", str, optional=True),
        causation_id=_field(raw, "k", str, optional=True),
        sender=_field(raw, "s", str, optional=True) or "",
        resource_id=_field(raw, "r", str, optional=True),
        signature=_field(raw, "g", bytes, optional=True),
        payload_bytes=payload_bytes,
    )


def _field(raw: dict[object, object], key: str, kind: type[T], *, optional: bool = False) -> T:
    value = raw.get(key)
    if value is None and optional:
        return value  # type: ignore[return-value]
    if not isinstance(value, kind):
        raise UndecodableMessage(f"envelope field {key!r} is not a {kind.__name__}: {value!r:.80}")
    return value


def _time(value: object) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UndecodableMessage(f"envelope time {value!r:.80} is not a timestamp")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError) as error:
        raise UndecodableMessage(f"envelope time {value!r} is out of range: {error}") from error
