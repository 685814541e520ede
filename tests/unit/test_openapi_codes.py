"""``/openapi.json`` says the status code each route really answers with, success and error, and its
answers fit the schemas it documents for them (checked with jsonschema, formats included)."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from tests.content_stack import info_for, resource_form
from tests.unit.test_gateway_roles import HOST, ROLE, Api, api  # noqa: F401

MISSING = "00000000-0000-4000-8000-000000000000"

# (method, documented path, concrete path, request options): each answers as the document says.
CALLS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("POST", "/v1/roles/{role_name}/versions", "/v1/roles/roleA/versions", {"json": ROLE}),
    (
        "POST",
        "/v1/roles/{role_name}/versions",
        "/v1/roles/roleA/versions",
        {"json": {**ROLE, "install": "false"}},
    ),  # 409
    ("GET", "/v1/roles", "/v1/roles", {}),
    ("GET", "/v1/roles/{role_name}", "/v1/roles/roleA", {}),
    ("GET", "/v1/roles/{role_name}", "/v1/roles/nope", {}),
    ("GET", "/v1/roles/{role_name}/versions", "/v1/roles/roleA/versions", {}),
    ("PUT", "/v1/roles/{role_name}", "/v1/roles/roleA", {"json": {"active_version": ROLE["version"]}}),
    ("PUT", "/v1/roles/{role_name}", "/v1/roles/roleA", {"json": {"active": 1}}),
    ("GET", "/v1/hosts", "/v1/hosts", {}),
    ("GET", "/v1/hosts/{host_id}", f"/v1/hosts/{HOST}", {}),
    ("GET", "/v1/hosts/{host_id}", "/v1/hosts/nope", {}),
    ("PUT", "/v1/hosts/{host_id}/roles/{role_name}", f"/v1/hosts/{HOST}/roles/roleA", {}),
    ("GET", "/v1/hosts/{host_id}/roles/{role_name}", f"/v1/hosts/{HOST}/roles/roleA", {}),
    ("DELETE", "/v1/hosts/{host_id}", f"/v1/hosts/{HOST}", {}),
    ("GET", "/v1/roles", "/v1/roles", {"user": None}),
    ("GET", "/v1/roles", "/v1/roles", {"user": "steve"}),
    ("PUT", "/v1/roles/{role_name}", "/v1/roles/roleA", {"user": "steve", "json": {"active_version": "1.0"}}),
    ("POST", "/api/job/run", "/api/job/run", {"json": {"command": "true"}}),
    ("POST", "/api/job/run", "/api/job/run", {"json": {"command": ""}}),
    ("GET", "/api/job/job_info/{job_id}", "/api/job/job_info/not-a-uuid", {}),
    ("GET", "/api/job/job_info/{job_id}", f"/api/job/job_info/{MISSING}", {}),
    ("GET", "/api/list_jobs", "/api/list_jobs?detail=1&limit=5", {}),
    ("GET", "/api/job/list_jobs", "/api/job/list_jobs?state=bogus", {}),
    ("GET", "/api/job/list_jobs", "/api/job/list_jobs?user=admin", {"user": "steve"}),
    ("POST", "/api/job/cancel", "/api/job/cancel", {"json": {"job_id": MISSING}}),
    ("POST", "/api/data", "/api/data?name=notes.txt", {"data": b"some bytes"}),
    ("GET", "/api/data", "/api/data", {}),
    ("GET", "/api/data/{item_id}/info", f"/api/data/{MISSING}/info", {}),
    ("POST", "/resources", "/resources", {"data": resource_form(info_for("add.wl"))}),
    ("POST", "/resources", "/resources", {"data": resource_form(info_for("bad.wl", resourceType="Odd"))}),
    ("GET", "/resources", "/resources", {}),
    ("GET", "/resources/metadata/{path}", "/resources/metadata/add.wl", {}),
    ("GET", "/resources/metadata/{path}", "/resources/metadata/nope.wl", {}),
    ("GET", "/api/resources", "/api/resources", {}),
    ("GET", "/api/resources", "/api/resources?hostname=web1", {}),
    ("GET", "/api/resources/{resource_id}", f"/api/resources/{HOST}", {}),
    ("GET", "/api/resources/{resource_id}", "/api/resources/xyz", {}),
    ("GET", "/nodes", "/nodes", {}),
    ("GET", "/api/tokens", "/api/tokens?join=1", {}),
    ("GET", "/api/whoami", "/api/whoami", {}),
    ("GET", "/health", "/health", {}),
    ("GET", "/health/live", "/health/live", {}),
    ("GET", "/health/ready", "/health/ready", {}),
    ("GET", "/metrics", "/metrics", {}),
]


async def call(api: Api, method: str, path: str, user: str | None = "admin", **options: Any) -> tuple[int, Any]:  # noqa: F811
    headers = {"Authorization": f"Bearer {api.tokens[user]}"} if user else {}
    response = await api.client.request(method, path, headers=headers, **options)
    body = await response.json() if response.content_type == "application/json" else None
    return response.status, body


async def test_documented_codes_are_the_real_ones_and_bodies_fit_their_schemas(api: Api) -> None:  # noqa: F811
    status, spec = await call(api, "GET", "/openapi.json", user=None)
    assert status == 200
    seen = set()
    for method, template, path, options in CALLS:
        responses = spec["paths"][template][method.lower()]["responses"]
        real, body = await call(api, method, path, **options)
        seen.add(real)
        assert str(real) in responses, f"{method} {path}: answered {real}, documented {sorted(responses)}: {body}"
        schema = responses[str(real)].get("content", {}).get("application/json", {}).get("schema")
        if schema is not None:
            validator = Draft202012Validator(
                {**schema, "components": spec["components"]}, format_checker=Draft202012Validator.FORMAT_CHECKER
            )
            problems = [error.message for error in validator.iter_errors(body)]
            assert problems == [], f"{method} {path} → {real}: {body} does not fit {schema}"
    assert {200, 201, 204, 400, 401, 403, 404, 409} <= seen  # the calls above reach each kind of answer
