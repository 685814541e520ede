"""RabbitMQ for tests: a fresh vhost per test session, and the rule for when there is no broker.

The broker is ``amqp://guest:guest@127.0.0.1:5672/`` unless ``SKYBUS_TEST_AMQP_URL`` names another.
When it cannot be reached, a test that needs it is skipped with the reason, except on CI
(``CI=true``), where it fails with that reason: a CI run must not pass by testing nothing.

The vhost is made and removed through the management HTTP API (``SKYBUS_TEST_AMQP_ADMIN_URL``, by
default guest on 127.0.0.1:15672), or with ``rabbitmqctl`` where the API does not answer. The API is
preferred: ``rabbitmqctl`` starts an Erlang node per call (a second of CPU), and only about a dozen
may run at once on one machine. Without either, the tests share the URL's own vhost and rely on
their namespaces alone. Each test
still takes a Topology of its own (``amqp_topology``), so nothing leaks between tests.

Use from a conftest::

    from tests.rabbit import amqp_topology, amqp_url, amqp_vhost  # noqa: F401
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from yarl import URL

from broker.topology import Topology

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def base_url() -> str:
    return os.environ.get("SKYBUS_TEST_AMQP_URL") or DEFAULT_URL


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(reason: str) -> None:
    """Skip the test that needs what is missing, or fail it on CI."""
    if on_ci():
        pytest.fail(f"{reason} (CI=true, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def unreachable_reason(url: str, timeout: float = 1.0) -> str | None:
    """Why RabbitMQ at ``url`` cannot be reached, or None if it accepts a TCP connection."""
    parsed = URL(url)
    host, port = parsed.host or "127.0.0.1", parsed.port or 5672
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"RabbitMQ is not reachable at {host}:{port} ({error}); set SKYBUS_TEST_AMQP_URL or start it"


def rabbitmqctl(*args: str, quiet: bool = True, timeout: float = 30.0) -> str:
    """Run ``rabbitmqctl`` (skipped, or failed on CI, when it is not installed)."""
    if shutil.which("rabbitmqctl") is None:
        unavailable("rabbitmqctl is not installed on this machine")
    command = ["rabbitmqctl", *(["-q"] if quiet else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def admin_url() -> URL:
    return URL(os.environ.get("SKYBUS_TEST_AMQP_ADMIN_URL") or "http://guest:guest@127.0.0.1:15672/")


def management(method: str, path: str, body: dict | None = None, timeout: float = 30.0) -> bool:
    """Call the management HTTP API; False when it does not answer (no plugin), raises on a refusal."""
    base = admin_url()
    request = urllib.request.Request(
        str(base.with_user(None).with_password(None).with_path(path, encoded=True)),
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"content-type": "application/json"},
    )
    credentials = f"{base.user or 'guest'}:{base.password or 'guest'}".encode()
    request.add_header("Authorization", "Basic " + base64.b64encode(credentials).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError as error:
        if error.code == 404 and method == "DELETE":
            return True
        raise RuntimeError(f"management API {method} {path}: {error.code} {error.read()[:200]!r}") from error
    except (urllib.error.URLError, OSError):
        return False


def add_vhost(name: str, user: str) -> None:
    quoted = urllib.parse.quote(name, safe="")
    if management("PUT", f"/api/vhosts/{quoted}") and management(
        "PUT", f"/api/permissions/{quoted}/{urllib.parse.quote(user, safe='')}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    ):  # fmt: skip
        return
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")


def delete_vhost(name: str) -> None:
    if not management("DELETE", f"/api/vhosts/{urllib.parse.quote(name, safe='')}"):
        rabbitmqctl("delete_vhost", name)


@dataclass(frozen=True)
class Vhost:
    name: str
    url: str
    managed: bool  # made by us with rabbitmqctl (and so also closable with it)

    def close_all_connections(self, explanation: str = "test") -> int:
        """Make the broker drop every client connection of this vhost; returns how many it closed."""
        if not self.managed:
            unavailable("dropping connections needs rabbitmqctl and a vhost of the test's own")
        output = rabbitmqctl("close_all_connections", "-p", self.name, explanation, quiet=False)
        closed = re.search(r"Closed (\d+) connection", output)
        return int(closed.group(1)) if closed else 0


@contextmanager
def fresh_vhost(prefix: str = "skybus-test") -> Iterator[Vhost]:
    """A new vhost that ``guest`` may use, deleted afterwards; or the URL's own without rabbitmqctl."""
    url = base_url()
    reason = unreachable_reason(url)
    if reason is not None:
        unavailable(reason)
    if shutil.which("rabbitmqctl") is None and not management("GET", "/api/overview"):
        yield Vhost(URL(url).path.lstrip("/") or "/", url, managed=False)
        return
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    add_vhost(name, URL(url).user or "guest")
    try:
        yield Vhost(name, str(URL(url).with_path(f"/{name}").with_query(URL(url).query)), managed=True)
    finally:
        delete_vhost(name)


def unique_namespace(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def amqp_vhost() -> Iterator[Vhost]:
    """A vhost of this test session's own on the test broker."""
    with fresh_vhost() as vhost:
        yield vhost


@pytest.fixture(scope="session")
def amqp_url(amqp_vhost: Vhost) -> str:
    """The AMQP URL of this session's vhost."""
    return amqp_vhost.url


@pytest.fixture
def amqp_topology() -> Topology:
    """A Topology whose names no other test shares."""
    return Topology(namespace=unique_namespace())
