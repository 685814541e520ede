"""Item 11: input that used to raise inside the gateway (a 500) is a 400 naming what was wrong,
in the error shape of the API it was sent to."""

from __future__ import annotations

import base64
import json

from tests.security.stack import Secure, secure_fixture  # noqa: F401

DEEP = "[" * 100_000 + "]" * 100_000


async def test_deeply_nested_json_is_a_400_naming_the_body(secure: Secure) -> None:
    status, body = await secure.call(
        "POST", "/api/job/run", data='{"command": ' + DEEP + "}", headers={"Content-Type": "application/json"}
    )
    assert status == 400, body
    assert "nested" in body["error"] and "body" in body["error"]


async def test_deeply_nested_json_metadata_on_resources_is_a_400_in_seed_004_shape(secure: Secure) -> None:
    status, body = await secure.call(
        "PATCH",
        "/resources/00000000-0000-4000-8000-000000000000",
        data=DEEP,
        headers={"Content-Type": "application/json"},
    )
    assert status in (400, 404), body
    assert isinstance(body, list) and body[0]["status"] == status


def forged(document: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


async def test_a_forged_list_cursor_is_a_400_naming_the_cursor(secure: Secure) -> None:
    for cursor in [
        "garbage",
        "%%%",
        forged({"k": [{"a": 1}, [1]], "q": "x"}),
        forged([1, 2]),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ]:
        status, body = await secure.call("GET", "/api/list_jobs", params={"cursor": cursor})
        assert status == 400, (cursor, body)
        assert "cursor" in body["error"]


async def test_a_cursor_with_the_right_fingerprint_but_forged_values_is_a_400(secure: Secure) -> None:
    from services.store._query import fingerprint, sort_keys

    keys = sort_keys([("created_at", -1)])
    query = fingerprint({"deleted": False, "user": "steve"}, keys)
    for values in ([{"x": 1}, "id"], [[1], "id"], [1.0, {"y": 2}], [None, None]):
        status, body = await secure.call("GET", "/api/list_jobs", params={"cursor": forged({"k": values, "q": query})})
        assert status == 400, (values, body)
        assert "cursor" in body["error"]


async def test_gzip_content_encoding_with_a_body_that_is_not_gzip_is_a_400_naming_the_header(secure: Secure) -> None:
    status, body = await secure.call(
        "POST",
        "/api/job/run",
        data=b'{"command": "true"}',
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert status == 400, body
    assert "Content-Encoding" in body["error"]


async def test_bad_gzip_on_seed_004_is_a_400_in_its_array_shape(secure: Secure) -> None:
    response = await secure.client.post(
        "/resources",
        data=b"not gzip at all",
        headers={**secure.auth(), "Content-Encoding": "gzip", "Content-Type": "multipart/form-data; boundary=x"},
    )
    body = await response.json()
    assert response.status == 400, body
    assert isinstance(body, list) and body[0]["status"] == 400 and "Content-Encoding" in body[0]["message"]


async def test_a_multipart_part_with_garbage_for_headers_is_a_400(secure: Secure) -> None:
    """Found by the schemathesis run: aiohttp's multipart reader raises InvalidHeader, not ValueError."""
    boundary = "da8190ec92ef5d9cdf6cfc12f69fde15"
    garbage = "\r\n".join([f"--{boundary}", "\U000fafbb,\U0001618b\u00f8--" + boundary + "--", ""]).encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, body = await secure.call("POST", "/api/data/", data=garbage, headers=headers)
    assert status == 400 and "multipart" in body["error"], body
    status, body = await secure.call("POST", "/resources", data=garbage, headers=headers)  # seed 004's shape
    assert status == 400 and isinstance(body, list) and "multipart" in body[0]["message"], body
