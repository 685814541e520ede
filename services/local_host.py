"""The agent that ``skybus up`` runs for this machine, registered through the same command as REST.

Its token is kept in ``<data dir>/local-agent.json`` (mode 0600), as an agent on any host keeps
its own credentials; the store holds only the token's hash and verify key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path

from broker.envelope import Envelope
from broker.port import MessageBus
from broker.topology import Topology
from schemas.base import Accepted
from schemas.resources import DeleteResource, RegisterResource
from services.agent.agent import Agent, agent_from_settings
from services.files import write_private
from services.resource_manager import records as resources
from services.security import new_agent_credentials
from services.settings import Settings
from services.store.port import DocumentStore
from services.tls import pinned_context

log = logging.getLogger(__name__)

LOCAL_USER = "admin"


class LocalAgentService:
    name = "local-agent"

    def __init__(
        self,
        settings: Settings,
        bus: MessageBus,
        store: DocumentStore,
        topology: Topology,
        gateway_url: Callable[[], str],
    ) -> None:
        self._settings = settings
        self._gateway_url = gateway_url
        self._bus = bus
        self._store = store
        self._topology = topology
        self._agent: Agent | None = None
        self.resource_id: str | None = None

    @property
    def _credentials_file(self) -> Path:
        return self._settings.data_dir / "local-agent.json"

    async def start(self) -> None:
        resource_id, token = await self._credentials()
        self.resource_id = resource_id
        self._agent = agent_from_settings(
            self._settings,
            self._bus,
            self._topology,
            resource_id=resource_id,
            token=token,
            gateway_url=self._gateway_url,
            gateway_tls=self._gateway_tls(),
        )
        await self._agent.start()

    def _gateway_tls(self) -> ssl.SSLContext | None:
        """An https:// gateway of this process is trusted by its own certificate, unless SKYBUS_CA
        says what to trust."""
        cert = self._settings.tls_cert
        return pinned_context(cert) if cert is not None and self._settings.ca is None else None

    async def stop(self) -> None:
        if self._agent:
            await self._agent.stop()

    async def _credentials(self) -> tuple[str, str]:
        if self._credentials_file.exists():
            saved = json.loads(self._credentials_file.read_text())
            if await resources.get_resource(self._store, saved["resource_id"]) is not None:
                return saved["resource_id"], saved["token"]
        hostname = socket.gethostname()
        stale = await resources.resource_by_hostname(self._store, hostname)
        if stale is not None:
            log.warning("this host was registered as %s without saved credentials: registering anew", stale.id)
            await self._command(DeleteResource(resource_id=stale.id))
        token, token_hash, verify_key = new_agent_credentials()
        resource_id = str(uuid.uuid4())
        await self._command(
            RegisterResource(
                resource_id=resource_id,
                hostname=hostname,
                user=LOCAL_USER,
                token_hash=token_hash,
                verify_key=verify_key,
            )
        )
        secret = json.dumps({"resource_id": resource_id, "token": token}).encode()
        await asyncio.to_thread(write_private, self._credentials_file, secret)
        log.info("registered this host (%s) as resource %s", hostname, resource_id)
        return resource_id, token

    async def _command(self, command: RegisterResource | DeleteResource) -> None:
        reply = await self._bus.request(
            self._topology.commands, Envelope(command, sender="skybus-up"), timeout=self._settings.request_timeout
        )
        if not isinstance(reply.payload, Accepted):
            raise RuntimeError(f"{command.message_type} refused: {reply.payload}")
