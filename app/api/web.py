"""The page that watches a story denoise: `GET /` and its static files under `/static`."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# The page has no build step, so its file names carry no content hash: browsers must revalidate
# (ETag, 304) on every load, or a new release would run with yesterday's scripts.
REVALIDATE = {"Cache-Control": "no-cache"}


class RevalidatedFiles(StaticFiles):
    """StaticFiles whose responses tell browsers to revalidate before reuse."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(REVALIDATE)
        return response


def add_web_page(app: FastAPI) -> None:
    """Serve app/web: the page at `/`, its scripts and styles at `/static/...` (no build step)."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers=REVALIDATE)

    app.mount("/static", RevalidatedFiles(directory=WEB_DIR), name="static")
