"""The one envelope every message travels in."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from schemas.base import WireModel


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A typed payload and the ids that let an operator follow it across services.

    ``correlation_id`` ties every message of one conversation (a job, a request) together;
    ``causation_id`` names the message that caused this one. ``signature`` is set only on agent
    events, which travel on the untrusted exchange until the resource manager has checked them.
    ``payload_bytes`` is the payload exactly as it arrived, kept so a signature can be checked
    against the bytes that were signed rather than a re-encoding. ``routing_key`` is the key the
    message was delivered under, set by the adapter that consumed it (never read from the body, so
    no sender sets it); None on an envelope no bus delivered (a handler called directly in a test).
    ``publisher`` is the broker user that published it, as the broker validated it (RabbitMQ refuses
    a ``user_id`` other than the connection's own user), set by the adapter that consumed it; None
    when the publisher did not say, or on the in-process bus.
    """

    payload: WireModel
    message_id: str = field(default_factory=new_id)
    time: datetime = field(default_factory=utcnow)
    correlation_id: str | None = None
    causation_id: str | None = None
    sender: str = ""
    resource_id: str | None = None
    signature: bytes | None = None
    payload_bytes: bytes | None = field(default=None, compare=False, repr=False)
    routing_key: str | None = field(default=None, compare=False, repr=False)
    publisher: str | None = field(default=None, compare=False, repr=False)

    @property
    def type(self) -> str:
        return self.payload.message_type

    def caused(self, payload: WireModel, *, sender: str = "", resource_id: str | None = None) -> Envelope:
        """A new message caused by this one, in the same conversation."""
        return Envelope(
            payload=payload,
            correlation_id=self.correlation_id or self.message_id,
            causation_id=self.message_id,
            sender=sender,
            resource_id=resource_id if resource_id is not None else self.resource_id,
        )

    def with_signature(self, signature: bytes | None) -> Envelope:
        return replace(self, signature=signature)

    def delivered_under(self, routing_key: str, *, publisher: str | None = None) -> Envelope:
        return replace(self, routing_key=routing_key, publisher=publisher)
