"""The users' CLI end to end: real ``skybus`` subprocesses against one real ``skybus up``, over REST only."""

from __future__ import annotations

import json
import os
import pty
import re
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import REPO, skybus_env

pytestmark = pytest.mark.e2e


@dataclass
class Fleet:
    url: str
    token: str
    resource_id: str
    config_home: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = skybus_env(XDG_CONFIG_HOME=str(self.config_home), SKYBUS_URL=self.url, SKYBUS_API_TOKEN=self.token)
        env.update(extra)
        return env

    def rest(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("cli")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--port", "0", "--data-dir", str(base / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=skybus_env(SKYBUS_KILL_GRACE="1"),
        cwd=REPO,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Try:"):
            break
    text = "".join(lines)
    url = re.search(r"skybus is up at (\S+)", text)
    token = re.search(r"^SKYBUS_TOKEN=(\S+)$", text, re.M)
    resource = re.search(r"this host is resource (\S+)", text)
    assert url and token and resource, text
    found = Fleet(url.group(1), token.group(1), resource.group(1), base / "config")
    deadline = time.monotonic() + 20
    while not found.rest("GET", f"/api/resources/{found.resource_id}")["responding"]:
        assert time.monotonic() < deadline, "the local agent never responded"
        time.sleep(0.1)
    yield found
    process.terminate()
    assert process.wait(20) == 0


def skybus(
    fleet: Fleet, *args: str, env: dict[str, str] | None = None, stdout: Any = subprocess.PIPE, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env or fleet.env(),
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_version_and_completion_help(fleet: Fleet) -> None:
    result = skybus(fleet, "--version")
    assert result.returncode == 0 and result.stdout.startswith("skybus, version ")
    assert "_SKYBUS_COMPLETE" in skybus(fleet, "--help").stdout
    script = Path(sys.executable).parent / "skybus"  # the installed entry point, named as users type it
    env = {**fleet.env(), "_SKYBUS_COMPLETE": "bash_source"}
    completion = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert completion.returncode == 0 and "_skybus_completion" in completion.stdout


def test_login_stores_url_and_token_for_the_owner_only(fleet: Fleet, tmp_path: Path) -> None:
    bare = skybus_env(XDG_CONFIG_HOME=str(tmp_path))
    one_line_error(skybus(fleet, "job", "ls", env=bare), "skybus login")
    one_line_error(skybus(fleet, "login", fleet.url, "--token", "wrong", env=bare), "401")
    assert not (tmp_path / "skybus" / "config.toml").exists()

    result = skybus(fleet, "login", fleet.url.removeprefix("http://"), "--token", fleet.token, env=bare)
    assert result.returncode == 0 and "as admin" in result.stdout, result.stderr
    config = tmp_path / "skybus" / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert f'url = "{fleet.url}"' in config.read_text()
    assert skybus(fleet, "job", "ls", env=bare).returncode == 0
    # The environment wins over the file; the agent's SKYBUS_TOKEN is not the client's.
    env = {**bare, "SKYBUS_API_TOKEN": "other", "SKYBUS_TOKEN": fleet.token}
    one_line_error(skybus(fleet, "job", "ls", env=env), "401")


def test_unreachable_gateway_is_one_line(fleet: Fleet) -> None:
    env = fleet.env(SKYBUS_URL="http://127.0.0.1:9")
    one_line_error(skybus(fleet, "host", "ls", env=env), "cannot reach skybus")
    result = skybus(fleet, "run", "--", "true", env=env)
    assert result.returncode == 125
    one_line_error(result, "cannot reach skybus")


def test_run_prints_the_answer_and_exits_with_the_jobs_code(fleet: Fleet) -> None:
    result = skybus(fleet, "run", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    result = skybus(fleet, "run", "uname -a | wc -l")  # one word: a shell line as typed
    assert (result.returncode, result.stdout) == (0, "1\n")
    result = skybus(fleet, "run", "--host", "nosuchhost", "--", "true")
    assert result.returncode == 125
    one_line_error(result, "nosuchhost")


def test_run_streams_the_output_as_it_comes(fleet: Fleet) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run", "--", "echo first; sleep 3; echo second"],
        env=fleet.env(PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    seen_at = time.monotonic()
    rest, errors = process.communicate(timeout=60)
    assert (first, rest, process.returncode) == (b"first\n", b"second\n", 0), errors
    assert time.monotonic() - seen_at > 1.5  # the first line came while the job still ran


def test_run_downloads_its_output_files_here(fleet: Fleet, tmp_path: Path) -> None:
    command = "mkdir res && printf x > a.txt && printf '\\377' > res/b.bin && echo made && echo note >&2"
    result = skybus(fleet, "run", "--output", "*.txt", "--output", "res/*", "--output", "none*", "--", command,
                    cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0 and result.stdout == "made\n", result.stderr
    assert (tmp_path / "a.txt").read_bytes() == b"x" and (tmp_path / "res" / "b.bin").read_bytes() == b"\xff"
    assert result.stderr.startswith("note\n") and "none*: no file matches" in result.stderr


def test_job_logs_and_follow(fleet: Fleet) -> None:
    job_id = skybus(fleet, "run", "--detach", "--", "echo out; sleep 1; echo err >&2").stdout.strip()
    followed = skybus(fleet, "job", "logs", "-f", job_id)
    assert (followed.returncode, followed.stdout, followed.stderr) == (0, "out\n", "err\n")
    only = skybus(fleet, "job", "logs", "--stream", "stderr", job_id)
    assert (only.stdout, only.stderr) == ("", "err\n")
    one_line_error(skybus(fleet, "job", "logs", str(uuid.uuid4())), "not found")


def test_run_stages_files_and_pins_a_host(fleet: Fleet, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("hello fleet\n")
    (tmp_path / "shout").write_text('#!/bin/sh\ntr a-z A-Z < "$1"\n')
    args = ["--file", str(tmp_path / "in.txt"), "--file", str(tmp_path / "shout"), "--host", fleet.resource_id]
    result = skybus(fleet, "run", *args, "--", "sh", "shout", "in.txt")
    assert (result.returncode, result.stdout) == (0, "HELLO FLEET\n"), result.stderr


def test_run_json_and_detach(fleet: Fleet) -> None:
    result = skybus(fleet, "run", "--json", "--", "echo", "hi")
    body = json.loads(result.stdout)
    assert result.returncode == 0 and body["job"]["state"] == "succeeded" and body["answer"]["stdout"] == "hi\n"
    detached = skybus(fleet, "run", "--detach", "--", "echo", "later")
    job_id = detached.stdout.strip()
    assert detached.returncode == 0 and uuid.UUID(job_id)
    assert json.loads(skybus(fleet, "run", "-d", "--json", "--", "true").stdout).keys() == {"job_id"}
    shown = json.loads(skybus(fleet, "job", "show", job_id, "--json").stdout)
    assert shown["job_id"] == job_id and shown["command"] == "echo later"


def test_a_cancelled_job_exits_125_with_the_reason(fleet: Fleet) -> None:
    waiting = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run", "--", "sleep", "60"],
        env=fleet.env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while True:
        running = json.loads(skybus(fleet, "job", "ls", "--state", "running", "--json").stdout)["jobs"]
        mine = [job for job in running if job["command"] == "sleep 60"]
        if mine:
            break
        assert time.monotonic() < deadline, "the job never ran"
        time.sleep(0.2)
    cancelled = skybus(fleet, "job", "cancel", mine[0]["job_id"])
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    _, stderr = waiting.communicate(timeout=60)
    assert waiting.returncode == 125 and f"job {mine[0]['job_id']} cancelled" in stderr


def test_job_ls_show_rm(fleet: Fleet) -> None:
    job_id = skybus(fleet, "run", "-d", "--", "echo", "listed").stdout.strip()
    skybus(fleet, "run", "--", "true")
    table = skybus(fleet, "job", "ls")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["JOB", "ID", "STATE"]
    assert job_id in table.stdout
    listed = json.loads(skybus(fleet, "job", "ls", "--json", "--limit", "100").stdout)
    assert job_id in listed["job_ids"] and any(row["job_id"] == job_id for row in listed["jobs"])
    show = skybus(fleet, "job", "show", job_id)
    assert show.returncode == 0 and re.search(r"^command\s+echo listed$", show.stdout, re.M)
    assert skybus(fleet, "job", "rm", job_id).returncode == 0
    one_line_error(skybus(fleet, "job", "show", job_id), "410")
    one_line_error(skybus(fleet, "job", "show", str(uuid.uuid4())), "404")
    one_line_error(skybus(fleet, "job", "cancel", "nope"), "400")
    one_line_error(skybus(fleet, "job", "ls", "--state", "bogus"), "400", "bogus")


def test_hosts_nodes_and_roles(fleet: Fleet) -> None:
    hosts = json.loads(skybus(fleet, "host", "ls", "--json").stdout)
    hostname = next(h["info"]["hostname"] for h in hosts if h["id"] == fleet.resource_id)
    table = skybus(fleet, "host", "ls")
    assert table.returncode == 0 and fleet.resource_id in table.stdout and "HOSTNAME" in table.stdout
    shown = skybus(fleet, "host", "show", hostname)  # by name as well as by id
    assert shown.returncode == 0 and fleet.resource_id in shown.stdout
    assert json.loads(skybus(fleet, "host", "show", fleet.resource_id, "--json").stdout)["id"] == fleet.resource_id
    one_line_error(skybus(fleet, "host", "show", "nosuchhost"), "404")

    assert fleet.resource_id in skybus(fleet, "node", "ls").stdout
    assert json.loads(skybus(fleet, "node", "ls", "--json").stdout)[0]["status"] in ("running", "halted")
    mem = json.loads(skybus(fleet, "node", "mem", fleet.resource_id, "--json").stdout)
    assert mem[0]["total"] > 0
    assert "usedPercent" in skybus(fleet, "node", "mem", hostname).stdout
    containers = skybus(fleet, "node", "containers", fleet.resource_id, "--json")
    assert containers.returncode == 0 and isinstance(json.loads(containers.stdout), list)

    fleet.rest("POST", "/v1/roles/clitest/versions", {"version": "1.0", "install": "true", "remove": "true"})
    assert "clitest" in skybus(fleet, "role", "ls").stdout
    role = json.loads(skybus(fleet, "role", "show", "clitest", "--json").stdout)
    assert role["active_version"] == "1.0" and role["versions"][0]["version"] == "1.0"
    applied = skybus(fleet, "role", "apply", "clitest", fleet.resource_id, "--json")
    assert applied.returncode == 0 and "clitest" in json.loads(applied.stdout)["roles"]
    removed = skybus(fleet, "role", "remove", "clitest", hostname)
    assert removed.returncode == 0, removed.stderr
    one_line_error(skybus(fleet, "role", "show", "nosuchrole"), "404")


def test_data_put_get_ls_rm_without_a_bar_off_a_terminal(fleet: Fleet, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * 1024 * 1024))
    put = skybus(fleet, "data", "put", str(big))
    data_id = put.stdout.strip()
    assert put.returncode == 0 and uuid.UUID(data_id) and put.stderr == ""  # no bar: stdout is a pipe
    got = skybus(fleet, "data", "get", data_id, "-o", str(tmp_path / "back.bin"))
    assert got.returncode == 0 and got.stderr == "" and (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    listed = json.loads(skybus(fleet, "data", "ls", "--json").stdout)["items"]
    assert listed[0]["id"] == data_id and listed[0]["name"] == "big.bin"
    assert "big.bin" in skybus(fleet, "data", "ls").stdout
    small = tmp_path / "small.txt"
    small.write_text("tiny\n")
    small_id = json.loads(skybus(fleet, "data", "put", str(small), "--name", "renamed.txt", "--json").stdout)["id"]
    assert skybus(fleet, "data", "get", small_id).stdout == "tiny\n"
    assert skybus(fleet, "data", "rm", data_id).returncode == 0
    one_line_error(skybus(fleet, "data", "get", data_id), "404")


def test_a_big_upload_shows_a_bar_on_a_terminal(fleet: Fleet, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (5 * 1024 * 1024))
    leader, follower = pty.openpty()
    try:
        result = skybus(fleet, "data", "put", str(big), stdout=follower)
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 0 and "uploading big.bin" in result.stderr


def test_content_put_ls_get_rm(fleet: Fleet, tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    page.write_text("<p>hi</p>\n")
    put = skybus(fleet, "content", "put", str(page), "site/index.html")
    assert put.returncode == 0, put.stderr
    one_line_error(skybus(fleet, "content", "put", str(page), "site/index.html"), "409")
    assert "site/index.html" in skybus(fleet, "content", "ls").stdout
    listed = json.loads(skybus(fleet, "content", "ls", "--json").stdout)
    assert listed["site/index.html"]["resourceType"] == "Static"
    assert skybus(fleet, "content", "get", "site/index.html").stdout == "<p>hi</p>\n"
    page.write_text("<p>new</p>\n")
    assert skybus(fleet, "content", "put", "--replace", str(page), "site/index.html").returncode == 0
    assert skybus(fleet, "content", "get", "site/index.html").stdout == "<p>new</p>\n"
    assert skybus(fleet, "content", "rm", "site/index.html").returncode == 0
    one_line_error(skybus(fleet, "content", "get", "site/index.html"), "404")


def test_newcomer_mistakes_are_one_line(fleet: Fleet, tmp_path: Path) -> None:
    port = fleet.url.rsplit(":", 1)[1]
    taken = skybus(fleet, "up", "--port", port, "--data-dir", str(tmp_path / "data"))
    one_line_error(taken, "port is in use")
    result = skybus(fleet, "--log-level", "loud", "job", "ls")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "loud" in result.stderr
