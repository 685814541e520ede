"""``skybus data`` (job files by id, ``/api/data``) and ``skybus content`` (seed 004's resources by path)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import aiohttp
import click

from services.client.api import Api
from services.client.base import json_option, output_option, progress_bar, with_api
from services.client.commands import get, send
from services.client.render import emit, field, when

DATA_COLUMNS = [
    ("ID", field("id")),
    ("NAME", field("name")),
    ("SIZE", field("size")),
    ("KIND", field("kind")),
    ("CREATED", lambda row: when(row.get("created_at"))),
]
CONTENT_COLUMNS = [
    ("PATH", field("resourcePath")),
    ("TYPE", field("resourceType")),
    ("MIME TYPE", field("mimeType")),
    ("POOL", field("poolName")),
    ("TIMEOUT", field("timeout")),
]


async def fetch(api: Api, path: str, output: Path | None, label: str) -> None:
    """Stream ``GET path`` to ``output`` (or stdout); a bar for a big one on a terminal."""
    finish = lambda: None  # noqa: E731

    def progress(total: int | None) -> Any:
        nonlocal finish
        advance, finish = progress_bar(total, label)
        return advance

    target: IO[bytes] = output.open("wb") if output else sys.stdout.buffer
    try:
        await api.download(path, target, progress=progress)
    finally:
        finish()
        if output:
            target.close()
        else:
            target.flush()


@click.group()
def data() -> None:
    """Data files for jobs: inputs, binaries and answers, by id."""


@data.command("put")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="the name it is staged under (default: the file's)")
@json_option
def data_put(file: Path, name: str | None, as_json: bool) -> None:
    """Upload FILE; print its id."""

    size = file.stat().st_size

    async def go(api: Api) -> str:
        advance, finish = progress_bar(size, f"uploading {file.name}")
        try:
            return await api.upload(file, name=name, progress=advance)
        finally:
            finish()

    item_id = with_api(go)
    click.echo(json.dumps({"id": item_id}) if as_json else item_id)


@data.command("get")
@click.argument("data_id")
@output_option
def data_get(data_id: str, output: Path | None) -> None:
    """Download a data file (to stdout by default)."""
    with_api(lambda api: fetch(api, f"/api/data/{data_id}", output, f"downloading {data_id}"))


@data.command("ls")
@json_option
def data_ls(as_json: bool) -> None:
    """Your data files, newest first."""
    found = get("/api/data")
    emit(found if as_json else found.get("items", []), as_json=as_json, columns=DATA_COLUMNS)


@data.command("rm")
@click.argument("data_id")
def data_rm(data_id: str) -> None:
    """Delete a data file."""
    send("DELETE", f"/api/data/{data_id}")
    click.echo(f"deleted {data_id}")


@click.group()
def content() -> None:
    """Seed 004's content resources, by path."""


@content.command("ls")
@json_option
def content_ls(as_json: bool) -> None:
    """Your content resources."""
    found = get("/resources")
    emit(
        found if as_json else sorted(found.values(), key=lambda row: row["resourcePath"]),
        as_json=as_json,
        columns=CONTENT_COLUMNS,
    )


@content.command("put")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("path")
@click.option(
    "--type", "resource_type", type=click.Choice(["Active", "MSP", "Static"]), default="Static", show_default=True
)
@click.option("--mime-type", help="default: guessed from the name")
@click.option("--replace", is_flag=True, help="replace the resource at PATH (PUT) instead of creating it")
@json_option
def content_put(file: Path, path: str, resource_type: str, mime_type: str | None, replace: bool, as_json: bool) -> None:
    """Deploy FILE as the resource at PATH."""
    info: dict[str, Any] = {"resourcePath": path, "resourceType": resource_type}
    if mime_type:
        info["mimeType"] = mime_type

    async def go(api: Api) -> Any:
        with file.open("rb") as stream:
            form = aiohttp.FormData()
            form.add_field("resourceInfo", json.dumps(info), content_type="application/json")
            form.add_field("resource", stream, filename=file.name)
            if replace:
                return await api.call("PUT", f"/resources/{quote(path)}", data=form)
            return await api.call("POST", "/resources", data=form)

    found = with_api(go)
    if as_json:
        emit(found or {"resourcePath": path}, as_json=True)
    else:
        click.echo(f"{'replaced' if replace else 'deployed'} {path}")


@content.command("get")
@click.argument("path")
@output_option
def content_get(path: str, output: Path | None) -> None:
    """Download a content resource's bytes."""
    with_api(lambda api: fetch(api, f"/resources/contents/{quote(path)}", output, f"downloading {path}"))


@content.command("rm")
@click.argument("path")
def content_rm(path: str) -> None:
    """Delete a content resource."""
    send("DELETE", f"/resources/{quote(path)}")
    click.echo(f"deleted {path}")
