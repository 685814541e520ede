"""The Celery side of bench/jobs.py: a task that runs the same command as the skybus job."""

from __future__ import annotations

import os
import subprocess

from celery import Celery

app = Celery(
    "skybus_bench",
    broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend="rpc://",
)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=4, broker_connection_retry_on_startup=True)


@app.task(name="bench.run")
def run(command: str) -> int:
    return subprocess.run(["/bin/sh", "-c", command], check=False).returncode
