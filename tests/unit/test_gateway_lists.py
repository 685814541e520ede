"""Lists people can read: ``list_jobs?detail=1`` and ``GET /api/data``."""

from __future__ import annotations

from tests.content_stack import ContentStack, content_stack_fixture  # noqa: F401
from tests.unit.test_gateway_jobs import Api, api  # noqa: F401


async def test_list_jobs_keeps_job_ids_and_adds_rows_with_detail(api: Api) -> None:  # noqa: F811
    first = await api.run(command="echo one")
    second = await api.run(command="echo two")
    await api.call("POST", "/api/job/cancel", json={"job_id": first})

    status, plain = await api.call("GET", "/api/list_jobs")
    assert status == 200 and set(plain) == {"job_ids", "next_cursor"} and plain["job_ids"] == [second, first]

    status, detailed = await api.call("GET", "/api/list_jobs?detail=1")
    assert status == 200 and detailed["job_ids"] == [second, first]
    rows = {row["job_id"]: row for row in detailed["jobs"]}
    assert rows[first]["state"] == "cancelled" and rows[first]["command"] == "echo one"
    assert rows[second]["command"] == "echo two" and rows[second]["user"] == "steve"
    assert rows[first]["created_at"] and rows[first]["finished_at"]
    assert {"hostname", "resource_id", "exit_code"} <= set(rows[second])
    status, cancelled = await api.call("GET", "/api/list_jobs?detail=1&state=cancelled")
    assert [row["job_id"] for row in cancelled["jobs"]] == [first]


async def test_get_api_data_lists_the_callers_files_newest_first(content_stack: ContentStack) -> None:
    client = content_stack.client
    ids = []
    for name in ("a.txt", "b.txt"):
        response = await client.post("/api/data", data=b"x", params={"name": name}, headers=content_stack.steve)
        ids.append((await response.json())["id"])
    await client.post("/api/data", data=b"y", params={"name": "hers"}, headers=content_stack.alice)

    response = await client.get("/api/data", headers=content_stack.steve)
    assert response.status == 200
    items = (await response.json())["items"]
    assert [item["id"] for item in items] == ids[::-1]
    assert [item["name"] for item in items] == ["b.txt", "a.txt"] and items[0]["size"] == 1
    assert len((await (await client.get("/api/data?limit=1", headers=content_stack.steve)).json())["items"]) == 1
    everyone = (await (await client.get("/api/data/", headers=content_stack.admin)).json())["items"]
    assert {item["owner"] for item in everyone} >= {"steve", "alice"}
    for bad in ("limit=0", "limit=x"):
        assert (await client.get(f"/api/data?{bad}", headers=content_stack.steve)).status == 400
