"""The fleet (every service its own process) on RabbitMQ through a TCP proxy the test controls:
the network dropped, cut and stalled, and each process SIGKILLed and SIGSTOPped while jobs flow.
After each fault every job ends in exactly one final state, none is stuck and none ran twice
(``lost`` is an honest end when the agent or its network is what failed)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from yarl import URL

from tests.chaos.faults import FLEET_ENV, HEADER, Chaos, Outcome
from tests.chaos.proxy import TcpProxy
from tests.e2e.fleet import MANAGERS, Fleet

pytestmark = pytest.mark.amqp

JOBS = 16


@pytest.fixture
async def chaos(tmp_path, amqp_url: str) -> AsyncIterator[Chaos]:
    broker = URL(amqp_url)
    proxy = await TcpProxy(broker.host or "127.0.0.1", broker.port or 5672).start()
    fleet = Fleet(tmp_path / "data", proxy.url(amqp_url), **FLEET_ENV)
    try:
        await fleet.start()
        yield Chaos(fleet, proxy, tmp_path / "marks")
    finally:
        proxy.restore()
        await fleet.stop()
        await proxy.close()


def check(outcome: Outcome, *, may_lose: bool) -> None:
    print(f"\n{HEADER}\n{outcome.row()}")
    assert outcome.sound, outcome
    allowed = {"succeeded", "lost"} if may_lose else {"succeeded"}
    assert set(outcome.states) <= allowed, outcome


async def test_the_network_to_the_broker_dropped_cut_and_stalled(chaos: Chaos) -> None:
    check(await chaos.run("drop every connection", chaos.network("drop"), jobs=JOBS), may_lose=False)
    check(await chaos.run("cut for 1.5 s", chaos.network("cut", 1.5), jobs=JOBS), may_lose=True)
    check(await chaos.run("stall for 1.5 s", chaos.network("stall", 1.5), jobs=JOBS), may_lose=True)


async def test_each_process_sigkilled_and_restarted(chaos: Chaos) -> None:
    for name in (*MANAGERS, "gateway"):
        check(await chaos.run(f"SIGKILL {name}", chaos.kill(name), jobs=JOBS), may_lose=False)
    check(await chaos.run("SIGKILL agent", chaos.kill("agent"), jobs=JOBS), may_lose=True)
    # Down past the lost timeout: its running jobs are lost (they had no retries), and run no more than once.
    down = chaos.after(1.0, chaos.kill("agent", down=6.0))
    outcome = await chaos.run("SIGKILL agent 6 s", down, jobs=6, in_flight=6, seconds=3)
    check(outcome, may_lose=True)
    assert outcome.states["lost"] >= 1, outcome


async def test_each_process_sigstopped(chaos: Chaos) -> None:
    for name in (*MANAGERS, "gateway"):
        check(await chaos.run(f"SIGSTOP {name} 2 s", chaos.pause(name), jobs=JOBS), may_lose=False)
    check(await chaos.run("SIGSTOP agent 2 s", chaos.pause("agent"), jobs=JOBS), may_lose=True)


async def test_jobs_lost_with_their_agent_run_again_when_they_have_retries(chaos: Chaos) -> None:
    """Jobs outlive a restarted agent (their launcher adopts them), so the agent stays down past the
    lost timeout: the job manager declares them lost, and runs each again once the host is back."""

    down = chaos.after(1.0, chaos.kill("agent", down=6.0))  # every job of the run is running (each sleeps 3 s)
    outcome = await chaos.run("SIGKILL agent 6 s, retries=2", down, jobs=6, in_flight=6, seconds=3, retries=2)
    check(outcome, may_lose=False)
    assert outcome.retried == 6, outcome  # each ran again once, under a task id of its own
