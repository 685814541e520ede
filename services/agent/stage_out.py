"""Seed 000's *stage out file*: a task's output files, uploaded as data files of the job's user.

Patterns are globs relative to the task's working directory (``**`` crosses directories). Only
regular files inside that directory are taken: a symbolic link the job left that leads outside it
(to the agent's own files, say) is refused, and the file is opened without following a link, so
a job cannot make the agent upload what the job itself could not read.
"""

from __future__ import annotations

import asyncio
import glob
import os
from collections.abc import AsyncIterator
from pathlib import Path

from services.agent.data_client import DataClient, DataClientError

CHUNK = 256 * 1024
MAX_MATCHES = 1000  # files one pattern may stage out


def _matches(workdir: Path, pattern: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """``(relative path, real path)`` of each regular file ``pattern`` matches, and what was refused."""
    root = os.path.realpath(workdir)
    found: list[tuple[str, str]] = []
    refused: dict[str, str] = {}
    for relative in sorted(glob.glob(pattern, root_dir=root, recursive=True)):
        real = os.path.realpath(os.path.join(root, relative))
        if not real.startswith(root + os.sep):
            refused[relative] = "a link that leads outside the job's working directory"
        elif os.path.isfile(real):
            found.append((relative, real))
        if len(found) >= MAX_MATCHES:
            refused[pattern] = f"matches more than {MAX_MATCHES} files: the first {MAX_MATCHES} were staged out"
            break
    return found, refused


async def _chunks(path: str) -> AsyncIterator[bytes]:
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as stream:
        while chunk := await asyncio.to_thread(stream.read, CHUNK):
            yield chunk


def _data_name(relative: str) -> str:
    name = os.path.basename(relative)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "output"
    return name


async def stage_out(
    data: DataClient, workdir: Path, patterns: list[str], *, job_id: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Upload every match of ``patterns``: ``({relative path: data id}, {pattern or path: error})``."""
    files: dict[str, str] = {}
    errors: dict[str, str] = {}
    if not await asyncio.to_thread(workdir.is_dir):
        return {}, {pattern: "the job's working directory is gone from its host" for pattern in patterns}
    for pattern in patterns:
        if pattern.startswith("/") or ".." in pattern.split("/"):
            errors[pattern] = "not relative to the job's working directory"
            continue
        found, refused = await asyncio.to_thread(_matches, workdir, pattern)
        errors.update(refused)
        if not found and not refused:
            errors[pattern] = "no file matches"
        for relative, real in found:
            if relative in files:
                continue  # matched by an earlier pattern too
            try:
                files[relative] = await data.upload(_chunks(real), name=_data_name(relative), job_id=job_id)
            except (DataClientError, OSError) as error:
                errors[relative] = f"not stored: {error}"
    return files, errors
