# ruff: noqa: F811  (the fixtures of test_agent_tasks, imported to be shared)
"""The agent's live output (tails sent only while watched) and its stage-out of output files."""

from __future__ import annotations

import asyncio
import base64
import time

from broker.envelope import Envelope
from schemas.jobs import (
    FileStagedOut,
    JobState,
    OutputChunk,
    OutputStream,
    StageOutFile,
    SubmitTask,
    WatchOutput,
)
from tests.delivery import deliver
from tests.unit.test_agent_tasks import completed, data, options, runner, said  # noqa: F401  (fixtures)


def received(said, job_id: str, stream: OutputStream) -> bytes:
    """The stream as the chunks tell it, each at its offset (a resend overwrites the same bytes)."""
    out = bytearray()
    for chunk in said.of(OutputChunk, job_id):
        if chunk.stream is stream:
            data = base64.b64decode(chunk.data)
            out[chunk.offset : chunk.offset + len(data)] = data
    return bytes(out)


async def wait_for(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.02)


async def test_no_output_message_is_sent_while_nobody_watches(runner, said) -> None:
    await deliver(runner.submit_task, Envelope(SubmitTask(job_id="quiet", command="echo hello; sleep 0.3; echo bye")))
    await completed(said, "quiet")
    assert said.of(OutputChunk, "quiet") == []


async def test_a_watched_task_sends_its_output_as_it_comes_bytes_exact(runner, said) -> None:
    command = "printf 'one\\377\\n'; echo warn >&2; sleep 1; printf 'two\\000\\n'; sleep 0.5"
    await deliver(runner.submit_task, Envelope(SubmitTask(job_id="live", command=command)))
    await wait_for(lambda: "live" in runner.running_job_ids())
    await deliver(runner.output.watch_output, Envelope(WatchOutput(job_id="live")))
    await wait_for(lambda: received(said, "live", OutputStream.STDOUT) == b"one\xff\n")
    assert received(said, "live", OutputStream.STDERR) == b"warn\n"
    await wait_for(lambda: received(said, "live", OutputStream.STDOUT) == b"one\xff\ntwo\x00\n")
    # A watch from an earlier offset rewinds: a follower that lost a chunk gets it again.
    before = len(said.of(OutputChunk, "live"))
    await deliver(runner.output.watch_output, Envelope(WatchOutput(job_id="live", stdout_from=4, stderr_from=5)))
    await wait_for(lambda: len(said.of(OutputChunk, "live")) > before)
    again = said.of(OutputChunk, "live")[before]
    assert again.stream is OutputStream.STDOUT and again.offset == 4 and base64.b64decode(again.data) == b"\ntwo\x00\n"
    done = await completed(said, "live")
    assert done.outcome is JobState.SUCCEEDED
    count = len(said.of(OutputChunk, "live"))
    await asyncio.sleep(0.5)
    assert len(said.of(OutputChunk, "live")) == count  # the tail stopped with the task


async def test_a_watch_of_a_task_not_running_here_sends_nothing(runner, said) -> None:
    await deliver(runner.output.watch_output, Envelope(WatchOutput(job_id="nobody")))
    await asyncio.sleep(0.3)
    assert said.events == []


async def test_stage_out_uploads_the_matches_once_and_refuses_links_out(runner, said, data) -> None:
    command = (
        "mkdir -p res/deep && printf 'a\\377' > a.csv && echo b > b.csv && echo c > res/deep/c.csv"
        " && ln -s /etc/hostname leak.csv"
    )
    submit = SubmitTask(job_id="outs", command=command, stage_out=True)
    await deliver(runner.submit_task, Envelope(submit))
    assert (await completed(said, "outs")).outcome is JobState.SUCCEEDED
    ask = StageOutFile(job_id="outs", patterns=["*.csv", "res/**/*.csv", "missing.txt"])
    await deliver(runner.stage_out_file, Envelope(ask))
    [staged] = said.of(FileStagedOut, "outs")
    assert set(staged.files) == {"a.csv", "b.csv", "res/deep/c.csv"}
    assert data.items[staged.files["a.csv"]] == b"a\xff" and data.items[staged.files["res/deep/c.csv"]] == b"c\n"
    assert staged.errors["missing.txt"] == "no file matches"
    assert "outside" in staged.errors["leak.csv"]
    uploads = len(data.items)
    await deliver(runner.stage_out_file, Envelope(ask))  # a redelivery: the same answer, nothing uploaded again
    assert said.of(FileStagedOut, "outs") == [staged, staged] and len(data.items) == uploads


async def test_stage_out_of_an_unknown_task_says_so(runner, said) -> None:
    await deliver(runner.stage_out_file, Envelope(StageOutFile(job_id="ghost", patterns=["x"])))
    [staged] = said.of(FileStagedOut, "ghost")
    assert staged.files == {} and "no ended task" in staged.errors["x"]
