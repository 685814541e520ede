"""The agent's side of joining: credentials saved before the call, kept, and the gateway's answers."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import click
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner

from services import cli
from services.agent.join import JoinCredentials, JoinRefused, join, load_or_make
from services.cli import main
from services.settings import Settings
from tests.resource_stack import Stack, stack_fixture  # noqa: F401


def test_credentials_are_made_once_saved_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "agent-join" / "credentials.json"
    made = load_or_make(path, None, "this-machine")
    assert made.hostname == "this-machine" and not made.joined
    assert str(uuid.UUID(made.resource_id)) == made.resource_id and str(uuid.UUID(made.token)) == made.token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["token"] == made.token
    assert load_or_make(path, None, "renamed-machine") == made
    assert load_or_make(path, "this-machine", "x") == made


def test_a_joined_hosts_name_is_fixed_and_a_broken_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    load_or_make(path, "first", "x")
    with pytest.raises(ValueError, match="joined as 'first'"):
        load_or_make(path, "second", "x")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="remove it"):
        load_or_make(path, None, "x")


class FakeGateway:
    """Answers ``POST /api/join`` with the statuses it is given, in turn; records the bodies."""

    def __init__(self, *answers: tuple[int, dict]) -> None:
        self.answers = list(answers)
        self.bodies: list[dict] = []
        self.bearers: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.bearers.append(request.headers["Authorization"])
        status, body = self.answers.pop(0)
        return web.json_response(body, status=status)


@pytest.fixture
async def gateway():
    servers: list[TestServer] = []

    async def start(*answers: tuple[int, dict]) -> tuple[FakeGateway, str]:
        fake = FakeGateway(*answers)
        app = web.Application()
        app.router.add_post("/api/join", fake.handle)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return fake, str(server.make_url("/"))

    yield start
    for server in servers:
        await server.close()


async def test_a_first_join_waits_out_a_gateway_that_cannot_answer_yet(tmp_path: Path, gateway) -> None:
    path = tmp_path / "credentials.json"
    credentials = load_or_make(path, "h1", "x")
    fake, url = await gateway((503, {"error": "bus down"}), (504, {"error": "slow"}), (201, {"id": "x"}))
    fake.answers[-1] = (201, {"id": credentials.resource_id})
    joined = await join(path, url, "the-join-token", credentials, first_delay=0.01)
    assert joined == JoinCredentials(credentials.resource_id, credentials.token, "h1", joined=True)
    assert load_or_make(path, None, "x") == joined
    expected = {"id": credentials.resource_id, "hostname": "h1", "token": credentials.token}
    assert fake.bodies == [expected] * 3 and set(fake.bearers) == {"Bearer the-join-token"}


async def test_an_adopted_hosts_id_is_saved_and_used(tmp_path: Path, gateway) -> None:
    path = tmp_path / "credentials.json"
    credentials = load_or_make(path, "h1", "x")
    adopted = str(uuid.uuid4())
    _, url = await gateway((201, {"id": adopted}))
    joined = await join(path, url, "t", credentials)
    assert joined.resource_id == adopted and joined.token == credentials.token
    assert load_or_make(path, None, "x").resource_id == adopted


@pytest.mark.parametrize("status", [400, 401, 409])
async def test_a_refused_first_join_says_why(tmp_path: Path, gateway, status: int) -> None:
    path = tmp_path / "credentials.json"
    credentials = load_or_make(path, "h1", "x")
    _, url = await gateway((status, {"error": "no, because"}))
    with pytest.raises(JoinRefused, match="no, because") as refused:
        await join(path, url, "t", credentials)
    assert refused.value.status == status
    assert load_or_make(path, None, "x") == credentials  # kept: the same ones are tried next time


async def test_a_joined_host_starts_without_the_gateway_or_its_join_token(tmp_path: Path, gateway) -> None:
    path = tmp_path / "credentials.json"
    credentials = JoinCredentials(str(uuid.uuid4()), str(uuid.uuid4()), "h1", joined=True)
    _, url = await gateway((401, {"error": "invalid join token"}), (503, {"error": "down"}))
    assert await join(path, url, "revoked", credentials) == credentials
    assert await join(path, url, "t", credentials) == credentials
    _, url = await gateway((409, {"error": "in use"}))
    with pytest.raises(JoinRefused):
        await join(path, url, "t", credentials)


async def test_joining_the_real_gateway_then_again_after_a_crash(tmp_path: Path, stack: Stack) -> None:
    path = tmp_path / "credentials.json"
    url = str(stack.client.make_url("/"))
    join_token = stack.joiner["Authorization"].removeprefix("Bearer ")
    credentials = load_or_make(path, "h1", "x")
    joined = await join(path, url, join_token, credentials)
    # A crash after the call, before the answer was saved: the same credentials join again.
    again = await join(path, url, join_token, load_or_make(path, None, "x"))
    assert again == joined and joined.resource_id == credentials.resource_id
    view = await stack.client.get(f"/api/resources/{joined.resource_id}", headers=stack.admin)
    assert (await view.json())["authorized"] is False


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--join-token", "j", "--resource-id", "r", "--token", "t"], {}, "not both"),
        (["--join-token", "j"], {"SKYBUS_TOKEN": "t"}, "not both"),
        (["--resource-id", "r", "--token", "t", "--hostname", "h"], {}, "--hostname goes with --join-token"),
        (["--resource-id", "r"], {}, "or --join-token"),
    ],
)
def test_the_agent_takes_a_join_token_or_an_id_and_token(args: list[str], env: dict, fragment: str) -> None:
    result = CliRunner().invoke(main, ["agent", *args], env={"SKYBUS_AMQP_URL": "amqp://nowhere/", **env})
    assert result.exit_code == 2 and fragment in result.output, result.output


def test_the_agent_is_pointed_at_a_gateway_with_one_option(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    async def check(settings: Settings) -> None:  # where the agent checks its token, joins and stages files
        asked.append(settings.gateway_url)
        raise click.ClickException("stop here")

    monkeypatch.setattr(cli, "check_agent_token", check)
    args = ["agent", "--gateway", "https://gw.example:8443/", "--resource-id", "r", "--token", "t"]
    env = {"SKYBUS_AMQP_URL": "amqp://nowhere/", "SKYBUS_PUBLIC_URL": "http://elsewhere"}
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 1 and asked == ["https://gw.example:8443"], result.output
    refused = CliRunner().invoke(main, ["agent", "--gateway", "gw.example", "--join-token", "j"], env=env)
    assert refused.exit_code == 2 and "--gateway" in refused.output and "not an http" in refused.output
