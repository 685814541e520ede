"""Blobs as files under one directory, next to the SQLite database in embedded mode.

Layout: ``<root>/<id[0:2]>/<id[2:4]>/<id>.<sha256>``. The file name carries the checksum, the file
size is the blob size and its mtime is ``created_at`` (set when the blob is committed), so one atomic
rename publishes a blob with everything ``info`` needs: there is no sidecar that could disagree
with its blob after a crash. Ids are random UUIDs, which spreads blobs over the fan-out directories.

A put writes ``<root>/.tmp/<uuid>.part``, fsyncs it and renames it into place; any failure,
:class:`BlobTooLarge` or cancellation removes the partial file (and the published one, if the
cancellation came after the rename). A temporary file survives only a killed process, so
:meth:`DiskBlobStore.cleanup_temp` removes those that have not been written to for a while.

File I/O runs in worker threads (``asyncio.to_thread``) in pieces of about a MiB, so neither a slow
disk nor hashing blocks the event loop. A reader that has opened a blob keeps its bytes even if the
blob is deleted meanwhile (POSIX unlink semantics).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import BinaryIO

from services.files import PRIVATE_DIR, PRIVATE_FILE
from services.store.port import BlobInfo, BlobNotFound, BlobTooLarge

_WRITE_PIECE = 1024 * 1024
_TMP = ".tmp"


def _valid_id(blob_id: str) -> bool:
    try:
        return str(uuid.UUID(blob_id)) == blob_id
    except (ValueError, TypeError, AttributeError):
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _TempWriter:
    """The thread side of one put: a temporary file, its running checksum and its fate.

    The lock orders :meth:`start`, :meth:`write` and :meth:`commit` (in worker threads) against
    :meth:`discard` (on the event loop after a failure or cancellation). A cancelled ``to_thread``
    call keeps running in its thread, so discard waits for it and leaves a flag that turns any later
    call into a no-op: nothing is created, written or published after a discard.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.final: Path | None = None
        self.file: BinaryIO | None = None
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._discarded = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if not self._discarded:
                self.tmp.parent.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)  # the root
                self.tmp.parent.mkdir(mode=PRIVATE_DIR, exist_ok=True)
                fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
                self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._discarded or self.file is None:
                return
            self.sha256.update(data)
            self.file.write(data)
            self.size += len(data)

    def commit(self, root: Path, blob_id: str) -> BlobInfo:
        with self._lock:
            if self._discarded or self.file is None:
                raise RuntimeError("the put was abandoned")
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            digest = self.sha256.hexdigest()
            now = time.time_ns()
            os.utime(self.tmp, ns=(now, now))
            directory = root / blob_id[0:2] / blob_id[2:4]
            created = not directory.exists()
            directory.parent.mkdir(mode=PRIVATE_DIR, exist_ok=True)  # mkdir's parents=True ignores mode
            directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            final = directory / f"{blob_id}.{digest}"
            os.rename(self.tmp, final)
            self.final = final
            _fsync_dir(directory)
            if created:
                _fsync_dir(directory.parent)
                _fsync_dir(root)
            return DiskBlobStore._info_of(final, final.stat())

    def finish(self, data: bytes, root: Path, blob_id: str) -> BlobInfo:
        """Write the last piece (if any), then :meth:`commit`."""
        if data:
            self.write(data)
        return self.commit(root, blob_id)

    def discard(self) -> None:
        with self._lock:
            self._discarded = True
            if self.file is not None:
                self.file.close()
            for path in (self.tmp, self.final):
                if path is not None:
                    path.unlink(missing_ok=True)


class DiskBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / _TMP

    async def put(self, chunks: AsyncIterable[bytes], *, max_size: int | None = None) -> BlobInfo:
        blob_id = str(uuid.uuid4())
        writer = _TempWriter(self._tmp / f"{blob_id}.part")
        try:
            await asyncio.to_thread(writer.start)
            pending = bytearray()
            size = 0
            async for chunk in chunks:
                size += len(chunk)
                if max_size is not None and size > max_size:
                    raise BlobTooLarge(f"the blob is larger than {max_size} bytes")
                pending += chunk
                if len(pending) >= _WRITE_PIECE:
                    await asyncio.to_thread(writer.write, bytes(pending))
                    pending.clear()
            # The last piece and the commit in one trip to a worker thread.
            return await asyncio.to_thread(writer.finish, bytes(pending), self.root, blob_id)
        except BaseException:
            # Synchronous on purpose: a second cancellation must not interrupt the cleanup.
            writer.discard()
            raise

    async def open(self, blob_id: str, *, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        file = await asyncio.to_thread(self._open, blob_id)
        try:
            while data := await asyncio.to_thread(file.read, chunk_size):
                yield data
        finally:
            file.close()

    async def info(self, blob_id: str) -> BlobInfo | None:
        return await asyncio.to_thread(self._info, blob_id)

    async def delete(self, blob_id: str) -> bool:
        return await asyncio.to_thread(self._delete, blob_id)

    async def list(self, *, created_before: float | None = None) -> AsyncIterator[BlobInfo]:
        """Blobs one fan-out directory at a time, so a large store is never listed into memory whole."""
        for top in await asyncio.to_thread(self._fan_out, self.root):
            for leaf in await asyncio.to_thread(self._fan_out, top):
                for info in await asyncio.to_thread(self._infos_in, leaf):
                    if created_before is None or info.created_at < created_before:
                        yield info

    async def cleanup_temp(self, max_age: float = 3600.0) -> int:
        """Remove temporary files not written to for ``max_age`` seconds (left by a killed process)."""
        return await asyncio.to_thread(self._cleanup_temp, max_age)

    async def close(self) -> None:
        pass

    def _path(self, blob_id: str) -> Path | None:
        if not _valid_id(blob_id):
            return None
        directory = self.root / blob_id[0:2] / blob_id[2:4]
        prefix = f"{blob_id}."
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith(prefix):
                        return Path(entry.path)
        except FileNotFoundError:
            return None
        return None

    def _open(self, blob_id: str) -> BinaryIO:
        path = self._path(blob_id)
        if path is not None:
            try:
                return path.open("rb")
            except FileNotFoundError:
                pass
        raise BlobNotFound(blob_id)

    def _info(self, blob_id: str) -> BlobInfo | None:
        path = self._path(blob_id)
        if path is None:
            return None
        try:
            return self._info_of(path, path.stat())
        except FileNotFoundError:
            return None

    @staticmethod
    def _info_of(path: Path, stat: os.stat_result) -> BlobInfo:
        blob_id, _, digest = path.name.partition(".")
        return BlobInfo(blob_id, stat.st_size, digest, stat.st_mtime)

    def _delete(self, blob_id: str) -> bool:
        path = self._path(blob_id)
        if path is None:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    @staticmethod
    def _fan_out(directory: Path) -> list[Path]:
        try:
            with os.scandir(directory) as entries:
                names = [e.name for e in entries if len(e.name) == 2 and e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        return [directory / name for name in sorted(names)]

    def _infos_in(self, directory: Path) -> list[BlobInfo]:
        infos = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    blob_id, dot, _ = entry.name.partition(".")
                    if dot and _valid_id(blob_id) and entry.is_file(follow_symlinks=False):
                        try:
                            infos.append(self._info_of(Path(entry.path), entry.stat(follow_symlinks=False)))
                        except FileNotFoundError:
                            continue
        except FileNotFoundError:
            return []
        return infos

    def _cleanup_temp(self, max_age: float) -> int:
        cutoff = time.time() - max_age
        removed = 0
        try:
            with os.scandir(self._tmp) as entries:
                for entry in entries:
                    try:
                        if entry.name.endswith(".part") and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.path)
                            removed += 1
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            return 0
        return removed
