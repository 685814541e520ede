"""``skybus login``, ``job``, ``host``, ``role`` and ``node``: the gateway's REST API for people."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import click

from services.client.api import Api
from services.client.base import host_id, json_option, with_api
from services.client.config import CA_ENV, ClientConfig, normal_url, save_config
from services.client.render import emit, field, when
from services.client.run import writer


@click.command()
@click.argument("url")
@click.option("--token", help="an API token (asked for when not given; `skybus token create` makes one)")
@click.option(
    "--ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="[SKYBUS_CA] verify an https:// gateway with this CA file, not the system's trust store",
)
def login(url: str, token: str | None, ca: Path | None) -> None:
    """Check URL and a token (and the gateway's certificate), then remember them for the other commands."""
    if token is None:
        token = click.prompt("API token", hide_input=True)
    ca_file = str(ca.resolve()) if ca is not None else os.environ.get(CA_ENV)
    config = ClientConfig(url=normal_url(url), token=token.strip(), ca=ca_file)

    async def whoami(api: Api) -> dict[str, Any]:
        found: dict[str, Any] = await api.call("GET", "/api/whoami")
        return found

    identity = with_api(whoami, config=config)
    path = save_config(config)
    role = " (admin)" if identity.get("admin") else ""
    click.echo(f"logged in to {config.url} as {identity.get('user')}{role}; saved in {path}")


def get(path: str, **params: Any) -> Any:
    """``GET path`` on the configured gateway; query parameters that are None are left out."""
    query = {key: str(value) for key, value in params.items() if value is not None}
    return with_api(lambda api: api.call("GET", path, params=query))


def send(method: str, path: str, body: Any = None) -> Any:
    return with_api(lambda api: api.call(method, path, json=body))


# Jobs

JOB_COLUMNS = [
    ("JOB ID", field("job_id")),
    ("STATE", field("state")),
    ("EXIT", field("exit_code")),
    ("HOST", field("hostname")),
    ("CREATED", lambda row: when(row.get("created_at"))),
    ("FINISHED", lambda row: when(row.get("finished_at"))),
    ("COMMAND", lambda row: _short(row.get("command"))),
]


def _short(text: Any, width: int = 50) -> str:
    line = str(text or "").replace("\n", " ")
    return line if len(line) <= width else line[: width - 1] + "…"


@click.group()
def job() -> None:
    """List, show, cancel and delete jobs."""


@job.command("ls")
@click.option("--state", help="only these states, comma separated (running,pending)")
@click.option("--user", help="another user's jobs (admin)")
@click.option("--host", "host", help="only the jobs of this host (a hostname or id)")
@click.option("--since", help="created at or after (ISO 8601 or epoch seconds)")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
def job_ls(state: str | None, user: str | None, host: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """Jobs, newest first."""

    async def go(api: Api) -> dict[str, Any]:
        resource_id = await host_id(api, host) if host else None
        query = {"state": state, "user": user, "resource_id": resource_id, "since": since, "limit": limit}
        params = {key: str(value) for key, value in query.items() if value is not None}
        found: dict[str, Any] = await api.call("GET", "/api/list_jobs", params={**params, "detail": "1"})
        return found

    page = with_api(go)
    emit(page if as_json else page.get("jobs", []), as_json=as_json, columns=JOB_COLUMNS)


@job.command("show")
@click.argument("job_id")
@json_option
def job_show(job_id: str, as_json: bool) -> None:
    """A job's state, host, times and answer id."""
    emit(get(f"/api/job/job_info/{job_id}"), as_json=as_json)


@job.command("logs")
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="stream the output live until the job ends")
@click.option("--stream", type=click.Choice(["stdout", "stderr"]), help="only this one (default: both)")
def job_logs(job_id: str, follow: bool, stream: str | None) -> None:
    """A job's output, raw bytes as it wrote them: its stdout to stdout, its stderr to stderr.

    \b
      skybus job logs ID            what there is so far
      skybus job logs -f ID         and then live, until it ends
    """

    async def go(api: Api) -> None:
        wanted = [stream] if stream else ["stdout", "stderr"]
        params = {"follow": "1"} if follow else {}
        path = f"/api/job/logs/{job_id}"
        targets = {"stdout": sys.stdout, "stderr": sys.stderr}
        await asyncio.gather(*(api.stream(path, writer(targets[name]), stream=name, **params) for name in wanted))

    with_api(go)


@job.command("cancel")
@click.argument("job_id")
def job_cancel(job_id: str) -> None:
    """Cancel a job (SIGTERM, then SIGKILL)."""
    send("POST", "/api/job/cancel", {"job_id": job_id})
    click.echo(f"cancelled {job_id}")


@job.command("rm")
@click.argument("job_id")
def job_rm(job_id: str) -> None:
    """Delete a job and its answer (cancelling it first)."""
    send("DELETE", "/api/job/delete", {"job_id": job_id})
    click.echo(f"deleted {job_id}")


# Hosts (seed 002's view)

HOST_COLUMNS = [
    ("ID", field("id")),
    ("HOSTNAME", lambda row: row.get("info", {}).get("hostname")),
    ("STATE", field("state")),
    ("RESPONDING", lambda row: row.get("info", {}).get("responding")),
    ("ROLES", field("roles")),
    ("ROLE STATUS", field("role_status")),
]


@click.group()
def host() -> None:
    """The hosts of the fleet."""


@host.command("ls")
@json_option
def host_ls(as_json: bool) -> None:
    """Every host you may see."""
    emit(get("/v1/hosts"), as_json=as_json, columns=HOST_COLUMNS)


@host.command("show")
@click.argument("host")
@json_option
def host_show(host: str, as_json: bool) -> None:
    """One host (by hostname or id): state, facts, roles."""

    async def go(api: Api) -> Any:
        return await api.call("GET", f"/v1/hosts/{await host_id(api, host)}")

    found = with_api(go)
    emit(found if as_json else {**found.pop("info", {}), **found}, as_json=as_json)


# Roles

ROLE_COLUMNS = [("NAME", field("name")), ("ACTIVE VERSION", field("active_version"))]


@click.group()
def role() -> None:
    """Versioned roles and where they are applied."""


@role.command("ls")
@json_option
def role_ls(as_json: bool) -> None:
    """Every role and its active version."""
    emit(get("/v1/roles"), as_json=as_json, columns=ROLE_COLUMNS)


@role.command("show")
@click.argument("name")
@json_option
def role_show(name: str, as_json: bool) -> None:
    """A role and its versions."""

    async def go(api: Api) -> dict[str, Any]:
        found: dict[str, Any] = await api.call("GET", f"/v1/roles/{name}")
        versions = await api.call("GET", f"/v1/roles/{name}/versions")
        return {**found, "versions": [v.get("version") for v in versions] if not as_json else versions}

    emit(with_api(go), as_json=as_json)


def _on_host(method: str, name: str, host: str, as_json: bool) -> None:
    async def go(api: Api) -> Any:
        return await api.call(method, f"/v1/hosts/{await host_id(api, host)}/roles/{name}")

    found = with_api(go)
    if as_json:
        emit(found, as_json=True)
    else:
        click.echo(f"{host}: roles {','.join(found.get('roles', [])) or '-'} ({found.get('role_status', '-')})")


@role.command("apply")
@click.argument("name")
@click.argument("host")
@json_option
def role_apply(name: str, host: str, as_json: bool) -> None:
    """Install role NAME at its active version on HOST (admin)."""
    _on_host("PUT", name, host, as_json)


@role.command("remove")
@click.argument("name")
@click.argument("host")
@json_option
def role_remove(name: str, host: str, as_json: bool) -> None:
    """Run role NAME's remove script on HOST (admin)."""
    _on_host("DELETE", name, host, as_json)


# Nodes (seed 003)

NODE_COLUMNS = [("ID", field("id")), ("HOSTNAME", field("hostname")), ("STATUS", field("status"))]
CONTAINER_COLUMNS = [("ID", field("id")), ("HOSTNAME", field("hostname")), ("STATUS", field("status"))]


@click.group()
def node() -> None:
    """Nodes, answered live by their agents."""


@node.command("ls")
@json_option
def node_ls(as_json: bool) -> None:
    """Every node: running while its agent heartbeats, else halted."""
    emit(get("/nodes"), as_json=as_json, columns=NODE_COLUMNS)


def _node_get(host: str, suffix: str) -> Any:
    async def go(api: Api) -> Any:
        return await api.call("GET", f"/nodes/{await host_id(api, host)}{suffix}")

    return with_api(go)


@node.command("mem")
@click.argument("host")
@json_option
def node_mem(host: str, as_json: bool) -> None:
    """Memory of a node, read on it."""
    found = _node_get(host, "/mem")
    emit(found if as_json else (found[0] if found else {}), as_json=as_json)


@node.command("containers")
@click.argument("host")
@json_option
def node_containers(host: str, as_json: bool) -> None:
    """Containers of a node."""
    emit(_node_get(host, "/containers"), as_json=as_json, columns=CONTAINER_COLUMNS)
