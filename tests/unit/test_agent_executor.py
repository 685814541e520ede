"""How the agent runs a job: in its user's sandbox, under a launcher that outlives the agent, with limits.

Real bubblewrap and real processes; the tests that need bubblewrap are skipped without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import time

import psutil
import pytest

from broker.envelope import Envelope
from schemas.jobs import FilesStagedIn, JobState, StagedFile, StageInFiles, SubmitTask, TaskCompleted
from services.agent.supervisor import JobOptions
from services.agent.tasks import TaskRunner
from tests.delivery import deliver
from tests.e2e.harness import processes_of
from tests.rabbit import on_ci
from tests.unit import test_agent_tasks as base
from tests.unit.test_agent_tasks import completed

said, data, options = base.said, base.data, base.options  # the same fixtures
# Skipped without bubblewrap on a developer's machine; on CI (which installs it) these run and fail.
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None and not on_ci(), reason="needs bubblewrap")


def submit(job_id: str, command: str, **fields) -> Envelope:
    return Envelope(SubmitTask(job_id=job_id, command=command, **fields))


def answer_of(done: TaskCompleted) -> dict:
    assert done.answer is not None, done
    return json.loads(done.answer)


def launchers(options: JobOptions) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(str(options.scratch_dir) in part and part.endswith("launcher.sock") for part in cmdline):
            found.append(process)
    return found


@pytest.fixture
async def runner(tmp_path, said, data, options):
    runner = TaskRunner(tmp_path / "agent", said, data, kill_grace=0.5, options=options)  # type: ignore[arg-type]
    yield runner
    await runner.stop()


@needs_bwrap
async def test_a_job_is_sandboxed(runner, said, tmp_path) -> None:
    script = (
        "id -u; echo home=$HOME; echo pwd=$(pwd); "
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; "
        "ls /proc | grep -c '^[0-9]' ; "
        f"ls {tmp_path} 2>&1; touch /usr/x 2>&1; touch /etc/x 2>&1; cat /etc/shadow 2>&1; "
        "touch here && echo wrote-here; touch /tmp/t && echo wrote-tmp; env | sort"
    )
    await deliver(runner.submit_task, submit("box", script, user="alice"))
    done = await completed(said, "box")
    out = answer_of(done)["stdout"]
    lines = out.splitlines()
    assert lines[0] == "65534" and lines[0] != str(os.getuid())
    workdir = runner.supervisors.home("u-alice").work("box")
    assert f"home={workdir}" in out and f"pwd={workdir}" in out
    assert "bwrap" in lines[3]  # pid 1 is the sandbox's own init: no agent in sight
    assert int(lines[4]) < 10  # the launcher, the job and its children: not the host's processes
    assert "No such file or directory" in out  # the agent's state dir is not there
    assert "Read-only file system" in out or "Permission denied" in out
    assert "root:" not in out and "wrote-here" in out and "wrote-tmp" in out
    env = [line.split("=", 1)[0] for line in lines if "=" in line and line.split("=", 1)[0].isupper()]
    assert set(env) <= {"PATH", "HOME", "LANG", "TMPDIR", "PWD", "SKYBUS_JOB_ID", "SHLVL", "_", "OLDPWD"}


@needs_bwrap
async def test_users_do_not_see_each_others_jobs(runner, said) -> None:
    await deliver(runner.submit_task, submit("a1", "echo secret > mine; sleep 0.3", user="alice"))
    await deliver(runner.submit_task, submit("b1", "sleep 0.1; ls ..; ps -e 2>/dev/null | wc -l", user="bob"))
    bob = answer_of(await completed(said, "b1"))["stdout"]
    assert "a1" not in bob and "b1" in bob
    assert (await completed(said, "a1")).outcome is JobState.SUCCEEDED
    alice_home = runner.supervisors.home("u-alice").root
    await deliver(runner.submit_task, submit("b2", f"cat {alice_home}/work/a1/mine", user="bob"))
    assert (await completed(said, "b2")).outcome is JobState.FAILED


async def test_a_privileged_job_runs_as_the_agents_user(runner, said) -> None:
    await deliver(runner.submit_task, submit("p1", "id -u; echo $SKYBUS_JOB_ID", privileged=True))
    done = await completed(said, "p1")
    assert answer_of(done)["stdout"].split() == [str(os.getuid()), "p1"]


async def test_without_bubblewrap_only_privileged_or_allowed_jobs_run(tmp_path, said, data, options) -> None:
    missing = dataclasses.replace(options, tool="no-such-bwrap")
    runner = TaskRunner(tmp_path / "a", said, data, options=missing)  # type: ignore[arg-type]
    await deliver(runner.submit_task, submit("n1", "true"))
    done = await completed(said, "n1")
    assert done.outcome is JobState.FAILED and "no bubblewrap" in done.error
    await deliver(runner.submit_task, submit("n2", "true", privileged=True))
    assert (await completed(said, "n2")).outcome is JobState.SUCCEEDED
    await runner.stop()
    allowed = dataclasses.replace(missing, unsandboxed_jobs=True)
    runner = TaskRunner(tmp_path / "b", said, data, options=allowed)  # type: ignore[arg-type]
    await deliver(runner.submit_task, submit("n3", "true"))
    assert (await completed(said, "n3")).outcome is JobState.SUCCEEDED
    await runner.stop()


async def test_a_nul_in_the_command_fails_the_task_once(runner, said) -> None:
    await deliver(runner.submit_task, submit("nul", "echo a\0b"))
    done = await completed(said, "nul")
    assert done.outcome is JobState.FAILED and "NUL" in done.error
    await deliver(runner.submit_task, submit("nul", "echo a\0b"))  # redelivered: answered from the ledger
    await asyncio.sleep(0.1)
    assert said.of(TaskCompleted, "nul") == [done, done]


@pytest.mark.parametrize("name", ["/etc/evil", "..", "a/b", "", ".", "x\0y"])
async def test_staged_file_names_must_be_plain(runner, said, name) -> None:
    await deliver(
        runner.stage_in_files, Envelope(StageInFiles(job_id="st", files=[StagedFile(data_id="in-1", name=name)]))
    )
    [event] = said.of(FilesStagedIn, "st")
    assert event.ok is False and "plain file name" in event.error
    assert not os.path.exists("/etc/evil")


async def test_a_task_is_not_started_after_its_start_by(runner, said) -> None:
    await deliver(runner.submit_task, submit("late", "touch ran", start_by=time.time() - 1))
    done = await completed(said, "late")
    assert done.outcome is JobState.LOST and done.error == "not started before its start_by deadline"
    await deliver(runner.submit_task, submit("late", "touch ran", start_by=time.time() + 60))
    await asyncio.sleep(0.1)
    assert said.of(TaskCompleted, "late") == [done, done] and runner.ledger.get("late").pid is None


async def test_start_by_is_checked_again_when_a_slot_frees(tmp_path, said, data, options) -> None:
    runner = TaskRunner(tmp_path / "agent", said, data, max_parallel=1, options=options)  # type: ignore[arg-type]
    await deliver(runner.submit_task, submit("busy", "sleep 0.4"))
    await deliver(runner.submit_task, submit("waits", "true", start_by=time.time() + 0.1))
    done = await completed(said, "waits")
    assert done.outcome is JobState.LOST and "start_by" in done.error
    await runner.stop()


async def test_a_job_outlives_its_agent_and_the_next_one_reports_it(tmp_path, said, data, options) -> None:
    first = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    await deliver(first.submit_task, submit("long", "sleep 1; echo done"))
    while not processes_of("long"):
        await asyncio.sleep(0.02)
    await first.stop()  # the agent stops (SIGTERM) or dies: the job runs on
    assert processes_of("long") and said.of(TaskCompleted, "long") == []
    second = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    await second.recover()
    done = await completed(said, "long")
    assert done.outcome is JobState.SUCCEEDED and answer_of(done)["stdout"] == "done\n"
    await second.stop()
    await asyncio.sleep(0.3)
    assert processes_of("long") == [] and launchers(options) == []


async def test_a_job_that_ended_while_no_agent_ran_is_reported(tmp_path, said, data, options) -> None:
    first = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    first.ledger.spawned = lambda job_id, pid: None  # type: ignore[method-assign]  # killed before recording the pid
    await deliver(first.submit_task, submit("quick", "sleep 0.2; echo ran; exit 3"))
    while not processes_of("quick"):
        await asyncio.sleep(0.01)
    await first.stop()
    assert first.ledger.get("quick").pid is None
    while processes_of("quick"):
        await asyncio.sleep(0.02)
    second = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    await second.recover()
    done = await completed(said, "quick")
    assert done.outcome is JobState.FAILED and done.exit_code == 3 and answer_of(done)["stdout"] == "ran\n"
    await second.stop()


@needs_bwrap
async def test_a_job_whose_sandbox_was_killed_is_lost(tmp_path, said, data, options) -> None:
    first = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    await deliver(first.submit_task, submit("doomed", "sleep 30"))
    while not processes_of("doomed"):
        await asyncio.sleep(0.02)
    await first.stop()
    for launcher in launchers(options):
        with contextlib.suppress(psutil.NoSuchProcess):  # one may exit between being listed and killed
            launcher.send_signal(signal.SIGKILL)
    second = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    await second.recover()
    done = await completed(said, "doomed")
    assert done.outcome is JobState.LOST and "sandbox ended" in done.error
    await second.stop()
    assert processes_of("doomed") == []


async def test_a_task_taken_but_not_handed_over_is_never_started_after_a_restart(tmp_path, said, data, options) -> None:
    first = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    first.ledger.started("taken", home="u-anonymous")
    await first.stop()
    second = TaskRunner(tmp_path / "agent", said, data, options=options)  # type: ignore[arg-type]
    await second.recover()
    done = await completed(said, "taken")
    assert done.outcome is JobState.LOST and "before it ran" in done.error
    await second.stop()


async def test_limits_end_a_job_and_say_which(tmp_path, said, data, options) -> None:
    limited = dataclasses.replace(options, limits={"cpu": 1, "fsize": 1000})
    runner = TaskRunner(tmp_path / "agent", said, data, options=limited)  # type: ignore[arg-type]
    await deliver(runner.submit_task, submit("spin", "while :; do :; done"))
    await deliver(runner.submit_task, submit("chatty", "head -c 5000 /dev/zero"))
    spin = await completed(said, "spin", timeout=15)
    assert spin.outcome is JobState.FAILED and spin.error == "cpu time limit (1 s) exceeded"
    chatty = await completed(said, "chatty")
    assert chatty.outcome is JobState.FAILED and chatty.error == "output limit (1000 bytes) exceeded"
    await runner.stop()


async def test_work_dirs_go_once_their_retention_passed(tmp_path, said, data, options) -> None:
    runner = TaskRunner(tmp_path / "agent", said, data, options=dataclasses.replace(options, workdir_retention=0))  # type: ignore[arg-type]
    await deliver(runner.submit_task, submit("w1", "echo x > file"))
    await completed(said, "w1")
    await asyncio.sleep(0.1)
    home = runner.supervisors.home("u-anonymous")
    assert not home.work("w1").exists() and not home.run("w1", "out").exists()
    await runner.stop()
