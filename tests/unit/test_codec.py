from typing import ClassVar

import msgpack
import pytest

from broker import codec
from broker.envelope import Envelope
from schemas.base import MessageTypes, WireModel
from schemas.registry import all_message_types
from schemas.resources import Heartbeat, HostFacts
from services.security import new_token, signature_is_valid, signing_key, verify_key


class Ping(WireModel):
    message_type: ClassVar[str] = "test.ping"

    n: int
    note: str = ""


TYPES = MessageTypes(Ping)


def test_roundtrip_keeps_every_field() -> None:
    sent = Envelope(Ping(n=3, note="hi"), correlation_id="c", causation_id="k", sender="me", resource_id="r")
    got = codec.decode(codec.encode(sent), TYPES)
    assert got == sent
    assert got.payload == Ping(n=3, note="hi")
    assert got.time == sent.time


def test_unknown_type_is_undecodable() -> None:
    body = codec.encode(Envelope(Ping(n=1)))
    with pytest.raises(codec.UndecodableMessage, match="unknown message type"):
        codec.decode(body, MessageTypes())


def test_garbage_is_undecodable() -> None:
    with pytest.raises(codec.UndecodableMessage):
        codec.decode(b"\x00\xffnot msgpack", TYPES)
    with pytest.raises(codec.UndecodableMessage):
        codec.decode(msgpack.packb({"t": "test.ping"}), TYPES)


def test_payload_that_breaks_its_model_is_undecodable() -> None:
    raw = msgpack.unpackb(codec.encode(Envelope(Ping(n=1))))
    raw["p"] = msgpack.packb({"n": "not a number", "extra": 1})
    with pytest.raises(codec.UndecodableMessage, match="does not fit"):
        codec.decode(msgpack.packb(raw), TYPES)


def test_signature_survives_the_wire_and_detects_tampering() -> None:
    token = new_token()
    facts = HostFacts(hostname="h", os_family="linux", arch="x86_64", os_info="Debian")
    envelope = Envelope(Heartbeat(facts=facts), resource_id="r1", sender="agent:r1")
    signed = envelope.with_signature(signing_key(token).sign(codec.signed_bytes(envelope)))
    received = codec.decode(codec.encode(signed), all_message_types())
    assert signature_is_valid(verify_key(token), codec.signed_bytes(received), received.signature)
    assert not signature_is_valid(verify_key(new_token()), codec.signed_bytes(received), received.signature)
    claimed_other_host = Envelope(
        received.payload,
        message_id=received.message_id,
        time=received.time,
        sender=received.sender,
        resource_id="r2",
        signature=received.signature,
    )
    assert not signature_is_valid(verify_key(token), codec.signed_bytes(claimed_other_host), received.signature)


def raw_envelope(**fields: object) -> bytes:
    """A well-formed encoded ``Ping`` envelope with ``fields`` of its map replaced."""
    raw = msgpack.unpackb(codec.encode(Envelope(Ping(n=1))))
    raw.update(fields)
    return msgpack.packb(raw)


@pytest.mark.parametrize(
    "body",
    [
        raw_envelope(at=1e20),  # OverflowError in datetime.fromtimestamp
        raw_envelope(at=-1e20),
        raw_envelope(at=float("nan")),  # ValueError
        raw_envelope(at=float("inf")),
        raw_envelope(at=2**63),
        raw_envelope(at="yesterday"),  # TypeError
        raw_envelope(at=None),
        raw_envelope(at=True),
        raw_envelope(t=["test.ping"]),  # unhashable: TypeError in the registry lookup
        raw_envelope(t=None),
        raw_envelope(p="not bytes"),
        raw_envelope(p=b"\xc1"),  # msgpack FormatError in the payload
        raw_envelope(i=7),
        raw_envelope(s=b"sender"),
        raw_envelope(g="not bytes"),
        raw_envelope(c=["c"]),
        msgpack.packb([1, 2, 3]),
        msgpack.packb("a string"),
        b"",
        b"\xc1",
        msgpack.packb({"t": "test.ping"}) + b"trailing",
    ],
)
def test_any_bad_body_raises_only_the_decode_error(body: bytes) -> None:
    with pytest.raises(codec.UndecodableMessage):
        codec.decode(body, TYPES)


def test_an_envelope_from_the_far_future_says_why() -> None:
    with pytest.raises(codec.UndecodableMessage, match="time 1e\\+20"):
        codec.decode(raw_envelope(at=1e20), TYPES)
