"""Tokens and agent signatures.

Tokens are random UUIDs (122 bits of entropy), so a plain SHA-256 is a safe way to store them:
there is nothing to brute-force, and the hash doubles as the lookup key. Agents sign their events
with an Ed25519 key derived from their token; the server keeps only the public half (the
``verify_key``), so neither a database dump nor a bus capture lets anyone speak for a host.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from broker import codec
from broker.envelope import Envelope

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
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(verify_key_hex)).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def signed_by(envelope: Envelope, verify_key_hex: str) -> bool:
    """Whether the host whose verify key this is signed ``envelope`` (every field but the signature)."""
    return signature_is_valid(verify_key_hex, codec.signed_bytes(envelope), envelope.signature)


def new_agent_credentials() -> tuple[str, str, str]:
    """A fresh agent token, its hash and its verify key: only the last two are ever stored."""
    token = new_token()
    return token, hash_token(token), verify_key(token)
