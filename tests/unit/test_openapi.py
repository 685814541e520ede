"""``/openapi.json`` is valid OpenAPI 3.1, documents every route of the app and every query parameter
its handler reads, and says what the seeds say (success codes, error codes, error shapes)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import validate

from services.gateway.openapi import PATH_PARAMETERS, build_openapi, documented_routes
from tests.unit.test_gateway_roles import Api, api  # noqa: F401

Spec = dict[str, Any]


@pytest.fixture
async def spec(api: Api) -> Spec:  # noqa: F811
    response = await api.client.get("/openapi.json")
    assert response.status == 200
    return await response.json()


def app_of(api: Api) -> web.Application:  # noqa: F811
    return api.client.app  # type: ignore[return-value]


async def test_the_document_is_valid_openapi_3_1(spec: Spec) -> None:
    assert spec["openapi"].startswith("3.1")
    validate(spec)


async def test_every_route_is_documented_with_its_path_parameters(api: Api, spec: Spec) -> None:  # noqa: F811
    undocumented, unknown_parameters = [], []
    for method, path, _, doc in documented_routes(app_of(api)):
        operation = spec["paths"].get(path, {}).get(method.lower())
        if doc is None or operation is None:
            undocumented.append(f"{method} {path}")
            continue
        named = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
        in_template = set(re.findall(r"\{([^}]+)\}", path))
        assert named == in_template, f"{method} {path}"
        unknown_parameters += [name for name in in_template if name not in PATH_PARAMETERS]
    assert undocumented == []
    assert unknown_parameters == []


QUERY_READ = re.compile(
    r"""query(?:\.get)?\(\s*["'](\w+)["']|query\[\s*["'](\w+)["']\s*\]|["'](\w+)["']\s+in\s+(?:request\.)?query"""
)


def query_parameters_read(function: Callable[..., Any], seen: set[Any] | None = None) -> set[str]:
    """The query parameters a handler reads by name, itself or in the gateway's functions it calls."""
    seen = set() if seen is None else seen
    seen.add(function)
    names = {next(filter(None, groups)) for groups in QUERY_READ.findall(inspect.getsource(function))}
    module = inspect.getmodule(function)
    for name in function.__code__.co_names:
        called = getattr(module, name, None)
        if inspect.isfunction(called) and called.__module__.startswith("services.gateway") and called not in seen:
            names |= query_parameters_read(called, seen)
    return names


async def test_every_query_parameter_a_handler_reads_is_documented(api: Api, spec: Spec) -> None:  # noqa: F811
    missing = []
    for method, path, route, _ in documented_routes(app_of(api)):
        operation = spec["paths"][path][method.lower()]
        documented = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "query"}
        missing += [f"{method} {path} ?{name}" for name in query_parameters_read(route.handler) - documented]
    assert missing == []


def test_the_query_scan_sees_what_handlers_read() -> None:
    """The scan above would pass vacuously if it found nothing: it finds these."""
    from services.gateway import events_api, jobs_api

    assert {"wait"} <= query_parameters_read(jobs_api.get_job_info)
    assert {"state", "user", "limit", "cursor", "detail"} <= query_parameters_read(jobs_api.list_jobs)
    assert {"job_id"} <= query_parameters_read(jobs_api.cancel_job)
    assert {"topic", "last_event_id"} <= query_parameters_read(events_api.events)


# What each seed says of some endpoints: (method, path, success, error statuses it names).
SEEDS: list[tuple[str, str, int, set[int]]] = [
    # 000: resources
    ("POST", "/api/resources", 200, {400}),
    ("GET", "/api/resources", 200, {404}),  # ?hostname=
    ("GET", "/api/resources/{resource_id}", 200, {404}),
    ("DELETE", "/api/resources/{resource_id}", 200, {404}),
    # 001: jobs
    ("POST", "/api/job/run", 201, {400}),
    ("GET", "/api/job/job_info/{job_id}", 200, {400, 404, 410}),
    ("GET", "/api/list_jobs", 200, {400, 403}),
    ("GET", "/api/job/list_jobs", 200, {400, 403}),
    ("POST", "/api/job/cancel", 200, {400, 403}),
    ("DELETE", "/api/job/delete", 200, {400, 403}),
    # 002: roles and hosts (issue 12: the versions POST is 201, a host's DELETE 204)
    ("GET", "/v1/roles", 200, set()),
    ("PUT", "/v1/roles/{role_name}", 200, set()),
    ("POST", "/v1/roles/{role_name}/versions", 201, set()),
    ("DELETE", "/v1/hosts/{host_id}", 204, set()),
    ("PUT", "/v1/hosts/{host_id}/roles/{role_name}", 200, set()),
    # 003: the resource pool
    ("POST", "/nodes/{node_id}/reboot", 204, set()),
    ("POST", "/nodes/{node_id}/containers", 204, set()),
    ("DELETE", "/nodes/{node_id}/containers/{container_id}/jobs/{job_id}", 204, set()),
    ("POST", "/nodes/{node_id}/containers/{container_id}/processes", 202, set()),
    # 004: content
    ("POST", "/resources", 201, {400}),
    ("GET", "/resources/contents/{path}", 200, {404}),
    ("GET", "/resources/metadata/{path}", 200, {404}),
    ("PUT", "/resources/{path}", 202, {400, 404}),
    ("PATCH", "/resources/{path}", 202, set()),
    ("DELETE", "/resources/{path}", 202, set()),
]


@pytest.mark.parametrize(("method", "path", "success", "errors"), SEEDS, ids=[f"{m} {p}" for m, p, _, _ in SEEDS])
async def test_the_documented_statuses_are_the_seeds(
    spec: Spec, method: str, path: str, success: int, errors: set[int]
) -> None:
    responses = spec["paths"][path][method.lower()]["responses"]
    assert [code for code in responses if code.startswith("2")] == [str(success)]
    assert {str(code) for code in errors} <= set(responses)
    assert "401" in responses  # every one of them needs a token


def error_schema(spec: Spec, path: str, method: str, status: int) -> Any:
    return spec["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]


async def test_errors_have_the_shape_of_their_seed(spec: Spec) -> None:
    assert error_schema(spec, "/api/job/job_info/{job_id}", "get", 410) == {"$ref": "#/components/schemas/Error"}
    assert error_schema(spec, "/v1/hosts/{host_id}", "get", 404) == {"$ref": "#/components/schemas/Error"}
    seed_004 = {"type": "array", "items": {"$ref": "#/components/schemas/TimestampedError"}}
    assert error_schema(spec, "/resources/metadata/{path}", "get", 404) == seed_004
    timestamped = spec["components"]["schemas"]["TimestampedError"]
    assert set(timestamped["required"]) == {"timestamp", "status", "error", "message", "path"}


async def test_query_parameters_bodies_and_uploads_are_typed(spec: Spec) -> None:
    listing = {p["name"]: p for p in spec["paths"]["/api/list_jobs"]["get"]["parameters"]}
    assert listing["state"]["schema"] == {"type": "array", "items": {"$ref": "#/components/schemas/JobState"}}
    assert listing["state"]["explode"] is False  # state=pending,running
    assert listing["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
    assert not any(p["required"] for p in listing.values())
    wait = spec["paths"]["/api/job/job_info/{job_id}"]["get"]["parameters"]
    assert {"name": "job_id", "in": "path"}.items() <= wait[0].items() and wait[0]["schema"]["format"] == "uuid"
    assert wait[1]["name"] == "wait" and wait[1]["schema"]["maximum"] == 60

    run = spec["paths"]["/api/job/run"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body = spec["components"]["schemas"][run["$ref"].rsplit("/", 1)[-1]]
    assert body["required"] == ["command"] and body["additionalProperties"] is False

    upload = spec["paths"]["/resources"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["required"] == ["resource", "resourceInfo"]
    assert upload["schema"]["properties"]["resource"]["format"] == "binary"
    assert upload["encoding"] == {"resourceInfo": {"contentType": "application/json"}}
    info = spec["components"]["schemas"]["ResourceInfoPart"]
    assert info["properties"]["resourceType"]["enum"] == ["Active", "MSP", "Static"]
    data = spec["paths"]["/api/data"]["post"]["requestBody"]["content"]
    assert set(data) == {"multipart/form-data", "application/octet-stream"}
    events = {p["name"]: p["in"] for p in spec["paths"]["/api/events"]["get"]["parameters"]}
    assert events == {"topic": "query", "last_event_id": "query", "token": "query", "Last-Event-ID": "header"}


async def test_operation_ids_are_unique(spec: Spec) -> None:
    ids = [operation["operationId"] for item in spec["paths"].values() for operation in item.values()]
    assert len(ids) == len(set(ids))


def test_an_unmarked_route_is_left_out_and_a_marked_one_is_in() -> None:
    """The walk above fails on an unmarked route: build_openapi alone skips it silently."""

    async def bare(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/bare", bare)
    assert build_openapi(app, title="t", version="0")["paths"] == {}
    assert [doc for *_, doc in documented_routes(app)] == [None]
