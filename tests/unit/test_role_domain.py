"""The rules of roles on hosts (services/role_manager/domain.py), without a bus or a store."""

from __future__ import annotations

import pytest

from services.role_manager import domain
from services.role_manager.domain import Backoff, Change

BACKOFF = Backoff(attempts=3, first_delay=2.0)


def version(number: str) -> dict:
    return domain.new_version(
        version=number, display_name="A", description="", install=f"echo {number}", remove="rm", now=0
    )


def installed(name: str = "a", at: str = "1") -> dict:
    host = domain.new_host("h")
    host["roles"] = domain.apply(host, name, at, "admin")
    change = domain.next_change(host, 0)
    host["roles"] = domain.start(host, change, "job-1")
    host["roles"] = domain.finish(host, "job-1", {"state": "succeeded", "exit_code": 0}, 1, BACKOFF)
    return host


def test_a_role_is_created_by_its_first_version_which_is_active() -> None:
    role = domain.new_role("a", version("1"))
    assert role["active_version"] == "1"
    role["versions"] = domain.add_version(role, version("2"))
    assert [v["version"] for v in role["versions"]] == ["1", "2"] and role["active_version"] == "1"


def test_versions_are_immutable_and_registering_the_same_again_is_a_no_op() -> None:
    role = domain.new_role("a", version("1"))
    assert domain.add_version(role, version("1")) is None
    changed = {**version("1"), "install": "echo other"}
    with pytest.raises(domain.RoleError) as refused:
        domain.add_version(role, changed)
    assert refused.value.status == 409


def test_the_three_outcomes_of_applying_a_role() -> None:
    host = domain.new_host("h")
    # 1. not present: installed at the active version
    host["roles"] = domain.apply(host, "a", "1", "admin")
    assert domain.next_change(host, 0) == Change("a", domain.INSTALL, "1")
    assert domain.host_state(host).value == "activating" and domain.role_status(host).value == "converging"
    host = installed()
    assert domain.host_state(host).value == "active" and domain.role_status(host).value == "ok"
    # 2. present at the active version: nothing
    assert domain.apply(host, "a", "1", "admin") is None
    # 3. present at another version: the active version's install updates it
    host["roles"] = domain.apply(host, "a", "2", "admin")
    assert domain.next_change(host, 0) == Change("a", domain.INSTALL, "2")


def test_one_change_at_a_time_on_a_host() -> None:
    host = domain.new_host("h")
    host["roles"] = domain.apply(host, "a", "1", "admin")
    host["roles"] = domain.apply(host, "b", "1", "admin")
    first = domain.next_change(host, 0)
    host["roles"] = domain.start(host, first, "job-1")
    assert domain.next_change(host, 0) is None
    host["roles"] = domain.finish(host, "job-1", {"state": "succeeded"}, 1, BACKOFF)
    assert domain.next_change(host, 1) == Change("b", domain.INSTALL, "1")


def test_a_finished_job_is_counted_once() -> None:
    host = installed()
    assert domain.finish(host, "job-1", {"state": "failed", "exit_code": 1}, 2, BACKOFF) is None


def test_failures_are_retried_with_exponential_backoff_then_failed() -> None:
    host = domain.new_host("h")
    host["roles"] = domain.apply(host, "a", "1", "admin")
    now = 100.0
    for failure, delay in enumerate([2.0, 4.0], start=1):
        host["roles"] = domain.start(host, domain.next_change(host, now), f"job-{failure}")
        host["roles"] = domain.finish(host, f"job-{failure}", {"state": "failed", "exit_code": 3}, now, BACKOFF)
        assert domain.role_status(host).value == "retrying"
        assert host["roles"]["a"]["retry_at"] == now + delay
        assert domain.next_change(host, now + delay - 0.1) is None
        now += delay
        assert domain.next_change(host, now) is not None
    host["roles"] = domain.start(host, domain.next_change(host, now), "job-3")
    host["roles"] = domain.finish(host, "job-3", {"state": "failed", "exit_code": 3}, now, BACKOFF)
    entry = host["roles"]["a"]
    assert domain.role_status(host).value == "failed" and entry["attempts"] == 3 and entry["exit_code"] == 3
    assert domain.next_change(host, 10_000) is None and not domain.needs_work(host["roles"])
    # reapplying starts over
    host["roles"] = domain.apply(host, "a", "1", "admin")
    assert host["roles"]["a"]["attempts"] == 0 and domain.next_change(host, 200) is not None


def test_removing_the_last_role_runs_its_remove_script_and_makes_the_host_inactive() -> None:
    host = installed(at="2")
    host["roles"] = domain.remove(host, "a", "admin")
    assert domain.assigned_roles(host) == [] and domain.host_state(host).value == "active"
    assert domain.remove(host, "a", "admin") == host["roles"]  # again (a redelivery): no change
    assert domain.next_change(host, 0) == Change("a", domain.REMOVE, "2")
    host["roles"] = domain.start(host, Change("a", domain.REMOVE, "2"), "job-9")
    host["roles"] = domain.finish(host, "job-9", {"state": "succeeded"}, 1, BACKOFF)
    assert host["roles"] == {} and domain.host_state(host).value == "inactive"
    assert domain.role_status(host).value == "ok"


def test_removing_a_role_that_is_not_assigned_is_404() -> None:
    with pytest.raises(domain.RoleError) as refused:
        domain.remove(domain.new_host("h"), "a", "admin")
    assert refused.value.status == 404


def test_the_script_command_tells_the_script_what_it_does() -> None:
    role = domain.new_role("a", version("1"))
    command = domain.script_command(role, Change("a", domain.INSTALL, "1"), previous_version="0.9")
    assert command.splitlines()[0] == (
        "export SKYBUS_ROLE=a SKYBUS_ROLE_VERSION=1 SKYBUS_ROLE_ACTION=install SKYBUS_ROLE_PREVIOUS_VERSION=0.9"
    )
    assert command.splitlines()[1] == "echo 1"
