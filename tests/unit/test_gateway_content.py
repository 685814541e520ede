"""Seed 004 through the gateway: every endpoint, and every error in the seed's own body."""

from __future__ import annotations

import json

import aiohttp
import pytest

from services.gateway import content_api
from tests.content_stack import (
    LIMIT,
    ContentStack,
    content_stack_fixture,  # noqa: F401
    expect_seed_error,
    info_for,
    resource_form,
)

NESTED = "apps/math/add.wl"
BAD_TYPE = "The resourceType is not one of Active, MSP, or Static."


async def deploy(stack: ContentStack, path: str = NESTED, content: bytes = b"Plus[5,x]", **fields) -> str:
    response = await stack.post(info_for(path, **fields), content)
    assert response.status == 201, await response.text()
    return response.headers["X-Skybus-Id"]


async def test_health_check_needs_no_token(content_stack: ContentStack) -> None:
    response = await content_stack.client.get("/resources/.applicationserver/info")
    assert response.status == 200
    assert await response.json() == {"name": "resource-manager", "version": "0.1.0"}


async def test_post_deploys_a_nested_resource(content_stack: ContentStack) -> None:
    response = await content_stack.post(info_for(NESTED))
    assert response.status == 201
    assert response.content_type == "application/json"
    assert await response.json() == {"resourcePath": NESTED}
    item_id = response.headers["X-Skybus-Id"]
    document = await content_stack.manager.contents.get(item_id)
    assert document is not None and document["path"] == NESTED and document["owner"] == "steve"
    assert await content_stack.blob_ids() == [document["blob_id"]]


async def test_get_lists_the_callers_resources_keyed_by_path(content_stack: ContentStack) -> None:
    assert await (await content_stack.client.get("/resources", headers=content_stack.steve)).json() == {}
    await deploy(content_stack, NESTED)
    await deploy(content_stack, "site/index.html", resourceType="Static", poolName=None, timeout=12)
    alices = await content_stack.post(info_for("alice.wl"), headers=content_stack.alice)
    assert alices.status == 201
    response = await content_stack.client.get("/resources", headers=content_stack.steve)
    assert response.status == 200
    assert await response.json() == {
        NESTED: {
            "resourcePath": NESTED,
            "resourceType": "Active",
            "mimeType": "Automatic",
            "poolName": "Public",
            "timeout": None,
        },
        "site/index.html": {
            "resourcePath": "site/index.html",
            "resourceType": "Static",
            "mimeType": "Automatic",
            "poolName": None,
            "timeout": 12,
        },
    }
    everything = await (await content_stack.client.get("/resources/", headers=content_stack.admin)).json()
    assert sorted(everything) == ["alice.wl", NESTED, "site/index.html"]


async def test_contents_are_the_raw_bytes_with_the_mime_type(content_stack: ContentStack) -> None:
    item_id = await deploy(content_stack, NESTED, b"Plus[5,x]")
    await deploy(content_stack, "site/index.html", b"<p>hi</p>", resourceType="Static")
    await deploy(content_stack, "raw/data", b"\x00\x01", mimeType="text/csv")
    response = await content_stack.client.get(f"/resources/contents/{NESTED}", headers=content_stack.steve)
    assert response.status == 200 and await response.read() == b"Plus[5,x]"
    assert response.headers["Content-Type"] == "application/vnd.wolfram.mathematica.package"
    assert response.headers["Content-Length"] == "9" and response.headers["X-Skybus-Id"] == item_id
    html = await content_stack.client.get("/resources/contents/site/index.html", headers=content_stack.steve)
    assert html.headers["Content-Type"] == "text/html" and await html.read() == b"<p>hi</p>"
    csv = await content_stack.client.get("/resources/contents/raw/data", headers=content_stack.steve)
    assert csv.headers["Content-Type"] == "text/csv" and await csv.read() == b"\x00\x01"
    head = await content_stack.client.head(f"/resources/contents/{NESTED}", headers=content_stack.steve)
    assert head.status == 200 and head.headers["Content-Length"] == "9" and await head.read() == b""
    # The connection is still good after a HEAD (no stray body on it).
    again = await content_stack.client.get(f"/resources/contents/{NESTED}", headers=content_stack.steve)
    assert await again.read() == b"Plus[5,x]"


async def test_an_empty_file_is_a_resource_too(content_stack: ContentStack) -> None:
    await deploy(content_stack, "empty.txt", b"")
    response = await content_stack.client.get("/resources/contents/empty.txt", headers=content_stack.steve)
    assert response.status == 200 and await response.read() == b"" and response.headers["Content-Length"] == "0"


async def test_metadata_is_the_resource_info(content_stack: ContentStack) -> None:
    item_id = await deploy(content_stack, NESTED, timeout=None)
    response = await content_stack.client.get(f"/resources/metadata/{NESTED}", headers=content_stack.steve)
    assert response.status == 200 and response.headers["X-Skybus-Id"] == item_id
    assert await response.json() == {
        "resourcePath": NESTED,
        "poolName": "Public",
        "resourceType": "Active",
        "timeout": None,
        "mimeType": "Automatic",
    }


@pytest.mark.parametrize("route", ["contents", "metadata"])
async def test_unknown_resource_is_404(content_stack: ContentStack, route: str) -> None:
    response = await content_stack.client.get(f"/resources/{route}/add.wl", headers=content_stack.steve)
    await expect_seed_error(response, 404, "Not Found", "Unknown resource", f"/resources/{route}/add.wl")


async def test_invalid_resource_info_json_is_400(content_stack: ContentStack) -> None:
    # The seed's own sample body, with its stray quote after null.
    broken = '{\n "resourcePath": "add.wl",\n "resourceType": "Active",\n "timeout": null"\n}'
    response = await content_stack.post(broken)
    await expect_seed_error(response, 400, "Bad Request", "Expected the request body in JSON format.", "/resources")
    assert await content_stack.blob_ids() == [] and await content_stack.manager.contents.count() == 0


@pytest.mark.parametrize("value", ["Passive", None, 3])
async def test_wrong_or_null_resource_type_is_400(content_stack: ContentStack, value) -> None:
    response = await content_stack.post(info_for(resourceType=value))
    await expect_seed_error(response, 400, "Bad Request", BAD_TYPE, "/resources")
    assert await content_stack.blob_ids() == []


async def test_missing_resource_path_or_pool_is_400(content_stack: ContentStack) -> None:
    no_path = info_for()
    del no_path["resourcePath"]
    response = await content_stack.post(no_path)
    await expect_seed_error(response, 400, "Bad Request", "The resourcePath is required.", "/resources")
    response = await content_stack.post(info_for(poolName=None))
    message = "The poolName is required unless the resourceType is Static."
    await expect_seed_error(response, 400, "Bad Request", message, "/resources")


@pytest.mark.parametrize("path", ["../etc/passwd", "/abs.wl", "a//b", "tab\there", "x" * 1025, ""])
async def test_bad_paths_are_400(content_stack: ContentStack, path: str) -> None:
    response = await content_stack.post(info_for(path))
    assert response.status == 400
    body = await response.json()
    assert body[0]["message"].startswith("The resourcePath is not valid:") and body[0]["path"] == "/resources"
    assert await content_stack.blob_ids() == []


async def test_missing_parts_and_non_multipart_bodies_are_400(content_stack: ContentStack) -> None:
    no_file = await content_stack.post(info_for(), content=None)
    await expect_seed_error(
        no_file, 400, "Bad Request", "Required request part 'resource' is not present", "/resources"
    )
    no_info = await content_stack.post(None)
    await expect_seed_error(
        no_info, 400, "Bad Request", "Required request part 'resourceInfo' is not present", "/resources"
    )
    as_json = await content_stack.client.post("/resources", json=info_for(), headers=content_stack.steve)
    await expect_seed_error(as_json, 400, "Bad Request", "Current request is not a multipart request", "/resources")
    assert await content_stack.blob_ids() == []


async def test_duplicate_post_is_409_and_keeps_the_first(content_stack: ContentStack) -> None:
    await deploy(content_stack, NESTED, b"first")
    response = await content_stack.post(info_for(NESTED), b"second")
    message = "A resource with this resourcePath already exists."
    await expect_seed_error(response, 409, "Conflict", message, "/resources")
    contents = await content_stack.client.get(f"/resources/contents/{NESTED}", headers=content_stack.steve)
    assert await contents.read() == b"first"
    assert len(await content_stack.blob_ids()) == 1  # the refused upload was deleted


async def test_an_upload_over_the_limit_is_413_and_leaves_nothing(content_stack: ContentStack) -> None:
    response = await content_stack.post(info_for(), b"x" * (LIMIT + 1))
    message = f"The upload is larger than the limit of {LIMIT} bytes."
    await expect_seed_error(response, 413, "Request Entity Too Large", message, "/resources")
    assert await content_stack.blob_ids() == [] and content_stack.temp_files() == []
    assert await content_stack.manager.contents.count() == 0


async def test_a_declared_length_over_the_limit_is_413_before_reading(content_stack: ContentStack) -> None:
    headers = {**content_stack.steve, "Content-Type": "multipart/form-data; boundary=x"}
    response = await content_stack.client.post("/resources", data=b"x" * (LIMIT + 1024 * 1024 + 1), headers=headers)
    assert response.status == 413 and (await response.json())[0]["status"] == 413


async def put(stack: ContentStack, path: str, info, content: bytes | None = b"Plus[3,x]", *, headers=None):
    form = resource_form(info, content, filename="addOne.wl")
    return await stack.client.put(f"/resources/{path}", data=form, headers=headers or stack.steve)


async def test_put_replaces_content_and_metadata(content_stack: ContentStack) -> None:
    item_id = await deploy(content_stack, NESTED, b"Plus[5,x]")
    before = await content_stack.blob_ids()
    response = await put(content_stack, NESTED, info_for(NESTED, resourceType="MSP", poolName="MSP", timeout=60))
    assert response.status == 202 and await response.read() == b""
    contents = await content_stack.client.get(f"/resources/contents/{NESTED}", headers=content_stack.steve)
    assert await contents.read() == b"Plus[3,x]" and contents.headers["X-Skybus-Id"] == item_id
    metadata = await (
        await content_stack.client.get(f"/resources/metadata/{NESTED}", headers=content_stack.steve)
    ).json()
    assert metadata == {**info_for(NESTED), "resourceType": "MSP", "poolName": "MSP", "timeout": 60}
    after = await content_stack.blob_ids()
    assert len(after) == 1 and after != before  # the old blob is gone


async def test_put_errors(content_stack: ContentStack) -> None:
    await deploy(content_stack, "add.wl")
    unknown = await put(content_stack, "addOne.wl", info_for("addOne.wl"))
    await expect_seed_error(unknown, 404, "Not Found", "Unknown resource", "/resources/addOne.wl")
    moved = await put(content_stack, "add.wl", info_for("addOne.wl"))
    await expect_seed_error(moved, 400, "Bad Request", "resourcePath cannot be modified", "/resources/add.wl")
    no_file = await put(content_stack, "add.wl", info_for("add.wl"), None)
    assert no_file.status == 400
    null_type = await put(content_stack, "add.wl", info_for("add.wl", resourceType=None))
    await expect_seed_error(null_type, 400, "Bad Request", BAD_TYPE, "/resources/add.wl")
    theirs = await put(content_stack, "add.wl", info_for("add.wl"), headers=content_stack.alice)
    await expect_seed_error(theirs, 403, "Forbidden", "The resource belongs to another user.", "/resources/add.wl")
    assert len(await content_stack.blob_ids()) == 1  # every refused upload was deleted
    contents = await content_stack.client.get("/resources/contents/add.wl", headers=content_stack.steve)
    assert await contents.read() == b"Plus[5,x]"


async def patch(
    stack: ContentStack, path: str, info=None, content: bytes | None = None, *, headers=None, multipart: bool = True
):
    form = aiohttp.FormData(default_to_multipart=multipart)
    if content is not None:
        form.add_field("resource", content, filename="addNew.wl")
    if info is not None:
        form.add_field("resourceInfo", json.dumps(info))
    if content is None and info is None:
        form.add_field("unrelated", "x")
    return await stack.client.patch(f"/resources/{path}", data=form, headers=headers or stack.steve)


async def test_patch_the_file_alone_keeps_the_metadata(content_stack: ContentStack) -> None:
    await deploy(content_stack, NESTED, timeout=45)
    response = await patch(content_stack, NESTED, content=b"Plus[3,x]")
    assert response.status == 202
    contents = await content_stack.client.get(f"/resources/contents/{NESTED}", headers=content_stack.steve)
    assert await contents.read() == b"Plus[3,x]"
    metadata = await (
        await content_stack.client.get(f"/resources/metadata/{NESTED}", headers=content_stack.steve)
    ).json()
    assert metadata == info_for(NESTED, timeout=45)
    assert len(await content_stack.blob_ids()) == 1


async def test_patch_some_fields_keeps_the_others_and_the_content(content_stack: ContentStack) -> None:
    await deploy(content_stack, NESTED, b"Plus[5,x]", timeout=45)
    response = await patch(content_stack, NESTED, {"resourcePath": NESTED, "mimeType": "text/plain"})
    assert response.status == 202
    metadata = await (
        await content_stack.client.get(f"/resources/metadata/{NESTED}", headers=content_stack.steve)
    ).json()
    assert metadata == info_for(NESTED, timeout=45, mimeType="text/plain")
    contents = await content_stack.client.get(f"/resources/contents/{NESTED}", headers=content_stack.steve)
    assert await contents.read() == b"Plus[5,x]" and contents.headers["Content-Type"] == "text/plain"
    # A form without a file may come urlencoded, as most clients send it.
    reset = await patch(content_stack, NESTED, {"resourcePath": NESTED, "timeout": None}, multipart=False)
    assert reset.status == 202
    metadata = await (
        await content_stack.client.get(f"/resources/metadata/{NESTED}", headers=content_stack.steve)
    ).json()
    assert metadata["timeout"] is None and metadata["mimeType"] == "text/plain"


async def test_patch_errors(content_stack: ContentStack) -> None:
    await deploy(content_stack, "add.wl")
    unknown = await patch(content_stack, "nothing.wl", content=b"x")
    await expect_seed_error(unknown, 404, "Not Found", "Unknown resource", "/resources/nothing.wl")
    moved = await patch(content_stack, "add.wl", {"resourcePath": "addNew.wl"}, b"x")
    await expect_seed_error(moved, 400, "Bad Request", "resourcePath cannot be modified", "/resources/add.wl")
    no_path = await patch(content_stack, "add.wl", {"timeout": 5})
    await expect_seed_error(no_path, 400, "Bad Request", "The resourcePath is required.", "/resources/add.wl")
    no_pool = await patch(content_stack, "add.wl", {"resourcePath": "add.wl", "poolName": None})
    message = "The poolName is required unless the resourceType is Static."
    await expect_seed_error(no_pool, 400, "Bad Request", message, "/resources/add.wl")
    nothing = await patch(content_stack, "add.wl")
    assert nothing.status == 400 and "Nothing to modify" in (await nothing.json())[0]["message"]
    theirs = await patch(content_stack, "add.wl", content=b"x", headers=content_stack.alice)
    assert theirs.status == 403
    assert len(await content_stack.blob_ids()) == 1


async def test_delete_is_202_then_the_resource_is_unknown(content_stack: ContentStack) -> None:
    await deploy(content_stack, NESTED)
    theirs = await content_stack.client.delete(f"/resources/{NESTED}", headers=content_stack.alice)
    await expect_seed_error(theirs, 403, "Forbidden", "The resource belongs to another user.", f"/resources/{NESTED}")
    response = await content_stack.client.delete(f"/resources/{NESTED}", headers=content_stack.steve)
    assert response.status == 202 and await response.read() == b""
    assert await content_stack.blob_ids() == []
    again = await content_stack.client.delete(f"/resources/{NESTED}", headers=content_stack.steve)
    await expect_seed_error(again, 404, "Not Found", "Unknown resource", f"/resources/{NESTED}")
    assert await (await content_stack.client.get("/resources", headers=content_stack.steve)).json() == {}


async def test_other_users_resources_are_403_and_admins_see_all(content_stack: ContentStack) -> None:
    await deploy(content_stack, NESTED)
    for route in ("contents", "metadata"):
        theirs = await content_stack.client.get(f"/resources/{route}/{NESTED}", headers=content_stack.alice)
        await expect_seed_error(
            theirs, 403, "Forbidden", "The resource belongs to another user.", f"/resources/{route}/{NESTED}"
        )
        admin = await content_stack.client.get(f"/resources/{route}/{NESTED}", headers=content_stack.admin)
        assert admin.status == 200
    assert await (await content_stack.client.get("/resources", headers=content_stack.alice)).json() == {}
    taken = await content_stack.post(info_for(NESTED), headers=content_stack.alice)
    assert taken.status == 409  # one path, one resource, for the whole fleet


async def test_auth_and_routing_errors_have_the_seed_shape(content_stack: ContentStack) -> None:
    no_token = await content_stack.client.get("/resources")
    message = "missing bearer token: send 'Authorization: Bearer <token>'"
    await expect_seed_error(no_token, 401, "Unauthorized", message, "/resources")
    bad_token = await content_stack.client.get("/resources/metadata/a", headers={"Authorization": "Bearer nope"})
    await expect_seed_error(bad_token, 401, "Unauthorized", "invalid token", "/resources/metadata/a")
    wrong_method = await content_stack.client.get("/resources/add.wl", headers=content_stack.steve)
    await expect_seed_error(wrong_method, 405, "Method Not Allowed", "Method Not Allowed", "/resources/add.wl")
    # Seed 000's routes keep their own shape.
    other_api = await content_stack.client.get("/api/resources/nope", headers=content_stack.steve)
    assert other_api.status == 400 and set(await other_api.json()) == {"error"}


async def test_a_url_path_over_1024_bytes_is_400(content_stack: ContentStack) -> None:
    path = "x" * 1025
    response = await content_stack.client.get(f"/resources/metadata/{path}", headers=content_stack.steve)
    assert response.status == 400 and "longer than 1024 bytes" in (await response.json())[0]["message"]


async def test_the_content_manager_down_is_504_and_the_upload_is_kept_for_cleanup(
    content_stack: ContentStack,
) -> None:
    await content_stack.content.stop()
    response = await content_stack.post(info_for())
    assert response.status == 504 and (await response.json())[0]["status"] == 504
    # Whether the command ran is unknown, so the blob stays; the orphan cleanup decides later.
    assert len(await content_stack.blob_ids()) == 1


async def test_openapi_lists_seed_004(content_stack: ContentStack) -> None:
    spec = await (await content_stack.client.get("/openapi.json")).json()
    assert {"get", "post"} <= set(spec["paths"]["/resources"])
    assert {"put", "patch", "delete"} <= set(spec["paths"]["/resources/{path}"])
    assert "get" in spec["paths"]["/resources/contents/{path}"]
    assert "ResourceInfo" in spec["components"]["schemas"]


async def test_an_internal_error_has_the_seed_shape_too(
    content_stack: ContentStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(content_api.contents, "items_of", broken)
    response = await content_stack.client.get("/resources", headers=content_stack.steve)
    await expect_seed_error(response, 500, "Internal Server Error", "internal error", "/resources")
