"""TLS (issue 11, item 9): the gateway serves HTTPS with ``--tls-cert/--tls-key``; the CLI and the
agent verify it with ``--ca`` (or ``SKYBUS_CA``) and refuse it without; ``amqps://`` reaches a real
RabbitMQ TLS listener, verified with ``SKYBUS_AMQP_CA``.

The certificates come from a throwaway CA made in the test (trustme). The AMQP listener is added to
the running broker for the test and removed after (``rabbit_networking`` through ``rabbitmqctl
eval``): the shared broker is never restarted.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme
from pydantic import ValidationError
from yarl import URL

from broker.envelope import Envelope
from broker.port import Binding, BusUnavailable, QueueSpec
from broker.topology import Topology
from schemas.resources import AuthorizeResource
from services.settings import Settings
from services.wiring import make_bus
from tests.e2e.harness import Skybus, SkybusProcess, eventually, skybus_env
from tests.rabbit import rabbitmqctl, unavailable, unreachable_reason


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def make_pki(directory: Path) -> Pki:
    """A CA and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files."""
    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1", "localhost")
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    authority.cert_pem.write_to_path(str(pki.ca))
    server.private_key_pem.write_to_path(str(pki.key))
    with pki.cert.open("wb") as chain:  # the server's certificate, then the CA (a chain file)
        for blob in server.cert_chain_pems:
            chain.write(blob.bytes())
    return pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def verifying(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


async def cli(*args: str, **env: str) -> SkybusProcess:
    process = await SkybusProcess(list(args), skybus_env(**env)).start()
    await process.wait(timeout=60)
    return process


async def test_up_serves_https_that_the_cli_verifies_with_its_ca(tmp_path: Path, pki: Pki) -> None:
    skybus = await Skybus(tmp_path / "data", "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)).start()
    try:
        assert skybus.url.startswith("https://127.0.0.1:"), skybus.lines
        assert (await skybus.call("GET", "/api/whoami", ssl=verifying(pki)))[0] == 200

        # Nothing speaks plain HTTP on the TLS port, and the system's trust store does not know our CA.
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                await session.get(skybus.url.replace("https://", "http://") + "/api/whoami")
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await skybus.call("GET", "/api/whoami")

        # The CLI: refused without the CA, remembered by `skybus login --ca`, or given by SKYBUS_CA.
        config = str(tmp_path / "config")
        assert skybus.token
        refused = await cli("login", skybus.url, "--token", skybus.token, XDG_CONFIG_HOME=config)
        assert refused.process and refused.process.returncode == 1
        assert any("cannot verify skybus" in line and "--ca" in line for line in refused.log), refused.log
        assert not (tmp_path / "config" / "skybus" / "config.toml").exists()

        logged = await cli("login", skybus.url, "--token", skybus.token, "--ca", str(pki.ca), XDG_CONFIG_HOME=config)
        assert logged.process and logged.process.returncode == 0, logged.log
        assert f'ca = "{pki.ca}"' in (tmp_path / "config" / "skybus" / "config.toml").read_text()
        listed = await cli("host", "ls", XDG_CONFIG_HOME=config)
        assert listed.process and listed.process.returncode == 0, listed.log
        assert any(skybus.local_resource_id in line for line in listed.lines), listed.lines

        by_env = await cli(
            "host", "ls", SKYBUS_URL=skybus.url, SKYBUS_API_TOKEN=skybus.token, SKYBUS_CA=str(pki.ca),
            XDG_CONFIG_HOME=str(tmp_path / "empty"),
        )  # fmt: skip
        assert by_env.process and by_env.process.returncode == 0, by_env.log

        # The local agent stages its answer out over HTTPS, trusting its own gateway's certificate.
        status, created = await skybus.call(
            "POST", "/api/job/run", json={"command": "echo over-tls"}, ssl=verifying(pki)
        )
        assert status == 201, created
        job: dict = {}

        async def ended() -> bool:
            nonlocal job
            _, job = await skybus.call("GET", f"/api/job/job_info/{created['job_id']}", ssl=verifying(pki))
            return job.get("state") in {"succeeded", "failed", "cancelled", "lost"}

        await eventually(ended, timeout=30)
        assert job["state"] == "succeeded" and job.get("answer_id"), (job, skybus.log[-15:])
        status, answer = await skybus.call("GET", f"/api/data/{job['answer_id']}", ssl=verifying(pki))
        assert status == 200 and "over-tls" in str(answer), answer
    finally:
        assert await skybus.stop() == 0, skybus.log[-20:]


async def test_half_a_tls_configuration_is_a_usage_error(tmp_path: Path, pki: Pki) -> None:
    up = await cli("up", "--port", "0", "--data-dir", str(tmp_path / "data"), "--tls-cert", str(pki.cert))
    assert up.process and up.process.returncode == 2
    assert any("SKYBUS_TLS_KEY" in line for line in up.log), up.log


@pytest.mark.amqp
async def test_an_agent_joins_an_https_gateway_only_with_its_ca(tmp_path: Path, pki: Pki, amqp_url: str) -> None:
    if reason := unreachable_reason(amqp_url):
        unavailable(reason)
    fleet = {"SKYBUS_AMQP_URL": amqp_url, "SKYBUS_NAMESPACE": f"tls-{uuid.uuid4().hex[:8]}"}
    data = tmp_path / "data"
    skybus = await Skybus(data, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key), **fleet).start()
    agents: list[SkybusProcess] = []
    try:
        maker = await cli("token", "create", "--join", "--data-dir", str(data))
        join_token = (await maker.wait_for_line(r"^SKYBUS_JOIN_TOKEN=(\S+)$")).group(1)

        def agent(name: str, *flags: str) -> SkybusProcess:
            args = ["agent", "--join-token", join_token, "--hostname", name, *flags]
            env = skybus_env(**fleet, SKYBUS_PUBLIC_URL=skybus.url, SKYBUS_DATA_DIR=str(tmp_path / name))
            made = SkybusProcess(args, env)
            agents.append(made)
            return made

        untrusting = await agent("tls-untrusting").start()
        assert await untrusting.wait(timeout=60) == 1
        assert any("cannot verify the gateway" in line for line in untrusting.log), untrusting.log[-10:]

        await agent("tls-trusting", "--ca", str(pki.ca)).start()
        found: dict = {}

        async def responding() -> bool:
            nonlocal found
            status, found = await skybus.call("GET", "/api/resources?hostname=tls-trusting", ssl=verifying(pki))
            if status != 200:
                return False
            status, found = await skybus.call("GET", f"/api/resources/{found['id']}", ssl=verifying(pki))
            return status == 200 and found["responding"] is True

        await eventually(responding, timeout=30)
        status, _ = await skybus.call("GET", "/api/resources?hostname=tls-untrusting", ssl=verifying(pki))
        assert status == 404  # it never joined
    finally:
        for process in agents:
            if process.process is not None:
                await process.stop()
        assert await skybus.stop() == 0, skybus.log[-20:]


@pytest.fixture
def amqps_listener(amqp_url: str) -> Iterator[tuple[str, Pki]]:
    """A TLS listener on the running RabbitMQ (its own port, 127.0.0.1), removed after the test;
    yields ``amqp_url`` as an ``amqps://`` URL to it, and the PKI that signed it."""
    if reason := unreachable_reason(amqp_url):
        unavailable(reason)
    # The broker runs as its own user: it must read the files.
    directory = Path(tempfile.mkdtemp(prefix="skybus-amqps-"))
    try:
        directory.chmod(0o755)
        pki = make_pki(directory)
        for path in (pki.ca, pki.cert, pki.key):
            path.chmod(0o644)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        listener = f'{{"127.0.0.1",{port}}}'
        options = (
            f'[{{cacertfile,"{pki.ca}"}},{{certfile,"{pki.cert}"}},{{keyfile,"{pki.key}"}},{{verify,verify_none}}]'
        )
        started = rabbitmqctl("eval", f"rabbit_networking:start_ssl_listener({listener}, {options}, 1).")
        assert started.strip() == "ok", started
        try:
            yield str(URL(amqp_url).with_scheme("amqps").with_port(port)), pki
        finally:
            rabbitmqctl("eval", f"rabbit_networking:stop_tcp_listener({listener}).")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.amqp
async def test_amqps_reaches_rabbitmq_over_tls_verified_by_the_amqp_ca(amqps_listener: tuple[str, Pki]) -> None:
    url, pki = amqps_listener
    namespace = f"amqps-{uuid.uuid4().hex[:8]}"
    topology = Topology(namespace)
    bus = make_bus(Settings(amqp_url=url, amqp_ca=pki.ca, namespace=namespace), sender="test")
    await bus.start()
    try:
        heard: list[Envelope] = []

        async def hear(envelope: Envelope) -> None:
            heard.append(envelope)

        spec = QueueSpec(topology.queue_name("tls", "probe"), (Binding(topology.commands, "tls.probe"),))
        await bus.subscribe(spec, hear)
        sent = Envelope(AuthorizeResource(resource_id=str(uuid.uuid4())))
        await bus.publish(topology.commands, sent, "tls.probe")
        async with asyncio.timeout(10):
            while not heard:
                await asyncio.sleep(0.05)
        assert heard[0].message_id == sent.message_id
    finally:
        await bus.close()

    # Without the CA the system's trust store is used, which does not know this one.
    untrusting = make_bus(Settings(amqp_url=url, namespace=namespace), sender="test")
    with pytest.raises(BusUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await untrusting.start()


def test_an_amqp_ca_needs_an_amqps_url() -> None:
    with pytest.raises(ValidationError, match="amqps://"):
        Settings(amqp_url="amqp://guest:guest@127.0.0.1:5672/", amqp_ca=Path("/etc/ssl/certs/ca-certificates.crt"))
