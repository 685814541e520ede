"""``/openapi.json`` says the status code each route really answers with on success."""

from __future__ import annotations

from typing import Any

from tests.unit.test_gateway_roles import HOST, ROLE, Api, api  # noqa: F401

# (method, documented path, concrete path, request options): each succeeds against the roles stack.
CALLS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("POST", "/v1/roles/{role_name}/versions", "/v1/roles/roleA/versions", {"json": ROLE}),
    ("GET", "/v1/roles", "/v1/roles", {}),
    ("GET", "/v1/roles/{role_name}", "/v1/roles/roleA", {}),
    ("GET", "/v1/roles/{role_name}/versions", "/v1/roles/roleA/versions", {}),
    ("PUT", "/v1/roles/{role_name}", "/v1/roles/roleA", {"json": {"active_version": ROLE["version"]}}),
    ("GET", "/v1/hosts", "/v1/hosts", {}),
    ("GET", "/v1/hosts/{host_id}", f"/v1/hosts/{HOST}", {}),
    ("DELETE", "/v1/hosts/{host_id}", f"/v1/hosts/{HOST}", {}),
    ("GET", "/api/whoami", "/api/whoami", {}),
    ("GET", "/api/data", "/api/data", {}),
    ("GET", "/api/resources", "/api/resources", {}),
    ("GET", "/health", "/health", {}),
    ("GET", "/health/live", "/health/live", {}),
    ("GET", "/health/ready", "/health/ready", {}),
    ("GET", "/metrics", "/metrics", {}),
]


async def test_documented_success_codes_are_the_real_ones(api: Api) -> None:  # noqa: F811
    status, spec = await api.call("GET", "/openapi.json")
    assert status == 200
    for method, template, path, options in CALLS:
        documented = spec["paths"][template][method.lower()]["responses"]
        real, body = await api.call(method, path, **options)
        assert str(real) in documented, f"{method} {path}: answered {real}, documented {sorted(documented)}: {body}"
