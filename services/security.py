"""Tokens and agent signatures.

Tokens are random UUIDs (122 bits of entropy), so a plain SHA-256 is a safe way to store them:
there is nothing to brute-force, and the hash doubles as the lookup key. Agents sign their events
with an Ed25519 key derived from their token; the server keeps only the public half (the
``verify_key``), so neither a database dump nor a bus capture lets anyone speak for a host.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import uuid

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker import codec
from broker.envelope import Envelope
from broker.topology import Topology

_SIGNING_CONTEXT = b"skybus agent signing key v1\x00"


def new_token() -> str:
    return str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def signing_key(token: str) -> Ed25519PrivateKey:
    seed = hashlib.sha256(_SIGNING_CONTEXT + token.encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def verify_key(token: str) -> str:
    """The public half of the token's signing key, hex-encoded, as the server stores it."""
    public = signing_key(token).public_key()
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def signature_is_valid(verify_key_hex: str, data: bytes, signature: bytes | None) -> bool:
    if not signature:
        return False
    try:
        _public_key(verify_key_hex).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=65536)
def _public_key(verify_key_hex: str) -> Ed25519PublicKey:
    """A host's verify key, parsed once: every heartbeat and task event of the host is checked with it."""
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(verify_key_hex))


def signed_by(envelope: Envelope, verify_key_hex: str) -> bool:
    """Whether the host whose verify key this is signed ``envelope`` (every field but the signature)."""
    return signature_is_valid(verify_key_hex, codec.signed_bytes(envelope), envelope.signature)


def routed_from_its_host(envelope: Envelope) -> bool:
    """Whether an agent event came under the one key its host's broker user may publish it under,
    ``<resource_id>.<type>``: with the signature, the event's sender, its signer and the host it names
    are one. An envelope no bus delivered (a handler called directly) has no key to check."""
    if envelope.routing_key is None:
        return True
    rid = envelope.resource_id
    return rid is not None and envelope.routing_key == Topology.agent_routing_key(rid, envelope.type)


def new_agent_credentials() -> tuple[str, str, str]:
    """A fresh agent token, its hash and its verify key: only the last two are ever stored."""
    token = new_token()
    return token, hash_token(token), verify_key(token)


# Broker credentials of an agent: derived from its token, so nothing new is stored or sent.

_BROKER_PASSWORD_CONTEXT = b"skybus agent broker password v1"


def broker_username(resource_id: str) -> str:
    """The RabbitMQ user of the agent of ``resource_id``."""
    return f"agent-{resource_id}"


def broker_password(token: str) -> str:
    """The agent's RabbitMQ password: an HMAC of its token with a fixed context. The agent computes
    it; the gateway, which sees the token once, passes on only :func:`rabbitmq_password_hash` of it."""
    return hmac.new(token.encode(), _BROKER_PASSWORD_CONTEXT, hashlib.sha256).hexdigest()


def rabbitmq_password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password)), 4-byte salt."""
    salt = secrets.token_bytes(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode("ascii")


def broker_password_hash(token: str) -> str:
    """What the resource manager stores on the broker for the agent whose token this is."""
    return rabbitmq_password_hash(broker_password(token))
