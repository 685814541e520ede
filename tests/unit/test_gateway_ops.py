"""Operations on the gateway: ``/metrics``, ``/health/live`` and ``/health/ready``, without a token."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from services.gateway.context import BUS
from tests.unit.test_gateway_jobs import Api, api  # noqa: F401


async def scrape(api: Api) -> dict[str, list]:  # noqa: F811
    response = await api.client.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    families = text_string_to_metric_families(await response.text())
    return {family.name: family.samples for family in families}


def value(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def test_metrics_count_requests_by_route_and_status_and_jobs_by_state(api: Api) -> None:  # noqa: F811
    before = await scrape(api)
    route = "/api/job/job_info/{job_id}"
    seen = value(before["skybus_http_requests"], "skybus_http_requests_total", route=route, status="404")
    job_id = await api.run()
    await api.call("POST", "/api/job/cancel", json={"job_id": job_id})
    missing = "/api/job/job_info/00000000-0000-4000-8000-000000000000"
    assert (await api.call("GET", missing))[0] == 404

    after = await scrape(api)
    requests = after["skybus_http_requests"]
    assert value(requests, "skybus_http_requests_total", route=route, status="404") == seen + 1
    assert value(requests, "skybus_http_requests_total", route="/api/job/run", method="POST", status="201") == 1
    latency = after["skybus_http_request_seconds"]
    assert value(latency, "skybus_http_request_seconds_count", route="/api/job/run") == 1
    jobs = after["skybus_jobs"]
    assert value(jobs, "skybus_jobs", state="cancelled") == 1 and value(jobs, "skybus_jobs", state="running") == 0
    # Unauthenticated calls count too, under their route; unknown paths under one label.
    assert (await api.client.get("/api/list_jobs")).status == 401
    assert (await api.client.get("/no/such/path")).status in (401, 404)
    last = (await scrape(api))["skybus_http_requests"]
    assert value(last, "skybus_http_requests_total", route="/api/list_jobs", status="401") == 1
    assert value(last, "skybus_http_requests_total", route="unmatched") == 1


async def test_liveness_and_readiness_need_no_token(api: Api) -> None:  # noqa: F811
    live = await api.client.get("/health/live")
    assert live.status == 200 and await live.json() == {"status": "ok"}
    ready = await api.client.get("/health/ready")
    assert ready.status == 200 and await ready.json() == {"status": "ok"}
    assert (await api.client.get("/health")).status == 200  # seed 004's stays


async def test_readiness_is_503_with_the_reason_when_the_store_is_closed(api: Api) -> None:  # noqa: F811
    await api.store.close()
    ready = await api.client.get("/health/ready")
    body = await ready.json()
    assert ready.status == 503 and body["status"] == "unavailable" and body["reason"].startswith("store: ")
    assert (await api.client.get("/health/live")).status == 200


async def test_readiness_is_503_with_the_reason_when_the_bus_is_closed(api: Api) -> None:  # noqa: F811
    await api.client.app[BUS].close()
    ready = await api.client.get("/health/ready")
    body = await ready.json()
    assert ready.status == 503 and body["reason"].startswith("bus: ")
