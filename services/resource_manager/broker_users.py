"""Each agent's own RabbitMQ user, provisioned and revoked through the management HTTP API.

An agent's user (``agent-<resource id>``, password derived from its token: see
:mod:`services.security`) may do its own work and nothing else:

* **configure** only its two queues (``<ns>.agent.<rid>`` and ``<ns>.agent.<rid>.live``);
* **write** to those queues (to bind them), to ``agent-events`` (its events and its answers to live
  queries), to ``agent-commands`` (a failed envelope is retried through the exchange it came by)
  and to ``dead`` (dead-letters, and its queues' ``x-dead-letter-exchange``, which RabbitMQ checks
  as a write);
* **read** only its two queues and ``agent-commands`` (to bind them);
* and on those three topic exchanges, **topic permissions** that confine every routing key it
  publishes or binds to keys that start with its own id: it reads only its own commands and speaks
  only for itself.

It has no write on ``amq.default`` (which would let it publish into any queue by name) and so no
direct reply-to: its answers to live queries travel on ``agent-events`` (see the ``reply_exchange``
of :meth:`broker.port.MessageBus.request`). It has no permission at all on ``commands`` and
``events``, and no user tag, so no management API.

The calls are idempotent (PUT a user and its permissions again, DELETE a user already gone), so a
redelivered registration or deletion provisions or revokes again harmlessly.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from broker.topology import Topology
from services.security import broker_username

log = logging.getLogger(__name__)

HASHING = "rabbit_password_hashing_sha256"


class BrokerAdminError(Exception):
    """The management API refused or could not be reached: the command is retried."""


@dataclass(frozen=True, slots=True)
class AgentPermissions:
    configure: str
    write: str
    read: str
    topics: dict[str, tuple[str, str]]
    """exchange -> (write, read) topic permission regexes."""


NOTHING = "^$"


def agent_permissions(topology: Topology, resource_id: str) -> AgentPermissions:
    """What the broker user of the agent of ``resource_id`` may do, as RabbitMQ's regexes."""
    queues = [topology.agent_queue(resource_id).name, topology.agent_live_queue(resource_id).name]
    own_key = f"^{re.escape(resource_id)}\\."

    def one_of(*names: str) -> str:
        return "^(" + "|".join(re.escape(name) for name in names) + ")$"

    return AgentPermissions(
        configure=one_of(*queues),
        write=one_of(*queues, topology.agent_events, topology.agent_commands, topology.dead),
        read=one_of(*queues, topology.agent_commands),
        topics={
            topology.agent_commands: (own_key, own_key),
            topology.agent_events: (own_key, NOTHING),
            topology.dead: (own_key, NOTHING),
        },
    )


class BrokerUsers:
    """Provisions and revokes agents' broker users on one vhost, as a management API administrator.

    ``admin_url`` is the management API with an administrator's credentials in it
    (``http://admin:secret@rabbitmq:15672``); ``vhost`` is the vhost of the services' AMQP URL.
    """

    def __init__(self, admin_url: str, vhost: str, topology: Topology, *, timeout: float = 10.0) -> None:
        url = URL(admin_url)
        self._base = url.with_user(None).with_password(None).with_path(url.path.rstrip("/") + "/api")
        self._headers = {"Authorization": aiohttp.encode_basic_auth(url.user or "", url.password or "")}
        self._vhost = vhost
        self._topology = topology
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def grant(self, resource_id: str, password_hash: str) -> None:
        """Create (or update) the agent's user with ``password_hash`` and its permissions."""
        user = broker_username(resource_id)
        vhost = quote(self._vhost, safe="")
        allowed = agent_permissions(self._topology, resource_id)
        await self._call(
            "PUT", f"users/{quote(user)}", {"password_hash": password_hash, "hashing_algorithm": HASHING, "tags": ""}
        )
        await self._call(
            "PUT",
            f"permissions/{vhost}/{quote(user)}",
            {"configure": allowed.configure, "write": allowed.write, "read": allowed.read},
        )
        for exchange, (write, read) in allowed.topics.items():
            await self._call(
                "PUT", f"topic-permissions/{vhost}/{quote(user)}", {"exchange": exchange, "write": write, "read": read}
            )
        log.info("broker user %s provisioned", user, extra={"resource_id": resource_id})

    async def revoke(self, resource_id: str) -> None:
        """Delete the agent's user and close its connections (a user already gone is no error)."""
        user = quote(broker_username(resource_id))
        await self._call("DELETE", f"users/{user}", missing_ok=True)
        # RabbitMQ closes a deleted user's connections itself; closing them here too is belt and braces,
        # and may race with that closing (the API then answers 500 for a connection already gone).
        try:
            await self._call("DELETE", f"connections/username/{user}", missing_ok=True)
        except BrokerAdminError as error:
            log.warning("closing the connections of %s: %s", user, error, extra={"resource_id": resource_id})
        log.info("broker user of %s revoked", resource_id, extra={"resource_id": resource_id})

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, missing_ok: bool = False
    ) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        try:
            async with self._session.request(method, f"{self._base}/{path}", json=body) as response:
                if response.status < 300 or (missing_ok and response.status == 404):
                    return
                text = (await response.text())[:200]
        except (aiohttp.ClientError, TimeoutError) as error:
            raise BrokerAdminError(f"cannot reach the RabbitMQ management API: {error!r}") from error
        raise BrokerAdminError(f"{method} /api/{path}: {response.status} {text}")


def amqp_vhost(amqp_url: str) -> str:
    """The vhost of an AMQP URL, as RabbitMQ names it (``/`` when the path is empty)."""
    return URL(amqp_url).path[1:] or "/"
