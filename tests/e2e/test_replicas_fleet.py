"""Two processes of every manager and two gateways on the real RabbitMQ: competing consumers on the
managers' shared queues, clients spread over both gateways. Every job ends once and runs once."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.chaos.faults import FLEET_ENV, HEADER, Chaos
from tests.e2e.fleet import Fleet

pytestmark = pytest.mark.amqp

JOBS = 600


async def test_two_replicas_of_everything_run_every_job_once(tmp_path, amqp_url: str) -> None:
    fleet = Fleet(tmp_path / "data", amqp_url, replicas=2, **FLEET_ENV)
    try:
        await fleet.start()
        assert {"job-manager-2", "gateway-2"} <= set(fleet.processes)
        chaos = Chaos(fleet, None, tmp_path / "marks")
        outcome = await chaos.run("two replicas, no fault", chaos.nothing(), jobs=JOBS, in_flight=32, settle=60)
        print(f"\n{HEADER}\n{outcome.row()}")
        assert outcome.sound, outcome
        assert outcome.states == {"succeeded": JOBS}, fleet.logs()
        entries = [json.loads(line) for line in fleet.agent_ledger.read_text().splitlines()]
        started = Counter(entry["job_id"] for entry in entries if entry["event"] == "started")
        assert len(started) == JOBS and set(started.values()) == {1}
    finally:
        await fleet.stop()
