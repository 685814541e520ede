"""Upload and download a large file through the gateway of ``skybus up``, against a plain disk copy.

    .venv/bin/python bench/content.py [--size-mib 1024] [--dir /tmp]

It starts ``skybus up`` as a subprocess on a fresh data directory, writes a file of random bytes,
then times, on the same disk:

* the baseline: copying the file with 1 MiB reads and writes and an fsync (what the blob store does);
* upload: ``POST /resources`` as multipart, the client streaming the file from disk;
* download: ``GET /resources/contents/{path}``, the client streaming the body to disk.

While each transfer runs a thread samples the serving process's VmRSS (``/proc/<pid>/status``)
every 5 ms; the peak growth over its resident size before the transfers must stay under 64 MiB,
which it can only do if neither side of the gateway holds the body in memory. The downloaded file
is checked against the original's SHA-256. Everything it wrote is deleted at the end. The page
cache is left warm for all three, so the figures compare the software, not a cold disk.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
RSS_LIMIT = 64 * MiB
PIECE = MiB


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class PeakRss:
    """Samples a process's resident size in a thread while a ``with`` block runs."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


def write_random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(PIECE)
    with path.open("wb") as out:
        for n in range(size // PIECE):
            # A fresh prefix per MiB keeps every block distinct without paying urandom for all of it.
            piece = n.to_bytes(8, "big") + block[8:]
            digest.update(piece)
            out.write(piece)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def copy_file(source: Path, target: Path) -> None:
    with source.open("rb") as src, target.open("wb") as dst:
        while data := src.read(PIECE):
            dst.write(data)
        dst.flush()
        os.fsync(dst.fileno())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while data := file.read(PIECE):
            digest.update(data)
    return digest.hexdigest()


class UpProcess:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> tuple[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKYBUS_")}
        env["SKYBUS_LOG_LEVEL"] = "WARNING"
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "up", "--port", "0", "--data-dir", str(self.data_dir),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env, cwd=REPO,
        )  # fmt: skip
        assert self.process.stdout is not None
        url = token = None
        while line := (await asyncio.wait_for(self.process.stdout.readline(), 60)).decode():
            self.lines.append(line.rstrip())
            if match := re.search(r"skybus is up at (http://\S+)", line):
                url = match.group(1)
            if match := re.match(r"^SKYBUS_TOKEN=(\S+)$", line.strip()):
                token = match.group(1)
            if line.startswith("Try:"):
                break
        if not url or not token:
            raise RuntimeError(f"skybus up did not start: {self.lines}")
        return url, token

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def stop(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def upload(session: aiohttp.ClientSession, url: str, source: Path, path: str) -> None:
    info = {"resourcePath": path, "resourceType": "Static", "mimeType": "application/octet-stream"}
    with source.open("rb") as file:
        form = aiohttp.FormData()
        form.add_field("resource", file, filename=source.name, content_type="application/octet-stream")
        form.add_field("resourceInfo", json.dumps(info))
        async with session.post(f"{url}/resources", data=form) as response:
            if response.status != 201:
                raise RuntimeError(f"upload failed: {response.status} {await response.text()}")


async def download(session: aiohttp.ClientSession, url: str, path: str, target: Path) -> None:
    async with session.get(f"{url}/resources/contents/{path}") as response:
        if response.status != 200:
            raise RuntimeError(f"download failed: {response.status} {await response.text()}")
        with target.open("wb") as out:
            async for chunk in response.content.iter_chunked(PIECE):
                await asyncio.to_thread(out.write, chunk)
            await asyncio.to_thread(os.fsync, out.fileno())


def rate(size: int, seconds: float) -> float:
    return size / seconds / 1e6


async def run(size: int, where: Path) -> bool:
    work = Path(tempfile.mkdtemp(prefix="skybus-bench-content-", dir=where))
    up = UpProcess(work / "data")
    try:
        source = work / "source.bin"
        print(f"writing a {size / MiB:.0f} MiB file of random bytes under {work} ...", flush=True)
        expected = await asyncio.to_thread(write_random_file, source, size)

        started = time.perf_counter()
        await asyncio.to_thread(copy_file, source, work / "copy.bin")
        baseline = time.perf_counter() - started
        (work / "copy.bin").unlink()

        url, token = await up.start()
        await asyncio.sleep(1.0)  # let start-up allocations settle before the reference sample
        before = rss_bytes(up.pid)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}, timeout=timeout) as session:
            with PeakRss(up.pid) as upload_rss:
                started = time.perf_counter()
                await upload(session, url, source, "bench/big.bin")
                upload_time = time.perf_counter() - started
            target = work / "downloaded.bin"
            with PeakRss(up.pid) as download_rss:
                started = time.perf_counter()
                await download(session, url, "bench/big.bin", target)
                download_time = time.perf_counter() - started
        intact = await asyncio.to_thread(sha256_of, target) == expected

        growth = max(upload_rss.peak, download_rss.peak) - before
        print(
            f"file: {size / MiB:.0f} MiB; serving process (skybus up, pid {up.pid}) RSS before: {before / MiB:.1f} MiB"
        )
        print(f"baseline  disk copy (1 MiB read/write + fsync): {rate(size, baseline):8.1f} MB/s  ({baseline:.2f} s)")
        for name, seconds, sampled in (
            ("upload    POST /resources (multipart)", upload_time, upload_rss),
            ("download  GET /resources/contents/...", download_time, download_rss),
        ):
            print(
                f"{name}: {rate(size, seconds):8.1f} MB/s  ({seconds:.2f} s)  "
                f"ratio to baseline {baseline / seconds:.2f}  peak RSS growth {(sampled.peak - before) / MiB:.1f} MiB"
            )
        print(f"downloaded file matches the original (sha256): {intact}")
        ok = intact and growth < RSS_LIMIT
        verdict = "PASS" if ok else "FAIL"
        print(f"{verdict}: peak RSS growth {growth / MiB:.1f} MiB (limit {RSS_LIMIT / MiB:.0f} MiB)")
        return ok
    finally:
        await up.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the files go")
    args = parser.parse_args()
    size = args.size_mib * MiB
    free = shutil.disk_usage(args.dir).free
    needed = 4 * size + 512 * MiB  # source, its copy, the blob, the download
    if free < needed:
        sys.exit(f"not enough free disk under {args.dir}: {free / MiB:.0f} MiB free, {needed / MiB:.0f} MiB needed")
    sys.exit(0 if asyncio.run(run(size, args.dir)) else 1)


if __name__ == "__main__":
    main()
