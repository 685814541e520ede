"""The one ack policy: what a handler's outcome asks of the bus. Both adapters call :func:`decide`.

Pure: no I/O, no clock. An adapter decodes a delivery, runs the handler, hands what happened to
:func:`decide` and carries out the :class:`Verdict` in its own terms (``basic.ack``, a republish to
the dead-letter exchange, putting the delivery back on an asyncio queue). The rules are those of
:mod:`broker.port`, by queue kind (:class:`broker.port.QueueKind`):

===============================  ==========================  ==============================
outcome                          SHARED, AGENT, TRANSIENT    BROADCAST
===============================  ==========================  ==============================
undecodable body                 dead letter                 dead letter
returned, the message a request  reply (then ack)            reply (then ack)
returned otherwise               ack                         ack
raised :class:`Drop`             ack                         ack
raised :class:`PoisonMessage`    dead letter                 dead letter
raised anything else             requeue, or dead letter     ack (dropped, logged)
                                 once ``attempts`` reaches
                                 ``delivery_limit``
===============================  ==========================  ==============================

The reply to a request is sent by the replier: :func:`reply_envelope` names the bus that answers as
its sender (unless the handler returned a whole envelope, which goes as it is).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from broker.codec import UndecodableMessage
from broker.envelope import Envelope
from broker.port import Drop, PoisonMessage, QueueKind
from schemas.base import WireModel


class Action(Enum):
    ACK = "ack"
    REPLY = "reply"  # send the reply, then ack
    REQUEUE = "requeue"  # deliver again later; this delivery counts as a failed attempt
    DEAD_LETTER = "dead-letter"  # republish to the dead-letter exchange with the reason, then ack


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reason: str = ""  # why: the dead letter's reason, or what the log line says
    level: int = logging.DEBUG  # how loudly the adapter logs the verdict
    reply: WireModel | Envelope | None = None


ACK = Verdict(Action.ACK)


def decide(
    kind: QueueKind,
    *,
    attempts: int,
    delivery_limit: int,
    error: BaseException | None = None,
    reply: WireModel | Envelope | None = None,
    is_request: bool = False,
) -> Verdict:
    """The verdict on one delivery: the handler raised ``error`` or returned ``reply`` (``error`` is an
    :class:`~broker.codec.UndecodableMessage` when the handler never ran). ``attempts`` counts the
    deliveries of the message so far, this one included (1 the first time)."""
    if error is None:
        if reply is not None and is_request:
            return Verdict(Action.REPLY, reply=reply)
        return ACK
    if isinstance(error, UndecodableMessage):
        return Verdict(Action.DEAD_LETTER, f"undecodable: {error}", logging.ERROR)
    if isinstance(error, Drop):
        return Verdict(Action.ACK, f"dropped: {error}", logging.INFO)
    if isinstance(error, PoisonMessage):
        return Verdict(Action.DEAD_LETTER, f"poison: {error}", logging.ERROR)
    if kind is QueueKind.BROADCAST:
        return Verdict(Action.ACK, f"broadcast dropped after its handler failed: {error!r}", logging.ERROR)
    if attempts >= delivery_limit:
        return Verdict(Action.DEAD_LETTER, f"delivery limit {attempts} reached: {error!r}", logging.ERROR)
    return Verdict(Action.REQUEUE, f"handler failed (attempt {attempts}): {error!r}", logging.WARNING)


def reply_envelope(request: Envelope, reply: WireModel | Envelope, *, replier: str) -> Envelope:
    """What goes back to the requester: a whole envelope as it is, else the payload in an envelope
    caused by the request and sent by ``replier``."""
    if isinstance(reply, Envelope):
        return reply
    return request.caused(reply, sender=replier)


def report(log: logging.Logger, verdict: Verdict, what: str, queue: str) -> None:
    """Log ``verdict`` on the delivery described by ``what`` (type and message id) at its level."""
    if verdict.reason:
        log.log(verdict.level, "%s from %s: %s", what, queue, verdict.reason, extra={"queue": queue})
