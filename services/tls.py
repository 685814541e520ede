"""TLS contexts: the gateway's server side, and what its clients (the agent, the CLI) and the AMQP
adapter trust.

A client given a CA file trusts that file only (the system's store is not consulted); without one it
trusts the system's store, as a browser does. Hostnames are always checked, except by the local
agent of ``skybus up``, which trusts exactly its own gateway's certificate (:func:`pinned_context`).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from services.settings import Settings

PEM_END = "-----END CERTIFICATE-----"


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The gateway's context: ``cert`` (the server's certificate, then any intermediates) and its key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def client_context(ca: Path | None) -> ssl.SSLContext:
    """Verifies a server against ``ca`` (a PEM file of one or more certificates), or against the
    system's trust store when there is none."""
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def gateway_context(settings: Settings) -> ssl.SSLContext | None:
    """What an agent verifies an https:// gateway with: ``SKYBUS_CA`` when given, else None (the
    system's trust store, aiohttp's default)."""
    return client_context(settings.ca) if settings.ca is not None else None


def amqp_context(settings: Settings) -> ssl.SSLContext | None:
    """What the AMQP adapter verifies an amqps:// broker with: ``SKYBUS_AMQP_CA`` when given; else
    None, and aiormq builds its own context (the system's store, or a ``?cafile=`` in the URL)."""
    return client_context(settings.amqp_ca) if settings.amqp_ca is not None else None


def pinned_context(cert: Path) -> ssl.SSLContext:
    """Trusts the first certificate of ``cert`` and nothing else, whatever name it carries: how the
    local agent of ``skybus up`` reaches its own gateway over loopback, whose certificate need not
    name 127.0.0.1 nor chain to anything the agent knows."""
    text = cert.read_text()
    if PEM_END not in text:
        raise ValueError(f"{cert} holds no PEM certificate")
    leaf = text[: text.index(PEM_END) + len(PEM_END)] + "\n"
    context = ssl.create_default_context(cadata=leaf[leaf.index("-----BEGIN CERTIFICATE-----") :])
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the trust anchor
    context.check_hostname = False
    return context
