"""The ``skybus`` command: ``skybus up`` for a fleet of one, or one service per process."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
import time
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from prometheus_client import CollectorRegistry, ProcessCollector
from pydantic import ValidationError

from broker.port import MessageBus
from services.agent.agent import agent_from_settings
from services.agent.data_client import DataClient, DataClientError, GatewayUntrusted
from services.agent.join import CREDENTIALS, JoinRefused, join, load_or_make
from services.client.entry import COMMANDS as CLIENT_COMMANDS
from services.content_manager.service import ContentManagerService
from services.files import DataDirInUse, data_dir_lock, private_dir, restrict_new_files
from services.gateway.app import GatewayService
from services.job_manager.service import JobManagerService
from services.local_host import LocalAgentService
from services.logs import FORMATS, use_format
from services.logs import configure as configure_logging
from services.metrics import MetricsServer, jobs_by_state
from services.resource_manager.service import ResourceManagerService
from services.role_manager.service import RoleManagerService
from services.runner import Service, run_until_signalled
from services.settings import Settings
from services.store.factory import open_document_store
from services.store.port import DocumentStore
from services.tls import gateway_context
from services.tokens import (
    TokenRecord,
    check_user_name,
    create_join_token,
    create_token,
    has_admin_token,
    join_tokens_collection,
    list_tokens,
    parse_duration,
    revoke_token,
    tokens_collection,
)
from services.version import VERSION
from services.wiring import make_agent_bus, make_bus, make_topology

log = logging.getLogger("skybus")


def load_settings(**overrides: Any) -> Settings:
    """Environment first, then the options given on the command line; a contradiction is a usage error."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as error:
        raise click.UsageError("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in error.errors())) from None


def echo(line: str = "") -> None:
    click.echo(line)
    sys.stdout.flush()


@click.group()
@click.version_option(VERSION, prog_name="skybus")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    envvar="SKYBUS_LOG_LEVEL",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
)
def main(log_level: str) -> None:
    """skybus: run commands, roles and content on a fleet of Linux hosts.

    \b
    Shell completion (bash; zsh and fish alike):
      eval "$(_SKYBUS_COMPLETE=bash_source skybus)"
    """
    restrict_new_files()  # every service and command: what skybus creates is its user's alone
    configure_logging(log_level)


for _command in CLIENT_COMMANDS:
    main.add_command(_command)


def log_format_option(command: Any) -> Any:
    """``--log-format`` on a server command: the group has set the level, this picks the lines' form."""
    return click.option(
        "--log-format",
        type=click.Choice(FORMATS),
        default="text",
        show_default=True,
        envvar="SKYBUS_LOG_FORMAT",
        expose_value=False,
        is_eager=True,
        callback=lambda ctx, param, value: use_format(value),
        help="[SKYBUS_LOG_FORMAT] json: one JSON object per line (time, level, logger, message, ids)",
    )(command)


def listen_options(command: Any) -> Any:
    command = log_format_option(command)
    command = click.option(
        "--no-access-log", is_flag=True, help="[SKYBUS_ACCESS_LOG=0] no line per HTTP request (skybus.access)"
    )(command)
    command = click.option(
        "--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="[SKYBUS_TLS_KEY] its key"
    )(command)
    command = click.option(
        "--tls-cert",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="[SKYBUS_TLS_CERT] serve HTTPS with this certificate (PEM; intermediates after it)",
    )(command)
    command = click.option("--data-dir", type=click.Path(path_type=Path), help="[SKYBUS_DATA_DIR]")(command)
    command = click.option("--port", type=int, help="[SKYBUS_PORT] 0 picks a free port")(command)
    command = click.option("--host", help="[SKYBUS_HOST]")(command)
    return command


def listen_settings(*, no_access_log: bool, **given: Path | str | int | None) -> dict[str, Any]:
    """What :func:`listen_options` gave (host, port, data dir, TLS files, access log), as settings."""
    return {**given, "access_log": False if no_access_log else None}


async def _run(settings: Settings, sender: str, build: Any, *, on_ready: Any = None) -> None:
    private_dir(settings.data_dir)
    store = await open_document_store(settings)
    bus = make_bus(settings, sender=sender)
    try:
        await bus.start()
        services: Sequence[Service] = build(settings, bus, store)
        await run_until_signalled(services, on_ready=(lambda: on_ready(services, store)) if on_ready else None)
    finally:
        await bus.close()
        await store.close()


def reboot_option(command: Any) -> Any:
    return click.option(
        "--allow-reboot",
        is_flag=True,
        help="[SKYBUS_ALLOW_REBOOT] let an admin reboot this host (POST /nodes/{id}/reboot runs SKYBUS_REBOOT_COMMAND)",
    )(command)


@main.command()
@listen_options
@reboot_option
def up(allow_reboot: bool, **listen: Any) -> None:
    """Run the gateway, every manager and a local agent in one process."""
    settings = load_settings(allow_reboot=allow_reboot or None, **listen_settings(**listen))

    def build(settings: Settings, bus: MessageBus, store: DocumentStore) -> list[Service]:
        topology = make_topology(settings)
        gateway = GatewayService(settings, bus, store, topology)
        return [
            ResourceManagerService(settings, bus, store, topology),
            ContentManagerService(settings, bus, store, topology),
            JobManagerService(settings, bus, store, topology),
            RoleManagerService(settings, bus, store, topology),
            gateway,
            LocalAgentService(settings, bus, store, topology, gateway_url=gateway.url),
        ]

    async def ready(services: Sequence[Any], store: DocumentStore) -> None:
        gateway = next(s for s in services if isinstance(s, GatewayService))
        local = next(s for s in services if isinstance(s, LocalAgentService))
        tokens = await tokens_collection(store)
        url = f"{gateway.scheme}://{settings.host}:{gateway.port}"
        echo(f"skybus is up at {url}  (data in {settings.data_dir.resolve()})")
        bus_kind = "RabbitMQ" if settings.amqp_url else "in-process (this machine only)"
        echo(f"bus: {bus_kind}; this host is resource {local.resource_id}")
        if not await has_admin_token(tokens):
            token = await create_token(tokens, user="admin", admin=True)
            echo("Admin token (shown once, stored hashed):")
            echo(f"SKYBUS_TOKEN={token}")
        else:
            echo("An admin token was printed at first start. To make another:")
            echo(f"  skybus token create --user admin --admin --data-dir {settings.data_dir}")
        echo("Try:")
        auth = '-H "Authorization: Bearer $SKYBUS_TOKEN"'
        echo(f"  curl {auth} {url}/api/resources/{local.resource_id}")
        echo(f"""  curl {auth} {url}/api/job/run --data '{{"command": "uname -a"}}'""")
        echo(f'  curl {auth} "{url}/api/job/job_info/<job_id>?wait=30"')

    try:
        with data_dir_lock(settings.data_dir):
            serve(settings, _run(settings, "skybus-up", build, on_ready=ready))
    except DataDirInUse as taken:
        raise click.ClickException(
            f"{taken.data_dir} is in use by another skybus up (pid {taken.pid or 'unknown'}): "
            "stop it, or give this one another --data-dir"
        ) from None


@main.command()
@listen_options
def gateway(**listen: Any) -> None:
    """Run the REST gateway."""
    settings = load_settings(**listen_settings(**listen))
    serve(settings, _run(settings, "gateway", lambda s, bus, store: [GatewayService(s, bus, store, make_topology(s))]))


def serve(settings: Settings, running: Coroutine[Any, Any, None]) -> None:
    """Run a service that listens; a port already taken is one clear line, not a traceback."""
    try:
        asyncio.run(running)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        raise click.ClickException(
            f"cannot listen on {settings.host}:{settings.port}: the port is in use (choose another with --port)"
        ) from None


MANAGERS: dict[str, tuple[type[Service], str]] = {
    "resource-manager": (ResourceManagerService, "Run the resource manager (seed 000: hosts, the proxy to agents)."),
    "job-manager": (JobManagerService, "Run the job manager (seed 001)."),
    "content-manager": (ContentManagerService, "Run the content manager (seed 004 and the data files of jobs)."),
    "role-manager": (RoleManagerService, "Run the role manager (seed 002: versioned roles on hosts)."),
}


def _add_manager_command(name: str, service: type[Service], summary: str) -> None:
    @main.command(name, help=summary)
    @click.option("--data-dir", type=click.Path(path_type=Path), help="[SKYBUS_DATA_DIR]")
    @log_format_option
    def run_manager(data_dir: Path | None) -> None:
        settings = load_settings(data_dir=data_dir)

        def build(s: Settings, bus: MessageBus, store: DocumentStore) -> list[Service]:
            return [service(s, bus, store, make_topology(s)), *manager_metrics(name, s, store)]

        asyncio.run(_run(settings, name, build))


def manager_metrics(name: str, settings: Settings, store: DocumentStore) -> list[Service]:
    """A ``/metrics`` server for a manager run alone, when ``SKYBUS_METRICS_PORT`` is set."""
    if settings.metrics_port is None:
        return []
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    refreshers = [jobs_by_state(registry, store)] if name == "job-manager" else []
    return [MetricsServer(settings.host, settings.metrics_port, registry, refreshers)]


for _name, (_service, _summary) in MANAGERS.items():
    _add_manager_command(_name, _service, _summary)


@main.command()
@click.option(
    "--gateway",
    help="[SKYBUS_PUBLIC_URL] the gateway's URL, where this agent joins and stages files "
    "(default http://SKYBUS_HOST:SKYBUS_PORT)",
)
@click.option("--resource-id", help="[SKYBUS_RESOURCE_ID] the id POST /api/resources returned")
@click.option("--token", help="[SKYBUS_TOKEN] the token POST /api/resources returned")
@click.option("--join-token", help="[SKYBUS_JOIN_TOKEN] join with the cluster's join token instead")
@click.option("--hostname", help="with --join-token: the name to join as (default: this machine's)")
@click.option(
    "--registration-token",
    help="[SKYBUS_REGISTRATION_TOKEN] with --join-token: adopt this hostname's registration, proven by "
    "the token POST /api/resources gave it",
)
@click.option(
    "--ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="[SKYBUS_CA] verify an https:// gateway with this CA file, not the system's",
)
@reboot_option
@click.option(
    "--unsandboxed-jobs",
    is_flag=True,
    help="[SKYBUS_UNSANDBOXED_JOBS] run users' jobs without bubblewrap when it is missing (insecure)",
)
@log_format_option
def agent(
    gateway: str | None,
    resource_id: str | None,
    token: str | None,
    join_token: str | None,
    hostname: str | None,
    registration_token: str | None,
    ca: Path | None,
    allow_reboot: bool,
    unsandboxed_jobs: bool,
) -> None:
    """Run the agent of this host."""
    if gateway is not None and not gateway.startswith(("http://", "https://")):
        raise click.BadParameter(f"{gateway!r} is not an http:// or https:// URL", param_hint="--gateway")
    settings = load_settings(
        public_url=gateway.rstrip("/") if gateway else None,
        ca=ca,
        resource_id=resource_id,
        token=token,
        join_token=join_token,
        registration_token=registration_token,
        allow_reboot=allow_reboot or None,
        unsandboxed_jobs=unsandboxed_jobs or None,
    )
    if not settings.amqp_url:
        raise click.UsageError(
            "skybus agent needs RabbitMQ (SKYBUS_AMQP_URL): the in-process bus of `skybus up` reaches only "
            "its own process, whose fleet is this one machine and which already runs an agent for it."
        )
    if settings.join_token and (settings.resource_id or settings.token):
        raise click.UsageError(
            "give either --join-token (SKYBUS_JOIN_TOKEN) or --resource-id and --token "
            "(SKYBUS_RESOURCE_ID and SKYBUS_TOKEN), not both"
        )
    if settings.registration_token and not settings.join_token:
        raise click.UsageError(
            "--registration-token goes with --join-token: without it, run with --resource-id and --token"
        )
    if hostname is not None and not settings.join_token:
        raise click.UsageError(
            "--hostname goes with --join-token: a registered host's name is set by POST /api/resources"
        )
    if not settings.join_token and (not settings.resource_id or not settings.token):
        raise click.UsageError(
            "give --resource-id and --token (or SKYBUS_RESOURCE_ID and SKYBUS_TOKEN), or --join-token"
        )

    async def run() -> None:
        if settings.join_token:
            resource_id, token = await join_cluster(settings, settings.join_token, hostname)
        else:
            await check_agent_token(settings)
            assert settings.resource_id and settings.token
            resource_id, token = settings.resource_id, settings.token
        bus = make_agent_bus(settings, resource_id=resource_id, token=token)
        await bus.start()
        try:
            the_agent = agent_from_settings(
                settings,
                bus,
                make_topology(settings),
                resource_id=resource_id,
                token=token,
                gateway_url=lambda: settings.gateway_url,
            )
            await run_until_signalled([the_agent])
        finally:
            await bus.close()

    asyncio.run(run())


async def join_cluster(settings: Settings, join_token: str, hostname: str | None) -> tuple[str, str]:
    """This host's id and token: joined now, or at an earlier start (kept under ``agent-join/``)."""
    path = settings.data_dir / "agent-join" / CREDENTIALS
    try:
        credentials = load_or_make(path, hostname, socket.gethostname())
        joined = await join(
            path,
            settings.gateway_url,
            join_token,
            credentials,
            registration_token=settings.registration_token,
            tls=gateway_context(settings),
        )
    except GatewayUntrusted as error:
        raise click.ClickException(str(error)) from None
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    except JoinRefused as refused:
        raise click.ClickException(f"the gateway refused to let this host join: {refused}") from None
    log.info(
        "joined as resource %s (%s)", joined.resource_id, joined.hostname, extra={"resource_id": joined.resource_id}
    )
    return joined.resource_id, joined.token


async def check_agent_token(settings: Settings) -> None:
    """Refuse to start with a token the gateway does not know, rather than heartbeat unheard."""
    client = DataClient(lambda: settings.gateway_url, settings.token or "", tls=gateway_context(settings))
    try:
        identity = await client.whoami()
    except GatewayUntrusted as error:
        raise click.ClickException(str(error)) from None
    except DataClientError as error:
        log.warning("could not check this agent's token (%s); files cannot be staged until it can", error)
        return
    finally:
        await client.close()
    if identity is None:
        raise click.ClickException(
            "the gateway does not know this token: use the id and token POST /api/resources returned "
            "(a deleted resource's token is gone with it)"
        )
    if identity.get("resource_id") != settings.resource_id:
        raise click.ClickException(
            f"this token belongs to {identity.get('user')}, not to resource {settings.resource_id}"
        )


@main.group()
def token() -> None:
    """Manage API tokens."""


@token.command("create")
@click.option("--user", help="the user the token speaks for")
@click.option("--admin", is_flag=True, default=False)
@click.option("--join", is_flag=True, default=False, help="a cluster join token for `skybus agent --join-token`")
@click.option("--expires", help="the token expires after this long: 30d, 12h, 90m, 45s, 2w (default: never)")
@click.option("--data-dir", type=click.Path(path_type=Path))
def token_create(user: str | None, admin: bool, join: bool, expires: str | None, data_dir: Path | None) -> None:
    """Create a token for USER, or a cluster join token, and print it once (it is stored hashed)."""
    settings = load_settings(data_dir=data_dir)
    try:
        expires_at = None if expires is None else time.time() + parse_duration(expires)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--expires") from None
    if join and (user is not None or admin):
        raise click.UsageError("--join makes a cluster join token, which belongs to no user: drop --user/--admin")
    if not join:
        if user is None:
            raise click.UsageError("give --user (or --join for a cluster join token)")
        try:
            check_user_name(user)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--user") from None

    async def create(store: DocumentStore) -> str:
        if join:
            return await create_join_token(join_tokens_collection(store), expires_at=expires_at)
        assert user is not None
        return await create_token(await tokens_collection(store), user=user, admin=admin, expires_at=expires_at)

    made = asyncio.run(_with_store(settings, create))
    echo(f"SKYBUS_JOIN_TOKEN={made}" if join else f"SKYBUS_TOKEN={made}")


def _when(timestamp: float | None) -> str:
    return "-" if timestamp is None else datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _with_store(settings: Settings, work: Any) -> Any:
    private_dir(settings.data_dir)
    store = await open_document_store(settings)
    try:
        return await work(store)
    finally:
        await store.close()


@token.command("list")
@click.option("--join", is_flag=True, default=False, help="list the cluster join tokens instead")
@click.option("--data-dir", type=click.Path(path_type=Path))
def token_list(join: bool, data_dir: Path | None) -> None:
    """List API tokens (or join tokens) by id: never the tokens themselves."""
    settings = load_settings(data_dir=data_dir)

    async def read(store: DocumentStore) -> list[TokenRecord]:
        tokens = join_tokens_collection(store) if join else await tokens_collection(store)
        return await list_tokens(tokens, join=join)

    now = time.time()
    echo(f"{'ID':<20}  {'USER':<16}  {'ADMIN':<5}  {'CREATED':<20}  EXPIRES")
    for record in asyncio.run(_with_store(settings, read)):
        expired = " (expired)" if record.expires_at is not None and record.expires_at <= now else ""
        user = "(join)" if record.join else record.user or ""
        admin = "yes" if record.admin else "no"
        created = _when(record.created_at)
        echo(f"{record.id:<20}  {user:<16}  {admin:<5}  {created:<20}  {_when(record.expires_at)}{expired}")


@token.command("revoke")
@click.argument("token_id")
@click.option("--data-dir", type=click.Path(path_type=Path))
def token_revoke(token_id: str, data_dir: Path | None) -> None:
    """Revoke the API token or join token with this id (`skybus token list` shows ids); gateways
    refuse it within two seconds."""
    settings = load_settings(data_dir=data_dir)

    async def revoke(store: DocumentStore) -> TokenRecord | None:
        return await revoke_token(await tokens_collection(store), token_id) or await revoke_token(
            join_tokens_collection(store), token_id
        )

    revoked = asyncio.run(_with_store(settings, revoke))
    if revoked is None:
        raise click.ClickException(f"no token has the id {token_id}")
    echo(f"revoked {'join token' if revoked.join else f'the token of {revoked.user}'} {token_id}")


if __name__ == "__main__":
    main()
