"""Longer chaos runs than ``tests/chaos`` (which CI runs): the fleet, every service its own process,
on RabbitMQ through a TCP proxy; each fault injected while jobs flow; a table of what became of them.

    .venv/bin/python bench/chaos.py [--jobs 200] [--in-flight 16] [--only SIGKILL]

Columns: the fault, jobs submitted, their final states, jobs whose command ran more than once (by
the marks file each job appends its id to), jobs not final within ``--settle`` seconds, and seconds
from the end of the fault until every job was final.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from yarl import URL

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.chaos.faults import FLEET_ENV, HEADER, Chaos, Inject, Outcome  # noqa: E402
from tests.chaos.proxy import TcpProxy  # noqa: E402
from tests.e2e.fleet import MANAGERS, Fleet  # noqa: E402
from tests.rabbit import fresh_vhost  # noqa: E402


def faults(chaos: Chaos) -> list[tuple[str, Inject, dict]]:
    """Each fault, and how its run differs from the default one."""
    runs: list[tuple[str, Inject, dict]] = [
        ("none", chaos.nothing(), {}),
        ("drop every connection", chaos.network("drop"), {}),
        ("cut 5 s", chaos.network("cut", 5.0), {}),
        ("stall 5 s", chaos.network("stall", 5.0), {}),
    ]
    for name in (*MANAGERS, "gateway", "agent"):
        runs.append((f"SIGKILL {name}", chaos.kill(name, down=2.0), {}))
    for name in (*MANAGERS, "gateway", "agent"):
        runs.append((f"SIGSTOP {name} 5 s", chaos.pause(name, 5.0), {}))
    lost = chaos.after(1.0, chaos.kill("agent", down=8.0))
    runs.append(("SIGKILL agent 8 s", lost, {"seconds": 3, "jobs_cap": 16}))
    lost = chaos.after(1.0, chaos.kill("agent", down=8.0))
    runs.append(("SIGKILL agent 8 s, retries=2", lost, {"seconds": 3, "jobs_cap": 16, "retries": 2}))
    return runs


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--settle", type=float, default=120.0)
    parser.add_argument("--only", default="", help="run the faults whose name contains this")
    args = parser.parse_args()

    outcomes: list[Outcome] = []
    with fresh_vhost("skybus-chaos") as vhost:
        broker = URL(vhost.url)
        proxy = await TcpProxy(broker.host or "127.0.0.1", broker.port or 5672).start()
        data = Path(tempfile.mkdtemp(prefix="skybus-chaos-"))
        fleet = Fleet(data / "data", proxy.url(vhost.url), **{**FLEET_ENV, "SKYBUS_LOG_LEVEL": "WARNING"})
        try:
            await fleet.start()
            chaos = Chaos(fleet, proxy, data / "marks")
            for fault, inject, options in faults(chaos):
                if args.only not in fault:
                    continue
                jobs = min(args.jobs, options.pop("jobs_cap", args.jobs))
                in_flight = min(args.in_flight, jobs)
                outcome = await chaos.run(fault, inject, jobs=jobs, in_flight=in_flight, settle=args.settle, **options)
                outcomes.append(outcome)
                print(outcome.row(), flush=True)
        finally:
            proxy.restore()
            await fleet.stop()
            await proxy.close()
            shutil.rmtree(data, ignore_errors=True)

    print(f"\n{HEADER}")
    for outcome in outcomes:
        print(outcome.row())
    unsound = [o.fault for o in outcomes if not o.sound]
    print(f"\n{len(outcomes) - len(unsound)}/{len(outcomes)} faults: every job final once, none run twice, none stuck")
    if unsound:
        print("NOT SOUND: " + ", ".join(unsound))
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
