"""msgpack encoding of the envelope. The only module that knows msgpack.

Wire layout: a msgpack map whose ``p`` field is the payload, itself msgpack-encoded to bytes, so
the exact signed bytes survive a decode and the payload is decoded only after the envelope is read.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgpack
from pydantic import ValidationError

from broker.envelope import Envelope
from schemas.base import MessageTypes


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
    try:
        raw = msgpack.unpackb(body)
        type_name = raw["t"]
        payload_bytes = raw["p"]
        model = types.get(type_name)
        if model is None:
            raise UndecodableMessage(f"unknown message type {type_name!r}")
        payload = model.model_validate(msgpack.unpackb(payload_bytes))
        return Envelope(
            payload=payload,
            message_id=raw["i"],
            time=datetime.fromtimestamp(raw["at"], UTC),
            correlation_id=raw.get("c"),
            causation_id=raw.get("k"),
            sender=raw.get("s") or "",
            resource_id=raw.get("r"),
            signature=raw.get("g"),
            payload_bytes=payload_bytes,
        )
    except UndecodableMessage:
        raise
    except ValidationError as error:
        raise UndecodableMessage(f"payload does not fit its model: {error.errors()[:3]}") from error
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as error:
        raise UndecodableMessage(f"not a skybus envelope: {error!r}") from error
