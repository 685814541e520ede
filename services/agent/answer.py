"""The answer of a task: one JSON document ``{"exit_code", "stdout", "stderr"}``, streamed.

Output is written to files while the task runs and encoded here chunk by chunk, so a task that
prints gigabytes never sits in memory. Bytes that are not UTF-8 are kept with Python's
``surrogateescape`` (as ``\\udcXX`` escapes), so nothing the task printed is lost.
"""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncIterator
from pathlib import Path

CHUNK = 256 * 1024


async def _escaped(path: Path) -> AsyncIterator[bytes]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    with path.open("rb") as stream:
        while chunk := await asyncio.to_thread(stream.read, CHUNK):
            text = decoder.decode(chunk)
            if text:
                yield json.dumps(text)[1:-1].encode()
        tail = decoder.decode(b"", final=True)
        if tail:
            yield json.dumps(tail)[1:-1].encode()


async def answer_chunks(exit_code: int | None, stdout: Path, stderr: Path) -> AsyncIterator[bytes]:
    yield b'{"exit_code": ' + json.dumps(exit_code).encode() + b', "stdout": "'
    async for piece in _escaped(stdout):
        yield piece
    yield b'", "stderr": "'
    async for piece in _escaped(stderr):
        yield piece
    yield b'"}'
