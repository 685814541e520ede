"""The one ack policy, called directly: every outcome on every kind of queue."""

from __future__ import annotations

import logging
from typing import ClassVar

import pytest

from broker import ack
from broker.ack import Action
from broker.codec import UndecodableMessage
from broker.envelope import Envelope
from broker.port import Drop, PoisonMessage, QueueKind
from schemas.base import WireModel


class Pong(WireModel):
    message_type: ClassVar[str] = "test.pong"

    n: int


KINDS = list(QueueKind)
RETRIED = [QueueKind.SHARED, QueueKind.AGENT, QueueKind.TRANSIENT]


def decide(kind: QueueKind, attempts: int = 1, **outcome: object) -> ack.Verdict:
    return ack.decide(kind, attempts=attempts, delivery_limit=3, **outcome)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_a_handler_that_returns_is_acked(kind: QueueKind) -> None:
    assert decide(kind) == ack.ACK
    assert decide(kind, reply=Pong(n=1)) == ack.ACK  # not a request: nobody to answer


@pytest.mark.parametrize("kind", KINDS)
def test_a_request_is_answered_with_what_the_handler_returned(kind: QueueKind) -> None:
    verdict = decide(kind, reply=Pong(n=1), is_request=True)
    assert (verdict.action, verdict.reply) == (Action.REPLY, Pong(n=1))
    assert decide(kind, reply=None, is_request=True) == ack.ACK  # nothing to answer: the caller times out


@pytest.mark.parametrize("kind", KINDS)
def test_drop_is_acked_and_logged(kind: QueueKind) -> None:
    verdict = decide(kind, error=Drop("already done"))
    assert (verdict.action, verdict.level) == (Action.ACK, logging.INFO)
    assert "already done" in verdict.reason


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("error", "why"),
    [(PoisonMessage("not a job"), "poison: not a job"), (UndecodableMessage("bad time"), "undecodable: bad time")],
)
def test_poison_and_undecodable_are_dead_lettered_at_once_on_every_kind(
    kind: QueueKind, error: Exception, why: str
) -> None:
    verdict = decide(kind, attempts=1, error=error)
    assert (verdict.action, verdict.reason, verdict.level) == (Action.DEAD_LETTER, why, logging.ERROR)


@pytest.mark.parametrize("kind", RETRIED)
def test_a_failure_is_requeued_until_the_delivery_limit(kind: QueueKind) -> None:
    for attempts in (1, 2):
        verdict = decide(kind, attempts=attempts, error=RuntimeError("boom"))
        assert (verdict.action, verdict.level) == (Action.REQUEUE, logging.WARNING)
    verdict = decide(kind, attempts=3, error=RuntimeError("boom"))
    assert verdict.action is Action.DEAD_LETTER
    assert verdict.reason == "delivery limit 3 reached: RuntimeError('boom')"


def test_a_failing_broadcast_is_dropped_not_requeued() -> None:
    for attempts in (1, 3, 10):
        verdict = decide(QueueKind.BROADCAST, attempts=attempts, error=RuntimeError("boom"))
        assert (verdict.action, verdict.level) == (Action.ACK, logging.ERROR)
        assert "boom" in verdict.reason


def test_the_reply_is_sent_by_the_replier() -> None:
    request = Envelope(Pong(n=1), sender="requester")
    answer = ack.reply_envelope(request, Pong(n=2), replier="replier")
    assert answer.sender == "replier"
    assert answer.causation_id == answer.correlation_id == request.message_id
    signed = request.caused(Pong(n=3), sender="agent:1").with_signature(b"sig")
    assert ack.reply_envelope(request, signed, replier="replier") is signed
