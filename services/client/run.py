"""``skybus run``: upload, submit, wait, print the answer, exit with the job's code (as ``docker run`` does).

Exit codes: the job's own; 128+N when a signal N ended it; :data:`SKYBUS_FAILED` (125, docker's
choice) when skybus could not run it or it ended cancelled or lost, with the reason on stderr.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from services.client.api import Api, Progress
from services.client.base import is_uuid, json_option, progress_bar, with_api

SKYBUS_FAILED = 125
WAIT = 60
FINAL = {"succeeded", "failed", "cancelled", "lost"}


def command_line(words: tuple[str, ...]) -> str:
    """One word is a shell line as typed (``'uname -a | wc -l'``); several are quoted for ``/bin/sh -c``."""
    return words[0] if len(words) == 1 else shlex.join(words)


def exit_code_of(job: dict[str, Any], answer: dict[str, Any] | None) -> int:
    code = answer.get("exit_code") if answer else job.get("exit_code")
    if job["state"] in ("cancelled", "lost") or code is None:
        return SKYBUS_FAILED
    return 128 - code if code < 0 else code % 256


async def submit(api: Api, body: dict[str, Any], files: tuple[Path, ...]) -> str:
    uploaded = []
    for path in files:
        advance, finish = progress_bar((await asyncio.to_thread(path.stat)).st_size, f"uploading {path.name}")
        try:
            uploaded.append(await api.upload(path, progress=advance))
        finally:
            finish()
    if uploaded:
        body["input_files"] = uploaded
    created = await api.call("POST", "/api/job/run", json=body)
    return str(created["job_id"])


async def wait_for(api: Api, job_id: str) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = await api.call("GET", f"/api/job/job_info/{job_id}", params={"wait": str(WAIT)})
        if job["state"] in FINAL:
            return job


def writer(stream: Any) -> Callable[[bytes], None]:
    """Raw bytes to a standard stream, as they come (the job's bytes, never decoded)."""

    def write(data: bytes) -> None:
        stream.buffer.write(data)
        stream.buffer.flush()

    return write


async def follow_output(api: Api, job_id: str) -> None:
    """The job's stdout to our stdout and its stderr to our stderr, live, until it ends."""
    await asyncio.gather(
        api.stream(f"/api/job/logs/{job_id}", writer(sys.stdout), follow="1", stream="stdout"),
        api.stream(f"/api/job/logs/{job_id}", writer(sys.stderr), follow="1", stream="stderr"),
    )


def local_path(name: str) -> Path | None:
    """Where an output file goes: under the current directory, at its path in the job's (None if
    that would leave it)."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        return None
    return Path.cwd() / relative


async def download_outputs(api: Api, job: dict[str, Any]) -> None:
    """Each of the job's output files into the current directory; why one is missing on stderr."""
    for name, data_id in sorted((job.get("outputs") or {}).items()):
        target = local_path(name)
        if target is None:
            click.echo(f"skybus: output {name!r} not saved: not a path under this directory", err=True)
            continue
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        with target.open("wb") as into:
            await api.download(f"/api/data/{data_id}", into, progress=lambda total, n=name: download_bar(total, n))
    for pattern, error in sorted((job.get("output_errors") or {}).items()):
        click.echo(f"skybus: output {pattern}: {error}", err=True)


def download_bar(total: int | None, name: str) -> Progress | None:
    advance, _ = progress_bar(total, f"downloading {name}")
    return advance


async def answer_of(api: Api, job: dict[str, Any]) -> dict[str, Any] | None:
    if not job.get("answer_id"):
        return None
    raw = await api.read(f"/api/data/{job['answer_id']}")
    try:
        answer: dict[str, Any] = json.loads(raw)
    except ValueError:
        return None
    return answer


@click.command(context_settings={"allow_interspersed_args": False})
@click.option("--host", help="run on this host (a hostname or a resource id); default: the least busy")
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="upload this file and stage it into the job's directory under its name (repeatable)",
)
@click.option(
    "--output",
    "outputs",
    multiple=True,
    help="a file or glob in the job's directory to download here once it ended (repeatable; quote globs)",
)
@click.option("--ttl", type=click.IntRange(min=1), help="seconds the job may wait and run, and its record is kept")
@click.option("--detach", "-d", is_flag=True, help="print the job id and return at once")
@click.option("--privileged", is_flag=True, help="run unsandboxed, as the agent's user (admin only)")
@json_option
@click.argument("command", nargs=-1, required=True)
def run(
    host: str | None,
    files: tuple[Path, ...],
    outputs: tuple[str, ...],
    ttl: int | None,
    detach: bool,
    privileged: bool,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as a job, stream its output live and exit with its exit code.

    \b
      skybus run -- uname -a
      skybus run --file data.csv -- 'wc -l data.csv'
      skybus run --output 'out/*.png' -- ./render.sh
      skybus run --detach --host web-1 -- sleep 600
    """
    body: dict[str, Any] = {"command": command_line(command), "privileged": privileged}
    if outputs:
        body["output_files"] = list(outputs)
    if ttl is not None:
        body["ttl"] = ttl
    if host is not None:
        body["resource_id" if is_uuid(host) else "hostname"] = host

    async def go(api: Api) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
        job_id = await submit(api, body, files)
        if detach:
            return job_id, None, None
        if not as_json:
            await follow_output(api, job_id)
        job = await wait_for(api, job_id)
        await download_outputs(api, job)
        return job_id, job, await answer_of(api, job) if as_json else None

    job_id, job, answer = with_api(go, failure_code=SKYBUS_FAILED)
    if job is None:
        click.echo(json.dumps({"job_id": job_id}) if as_json else job_id)
        return
    if as_json:
        click.echo(json.dumps({"job": job, "answer": answer}, indent=2, sort_keys=True))
    code = exit_code_of(job, answer)
    if job["state"] in ("cancelled", "lost") or job.get("exit_code") is None:
        reason = job.get("error") or "it did not run to its end"
        click.echo(f"skybus: job {job_id} {job['state']}: {reason}", err=True)
    sys.exit(code)
