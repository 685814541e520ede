"""What both halves of the AMQP adapter agree on: header names, the content type, and what a lost
connection looks like (worth a retry once the robust connection is back)."""

from __future__ import annotations

from contextvars import ContextVar

from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import (
    AMQPConnectionError,
    ChannelAccessRefused,
    ChannelClosed,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)

CONTENT_TYPE = "application/msgpack"

REASON = "x-skybus-reason"
QUEUE = "x-skybus-queue"
EXCHANGE = "x-skybus-exchange"
ROUTING_KEY = "x-skybus-routing-key"
# Failed deliveries of an envelope before it was republished alone out of its batch.
ATTEMPTS = "x-skybus-attempts"

# The message whose handler runs in this task (unless it came in a batch): what a forward passes on.
HANDLING: ContextVar[AbstractIncomingMessage | None] = ContextVar("skybus_amqp_message", default=None)

# What a connection or channel loss (or a broker's nack) looks like from a publish or an ack: worth
# a retry once the robust connection is back. RuntimeError is how aio-pika says a channel or a
# connection is not open (ChannelInvalidStateError is one). Channel errors that would recur (a missing
# exchange, a refused permission, an inequivalent declaration) are not in it.
LOST = (AMQPConnectionError, ConnectionError, OSError, RuntimeError)
_PERMANENT = (ChannelNotFoundEntity, ChannelAccessRefused, ChannelPreconditionFailed)


def is_lost(error: BaseException) -> bool:
    if isinstance(error, _PERMANENT):
        return False
    if isinstance(error, PublishError):
        return False
    return isinstance(error, (*LOST, ChannelClosed, DeliveryError))


def delivered_key(message: AbstractIncomingMessage) -> str:
    """The routing key ``message`` was published under. A message a service retried alone comes by the
    default exchange (which only services may write) under its queue's name, with the original key
    in a header: that header is believed there, and nowhere else (any publisher can set headers)."""
    headers = message.headers or {}
    if message.exchange == "" and ATTEMPTS in headers:
        key = headers.get(ROUTING_KEY)
        return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key or "")
    return message.routing_key or ""
