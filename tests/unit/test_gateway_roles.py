"""Seed 002 through the gateway: every endpoint's errors, what an unauthorized host hides, and the
role manager's handlers under redelivery. In-process bus and SQLite; no agent (jobs stay pending)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.envelope import Envelope
from broker.memory import MemoryBus
from broker.topology import Topology
from schemas.jobs import JobFinished
from schemas.registry import all_message_types
from schemas.roles import ApplyRole
from services.content_manager.service import ContentManagerService
from services.gateway.app import create_app
from services.job_manager.service import JobManagerService
from services.resource_manager.domain import new_resource
from services.resource_manager.service import ResourceManagerService
from services.role_manager import domain
from services.role_manager.service import RoleManagerService
from services.settings import Settings
from services.store.disk_blobs import DiskBlobStore
from services.store.sqlite import SqliteDocumentStore
from services.tokens import create_token, tokens_collection
from tests.content_stack import info_for, resource_form
from tests.delivery import deliver

HOST = "11111111-2222-4333-8444-555555555555"
JOINED = "66666666-2222-4333-8444-555555555555"
ROLE = {"version": "1.0", "install": "true", "remove": "true", "description": "the first"}


class Api:
    def __init__(self, client: TestClient, store, roles: RoleManagerService, tokens: dict[str, str]) -> None:
        self.client = client
        self.store = store
        self.roles = roles
        self.tokens = tokens

    async def call(self, method: str, path: str, user: str = "admin", **kwargs):
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        response = await self.client.request(method, path, headers=headers, **kwargs)
        body = await response.json() if response.content_type == "application/json" else await response.read()
        return response.status, body


@pytest.fixture
async def api(tmp_path):
    settings = Settings(data_dir=tmp_path, request_timeout=2.0)
    store = await SqliteDocumentStore.open(tmp_path / "api.db")
    topology = Topology("roles")
    bus = MemoryBus(all_message_types(), topology)
    await bus.start()
    roles = RoleManagerService(settings, bus, store, topology)
    managers = [
        ResourceManagerService(settings, bus, store, topology),
        JobManagerService(settings, bus, store, topology),
        ContentManagerService(settings, bus, store, topology),
        roles,
    ]
    for manager in managers:
        await manager.start()
    tokens = await tokens_collection(store)
    admin = await create_token(tokens, user="admin", admin=True)
    steve = await create_token(tokens, user="steve", admin=False)
    resources = store.collection("resources")
    await resources.insert(
        new_resource(resource_id=HOST, hostname="web1", user="admin", token_hash="x", verify_key="", now=0)
    )
    joined = new_resource(resource_id=JOINED, hostname="new1", user="admin", token_hash="y", verify_key="", now=0)
    await resources.insert({**joined, "authorized": False, "responding": True, "last_response_time": 5.0})
    blobs = DiskBlobStore(tmp_path / "blobs")
    client = TestClient(TestServer(await create_app(settings, bus, store, topology, blobs=blobs)))
    await client.start_server()
    yield Api(client, store, roles, {"admin": admin, "steve": steve})
    await client.close()
    for manager in managers:
        await manager.stop()
    await bus.close()
    await store.close()


async def test_roles_list_get_and_activate(api: Api) -> None:
    assert await api.call("GET", "/v1/roles") == (200, [])
    status, created = await api.call("POST", "/v1/roles/roleA/versions", json=ROLE)
    assert status == 201 and created["active"] is True and created["version"] == "1.0"
    second = {**ROLE, "version": "2.0", "display_name": "Role A", "description": "the second"}
    status, created = await api.call("POST", "/v1/roles/roleA/versions", json=second)
    assert status == 201 and created["active"] is False
    expected = {"name": "roleA", "display_name": "roleA", "description": "the first", "active_version": "1.0"}
    assert await api.call("GET", "/v1/roles") == (200, [expected])
    assert await api.call("GET", "/v1/roles/roleA") == (200, expected)
    status, role = await api.call("PUT", "/v1/roles/roleA", json={"active_version": "2.0"})
    assert status == 200
    assert role == {"name": "roleA", "display_name": "Role A", "description": "the second", "active_version": "2.0"}
    status, versions = await api.call("GET", "/v1/roles/roleA/versions")
    assert status == 200 and [(v["version"], v["active"]) for v in versions] == [("1.0", False), ("2.0", True)]


async def test_role_errors(api: Api) -> None:
    assert (await api.call("GET", "/v1/roles/nope"))[0] == 404
    assert (await api.call("PUT", "/v1/roles/nope", json={"active_version": "1"}))[0] == 404
    assert (await api.call("POST", "/v1/roles/roleA/versions", json=ROLE))[0] == 201
    assert (await api.call("POST", "/v1/roles/roleA/versions", json=ROLE))[0] == 201  # the same again: no-op
    status, body = await api.call("POST", "/v1/roles/roleA/versions", json={**ROLE, "install": "echo changed"})
    assert status == 409 and "immutable" in body["error"]
    status, body = await api.call("PUT", "/v1/roles/roleA", json={"active_version": "9.9"})
    assert status == 404 and "9.9" in body["error"]
    for bad in ({}, {"active_version": 3}, {"active_version": "1.0", "extra": 1}):
        assert (await api.call("PUT", "/v1/roles/roleA", json=bad))[0] == 400, bad
    for bad in (
        {"version": "1", "remove": "true"},  # no install
        {"version": "1", "install": "a", "install_content_id": "x", "remove": "true"},  # both
        {"version": "bad version!", "install": "true", "remove": "true"},
        {"version": "1", "install_content_id": "no-such-content", "remove": "true"},
    ):
        status, body = await api.call("POST", "/v1/roles/roleB/versions", json=bad)
        assert status == 400 and "error" in body, bad
    assert (await api.call("GET", "/v1/roles/bad name!"))[0] == 400
    # writes are for admins
    assert (await api.call("POST", "/v1/roles/roleB/versions", "steve", json=ROLE))[0] == 403
    assert (await api.call("PUT", "/v1/roles/roleA", "steve", json={"active_version": "1.0"}))[0] == 403
    assert (await api.call("GET", "/v1/roles/roleA", "steve"))[0] == 200


async def test_a_script_may_come_from_a_content_item(api: Api) -> None:
    form = resource_form(info_for("scripts/install.sh"), b"echo from content\n")
    response = await api.client.post(
        "/resources", data=form, headers={"Authorization": f"Bearer {api.tokens['admin']}"}
    )
    assert response.status == 201, await response.text()
    content_id = response.headers["X-Skybus-Id"]
    body = {"version": "1", "install_content_id": content_id, "remove": "true"}
    assert (await api.call("POST", "/v1/roles/fromcontent/versions", json=body))[0] == 201
    role = await api.store.collection("roles").get("fromcontent")
    assert role["versions"][0]["install"] == "echo from content\n"


async def test_host_errors(api: Api) -> None:
    assert (await api.call("POST", "/v1/roles/roleA/versions", json=ROLE))[0] == 201
    missing = "99999999-2222-4333-8444-555555555555"
    assert (await api.call("GET", f"/v1/hosts/{missing}"))[0] == 404
    assert (await api.call("GET", "/v1/hosts/rsc_1"))[0] == 404
    assert (await api.call("DELETE", f"/v1/hosts/{missing}"))[0] == 404
    assert (await api.call("PUT", f"/v1/hosts/{missing}/roles/roleA"))[0] == 404
    assert (await api.call("PUT", f"/v1/hosts/{HOST}/roles/nope"))[0] == 404
    status, body = await api.call("DELETE", f"/v1/hosts/{HOST}/roles/roleA")
    assert status == 404 and "not assigned" in body["error"]
    assert (await api.call("GET", f"/v1/hosts/{HOST}/roles/roleA"))[0] == 404
    assert (await api.call("PUT", f"/v1/hosts/{HOST}/roles/roleA", "steve"))[0] == 403
    assert (await api.call("DELETE", f"/v1/hosts/{HOST}", "steve"))[0] == 403
    assert (await api.call("GET", f"/v1/hosts/{HOST}", "steve"))[0] == 404  # not steve's host
    assert (await api.call("GET", "/v1/hosts", "steve")) == (200, [])
    assert (await api.call("DELETE", f"/v1/hosts/{HOST}"))[0] == 204  # inactive: a no-op


async def test_hosts_show_the_seeds_fields_and_an_unauthorized_host_hides_its_liveness(api: Api) -> None:
    status, hosts = await api.call("GET", "/v1/hosts")
    assert status == 200
    by_id = {host["id"]: host for host in hosts}
    assert by_id[HOST] == {
        "id": HOST,
        "state": "inactive",
        "info": {
            "hostname": "web1",
            "os_family": None,
            "arch": None,
            "os_info": None,
            "responding": False,
            "last_response_time": None,
        },
        "roles": [],
        "role_status": "ok",
    }
    hidden = by_id[JOINED]
    assert set(hidden) == {"id", "state", "info", "roles"} and hidden["state"] == "inactive"
    assert set(hidden["info"]) == {"hostname", "os_family", "arch", "os_info"}
    assert (await api.call("GET", f"/v1/hosts/{JOINED}")) == (200, hidden)


async def test_assigning_a_role_authorizes_the_host(api: Api) -> None:
    assert (await api.call("POST", "/v1/roles/roleA/versions", json=ROLE))[0] == 201
    status, host = await api.call("PUT", f"/v1/hosts/{JOINED}/roles/roleA")
    assert status == 200
    assert host["roles"] == ["roleA"] and host["state"] == "activating" and host["role_status"] == "converging"
    assert host["info"]["responding"] is True
    assert (await api.store.collection("resources").get(JOINED))["authorized"] is True


async def test_apply_and_job_finished_are_safe_to_redeliver(api: Api) -> None:
    assert (await api.call("POST", "/v1/roles/roleA/versions", json=ROLE))[0] == 201
    manager = api.roles.manager
    apply = Envelope(ApplyRole(host_id=HOST, name="roleA", requested_by="admin"))
    await deliver(manager.apply_role, apply)
    await deliver(manager.apply_role, apply)
    hosts = api.store.collection("role_hosts")
    entry = (await hosts.get(HOST))["roles"]["roleA"]
    job_id = entry["job_id"]
    assert job_id is not None
    assert await api.store.collection("jobs").count({"pinned_resource": HOST}) == 1
    finished = Envelope(
        JobFinished(job_id=job_id, origin="role-manager", state="succeeded", exit_code=0), resource_id=HOST
    )
    await deliver(manager.job_finished, finished)
    after = await hosts.get(HOST)
    await deliver(manager.job_finished, finished)
    assert (await hosts.get(HOST))["version"] == after["version"]  # the second changed nothing
    assert after["roles"]["roleA"]["version"] == "1.0" and after["roles"]["roleA"]["status"] == "ok"
    status, detail = await api.call("GET", f"/v1/hosts/{HOST}/roles/roleA")
    assert status == 200 and detail["last_job_id"] == job_id and detail["version"] == "1.0"


async def test_a_role_manager_that_died_before_asking_for_its_job_asks_at_the_next_sweep(api: Api) -> None:
    assert (await api.call("POST", "/v1/roles/roleA/versions", json=ROLE))[0] == 201
    manager = api.roles.manager
    hosts = api.store.collection("role_hosts")
    # As if killed between writing the change's job id and asking the job manager for the job.
    host = await manager._host(HOST)
    host = await hosts.update(HOST, {"roles": domain.apply(host, "roleA", "1.0", "admin")})
    change = domain.next_change(host, 0)
    await hosts.update(
        HOST, {"roles": domain.start(host, change, "77777777-2222-4333-8444-555555555555"), "needs_work": True}
    )
    await manager.sweep()
    await manager.sweep()
    jobs = api.store.collection("jobs")
    job = await jobs.get("77777777-2222-4333-8444-555555555555")
    assert job is not None and job["origin"] == "role-manager" and job["pinned_resource"] == HOST
    assert "SKYBUS_ROLE_ACTION=install" in job["command"]
    assert await jobs.count({}) == 1
