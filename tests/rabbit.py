"""RabbitMQ for tests: a fresh vhost per test session, and the rule for when there is no broker.

The broker is ``amqp://guest:guest@127.0.0.1:5672/`` unless ``SKYBUS_TEST_AMQP_URL`` names another.
When it cannot be reached, a test that needs it is skipped with the reason, except on CI
(``CI=true``), where it fails with that reason: a CI run must not pass by testing nothing.

The vhost is made and removed through the management HTTP API (``SKYBUS_TEST_AMQP_API``, by default
port 15672 of the broker's host): fast, and nothing like ``rabbitmqctl``'s few distribution ports to
exhaust. Without the API, ``rabbitmqctl`` (a broker on this machine) does it; without either, the
tests share the URL's own vhost and rely on their namespaces alone; so they do when the broker does
not make the vhost within 20 s (one vhost stuck in deletion blocks every other), or when
``SKYBUS_TEST_SHARED_VHOST`` is set. Each test still takes a Topology of its own
(``amqp_topology``), so nothing leaks between tests.

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
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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


def management_api(url: str) -> str:
    """The management API's base URL for the broker at ``url``."""
    default = f"http://{URL(url).host or '127.0.0.1'}:15672/api"
    return os.environ.get("SKYBUS_TEST_AMQP_API") or default


def api_call(url: str, method: str, path: str, body: dict | None = None, timeout: float = 10.0) -> bytes:
    """One management API call with the broker URL's credentials; raises OSError when unreachable."""
    parsed = URL(url)
    request = urllib.request.Request(
        management_api(url) + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    credentials = base64.b64encode(f"{parsed.user or 'guest'}:{parsed.password or 'guest'}".encode()).decode()
    request.add_header("Authorization", f"Basic {credentials}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def api_reachable(url: str) -> bool:
    try:
        api_call(url, "GET", "/overview", timeout=2.0)
        return True
    except (OSError, urllib.error.HTTPError):
        return False


@dataclass(frozen=True)
class Vhost:
    name: str
    url: str
    managed: bool  # made by us (and so its connections are ours to close)
    api: bool = False  # made through the management API

    def close_all_connections(self, explanation: str = "test") -> int:
        """Make the broker drop every client connection of this vhost; returns how many it closed."""
        if not self.managed:
            unavailable("dropping connections needs a vhost of the test's own")
        if self.api:
            path = f"/vhosts/{urllib.parse.quote(self.name, safe='')}/connections"
            deadline = time.monotonic() + 10.0  # the API lists a new connection within its stats interval (5 s)
            while not (names := [c["name"] for c in json.loads(api_call(self.url, "GET", path))]):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            for name in names:
                with suppress(urllib.error.HTTPError):  # gone already
                    api_call(self.url, "DELETE", f"/connections/{urllib.parse.quote(name, safe='')}")
            return len(names)
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
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    user = URL(url).user or "guest"
    vhost_url = str(URL(url).with_path(f"/{name}").with_query(URL(url).query))
    shared = Vhost(URL(url).path.lstrip("/") or "/", url, managed=False)
    if os.environ.get("SKYBUS_TEST_SHARED_VHOST"):
        yield shared  # a broker that cannot make vhosts now (one stuck deleting another blocks them all)
        return
    if api_reachable(url):
        quoted = urllib.parse.quote(name, safe="")
        try:
            api_call(url, "PUT", f"/vhosts/{quoted}", {}, timeout=20.0)
        except OSError as error:
            warnings.warn(f"the broker did not make vhost {name} ({error}): tests share {shared.name!r}", stacklevel=2)
            yield shared
            return
        try:
            api_call(url, "PUT", f"/permissions/{quoted}/{user}", {"configure": ".*", "write": ".*", "read": ".*"})
            yield Vhost(name, vhost_url, managed=True, api=True)
        finally:
            api_call(url, "DELETE", f"/vhosts/{quoted}", timeout=60.0)
        return
    if shutil.which("rabbitmqctl") is None:
        yield shared
        return
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield Vhost(name, vhost_url, managed=True)
    finally:
        rabbitmqctl("delete_vhost", name)


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
