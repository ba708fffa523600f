"""/docs (Swagger UI) and /redoc, with their scripts and styles served by this server rather than a CDN.

FastAPI's own pages load Swagger UI and ReDoc from cdn.jsdelivr.net (and a favicon and fonts from
other sites), so offline or behind a firewall /docs is a blank page. The assets come from the
`fastapi-offline` package (MIT; it ships Swagger UI's bundle under Apache-2.0 and ReDoc's standalone
script under MIT, as its README records), and the pages are built the way FastAPI documents for
self-hosted assets: `docs_url=None`, `get_swagger_ui_html(swagger_js_url=..., swagger_css_url=...)`,
`get_redoc_html(redoc_js_url=...)` and a StaticFiles mount.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
"""swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png."""
SWAGGER_PARAMETERS = {"validatorUrl": None}
"""No badge from swagger.io's online validator."""
PAGE_HEADERS = {"Content-Security-Policy": "img-src 'self' data:"}
"""Images from this server only."""
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
NO_IMAGE = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"
"""ReDoc's bundle draws its maker's logo from cdn.redoc.ly: the CSP refused it with an error in the
browser's console, so the bundle served here draws an empty image instead."""


@cache
def redoc_script() -> str:
    """ReDoc's standalone bundle with no request to another host."""
    return (ASSETS_DIR / "redoc.standalone.js").read_text(encoding="utf-8").replace(REDOC_LOGO, NO_IMAGE)


def add_docs_pages(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve the API's documentation pages and their assets; `app` was made with docs_url=redoc_url=None."""

    @app.get(f"{ASSETS_URL}/redoc.standalone.js", include_in_schema=False)  # before the mount, which has it too
    async def redoc_bundle() -> Response:
        return Response(redoc_script(), media_type="text/javascript")

    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{name}"  # behind a proxy's prefix too

    def openapi_url(request: Request) -> str:
        return f"{request.scope.get('root_path', '')}{app.openapi_url}"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url(request),
            title=f"{app.title} - Swagger UI",
            swagger_js_url=asset(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
            swagger_ui_parameters=(app.swagger_ui_parameters or {}) | SWAGGER_PARAMETERS,
        )
        page.headers.update(PAGE_HEADERS)
        return page

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi_url(request),
            title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, "redoc.standalone.js"),
            redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False,
        )
        page.headers.update(PAGE_HEADERS)
        return page
