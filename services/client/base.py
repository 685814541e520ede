"""What every client command shares: the config, the error policy (one line, non-zero exit) and ``--json``."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from services.client.api import Api, ApiFailure, Progress
from services.client.config import ClientConfig, NotConfigured, load_config

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

PROGRESS_FROM = 4 * 1024 * 1024
"""Bytes from which a transfer shows a progress bar (on a terminal only)."""

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_uuid(text: str) -> bool:
    return bool(_UUID.match(text))


def output_option(command: F) -> F:
    return click.option(
        "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="write here, not to stdout"
    )(command)


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="print JSON for scripts instead of a table")(command)


def with_api(work: Callable[[Api], Awaitable[T]], *, failure_code: int = 1, config: ClientConfig | None = None) -> T:
    """Run ``work`` against the gateway (the configured one by default); any failure is one line on
    stderr and ``failure_code``."""

    async def go() -> T:
        async with Api(config or load_config()) as api:
            return await work(api)

    try:
        return asyncio.run(go())
    except (ApiFailure, NotConfigured, OSError) as error:
        fail(str(error), failure_code)


def fail(message: str, code: int = 1) -> NoReturn:
    error = click.ClickException(message)
    error.exit_code = code
    raise error


def progress_bar(total: int | None, label: str) -> tuple[Progress | None, Callable[[], None]]:
    """A bar on stderr for a big transfer when stdout is a terminal; else nothing. Returns (advance, finish)."""
    if total is None or total < PROGRESS_FROM or not sys.stdout.isatty():
        return None, lambda: None
    bar = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=False)
    bar.__enter__()
    return bar.update, lambda: bar.__exit__(None, None, None)


async def host_id(api: Api, host: str) -> str:
    """A host named by id or by hostname."""
    if is_uuid(host):
        return host
    found = await api.call("GET", "/api/resources", params={"hostname": host})
    return str(found["id"])
