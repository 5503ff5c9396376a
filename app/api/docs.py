"""The API's reference pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served offline.

FastAPI's own pages load their scripts, styles and favicon from CDNs, so they stay blank
without internet access. Here every asset comes from the app: Swagger UI's and ReDoc's files
from the ``fastapi-offline`` package (mounted at ``/docs/assets``), the favicon and Swagger
UI's start-up script from ``app/static``. The pages hold no inline script (Swagger UI reads
the OpenAPI URL from a ``data-`` attribute), so a policy that forbids inline script keeps them
working.

Both bundles name outside addresses (schema ids, links); one is fetched: ReDoc's menu footer
shows a logo from Redocly's CDN. The bundle is served with that address blanked (the footer
hides an image that does not load), and the pages carry a Content-Security-Policy that allows
nothing but the app (``app.observability.DOCS_CSP``, sent with the other security headers), for
whatever a later version of the bundles might fetch.
"""

from __future__ import annotations

import functools
import html
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_URL = "/docs/assets"
FAVICON_URL = "/static/favicon.svg"
SWAGGER_INIT_URL = "/static/swagger-init.js"
REDOC_BUNDLE = "redoc.standalone.js"
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"  # the menu footer's image
_SWAGGER_PAGE = """<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <title>{title} – Swagger UI</title>
    <link rel="icon" href="{root}{favicon}" type="image/svg+xml" />
    <link rel="stylesheet" href="{root}{assets}/swagger-ui.css" />
  </head>
  <body>
    <div id="swagger-ui" data-openapi-url="{root}{openapi}"></div>
    <script src="{root}{assets}/swagger-ui-bundle.js"></script>
    <script src="{root}{init}"></script>
  </body>
</html>
"""

_REDOC_PAGE = """<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <title>{title} – ReDoc</title>
    <link rel="icon" href="{root}{favicon}" type="image/svg+xml" />
  </head>
  <body>
    <redoc spec-url="{root}{openapi}"></redoc>
    <script src="{root}{assets}/redoc.standalone.js"></script>
  </body>
</html>
"""


@functools.cache
def redoc_bundle() -> bytes:
    """ReDoc's bundle without the address of its footer logo (read once per process)."""
    return (ASSETS_DIR / REDOC_BUNDLE).read_bytes().replace(REDOC_LOGO, b"")


def install(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc`` and their assets to an app built with ``docs_url=None`` and
    ``redoc_url=None``."""
    assert app.docs_url is None and app.redoc_url is None, "FastAPI's CDN pages are still on"
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(f"{ASSETS_URL}/{REDOC_BUNDLE}", include_in_schema=False)
    async def redoc_script() -> Response:  # before the mount, which serves the other assets
        return Response(redoc_bundle(), media_type="text/javascript")

    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    def render(template: str, request: Request) -> HTMLResponse:
        root = html.escape(str(request.scope.get("root_path", "")), quote=True)
        return HTMLResponse(
            template.format(
                title=html.escape(app.title),
                root=root,
                favicon=FAVICON_URL,
                assets=ASSETS_URL,
                openapi=openapi_url,
                init=SWAGGER_INIT_URL,
            ),
        )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return render(_SWAGGER_PAGE, request)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return render(_REDOC_PAGE, request)
