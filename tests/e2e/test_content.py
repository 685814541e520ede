"""Seed 004 and ``/api/data`` against ``skybus up``, over real HTTP, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from tests.e2e.harness import Skybus

PATH = "apps/math/add.wl"


def form(info: dict | None, content: bytes | None, filename: str = "add.wl") -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    if content is not None:
        data.add_field("resource", content, filename=filename)
    if info is not None:
        data.add_field("resourceInfo", json.dumps(info))
    return data


def blob_files(data_dir: Path) -> list[Path]:
    root = data_dir / "blobs"
    return [p for p in root.rglob("*") if p.is_file() and ".tmp" not in p.parts]


async def test_a_nested_resource_through_its_whole_life(tmp_path) -> None:
    data_dir = tmp_path / "data"
    skybus = await Skybus(data_dir).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{skybus.url}/resources/.applicationserver/info") as response:
                assert response.status == 200
                assert await response.json() == {"name": "resource-manager", "version": "0.1.0"}

        info = {"resourcePath": PATH, "resourceType": "Active", "mimeType": "Automatic", "poolName": "Public"}
        status, body = await skybus.call("POST", "/resources", data=form({**info, "timeout": None}, b"Plus[5,x]"))
        assert status == 201 and body == {"resourcePath": PATH}
        status, body = await skybus.call("POST", "/resources", data=form(info, b"again"))
        assert status == 409 and body[0]["status"] == 409 and body[0]["path"] == "/resources"

        status, listing = await skybus.call("GET", "/resources")
        assert status == 200 and listing == {PATH: {**info, "timeout": None}}
        status, contents = await skybus.call("GET", f"/resources/contents/{PATH}")
        assert status == 200 and contents == "Plus[5,x]"
        status, metadata = await skybus.call("GET", f"/resources/metadata/{PATH}")
        assert status == 200 and metadata == {**info, "timeout": None}

        replaced = {**info, "resourceType": "Static", "poolName": None, "mimeType": "text/plain", "timeout": 10}
        status, _ = await skybus.call("PUT", f"/resources/{PATH}", data=form(replaced, b"Plus[3,x]", "addOne.wl"))
        assert status == 202
        assert await skybus.call("GET", f"/resources/contents/{PATH}") == (200, "Plus[3,x]")
        assert await skybus.call("GET", f"/resources/metadata/{PATH}") == (200, replaced)
        status, body = await skybus.call("PUT", f"/resources/{PATH}", data=form({**info, "resourcePath": "x"}, b"!"))
        assert status == 400 and body[0]["message"] == "resourcePath cannot be modified"

        status, _ = await skybus.call(
            "PATCH", f"/resources/{PATH}", data=form({"resourcePath": PATH, "timeout": 99}, None)
        )
        assert status == 202
        status, _ = await skybus.call("PATCH", f"/resources/{PATH}", data=form(None, b"Plus[7,x]", "addNew.wl"))
        assert status == 202
        assert await skybus.call("GET", f"/resources/metadata/{PATH}") == (200, {**replaced, "timeout": 99})
        assert await skybus.call("GET", f"/resources/contents/{PATH}") == (200, "Plus[7,x]")
        assert len(blob_files(data_dir)) == 1  # each replaced blob was deleted

        status, _ = await skybus.call("DELETE", f"/resources/{PATH}")
        assert status == 202
        status, body = await skybus.call("GET", f"/resources/metadata/{PATH}")
        assert status == 404 and body[0]["message"] == "Unknown resource" and body[0]["error"] == "Not Found"
        assert await skybus.call("GET", "/resources") == (200, {})
        assert blob_files(data_dir) == []
    finally:
        assert await skybus.stop() == 0, skybus.log[-20:]


async def test_data_files_round_trip(tmp_path) -> None:
    skybus = await Skybus(tmp_path / "data").start()
    try:
        payload = bytes(range(256)) * 4096  # 1 MiB
        status, created = await skybus.call("POST", "/api/data?name=input.bin", data=payload)
        assert status == 201
        item_id = created["id"]
        async with aiohttp.ClientSession(headers=skybus.headers()) as session:
            async with session.get(f"{skybus.url}/api/data/{item_id}") as response:
                assert response.status == 200 and response.headers["Content-Length"] == str(len(payload))
                assert await response.read() == payload
        status, info = await skybus.call("GET", f"/api/data/{item_id}/info")
        assert status == 200 and info["size"] == len(payload) and info["name"] == "input.bin"
        assert await skybus.call("DELETE", f"/api/data/{item_id}") == (200, {"id": item_id})
        assert (await skybus.call("GET", f"/api/data/{item_id}"))[0] == 404
    finally:
        assert await skybus.stop() == 0, skybus.log[-20:]
