"""The agent's side of ``POST /api/join``: make credentials once, keep them, join with them.

The credentials (a resource id and a token this agent made) are written, mode 0600, *before* the
first call, so an agent that crashes after the gateway stored them joins again with the same ones,
which the gateway takes as the same host. The agent joins at every start: a host an admin deleted
comes back as a new unauthorized host, as a discovered host does in seed 002. When the gateway's
answer names another id (the agent adopted a host an admin registered for its hostname), that id is
saved and used from then on.

Until a first join has succeeded the agent can do nothing useful, so it waits through a gateway
that cannot be reached; once joined, it starts without the gateway and says why in a warning.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import aiohttp

from services.agent.data_client import untrusted
from services.files import private_dir, write_private
from services.security import new_token

log = logging.getLogger(__name__)

CREDENTIALS = "credentials.json"
RETRY_CAP = 30.0  # seconds between tries at most, while the gateway cannot be reached


@dataclass(frozen=True, slots=True)
class JoinCredentials:
    resource_id: str
    token: str
    hostname: str
    joined: bool = False  # the gateway once said yes to these


class JoinRefused(Exception):
    """The gateway refused the join for good (400, 401, 409): retrying the same call cannot help."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(f"{status}: {error}")
        self.status = status
        self.error = error


class GatewayUnreachable(Exception):
    """No answer from the gateway, or a 5xx: the same call may succeed later."""


def save(path: Path, credentials: JoinCredentials) -> None:
    """Write the file whole, mode 0600 from its first byte, then move it over the old one."""
    write_private(private_dir(path.parent) / path.name, json.dumps(asdict(credentials)).encode())


def load_or_make(path: Path, hostname: str | None, default_hostname: str) -> JoinCredentials:
    """The credentials saved here, or new ones saved before they are used. A ``hostname`` other than
    the saved one is refused: a joined host's name is fixed; remove the file to join anew."""
    if path.exists():
        try:
            saved = JoinCredentials(**json.loads(path.read_text()))
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path} is not what this agent saved ({error}); remove it to join anew") from None
        if hostname is not None and hostname != saved.hostname:
            raise ValueError(
                f"this agent joined as {saved.hostname!r}, not {hostname!r}; remove {path} to join as another host"
            )
        return saved
    made = JoinCredentials(resource_id=str(uuid.uuid4()), token=new_token(), hostname=hostname or default_hostname)
    save(path, made)
    return made


async def call_join(
    gateway_url: str,
    join_token: str,
    credentials: JoinCredentials,
    registration_token: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> str:
    """``POST /api/join`` once; the id the gateway answers with. ``registration_token`` (the token
    ``POST /api/resources`` gave a registration of this hostname) proves this agent may adopt it;
    ``tls`` verifies an https:// gateway (default: the system's store). A certificate that does not
    verify raises :class:`~services.agent.data_client.GatewayUntrusted`: waiting cannot fix it."""
    body = {"id": credentials.resource_id, "hostname": credentials.hostname, "token": credentials.token}
    if registration_token is not None:
        body["registration_token"] = registration_token
    headers = {"Authorization": f"Bearer {join_token}"}
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(ssl=tls or True)) as session:
            async with session.post(f"{gateway_url.rstrip('/')}/api/join", json=body, headers=headers) as response:
                answer = await response.json(content_type=None)
                if response.status == 201:
                    return answer["id"]
                error = answer.get("error", str(answer)) if isinstance(answer, dict) else str(answer)
                if response.status >= 500:
                    raise GatewayUnreachable(f"{response.status}: {error}")
                raise JoinRefused(response.status, error)
    except aiohttp.ClientSSLError as error:
        raise untrusted(gateway_url, error) from error
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise GatewayUnreachable(f"cannot reach the gateway at {gateway_url}: {error!r}") from error


async def join(
    path: Path,
    gateway_url: str,
    join_token: str,
    credentials: JoinCredentials,
    *,
    registration_token: str | None = None,
    tls: ssl.SSLContext | None = None,
    first_delay: float = 1.0,
) -> JoinCredentials:
    """Join with ``credentials`` and save what the gateway said. A first join waits out an
    unreachable gateway; a host that joined before goes on with its saved credentials when the
    gateway cannot be reached or no longer takes the join token (its own token still stands)."""
    delay = first_delay
    while True:
        try:
            resource_id = await call_join(gateway_url, join_token, credentials, registration_token, tls)
        except GatewayUnreachable as error:
            if credentials.joined:
                log.warning("could not join again (%s): going on as resource %s", error, credentials.resource_id)
                return credentials
            log.warning("could not join yet (%s): trying again in %gs", error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_CAP)
            continue
        except JoinRefused as refused:
            if credentials.joined and refused.status == 401:
                log.warning(
                    "the join token is no longer valid: going on as resource %s with this host's own token",
                    credentials.resource_id,
                )
                return credentials
            raise
        joined = replace(credentials, resource_id=resource_id, joined=True)
        if joined != credentials:
            save(path, joined)
        if resource_id != credentials.resource_id:
            log.info("joined as the host an admin registered for %s: resource %s", credentials.hostname, resource_id)
        return joined
