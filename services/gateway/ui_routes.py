"""``/ui``: the web UI, static files shipped in the package (``services/gateway/ui``), nothing to build.

The page and its files need no token (they are in :data:`services.gateway.auth.PUBLIC_PATHS`): the page
asks for one, keeps it in the browser's localStorage and calls the REST API with it.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.gateway.openapi import documented

UI_DIR = Path(__file__).parent / "ui"
FILES = ("index.html", "app.js", "app.css")
PATHS = frozenset({"/ui", "/ui/", *(f"/ui/{name}" for name in FILES)})
"""Every path served here: each is public."""

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    # Only our own files run, and nothing frames the page.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}

routes = web.RouteTableDef()


@routes.get("/ui")
@routes.get("/ui/")
@documented(media="text/html", summary="The web UI (HTML; asks for a token and keeps it in the browser)", public=True)
async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(UI_DIR / "index.html", headers=HEADERS)


@routes.get("/ui/{name}")
@documented(media="*/*", errors=(404,), summary="The web UI's script and style sheet", public=True)
async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(UI_DIR / name, headers=HEADERS)


def install_ui(app: web.Application) -> None:
    app.add_routes(routes)
