"""``/ui``: the web UI's static files, served without a token."""

from __future__ import annotations

from services.gateway.auth import PUBLIC_PATHS
from services.gateway.ui_routes import FILES, PATHS, UI_DIR
from tests.unit.test_gateway_events import Gateway, gateway  # noqa: F401


def test_every_file_of_the_ui_is_served_and_public() -> None:
    assert sorted(path.name for path in UI_DIR.iterdir()) == sorted(FILES)
    assert PATHS <= PUBLIC_PATHS


async def test_the_page_and_its_files_need_no_token(gateway: Gateway) -> None:  # noqa: F811
    client = gateway.client
    kinds = [("/ui", "text/html"), ("/ui/", "text/html"), ("/ui/app.js", "javascript"), ("/ui/app.css", "css")]
    for path, kind in kinds:
        async with client.get(path) as response:
            assert response.status == 200 and kind in response.content_type, path
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    page = await (await client.get("/ui")).text()
    assert '<script src="/ui/app.js"' in page
    assert (await client.get("/ui/../auth.py")).status in (400, 401, 404)
    assert (await client.get("/ui/nothing.js")).status == 401  # not a file of the UI: not public
